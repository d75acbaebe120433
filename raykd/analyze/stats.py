"""Statistics on trial rows: means with t-intervals, paired or Welch differences, rung alignment.

Pure functions on numbers and DataFrames. Every interval is two-sided at ``confidence``
(default 95 %). Sample standard deviations use ``ddof=1``; with fewer than two values an
interval (or a difference's interval) is undefined and comes back as NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with its t-interval ``[low, high]``; ``std`` is the sample std."""

    n: int
    mean: float
    std: float
    low: float
    high: float

    @property
    def half(self) -> float:
        """Half-width of the interval (NaN when undefined)."""
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class Difference:
    """``mean(a) - mean(b)`` with its interval ``[low, high]`` and degrees of freedom.

    ``paired``: the interval is a paired t-interval over ``n`` pairs (same seeds on both
    sides); otherwise Welch's, and ``n`` is the smaller side's count.
    """

    diff: float
    low: float
    high: float
    dof: float
    paired: bool = False
    n: int = 0
    p: float = math.nan  # two-sided p-value of "no difference" (NaN when the interval is undefined)
    confidence: float = CONFIDENCE

    @property
    def test(self) -> str:
        """``paired`` or ``welch``: which interval this is."""
        return "paired" if self.paired else "welch"


def _clean(values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values) if not isinstance(values, (np.ndarray, pd.Series)) else values, dtype=float)
    return array[~np.isnan(array)]


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student-t interval ``mean ± t_{(1+c)/2, n-1} · s / √n`` of ``values`` (NaNs dropped)."""
    x = _clean(values)
    n = len(x)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Interval(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


def welch_diff(a: Iterable[float], b: Iterable[float], confidence: float = CONFIDENCE) -> Difference:
    """``mean(a) - mean(b)`` with a Welch interval (unequal variances, Welch–Satterthwaite dof).

    With fewer than two values on either side the interval is NaN; when both variances are
    zero the interval collapses to the difference itself.
    """
    x, y = _clean(a), _clean(b)
    n = min(len(x), len(y))
    if len(x) == 0 or len(y) == 0:
        return Difference(math.nan, math.nan, math.nan, math.nan, n=n)
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return Difference(diff, math.nan, math.nan, math.nan, n=n)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se2 = vx + vy
    if se2 == 0:
        return Difference(diff, diff, diff, math.inf, n=n, p=_degenerate_p(diff), confidence=confidence)
    dof = float(se2**2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1)))
    half = float(sps.t.ppf((1 + confidence) / 2, dof)) * math.sqrt(se2)
    return Difference(diff, diff - half, diff + half, dof, n=n, p=_t_p(diff / math.sqrt(se2), dof),
                      confidence=confidence)


def paired_diff(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """``mean(a_i - b_i)`` with the paired t-interval ``d̄ ± t_{(1+c)/2, n-1} · s_d / √n``.

    ``a[i]`` and ``b[i]`` are one pair (the same seed: same data order and initialisation).
    Pairs with a NaN on either side are dropped; fewer than two pairs give a NaN interval.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = (x - y)[~(np.isnan(x) | np.isnan(y))]
    n = len(d)
    if n == 0:
        return Difference(math.nan, math.nan, math.nan, math.nan, paired=True, n=0)
    diff = float(d.mean())
    if n < 2:
        return Difference(diff, math.nan, math.nan, math.nan, paired=True, n=1)
    se = float(d.std(ddof=1)) / math.sqrt(n)
    half = float(sps.t.ppf((1 + confidence) / 2, n - 1)) * se
    p = _t_p(diff / se, n - 1) if se > 0 else _degenerate_p(diff)
    return Difference(diff, diff - half, diff + half, float(n - 1), paired=True, n=n, p=p, confidence=confidence)


def _t_p(t: float, dof: float) -> float:
    """Two-sided p-value of a t statistic."""
    return float(2 * sps.t.sf(abs(t), dof))


def _degenerate_p(diff: float) -> float:
    """p-value of a difference measured without spread: 0 when it is not zero, else 1."""
    return 0.0 if diff != 0 else 1.0


@dataclass(frozen=True)
class Clustered:
    """The mean of ``n`` values in ``clusters`` groups with a cluster-robust interval.

    ``se``: the CR1 standard error (sandwich estimator summed within clusters, scaled by
    G/(G-1)); ``[low, high]``: ``mean ± t_{(1+c)/2, G-1} · se``. With every cluster the same
    size this is the t-interval of the cluster means. ``spread``: the sample std of the
    cluster means (how far one cluster's answer lies from another's).
    """

    mean: float
    low: float
    high: float
    se: float
    clusters: int
    n: int
    spread: float


