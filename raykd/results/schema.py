"""The Arrow schemas of the three results tables, defined once, with their version.

A results folder holds ``trials/``, ``epochs/`` and ``runs/``, each a folder of immutable
Parquet part files. Every part file carries ``SCHEMA_VERSION``, its table name and the
experiment its rows belong to in the schema metadata (keys ``raykd.schema_version``,
``raykd.table``, ``raykd.experiment``); trials part files also list their parameter
columns (``raykd.params``, a JSON list) and, when the search knew them, the parameters'
distributions (``raykd.param_specs``, :mod:`raykd.results.params`).
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from raykd import metric_names
from raykd.results.params import ParamSpec
from raykd.results.params import dumps as dump_specs

SCHEMA_VERSION = 1
"""Version of the table layout; bumped when a column is renamed, retyped or removed."""

TABLES = ("trials", "epochs", "runs")

VERSION_KEY = b"raykd.schema_version"
TABLE_KEY = b"raykd.table"
PARAMS_KEY = b"raykd.params"
EXPERIMENT_KEY = b"raykd.experiment"
SPECS_KEY = b"raykd.param_specs"

"""COCO metrics reported per epoch (:mod:`raykd.metric_names`: box, then segm), in [0, 1]; null
where COCO has no objects of a size, and segm ones null in runs of box-only detectors."""

LOSSES = metric_names.FIXED_LOSSES
"""Loss columns of their own; every other ``loss_<name>`` goes to the ``loss_terms`` map."""

SEARCH_PHASE = "search"
CONFIRM_PHASE = "confirm"
PHASES = (SEARCH_PHASE, CONFIRM_PHASE)
"""``phase`` of a trial: sampled by the search, or a re-run of a top configuration (or the
baseline) on fresh seeds at the full budget after it."""

TIMESTAMP = pa.timestamp("us", tz="UTC")
LOSS_TERMS = pa.map_(pa.string(), pa.float64())

# Fixed trials columns before and after the parameter columns.
_TRIALS_HEAD = [
    ("experiment", pa.string()),
    ("trial_id", pa.string()),
    ("status", pa.string()),  # RUNNING | TERMINATED | ERROR
    ("stop_reason", pa.string()),  # completed | early_stopped | error | running
    ("phase", pa.string()),  # PHASES
    ("error", pa.string()),
]
_TRIALS_TAIL = (
    [(f"final_{m}", pa.float64()) for m in metric_names.METRICS]
    + [(f"best_{m}", pa.float64()) for m in metric_names.METRICS]
    + [
        ("best_epoch", pa.int64()),
        *((name, pa.float64()) for name in LOSSES),
        ("loss_terms", LOSS_TERMS),
        ("kd_scale", pa.float64()),  # distill.loss_ratio's calibrated multiplier of the default weights
        ("epochs_run", pa.int64()),
        ("epochs_total", pa.int64()),
        ("wall_s", pa.float64()),
        ("device_hours", pa.float64()),
        ("executor", pa.string()),
        ("num_workers", pa.int64()),
        ("device", pa.string()),
        ("seed", pa.int64()),
        ("updated_at", TIMESTAMP),
        ("seq", pa.int64()),
    ]
)
FIXED_TRIAL_COLUMNS = frozenset(name for name, _ in _TRIALS_HEAD + _TRIALS_TAIL)

_EPOCHS = (
    [("experiment", pa.string()), ("trial_id", pa.string()), ("epoch", pa.int64())]
    + [(m, pa.float64()) for m in metric_names.METRICS]
    + [(name, pa.float64()) for name in LOSSES]
    + [
        ("loss_terms", LOSS_TERMS),
        ("kd_scale", pa.float64()),
        ("lr", pa.float64()),
        ("step_time", pa.float64()),  # seconds per optimiser step
        ("epoch_time", pa.float64()),  # seconds
        ("time_total_s", pa.float64()),  # trial wall seconds at this epoch, across restores
        ("written_at", TIMESTAMP),
        ("seq", pa.int64()),
    ]
)

_RUNS = [
    ("experiment", pa.string()),
    ("started_at", TIMESTAMP),
    ("resumed", pa.bool_()),
    ("schema_version", pa.int64()),
    ("raykd_version", pa.string()),
    ("torch_version", pa.string()),
    ("torchvision_version", pa.string()),
    ("ray_version", pa.string()),
    ("optuna_version", pa.string()),
    ("pyarrow_version", pa.string()),
    ("git_commit", pa.string()),
    ("git_dirty", pa.bool_()),
    ("dataset_fingerprint", pa.string()),
    ("space_path", pa.string()),
    ("space_text", pa.string()),
    ("hostname", pa.string()),
    ("platform", pa.string()),
    ("python_version", pa.string()),
    ("cpu_model", pa.string()),
    ("cpu_count", pa.int64()),
    ("cuda_devices", pa.list_(pa.string())),
]

# Columns that identify a row; readers keep the newest row per key.
KEYS = {"trials": ("experiment", "trial_id"), "epochs": ("experiment", "trial_id", "epoch"), "runs": ()}


def file_metadata(table: str, extra: Mapping[bytes, bytes] | None = None) -> dict[bytes, bytes]:
    """Schema metadata of a part of ``table`` written by this version, plus ``extra``."""
    return {VERSION_KEY: str(SCHEMA_VERSION).encode(), TABLE_KEY: table.encode(), **(extra or {})}


def for_experiment(schema: pa.Schema, experiment: str) -> pa.Schema:
    """``schema`` with the experiment of its part recorded in the metadata."""
    return schema.with_metadata({**(schema.metadata or {}), EXPERIMENT_KEY: experiment.encode()})


def trials_schema(params: Mapping[str, pa.DataType], specs: Mapping[str, ParamSpec] | None = None) -> pa.Schema:
    """Schema of ``trials``: one row per trial, each parameter (dotted key) a typed column.

    ``params`` maps every searched and fixed config key to its Arrow type (see
    :func:`arrow_type_for`); the parameter columns sit between ``error`` and the metrics.
    ``specs``: the searched parameters' distributions, stored in the metadata.
    """
    clash = sorted(FIXED_TRIAL_COLUMNS.intersection(params))
    if clash:
        raise ValueError(f"parameter names clash with trials columns: {', '.join(clash)}")
    fields = _TRIALS_HEAD + [(name, pa_type) for name, pa_type in params.items()] + _TRIALS_TAIL
    extra = {PARAMS_KEY: json.dumps(list(params)).encode()}
    if specs:
        extra[SPECS_KEY] = dump_specs(specs)
    return pa.schema(fields, metadata=file_metadata("trials", extra))


def epochs_schema() -> pa.Schema:
    """Schema of ``epochs``: one row per trial and epoch (the learning curves, no parameters)."""
    return pa.schema(_EPOCHS, metadata=file_metadata("epochs"))


def runs_schema() -> pa.Schema:
    """Schema of ``runs``: provenance, one row per search start or resume."""
    return pa.schema(_RUNS, metadata=file_metadata("runs"))


def schema_for(table: str, params: Mapping[str, pa.DataType] | None = None) -> pa.Schema:
    """The schema of ``table`` (one of :data:`TABLES`); ``params`` only matters for trials."""
    if table == "trials":
        return trials_schema(params or {})
    if table == "epochs":
        return epochs_schema()
    if table == "runs":
        return runs_schema()
    raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")


def _scalar_kind(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    if isinstance(value, str):
        return "str"
    raise ValueError(f"unsupported parameter value {value!r} ({type(value).__name__})")


_ARROW = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string()}


def _common_kind(kinds: set[str], values: Sequence) -> str:
    if len(kinds) == 1:
        return next(iter(kinds))
    if kinds == {"int", "float"}:
        return "float"
    raise ValueError(f"parameter values mix types {sorted(kinds)}: {list(values)!r}")


def arrow_type_for(values: Sequence) -> pa.DataType:
    """Arrow type of a parameter whose candidate values (or range bounds) are ``values``.

    bools -> bool, ints -> int64, ints mixed with floats -> float64, strings -> string,
    lists (or tuples) -> list of the common element type (e.g. ``[[1], [1, 2]]`` ->
    ``list<int64>``). ``None`` candidates are ignored; only ``None`` gives ``null``.
    Raises ``ValueError`` for values that mix kinds (e.g. ``[1, "auto"]``).
    """
    present = [v for v in values if v is not None]
    if not present:
        return pa.null()
    lists = [v for v in present if isinstance(v, (list, tuple))]
    if lists and len(lists) != len(present):
        raise ValueError(f"parameter values mix lists and scalars: {list(values)!r}")
    if lists:
        items = [item for v in lists for item in v]
        if not items:
            return pa.list_(pa.int64())
        return pa.list_(_ARROW[_common_kind({_scalar_kind(i) for i in items}, values)])
    return _ARROW[_common_kind({_scalar_kind(v) for v in present}, values)]
