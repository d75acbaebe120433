"""Readers: one or several results folders (or part files) -> one deduplicated table."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raykd.errors import UserError
from raykd.results import schema as S
from raykd.results.layout import TABLES_DIR, find_tables
from raykd.results.params import ParamSpec
from raykd.results.params import dumps as dump_specs
from raykd.results.params import loads as load_specs
from raykd.results.store import join, list_parts, location, resolve

if TYPE_CHECKING:
    import pandas as pd

PathLike = str | os.PathLike
Filters = Mapping[str, object] | pc.Expression | None

_READ_THREADS = 8


def load(
    paths: PathLike | Iterable[PathLike],
    *,
    table: str = "trials",
    filters: Filters = None,
    experiment: str | Iterable[str] | None = None,
) -> pd.DataFrame:
    """Read ``table`` (``trials``, ``epochs`` or ``runs``) as a pandas DataFrame.

    Same arguments and rules as :func:`load_table`; ``loss_terms`` comes back as dicts and
    the parameter column names of a trials table are in ``df.attrs["raykd.params"]``.
    """
    arrow = load_table(paths, table=table, filters=filters, experiment=experiment)
    df = arrow.to_pandas(maps_as_pydicts="strict")
    df.attrs["raykd.params"] = param_names(arrow.schema)
    return df


def load_table(
    paths: PathLike | Iterable[PathLike],
    *,
    table: str = "trials",
    filters: Filters = None,
    experiment: str | Iterable[str] | None = None,
) -> pa.Table:
    """Read ``table`` from search folders, tables folders, table folders or part files, as one Arrow table.

    ``paths``: a local path, a pyarrow filesystem URI (``s3://...``, ``file:///...``) or a
    list of them; each a search folder (``STORAGE/NAME``), its ``tables/`` folder, a storage
    folder holding exactly one search, one table's folder of parts, or a part file
    (:func:`raykd.results.layout.find_tables`). Part schemas are unified permissively (a column missing from a part is
    null there; int64 and double merge to double); parts of an older schema version load
    with the columns they lack as null, parts of a newer version load with a warning.
    ``trials`` keeps the newest row per (experiment, trial_id), ``epochs`` per (experiment,
    trial_id, epoch) -- newest by ``seq``, then ``updated_at``/``written_at``; ``runs``
    keeps every row, sorted by ``started_at``.
    ``experiment``: keep only these experiments. ``filters``: ``{column: value}`` or
    ``{column: [values]}`` (``None`` matches null; for a list column the value is a list),
    or a ``pyarrow.compute`` expression; applied after deduplication, so they see the
    newest row of each trial. Raises :class:`~raykd.errors.UserError` when a path or its
    part files are missing, or a filter names no column.
    """
    if table not in S.TABLES:
        raise UserError(f"unknown table {table!r}; expected one of {', '.join(S.TABLES)}", key="table")
    wanted = None if experiment is None else [experiment] if isinstance(experiment, str) else list(experiment)
    result = read_parts(paths, table, missing_ok=False, experiments=wanted)
    if result is None:
        where = ", ".join(os.fspath(p) for p in _as_list(paths))
        raise UserError(f"no {table!r} rows of experiment {', '.join(wanted)}", file=where)
    if wanted is not None:
        result = result.filter(pc.is_in(result["experiment"], value_set=pa.array(wanted, result["experiment"].type)))
    result = newest(result, table)
    return _apply_filters(result, filters)


def latest_trials(folder: PathLike, *, experiment: str | Iterable[str] | None = None) -> pa.Table:
    """The latest state of every trial, one row each, also while a search runs.

    While a search runs, ``tables/trials`` holds every version a trial's row went through (parts
    are immutable; the newest ``seq`` wins), so a plain query of the part files counts a trial
    once per version; when the search ends (and after :func:`~raykd.results.compact`) it holds
    one row per trial. ``folder``: a search folder, its ``tables/``, or a storage folder holding
    one search. For SQL engines the same rows are :func:`latest_sql`.
    """
    return load_table(folder, table="trials", experiment=experiment)


def latest_sql(folder: PathLike, table: str = "trials") -> str:
    """A DuckDB query of the latest rows of ``table`` under ``folder`` (as :func:`latest_trials`),
    to use as a view or sub-query: ``duckdb.sql(f"SELECT count(*) FROM ({latest_sql('results/x')})")``.

    Reads the part files directly (``union_by_name``: parts of one search may differ in their
    parameter columns) and keeps the newest row per key, by ``seq`` then write time.
    """
    if table not in S.TABLES:
        raise UserError(f"unknown table {table!r}; expected one of {', '.join(S.TABLES)}", key="table")
    origin = os.fspath(folder)
    fs, base = resolve(origin)
    found = find_tables(fs, base, origin)
    if found is None:
        raise UserError(f"no raykd tables here (expected a search folder, its {TABLES_DIR}/ folder or a storage "
                        "folder holding one search)", file=origin)
    where = location(origin, join(found.tables, table))
    source = f"read_parquet('{where.replace(chr(39), chr(39) * 2)}/part-*.parquet', union_by_name = true)"
    keys = S.KEYS[table]
    if not keys:
        return f"SELECT * FROM {source}"
    stamp = "updated_at" if table == "trials" else "written_at"
    partition = ", ".join(f'"{k}"' for k in keys)
    return (f"SELECT * FROM {source} QUALIFY row_number() OVER "
            f"(PARTITION BY {partition} ORDER BY seq DESC NULLS LAST, {stamp} DESC NULLS LAST) = 1")


def param_names(schema: pa.Schema) -> list[str]:
    """Parameter column names recorded in a trials schema's metadata (empty otherwise)."""
    raw = (schema.metadata or {}).get(S.PARAMS_KEY)
    return json.loads(raw) if raw else []


