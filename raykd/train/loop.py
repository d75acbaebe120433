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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.utils.data import Subset
from torchvision.models.detection import MaskRCNN
from tqdm import tqdm

from raykd.config import MASK_ARCHS, ExperimentConfig, ScheduleConfig
from raykd.data import build_loader
from raykd.data.cocoeval import Evaluator
from raykd.data.transforms import device_image
from raykd.distill import LevelTerms, build_distiller, total_loss
from raykd.distill.connectors import GenerationBlock
from raykd.epoch_record import EpochLosses, EpochRecord
from raykd.errors import UserError
from raykd.metric_names import BOX_METRICS, LOSS_PREFIX, METRICS, term_key
from raykd.models.labels import LabelSpace
from raykd.models.levels import distilled_levels
from raykd.models.precision import amp_dtype, autocast_parts, conv_parts
from raykd.models.taps import forward_taps, is_dense
from raykd.train.calibrate import STATE_KEY as CALIBRATION_KEY
from raykd.train.calibrate import calibrated_scale
from raykd.train.evaluate import coco_metrics, predict
from raykd.train.optim import build_optimizer, build_scheduler
from raykd.train.preparation import ensure_prepared
from raykd.train.setup import build_datasets, build_pair, choose_device, seed_everything

EpochCallback = Callable[[EpochRecord, Callable[[], dict[str, Any]]], None]


class NonFiniteLoss(RuntimeError):
    """Raised when the training loss becomes NaN or infinite; the run stops as failed."""

    def __init__(self, epoch: int, step: int, terms: dict[str, float]):
        bad = ", ".join(f"{k}={v}" for k, v in terms.items() if not math.isfinite(v)) or "total"
        super().__init__(f"non-finite loss at epoch {epoch} (step {step}: {bad})")
        self.epoch, self.step, self.terms = epoch, step, terms

    def __reduce__(self):
        # Ray pickles a trial's exception to the driver; the default rebuilds from str(self).
        return type(self), (self.epoch, self.step, self.terms)


class StepLosses(NamedTuple):
    """One step's losses: ``det`` by torchvision's name without ``loss_``; ``kd`` by level and term."""

    det: dict[str, Tensor]
    kd: LevelTerms


class DistillStep(nn.Module):
    """Student + distiller as one module, so DDP sees one forward.

    forward(images, targets) -> (total loss, :class:`StepLosses`). ``amp``: the autocast dtype
    of the detectors' convolutions (:func:`~raykd.models.precision.conv_parts`; None: fp32);
    ``distill_amp``: that of the distiller's generation blocks. Every loss is reduced in fp32.
    ``teacher``: run (no grad) on the student's batch whenever given, distiller or not (a
    benchmark's floor is the teacher forward + the student step).
    """

    def __init__(self, student: nn.Module, distiller: nn.Module | None, teacher: nn.Module | None,
                 amp: torch.dtype | None = None, pairs: dict[str, str] | None = None,
                 distill_amp: torch.dtype | None = None):
        super().__init__()
        self.student = student
        self.pairs = pairs  # student level -> teacher level at the same stride
        self.distiller = distiller
        # Kept outside the module tree: DDP must neither broadcast nor hook the frozen teacher.
        self._teacher = (teacher,)
        self.amp, self.distill_amp = amp, distill_amp
        self.kd_scale = 1.0  # distill.loss_ratio's multiplier of every distillation term (raykd/train/calibrate.py)
        self.with_logits = distiller is not None and is_dense(student) and getattr(distiller, "needs_logits", True)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]]):
        teacher = self._teacher[0]
        device_type = images[0].device.type
        parts = conv_parts(self.student) + (conv_parts(teacher) if teacher is not None else [])
        with autocast_parts(parts, device_type, self.amp):
            taps = forward_taps(self.student, teacher, images, targets, with_logits=self.with_logits,
                                pairs=self.pairs)
        det = {k.removeprefix("loss_"): v.float() for k, v in taps.losses.items()}
        kd: LevelTerms = {}
        if self.distiller is not None:
            blocks = [m for m in self.distiller.modules() if isinstance(m, GenerationBlock)]
            with autocast_parts(blocks, device_type, self.distill_amp):
                kd = self.distiller(taps.student_feats, taps.teacher_feats, taps.student_logits,
                                    taps.teacher_logits, taps.boxes, taps.image_sizes)
            kd = {level: {term: v.float() for term, v in terms.items()} for level, terms in kd.items()}
            if self.kd_scale != 1.0:
                kd = {level: {name: v * self.kd_scale for name, v in terms.items()} for level, terms in kd.items()}
        return sum(det.values()) + (total_loss(kd) if kd else 0.0), StepLosses(det, kd)


