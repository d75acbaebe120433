"""The tables of an ablation study, computed from scored trials.

Every function takes the scored trials (one row per trial, the compared metric in
``value``) and returns a DataFrame of raw numbers (metric units, not percent); the report
formats them. Seeds are aggregated over: a *configuration* is a trial's values of every
factor, and its statistics pool the trials (seeds) that share it. Intervals are 95 %
t-intervals; a difference is a paired t-interval over seeds when both sides ran the same
seeds, a Welch interval otherwise (see :func:`raykd.analyze.stats.compare`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from raykd.analyze import stats
from raykd.analyze.correction import correct
from raykd.analyze.factors import BASELINE_METHOD, METHOD, TEACHER_SEED, Factor, display, is_null

SIZE_METRICS = ("AP_S", "AP_M", "AP_L")
STAT_COLUMNS = ["n", "mean", "std", "ci_low", "ci_high"]
DIFF_COLUMNS = ["diff", "diff_low", "diff_high", "diff_test", "diff_n", "diff_p", "diff_dof"]


def exact_value(value: object) -> object:
    """A hashable, exact form of a raw parameter value (None for null)."""
    if is_null(value):
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(exact_value(v) for v in list(value))
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def config_keys(frame: pd.DataFrame, names: Sequence[str]) -> pd.Series:
    """Each row's configuration: the tuple of its exact values of ``names``."""
    columns = [frame[n].tolist() for n in names]
    return pd.Series([tuple(exact_value(v) for v in values) for values in zip(*columns)] if names else [()] * len(frame),
                     index=frame.index, dtype=object)


def config_label(values: Mapping[str, object], shown: Sequence[str]) -> str:
    """``method=samkd, mask_ratio=0.62`` for the ``shown`` factors defined in ``values``."""
    parts = [f"{name.rsplit('.', 1)[-1]}={display(values[name])}" for name in shown if not is_null(values[name])]
    return ", ".join(parts) or "(defaults)"


def varying(frame: pd.DataFrame, names: Sequence[str]) -> list[str]:
    """The factors of ``names`` that take more than one value (null counts) in ``frame``."""
    return [n for n in names if frame[n].map(exact_value).nunique(dropna=False) > 1]


def _interval_row(values: pd.Series) -> dict[str, float]:
    ci = stats.mean_ci(values)
    return {"n": ci.n, "mean": ci.mean, "std": ci.std, "ci_low": ci.low, "ci_high": ci.high}


def pair_keys(part: pd.DataFrame, reference: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame, pd.Series]:
    """What pairs a trial of ``part`` with one of ``reference``: its seed, or with
    ``confirm.teacher_seeds`` its (teacher seed, seed) as ``"t/s"``.

    Returns ``part``'s keys, the reference rows and their keys. A reference that ran without
    the teacher (null teacher seed: the baseline) stands for every teacher ``part`` ran with
    (the same seed gives it the same numbers), so its rows are repeated once per teacher.
    """
    if TEACHER_SEED not in part or part[TEACHER_SEED].isna().all():
        return part["seed"], reference, reference["seed"]
    def keys(frame: pd.DataFrame) -> pd.Series:
        return pd.Series([None if is_null(t) or is_null(s) else f"{int(t)}/{int(s)}"
                          for t, s in zip(frame[TEACHER_SEED], frame["seed"])], index=frame.index, dtype=object)

    part_keys = keys(part)
    if TEACHER_SEED not in reference or reference[TEACHER_SEED].isna().all():
        teachers = sorted({int(t) for t in part[TEACHER_SEED].dropna()})
        reference = pd.concat([reference.assign(**{TEACHER_SEED: t}) for t in teachers], ignore_index=True)
        ref_keys = keys(reference)
        kept = ref_keys.isin(set(part_keys.dropna())).to_numpy()  # the stand-in only where part ran
        return part_keys, reference[kept], ref_keys[kept]
    return part_keys, reference, keys(reference)


def _diff_row(part: pd.DataFrame, reference: pd.DataFrame) -> dict[str, object]:
    """Difference of ``part``'s values to ``reference``'s: paired over seeds (or teacher and
    seed pairs, :func:`pair_keys`) where possible."""
    keys, reference, ref_keys = pair_keys(part, reference)
    d = stats.compare(part["value"], reference["value"], keys, ref_keys)
    return {"diff": d.diff, "diff_low": d.low, "diff_high": d.high, "diff_test": d.test, "diff_n": d.n,
            "diff_p": d.p, "diff_dof": d.dof}


def _no_diff() -> dict[str, object]:
    return dict.fromkeys(DIFF_COLUMNS, math.nan)


