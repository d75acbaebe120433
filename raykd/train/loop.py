"""The distillation training loop: pure PyTorch, runs without Ray, DDP-aware.

One call of :func:`fit` trains the student of an experiment for ``train.epochs`` epochs,
evaluates with COCO mAP, and hands every epoch's metrics and a checkpoint state to the
caller's ``on_epoch_end`` (the CLI writes files; the Ray worker reports to Ray Train/Tune).
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.utils.data import Subset
from torchvision.models.detection import MaskRCNN
from tqdm import tqdm

from raykd.config import MASK_ARCHS, ExperimentConfig
from raykd.data import build_loader
from raykd.distill import build_distiller
from raykd.errors import UserError
from raykd.metric_names import BOX_METRICS, METRICS
from raykd.models.levels import distilled_levels
from raykd.models.taps import forward_taps, is_dense
from raykd.train.evaluate import coco_metrics, predict
from raykd.train.optim import build_optimizer, build_scheduler
from raykd.train.prompts import ensure_prompts, load_prompts
from raykd.train.setup import build_datasets, build_pair, choose_device, seed_everything

EpochCallback = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]


class NonFiniteLoss(RuntimeError):
    """Raised when the training loss becomes NaN or infinite; the run stops as failed."""

    def __init__(self, epoch: int, step: int, terms: dict[str, float]):
        bad = ", ".join(f"{k}={v}" for k, v in terms.items() if not math.isfinite(v)) or "total"
        super().__init__(f"non-finite loss at epoch {epoch} (step {step}: {bad})")
        self.epoch, self.step, self.terms = epoch, step, terms

    def __reduce__(self):
        # Ray pickles a trial's exception to the driver; the default rebuilds from str(self).
        return type(self), (self.epoch, self.step, self.terms)


class DistillStep(nn.Module):
    """Student + distiller as one module, so DDP sees one forward.

    forward(images, targets) -> (total loss, {name: loss}) with detector losses named
    ``det_<torchvision name>`` and distillation terms ``<term>_<level>``.
    """

    def __init__(self, student: nn.Module, distiller: nn.Module | None, teacher: nn.Module | None, amp: bool,
                 pairs: dict[str, str] | None = None):
        super().__init__()
        self.student = student
        self.pairs = pairs  # student level -> teacher level at the same stride
        self.distiller = distiller
        # Kept outside the module tree: DDP must neither broadcast nor hook the frozen teacher.
        self._teacher = (teacher,)
        self.amp = amp
        self.with_logits = distiller is not None and is_dense(student) and getattr(distiller, "needs_logits", True)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]]):
        teacher = self._teacher[0] if self.distiller is not None else None
        device_type = images[0].device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.amp and device_type == "cuda"):
            taps = forward_taps(self.student, teacher, images, targets, with_logits=self.with_logits,
                                pairs=self.pairs)
        losses = {f"det_{k.removeprefix('loss_')}": v.float() for k, v in taps.losses.items()}
        if self.distiller is not None:
            f32 = lambda d: None if d is None else {k: v.float() for k, v in d.items()}  # noqa: E731
            kd = self.distiller(f32(taps.student_feats), f32(taps.teacher_feats), f32(taps.student_logits),
                                f32(taps.teacher_logits), taps.boxes, taps.image_sizes)
            losses.update({f"kd_{k}": v for k, v in kd.items()})
        return sum(losses.values()), losses


def _rank_info() -> tuple[int, int]:
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank(), torch_dist.get_world_size()
    return 0, 1


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _summarise_losses(sums: dict[str, float], steps: int, levels: list[str]) -> dict[str, float]:
    """Mean loss per step: ``loss_total``, ``loss_det``, ``loss_kd``, every detector term,
    every distillation term summed over levels (``loss_mgd``) and per level (``loss_mgd_0``)."""
    out: dict[str, float] = {}
    det = kd = 0.0
    per_term: dict[str, float] = defaultdict(float)
    for name, total in sums.items():
        mean = total / max(steps, 1)
        if name.startswith("det_"):
            det += mean
            out[f"loss_{name[4:]}"] = mean
        else:
            kd += mean
            key = name[3:]
            out[f"loss_{key}"] = mean
            level = next((lv for lv in sorted(levels, key=len, reverse=True) if key.endswith(f"_{lv}")), None)
            per_term[key[: -len(level) - 1] if level else key] += mean
    out.update({f"loss_{term}": value for term, value in per_term.items()})
    out.update(loss_total=det + kd, loss_det=det, loss_kd=kd)
    return out


def evaluate_model(model: nn.Module, loader, dataset, image_ids: list[int], device: torch.device,
                   amp: bool, label_to_cat_id=None) -> dict[str, float]:
    """COCO metrics of ``model`` over ``image_ids`` of ``dataset``; under DDP each rank's
    ``loader`` holds a shard and rank 0 scores the gathered detections. ``label_to_cat_id``:
    model label -> category id or None (default: the data set's own numbering). A Mask R-CNN
    is scored on its boxes and on its masks (``segm_*``)."""
    rank, world = _rank_info()
    results = predict(model, loader, device, label_to_cat_id or dataset.label_to_cat_id, amp=amp)
    if world > 1:
        gathered: list[list[dict]] = [None] * world  # type: ignore[list-item]
        torch_dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    metrics = None
    if rank == 0:
        metrics = coco_metrics(dataset.coco, results, image_ids)
        if isinstance(model, MaskRCNN):
            metrics.update(coco_metrics(dataset.coco, results, image_ids, iou_type="segm"))
    if world > 1:
        box = [metrics]
        torch_dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    return metrics


def fit(
    cfg: ExperimentConfig,
    *,
    teacher_checkpoint: str | None = None,
    resume_state: dict[str, Any] | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``cfg.student`` (distilled from the teacher when ``cfg.distill.method != 'none'``).

    teacher_checkpoint: weights of the teacher (default ``cfg.teacher.checkpoint``).
    resume_state: a state from a previous ``on_epoch_end`` to continue exactly from.
    on_epoch_end(metrics, make_state): called on every rank after each epoch; ``make_state()``
        returns the checkpoint dict (model, distiller, optimiser, scheduler, epoch, RNG).
    Returns the last epoch's metrics. Raises :class:`NonFiniteLoss` on NaN/inf losses.
    """
    rank, world = _rank_info()
    tcfg = cfg.train
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = choose_device(tcfg, local_rank=rank)
    seed_everything(tcfg.seed + rank)
    amp = tcfg.amp and device.type == "cuda"

    train_ds, val_ds = build_datasets(cfg.data, cfg.cache_dir, masks=cfg.student.arch in MASK_ARCHS)
    val_count = min(len(val_ds), cfg.data.val_max_images or len(val_ds))
    val_ids = val_ds.image_ids[:val_count]
    # Under DDP each rank predicts every world-th image (no padding duplicates, unlike DistributedSampler).
    val_part = Subset(val_ds, range(rank, val_count, world))

    with_teacher = cfg.teacher is not None and (cfg.distill.method != "none" or cfg.student.inherit)
    pair = build_pair(cfg, train_ds.class_names, train_ds.cat_ids,
                      teacher_checkpoint or (cfg.teacher.checkpoint if with_teacher else None),
                      with_teacher=with_teacher, log=log if rank == 0 else lambda line: None)
    teacher = pair.teacher.to(device) if pair.teacher is not None else None
    student = pair.student.to(device)
    space, num_classes = pair.space, pair.space.num_classes
    levels = list(cfg.distill.levels or _level_names(student))
    distiller = pairs = None
    if cfg.distill.method != "none":
        pairs = distilled_levels(cfg.distill.levels, cfg.student, cfg.teacher)
        levels = list(pairs)
        distiller = build_distiller(cfg.distill, student_channels=cfg.student.fpn_channels,
                                    teacher_channels=cfg.teacher.fpn_channels, levels=levels,
                                    num_classes=num_classes).to(device)
        prompts = ensure_prompts(cfg, teacher, train_ds, device, space.model_labels, log=log)
        if prompts is not None:  # FreeKD's tokens, trained once on the teacher
            load_prompts(distiller, pairs, prompts)

    step_module = DistillStep(student, distiller, teacher if distiller is not None else None, amp,
                              pairs=pairs).to(device)
    train_module: nn.Module = step_module
    if world > 1:
        train_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)

    train_loader = build_loader(train_ds, batch_size=tcfg.batch_size, shuffle=True, num_workers=cfg.data.num_workers,
                                seed=tcfg.seed, drop_last=True, distributed=world > 1)
    val_loader = build_loader(val_part, batch_size=tcfg.batch_size, shuffle=False, num_workers=cfg.data.num_workers,
                              seed=tcfg.seed)
    steps_per_epoch = len(train_loader)
    if tcfg.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, tcfg.steps_per_epoch)
    if steps_per_epoch == 0:
        raise UserError(f"the training set ({len(train_ds)} images) is smaller than one batch of "
                        f"{tcfg.batch_size} per worker × {world} workers", key="train.batch_size")

    optimizer = build_optimizer(tcfg, [m for m in (student, distiller) if m is not None])
    scheduler = build_scheduler(tcfg, optimizer, steps_per_epoch)
    history: list[dict[str, Any]] = []
    start_epoch = 1
    if resume_state is not None:
        student.load_state_dict(resume_state["model"])
        if distiller is not None and resume_state.get("distiller") is not None:
            distiller.load_state_dict(resume_state["distiller"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        history = list(resume_state.get("history", []))
        start_epoch = int(resume_state["epoch"]) + 1
        if rank == 0:
            log(f"resumed from epoch {start_epoch - 1}")
        if resume_state.get("rng") and world == 1:
            _set_rng_state(resume_state["rng"])

    def make_state(epoch: int) -> Callable[[], dict[str, Any]]:
        return lambda: {
            "model": student.state_dict(),
            "distiller": distiller.state_dict() if distiller is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch, "rng": _rng_state(), "history": history,
            "num_classes": num_classes, "cat_ids": list(train_ds.cat_ids), "categories": list(space.categories),
        }

    metrics: dict[str, Any] = history[-1] if history else {}
    run_start = time.perf_counter() - (history[-1]["time_total_s"] if history else 0.0)
    for epoch in range(start_epoch, tcfg.epochs + 1):
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        _reseed_epoch(train_loader, tcfg.seed, epoch)
        student.train()
        sums: dict[str, float] = defaultdict(float)
        epoch_start = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{tcfg.epochs}", leave=False,
                   disable=not progress or rank != 0, file=sys.stderr, dynamic_ncols=True)
        step = 0
        for images, targets in train_loader:
            if step >= steps_per_epoch:
                break
            images = [img.to(device, non_blocking=True) for img in images]
            targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
            for target in targets:
                target["labels"] = space.model_labels(target["labels"])
            total, losses = train_module(images, targets)
            values = {k: float(v.detach()) for k, v in losses.items()}
            if not math.isfinite(float(total.detach())):
                raise NonFiniteLoss(epoch, step, values)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if tcfg.clip_grad:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], tcfg.clip_grad)
            optimizer.step()
            scheduler.step()
            for k, v in values.items():
                sums[k] += v
            step += 1
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{sum(values.values()):.3f}")
        bar.close()
        train_time = time.perf_counter() - epoch_start
        metrics = _summarise_losses(sums, step, levels)
        if epoch % tcfg.eval_every == 0 or epoch == tcfg.epochs:
            metrics.update(evaluate_model(student, val_loader, val_ds, val_ids, device, amp,
                                          label_to_cat_id=space.label_to_cat_id))
        elif history:
            metrics.update({k: history[-1].get(k) for k in METRICS if k in BOX_METRICS or k in history[-1]})
        metrics.update(epoch=epoch, epochs_total=tcfg.epochs, lr=optimizer.param_groups[0]["lr"],
                       step_time=train_time / max(step, 1), epoch_time=time.perf_counter() - epoch_start,
                       time_total_s=time.perf_counter() - run_start, num_workers=world, device=_device_name(device),
                       timestamp=time.time())
        history.append(metrics)
        if rank == 0:
            log(format_epoch_line(metrics))
        if on_epoch_end is not None:
            on_epoch_end(metrics, make_state(epoch))
    return metrics


