"""From results folders to an :class:`Analysis` (numbers) and a :class:`~raykd.analyze.report.Report`.

:func:`analyze` reads the tables, scores every trial under the fidelity rule, and computes
the leaderboard, one ablation table per factor, two-factor tables, one-factor-at-a-time
comparisons, importances and the ablation path. :func:`build_report` formats them, with
the plots; :func:`summary` is the few lines the command prints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from raykd.analyze import plots, tables
from raykd.analyze.correction import caption as correction_caption
from raykd.analyze.factors import (
    BASELINE_METHOD,
    DEFAULT_BINS,
    METHOD,
    SCALE,
    SEED_COLUMNS,
    Factor,
    describe,
    is_null,
    level_frame,
)
from raykd.analyze.importance import ALL, Importances, importances
from raykd.analyze.inputs import Inputs, read_inputs
from raykd.analyze.report import Bullets, Plot, Report, Section, Table, Text
from raykd.analyze.scores import Scores, score_trials
from raykd.analyze.teachers import across_table, teacher_scores
from raykd.analyze.verdict import Ranking, Verdict, factor_names, phase_of, rank, verdict
from raykd.errors import UserError
from raykd.metric_names import METRICS
from raykd.results.schema import CONFIRM_PHASE, SEARCH_PHASE

TOP = 10


@dataclass
class Analysis:
    """Everything the report shows, as numbers (metric units, not percent)."""

    inputs: Inputs
    metric: str
    scores: Scores
    factors: list[Factor]  # every factor (configurations are made of these)
    levels: pd.DataFrame  # level label of every scored trial and factor
    configs: tables.Configs
    leaderboard: pd.DataFrame
    ablations: list[tables.Ablation]
    interactions: list[tuple[Factor, Factor, pd.DataFrame]]
    ofat: pd.DataFrame
    path: pd.DataFrame
    importance: Importances
    verdict: Verdict  # what the search found: from the confirmation trials when there are any
    confirmation: Ranking | None = None  # the confirmation trials (phase = confirm), ranked
    notes: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)  # the RESULTS paths read


def _check_by(by: Sequence[str] | None, names: list[str]) -> list[str]:
    if not by:
        return names
    for name in by:
        if name in SEED_COLUMNS:
            raise UserError(f"{name!r} is the seed: results are aggregated over seeds, not tabulated by them",
                            key="--by")
        if name not in names:
            raise UserError(f"unknown column {name!r}; factors: {', '.join(names) or '(none)'}", key="--by")
    return list(dict.fromkeys(by))


def _with_seed(trials: pd.DataFrame) -> pd.DataFrame:
    """``seed``: the trial's recorded seed, else its ``train.seed`` parameter."""
    trials = trials.copy()
    if "train.seed" in trials:
        trials["seed"] = trials["seed"].where(trials["seed"].notna(), trials["train.seed"])
    return trials


