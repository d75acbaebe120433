"""The Ray Tune callback that streams every trial's results into the Parquet tables.

This is the only module of :mod:`raykd.results` that imports Ray.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import pyarrow as pa
from ray import cloudpickle
from ray.tune import Callback

from raykd.errors import UserError
from raykd.results.params import ParamSpec
from raykd.results.schema import SEARCH_PHASE
from raykd.results.store import STORAGE_GONE
from raykd.results.writer import TableWriter

log = logging.getLogger(__name__)


class ParquetResultsCallback(Callback):
    """Writes ``trials`` and ``epochs`` part files under ``root`` while Tune runs.

    Tune calls the hooks in the driver's single control thread. Results are buffered and
    published (atomically, one part per table) at the latest ``flush_every_s`` seconds
    after they arrive (0: at once), when a trial completes or errors, when a trial
    registers a Tune checkpoint, when Tune snapshots its experiment state (so anything a
    restored run will not report again is already on disk) and at the end of the
    experiment, when the parts are also compacted (one row per trial). A passing storage error during the run
    is logged and retried at the next
    flush; full, over-quota or read-only storage (``STORAGE_GONE``) is raised at once, which
    stops the search; at the end of the experiment any storage error is raised.

    ``params``: every config key of the trials (dotted, as in ``trial.config``) and its
    Arrow type, see :func:`raykd.results.arrow_type_for`. After ``Tuner.restore`` Tune
    unpickles this callback with the run config and calls :meth:`set_state`; the writer
    then continues the trial rows of earlier sessions from the folder. ``phase``: the
    ``phase`` column of the trials this Tune run starts. ``specs``: the searched parameters'
    distributions, stored in the trials schema metadata (:mod:`raykd.results.params`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        experiment: str,
        params: Mapping[str, pa.DataType],
        flush_every_s: float = 10.0,
        phase: str = SEARCH_PHASE,
        specs: Mapping[str, ParamSpec] | None = None,
    ):
        self.writer = TableWriter(root, experiment, params, flush_every_s=flush_every_s, phase=phase, specs=specs)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.writer.add_result(trial.trial_id, trial.config, result)
        self._flush(due_only=True)

    def on_step_end(self, iteration, trials, **info):
        self._flush(due_only=True)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self._flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.writer.end_trial(trial.trial_id, "TERMINATED", config=trial.config)
        self._flush()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.writer.end_trial(trial.trial_id, "ERROR", config=trial.config, error=trial_error_text(trial))
        self._flush()

    def on_experiment_end(self, trials, **info):
        self.writer.flush()
        try:  # one row per trial from now on; readers deduplicate anyway, so a failure only costs speed
            self.writer.compact()
        except (OSError, UserError) as err:
            log.warning("results: could not compact %s (%s); the part files stay as written", self.writer.root, err)

    def get_state(self) -> dict:
        self._flush()
        return {"seq": self.writer.last_seq}

    def set_state(self, state: dict) -> None:
        self.writer.raise_seq(state.get("seq", 0))

    def _flush(self, due_only: bool = False) -> None:
        try:
            self.writer.maybe_flush() if due_only else self.writer.flush()
        except OSError as err:
            if err.errno in STORAGE_GONE:
                raise  # stops the search: the driver says so in one line, --resume continues
            log.warning(
                "results: could not publish %d pending rows to %s (%s); retrying at the next flush",
                self.writer.pending, self.writer.root, err,
            )


def trial_error_text(trial) -> str:
    """``Type: message`` of the exception that ended ``trial``.

    At ``on_trial_error`` Tune has written the error only to the trial's local folder
    (``error.pkl``, ``error.txt``); it reaches the storage path later.
    """
    try:
        if trial.pickled_error_file and os.path.isfile(trial.pickled_error_file):
            with open(trial.pickled_error_file, "rb") as f:
                err = cloudpickle.load(f)
            cause = getattr(err, "cause", None) or err
            return f"{type(cause).__name__}: {cause}"
    except Exception as exc:  # an exception class the driver cannot import, a torn file...
        log.debug("results: could not unpickle the error of trial %s: %s", trial.trial_id, exc)
    try:
        with open(trial.error_file, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1]
    except (OSError, TypeError, IndexError):
        return "unknown error (see the trial's error.txt)"
