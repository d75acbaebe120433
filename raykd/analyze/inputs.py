"""Finding and reading what the analysis works from: the tables, the teacher's metrics, filters.

A RESULTS argument is a search folder (``STORAGE/NAME``, tables under ``tables/`` and the
teacher's metrics in ``teacher.json``, see :mod:`raykd.results.layout`), a tables folder
(``trials/``, ``epochs/``, ``runs/``), a storage folder holding one search, one table's
folder of part files, or Parquet part files (each part says in its
metadata which table it belongs to). Local paths and pyarrow URIs (``s3://...``) both work.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from raykd.errors import UserError
from raykd.results import ParamSpec, load, load_table, param_names, param_specs
from raykd.results import schema as S
from raykd.results.layout import TEACHER_FILE, find_tables
from raykd.results.store import join, list_parts, location, resolve


@dataclass
class Sources:
    """Where each table's parts are, per table name, and the teacher files found."""

    tables: dict[str, list[str]] = field(default_factory=lambda: {name: [] for name in S.TABLES})
    teacher_files: list[str] = field(default_factory=list)


@dataclass
class Inputs:
    """The rows the analysis reads: trials (filtered), their epochs, provenance, teacher."""

    trials: pd.DataFrame
    epochs: pd.DataFrame | None
    params: list[str]
    teacher: dict[str, float] | None
    objectives: list[tuple[str, str]]  # (metric, mode) of the search, from its space file
    total_trials: int  # before --filter
    specs: dict[str, ParamSpec] = field(default_factory=dict)  # the searched distributions (old tables: none)
    teacher_seeds: dict[str, dict] = field(default_factory=dict)  # teacher.json's confirm.teacher_seeds record
    confirm_teacher: dict[str, float] | None = None  # the confirmation's own teacher (confirm.set changed it)
    rank_check: bool = False  # the space asked for confirm.rank_check


def locate(paths: Sequence[str]) -> Sources:
    """Where the ``trials``/``epochs``/``runs`` parts and ``teacher.json`` of ``paths`` are.

    Raises :class:`UserError` for a path that does not exist or holds no raykd tables.
    """
    sources = Sources()
    for origin in map(os.fspath, paths):
        try:
            fs, base = resolve(origin)
            info = fs.get_file_info(base)
        except (OSError, pa.ArrowInvalid) as err:
            raise UserError(f"cannot open results location: {err}", file=origin) from err
        if info.type == pafs.FileType.NotFound:
            raise UserError("no such results folder or file", file=origin)
        if info.type == pafs.FileType.File:
            sources.tables[_table_of_file(fs, base, origin)].append(location(origin, base))
            continue
        folders, teacher_dirs = _table_folders(fs, base.rstrip("/"), origin)
        if not folders:
            raise UserError("no raykd tables here (expected a search folder with tables/, a tables folder "
                            "with trials/ and epochs/, a storage folder holding one search, or Parquet part "
                            "files)", file=origin)
        for name, folder in folders.items():
            sources.tables[name].append(location(origin, folder))
        for folder in teacher_dirs:
            candidate = join(folder, TEACHER_FILE)
            if fs.get_file_info(candidate).type == pafs.FileType.File:
                sources.teacher_files.append(location(origin, candidate))
                break
    if not sources.tables["trials"]:
        raise UserError("no 'trials' part files here (expected tables/trials/part-*.parquet)",
                        file=", ".join(map(os.fspath, paths)))
    return sources


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path.strip("/") else path


def _table_folders(fs: pafs.FileSystem, base: str, origin: str) -> tuple[dict[str, str], list[str]]:
    """Folders holding parts of each table under ``base``, and where ``teacher.json`` may be.

    ``base`` is a search folder, a tables folder or a storage folder holding one search
    (:func:`~raykd.results.layout.find_tables`), or one table's folder of parts
    (``.../tables/trials``: its sibling tables are used too).
    """
    found = find_tables(fs, base, origin)
    if found is not None:
        root = found.tables
        teacher_dirs = [found.search] if found.tables != base else [base, _parent(base)]
    else:
        parts = list_parts(fs, base)
        if not parts:
            return {}, []
        name = _table_of_file(fs, parts[0], parts[0])
        if base.rsplit("/", 1)[-1] != name:
            return {name: base}, [_parent(base)]
        root = _parent(base)
        teacher_dirs = [root, _parent(root)]
    folders = {name: join(root, name) for name in S.TABLES if list_parts(fs, join(root, name))}
    return folders, teacher_dirs


