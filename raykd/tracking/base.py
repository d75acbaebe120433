"""The interface every tracking backend implements, and the scalars of one epoch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from raykd.epoch_record import finite_number
from raykd.metric_names import METRICS

OTHER_SCALARS = ("lr", "step_time", "epoch_time")  # learning rate; seconds per step and per epoch
RUNNING, TERMINATED, ERROR = "RUNNING", "TERMINATED", "ERROR"  # statuses, as the trials table


@dataclass(frozen=True)
class TrialInfo:
    """One trial (or one ``raykd.train`` run) as the trackers name it.

    ``trial_id``: Tune's id (unique within its search folder); ``name``: the run's display
    name and TensorBoard sub-folder; ``config``: the searched keys (dotted) and their values;
    ``phase``: ``search`` or ``confirm`` for searches, ``train`` for ``raykd.train``.
    """

    trial_id: str
    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    phase: str = "search"


class Tracker(Protocol):
    """A tracking backend. Calls come from one thread; a backend never logs the same
    (scalar, epoch) twice, also across drivers (it reads back what it already holds)."""

    name: str

    def open(self) -> None:
        """Connect before the first trial (MLflow: its database and experiment), so the
        first epoch does not stall the search."""

    def log_epoch(self, trial: TrialInfo, epoch: int, scalars: Mapping[str, float]) -> None:
        """Record ``scalars`` (see :func:`epoch_scalars`) of ``epoch`` (1-based) as step ``epoch``."""

    def finish(self, trial: TrialInfo, status: str, stop_reason: str) -> None:
        """The trial ended: ``status`` TERMINATED or ERROR, ``stop_reason`` as in the trials
        table (completed, early_stopped, error)."""

    def close(self) -> None:
        """Release files and connections (the search or run is over)."""


def epoch_scalars(result: Mapping[str, Any]) -> dict[str, float]:
    """The scalars trackers show of one epoch's result: the COCO metrics (pycocotools' -1,
    "no objects of that size", and NaN left out, as the tables make them null), every
    ``loss_*`` term, the learning rate and the step and epoch times in seconds."""
    out: dict[str, float] = {}
    for key, value in result.items():
        if key in METRICS or key in OTHER_SCALARS or key.startswith("loss_"):
            number = finite_number(value)
            if number is None or (key in METRICS and number < 0):
                continue
            out[key] = number
    return out


