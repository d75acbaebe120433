"""TableWriter: Tune results -> ``trials`` and ``epochs`` rows -> published part files.

The writer knows nothing of Ray: :class:`~raykd.results.callback.ParquetResultsCallback`
feeds it from Tune's hooks, tests and other drivers call it directly.

Rules it follows:

* An epoch row is keyed by the ``epoch`` the trainer reports, never Tune's
  ``training_iteration`` (which restarts at 1 after ``Tuner.restore``); a re-reported epoch
  gets a newer ``seq`` and replaces the older row when read. A report of epoch ``e`` drops
  from the trial's summary the epochs after ``e`` (an abandoned attempt).
* The trial row is rewritten whenever the trial changes; readers keep its newest version.
  On the first event of a trial it has not seen, the writer reads what earlier drivers
  wrote for it (after a crash and restore) so that best metrics and wall time span every
  session.
* ``wall_s`` sums Tune's ``time_total_s`` over sessions: a session starts at the clock value
  of its first result minus ``time_this_iter_s`` (Tune restores its clock from a Tune
  checkpoint, and restarts it when the trial has none, e.g. TorchTrainer trials).
* ``device_hours`` = ``wall_s`` x ``num_workers`` / 3600: each Ray Train worker holds one
  device (one GPU when ``device`` is ``cuda:*``, else one CPU worker slot), so this is
  GPU-hours on GPUs and worker-hours on CPUs.
* ``seq`` is a nanosecond clock made strictly increasing within the writer and never
  below the largest ``seq`` already in the folder for the experiment.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from raykd.epoch_record import EFFECTIVE_CONFIG, EpochRecord, finite_number
from raykd.errors import UserError
from raykd.metric_names import METRICS
from raykd.ownership import check_held
from raykd.results import schema as S
from raykd.results.compact import compact
from raykd.results.params import ParamSpec
from raykd.results.read import newest, read_parts
from raykd.results.store import join, publish, resolve
from raykd.stop_reasons import stop_reason

log = logging.getLogger(__name__)

_TERMINAL = {"TERMINATED", "ERROR"}


@dataclass
class _Trial:
    """What the writer knows of one trial."""

    config: dict = field(default_factory=dict)  # parameter column -> coerced value
    effective: dict = field(default_factory=dict)  # dotted key -> the value the run used (its reports)
    phase: str = S.SEARCH_PHASE
    seed: int | None = None
    epochs: dict[int, dict] = field(default_factory=dict)  # epoch -> epoch row
    status: str = "RUNNING"
    error: str | None = None
    epochs_total: int | None = None
    executor: str | None = None
    num_workers: int | None = None
    device: str | None = None
    wall_s: float = 0.0
    session_wall: float | None = None  # wall_s when the current clock session began
    session_clock: float = 0.0  # Tune's time_total_s when the current clock session began
    last_clock: float | None = None


class TableWriter:
    """Buffers ``trials``/``epochs`` rows of one experiment and publishes them as parts.

    ``root``: results folder (local path or pyarrow filesystem URI). ``params``: parameter
    column name (dotted config key) -> Arrow type. Call :meth:`add_result` per Tune result,
    :meth:`end_trial` when a trial ends, and :meth:`flush` (or :meth:`maybe_flush`, which
    flushes at most every ``flush_every_s`` seconds; 0 flushes every time) to publish.
    ``phase``: the ``phase`` of the trials this writer sees first (:data:`~raykd.results.schema.PHASES`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        experiment: str,
        params: Mapping[str, pa.DataType],
        *,
        flush_every_s: float = 10.0,
        phase: str = S.SEARCH_PHASE,
        specs: Mapping[str, ParamSpec] | None = None,
    ):
        self.root = os.fspath(root)
        self.phase = phase
        self.experiment = experiment
        self.params = dict(params)
        self.flush_every_s = flush_every_s
        self._trials_schema = S.for_experiment(S.trials_schema(self.params, specs), experiment)
        self._epochs_schema = S.for_experiment(S.epochs_schema(), experiment)
        try:
            self._fs, self._base = resolve(self.root)
        except (OSError, pa.ArrowInvalid) as err:
            raise UserError(f"cannot use this results location: {err}", file=self.root) from err
        self._trials: dict[str, _Trial] = {}
        self._previous: dict[str, _Trial] | None = None
        self._epoch_rows: list[dict] = []
        self._dirty: set[str] = set()
        self._seq = 0
        self._last_flush = time.monotonic()
        self._warned_no_epoch: set[str] = set()

    def __setstate__(self, state: dict) -> None:
        # Unpickled by Tuner.restore, maybe on another machine: its monotonic clock differs.
        self.__dict__.update(state, _last_flush=time.monotonic())

    # --- events -------------------------------------------------------------------------

    def add_result(self, trial_id: str, config: Mapping, result: Mapping) -> None:
        """Record one Tune result (the trainer's metrics dict plus Tune's own keys); the
        parameter columns take the effective values the result carries (:data:`EFFECTIVE_CONFIG`)
        over Tune's sampled ones."""
        trial = self._trial(trial_id, None)
        if result.get(EFFECTIVE_CONFIG):
            trial.effective = json.loads(result[EFFECTIVE_CONFIG])
        trial = self._trial(trial_id, config)
        trial.status, trial.error = "RUNNING", None
        for name, cast in (("epochs_total", int), ("executor", str), ("num_workers", int), ("device", str),
                           ("seed", int)):
            if result.get(name) is not None:
                setattr(trial, name, cast(result[name]))
        self._advance_clock(trial, result)
        self._dirty.add(trial_id)
        if result.get("epoch") is None:
            if trial_id not in self._warned_no_epoch:
                self._warned_no_epoch.add(trial_id)
                log.warning("trial %s reported a result without 'epoch'; no epoch row written", trial_id)
            return
        record = EpochRecord.from_report(result)
        epoch = record.epoch
        row = {
            "experiment": self.experiment,
            "trial_id": trial_id,
            "epoch": epoch,
            **{m: _metric(record.score(m)) for m in METRICS},
            **dict(zip(S.LOSSES, (record.losses.total, record.losses.det, record.losses.kd))),
            "loss_terms": record.losses.terms,
            "kd_scale": record.kd_scale,
            "lr": record.lr,
            "step_time": record.step_time,
            "epoch_time": record.epoch_time,
            "time_total_s": trial.wall_s,
            "written_at": _now(),
            "seq": self._next_seq(),
        }
        for later in [e for e in trial.epochs if e > epoch]:
            del trial.epochs[later]
        trial.epochs[epoch] = row
        self._epoch_rows.append(row)

    def end_trial(self, trial_id: str, status: str = "TERMINATED", *, config: Mapping | None = None,
                  error: str | None = None) -> None:
        """Mark a trial ended: ``status`` is ``TERMINATED`` or ``ERROR`` (with ``error`` text)."""
        if status not in _TERMINAL:
            raise ValueError(f"status must be one of {sorted(_TERMINAL)}, not {status!r}")
        trial = self._trial(trial_id, config)
        trial.status, trial.error = status, error
        self._dirty.add(trial_id)

    # --- publishing ---------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Rows waiting to be published."""
        return len(self._epoch_rows) + len(self._dirty)

    def maybe_flush(self) -> int:
        """:meth:`flush` if rows are pending and ``flush_every_s`` passed since the last one."""
        if self.pending and time.monotonic() - self._last_flush >= self.flush_every_s:
            return self.flush()
        return 0

    def flush(self) -> int:
        """Publish pending rows (epochs part first, then trials part); returns rows written.

        On a storage error the rows stay pending (a later flush retries) and the error is
        raised.
        """
        if not self.pending:
            return 0
        check_held(self.root)  # a search folder taken over by another driver: stop before mixing rows
        written = 0
        if self._epoch_rows:
            epochs = pa.Table.from_pylist(self._epoch_rows, schema=self._epochs_schema)
            publish(self._fs, join(self._base, "epochs"), epochs)
            written += len(self._epoch_rows)
            self._epoch_rows = []
        if self._dirty:
            rows = [self._trial_row(trial_id) for trial_id in sorted(self._dirty)]
            publish(self._fs, join(self._base, "trials"), pa.Table.from_pylist(rows, schema=self._trials_schema))
            written += len(rows)
            self._dirty = set()
        self._last_flush = time.monotonic()
        return written

    def compact(self) -> dict[str, int]:
        """Publish what is pending, then merge the folder's trials and epochs parts
        (:func:`~raykd.results.compact`): one row per trial. For the end of a search."""
        self.flush()
        check_held(self.root)
        return compact(self.root, tables=("trials", "epochs"))

    @property
    def last_seq(self) -> int:
        """The largest ``seq`` handed out so far."""
        return self._seq

    def raise_seq(self, floor: int) -> None:
        """Never hand out a ``seq`` at or below ``floor`` (e.g. restored callback state)."""
        self._seq = max(self._seq, int(floor))

    # --- state --------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = max(self._seq + 1, time.time_ns())
        return self._seq

    def _trial(self, trial_id: str, config: Mapping | None) -> _Trial:
        trial = self._trials.get(trial_id)
        if trial is None:
            trial = self._load_previous().pop(trial_id, None) or _Trial(phase=self.phase)
            self._trials[trial_id] = trial
        if config is not None:
            flat = {**_flatten(config), **trial.effective}
            trial.config = {k: _coerce(k, flat.get(k), t) for k, t in self.params.items()}
            # The seed a result reported wins: with search.repeats the trainable shifts train.seed.
            if trial.seed is None and flat.get("train.seed") is not None:
                try:
                    trial.seed = _coerce("train.seed", flat.get("train.seed"), pa.int64())
                except ValueError:
                    trial.seed = None
        return trial

    def _advance_clock(self, trial: _Trial, result: Mapping) -> None:
        clock = finite_number(result.get("time_total_s"))
        if clock is None:
            return
        if trial.session_wall is None or (trial.last_clock is not None and clock < trial.last_clock):
            trial.session_wall = trial.wall_s
            trial.session_clock = max(clock - (finite_number(result.get("time_this_iter_s")) or 0.0), 0.0)
        trial.wall_s = trial.session_wall + clock - trial.session_clock
        trial.last_clock = clock

    def _load_previous(self) -> dict[str, _Trial]:
        """Trials of this experiment written by earlier drivers (read once, lazily)."""
        if self._previous is not None:
            return self._previous
        self._previous = {}
        tables = {}
        for name in ("trials", "epochs"):
            table = read_parts(self.root, name, missing_ok=True, experiments=[self.experiment])
            if table is not None:
                table = newest(table.filter(pc.equal(table["experiment"], self.experiment)), name)
                if table.num_rows:
                    self.raise_seq(pc.max(table["seq"]).as_py() or 0)
            tables[name] = table
        if tables["trials"] is not None:
            for row in tables["trials"].to_pylist():
                self._previous[row["trial_id"]] = _Trial(
                    status=row["status"], error=row["error"], epochs_total=row["epochs_total"],
                    phase=row.get("phase") or S.SEARCH_PHASE,
                    executor=row["executor"], num_workers=row["num_workers"], device=row["device"],
                    wall_s=row["wall_s"] or 0.0, seed=row["seed"],
                    config={k: row.get(k) for k in self.params},
                )
        if tables["epochs"] is not None:
            for row in tables["epochs"].to_pylist():
                row["loss_terms"] = dict(row["loss_terms"]) if row["loss_terms"] is not None else None
                self._previous.setdefault(row["trial_id"], _Trial()).epochs[row["epoch"]] = row
        if self._previous:
            log.info("results: continuing %d trials of %r from %s", len(self._previous), self.experiment, self.root)
        return self._previous

    def _trial_row(self, trial_id: str) -> dict:
        trial = self._trials[trial_id]
        last = trial.epochs[max(trial.epochs)] if trial.epochs else {}
        scored = [r for r in trial.epochs.values() if r.get("bbox_mAP") is not None]
        best = max(scored, key=lambda r: (r["bbox_mAP"], -r["epoch"])) if scored else {}
        epochs_run = max(trial.epochs) if trial.epochs else 0
        return {
            "experiment": self.experiment,
            "trial_id": trial_id,
            "status": trial.status,
            "stop_reason": stop_reason(trial.status, epochs_run, trial.epochs_total),
            "phase": trial.phase,
            "error": trial.error,
            **trial.config,
            **{f"final_{m}": last.get(m) for m in METRICS},
            **{f"best_{m}": best.get(m) for m in METRICS},
            "best_epoch": best.get("epoch"),
            **{name: last.get(name) for name in S.LOSSES},
            "loss_terms": last.get("loss_terms"),
            "kd_scale": last.get("kd_scale"),
            "epochs_run": epochs_run,
            "epochs_total": trial.epochs_total,
            "wall_s": trial.wall_s,
            "device_hours": trial.wall_s * max(trial.num_workers or 1, 1) / 3600.0,
            "executor": trial.executor,
            "num_workers": trial.num_workers,
            "device": trial.device,
            "seed": trial.seed,
            "updated_at": _now(),
            "seq": self._next_seq(),
        }


