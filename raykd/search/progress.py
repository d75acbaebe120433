"""Readable progress of a search: one line per trial event and a periodic summary."""

from __future__ import annotations

import sys
import time
from typing import Any

from ray.tune import Callback

from raykd.epoch_record import EpochRecord
from raykd.results.callback import trial_error_text
from raykd.stop_reasons import stopped_early, stopped_early_text


def _short(config: dict[str, Any]) -> str:
    """``method=mgd alpha=2e-06 seed=1``: each key by the shortest dotted suffix no other key
    shares (``train.seed=101 teacher.train.seed=0`` when a confirmation seeds the teacher)."""
    keys = [key for key in config if not key.startswith("__")]
    parts = []
    for key in keys:
        words = key.split(".")
        name = next(".".join(words[-n:]) for n in range(1, len(words) + 1)
                    if n == len(words) or sum(k.split(".")[-n:] == words[-n:] for k in keys) == 1)
        value = config[key]
        parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


class ProgressCallback(Callback):
    """Prints trial starts, epochs, ends and errors, and a summary every ``summary_every_s``.

    ``epochs``: the experiment's ``train.epochs``; a trial's own schedule (``train.epochs``
    searched or fixed by the space) is the ``epochs_total`` its results report (``epochs`` when
    a result lacks it).
    """

    def __init__(self, metric: str, mode: str, *, epochs: int, summary_every_s: float = 60.0, quiet: bool = False):
        self.metric, self.mode, self.epochs = metric, mode, epochs
        self.summary_every_s = summary_every_s
        self.quiet = quiet
        self._last_summary = time.monotonic()
        self._best: tuple[float, str] | None = None
        self._counts = {"running": 0, "done": 0, "stopped": 0, "error": 0}
        self._last_epoch: dict[str, tuple[int, int]] = {}  # trial id -> (last epoch, its schedule's epochs)

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(f"[raykd {time.strftime('%H:%M:%S')}] {text}", file=sys.stdout, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._counts["running"] += 1
        self._say(f"trial {trial.trial_id} started: {_short(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" not in result:
            return
        record = EpochRecord.from_report(result)
        epoch = record.epoch
        total = int(result.get("epochs_total") or self.epochs)
        self._last_epoch[trial.trial_id] = (epoch, total)
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            better = self._best is None or (value > self._best[0] if self.mode == "max" else value < self._best[0])
            if better:
                self._best = (float(value), trial.trial_id)
            self._say(f"trial {trial.trial_id} epoch {epoch}/{total}: {self.metric} {value:.4f} "
                      f"loss {record.losses.total or float('nan'):.3f} ({record.epoch_time or 0:.0f} s)")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._counts["running"] -= 1
        epoch, total = self._last_epoch.get(trial.trial_id, (0, self.epochs))
        if stopped_early(epoch, total):
            self._counts["stopped"] += 1
            self._say(f"trial {trial.trial_id} {stopped_early_text(epoch, total)}")
        else:
            self._counts["done"] += 1
            value = (trial.last_result or {}).get(self.metric)
            self._say(f"trial {trial.trial_id} completed: {self.metric} {value}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._counts["running"] -= 1
        self._counts["error"] += 1
        self._say(f"trial {trial.trial_id} FAILED: {trial_error_text(trial)}")

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self._last_summary < self.summary_every_s:
            return
        self._last_summary = time.monotonic()
        best = f", best {self.metric} {self._best[0]:.4f} ({self._best[1]})" if self._best else ""
        pending = sum(1 for t in trials if t.status == "PENDING")
        c = self._counts
        self._say(f"summary: {len(trials)} trials - {c['running']} running, {pending} pending, {c['done']} "
                  f"completed, {c['stopped']} stopped early, {c['error']} failed{best}")
