"""Feeding trackers: one backend failing never stops a search or a training run."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from raykd.stop_reasons import stop_reason
from raykd.tracking.base import ERROR, TERMINATED, Tracker, TrialInfo, epoch_scalars
from raykd.tracking.setup import TrackingSetup, run_config

log = logging.getLogger(__name__)


class TrackerFeed:
    """Sends epochs and ends of trials to every tracker of ``setup``.

    A backend that raises (server gone, database locked...) is reported in one warning and
    left out for the rest of this driver: the Parquet tables still hold everything, and a
    ``--resume`` of an unfinished search fills in what it missed (each backend skips the
    epochs it holds).
    """

    def __init__(self, setup: TrackingSetup):
        self.setup = setup
        self._trackers: list[Tracker] | None = None
        self._last: dict[str, tuple[int, int | None]] = {}  # trial id -> (epoch, epochs_total)

    def __getstate__(self) -> dict:
        return {"setup": self.setup, "_trackers": None, "_last": {}}

    @property
    def trackers(self) -> list[Tracker]:
        if self._trackers is None:
            self._trackers = self.setup.trackers()
        return self._trackers

    def open(self) -> None:
        """Connect every tracker (a new MLflow database takes seconds to set up)."""
        self._each("open")

    def epoch(self, trial: TrialInfo, result: Mapping[str, Any]) -> None:
        """One epoch's result (the trainer's metrics dict; without ``epoch`` it is ignored)."""
        if result.get("epoch") is None:
            return
        epoch = int(result["epoch"])
        total = result.get("epochs_total")
        self._last[trial.trial_id] = (epoch, int(total) if total is not None else None)
        scalars = epoch_scalars(result)
        self._each("log_epoch", trial, epoch, scalars)

    def finish(self, trial: TrialInfo, status: str, last_result: Mapping[str, Any] | None = None) -> None:
        """The trial ended with ``status``; ``last_result`` tells its last epoch when this
        driver saw none of its results (it ended right after a resume)."""
        epoch, total = self._last.pop(trial.trial_id, (None, None))
        if epoch is None and last_result:
            epoch, total = last_result.get("epoch"), last_result.get("epochs_total")
        self._each("finish", trial, status, stop_reason(status, epoch, total))

    def close(self) -> None:
        self._each("close")

    def _each(self, method: str, *args) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as err:  # a tracker is a mirror: its failure must not end the run
                log.warning("tracking: %s failed (%s: %s); not logging to it for the rest of this run (the "
                            "tables hold every epoch)", tracker.name, type(err).__name__, err)
                self.trackers.remove(tracker)


class RunFeed:
    """The trackers of one ``raykd.train`` run, seen as a single trial ``train``.

    Use as a context manager around the training: it marks the run TERMINATED when the block
    ends, ERROR when it raises, and closes the trackers.
    """

    TRIAL_ID = "train"

    def __init__(self, setup: TrackingSetup, config: Mapping[str, Any]):
        self.setup = setup
        self.trial = TrialInfo(self.TRIAL_ID, setup.experiment, dict(config), phase="train")
        self.feed = TrackerFeed(setup)
        self._last: Mapping[str, Any] | None = None

    def epoch(self, metrics: Mapping[str, Any]) -> None:
        """One epoch's metrics as :func:`raykd.train.loop.fit` hands them over."""
        self._last = metrics
        self.feed.epoch(self.trial, metrics)

    def history(self, epochs: list[Mapping[str, Any]]) -> None:
        """Epochs of a training state (a resumed run's, or a Ray Train run's at its end):
        those the trackers lack (a killed run may not have logged its last one)."""
        for metrics in epochs:
            self.epoch(metrics)

    def __enter__(self) -> RunFeed:
        self.feed.open()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self.setup.backends:
            self.feed.finish(self.trial, ERROR if kind is not None else TERMINATED, self._last)
        self.feed.close()


def run_feed(setup: TrackingSetup, experiment: Mapping[str, Any]) -> RunFeed:
    """The :class:`RunFeed` of a ``raykd.train`` run of ``experiment``
    (``ExperimentConfig.model_dump(mode="json")``) into ``setup``'s trackers."""
    return RunFeed(setup, run_config(experiment))
