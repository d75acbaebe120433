"""The Ray Train worker: the same :func:`raykd.train.loop.fit`, under DDP on N workers.

This is the one file of ``raykd/train`` that imports Ray. Each epoch every rank calls
``ray.train.report``; rank 0 attaches the checkpoint, so a restarted worker group resumes
from the last epoch (``ray.train.get_checkpoint``). With ``keep_best`` the checkpoint also
holds ``best.pt``, the best epoch's model so far (:func:`raykd.train.teacher.improves`), which
``python -m raykd.train --workers N`` writes out as ``model_best.pt``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer, get_device

from raykd.config import experiment_from_dict
from raykd.epoch_record import EpochRecord
from raykd.train.checkpoint import STATE_FILE, load_state, save_state
from raykd.train.loop import fit
from raykd.train.teacher import improves, save_model

BEST_FILE = "best.pt"
"""Beside ``state.pt`` in a checkpoint (``keep_best``): ``{"model", "metrics", "categories"}`` of the best epoch."""


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train ``train_loop_per_worker``: ``config = {"experiment": dict, "teacher_checkpoint": str|None}``."""
    cfg = experiment_from_dict(config["experiment"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    if config.get("pid_dir"):  # lets fault-injection tests find the worker processes
        Path(config["pid_dir"], f"rank{rank}.pid").write_text(str(os.getpid()))
    resume_state = None
    keep_best = bool(config.get("keep_best")) and rank == 0
    best: dict[str, Any] = {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # this run's own: a restarted worker group
        with checkpoint.as_directory() as folder:
            resume_state = load_state(Path(folder) / STATE_FILE)
            if keep_best and (Path(folder) / BEST_FILE).is_file():
                best = load_state(Path(folder) / BEST_FILE)
    elif config.get("resume_path"):  # an earlier run's (``raykd.train --resume``)
        resume_state = load_state(config["resume_path"])
        if keep_best and (Path(config["resume_path"]).parent / BEST_FILE).is_file():
            best = load_state(Path(config["resume_path"]).parent / BEST_FILE)

    progress_file = config.get("progress_file") if rank == 0 else None

    def report(record: EpochRecord, make_state) -> None:
        metrics = record.as_report()
        if progress_file:  # the driver prints it (its Ray hides the workers' output)
            with open(progress_file, "a") as fh:
                fh.write(record.line() + "\n")
        with tempfile.TemporaryDirectory() as folder:
            ckpt = None
            if rank == 0:
                state = make_state()
                save_state(state, Path(folder) / STATE_FILE)
                if keep_best:
                    if improves(metrics, best.get("metrics", {})):
                        best.update(model={k: v.detach().to("cpu", copy=True) for k, v in state["model"].items()},
                                    metrics=dict(metrics), categories=state.get("categories"))
                    save_state(best, Path(folder) / BEST_FILE)
                ckpt = Checkpoint.from_directory(folder)
            ray.train.report({**metrics, **config.get("extra_metrics", {})}, checkpoint=ckpt)

    # Ray Train's device: the GPU Ray assigned to this worker (CUDA_VISIBLE_DEVICES holds every
    # worker's on the node), or the CPU.
    fit(cfg, teacher_checkpoint=config.get("teacher_checkpoint"), resume_state=resume_state,
        on_epoch_end=report, progress=False, device=get_device())


def scaling_config(workers: int, cpus_per_worker: float, gpus_per_worker: float) -> ScalingConfig:
    """``workers`` Ray Train workers, each asking for exactly ``cpus_per_worker`` CPUs and
    ``gpus_per_worker`` GPUs (a fraction such as 0.25 packs four single-worker trials on one GPU)."""
    resources = {"CPU": cpus_per_worker} | ({"GPU": gpus_per_worker} if gpus_per_worker > 0 else {})
    return ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources)


def make_trainer(
    experiment: dict[str, Any],
    *,
    workers: int,
    gpus_per_worker: float = 0,
    cpus_per_worker: float = 1,
    storage_path: str,
    name: str,
    teacher_checkpoint: str | None = None,
    max_failures: int = 2,
    pid_dir: str | None = None,
    callbacks: list | None = None,
    extra_metrics: dict[str, Any] | None = None,
    resume_path: str | None = None,
    keep_best: bool = False,
    progress_file: str | None = None,
) -> TorchTrainer:
    """A TorchTrainer running :func:`train_worker` on ``workers`` DDP ranks (gloo on CPU, NCCL on GPU),
    each with the resources of :func:`scaling_config`.

    ``name`` must be stable for a trial so a retried run resumes from its own checkpoints;
    ``extra_metrics`` are added to every report (e.g. the executor's name); ``resume_path``: a
    ``state.pt`` of an earlier run to continue from (the run's own checkpoints come first);
    ``keep_best``: rank 0 adds the best epoch's model to every checkpoint (:data:`BEST_FILE`);
    ``progress_file``: rank 0 appends each epoch's progress line to it.
    """
    return TorchTrainer(
        train_worker,
        train_loop_config={"experiment": experiment, "teacher_checkpoint": teacher_checkpoint, "pid_dir": pid_dir,
                           "extra_metrics": {"executor": "train", **(extra_metrics or {})},
                           "resume_path": resume_path, "keep_best": keep_best, "progress_file": progress_file},
        torch_config=TorchConfig(backend="nccl" if gpus_per_worker > 0 else "gloo"),
        scaling_config=scaling_config(workers, cpus_per_worker, gpus_per_worker),
        run_config=RunConfig(
            name=name, storage_path=storage_path, callbacks=callbacks,
            failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )


def train_through_ray(exp, folder: Path, log, *, workers: int, cpus_per_worker: float,
                      gpus_per_worker: float) -> list[dict[str, Any]]:
    """A :data:`raykd.train.teacher.TeacherTrainer` that trains on Ray Train workers with a
    search's resources (Ray already initialised): ``model_best.pt`` and ``model_final.pt`` in
    ``folder``; returns every epoch's report."""
    progress = Path(folder).resolve() / "progress.log"
    progress.unlink(missing_ok=True)
    trainer = make_trainer(exp.model_dump(mode="json"), workers=workers, gpus_per_worker=gpus_per_worker,
                           cpus_per_worker=cpus_per_worker, storage_path=str(Path(folder).resolve() / "ray"),
                           name="teacher", keep_best=True, progress_file=str(progress))
    log(f"training through Ray Train: {workers} worker(s) × {cpus_per_worker:g} CPU, {gpus_per_worker:g} GPU")
    result = _fit_showing(trainer, progress, log)
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as checkpoint:
        state = load_state(Path(checkpoint) / STATE_FILE)
        best = load_state(Path(checkpoint) / BEST_FILE)
    history = state["history"]
    save_model(best["model"], Path(folder) / "model_best.pt", metrics=best["metrics"], categories=best.get("categories"))
    save_model(state["model"], Path(folder) / "model_final.pt", metrics=history[-1],
               categories=state.get("categories"))
    return history


def _fit_showing(trainer: TorchTrainer, progress: Path, log) -> Any:
    """``trainer.fit()``, logging the lines rank 0 appends to ``progress`` while it runs (a
    worker on another node writes where this process cannot see: then nothing is shown)."""
    import threading

    done = threading.Event()
    shown = 0

    def show() -> None:
        nonlocal shown
        text = progress.read_text() if progress.is_file() else ""
        lines = text[:text.rfind("\n") + 1].splitlines()  # whole lines only
        for line in lines[shown:]:
            log(line)
        shown = max(shown, len(lines))

    def follow() -> None:
        while not done.wait(1.0):
            show()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        return trainer.fit()
    finally:
        done.set()
        thread.join()
        show()