def clustered_mean(values: Sequence[float], clusters: Sequence[object], confidence: float = CONFIDENCE) -> Clustered:
    """Mean of ``values`` with a cluster-robust (CR1) t-interval on G - 1 degrees of freedom,
    ``clusters[i]`` the group of ``values[i]`` (NaN values dropped). Fewer than two clusters
    give a NaN interval."""
    x = np.asarray(values, dtype=float)
    keep = ~np.isnan(x)
    x, groups = x[keep], pd.Series(list(clusters))[keep].to_numpy()
    n = len(x)
    if n == 0:
        return Clustered(math.nan, math.nan, math.nan, math.nan, 0, 0, math.nan)
    mean = float(x.mean())
    residuals = pd.Series(x - mean).groupby(groups).sum()
    g = len(residuals)
    cluster_means = pd.Series(x).groupby(groups).mean()
    if g < 2:
        return Clustered(mean, math.nan, math.nan, math.nan, g, n, math.nan)
    se = math.sqrt(g / (g - 1) * float((residuals**2).sum())) / n
    half = float(sps.t.ppf((1 + confidence) / 2, g - 1)) * se
    return Clustered(mean, mean - half, mean + half, se, g, n, float(cluster_means.std(ddof=1)))


def compare(a: pd.Series, b: pd.Series, seeds_a: pd.Series, seeds_b: pd.Series,
            confidence: float = CONFIDENCE) -> Difference:
    """``mean(a) - mean(b)``: paired over seeds when both sides ran the same set of at least two
    distinct seeds, one value per seed each; Welch's interval otherwise.

    ``seeds_a``/``seeds_b``: the seed of every value (same index as ``a``/``b``).
    """
    sa, sb = pd.Series(np.asarray(seeds_a)), pd.Series(np.asarray(seeds_b))
    pairable = (len(sa) >= 2 and sa.notna().all() and sb.notna().all() and sa.is_unique and sb.is_unique
                and set(sa) == set(sb))
    if not pairable:
        return welch_diff(a, b, confidence)
    by_seed = pd.Series(np.asarray(b, dtype=float), index=sb.to_numpy())
    matched = by_seed.loc[sa.to_numpy()].to_numpy()
    return paired_diff(np.asarray(a, dtype=float), matched, confidence)


def group_stats(frame: pd.DataFrame, by: str | Sequence[str], value: str,
                confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per group of ``by`` (rows where a ``by`` column is null are left out).

    Columns: the ``by`` columns, ``n``, ``mean``, ``std``, ``ci_low``, ``ci_high``
    (:func:`mean_ci` of ``value`` in the group); groups in order of first appearance.
    """
    keys = [by] if isinstance(by, str) else list(by)
    rows = []
    for group, part in frame.groupby(keys, sort=False, dropna=True):
        group = group if isinstance(group, tuple) else (group,)
        ci = mean_ci(part[value], confidence)
        rows.append({**dict(zip(keys, group)), "n": ci.n, "mean": ci.mean, "std": ci.std,
                     "ci_low": ci.low, "ci_high": ci.high})
    return pd.DataFrame(rows, columns=[*keys, "n", "mean", "std", "ci_low", "ci_high"])


def last_scored_epoch(epochs: pd.DataFrame, metric: str, keys: Sequence[str]) -> pd.Series:
    """The last epoch with a non-null ``metric`` of every trial (index: ``keys``)."""
    scored = epochs[epochs[metric].notna()]
    return scored.groupby(list(keys))["epoch"].max()


def common_epoch(last_epochs: Iterable[int]) -> int | None:
    """The largest epoch every trial reached: the minimum of their last epochs (None if none)."""
    values = [int(e) for e in last_epochs if e is not None and not pd.isna(e)]
    return min(values) if values else None


def rows_at_epoch(epochs: pd.DataFrame, epoch: int, metric: str) -> pd.DataFrame:
    """The epoch rows of every trial at exactly ``epoch`` that have a ``metric`` value."""
    return epochs[(epochs["epoch"] == epoch) & epochs[metric].notna()]


def rows_at_best(epochs: pd.DataFrame, metric: str, keys: Sequence[str]) -> pd.DataFrame:
    """Each trial's epoch row with its highest ``metric`` (the earliest such epoch on ties)."""
    scored = epochs[epochs[metric].notna()].sort_values([*keys, "epoch"])
    index = scored.groupby(list(keys))[metric].idxmax()
    return scored.loc[index.to_numpy()]


def rows_at_last(epochs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Each trial's epoch row at its last epoch."""
    index = epochs.groupby(list(keys))["epoch"].idxmax()
    return epochs.loc[index.to_numpy()]
