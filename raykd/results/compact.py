"""Merging a results folder's part files, so that reading a long search stays fast."""

from __future__ import annotations

import os
from itertools import groupby

from raykd.errors import UserError
from raykd.results import schema as S
from raykd.results.layout import find_tables
from raykd.results.read import concat, newest, read_files
from raykd.results.store import join, list_parts, publish, resolve


def compact(root: str | os.PathLike, *, tables: tuple[str, ...] = S.TABLES) -> dict[str, int]:
    """Replace the part files of each table under ``root`` by one part per experiment.

    ``root``: a search folder, its ``tables/`` folder or a storage folder holding one search
    (:func:`~raykd.results.layout.find_tables`). Afterwards ``trials`` holds exactly one row
    per trial and ``epochs`` one per (trial, epoch), so a plain query of the part files
    (DuckDB's ``SELECT count(*) FROM 'tables/trials/*.parquet'``) counts trials; a search
    compacts its tables when it ends. Returns the number of parts merged per table (a
    single part holding superseded rows counts as merged). A merged part holds the newest version
    of each row (older trial rows and re-reported epochs are dropped) with its ``seq``, so
    parts that a running search publishes meanwhile still win. Safe while a search writes:
    the merged part is published before the parts it replaces are deleted, and readers list
    again when a part vanishes under them. Refuses parts of a newer schema version.
    """
    fs, base = resolve(root)
    found = find_tables(fs, base, os.fspath(root))
    base = found.tables if found else base
    merged = {}
    for table in tables:
        folder = join(base, table)
        paths = list_parts(fs, folder)
        merged[table] = 0
        if not paths:
            continue
        parts = read_files([(fs, path) for path in paths], table)
        if max(p.version for p in parts) > S.SCHEMA_VERSION:
            raise UserError("parts written by a newer results schema; compact them with that raykd", file=folder)
        by_experiment = sorted(parts, key=lambda p: p.experiment or "")
        for experiment, group in groupby(by_experiment, key=lambda p: p.experiment or ""):
            group = list(group)
            rows = newest(concat([p.table for p in group], table), table)
            if len(group) < 2 and rows.num_rows == group[0].table.num_rows:
                continue  # one part, one row per key already
            if experiment:
                rows = rows.replace_schema_metadata(S.for_experiment(rows.schema, experiment).metadata)
            publish(fs, folder, rows)
            for part in group:
                try:
                    fs.delete_file(part.path)
                except FileNotFoundError:  # another compaction got there first
                    pass
            merged[table] += len(group)
    return merged


if __name__ == "__main__":  # python -m raykd.results.compact RESULTS: the same as python -m raykd.results compact
    import sys

    from raykd.errors import run_cli
    from raykd.results.__main__ import main

    run_cli(lambda argv: main(["compact", *sys.argv[1:]]), "python -m raykd.results.compact")