def analyze(paths: Sequence[str], *, metric: str = "bbox_mAP", by: Sequence[str] | None = None,
            filters: Sequence[str] = (), fidelity: str = "auto", correction: str = "auto",
            bins: int = DEFAULT_BINS) -> Analysis:
    """Read the tables under ``paths`` and compute every table of the report; ``correction``:
    of each table's comparisons with its reference (:mod:`raykd.analyze.correction`)."""
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}", key="--metric")
    inputs = read_inputs(paths, filters)
    inputs.trials = _with_seed(inputs.trials)
    confirm = phase_of(inputs.trials) == CONFIRM_PHASE
    confirmation = (rank(inputs.trials[confirm], inputs.epochs, inputs.params, metric, fidelity="completed",
                         teacher=inputs.confirm_teacher or inputs.teacher, top=TOP, correction=correction)
                    if confirm.any() else None)
    searched = inputs.trials[~confirm] if (~confirm).any() else inputs.trials
    wanted = _check_by(by, factor_names(searched, inputs.params))
    ranking = rank(searched, inputs.epochs, inputs.params, metric, fidelity=fidelity, teacher=inputs.teacher, top=TOP,
                   correction=correction)
    if ranking is None:
        excluded = score_trials(searched, inputs.epochs, metric, fidelity)
        raise UserError(f"no trial has a {metric} value to compare yet ({len(excluded.excluded)} trial(s), "
                        f"none with a value under --fidelity {excluded.fidelity})")
    scores, names, configs, frame = ranking.scores, ranking.names, ranking.configs, ranking.scores.frame
    notes = []
    if scores.fidelity == "common-epoch":
        full = inputs.trials["epochs_total"].max()
        done = int((frame["stop_reason"] == "completed").sum())
        if scores.epoch is not None and not pd.isna(full) and scores.epoch < full and done:
            notes.append(f"Epoch {scores.epoch} of {int(full)} is early; `--fidelity completed` compares the "
                         f"{done} trials that ran their full schedule instead (a subset the scheduler selected).")
    factors = describe(frame, names, inputs.specs, bins)
    levels = level_frame(frame, factors)
    by_name = {f.name: f for f in factors}
    failed = inputs.trials[inputs.trials["status"] == "ERROR"]
    ablations = []
    constant = []
    for name in wanted:
        factor = by_name.get(name)
        if factor is None or levels[name].nunique() < 2:
            constant.append(f"`{name}`")
            continue
        failed_levels = failed[name].map(factor.level).dropna() if len(failed) else None
        ablations.append(tables.ablation(frame, levels, factor, failed_levels, correction))
    if constant:
        notes.append(f"One value among the compared trials (no ablation table): {', '.join(constant)}")
    if configs.baseline is None:
        notes.append(f"No compared trial has `{METHOD}` = `{BASELINE_METHOD}`: no baseline row and no ablation path.")
    elif configs.baseline == configs.order[0]:
        notes.append("The no-distillation baseline is the best configuration: no ablation path.")
    interactions = [(a, b, tables.interaction(frame, levels, a, b))
                    for a, b in tables.pick_pairs(ablations, levels)]
    imp = importances(frame, names, conditions={f.name: f.condition for f in factors if f.condition},
                      specs=inputs.specs)
    chosen = (verdict(confirmation, CONFIRM_PHASE, teacher_scores=teacher_scores(inputs.teacher_seeds, metric),
                      proxy=ranking if inputs.rank_check else None, searched=list(inputs.specs))
              if confirmation is not None else verdict(ranking, SEARCH_PHASE))
    return Analysis(
        inputs=inputs, metric=metric, scores=scores, factors=factors, levels=levels,
        configs=configs, leaderboard=ranking.leaderboard,
        ablations=ablations, interactions=interactions, ofat=tables.ofat(frame, configs, correction),
        path=tables.ablation_path(frame, levels, factors, configs), importance=imp, verdict=chosen,
        confirmation=confirmation, notes=notes, results=[str(p) for p in paths])


# --- formatting -------------------------------------------------------------------------


def _num(value: float, digits: int = 2, sign: bool = False) -> str:
    if value is None or pd.isna(value):
        return "—"
    return f"{value * SCALE:{'+' if sign else ''}.{digits}f}"


def fmt_ci(mean: float, low: float, high: float) -> str:
    """``38.12 ± 0.40`` (x100); the mean alone when the interval is undefined."""
    if pd.isna(low) or pd.isna(high):
        return _num(mean)
    return f"{_num(mean)} ± {(high - low) / 2 * SCALE:.2f}"


def fmt_diff(diff: float, low: float, high: float, test: object = None, n: object = None) -> str:
    """``+1.23 [+0.50, +1.96] paired n=3`` (x100; ``Welch`` when unpaired); the difference
    alone when the interval is undefined."""
    if pd.isna(diff):
        return "—"
    if pd.isna(low) or pd.isna(high):
        return _num(diff, sign=True)
    how = "" if not isinstance(test, str) else (f" paired n={int(n)}" if test == "paired" else " Welch")
    return f"{_num(diff, sign=True)} [{_num(low, sign=True)}, {_num(high, sign=True)}]{how}"


def _diffs(t: pd.DataFrame) -> list[str]:
    """The Δ column: at the table's corrected level when a correction applies."""
    adjusted = t.attrs.get("correction", "none") != "none"
    low, high = ("diff_low_adj", "diff_high_adj") if adjusted else ("diff_low", "diff_high")
    return [fmt_diff(*v) for v in zip(t["diff"], t[low], t[high], t["diff_test"], t["diff_n"])]


