"""Multiple comparisons: adjusted p-values and intervals for a table's differences to its reference.

A table comparing k configurations (or levels) with the baseline makes k tests; at 95 % each,
about one in twenty differences that are not there look real. ``--correction``:

- ``holm``: Holm's step-down adjusted p-values (family-wise error rate ≤ 5 %), with Bonferroni
  intervals (each at 1 − 0.05/k): the simultaneous intervals Holm's tests are consistent with
  for the comparisons Bonferroni also rejects;
- ``bh``: Benjamini–Hochberg adjusted p-values (false discovery rate ≤ 5 %), with the
  false-coverage-rate intervals of Benjamini & Yekutieli (2005), each at 1 − R·0.05/k with R
  the number of comparisons BH rejects (R = 1 when none);
- ``none``: the unadjusted 95 % intervals.

The default (``auto``) is ``holm`` when a table has more than one comparison, else ``none``.
The family is one table's comparisons (docs/statistics.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from raykd.analyze.stats import CONFIDENCE

CORRECTIONS = ("auto", "holm", "bh", "none")
NAMES = {"holm": "Holm (Bonferroni intervals)", "bh": "Benjamini–Hochberg (FCR intervals)", "none": "none"}


def resolve(correction: str, comparisons: int) -> str:
    """``auto`` as ``holm`` for more than one comparison, else ``none``; others as they are."""
    if correction == "auto":
        return "holm" if comparisons > 1 else "none"
    return correction


def adjust(p: Sequence[float], method: str) -> np.ndarray:
    """Adjusted p-values (NaN ones stay NaN and do not count in the family), as statsmodels'
    ``multipletests(p, method="holm" | "fdr_bh")`` computes them."""
    values = np.asarray(p, dtype=float)
    out = np.full(len(values), math.nan)
    keep = ~np.isnan(values)
    x = values[keep]
    m = len(x)
    if m == 0 or method == "none":
        out[keep] = x
        return out
    order = np.argsort(x, kind="stable")
    ranked = x[order]
    if method == "holm":
        adjusted = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method == "bh":
        adjusted = np.minimum.accumulate((m / np.arange(m, 0, -1)) * ranked[::-1])[::-1]
    else:
        raise ValueError(f"unknown correction {method!r}")
    result = np.empty(m)
    result[order] = np.minimum(adjusted, 1.0)
    out[keep] = result
    return out


def interval_confidence(p: Sequence[float], method: str, confidence: float = CONFIDENCE) -> float:
    """The confidence level of every interval of the family under ``method`` (module docstring)."""
    m = int(np.sum(~np.isnan(np.asarray(p, dtype=float))))
    alpha = 1 - confidence
    if method == "none" or m <= 1:
        return confidence
    if method == "holm":
        return 1 - alpha / m
    rejected = int(np.sum(adjust(p, "bh") <= alpha))
    return 1 - max(rejected, 1) * alpha / m


def correct(table: pd.DataFrame, correction: str, confidence: float = CONFIDENCE) -> tuple[pd.DataFrame, str]:
    """``table`` (difference columns ``diff``, ``diff_low``, ``diff_high``, ``diff_p``,
    ``diff_dof`` at ``confidence``) with ``diff_p_adj`` and the intervals widened to the family's
    level in ``diff_low_adj``/``diff_high_adj``; and the correction applied (:func:`resolve`)."""
    table = table.copy()
    if table.empty or "diff_p" not in table:
        return table, "none"
    p = table["diff_p"].to_numpy(dtype=float)
    method = resolve(correction, int(np.sum(~np.isnan(p))))
    table["diff_p_adj"] = adjust(p, method)
    level = interval_confidence(p, method, confidence)
    low, high = [], []
    for diff, lo, hi, dof in zip(table["diff"], table["diff_low"], table["diff_high"], table["diff_dof"]):
        if any(pd.isna(v) for v in (diff, lo, hi, dof)):
            low.append(math.nan)
            high.append(math.nan)
            continue
        scale = (float(sps.t.ppf((1 + level) / 2, dof)) / float(sps.t.ppf((1 + confidence) / 2, dof))
                 if math.isfinite(dof) else 1.0)
        low.append(diff - (diff - lo) * scale)
        high.append(diff + (hi - diff) * scale)
    table["diff_low_adj"], table["diff_high_adj"] = low, high
    table.attrs["correction"] = method
    table.attrs["correction_confidence"] = level
    return table, method


def caption(method: str, comparisons: int, level: float) -> str:
    """The words a table caption names its correction with."""
    if method == "none":
        return ("correction: none" + (f" ({comparisons} comparisons, unadjusted 95% intervals)"
                                      if comparisons > 1 else ""))
    return (f"correction: {NAMES[method]} over the {comparisons} comparisons of this table; "
            f"intervals at {level * 100:.2f}%, p adjusted")