def param_specs(schema: pa.Schema) -> dict[str, ParamSpec]:
    """The searched parameters' distributions recorded in a trials schema's metadata
    (empty for tables written before they were stored)."""
    return load_specs((schema.metadata or {}).get(S.SPECS_KEY))


def read_parts(
    paths: PathLike | Iterable[PathLike],
    table: str,
    *,
    missing_ok: bool,
    experiments: Iterable[str] | None = None,
) -> pa.Table | None:
    """All rows of every part of ``table`` under ``paths``, unified, not deduplicated.

    ``experiments``: skip parts whose metadata names another experiment (so that another
    experiment's column types never get in the way). With ``missing_ok`` a path without
    parts gives ``None`` instead of a :class:`UserError`. A part that vanishes between
    listing and reading (merged away by :func:`~raykd.results.compact`) makes it list again.
    """
    for attempt in range(3):
        files = [f for p in _as_list(paths) for f in _part_files(p, table, missing_ok)]
        if not files:
            return None
        try:
            parts = read_files(files, table)
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    newer = max(p.version for p in parts)
    if newer > S.SCHEMA_VERSION:
        warnings.warn(
            f"{table}: part files written with results schema version {newer}, newer than this "
            f"raykd's {S.SCHEMA_VERSION}; reading the columns as they are (update raykd to "
            "interpret new columns)",
            stacklevel=3,
        )
    if experiments is not None:
        keep = set(experiments)
        parts = [p for p in parts if p.experiment is None or p.experiment in keep]
    return concat([p.table for p in parts], table) if parts else None


class Part(NamedTuple):
    """One part file as read: its rows and what its metadata says."""

    path: str
    table: pa.Table
    version: int  # 0 when the file carries no version
    experiment: str | None


def read_files(files: list[tuple[pafs.FileSystem, str]], table: str) -> list[Part]:
    """Read the part ``files`` (filesystem, path) of ``table``."""
    with ThreadPoolExecutor(min(_READ_THREADS, len(files))) as pool:
        return list(pool.map(lambda f: _read_part(*f, table), files))


def _as_list(paths: PathLike | Iterable[PathLike]) -> list[PathLike]:
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    return list(paths)


def _part_files(path: PathLike, table: str, missing_ok: bool) -> list[tuple[pafs.FileSystem, str]]:
    """(filesystem, path) of the parts of ``table`` that ``path`` points to."""
    origin = os.fspath(path)
    try:
        fs, base = resolve(path)
        info = fs.get_file_info(base)
    except (OSError, pa.ArrowInvalid) as err:
        raise UserError(f"cannot open results location: {err}", file=origin) from err
    if info.type == pafs.FileType.File:
        return [(fs, base)]
    if info.type == pafs.FileType.Directory:
        found = find_tables(fs, base, origin)
        sub = join(found.tables if found else base, table)
        folder = sub if found or fs.get_file_info(sub).type == pafs.FileType.Directory else base
        parts = list_parts(fs, folder)
        if parts or missing_ok:
            return [(fs, part) for part in parts]
        raise UserError(
            f"no {table!r} part files here (expected a search folder, its {TABLES_DIR}/ folder, a storage "
            f"folder holding one search, or {table}/part-*.parquet)",
            file=origin,
        )
    if missing_ok:
        return []
    raise UserError("no such results folder or file", file=origin)


def _read_part(fs: pafs.FileSystem, path: str, table: str) -> Part:
    try:
        with fs.open_input_file(path) as f:
            rows = pq.ParquetFile(f).read()
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowInvalid) as err:
        raise UserError(f"not a readable Parquet part file: {err}", file=path) from err
    meta = rows.schema.metadata or {}
    stored = meta.get(S.TABLE_KEY)
    if stored is not None and stored.decode() != table:
        raise UserError(f"this part belongs to the {stored.decode()!r} table, not {table!r}", file=path)
    experiment = meta.get(S.EXPERIMENT_KEY)
    return Part(path, rows, int(meta.get(S.VERSION_KEY, b"0")), experiment.decode() if experiment else None)