def _p_column(t: pd.DataFrame) -> dict[str, list[str]]:
    """The p-value column (adjusted when a correction applies)."""
    if "diff_p" not in t:
        return {}
    adjusted = t.attrs.get("correction", "none") != "none"
    values = t["diff_p_adj"] if adjusted else t["diff_p"]
    return {"p (adjusted)" if adjusted else "p": ["—" if pd.isna(v) else f"{v:.3g}" for v in values]}


def _correction_note(t: pd.DataFrame) -> str:
    """The caption's words for the table's correction (:func:`raykd.analyze.correction.caption`)."""
    method = t.attrs.get("correction", "none")
    comparisons = int(t["diff_p"].notna().sum()) if "diff_p" in t else 0
    return correction_caption(method, comparisons, t.attrs.get("correction_confidence", 0.95))


DIFF_NOTE = ("Δ: 95% paired t-interval over seeds (n = pairs) where both sides ran the same seeds, "
             "else Welch's interval")


def _count(value: float) -> str:
    return "—" if value is None or pd.isna(value) else str(int(value))


def _status_counts(trials: pd.DataFrame) -> str:
    counts = trials["stop_reason"].value_counts()
    labels = {"completed": "completed", "early_stopped": "stopped early", "error": "failed", "running": "running"}
    return ", ".join(f"{int(counts[k])} {v}" for k, v in labels.items() if counts.get(k, 0))


def _resolved_weights(lb: pd.DataFrame) -> dict[str, list[str]]:
    """``distill.loss_ratio``'s resolved weights (the calibrated scale × the method's defaults,
    mean over the configuration's trials), when some row calibrated one."""
    if "kd_scale" not in lb or lb["kd_scale"].isna().all():
        return {}
    from raykd.distill.config import DistillConfig
    from raykd.train.calibrate import resolved_weights

    text = []
    for method, scale in zip(lb[METHOD] if METHOD in lb else [None] * len(lb), lb["kd_scale"]):
        if pd.isna(scale) or method is None:
            text.append("—")
            continue
        weights = resolved_weights(DistillConfig(method=method), float(scale))
        text.append(", ".join(f"{k} {v:.3g}" for k, v in weights.items()))
    return {"resolved weights (loss_ratio)": text}


def leaderboard_table(lb: pd.DataFrame, metric: str, note: str, *, name: str = "leaderboard",
                      title: str = "") -> Table:
    """The leaderboard ``lb`` (:func:`raykd.analyze.tables.leaderboard`) as a report table."""
    m = metric
    display = pd.DataFrame({
        "rank": [("" if pd.isna(r) else str(int(r))) for r in lb["rank"]],
        "configuration": [c if role == "config" else f"{c} [{role}]" if role == "baseline" else c
                          for c, role in zip(lb["config"], lb["role"])],
        "n": [_count(n) for n in lb["n"]],
        f"{m} (95% CI)": [fmt_ci(*v) for v in zip(lb["mean"], lb["ci_low"], lb["ci_high"])],
        "Δ vs baseline (95% CI)": _diffs(lb),
        **_p_column(lb),
        **{s: [_num(v) for v in lb[s]] for s in tables.SIZE_METRICS},
        **_resolved_weights(lb),
        "device-h": ["—" if pd.isna(v) else f"{v:.3g}" for v in lb["cost_h"]],
        "seeds": lb["seeds"],
    })
    return Table(name, title or f"Best configurations by {m}, seeds pooled", display, lb,
                 f"mean ± 95% t-interval half-width over seeds (x100); {DIFF_NOTE}; {_correction_note(lb)}; {note}")


