"""The Tune trainable: one trial = one experiment with the trial's overrides applied.

``inline`` runs the worker loop inside the Tune trial process (about 1 s of overhead);
``train`` runs it through Ray Train's TorchTrainer (DDP, 16-19 s of overhead per trial on
CPU, benchmarks/trial_overhead.py; docs/architecture.md). Both resume from the trial's last checkpoint after a
failure (how that checkpoint is found: :mod:`raykd.search.tune_state`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray import tune

from raykd.config import SEED_KEY, ExperimentConfig, effective_values, experiment_from_dict, get_dotted, overridden
from raykd.epoch_record import EFFECTIVE_CONFIG, EpochRecord
from raykd.search.tune_state import EPOCH_FILE, FINISHED, reported_epoch, resume_state_of
from raykd.train.checkpoint import STATE_FILE, save_state
from raykd.train.setup import loader_workers


def _defined(config: Mapping[str, Any]) -> dict[str, Any]:
    """Tune's ``config`` without its own ``__`` keys and the keys left undefined (``None``) for this trial."""
    return {key: value for key, value in config.items() if not key.startswith("__") and value is not None}


def trial_overrides(config: Mapping[str, Any], base: Mapping[str, Any], threads: int | None,
                    cpus_per_worker: float | None = None, gpus_per_worker: float = 0) -> dict[str, Any]:
    """The dotted overrides of one trial: Tune's ``config`` (keys whose value is ``None`` are
    undefined for this trial and left out), the seed shifted by ``__trial_index__`` (Tune's
    Repeater, ``search.repeats``), ``train.threads``, and ``data.num_workers``, when unset, from
    ``cpus_per_worker`` and ``gpus_per_worker`` (:func:`~raykd.train.setup.loader_workers`)."""
    overrides = _defined(config)
    if "__trial_index__" in config:
        seed = overrides.get(SEED_KEY, get_dotted(dict(base), SEED_KEY, 0))
        overrides[SEED_KEY] = int(seed) + int(config["__trial_index__"])
    if threads:
        overrides["train.threads"] = threads
    if cpus_per_worker is not None and get_dotted(overridden(base, overrides), "data.num_workers") is None:
        overrides["data.num_workers"] = loader_workers(cpus_per_worker, gpus_per_worker)
    return overrides


def reported_values(config: Mapping[str, Any], cfg: ExperimentConfig) -> str:
    """The :data:`~raykd.epoch_record.EFFECTIVE_CONFIG` report value: JSON of the effective value of
    every key Tune's ``config`` defines for this trial (the seed is the ``seed`` column's)."""
    return json.dumps(effective_values(cfg, [key for key in _defined(config) if key != SEED_KEY]))


def run_trial(config: dict[str, Any], *, base: dict[str, Any], teacher_checkpoint: str | None, executor: str,
              workers: int, cpus_per_worker: float, gpus_per_worker: float, storage_path: str) -> None:
    """Tune function trainable; ``tune.with_parameters`` binds everything but ``config``."""
    overrides = trial_overrides(config, base, threads=max(int(cpus_per_worker), 1) if gpus_per_worker == 0 else None,
                                cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
    exp = overridden(base, overrides)
    cfg = experiment_from_dict(exp)
    extra = {"executor": executor, "seed": cfg.train.seed, EFFECTIVE_CONFIG: reported_values(config, cfg)}
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
