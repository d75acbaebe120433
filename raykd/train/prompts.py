"""FreeKD's prompt stage: the mask tokens trained on the frozen teacher before distillation,
once, and cached like the teacher.

A RECONSTRUCTION: the reference repository (Gumpest/FreeKD) ships the stage's forward
(``MaskModule.forward_train``: token-masked wavelet bands rebuilt into a feature, plus a Dice
diversity loss; :func:`~raykd.distill.freekd.prompt_reconstruction` here, tested against it) and
loads its result (``FreeKD_retinanet_r101_prompt.pth``), but not the loop that trains it. Here:
every FPN level of the teacher is rebuilt through its tokens, the teacher's own head computes
its detection losses on the rebuilt features, and Adam (``distill.freekd_prompt_lr``) trains
the tokens only on ``detection loss + freekd_prompt_dice · Σ Dice`` for ``freekd_prompt_steps``
batches of the training set (fixed seed 0, so every trial and seed shares one cache entry).
Dense-head teachers only (FCOS, RetinaNet): the only published FreeKD detection config is
RetinaNet's.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from filelock import FileLock
from torch import Tensor, nn
from torch.utils.data import Dataset

from raykd.config import ExperimentConfig, config_hash
from raykd.data import build_loader
from raykd.data.transforms import device_image
from raykd.distill.freekd import initial_tokens, prompt_reconstruction
from raykd.errors import UserError
from raykd.models.taps import _student_losses, is_dense
from raykd.train.teacher import data_fingerprint

PROMPT_SEED = 0


def teacher_digest(teacher: nn.Module) -> str:
    """sha256 over the teacher's state dict (names and bytes): what the prompts were trained on."""
    digest = hashlib.sha256()
    for name, value in teacher.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def prompts_cache_path(cfg: ExperimentConfig, teacher: nn.Module) -> Path:
    d = cfg.distill
    key = config_hash("freekd-prompts", teacher_digest(teacher), data_fingerprint(cfg), d.freekd_tokens,
                      d.freekd_prompt_steps, d.freekd_prompt_lr, d.freekd_prompt_dice, cfg.train.batch_size)
    return Path(cfg.cache_dir) / "freekd_prompts" / key / "prompts.pt"


def _batches(loader, steps: int):
    """``steps`` batches of ``loader``, epoch after epoch."""
    step = 0
    while True:
        for item in loader:
            yield item
            step += 1
            if step == steps:
                return


def train_prompts(teacher: nn.Module, loader, steps: int, num_tokens: int, lr: float, dice_weight: float,
                  device: torch.device, relabel: Callable[[Tensor], Tensor],
                  log: Callable[[str], None]) -> dict[str, Tensor]:
    """Tokens ``{teacher level: [4, T, C]}`` after ``steps`` batches (see the module docstring);
    ``relabel`` maps the data set's labels to the teacher's, as the training loop does."""
    if not is_dense(teacher):
        raise UserError(f"FreeKD's prompt stage needs a dense-head teacher (fcos, retinanet), got "
                        f"{type(teacher).__name__}; set distill.freekd_prompt_steps: 0",
                        key="distill.freekd_prompt_steps")
    teacher.eval()
    channels = teacher.backbone.out_channels
    tokens: dict[str, Tensor] = {}
    optimizer = None
    for step, (images, targets) in enumerate(_batches(loader, steps), start=1):
        images = [device_image(image, device) for image in images]
        targets = [{"boxes": t["boxes"].to(device), "labels": relabel(t["labels"]).to(device)} for t in targets]
        batch, tgts = teacher.transform(images, targets)
        with torch.no_grad():
            features = teacher.backbone(batch.tensors)
        if optimizer is None:  # one token set per teacher level, drawn as the reference under a fixed seed
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(PROMPT_SEED)
                tokens = {level: initial_tokens(channels, num_tokens).to(device).requires_grad_() for level in features}
            optimizer = torch.optim.Adam(tokens.values(), lr=lr)
        rebuilt: OrderedDict[str, Tensor] = OrderedDict()
        dice = batch.tensors.new_zeros(())
        for level, feature in features.items():
            out, level_dice = prompt_reconstruction(feature, tokens[level])
            rebuilt[level] = out[..., : feature.shape[-2], : feature.shape[-1]]
            dice = dice + level_dice
        losses, _ = _student_losses(teacher, batch, tgts, rebuilt)
        detection = sum(losses.values())
        grads = torch.autograd.grad(detection + dice_weight * dice, list(tokens.values()))
        for token, grad in zip(tokens.values(), grads):
            token.grad = grad
        optimizer.step()
        if step == 1 or step == steps or step % 100 == 0:
            log(f"freekd prompts: step {step}/{steps}, detection loss {float(detection):.4f}, dice {float(dice):.4f}")
    return {level: token.detach().cpu() for level, token in tokens.items()}


def ensure_prompts(cfg: ExperimentConfig, teacher: nn.Module, dataset: Dataset, device: torch.device,
                   relabel: Callable[[Tensor], Tensor], log: Callable[[str], None] = print) -> dict[str, Tensor] | None:
    """The cached prompt tokens of this teacher and data (trained once, under a file lock);
    None unless ``distill.method`` is ``freekd`` with ``freekd_prompt_steps > 0``."""
    d = cfg.distill
    if d.method != "freekd" or d.freekd_prompt_steps == 0:
        return None
    path = prompts_cache_path(cfg, teacher)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / ".lock")):
        if not path.is_file():
            log(f"freekd prompts: training {d.freekd_tokens} tokens per band on the teacher "
                f"for {d.freekd_prompt_steps} steps into {path.parent}")
            loader = build_loader(dataset, batch_size=cfg.train.batch_size, shuffle=True, num_workers=0,
                                  seed=PROMPT_SEED, drop_last=True)
            prompts = train_prompts(teacher, loader, d.freekd_prompt_steps, d.freekd_tokens, d.freekd_prompt_lr,
                                    d.freekd_prompt_dice, device, relabel, log)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            torch.save(prompts, tmp)
            os.replace(tmp, path)
        else:
            log(f"freekd prompts: cached at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_prompts(distiller: nn.Module, pairs: Mapping[str, str], prompts: Mapping[str, Tensor]) -> None:
    """Give each distilled level's FreeKD loss the tokens of the teacher level it is paired with."""
    for level, teacher_level in pairs.items():
        distiller.losses[level].load_tokens(prompts[teacher_level])
