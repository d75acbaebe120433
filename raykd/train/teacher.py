"""The teacher checkpoint: use the configured file, or train one once and cache it.

The cache key hashes the teacher's model and schedule with the data's identity, so a
search and a later search with the same teacher reuse it. A file lock makes two searches
started together train it once.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from raykd.config import ExperimentConfig, ModelConfig, ScheduleConfig, StudentConfig, config_hash
from raykd.epoch_record import metrics_lines
from raykd.errors import UserError
from raykd.train.setup import data_fingerprint


def teacher_experiment(cfg: ExperimentConfig, output_dir: Path) -> ExperimentConfig:
    """The experiment that trains ``cfg.teacher`` as a plain student on the same data."""
    teacher = cfg.teacher
    model = StudentConfig(**teacher.model_dump(include=set(ModelConfig.model_fields)))
    schedule = teacher.train.model_copy(update={"output_dir": str(output_dir)})
    return ExperimentConfig(name=f"{cfg.name}-teacher", data=cfg.data, student=model, train=schedule,
                            cache_dir=cfg.cache_dir)


def _schedule_key(schedule: ScheduleConfig) -> dict:
    """What of a teacher's schedule decides its weights, as keys written before the GPU keys
    existed spelt it: how it runs (device, threads, host reads, compile, memory format, evaluator) is left
    out, the learning-rate rule only when it can act, ``amp`` as the boolean it was for off/bf16."""
    key = schedule.model_dump(exclude={"output_dir", "device", "threads", "log_every", "compile", "channels_last",
                                       "evaluator"})
    if schedule.reference_batch is None:
        key.pop("lr_scaling"), key.pop("reference_batch")
    key["amp"] = {"off": False, "bf16": True}.get(schedule.amp, schedule.amp)
    return key


def teacher_cache_path(cfg: ExperimentConfig) -> Path:
    teacher = cfg.teacher
    key = config_hash(teacher.model_dump(exclude={"checkpoint"}, exclude_none=False) | {
        "train": _schedule_key(teacher.train) if teacher.train else None}, data_fingerprint(cfg))
    return Path(cfg.cache_dir) / "teachers" / key / "model_best.pt"


TeacherTrainer = Callable[[ExperimentConfig, Path, Callable[[str], None]], list[dict]]
"""Trains a teacher experiment into a folder (``model_best.pt``, ``model_final.pt``) and returns
every epoch's report: :func:`train_here` (this process) or
:func:`raykd.train.worker.train_through_ray` (Ray Train workers, as a search's trials run)."""


def needs_training(cfg: ExperimentConfig) -> bool:
    """Whether :func:`ensure_teacher` would train the teacher (no checkpoint file, none cached)."""
    teacher = cfg.teacher
    if teacher is None or teacher.train is None or (teacher.checkpoint and Path(teacher.checkpoint).is_file()):
        return False
    return not (Path(teacher.checkpoint) if teacher.checkpoint else teacher_cache_path(cfg)).is_file()


def train_here(exp: ExperimentConfig, folder: Path, log: Callable[[str], None], progress: bool = True) -> list[dict]:
    """:data:`TeacherTrainer` in this process (:func:`raykd.train.loop.fit`)."""
    from raykd.train.loop import fit

    history: list[dict] = []
    best = BestModel(folder)

    def keep(record, make_state):
        history.append(record.as_report())
        best.update(history[-1], make_state)

    fit(exp, on_epoch_end=keep, progress=progress, log=log)
    return history


def ensure_teacher(cfg: ExperimentConfig, *, log: Callable[[str], None] = print, progress: bool = True,
                   trainer: TeacherTrainer | None = None) -> str | None:
    """Path of a usable teacher checkpoint, training (and caching) it when it is missing; None
    when the teacher is ``teacher.weights`` as they are (no checkpoint, no ``train`` block).
    A trained teacher is its best epoch by bbox_mAP (``model_best.pt``), not its last.
    ``trainer``: how it is trained (default :func:`train_here`)."""
    teacher = cfg.teacher
    if teacher is None:
        raise UserError("no teacher block", key="teacher")
    if teacher.checkpoint and Path(teacher.checkpoint).is_file():
        return teacher.checkpoint
    if teacher.checkpoint is None and teacher.train is None:
        return None
    if teacher.train is None:
        raise UserError("teacher checkpoint not found and no teacher.train block to train one",
                        file=teacher.checkpoint, key="teacher.checkpoint")
    target = Path(teacher.checkpoint) if teacher.checkpoint else teacher_cache_path(cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.parent / ".lock"))  # fcntl underneath: freed when its holder dies
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"teacher: another process is training it (lock {target.parent / '.lock'}); waiting")
        lock.acquire()
    try:
        if target.is_file():
            log(f"teacher: cached at {target}")
            return str(target)
        log(f"teacher: not found, training {teacher.arch} {teacher.backbone}/FPN{teacher.fpn_channels} "
            f"for {teacher.train.epochs} epochs into {target.parent}")
        exp = teacher_experiment(cfg, target.parent)
        if trainer is None:
            history = train_here(exp, target.parent, lambda line: log(f"teacher: {line}"), progress)
        else:
            history = trainer(exp, target.parent, lambda line: log(f"teacher: {line}"))
        (target.parent / "metrics.jsonl").write_text(metrics_lines(history))
        if target.name != "model_best.pt":  # a configured teacher.checkpoint holds the best epoch too
            shutil.copyfile(target.parent / "model_best.pt", target)
        best = teacher_metrics(target.parent / "model_best.pt")
        log(f"teacher: best epoch {best.get('epoch')} of {len(history)} "
            f"(bbox_mAP {best.get(BEST_METRIC, float('nan')):.4f}) kept as {target.name}")
    finally:
        lock.release()
    return str(target)