def teachers_tables(a: Analysis) -> list[Table]:
    """The confirmation across teacher seeds (:func:`raykd.analyze.teachers.across_table`), when it ran so."""
    c = a.confirmation
    shown = tables.varying(c.scores.frame, c.names) or c.names
    labels = {i: tables.config_label(dict(zip(c.names, key)), shown) for i, key in enumerate(c.configs.keys)}
    raw = across_table(c.scores.frame, c.configs, labels, teacher_scores(a.inputs.teacher_seeds, a.metric))
    if raw.empty:
        return []
    seeds = sorted({int(k.split("_")[1]) for k in raw.columns if k.startswith("teacher_") and k.count("_") == 1})
    display = pd.DataFrame({
        "configuration": raw["config"],
        "pairs": [_count(n) for n in raw["pairs"]],
        "Δ pooled (95% CI)": [fmt_diff(*v) for v in zip(raw["diff"], raw["diff_low"], raw["diff_high"])],
        **{f"Δ teacher seed {t}" + ("" if pd.isna(raw[f"teacher_{t}_score"]).all() else
                                    f" (teacher {_num(raw[f'teacher_{t}_score'].dropna().iloc[0])})"):
           [fmt_diff(*v) for v in zip(raw[f"teacher_{t}"], raw[f"teacher_{t}_low"], raw[f"teacher_{t}_high"])]
           for t in seeds},
        "Δ between teachers (95% CI)": [fmt_diff(*v) for v in zip(raw["between"], raw["between_low"],
                                                                    raw["between_high"])],
        "teachers separating": [f"{int(s)} of {int(t)}" for s, t in zip(raw["separated"], raw["teachers"])],
    })
    return [Table("confirmation_teachers", f"Confirmation across teacher seeds: {a.metric}", display, raw,
                  "Δ vs the baseline (x100). pooled: paired t-interval over every (teacher seed, seed) pair; "
                  "per teacher: paired over that teacher's seeds; between teachers: cluster-robust (CR1) interval "
                  "with the teacher as the cluster, t on teachers − 1 dof (docs/statistics.md); separating: "
                  "teachers whose interval excludes zero")]


def ablation_table(a: Analysis, ab: tables.Ablation) -> Table:
    t = ab.table
    m = a.metric
    display = pd.DataFrame({
        ab.factor.name: [f"{lv} (ref)" if ref else lv for lv, ref in zip(t["level"], t["reference"])],
        "n": [_count(n) for n in t["n"]],
        f"{m} (95% CI)": [fmt_ci(*v) for v in zip(t["mean"], t["ci_low"], t["ci_high"])],
        f"Δ vs {ab.reference} (95% CI)": _diffs(t),
        **_p_column(t),
        **{s: [_num(v) for v in t[s]] for s in tables.SIZE_METRICS},
        "failed": [str(int(v)) for v in t["failed"]],
    })
    f = ab.factor
    scope = (f"among the {ab.n_defined} trials where it is defined ({f.condition})" if f.condition
             else f"among the {ab.n_defined} trials where it is defined" if f.conditional else "")
    kind = ("quantile bins (a value with fewer than two trials)" if f.kind == "bins" else "")
    caption = "; ".join(p for p in (scope, kind, DIFF_NOTE, _correction_note(t)) if p)
    raw = t.copy()
    raw.insert(0, "factor", f.name)
    return Table(f"ablation_{f.name}", f"Ablation: {f.name}", display, raw, caption)


def interaction_table(a: Analysis, fa: Factor, fb: Factor, long: pd.DataFrame) -> Table:
    cells = {(r[fa.name], r[fb.name]): f"{fmt_ci(r['mean'], r['ci_low'], r['ci_high'])} ({int(r['n'])})"
             for _, r in long.iterrows()}
    rows_a = [lv for lv in fa.levels if any(k[0] == lv for k in cells)]
    cols_b = [lv for lv in fb.levels if any(k[1] == lv for k in cells)]
    display = pd.DataFrame([[lv, *(cells.get((lv, lb), "") for lb in cols_b)] for lv in rows_a],
                           columns=[f"{fa.short} \\ {fb.short}", *cols_b])
    return Table(f"interaction_{fa.name}__{fb.name}", f"Interaction: {fa.name} × {fb.name}", display, long,
                 f"{a.metric} (x100), mean ± 95% CI half-width (n) over trials where both are defined")


def ofat_table(a: Analysis) -> Table:
    t = a.ofat
    display = pd.DataFrame({
        "change": ["best configuration" if f.startswith("(") else f"{f}: {b} → {v}"
                   for f, b, v in zip(t["factor"], t["best"], t["value"])],
        "n": [_count(n) for n in t["n"]],
        f"{a.metric} (95% CI)": [fmt_ci(*v) for v in zip(t["mean"], t["ci_low"], t["ci_high"])],
        "Δ vs best (95% CI)": _diffs(t),
        **_p_column(t),
    })
    return Table("ofat", "One factor at a time around the best configuration", display, t,
                 "configurations that differ from the best one in exactly one factor (the conditional "
                 f"factors it switches on or off aside); {DIFF_NOTE}; {_correction_note(t)}")


