"""Ray hooks that feed the trackers: a Tune callback for searches and a Ray Train callback
for ``raykd.train --workers N``. Both run where Ray calls them (the driver, the Train
controller) and open their files and connections there, lazily."""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.train import UserCallback

from raykd.tracking.base import ERROR, TERMINATED, TrialInfo
from raykd.tracking.feed import RunFeed, TrackerFeed
from raykd.tracking.setup import TrackingSetup


def trial_info(trial, phase: str) -> TrialInfo:
    """A Tune trial as the trackers name it (``trial_<id>``, as its folder)."""
    config = {k: v for k, v in trial.config.items() if not k.startswith("__")}
    return TrialInfo(trial.trial_id, f"trial_{trial.trial_id}", config, phase)


class TrackingCallback(tune.Callback):
    """Every result of every trial to the trackers of ``setup``, and each trial's end.

    Pickled with Tune's state and restored by ``Tuner.restore``: it carries the set-up only;
    the backends read back what they already hold, so a resumed search logs no epoch twice.
    ``phase``: the phase tag of the trials of this Tune run.
    """

    def __init__(self, setup: TrackingSetup, phase: str = "search"):
        self.feed = TrackerFeed(setup)
        self.phase = phase

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self.feed.open()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.feed.epoch(trial_info(trial, self.phase), result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.feed.finish(trial_info(trial, self.phase), TERMINATED, trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.feed.finish(trial_info(trial, self.phase), ERROR, trial.last_result)

    def on_experiment_end(self, trials, **info):
        self.feed.close()


class TrainTrackingCallback(UserCallback):
    """Rank 0's report of every epoch of a ``raykd.train --workers N`` run to the trackers."""

    def __init__(self, setup: TrackingSetup, trial: TrialInfo):
        self.feed = TrackerFeed(setup)
        self.trial = trial

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if metrics:
            self.feed.epoch(self.trial, metrics[0])


def tune_callbacks(setup: TrackingSetup, phase: str = "search") -> list:
    """The Tune callback feeding ``setup``'s trackers (none without backends)."""
    return [TrackingCallback(setup, phase)] if setup.backends else []


def ray_train_callbacks(feed: RunFeed) -> list:
    """Callbacks for Ray Train's ``RunConfig``: each epoch of ``feed``'s run logged as the workers report it."""
    return [TrainTrackingCallback(feed.setup, feed.trial)] if feed.setup.backends else []