def _reseed_epoch(loader, seed: int, epoch: int) -> None:
    """Make an epoch's order and flips a function of (seed, epoch) alone, so a resumed run
    sees the same batches as an uninterrupted one."""
    for generator in (getattr(loader.sampler, "generator", None), loader.generator):
        if generator is not None:
            generator.manual_seed(seed * 100_003 + epoch * 7919 + (generator is loader.generator))


def _level_names(student: nn.Module) -> list[str]:
    from torchvision.models.detection import FasterRCNN

    return ["0", "1", "2", "3", "pool"] if isinstance(student, FasterRCNN) else ["0", "1", "2", "p6", "p7"]


def _device_name(device: torch.device) -> str:
    return f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else "cpu"


def format_epoch_line(m: dict[str, Any]) -> str:
    """One line of metrics per epoch, as the CLI prints it."""
    kd = f" kd {m['loss_kd']:.4f}" if m.get("loss_kd") else ""
    ap = m.get("bbox_mAP")
    ap_text = f"mAP {ap:.4f} AP50 {m['AP50']:.4f} AP_S/M/L {m['AP_S']:.3f}/{m['AP_M']:.3f}/{m['AP_L']:.3f}" \
        if ap is not None else "mAP -"
    if m.get("segm_mAP") is not None:
        ap_text += f"  segm mAP {m['segm_mAP']:.4f} AP50 {m['segm_AP50']:.4f}"
    return (f"epoch {m['epoch']}/{m['epochs_total']}  loss {m['loss_total']:.4f} (det {m['loss_det']:.4f}{kd})  "
            f"{ap_text}  lr {m['lr']:.2e}  {m['step_time']:.3f} s/step  {m['epoch_time']:.1f} s")
