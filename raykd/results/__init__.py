"""The results tables of a search: one Arrow schema, streaming Parquet writes, readers.

A search folder (local path or pyarrow filesystem URI; :mod:`raykd.results.layout`) holds
``tables/trials/``, ``tables/epochs/`` and ``tables/runs/``, each a folder of immutable Parquet
part files that pandas, polars, DuckDB and pyarrow read directly. While a search runs a trial's
row has one version per update: :func:`load` and :func:`latest_trials` keep the newest
(:func:`latest_sql` is the same as a DuckDB query); when the search ends, and after
:func:`compact`, the part files hold one row per trial. Every reader takes the search folder,
its ``tables/`` or a storage folder holding one search.
``ParquetResultsCallback`` (the Ray Tune callback) is imported on first use, so
``import raykd.results`` does not import Ray.
"""

import warnings

# `python -m raykd.results.compact` runs a module this package imports; runpy warns about that
warnings.filterwarnings("ignore", message=r"'raykd\.results\.compact' found in sys\.modules", category=RuntimeWarning)

from raykd.results.compact import compact  # noqa: E402
from raykd.results.params import ParamSpec
from raykd.results.provenance import write_run, write_run_row
from raykd.results.read import latest_sql, latest_trials, load, load_table, param_names, param_specs
from raykd.results.schema import (
    SCHEMA_VERSION,
    TABLES,
    arrow_type_for,
    epochs_schema,
    runs_schema,
    trials_schema,
)
from raykd.results.writer import TableWriter

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "ParamSpec",
    "ParquetResultsCallback",
    "TableWriter",
    "arrow_type_for",
    "compact",
    "epochs_schema",
    "latest_sql",
    "latest_trials",
    "load",
    "load_table",
    "param_names",
    "param_specs",
    "runs_schema",
    "trials_schema",
    "write_run",
    "write_run_row",
]


def __getattr__(name: str):
    if name == "ParquetResultsCallback":
        from raykd.results.callback import ParquetResultsCallback

        return ParquetResultsCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