def _table_of_file(fs: pafs.FileSystem, path: str, origin: str) -> str:
    try:
        with fs.open_input_file(path) as f:
            meta = pq.read_schema(f).metadata or {}
    except (OSError, pa.ArrowInvalid) as err:
        raise UserError(f"not a readable Parquet part file: {err}", file=origin) from err
    table = meta.get(S.TABLE_KEY, b"").decode()
    if table not in S.TABLES:
        raise UserError("this Parquet file is not a raykd table part (no raykd.table in its metadata)", file=origin)
    return table


def parse_filters(specs: Sequence[str], trials_schema: pa.Schema) -> dict[str, object]:
    """``--filter KEY=V1,V2`` arguments as reader filters, values typed by the column.

    ``null`` matches a null (an undefined conditional parameter); a list column takes
    bracketed lists, ``[1,2],[1,2,4]`` (or one list without brackets, ``1,2,4``); bool
    columns take ``true/false/on/off``. Repeated keys narrow further (every filter holds).
    """
    filters: dict[str, list] = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise UserError(f"expected KEY=VALUE[,VALUE...], got {spec!r}", key="--filter")
        if key not in trials_schema.names:
            raise UserError(f"no column {key!r} in the trials table; parameters: "
                            f"{', '.join(param_names(trials_schema)) or '(none)'}", key="--filter")
        values = _typed_values(key, text.strip(), trials_schema.field(key).type)
        if key in filters:
            values = [v for v in values if v in filters[key]]
        filters[key] = values
    return {key: _reader_value(key, values, trials_schema.field(key).type) for key, values in filters.items()}


def _reader_value(key: str, values: list, pa_type: pa.DataType) -> object:
    """The reader's form: a list column matches ``None`` or a list of lists, not both."""
    if not (pa.types.is_list(pa_type) or pa.types.is_large_list(pa_type)) or None not in values:
        return values
    if len(values) > 1:
        raise UserError("null cannot be combined with lists for a list column", key=f"--filter {key}")
    return None


def _typed_values(key: str, text: str, pa_type: pa.DataType) -> list:
    if pa.types.is_list(pa_type) or pa.types.is_large_list(pa_type):
        if text.startswith("["):
            groups = [g.strip(" ,") for g in text.replace("]", "]\n").split("\n") if g.strip(" ,")]
            if not all(g.startswith("[") and g.endswith("]") for g in groups):
                raise UserError(f"expected lists like [1,2],[1,2,4], got {text!r}", key=f"--filter {key}")
            items = [g[1:-1] for g in groups]
        else:
            items = [text]
        return [None if item.strip() == "null" else
                [_scalar(key, v.strip(), pa_type.value_type) for v in item.split(",") if v.strip()]
                for item in items]
    return [_scalar(key, v.strip(), pa_type) for v in text.split(",")]


def _scalar(key: str, text: str, pa_type: pa.DataType) -> object:
    if text == "null":
        return None
    try:
        if pa.types.is_boolean(pa_type):
            lowered = text.lower()
            if lowered in ("true", "on", "1", "yes"):
                return True
            if lowered in ("false", "off", "0", "no"):
                return False
            raise ValueError("expected true/false")
        if pa.types.is_integer(pa_type):
            return int(text)
        if pa.types.is_floating(pa_type):
            return float(text)
    except ValueError:
        raise UserError(f"value {text!r} does not fit column type {pa_type}", key=f"--filter {key}") from None
    return text


