"""The Tune trainable: one trial = one experiment with the trial's overrides applied.

``inline`` runs the worker loop inside the Tune trial process (about 1 s of overhead);
``train`` runs it through Ray Train's TorchTrainer (DDP, 16-19 s of overhead per trial on
CPU, see docs/architecture.md). Both resume from the trial's last checkpoint after a failure.
"""

from __future__ import annotations

import copy
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from ray import tune

from raykd.config import SEED_KEY, experiment_from_dict, get_dotted, set_dotted
from raykd.errors import UserError
from raykd.train.checkpoint import STATE_FILE, load_state, save_state

FINISHED = "finished"
EPOCH_FILE = "epoch.json"  # beside the state in each trial checkpoint


def trial_experiment(config: dict[str, Any], base: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """The experiment mapping of one trial: ``base`` with the trial's dotted keys applied
    (keys whose value is ``None`` are undefined for this trial, as in the confirmation phase).

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
    return exp


def resume_state_of(checkpoint: tune.Checkpoint | None) -> dict[str, Any] | None:
    """The training state a restarted trial continues from.

    Tune names the checkpoint of its last saved search state. After a driver was killed that
    one can be stale (newer checkpoints were written since), deleted (``num_to_keep``, or the
    trial finished) or torn; on a local disk the trial's newest readable checkpoint folder is
    used instead, and with none the trial starts over (its results are re-reported and
    replace the earlier rows in the tables).
    """
    if checkpoint is None:
        return None
    folder = Path(checkpoint.path)
    if not isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        with checkpoint.as_directory() as local:
            return load_state(Path(local) / STATE_FILE)
    for candidate in sorted(folder.parent.glob("checkpoint_*"), reverse=True):
        try:
            return load_state(candidate / STATE_FILE)
        except UserError:  # torn by a kill while Tune copied it
            continue
    return None


def reported_epoch(checkpoint: tune.Checkpoint) -> int:
    """The epoch whose result was reported with ``checkpoint`` (0 when unknown)."""
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{EPOCH_FILE}") as stream:
            return int(json.loads(stream.read())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def finished_marker() -> bytes:
    """The bytes of the training state that says the trial has ended (see
    :class:`raykd.search.tuner.ShrinkFinishedCheckpoints`)."""
    buffer = io.BytesIO()
    torch.save({FINISHED: True}, buffer)
    return buffer.getvalue()


def run_trial(config: dict[str, Any], *, base: dict[str, Any], teacher_checkpoint: str | None, executor: str,
              workers: int, cpus_per_worker: float, gpus_per_worker: float, storage_path: str) -> None:
    """Tune function trainable; ``tune.with_parameters`` binds everything but ``config``."""
    exp = trial_experiment(config, base, threads=max(int(cpus_per_worker), 1) if gpus_per_worker == 0 else None)
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

        def report(metrics: dict[str, Any], make_state) -> None:
            with tempfile.TemporaryDirectory() as folder:
                save_state(make_state(), Path(folder) / STATE_FILE)
                (Path(folder) / EPOCH_FILE).write_text(json.dumps({"epoch": metrics["epoch"]}))
                tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(folder))

        fit(cfg, teacher_checkpoint=teacher_checkpoint, resume_state=resume_state, on_epoch_end=report,
            progress=False, log=lambda line: None)
        return

    from ray.tune.integration.ray_train import TuneReportCallback

    from raykd.train.worker import make_trainer

    trial_id = tune.get_context().get_trial_id()
    trainer = make_trainer(exp, workers=workers, use_gpu=gpus_per_worker > 0, cpus_per_worker=cpus_per_worker,
                           storage_path=storage_path, name=f"train-{trial_id}", teacher_checkpoint=teacher_checkpoint,
                           callbacks=[TuneReportCallback()], extra_metrics=extra)
    result = trainer.fit()
    if result.error:
        raise result.error
