"""Which value of each trial is compared: the fidelity rule, and the trials it leaves out.

ASHA stops weak trials early, so a trial's last value and a completed trial's final value
are measured after different amounts of training. Rules (``--fidelity``):

* ``common-epoch``: every trial's value at epoch E, the last epoch that every finished,
  non-failed trial reached (running trials join once they reach E). Needs the epochs table.
* ``completed``: only trials that ran their full schedule, at their final epoch.
* ``best``: every non-failed trial at its best epoch (optimistic: selected on the same
  validation set, and longer trials get more chances).
* ``auto`` (default): ``common-epoch`` when at least :data:`MIN_TRIALS` trials have a value
  at E, else ``completed`` if that compares more trials.

Failed trials (status ``ERROR``) are never compared, but counted and listed with their error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from raykd.analyze import stats
from raykd.errors import UserError
from raykd.metric_names import METRICS
from raykd.stop_reasons import EARLY_STOPPED, stopped_early_text

FIDELITIES = ("auto", "common-epoch", "completed", "best")
MIN_TRIALS = 3
KEYS = ["experiment", "trial_id"]
EPOCH_VALUES = [*METRICS, "loss_total", "loss_det", "loss_kd", "lr", "step_time", "epoch_time", "time_total_s"]


@dataclass
class Scores:
    """The compared value of each trial, and what was left out and why.

    ``frame``: one row per compared trial: the trial columns, the epoch row it is scored at
    (``epoch`` and the metrics, losses and times of that epoch), ``value`` (the metric) and
    ``cost_h`` (device-hours spent up to that epoch). ``excluded``: one row per trial not
    compared, with ``reason``. ``fidelity``: the rule used; ``epoch``: E for ``common-epoch``.
    """

    frame: pd.DataFrame
    excluded: pd.DataFrame
    fidelity: str
    epoch: int | None
    note: str
    metric: str


def score_trials(trials: pd.DataFrame, epochs: pd.DataFrame | None, metric: str,
                 fidelity: str = "auto", min_trials: int = MIN_TRIALS) -> Scores:
    """Apply the ``fidelity`` rule to ``trials`` (and their ``epochs`` rows, when there are)."""
    if fidelity not in FIDELITIES:
        raise UserError(f"unknown fidelity {fidelity!r}; expected one of {', '.join(FIDELITIES)}", key="--fidelity")
    if epochs is not None and epochs.empty:
        epochs = None
    if fidelity == "common-epoch" and epochs is None:
        raise UserError("--fidelity common-epoch needs the epochs table, and there is none", key="--fidelity")
    live = trials["status"] != "ERROR"
    done = live & (trials["stop_reason"] == "completed")
    if fidelity == "best":
        rows = stats.rows_at_best(epochs, metric, KEYS) if epochs is not None else _trial_rows(trials, "best")
        note = ("best epoch of every non-failed trial (optimistic: the epoch is picked on the same validation "
                "set, and trials stopped early had fewer epochs to pick from)")
        if epochs is None:
            note += "; without an epochs table the best epoch is the one with the best bbox_mAP"
        return _build(trials, rows, live, metric, "best", None, note, lambda r: f"no epoch with a {metric} value")
    if epochs is None:
        note = "completed trials only, at their final epoch" + (
            "" if fidelity == "completed" else " (there is no epochs table to align trials on)")
        return _build(trials, _trial_rows(trials, "final"), done, metric, "completed", None, note, _not_completed)
    last_rows = stats.rows_at_last(epochs, KEYS)
    if fidelity == "completed":
        return _build(trials, last_rows, done, metric, "completed", None,
                      "completed trials only, at their final epoch", _not_completed)
    epoch, reference, how = _common_epoch(trials, epochs, metric)
    rows = stats.rows_at_epoch(epochs, epoch, metric) if epoch is not None else epochs.iloc[0:0]
    note = (f"common epoch: every trial compared at epoch {epoch}, the last epoch all {reference} {how} "
            "non-failed trials reached" if epoch is not None else "no trial has a scored epoch yet")
    common = _build(trials, rows, live, metric, "common-epoch", epoch, note,
                    lambda r: ("still running, not yet at epoch " if r["status"] == "RUNNING"
                               else f"no {metric} at epoch ") + str(epoch))
    if fidelity == "common-epoch" or len(common.frame) >= min_trials:
        return common
    note = (f"completed trials only, at their final epoch: comparing at the common epoch {epoch} "
            f"would leave {len(common.frame)} trial(s), fewer than {min_trials}")
    completed = _build(trials, last_rows, done, metric, "completed", None, note, _not_completed)
    return completed if len(completed.frame) > len(common.frame) else common


def _common_epoch(trials: pd.DataFrame, epochs: pd.DataFrame, metric: str) -> tuple[int | None, int, str]:
    """E, the number of trials it was taken over, and which ones (finished, or running if none)."""
    last = stats.last_scored_epoch(epochs, metric, KEYS)
    last_of = pd.Series([last.get(k, np.nan) for k in trials.set_index(KEYS).index], index=trials.index, dtype=float)
    live = (trials["status"] != "ERROR") & last_of.notna()
    finished = live & (trials["status"] == "TERMINATED")
    reference, how = (finished, "finished") if finished.any() else (live, "running")
    return stats.common_epoch(last_of[reference]), int(reference.sum()), how


def _trial_rows(trials: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Pseudo epoch rows from the trials table's ``final_*`` / ``best_*`` columns."""
    rows = trials[KEYS].copy()
    for m in METRICS:  # a table made by hand may lack the segm columns (box-only runs: null anyway)
        rows[m] = trials[f"{prefix}_{m}"] if f"{prefix}_{m}" in trials else np.nan
    rows["epoch"] = trials["epochs_run"] if prefix == "final" else trials["best_epoch"]
    rows["time_total_s"] = trials["wall_s"]
    return rows