def _size_means(part: pd.DataFrame) -> dict[str, float]:
    return {m: float(part[m].mean()) if m in part and part[m].notna().any() else math.nan for m in SIZE_METRICS}


# --- leaderboard ------------------------------------------------------------------------


@dataclass
class Configs:
    """Scored trials grouped by configuration (seeds pooled), best mean first."""

    names: list[str]  # the factors that make a configuration
    ids: pd.Series  # configuration id of every scored trial (index of the scored frame)
    keys: list[tuple]  # exact factor values of each configuration id
    order: list[int]  # configuration ids, best mean first
    baseline: int | None  # the best configuration with distill.method == none

    def rows(self, frame: pd.DataFrame, config: int) -> pd.DataFrame:
        """The scored trials of configuration ``config``."""
        return frame[self.ids == config]


def group_configs(frame: pd.DataFrame, names: Sequence[str]) -> Configs:
    """Group ``frame`` by the exact values of ``names``; rank the groups by mean value."""
    exact = config_keys(frame, names)
    keys = list(dict.fromkeys(exact))
    index_of = {k: i for i, k in enumerate(keys)}
    ids = pd.Series([index_of[k] for k in exact], index=frame.index, dtype=int)
    means = frame["value"].groupby(ids).mean().sort_values(ascending=False, kind="stable")
    order = [int(i) for i in means.index]
    baseline = None
    if METHOD in names:
        where = list(names).index(METHOD)
        baseline = next((i for i in order if keys[i][where] == BASELINE_METHOD), None)
    return Configs(list(names), ids, keys, order, baseline)


def leaderboard(frame: pd.DataFrame, configs: Configs, *, top: int = 10,
                teacher: Mapping[str, float] | None = None, metric: str = "bbox_mAP",
                correction: str = "auto") -> pd.DataFrame:
    """The ``top`` configurations, the no-distillation baseline and the teacher, one row each.

    Columns: ``rank`` (among all configurations), ``role`` (config / baseline / teacher),
    ``config`` (label of the factors that vary, or of all when none does), the raw value of each factor, the
    :data:`STAT_COLUMNS` of the metric, the difference to the baseline with its Welch
    interval, mean AP_S/M/L, mean device-hours ``cost_h``, and the ``seeds`` pooled; with the
    differences' p-values and intervals adjusted for the table's comparisons under ``correction``
    (:func:`raykd.analyze.correction.correct`; the method in ``attrs["correction"]``).
    """
    shown = varying(frame, configs.names) or configs.names
    base_rows = configs.rows(frame, configs.baseline) if configs.baseline is not None else None
    picked = list(configs.order[:top])
    if configs.baseline is not None and configs.baseline not in picked:
        picked.append(configs.baseline)
    rows = []
    for config in picked:
        part = configs.rows(frame, config)
        values = dict(zip(configs.names, part.iloc[0][configs.names]))
        row = {"rank": configs.order.index(config) + 1,
               "role": "baseline" if config == configs.baseline else "config",
               "config": config_label(values, shown),
               **{n: display(values[n]) for n in configs.names},
               **_interval_row(part["value"])}
        row.update(_diff_row(part, base_rows) if base_rows is not None and config != configs.baseline
                   else _no_diff())
        row.update(_size_means(part))
        row["cost_h"] = float(part["cost_h"].mean())
        row["kd_scale"] = float(part["kd_scale"].mean()) if "kd_scale" in part and part["kd_scale"].notna().any() \
            else math.nan
        row["seeds"] = ", ".join(str(s) for s in sorted({int(s) for s in part["seed"] if not is_null(s)}))
        rows.append(row)
    if teacher and metric in teacher:
        base_mean = float(base_rows["value"].mean()) if base_rows is not None else math.nan
        rows.append({"rank": math.nan, "role": "teacher", "config": "teacher",
                     **{n: None for n in configs.names},
                     "n": 1, "mean": teacher[metric], "std": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                     **_no_diff(), "diff": teacher[metric] - base_mean,
                     **{m: teacher.get(m, math.nan) for m in SIZE_METRICS}, "cost_h": math.nan, "seeds": ""})
    board, _ = correct(pd.DataFrame(rows).astype({"rank": "Int64", "n": "Int64"}), correction)
    return board


# --- one-factor tables ------------------------------------------------------------------


@dataclass
class Ablation:
    """The table of one factor: a row per level, differences to ``reference``."""

    factor: Factor
    reference: str
    table: pd.DataFrame
    n_defined: int  # scored trials where the factor is defined