def train_step(module: nn.Module, optimizer: torch.optim.Optimizer, images: list[Tensor],
               targets: list[dict[str, Tensor]], *, params: list[Tensor], clip_grad: float | None,
               scaler: torch.amp.GradScaler | None = None) -> tuple[Tensor, StepLosses]:
    """One optimiser step of ``module`` (a :class:`DistillStep`, DDP-wrapped or not) on a batch
    already on the device: forward, backward (through ``scaler`` for fp16), gradient clipping,
    step. Returns the detached total and the step's losses, all still on the device: nothing
    here waits for the device (the benchmark times this same function)."""
    total, step = module(images, targets)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
    else:
        total.backward()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return total.detach(), step


class _DeviceSums:
    """An epoch's loss sums kept on the device; read by the host only when asked (:meth:`read`)."""

    def __init__(self):
        self.names: list[tuple[str, str | None]] = []  # (term, level or None for a detector term)
        self.sums: Tensor | None = None
        self.finite: Tensor | None = None
        self.first_bad: Tensor | None = None  # the terms of the first non-finite step
        self.bad_step: Tensor | None = None

    def add(self, step: int, total: Tensor, losses: StepLosses) -> None:
        if not self.names:
            self.names = [(k, None) for k in losses.det] + [(t, lv) for lv, ts in losses.kd.items() for t in ts]
        values = torch.stack([v.detach() for v in losses.det.values()]
                             + [v.detach() for ts in losses.kd.values() for v in ts.values()])
        ok = torch.isfinite(total)
        if self.sums is None:
            # float64 like the host's sums were (a loss mean over thousands of steps keeps its digits)
            self.sums, self.finite = torch.zeros_like(values, dtype=torch.float64), torch.ones_like(ok)
            self.first_bad, self.bad_step = torch.zeros_like(values), torch.full_like(values[0], -1.0)
        newly_bad = self.finite & ~ok
        self.first_bad = torch.where(newly_bad, values, self.first_bad)
        self.bad_step = torch.where(newly_bad, torch.full_like(self.bad_step, float(step)), self.bad_step)
        self.finite = self.finite & ok
        self.sums += values

    def check(self, epoch: int) -> None:
        """Raise :class:`NonFiniteLoss` when a step so far was not finite (one device sync)."""
        if self.finite is not None and not bool(self.finite):
            terms = {f"{LOSS_PREFIX}{term if level is None else term_key(term, level)}": value
                     for (term, level), value in zip(self.names, self.first_bad.tolist())}
            raise NonFiniteLoss(epoch, int(self.bad_step), terms)

    def read(self, steps: int) -> EpochLosses:
        losses = EpochLosses(steps=steps)
        if self.sums is None:
            return losses
        for (term, level), value in zip(self.names, self.sums.tolist()):
            if level is None:
                losses.det[term] = value
            else:
                losses.kd.setdefault(level, {})[term] = value
        return losses


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


def evaluate_model(model: nn.Module, loader, dataset, image_ids: list[int], device: torch.device,
                   amp: torch.dtype | None, label_to_cat_id=None, evaluator: Evaluator = "pycocotools"
                   ) -> dict[str, float]:
    """COCO metrics of ``model`` over ``image_ids`` of ``dataset``; under DDP each rank's
    ``loader`` holds a shard and rank 0 alone receives and scores the detections. ``label_to_cat_id``:
    model label -> category id or None (default: the data set's own numbering). A Mask R-CNN
    is scored on its boxes and on its masks (``segm_*``)."""
    rank, world = _rank_info()
    results = predict(model, loader, device, label_to_cat_id or dataset.label_to_cat_id, amp=amp)
    if world > 1:
        gathered: list[list[dict]] | None = [None] * world if rank == 0 else None  # type: ignore[list-item]
        torch_dist.gather_object(results, gathered, dst=0)
        results = [r for part in gathered for r in part] if rank == 0 else []
    metrics = None
    if rank == 0:
        gt = dataset.ground_truth(evaluator)
        metrics = coco_metrics(gt, results, image_ids, evaluator=evaluator)
        if isinstance(model, MaskRCNN):
            metrics.update(coco_metrics(gt, results, image_ids, iou_type="segm", evaluator=evaluator))
    if world > 1:
        box = [metrics]
        torch_dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    return metrics


