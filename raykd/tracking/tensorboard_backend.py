"""TensorBoard: one event folder per trial, ``FOLDER/<trial name>/``, its epochs as scalars
(step = epoch) and its searched config as hparams; ``tensorboard --logdir FOLDER`` shows them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raykd.metric_names import METRICS
from raykd.tracking.base import TrialInfo

HPARAMS_TAG = "_hparams_/session_start_info"  # the tag torch's hparams summary writes


def tag_of(name: str) -> str:
    """TensorBoard tag of a scalar: ``metrics/bbox_mAP``, ``loss/loss_total``, ``train/lr``."""
    if name in METRICS:
        return f"metrics/{name}"
    return f"loss/{name}" if name.startswith("loss_") else f"train/{name}"


def logged_steps(folder: str | Path) -> set[tuple[str, int]]:
    """(tag, step) of every value already in the event files of ``folder`` (a trial's run),
    whichever driver wrote them; a record torn by a killed driver is skipped."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    found: set[tuple[str, int]] = set()
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            found.update((value.tag, int(event.step)) for value in event.summary.value)
    return found


def hparam_value(value: Any) -> bool | int | float | str | None:
    """A config value as TensorBoard's hparams take it (lists as text; None: not set)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return str(list(value))
    return str(value)


class TensorBoardTracker:
    """Writes ``FOLDER/<trial.name>/events.out.tfevents.*`` with torch's SummaryWriter,
    flushed after every epoch (a killed driver loses nothing it logged)."""

    name = "tensorboard"

    def __init__(self, folder: str | Path):
        self.folder = str(folder)
        self._writers: dict[str, Any] = {}
        self._logged: dict[str, set[tuple[str, int]]] = {}

    def __getstate__(self) -> dict:
        # Pickled with Tune's state: open writers stay behind, the event files tell what is logged.
        return {"folder": self.folder, "_writers": {}, "_logged": {}}

    def _writer(self, trial: TrialInfo):
        writer = self._writers.get(trial.trial_id)
        if writer is not None:
            return writer
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        run = Path(self.folder, trial.name)
        logged = logged_steps(run) if run.is_dir() else set()
        writer = SummaryWriter(str(run))
        if not any(tag == HPARAMS_TAG for tag, _ in logged):
            values = {k: hparam_value(v) for k, v in trial.config.items() if not k.startswith("__")}
            values = {k: v for k, v in values.items() if v is not None}
            for summary in hparams(values, {tag_of(m): None for m in METRICS}):
                writer.file_writer.add_summary(summary)
        self._writers[trial.trial_id], self._logged[trial.trial_id] = writer, logged
        return writer

    def open(self) -> None:
        Path(self.folder).mkdir(parents=True, exist_ok=True)

    def log_epoch(self, trial: TrialInfo, epoch: int, scalars: Mapping[str, float]) -> None:
        writer = self._writer(trial)
        logged = self._logged[trial.trial_id]
        for name, value in scalars.items():
            tag = tag_of(name)
            if (tag, epoch) not in logged:
                writer.add_scalar(tag, value, epoch)
                logged.add((tag, epoch))
        writer.flush()

    def finish(self, trial: TrialInfo, status: str, stop_reason: str) -> None:
        writer = self._writers.pop(trial.trial_id, None)
        self._logged.pop(trial.trial_id, None)
        if writer is not None:
            writer.close()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers, self._logged = {}, {}