def read_inputs(paths: Sequence[str], filter_specs: Sequence[str] = ()) -> Inputs:
    """Read the trials (narrowed by ``filter_specs``), their epochs, the teacher and the objectives."""
    sources = locate(paths)
    every = load_table(sources.tables["trials"])
    params = param_names(every.schema)
    if filter_specs:
        trials = load(sources.tables["trials"], filters=parse_filters(filter_specs, every.schema))
        if trials.empty:
            raise UserError("no trials left after filtering", key="--filter")
    else:
        trials = every.to_pandas(maps_as_pydicts="strict")
    if trials.empty:
        raise UserError("the trials table has no rows", file=", ".join(sources.tables["trials"]))
    epochs = None
    if sources.tables["epochs"]:
        epochs = load(sources.tables["epochs"], table="epochs")
        kept = pd.MultiIndex.from_frame(trials[["experiment", "trial_id"]])
        epochs = epochs[pd.MultiIndex.from_frame(epochs[["experiment", "trial_id"]]).isin(kept)]
        epochs = epochs.reset_index(drop=True)
    space = _space(sources.tables["runs"])
    confirm = space.get("confirm") if isinstance(space.get("confirm"), dict) else {}
    return Inputs(trials=trials.reset_index(drop=True), epochs=epochs, params=params,
                  teacher=_teacher(sources.teacher_files), objectives=_objectives(space),
                  total_trials=every.num_rows, specs=param_specs(every.schema),
                  teacher_seeds=_teacher_seeds(sources.teacher_files), rank_check=confirm.get("rank_check") is True,
                  confirm_teacher=_confirm_teacher(sources.teacher_files))


def _teacher_records(files: list[str]):
    """Each readable ``teacher.json`` (a JSON object), in order."""
    for path in files:
        fs, where = resolve(path)
        try:
            with fs.open_input_stream(where) as f:
                data = json.loads(f.read().decode())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            yield data


def _scores(record: dict) -> dict[str, float]:
    # pycocotools writes -1 for "no objects of this size": not a score.
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v != -1}


def _teacher(files: list[str]) -> dict[str, float] | None:
    """The teacher's metrics from the first readable ``teacher.json`` (numbers only)."""
    for data in _teacher_records(files):
        if metrics := _scores(data):
            return metrics
    return None


def _confirm_teacher(files: list[str]) -> dict[str, float] | None:
    """The metrics of the confirmation's own teacher (``confirm_teacher`` in ``teacher.json``: a
    ``confirm.set`` that changed the data or the teacher), or None when it is the search's."""
    for data in _teacher_records(files):
        record = data.get("confirm_teacher")
        if isinstance(record, dict) and (metrics := _scores(record)):
            return metrics
    return None


def _teacher_seeds(files: list[str]) -> dict[str, dict]:
    """The ``teacher_seeds`` record (seed -> checkpoint and metrics) of the first ``teacher.json`` holding one."""
    for data in _teacher_records(files):
        record = data.get("teacher_seeds")
        if isinstance(record, dict):
            return {str(k): v for k, v in record.items() if isinstance(v, dict)}
    return {}


def _space(runs_paths: list[str]) -> dict:
    """The newest space file recorded in the runs table (empty when none is readable)."""
    if not runs_paths:
        return {}
    runs = load(runs_paths, table="runs")
    texts = [t for t in runs["space_text"] if isinstance(t, str) and t.strip()]
    if not texts:
        return {}
    try:
        spec = yaml.safe_load(texts[-1]) or {}
    except yaml.YAMLError:
        return {}
    return spec if isinstance(spec, dict) else {}


def _objectives(spec: dict) -> list[tuple[str, str]]:
    """(metric, mode) pairs of the space file ``spec`` (the default objective when empty)."""
    if not spec:
        return []
    metrics = spec.get("metric", "bbox_mAP")
    modes = spec.get("mode", "max")
    metrics = metrics if isinstance(metrics, list) else [metrics]
    modes = modes if isinstance(modes, list) else [modes] * len(metrics)
    return [(str(m), str(d)) for m, d in zip(metrics, modes)]