@dataclass
class _Run:
    """What :func:`fit` sets up before its first epoch."""

    cfg: ExperimentConfig
    rank: int
    world: int
    device: torch.device
    amp: torch.dtype | None
    train_ds: Any
    val_ds: Any
    val_ids: list[int]
    student: nn.Module
    distiller: nn.Module | None
    space: LabelSpace
    train_module: nn.Module
    train_loader: Any
    val_loader: Any
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None = None
    mask_generator: torch.Generator | None = None


def _setup(cfg: ExperimentConfig, teacher_checkpoint: str | None, log: Callable[[str], None],
           device: torch.device | str | None = None) -> _Run:
    """Data, teacher and student, distiller, DDP wrapper, loaders, optimiser and schedule."""
    rank, world = _rank_info()
    tcfg = cfg.train
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = choose_device(tcfg, device)
    seed_everything(tcfg.seed + rank)
    amp = amp_dtype(tcfg.amp, device)

    train_ds, val_ds = build_datasets(cfg.data, cfg.cache_dir, masks=cfg.student.arch in MASK_ARCHS)
    val_count = min(len(val_ds), cfg.data.val_max_images or len(val_ds))
    # Under DDP each rank predicts every world-th image (no padding duplicates, unlike DistributedSampler).
    val_part = Subset(val_ds, range(rank, val_count, world))

    with_teacher = cfg.teacher is not None and (cfg.distill.method != "none" or cfg.student.inherit)
    pair = build_pair(cfg, train_ds.class_names, train_ds.cat_ids,
                      teacher_checkpoint or (cfg.teacher.checkpoint if with_teacher else None),
                      with_teacher=with_teacher, log=log if rank == 0 else lambda line: None)
    memory_format = torch.channels_last if tcfg.channels_last else torch.preserve_format
    teacher = pair.teacher.to(device, memory_format=memory_format) if pair.teacher is not None else None
    student = pair.student.to(device, memory_format=memory_format)
    distiller = pairs = mask_generator = None
    if cfg.distill.method != "none":
        pairs = distilled_levels(cfg.distill.levels, cfg.student, cfg.teacher)
        distiller = build_distiller(cfg.distill, student_channels=cfg.student.fpn_channels,
                                    teacher_channels=cfg.teacher.fpn_channels, levels=list(pairs),
                                    num_classes=pair.space.num_classes).to(device)
        prepared = ensure_prepared(cfg, teacher, train_ds, device, pair.space.model_labels, log=log)
        if prepared is not None:  # e.g. FreeKD's prompt tokens, trained once on the teacher
            stage, state = prepared
            stage.load(distiller, pairs, state)
        if cfg.distill.draw == "device":
            mask_generator = torch.Generator(device).manual_seed(tcfg.seed * 1_000_003 + rank)
            distiller.generator = mask_generator
    if tcfg.compile:
        compile_parts(student, distiller)

    step_module = DistillStep(student, distiller, teacher if distiller is not None else None, amp,
                              pairs=pairs, distill_amp=amp if cfg.distill.amp else None).to(device)
    train_module: nn.Module = step_module
    if world > 1:  # every parameter takes part in every step (tests/train/test_gpu_execution.py)
        train_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None)

    workers = cfg.data.num_workers or 0
    pin = device.type == "cuda"
    train_loader = build_loader(train_ds, batch_size=tcfg.batch_size, shuffle=True, num_workers=workers,
                                seed=tcfg.seed, drop_last=True, distributed=world > 1, rank=rank, pin_memory=pin)
    val_loader = build_loader(val_part, batch_size=tcfg.batch_size, shuffle=False, num_workers=workers,
                              seed=tcfg.seed, rank=rank, pin_memory=pin)
    steps_per_epoch = len(train_loader)
    if tcfg.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, tcfg.steps_per_epoch)
    if steps_per_epoch == 0:
        raise UserError(f"the training set ({len(train_ds)} images) is smaller than one batch of "
                        f"{tcfg.batch_size} per worker × {world} workers", key="train.batch_size")
    optimizer = build_optimizer(scaled_schedule(tcfg, world, log if rank == 0 else lambda line: None),
                                [m for m in (student, distiller) if m is not None])
    scheduler = build_scheduler(tcfg, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    return _Run(cfg=cfg, rank=rank, world=world, device=device, amp=amp, train_ds=train_ds, val_ds=val_ds,
                val_ids=val_ds.image_ids[:val_count], student=student, distiller=distiller, space=pair.space,
                train_module=train_module, train_loader=train_loader, val_loader=val_loader,
                steps_per_epoch=steps_per_epoch, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                mask_generator=mask_generator)


def scaled_schedule(tcfg: ScheduleConfig, world: int, log: Callable[[str], None]) -> ScheduleConfig:
    """``tcfg`` with its learning rate for the effective batch (``batch_size × world``):
    ``lr_scaling: linear`` multiplies ``lr`` by effective / ``reference_batch`` (the linear
    scaling rule of Goyal et al. 2017); with ``none`` a differing batch is logged in one line.
    Without ``reference_batch`` the recipe's batch is unknown and ``lr`` is used as given."""
    effective = tcfg.batch_size * world
    if tcfg.reference_batch is None or effective == tcfg.reference_batch:
        return tcfg
    if tcfg.lr_scaling == "linear":
        return tcfg.model_copy(update={"lr": tcfg.lr * effective / tcfg.reference_batch})
    log(f"warning: effective batch {effective} ({tcfg.batch_size} × {world} workers) differs from "
        f"train.reference_batch {tcfg.reference_batch} and train.lr_scaling is none: lr {tcfg.lr:g} is used as given")
    return tcfg


def compile_parts(student: nn.Module, distiller: nn.Module | None) -> None:
    """``train.compile``: ``torch.compile`` (in place, state_dict keys unchanged) the student's
    convolution parts and every level's distillation loss."""
    for part in conv_parts(student) + (list(distiller.losses.values()) if distiller is not None else []):
        part.compile()


def _restore(run: _Run, resume_state: dict[str, Any], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Load a checkpoint state into ``run``; returns its history (reports of the epochs done)."""
    run.student.load_state_dict(resume_state["model"])
    if run.distiller is not None and resume_state.get("distiller") is not None:
        run.distiller.load_state_dict(resume_state["distiller"])
    run.optimizer.load_state_dict(resume_state["optimizer"])
    run.scheduler.load_state_dict(resume_state["scheduler"])
    if run.rank == 0:
        log(f"resumed from epoch {int(resume_state['epoch'])}")
    if resume_state.get("rng") and run.world == 1:
        _set_rng_state(resume_state["rng"])
    if run.mask_generator is not None and resume_state.get("mask_rng") is not None:
        run.mask_generator.set_state(resume_state["mask_rng"])
    if run.scaler is not None and resume_state.get("scaler"):
        run.scaler.load_state_dict(resume_state["scaler"])
    return list(resume_state.get("history", []))


def _on_device(run: _Run, batch: tuple[list, list]) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """A loader batch on the run's device, its labels in the model's numbering."""
    images, targets = batch
    images = [device_image(img, run.device) for img in images]
    targets = [{k: (v.to(run.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    for target in targets:
        target["labels"] = run.space.model_labels(target["labels"])
    return images, targets


def train_one_epoch(run: _Run, epoch: int, *, progress: bool) -> EpochLosses:
    """``run.steps_per_epoch`` optimiser steps; returns the epoch's loss sums. Raises
    :class:`NonFiniteLoss` on a NaN/inf loss, checked on the device and read by the host every
    ``train.log_every`` steps and at the epoch's end (the only host-device syncs of a step)."""
    tcfg = run.cfg.train
    loader = run.train_loader
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    _reseed_epoch(loader, tcfg.seed, epoch, run.rank)
    run.student.train()
    sums = _DeviceSums()
    steps = 0
    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch}/{tcfg.epochs}", leave=False,
               disable=not progress or run.rank != 0, file=sys.stderr, dynamic_ncols=True)
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    for batch in loader:
        if steps >= run.steps_per_epoch:
            break
        images, targets = _on_device(run, batch)
        total, step = train_step(run.train_module, run.optimizer, images, targets, params=params,
                                 clip_grad=tcfg.clip_grad, scaler=run.scaler)
        run.scheduler.step()
        sums.add(steps, total, step)
        steps += 1
        bar.update(1)
        if steps % tcfg.log_every == 0:
            sums.check(epoch)
            bar.set_postfix(loss=f"{float(total):.3f}")
    sums.check(epoch)
    bar.close()
    return sums.read(steps)


