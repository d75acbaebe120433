"""Factors: the parameter columns an ablation tabulates, with their levels.

A factor is a parameter column (dotted key). Strings, bools, lists and the numbers of a
``choice`` are categorical: tabulated level by level. Other numbers (continuous or integer
ranges) are tabulated level by level while every value has two or more trials, else cut into
quantile bins (:data:`DEFAULT_BINS`, ``raykd.analyze --bins``), so each row pools several
trials; they are log scaled (display, plots) when their distribution says so or, for tables
without it, when they span a factor of :data:`LOG_SPAN` or more (loss weights α/β). A factor null in some
trials is *conditional* (e.g. ``distill.beta``,
defined for SAMKD only); its levels only cover the trials where it is defined, and
:attr:`Factor.condition` says where that is when another factor tells.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from raykd.results import ParamSpec

DEFAULT_BINS = 4
"""Quantile bins of a numeric parameter with a value seen in fewer than two trials."""

LOG_SPAN = 30.0
"""Tables without the searched distributions (written before they were stored): positive
numeric parameters whose max/min reaches this are taken as log scaled."""


def log_scale(spec: ParamSpec | None, low: float, high: float) -> bool:
    """Whether a numeric parameter is log scaled: its searched distribution says so
    (``loguniform``, ``int`` with ``log``); for tables that do not store it (``spec`` is
    ``None``), inferred from the values seen, ``low`` to ``high``. The one place for both."""
    if spec is not None and spec.numeric:
        return spec.log
    return low > 0 and high / low >= LOG_SPAN

TEACHER_SEED = "teacher.train.seed"
"""The teacher's seed of a confirmation trial (``confirm.teacher_seeds``; null: the one teacher)."""
SEED_COLUMNS = ("train.seed", TEACHER_SEED)
"""Parameter columns that are seeds: aggregated over, never a factor."""

SCALE = 100.0
"""AP in points, as papers print it: tables, plots and closing lines show metric × SCALE."""
BASELINE_METHOD = "none"
METHOD = "distill.method"