def reference_level(factor: Factor, counts: Mapping[str, int]) -> str:
    """The level differences are taken to: ``none`` for the method, else the most common
    level (the first in table order on ties)."""
    if factor.name == METHOD and counts.get(BASELINE_METHOD, 0) > 0:
        return BASELINE_METHOD
    present = [lv for lv in factor.levels if counts.get(lv, 0) > 0]
    return max(present, key=lambda lv: counts[lv])  # max keeps the first of equal counts


def ablation(frame: pd.DataFrame, levels: pd.DataFrame, factor: Factor,
             failed_levels: pd.Series | None = None, correction: str = "auto") -> Ablation:
    """Mean metric per level of ``factor`` with its t-interval, the difference to the
    reference level (paired over seeds where possible, else Welch), n, mean AP_S/M/L, and the number of
    failed trials at that level.

    ``levels``: the level label of every scored trial (same index as ``frame``);
    ``failed_levels``: the level of every failed trial.
    """
    level = levels[factor.name]
    defined = level.notna()
    counts = level[defined].value_counts().to_dict()
    reference = reference_level(factor, counts)
    ref_rows = frame[level == reference]
    failed = failed_levels.value_counts().to_dict() if failed_levels is not None else {}
    rows = []
    for lv in factor.levels:
        part = frame[level == lv]
        if part.empty and not failed.get(lv):
            continue
        row = {"level": lv, **_interval_row(part["value"])}
        row.update(_diff_row(part, ref_rows) if lv != reference else _no_diff())
        row.update(_size_means(part))
        row["failed"] = int(failed.get(lv, 0))
        row["reference"] = lv == reference
        rows.append(row)
    table, _ = correct(pd.DataFrame(rows), correction)
    return Ablation(factor, reference, table, int(defined.sum()))


def spread(ab: Ablation) -> float:
    """Largest minus smallest level mean (levels with a value); 0 for a single level."""
    means = ab.table["mean"].dropna()
    return float(means.max() - means.min()) if len(means) > 1 else 0.0


# --- two-factor tables ------------------------------------------------------------------


def interaction(frame: pd.DataFrame, levels: pd.DataFrame, a: Factor, b: Factor) -> pd.DataFrame:
    """Mean metric with its t-interval for every combination of levels of ``a`` and ``b``
    (trials where both are defined); long form, columns ``a.name``, ``b.name``, stats."""
    both = levels[a.name].notna() & levels[b.name].notna()
    joined = levels.loc[both, [a.name, b.name]].assign(value=frame.loc[both, "value"])
    cells = stats.group_stats(joined, [a.name, b.name], "value")
    order = cells[a.name].map(a.levels.index) * len(b.levels) + cells[b.name].map(b.levels.index)
    return cells.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)


def pick_pairs(ablations: Sequence[Ablation], levels: pd.DataFrame, *, factors_max: int = 4,
               pairs_max: int = 6) -> list[tuple[Factor, Factor]]:
    """Pairs among the ``factors_max`` factors with the largest spread of level means whose
    joint trials show at least two levels of each."""
    ranked = sorted((ab for ab in ablations if len(ab.table) > 1), key=spread, reverse=True)[:factors_max]
    pairs = []
    for x, y in itertools.combinations(ranked, 2):
        both = levels[x.factor.name].notna() & levels[y.factor.name].notna()
        if levels.loc[both, x.factor.name].nunique() > 1 and levels.loc[both, y.factor.name].nunique() > 1:
            pairs.append((x.factor, y.factor))
    return pairs[:pairs_max]


# --- one factor at a time around the best configuration ---------------------------------


def ofat(frame: pd.DataFrame, configs: Configs, correction: str = "auto") -> pd.DataFrame:
    """Configurations that differ from the best one in exactly one factor.

    Two configurations differ in exactly one factor F when F is defined in both with
    different values and every other factor is equal or undefined in one of them (the
    conditional factors that F switches on or off). Columns: ``factor``, ``best`` and
    ``value`` (its value in the best and in the other configuration), the stats of the
    other configuration and its difference to the best one (paired over seeds where possible; adjusted for the
    table's comparisons under ``correction``, :func:`raykd.analyze.correction.correct`). Empty when the search
    holds no such neighbours.
    """
    if not configs.order:
        return pd.DataFrame(columns=["factor", "best", "value", *STAT_COLUMNS, *DIFF_COLUMNS])
    best = configs.order[0]
    best_key = configs.keys[best]
    best_rows = configs.rows(frame, best)
    rows = [{"factor": "(best configuration)", "best": "", "value": "", **_interval_row(best_rows["value"]),
             **_no_diff()}]
    for config in configs.order[1:]:
        key = configs.keys[config]
        changed = [i for i, (x, y) in enumerate(zip(best_key, key)) if x != y and x is not None and y is not None]
        if len(changed) != 1:
            continue
        i = changed[0]
        part = configs.rows(frame, config)
        raw = part.iloc[0][configs.names[i]]
        best_raw = configs.rows(frame, best).iloc[0][configs.names[i]]
        rows.append({"factor": configs.names[i], "best": display(best_raw), "value": display(raw),
                     **_interval_row(part["value"]), **_diff_row(part, best_rows)})
    table = pd.DataFrame(rows)
    return correct(table, correction)[0] if len(table) > 1 else table.iloc[0:0]


