"""A distilled configuration against the baseline across teacher seeds (``confirm.teacher_seeds``).

A trained teacher is one draw: the same recipe on another seed (or another CPU's floats) gives
another teacher, and a distilled student's gain can move with it. With the confirmation run
for every (teacher seed, seed) pair, three intervals answer three questions
(docs/statistics.md):

- **pooled**: the paired t-interval over every pair, as if each pair were independent: how
  this set of teachers did, and too narrow as a claim about teachers in general;
- **per teacher**: the paired t-interval over the seeds of each teacher;
- **between teachers**: the mean over every pair with a cluster-robust (CR1) interval, the
  teacher the cluster, t on (teachers - 1) degrees of freedom: the pairs of one teacher share
  its draw, so the teachers, not the pairs, are the independent units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from raykd.analyze import stats
from raykd.analyze.factors import TEACHER_SEED, is_null
from raykd.analyze.tables import pair_keys


@dataclass(frozen=True)
class TeacherDelta:
    """One teacher's difference (distilled − baseline) paired over its seeds; its own score."""

    teacher_seed: int
    teacher_metric: float  # the teacher's validation score (NaN: not recorded)
    mean: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def separates(self) -> bool:
        """Whether its interval excludes zero."""
        return not math.isnan(self.ci_low) and (self.ci_low > 0 or self.ci_high < 0)


@dataclass(frozen=True)
class AcrossTeachers:
    """The per-teacher differences and the between-teacher (cluster-robust) interval."""

    per_teacher: list[TeacherDelta]
    mean: float
    ci_low: float  # CR1, t on teachers - 1 dof
    ci_high: float
    se: float
    teachers: int
    pairs: int
    spread: float  # sample std of the per-teacher mean differences
    method: str = "cluster-robust (CR1) over teachers, t on teachers − 1 dof"

    @property
    def separated(self) -> int:
        """How many teachers' intervals exclude zero."""
        return sum(t.separates for t in self.per_teacher)


def matched_differences(part: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """``part``'s values minus the ``reference`` value of the same (teacher seed, seed) pair.

    Columns ``teacher`` and ``diff``, one row per pair both sides have (:func:`pair_keys`).
    """
    keys, reference, ref_keys = pair_keys(part, reference)
    by_key = pd.Series(reference["value"].to_numpy(dtype=float), index=ref_keys.to_numpy())
    by_key = by_key[~by_key.index.duplicated(keep="first")]
    rows = [(int(t), float(v) - float(by_key[k]))
            for k, t, v in zip(keys, part[TEACHER_SEED], part["value"])
            if not is_null(k) and k in by_key.index and not is_null(t)]
    return pd.DataFrame(rows, columns=["teacher", "diff"])


def across_teachers(part: pd.DataFrame, reference: pd.DataFrame,
                    teacher_metrics: Mapping[int, float] | None = None) -> AcrossTeachers | None:
    """The :class:`AcrossTeachers` of ``part`` (a distilled configuration's scored trials) against
    ``reference`` (the baseline's); None unless ``part`` ran with at least two teacher seeds."""
    if TEACHER_SEED not in part or part[TEACHER_SEED].dropna().nunique() < 2:
        return None
    d = matched_differences(part, reference)
    if d.empty:
        return None
    per = []
    for teacher, group in d.groupby("teacher", sort=True):
        ci = stats.mean_ci(group["diff"])
        per.append(TeacherDelta(int(teacher), float((teacher_metrics or {}).get(int(teacher), math.nan)),
                                ci.mean, ci.low, ci.high, ci.n))
    c = stats.clustered_mean(d["diff"].to_numpy(), d["teacher"].to_numpy())
    return AcrossTeachers(per, c.mean, c.low, c.high, c.se, c.clusters, c.n, c.spread)


def teacher_scores(teacher_seeds: Mapping[str, Mapping[str, object]] | None, metric: str) -> dict[int, float]:
    """``{teacher seed: score}`` from ``teacher.json``'s ``teacher_seeds`` record."""
    out = {}
    for seed, record in (teacher_seeds or {}).items():
        value = record.get(metric) if isinstance(record, Mapping) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            out[int(seed)] = float(value)
    return out


def across_table(frame: pd.DataFrame, configs, labels: Mapping[int, str],
                 teacher_metrics: Mapping[int, float] | None = None) -> pd.DataFrame:
    """One row per distilled configuration of ``configs`` (:class:`raykd.analyze.tables.Configs`
    of the scored confirmation trials ``frame``) that ran with two or more teachers: its pooled
    paired Δ to the baseline, each teacher's Δ, the between-teacher interval and how many
    teachers separate. Empty without a baseline or teacher seeds."""
    rows = []
    if configs.baseline is None:
        return pd.DataFrame(rows)
    reference = configs.rows(frame, configs.baseline)
    for config in configs.order:
        if config == configs.baseline:
            continue
        part = configs.rows(frame, config)
        found = across_teachers(part, reference, teacher_metrics)
        if found is None:
            continue
        keys, ref, ref_keys = pair_keys(part, reference)
        pooled = stats.compare(part["value"], ref["value"], keys, ref_keys)
        row = {"config": labels.get(config, str(config)), "pairs": pooled.n, "diff": pooled.diff,
               "diff_low": pooled.low, "diff_high": pooled.high, "diff_test": pooled.test,
               "between": found.mean, "between_low": found.ci_low, "between_high": found.ci_high,
               "spread": found.spread, "teachers": found.teachers, "separated": found.separated}
        for t in found.per_teacher:
            row.update({f"teacher_{t.teacher_seed}": t.mean, f"teacher_{t.teacher_seed}_low": t.ci_low,
                        f"teacher_{t.teacher_seed}_high": t.ci_high, f"teacher_{t.teacher_seed}_n": t.n,
                        f"teacher_{t.teacher_seed}_score": t.teacher_metric})
        rows.append(row)
    return pd.DataFrame(rows)