def path_table(a: Analysis) -> Table:
    t = a.path
    display = pd.DataFrame({
        "step": ["" if pd.isna(s) else str(int(s)) for s in t["step"]],
        "change": [f if str(f).startswith("(") else f"{f}: {fr} → {to}"
                   for f, fr, to in zip(t["factor"], t["from"], t["to"])],
        "estimated gain": [_num(g, sign=True) for g in t["gain"]],
        f"{a.metric}": [_num(v) for v in t["value"]],
        "n at level": [_count(n) for n in t["n"]],
    })
    return Table("path_baseline_to_best", "Ablation path from the baseline to the best configuration", display, t,
                 "greedy: at each step the single change toward the best configuration with the largest "
                 "estimated gain; gains from an additive model of marginal level means (see Method)")


def importance_table(a: Analysis) -> Table:
    t = a.importance.frame
    display = pd.DataFrame({
        "scope": t["scope"], "parameter": t["parameter"], "n": t["n"].astype(str),
        "fANOVA": ["—" if pd.isna(v) else f"{v:.3f}" for v in t["fanova"]],
        "PED-ANOVA": [f"{v:.3f}" for v in t["ped_anova"]],
    })
    return Table("importance", f"Parameter importances for {a.metric}", display, t,
                 "normalised to sum to 1 within each scope; conditional parameters on the sub-study where "
                 "they are defined")


def excluded_table(a: Analysis) -> Table:
    t = a.scores.excluded
    display = pd.DataFrame({
        "trial": t["trial_id"], "status": t["status"], "epochs": [_count(e) for e in t["epochs_run"]],
        "reason": t["reason"],
        "error": ["" if is_null(e) else str(e).strip().splitlines()[-1][:160] for e in t["error"]],
    })
    return Table("excluded", "Trials not compared", display, t,
                 "failed trials with the last line of their error; trials the fidelity rule leaves out")


def _method_text(a: Analysis) -> Bullets:
    return Bullets([
        f"Compared value of each trial: {a.scores.note}.",
        "Seeds are pooled: a configuration is a trial's value of every parameter except the seed "
        "(`train.seed`); each trial counts once.",
        "Intervals: two-sided 95% Student t-intervals of the mean, mean ± t(0.975, n−1)·s/√n; none for n = 1.",
        "Differences: when both sides ran the same set of at least two seeds (one trial per seed: same data "
        "order and initialisation), the paired t-interval of the per-seed differences, d̄ ± t(0.975, n−1)·s_d/√n "
        "over n pairs; otherwise Welch's interval (unequal variances, Welch–Satterthwaite degrees of freedom) "
        "of the difference of the two means; none when a side has n = 1. Each Δ says which (paired n=… / Welch).",
        "Multiple comparisons: each table's differences to its reference are one family; unless `--correction` "
        "says otherwise, Holm's adjusted p-values with Bonferroni intervals when a table has more than one "
        "comparison (every caption names its correction; docs/statistics.md).",
        "Ablation tables tabulate every level of a categorical parameter (a `choice`) and of a numeric one "
        "whose every value ran in two or more trials; otherwise the numeric parameter is cut into quantile "
        "bins (`--bins`, default 4, at most one per two trials); the reference level is "
        f"`{BASELINE_METHOD}` for `{METHOD}`, else the most common level. Conditional parameters are tabulated "
        "among the trials where they are defined. The `failed` column counts failed trials at each level.",
        "Importances: Optuna's fANOVA (random-forest functional ANOVA, 64 trees, seed 0) and PED-ANOVA "
        "(target quantile max(0.1, 5/n), capped at 0.5) on the scored trials imported into an in-memory study; "
        "lists and strings are categorical. fANOVA only sees parameters defined in every trial, so each set of "
        "conditional parameters is evaluated on the sub-study of trials where it is defined.",
        "Ablation path: a level's effect is its mean minus the mean of the trials where its factor is defined; "
        "a configuration's estimated value is the observed baseline mean plus the effects it changes. From the "
        "baseline, each step applies the change toward the best configuration with the largest estimated gain "
        "(a conditional parameter only once its parent has the level that defines it). The last row is the "
        "best configuration as observed: the gap to the last estimate is what the additive model misses.",
    ])