# --- ablation path ----------------------------------------------------------------------


def _effects(frame: pd.DataFrame, levels: pd.DataFrame, factor: Factor) -> dict[str, float]:
    """Marginal effect of each level: its mean minus the mean of the trials where the factor
    is defined (all trials for an unconditional factor)."""
    defined = levels[factor.name].notna()
    scope_mean = frame.loc[defined, "value"].mean()
    return {lv: float(part["value"].mean() - scope_mean)
            for lv, part in frame[defined].groupby(levels.loc[defined, factor.name])}


def _levels_of(levels: pd.DataFrame, index: object) -> dict[str, str | None]:
    return {name: (None if is_null(v) else v) for name, v in levels.loc[index].items()}


def ablation_path(frame: pd.DataFrame, levels: pd.DataFrame, factors: Sequence[Factor],
                  configs: Configs) -> pd.DataFrame:
    """Greedy path of single-factor changes from the baseline to the best configuration.

    Estimator (an additive model of marginal means): the effect of a level is its mean
    minus the mean of every trial where its factor is defined; a configuration is worth the
    sum of its levels' effects, a factor not defined (or not yet set) adding nothing. From
    the baseline, each step applies, among the changes toward the best configuration that
    are possible now (a conditional factor only once its parent has the level that defines
    it), the one with the largest estimated gain; changing a parent drops the children it
    no longer defines and brings in the new ones at their average (effect 0).

    Rows: ``step`` (0 = the baseline as observed), ``factor``, ``from``, ``to``,
    ``gain`` (estimated), ``value`` (observed baseline mean + the gains so far), ``n`` (trials
    at the new level); a last row gives the best configuration as observed. Empty without
    a baseline, or when the best configuration is the baseline.
    """
    columns = ["step", "factor", "from", "to", "gain", "value", "n"]
    best = configs.order[0] if configs.order else None
    if configs.baseline is None or best is None or best == configs.baseline:
        return pd.DataFrame(columns=columns)
    by_name = {f.name: f for f in factors}
    effects = {f.name: _effects(frame, levels, f) for f in factors}
    counts = {f.name: levels[f.name].value_counts().to_dict() for f in factors}
    start = _levels_of(levels, configs.rows(frame, configs.baseline).index[0])
    goal = _levels_of(levels, configs.rows(frame, best).index[0])
    current = {n: start.get(n) for n in by_name}
    base_mean = float(configs.rows(frame, configs.baseline)["value"].mean())
    rows = [{"step": 0, "factor": "(baseline)", "from": "", "to": "", "gain": math.nan, "value": base_mean,
             "n": len(configs.rows(frame, configs.baseline))}]

    def effect(name: str, level: str | None) -> float:
        return 0.0 if level is None else effects[name].get(level, 0.0)

    def allowed(name: str) -> bool:
        f = by_name[name]
        return f.parent is None or current.get(f.parent) in f.parent_levels

    value = base_mean
    while True:
        todo = [n for n in by_name if current[n] != goal.get(n) and goal.get(n) is not None and allowed(n)]
        if not todo:
            break
        name = max(todo, key=lambda n: effect(n, goal[n]) - effect(n, current[n]))
        gain = effect(name, goal[name]) - effect(name, current[name])
        before, current[name] = current[name], goal[name]
        for child in by_name.values():  # children the change switches off
            if child.parent == name and current[child.name] is not None and not allowed(child.name):
                gain -= effect(child.name, current[child.name])
                current[child.name] = None
        value += gain
        rows.append({"step": len(rows), "factor": name, "from": before or "(undefined)", "to": goal[name],
                     "gain": gain, "value": value, "n": int(counts[name].get(goal[name], 0))})
    best_rows = configs.rows(frame, best)
    rows.append({"step": math.nan, "factor": "(best, observed)", "from": "", "to": "", "gain": math.nan,
                 "value": float(best_rows["value"].mean()), "n": len(best_rows)})
    return pd.DataFrame(rows, columns=columns).astype({"step": "Int64", "n": "Int64"})