def _not_completed(row: pd.Series) -> str:
    epoch = int(row["epochs_run"]) if not pd.isna(row["epochs_run"]) else 0
    if row["status"] == "RUNNING":
        return f"still running (epoch {epoch})"
    if row["stop_reason"] == EARLY_STOPPED:
        return stopped_early_text(epoch, row["epochs_total"])
    return "no value at its final epoch"


def _build(trials: pd.DataFrame, rows: pd.DataFrame, eligible: pd.Series, metric: str, fidelity: str,
           epoch: int | None, note: str, why_not) -> Scores:
    """Scores of the ``eligible`` trials from the epoch ``rows`` they are scored at.

    Every other trial is listed in ``excluded``: failed ones as failed, the rest with
    ``why_not(trial_row)``.
    """
    rows = rows[rows[metric].notna()]
    columns = [c for c in EPOCH_VALUES if c in rows.columns]
    base = trials[eligible].drop(columns=[c for c in columns if c in trials.columns])
    frame = base.merge(rows[[*KEYS, "epoch", *columns]], on=KEYS, how="inner")
    frame["value"] = frame[metric].astype(float)
    workers = frame["num_workers"].astype(float).fillna(1).clip(lower=1)
    frame["cost_h"] = frame["time_total_s"].astype(float) * workers / 3600.0
    scored = set(zip(frame["experiment"], frame["trial_id"]))
    left = trials[[k not in scored for k in zip(trials["experiment"], trials["trial_id"])]]
    excluded = left[[*KEYS, "status", "stop_reason", "epochs_run", "error"]].copy()
    excluded["reason"] = [
        f"failed after {0 if pd.isna(r['epochs_run']) else int(r['epochs_run'])} epoch(s)" if r["status"] == "ERROR"
        else why_not(r) for _, r in left.iterrows()]
    return Scores(frame.reset_index(drop=True), excluded.reset_index(drop=True), fidelity, epoch, note, metric)