PictureSource = Callable[[Sequence[str], Mapping[str, Any], Sequence[str]], Any]
"""What draws the best trial's distillation pictures: ``(results, trial row, params) -> None`` or
an object with ``note`` and ``pictures`` (each with ``image_id`` and ``png`` bytes). The analysis
reads tables only; the ``raykd analyze`` command passes :func:`raykd.visualize.trial.search_pictures`."""


def build_report(a: Analysis, *, with_plots: bool = True, pictures: PictureSource | None = None) -> Report:
    """The report of ``a``; ``with_plots=False`` skips drawing (for tables-only formats)."""
    trials, s, m = a.inputs.trials, a.scores, a.metric
    sections = []
    summary = [
        f"Trials: {len(trials)} ({_status_counts(trials)})"
        + (f", of {a.inputs.total_trials} before --filter" if a.inputs.total_trials != len(trials) else "")
        + f"; {len(s.frame)} of the search phase compared, {len(s.excluded)} not compared (listed at the end).",
        f"Compared value: {s.note}.",
        f"Metric: `{m}`, shown in points (x100).",
        *(f"{line[0].upper()}{line[1:]}." for line in a.verdict.lines()),
    ]
    teacher, confirm_teacher = a.inputs.teacher or {}, a.inputs.confirm_teacher or {}
    if m in teacher:
        summary.append(f"Teacher (teacher.json): {_num(teacher[m])}" + (
            f"; the confirmation's (confirm.set): {_num(confirm_teacher[m])}." if m in confirm_teacher else "."))
    sections.append(Section("Summary", [Bullets(summary + a.notes)]))
    if a.confirmation is not None:
        c = a.confirmation
        sections.append(Section("Confirmation", [
            Text("The top configurations of the search and the baseline, re-run at the full budget on fresh seeds "
                 "(no early stopping). The search's best trial won a maximum over noise; these numbers do not."),
            leaderboard_table(c.leaderboard, m, c.scores.note, name="confirmation",
                              title=f"Confirmation on fresh seeds: {m}"),
            *teachers_tables(a)]))
    sections.append(Section("Leaderboard" if a.confirmation is None else "Leaderboard of the search phase",
                            [leaderboard_table(a.leaderboard, m, s.note)]))
    blocks = [ablation_table(a, ab) for ab in a.ablations]
    if with_plots and a.ablations:
        blocks.append(Plot("effects", "Effect of each factor", plots.effects(a.ablations, m, teacher.get(m)),
                           "mean and 95% t-interval per level; dashed: the reference level's mean; dotted: teacher"))
        curves = plots.effect_curves(a.scores.frame, plots.continuous(a.factors, a.inputs.specs), m)
        if curves is not None:
            blocks.append(Plot("effect_curves", "Effect curves of the continuous factors", curves,
                               "every compared trial; a local linear fit (Gaussian kernel, bandwidth 0.3 of the "
                               "range) with its pointwise 95% band (raykd/analyze/curves.py)"))
    sections.append(Section("Ablation tables",
                            blocks or [Text("No factor takes two values among the compared trials.")]))
    if a.interactions:
        sections.append(Section("Two-factor tables", [interaction_table(a, fa, fb, t) for fa, fb, t in a.interactions]))
    if len(a.ofat):
        sections.append(Section("One factor at a time", [ofat_table(a)]))
    blocks = []
    if len(a.importance.frame):
        blocks.append(importance_table(a))
        if with_plots:
            blocks.append(Plot("importance", "Importances", plots.importance_bars(a.importance.frame),
                               "fANOVA and PED-ANOVA, one panel per scope"))
    blocks += [Text(n) for n in a.importance.notes]
    sections.append(Section("Importances", blocks or [Text("Too few compared trials for importances.")]))
    if len(a.path):
        sections.append(Section("Ablation path", [path_table(a)]))
    if with_plots:
        sections.append(Section("Plots", _plots(a)))
        drawn = _distillation_pictures(a, pictures) if pictures is not None else []
        if drawn:
            sections.append(Section("Distillation pictures", drawn))
    if len(s.excluded):
        sections.append(Section("Trials not compared", [excluded_table(a)]))
    sections.append(Section("Method", [_method_text(a)]))
    return Report(f"raykd ablation report: {m}", sections)