# --- value conversion ------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _metric(value: object) -> float | None:
    """A COCO metric; pycocotools' -1 (no objects of that size) and NaN become null."""
    number = finite_number(value)
    return None if number is None or number < 0 else number


def _flatten(config: Mapping, prefix: str = "") -> dict:
    """Tune's config as dotted keys (it is flat already; nested dicts are joined with '.')."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _coerce(key: str, value: object, pa_type: pa.DataType) -> object:
    """``value`` as a Python value of column type ``pa_type``."""
    if value is None:
        return None
    try:
        if pa.types.is_list(pa_type) or pa.types.is_large_list(pa_type):
            if not isinstance(value, (list, tuple)):
                raise TypeError("not a list")
            return [_coerce(key, item, pa_type.value_type) for item in value]
        if pa.types.is_integer(pa_type):
            number = float(value) if not isinstance(value, int) else value
            if number != int(number):
                raise ValueError("not an integer")
            return int(number)
        if pa.types.is_floating(pa_type):
            return float(value)
        if pa.types.is_boolean(pa_type):
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            if value in (0, 1):
                return bool(value)
            raise ValueError("not a bool")
        if pa.types.is_string(pa_type) or pa.types.is_large_string(pa_type):
            return str(value)
        if pa.types.is_null(pa_type):
            return None
        return value
    except (TypeError, ValueError) as err:
        raise ValueError(f"config key {key!r}: value {value!r} does not fit column type {pa_type} ({err})") from None