BEST_METRIC = "bbox_mAP"
"""What ``model_best.pt`` maximises (the search's default metric)."""


class BestModel:
    """Keeps ``model_best.pt`` (highest :data:`BEST_METRIC` so far; the first epoch when none is
    measured yet) and ``model_final.pt`` (last epoch) in ``folder`` from ``on_epoch_end`` calls."""

    def __init__(self, folder: Path, metric: str = BEST_METRIC):
        self.folder, self.metric = Path(folder), metric
        self.metrics: dict = {}

    def update(self, metrics: dict, make_state: Callable[[], dict]) -> None:
        improved = improves(metrics, self.metrics, self.metric)
        last = metrics["epoch"] == metrics["epochs_total"]
        if not (improved or last):
            return
        state = make_state()
        if improved:
            self.metrics = dict(metrics)
            save_model(state["model"], self.folder / "model_best.pt", metrics=metrics,
                       categories=state.get("categories"))
        if last:
            save_model(state["model"], self.folder / "model_final.pt", metrics=metrics,
                       categories=state.get("categories"))


def improves(metrics: dict, best: dict, metric: str = BEST_METRIC) -> bool:
    """Whether an epoch's ``metrics`` beat the ``best`` epoch's so far (none yet: it does;
    unmeasured: it does not; a tie keeps the earlier epoch)."""
    value, kept = metrics.get(metric), best.get(metric)
    return not best or (value is not None and (kept is None or value > kept))


def save_model(state_dict: dict, path: Path, *, metrics: dict | None = None,
               categories: list[str] | None = None) -> None:
    """Write ``{"model": state_dict, "metrics": ..., "categories": [...]}`` atomically (temporary
    file, then rename); ``categories``: model label -> class name, background first."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"model": state_dict, "metrics": metrics or {}, "categories": list(categories or [])}, tmp)
    os.replace(tmp, path)


def teacher_metrics(path: str | Path) -> dict:
    """The metrics stored with a raykd checkpoint (empty for foreign checkpoints)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return dict(state.get("metrics", {})) if isinstance(state, dict) else {}



def check_teacher(cfg: ExperimentConfig, path: str | Path | None) -> dict:
    """Build the teacher and student from ``path`` (or ``teacher.weights``), as every trial
    will, and return the teacher's stored metrics; a missing, corrupt or mismatched file, or a
    teacher unfit for the method, is a one-line :class:`UserError` before any trial starts."""
    from raykd.models.levels import distilled_levels
    from raykd.train.setup import build_pair, resolve_data

    val = resolve_data(cfg.data, cfg.cache_dir).val_annotations  # smaller than train, same categories
    try:
        with open(val, encoding="utf-8") as fh:
            categories = sorted((c["id"], c["name"]) for c in json.load(fh)["categories"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read the categories ({type(err).__name__}: {err})", file=val,
                        key="data.val.annotations") from None
    if cfg.distill.method != "none":
        distilled_levels(cfg.distill.levels, cfg.student, cfg.teacher)
    build_pair(cfg, [name for _, name in categories], [cat for cat, _ in categories],
               str(path) if path else None, with_teacher=True, log=lambda line: None)
    return teacher_metrics(path) if path else {}
