"""The Tune trainable: one trial = one experiment with the trial's overrides applied.

``inline`` runs the worker loop inside the Tune trial process (about 1 s of overhead);
``train`` runs it through Ray Train's TorchTrainer (DDP, 16-19 s of overhead per trial on
CPU, benchmarks/trial_overhead.py; docs/architecture.md). Both resume from the trial's last checkpoint after a
failure (how that checkpoint is found: :mod:`raykd.search.tune_state`).
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from raykd.config import SEED_KEY, experiment_from_dict, get_dotted, set_dotted
from raykd.epoch_record import EpochRecord
from raykd.search.tune_state import EPOCH_FILE, FINISHED, reported_epoch, resume_state_of
from raykd.train.checkpoint import STATE_FILE, save_state
from raykd.train.setup import loader_workers


def trial_experiment(config: dict[str, Any], base: dict[str, Any], threads: int | None,
                     cpus_per_worker: float | None = None, gpus_per_worker: float = 0) -> dict[str, Any]:
    """The experiment mapping of one trial: ``base`` with the trial's dotted keys applied
    (keys whose value is ``None`` are undefined for this trial); ``data.num_workers``, when
    unset, from ``cpus_per_worker`` and ``gpus_per_worker`` (:func:`~raykd.train.setup.loader_workers`).

    With ``search.repeats`` Tune's Repeater sets ``__trial_index__``; it shifts the seed.
    """
    exp = copy.deepcopy(base)
    for key, value in config.items():
        if not key.startswith("__") and value is not None:  # None: a conditional key left undefined
            set_dotted(exp, key, value)
    if "__trial_index__" in config:
        set_dotted(exp, SEED_KEY, int(get_dotted(exp, SEED_KEY, 0)) + int(config["__trial_index__"]))
    if threads:
        set_dotted(exp, "train.threads", threads)
    if cpus_per_worker is not None and get_dotted(exp, "data.num_workers") is None:
        set_dotted(exp, "data.num_workers", loader_workers(cpus_per_worker, gpus_per_worker))
    return exp


def run_trial(config: dict[str, Any], *, base: dict[str, Any], teacher_checkpoint: str | None, executor: str,
              workers: int, cpus_per_worker: float, gpus_per_worker: float, storage_path: str) -> None:
    """Tune function trainable; ``tune.with_parameters`` binds everything but ``config``."""
    exp = trial_experiment(config, base, threads=max(int(cpus_per_worker), 1) if gpus_per_worker == 0 else None,
                           cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
    cfg = experiment_from_dict(exp)
    extra = {"executor": executor, "seed": cfg.train.seed}
    if executor == "inline":
        from raykd.train.loop import fit

        checkpoint = tune.get_checkpoint()
        resume_state = resume_state_of(checkpoint)
        if resume_state is not None and resume_state.get(FINISHED):
            return  # ended before the driver died; Tune's saved state had not recorded it
        if resume_state is not None:
            # Epochs past Tune's checkpoint whose results may never have reached the driver.
            known = reported_epoch(checkpoint)
            for metrics in resume_state.get("history", []):
                if metrics["epoch"] > known:
                    tune.report({**metrics, **extra})

        def report(record: EpochRecord, make_state) -> None:
            with tempfile.TemporaryDirectory() as folder:
                save_state(make_state(), Path(folder) / STATE_FILE)
                (Path(folder) / EPOCH_FILE).write_text(json.dumps({"epoch": record.epoch}))
                tune.report({**record.as_report(), **extra}, checkpoint=tune.Checkpoint.from_directory(folder))

        fit(cfg, teacher_checkpoint=teacher_checkpoint, resume_state=resume_state, on_epoch_end=report,
            progress=False, log=lambda line: None)
        return

    from ray.tune.integration.ray_train import TuneReportCallback

    from raykd.train.worker import make_trainer

    trial_id = tune.get_context().get_trial_id()
    trainer = make_trainer(exp, workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                           storage_path=storage_path, name=f"train-{trial_id}", teacher_checkpoint=teacher_checkpoint,
                           callbacks=[TuneReportCallback()], extra_metrics=extra)
    result = trainer.fit()
    if result.error:
        raise result.error
