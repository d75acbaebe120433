"""The preparation stage of a method (its registry entry's ``prepare``, raykd/distill/methods.py):
trained once per teacher, data set and settings before distillation, cached like the teacher,
and loaded into the distiller. The one such stage today is FreeKD's prompt tokens
(:func:`raykd.distill.freekd.train_prompt_tokens`, a reconstruction); dense-head teachers only
(FCOS, RetinaNet): the only published FreeKD detection config is RetinaNet's.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from raykd.config import ExperimentConfig, config_hash
from raykd.data import build_loader
from raykd.data.transforms import device_image
from raykd.distill.freekd import PROMPT_SEED
from raykd.distill.methods import REGISTRY, Preparation
from raykd.errors import UserError
from raykd.models.taps import _student_losses, is_dense
from raykd.train.setup import data_fingerprint


def teacher_digest(teacher: nn.Module) -> str:
    """sha256 over the teacher's state dict (names and bytes): what the stage was trained on."""
    digest = hashlib.sha256()
    for name, value in teacher.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def preparation_cache_path(cfg: ExperimentConfig, stage: Preparation, teacher: nn.Module) -> Path:
    key = config_hash(stage.name.replace("_", "-"), teacher_digest(teacher), data_fingerprint(cfg),
                      *stage.settings(cfg.distill), cfg.train.batch_size)
    return Path(cfg.cache_dir) / stage.name / key / "state.pt"


class DetectorProbe:
    """A frozen dense-head detector as :class:`raykd.distill.freekd.TeacherProbe`: batches of
    ``(images, targets)`` moved to ``device``, labels mapped by ``relabel`` (the data set's to the
    teacher's, as the training loop does)."""

    def __init__(self, teacher: nn.Module, device: torch.device, relabel: Callable[[Tensor], Tensor]):
        if not is_dense(teacher):
            raise UserError(f"FreeKD's prompt stage needs a dense-head teacher (fcos, retinanet), got "
                            f"{type(teacher).__name__}; set distill.freekd_prompt_steps: 0",
                            key="distill.freekd_prompt_steps")
        teacher.eval()
        self.teacher, self.device, self.relabel = teacher, device, relabel
        self.channels = teacher.backbone.out_channels

    def features(self, batch: Any) -> tuple[Any, OrderedDict[str, Tensor]]:
        images, targets = batch
        images = [device_image(image, self.device) for image in images]
        targets = [{"boxes": t["boxes"].to(self.device), "labels": self.relabel(t["labels"]).to(self.device)}
                   for t in targets]
        transformed, tgts = self.teacher.transform(images, targets)
        with torch.no_grad():
            features = self.teacher.backbone(transformed.tensors)
        return (transformed, tgts), features

    def detection_loss(self, state: Any, features: OrderedDict[str, Tensor]) -> Tensor:
        transformed, tgts = state
        losses, _ = _student_losses(self.teacher, transformed, tgts, features)
        return sum(losses.values())


def repeat_batches(loader: DataLoader) -> Iterator[Any]:
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def ensure_prepared(cfg: ExperimentConfig, teacher: nn.Module, dataset: Dataset, device: torch.device,
                    relabel: Callable[[Tensor], Tensor],
                    log: Callable[[str], None] = print) -> tuple[Preparation, dict[str, Tensor]] | None:
    """The method's stage and its cached state for this teacher and data (trained once, under a
    file lock); None when the method has no stage or this configuration does not run it."""
    stage = REGISTRY[cfg.distill.method].prepare
    if stage is None or not stage.needed(cfg.distill):
        return None
    path = preparation_cache_path(cfg, stage, teacher)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / ".lock")):
        if not path.is_file():
            log(f"{stage.name}: training on the teacher into {path.parent}")
            loader = build_loader(dataset, batch_size=cfg.train.batch_size, shuffle=True, num_workers=0,
                                  seed=PROMPT_SEED, drop_last=True)
            state = stage.train(DetectorProbe(teacher, device, relabel), repeat_batches(loader), cfg.distill, log)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            torch.save(state, tmp)
            os.replace(tmp, path)
        else:
            log(f"{stage.name}: cached at {path}")
    return stage, torch.load(path, map_location="cpu", weights_only=True)