def _scores(run: _Run, epoch: int, history: list[dict[str, Any]]) -> dict[str, float | None]:
    """COCO metrics after ``epoch``: evaluated every ``train.eval_every`` epochs and after the
    last, else carried from the previous epoch."""
    tcfg = run.cfg.train
    if epoch % tcfg.eval_every == 0 or epoch == tcfg.epochs:
        return evaluate_model(run.student, run.val_loader, run.val_ds, run.val_ids, run.device, run.amp,
                              label_to_cat_id=run.space.label_to_cat_id, evaluator=tcfg.evaluator)
    last = history[-1] if history else {}
    return {k: last.get(k) for k in METRICS if k in BOX_METRICS or k in last}


def fit(
    cfg: ExperimentConfig,
    *,
    teacher_checkpoint: str | None = None,
    resume_state: dict[str, Any] | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    device: torch.device | str | None = None,
) -> EpochRecord | None:
    """Train ``cfg.student`` (distilled from the teacher when ``cfg.distill.method != 'none'``).

    teacher_checkpoint: weights of the teacher (default ``cfg.teacher.checkpoint``).
    resume_state: a state from a previous ``on_epoch_end`` to continue exactly from.
    on_epoch_end(record, make_state): called on every rank after each epoch; ``make_state()``
        returns the checkpoint dict (model, distiller, optimiser, scheduler, epoch, RNG, and
        ``history``: every epoch's :meth:`EpochRecord.as_report`).
    Returns the last epoch's record (None when there was no epoch left to run). Raises
    :class:`NonFiniteLoss` on NaN/inf losses. ``device``: the launcher's (Ray Train's) device
    for this rank (:func:`~raykd.train.setup.choose_device`).
    """
    run = _setup(cfg, teacher_checkpoint, log, device)
    history = _restore(run, resume_state, log) if resume_state is not None else []
    step_module = getattr(run.train_module, "module", run.train_module)  # under DDP: the wrapped DistillStep
    scale = calibrated_scale(cfg.distill, step_module, run.train_loader, lambda b: _on_device(run, b), resume_state,
                             log if run.rank == 0 else lambda line: None)
    step_module.kd_scale = scale if scale is not None else 1.0
    start_epoch = int(resume_state["epoch"]) + 1 if resume_state is not None else 1

    def make_state(epoch: int) -> Callable[[], dict[str, Any]]:
        return lambda: {
            "model": run.student.state_dict(),
            "distiller": run.distiller.state_dict() if run.distiller is not None else None,
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "epoch": epoch, "rng": _rng_state(), "history": history, CALIBRATION_KEY: scale,
            "mask_rng": run.mask_generator.get_state() if run.mask_generator is not None else None,
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            "num_classes": run.space.num_classes, "cat_ids": list(run.train_ds.cat_ids),
            "categories": list(run.space.categories),
        }

    record = EpochRecord.from_report(history[-1]) if history else None
    run_start = time.perf_counter() - ((record.time_total_s or 0.0) if record else 0.0)
    for epoch in range(start_epoch, cfg.train.epochs + 1):
        epoch_start = time.perf_counter()
        losses = train_one_epoch(run, epoch, progress=progress)
        train_time = time.perf_counter() - epoch_start
        scores = _scores(run, epoch, history)
        record = EpochRecord(
            epoch=epoch, epochs_total=cfg.train.epochs, losses=losses.summary(), scores=scores,
            lr=run.optimizer.param_groups[0]["lr"], step_time=train_time / max(losses.steps, 1),
            epoch_time=time.perf_counter() - epoch_start, time_total_s=time.perf_counter() - run_start,
            num_workers=run.world, device=_device_name(run.device), timestamp=time.time(), kd_scale=scale)
        history.append(record.as_report())
        if run.rank == 0:
            log(record.line())
        if on_epoch_end is not None:
            on_epoch_end(record, make_state(epoch))
    return record


def _reseed_epoch(loader, seed: int, epoch: int, rank: int = 0) -> None:
    """Make an epoch's order and flips a function of (seed, epoch, rank) alone, so a resumed run
    sees the same batches as an uninterrupted one (the order is the same on every rank, the
    loader workers' flips differ per rank)."""
    for generator in (getattr(loader.sampler, "generator", None), loader.generator):
        if generator is not None:
            flips = generator is loader.generator
            generator.manual_seed(seed * 100_003 + epoch * 7919 + flips * (1 + 1_000_003 * rank))


def _device_name(device: torch.device) -> str:
    return f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else "cpu"