def display(value: object) -> str | None:
    """A parameter value as shown in tables and used as a level label (None for null)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ", ".join(str(v) for v in list(value)) + "]"
    if isinstance(value, (bool, np.bool_)):
        return "on" if value else "off"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


def is_null(value: object) -> bool:
    """True for None and NaN (also inside object columns)."""
    if value is None:
        return True
    if isinstance(value, (list, tuple, np.ndarray)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Factor:
    """One tabulated parameter: its level labels in table order and how values map to them."""

    name: str
    kind: str  # "levels" (each distinct value) or "bins"
    levels: tuple[str, ...]
    edges: tuple[float, ...] = ()  # bin edges (kind "bins"), len(levels) + 1
    log: bool = False
    numeric: bool = False  # values are numbers (drawn on a numeric axis)
    conditional: bool = False
    parent: str | None = None  # the factor whose levels decide where this one is defined
    parent_levels: tuple[str, ...] = ()  # ... and those levels

    @property
    def condition(self) -> str | None:
        """Where a conditional factor is defined, e.g. ``distill.method ∈ {samkd}``."""
        if self.parent is None:
            return None
        return f"{self.parent} ∈ {{{', '.join(self.parent_levels)}}}"

    def level(self, value: object) -> str | None:
        """The level label of a raw ``value`` (None when the value is null)."""
        if is_null(value):
            return None
        if self.kind == "levels":
            return display(value)
        x = float(value)
        for i in range(len(self.levels)):
            if x < self.edges[i + 1] or i == len(self.levels) - 1:
                return self.levels[i]
        raise AssertionError("unreachable")

    @property
    def short(self) -> str:
        """The name without its section (``distill.mask_ratio`` -> ``mask_ratio``)."""
        return self.name.rsplit(".", 1)[-1]


def describe(frame: pd.DataFrame, names: Sequence[str],
             specs: Mapping[str, ParamSpec] | None = None, bins: int = DEFAULT_BINS) -> list[Factor]:
    """Factors for the columns ``names`` of ``frame``, from the values present there and the
    searched distributions ``specs`` (their log scale; a ``choice`` is categorical); numeric
    factors with a value of fewer than two trials in at most ``bins`` quantile bins."""
    factors = [_describe_one(frame, name, (specs or {}).get(name), bins) for name in names]
    return [_with_condition(frame, f, factors) for f in factors]


def _numbers(column: pd.Series) -> np.ndarray | None:
    values = [v for v in column if not is_null(v)]
    if not values or any(isinstance(v, (bool, np.bool_, str, list, tuple, np.ndarray)) for v in values):
        return None
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return None


def _describe_one(frame: pd.DataFrame, name: str, spec: ParamSpec | None, bins: int) -> Factor:
    column = frame[name]
    conditional = bool(column.map(is_null).any()) and not bool(column.map(is_null).all())
    numbers = _numbers(column)
    if numbers is not None:
        distinct, counts = np.unique(numbers, return_counts=True)
        labels = tuple(display(float(v)) for v in distinct)
        categorical = spec is not None and spec.kind in ("choice", "value")
        if (categorical or counts.min() >= 2) and len(set(labels)) == len(labels):
            return Factor(name, "levels", labels, numeric=True, conditional=conditional)
        return _bins(name, numbers, conditional, spec, bins)
    present = [v for v in column if not is_null(v)]
    labels = {display(v) for v in present}
    if name == METHOD and BASELINE_METHOD in labels:
        order = [BASELINE_METHOD, *sorted(labels - {BASELINE_METHOD})]
    elif labels <= {"on", "off"}:
        order = [v for v in ("off", "on") if v in labels]
    elif any(isinstance(v, (list, tuple, np.ndarray)) for v in present):  # by length, then values
        unique = {display(v): tuple(v) for v in present}
        order = sorted(labels, key=lambda lv: (len(unique[lv]), unique[lv]))
    else:
        order = sorted(labels)
    return Factor(name, "levels", tuple(order), conditional=conditional)


def _bins(name: str, numbers: np.ndarray, conditional: bool, spec: ParamSpec | None, bins: int) -> Factor:
    """Quantile bins of the trials' ``numbers`` (equal counts where ties allow): at most
    ``bins``, and at most one per two trials."""
    low, high = float(numbers.min()), float(numbers.max())
    log = log_scale(spec, low, high) and low > 0
    count = max(1, min(bins, len(numbers) // 2))
    edges = np.unique(np.quantile(numbers, np.linspace(0, 1, count + 1)))
    if len(edges) < 2:
        edges = np.array([low, high])
    edges[0], edges[-1] = low, high
    count = len(edges) - 1
    for digits in range(2, 8):
        text = [f"{e:.{digits}g}" for e in edges]
        if len(set(text)) == len(text):
            break
    labels = tuple(f"{text[i]}–{text[i + 1]}" for i in range(count))
    return Factor(name, "bins", labels, tuple(float(e) for e in edges), log=log, numeric=True,
                  conditional=conditional)


def _with_condition(frame: pd.DataFrame, factor: Factor, factors: list[Factor]) -> Factor:
    """``factor`` with its condition: a categorical factor whose levels separate the trials
    where it is defined from those where it is not."""
    if not factor.conditional:
        return factor
    defined = ~frame[factor.name].map(is_null)
    for other in factors:
        if other.name == factor.name or other.conditional or other.kind != "levels":
            continue
        levels = frame[other.name].map(other.level)
        inside, outside = set(levels[defined].dropna()), set(levels[~defined].dropna())
        if inside and not inside & outside:
            return replace(factor, parent=other.name,
                           parent_levels=tuple(lv for lv in other.levels if lv in inside))
    return factor


def level_frame(frame: pd.DataFrame, factors: Sequence[Factor]) -> pd.DataFrame:
    """The level label of every row for every factor (None where undefined); same index."""
    return pd.DataFrame({f.name: frame[f.name].map(f.level) for f in factors}, index=frame.index)