def _plots(a: Analysis) -> list[Plot]:
    s, m = a.scores, a.metric
    out = []
    if a.inputs.epochs is not None and not a.inputs.epochs.empty:
        out.append(Plot("learning_curves", "Learning curves", plots.learning_curves(
            a.inputs.epochs, a.inputs.trials, m, common_epoch=s.epoch),
            "every trial's metric per epoch; black: mean over the non-failed trials that reached each epoch "
            "(later epochs only hold the trials the scheduler kept)"))
    if s.frame["cost_h"].notna().any():
        out.append(Plot("cost", "Metric against cost", plots.cost(s.frame, m),
                        "one point per compared trial; the step line is the Pareto front (more metric, less time)"))
    objectives = a.inputs.objectives
    if len(objectives) > 1 and all(o in s.frame for o, _ in objectives[:2]):
        out.append(Plot("objectives", "Search objectives", plots.objectives(s.frame, objectives[0], objectives[1]),
                        "the first two objectives of the multi-objective search, with their Pareto front"))
    order = _importance_order(a)
    if order:
        out.append(Plot("parallel", "Parallel coordinates of the top trials",
                        plots.parallel(s.frame, order[:8], m, top=TOP),
                        "factors in order of importance; n/a: parameter undefined for that trial"))
    return out


def _distillation_pictures(a: Analysis, pictures: PictureSource) -> list[Text | Plot]:
    """What the best compared trial's distiller masked and rebuilt, when ``pictures`` finds that
    trial's folder in a results folder (its checkpoint must still hold weights)."""
    best = a.scores.frame.sort_values("value", ascending=False, kind="stable").iloc[0]
    found = pictures(a.results, best.to_dict(), a.inputs.params)
    if found is None:
        return []
    return [Text(found.note)] + [Plot(f"distillation_{p.image_id}", f"Trial {best['trial_id']}: val image {p.image_id}",
                                      p.png) for p in found.pictures]


def _importance_order(a: Analysis) -> list[Factor]:
    """Factors with two or more levels, most important first (fANOVA over all trials, then spread)."""
    imp = a.importance.frame
    score = {}
    for _, row in imp.iterrows():
        value = row["fanova"] if not pd.isna(row["fanova"]) else row["ped_anova"]
        weight = 1.0 if row["scope"] == ALL else 0.5
        score[row["parameter"]] = max(score.get(row["parameter"], 0.0), weight * value)
    spread = {ab.factor.name: tables.spread(ab) for ab in a.ablations}
    varying = [f for f in a.factors if a.levels[f.name].nunique() > 1]
    return sorted(varying, key=lambda f: (-score.get(f.name, 0.0), -spread.get(f.name, 0.0)))


def summary(a: Analysis, out: str | None, written: Sequence[str]) -> list[str]:
    """The lines the command prints."""
    s, m = a.scores, a.metric
    lines = [f"trials: {len(a.inputs.trials)} ({_status_counts(a.inputs.trials)}); {len(s.frame)} compared",
             f"fidelity: {s.note}", *a.verdict.lines()]
    if a.inputs.teacher and m in a.inputs.teacher:
        lines.append(f"teacher: {_num(a.inputs.teacher[m])}")
    if a.inputs.confirm_teacher and m in a.inputs.confirm_teacher:
        lines.append(f"teacher of the confirmation (confirm.set): {_num(a.inputs.confirm_teacher[m])}")
    imp = a.importance.frame
    imp = imp[imp.groupby("scope")["parameter"].transform("size") > 1]  # a lone parameter scores 1
    top = (imp.assign(score=imp["fanova"].fillna(imp["ped_anova"])).sort_values("score", ascending=False)
           .drop_duplicates("parameter").head(3))
    if len(top):
        lines.append("most important (fANOVA): " + ", ".join(
            f"{p} {v:.2f}" + ("" if scope == ALL else f" [{scope}]")
            for p, v, scope in zip(top["parameter"], top["score"], top["scope"])))
    failed = s.excluded[s.excluded["status"] == "ERROR"]
    if len(failed):
        lines.append(f"failed: {len(failed)} trial(s), listed in the report")
    lines += [f"note: {note}" for note in a.notes]
    if out:
        lines.append(f"report: {out} ({', '.join(written)})")
    return lines