def concat(parts: list[pa.Table], table: str) -> pa.Table:
    """``parts`` of ``table`` as one table: schemas unified permissively, canonical order."""
    canonical = S.schema_for(table)
    params: list[str] = []
    specs: dict[str, ParamSpec] = {}
    for part in parts:
        params += [p for p in param_names(part.schema) if p not in params]
        specs.update(param_specs(part.schema))
    try:
        unified = pa.unify_schemas(
            [p.schema.remove_metadata() for p in parts] + [canonical.remove_metadata()],
            promote_options="permissive",
        )
    except (pa.ArrowTypeError, pa.ArrowInvalid) as err:
        raise UserError(f"part files of the {table!r} table disagree on a column type: {err}") from err
    unified = _ordered(unified, canonical)
    extra = {S.PARAMS_KEY: json.dumps(params).encode()} if table == "trials" else {}
    if table == "trials" and specs:
        extra[S.SPECS_KEY] = dump_specs(specs)
    unified = unified.with_metadata(S.file_metadata(table, extra))
    return pa.concat_tables([_conform(p, unified) for p in parts])


def _ordered(unified: pa.Schema, canonical: pa.Schema) -> pa.Schema:
    """Canonical columns in canonical order, unknown columns (parameters) after ``error``."""
    known = canonical.names
    cut = known.index("error") + 1 if "error" in known else len(known)
    head = [unified.field(n) for n in known[:cut]]
    other = [f for f in unified if f.name not in known]
    tail = [unified.field(n) for n in known[cut:]]
    return pa.schema(head + other + tail)


def _conform(part: pa.Table, schema: pa.Schema) -> pa.Table:
    """``part`` with the columns of ``schema``: missing ones null, others cast where needed."""
    if part.schema.remove_metadata().equals(schema.remove_metadata()):
        return part.replace_schema_metadata(schema.metadata)
    have = dict(zip(part.column_names, part.columns))
    columns = []
    for f in schema:
        column = have.get(f.name)
        if column is None:
            column = pa.nulls(part.num_rows, f.type)
        elif column.type != f.type:
            column = column.cast(f.type)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def newest(table: pa.Table, name: str) -> pa.Table:
    """Keep the newest row per key (by ``seq``, then write time); rows sorted by key."""
    keys = list(S.KEYS[name])
    if not keys:
        return table.sort_by([("started_at", "ascending")])
    stamp = "updated_at" if name == "trials" else "written_at"
    order = pa.table({  # nulls (parts of old schema versions) rank oldest
        "seq": pc.fill_null(table["seq"], -1),
        "stamp": pc.fill_null(table[stamp].cast(pa.int64()), -1),
    })
    indices = pc.sort_indices(order, sort_keys=[("seq", "descending"), ("stamp", "descending")])
    ranked = table.take(indices).append_column("__rank", pa.array(range(table.num_rows), pa.int64()))
    first = ranked.group_by(keys, use_threads=False).aggregate([("__rank", "min")])
    kept = ranked.take(first["__rank_min"])
    return kept.drop_columns(["__rank"]).sort_by([(k, "ascending") for k in keys])


def _apply_filters(table: pa.Table, filters: Filters) -> pa.Table:
    if filters is None:
        return table
    if isinstance(filters, pc.Expression):
        return table.filter(filters)
    for column, value in filters.items():
        if column not in table.column_names:
            raise UserError(
                f"no column {column!r} in the table; columns: {', '.join(table.column_names)}", key=column
            )
        try:
            table = table.filter(_mask(table[column], value))
        except (TypeError, pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise UserError(
                f"filter value {value!r} does not fit column type {table[column].type} ({err})", key=column
            ) from err
    return table


def _mask(column: pa.ChunkedArray, value: object) -> pa.Array:
    """Rows where ``column`` is ``value`` or one of the values in ``value``."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        many = isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, (list, tuple)) for v in value)
        if value is not None and not isinstance(value, (list, tuple)):
            raise TypeError("a list column is matched by a list, or a list of lists")
        wanted = [list(v) for v in value] if many else [None if value is None else list(value)]
        return pa.array([v in wanted for v in column.to_pylist()], pa.bool_())
    wanted = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
    mask = pc.fill_null(pc.is_in(column, value_set=pa.array([w for w in wanted if w is not None], column.type)), False)
    if None in wanted:
        mask = pc.or_(mask, pc.is_null(column))
    return mask
