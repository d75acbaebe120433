"""What a search found, defined once: its best configuration, the no-distillation baseline
and their difference.

``raykd.search`` prints its closing lines from :func:`verdict`, ``raykd.analyze`` prints the
same lines and writes them to ``summary.json``; the confirmation phase re-runs the
configurations :func:`rank` puts first. When a search holds confirmation trials
(``phase = confirm``: the top configurations and the baseline re-run on fresh seeds at the
full budget), the verdict is theirs: the best trial of the search phase won a maximum over
noise, the confirmation is the unbiased estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from raykd.analyze import tables
from raykd.analyze.correction import NAMES
from raykd.analyze.factors import BASELINE_METHOD, METHOD, SCALE, SEED_COLUMNS, is_null
from raykd.analyze.rank_check import RankCheck, rank_check
from raykd.analyze.scores import Scores, score_trials
from raykd.analyze.teachers import AcrossTeachers, across_teachers
from raykd.results.schema import CONFIRM_PHASE, SEARCH_PHASE


@dataclass(frozen=True)
class Ranking:
    """Scored trials of one phase grouped into configurations (seeds pooled), best first."""

    scores: Scores
    names: list[str]  # the factors that make a configuration
    configs: tables.Configs
    leaderboard: pd.DataFrame  # tables.leaderboard of the top configurations + baseline (+ teacher)

    def values(self, config: int) -> dict[str, Any]:
        """The factor values of configuration ``config`` that are defined (lists as lists)."""
        row = self.configs.rows(self.scores.frame, config).iloc[0]
        return {n: _plain(row[n]) for n in self.names if not is_null(row[n])}


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` trials with its 95% t-interval (NaN bounds when n < 2)."""

    mean: float
    ci_low: float
    ci_high: float
    n: int


@dataclass(frozen=True)
class Delta:
    """The best distilled configuration (``label``) − the baseline, with its 95% interval:
    ``paired`` over ``n`` shared seeds, else Welch."""

    label: str
    mean: float
    ci_low: float
    ci_high: float
    paired: bool
    n: int
    p: float = math.nan
    correction: str = "none"  # of the table's comparisons with the baseline (raykd.analyze.correction)
    p_adj: float = math.nan
    ci_low_adj: float = math.nan  # the interval at the corrected level
    ci_high_adj: float = math.nan


@dataclass(frozen=True)
class Verdict:
    """The best configuration, the baseline and the difference, in metric units ([0, 1])."""

    metric: str
    phase: str  # search | confirm: which trials the numbers come from
    fidelity: str  # the fidelity rule the trials were compared under
    fidelity_note: str
    best_config: dict[str, Any]
    best_label: str
    best: Estimate
    best_seeds: list[int]
    best_epochs: list[int]  # the epochs the best configuration's trials were ranked at
    baseline: Estimate | None
    delta: Delta | None
    teachers: AcrossTeachers | None = None  # the delta per teacher seed and between teachers
    rank_check: RankCheck | None = None  # the search's ranking against the confirmed one
    teacher_metric: float = math.nan  # the (search's) teacher's score on the validation set
    weak_teachers: list[str] = field(default_factory=list)  # teachers that score below the baseline student

    def to_json(self) -> dict[str, Any]:
        """The ``summary.json`` mapping (NaN written as null)."""
        teachers = None
        if self.teachers is not None:
            t = self.teachers
            teachers = {"pooled": asdict(self.delta) if self.delta else None,
                        "per_teacher": [{**asdict(p), "separates": p.separates} for p in t.per_teacher],
                        "between_teachers": {"mean": t.mean, "ci_low": t.ci_low, "ci_high": t.ci_high, "se": t.se,
                                             "teachers": t.teachers, "pairs": t.pairs, "spread": t.spread,
                                             "method": t.method},
                        "separated": t.separated}
        return _nulls({
            "metric": self.metric,
            "fidelity": {"rule": self.fidelity, "note": self.fidelity_note},
            "best": {"config": self.best_config, "label": self.best_label, **asdict(self.best),
                     "phase": self.phase, "seeds": self.best_seeds, "epochs": self.best_epochs},
            "baseline": asdict(self.baseline) if self.baseline else None,
            "delta": asdict(self.delta) if self.delta else None,
            "teachers": teachers,
            "rank_check": asdict(self.rank_check) if self.rank_check else None,
            "teacher_metric": self.teacher_metric,
            "weak_teachers": self.weak_teachers,
        })

    def lines(self) -> list[str]:
        """The closing lines both commands print (x100, as papers do)."""
        where = "confirmation on fresh seeds" if self.phase == CONFIRM_PHASE else "search phase"
        out = [f"best ({where}): {self.best_label}: {self.metric} (x100) {_ci(self.best)} "
               f"(n={self.best.n}{_at_epochs(self.best_epochs)})"]
        if self.baseline is not None:
            out.append(f"baseline ({METHOD}={BASELINE_METHOD}): {_ci(self.baseline)} (n={self.baseline.n})")
        if self.delta is not None:
            how = f"paired over {self.delta.n} seeds" if self.delta.paired else "Welch"
            which = "best" if self.delta.label == self.best_label else f"best distilled ({self.delta.label})"
            if self.teachers is not None:
                how = f"paired over all {self.delta.n} (teacher seed, seed) pairs"
            out.append(f"{which} − baseline: {_signed(self.delta.mean)} [{_signed(self.delta.ci_low)}, "
                       f"{_signed(self.delta.ci_high)}] (95% CI, {how})")
            if self.delta.correction != "none":
                out.append(f"  {NAMES[self.delta.correction]} over the comparisons with the baseline: "
                           f"[{_signed(self.delta.ci_low_adj)}, {_signed(self.delta.ci_high_adj)}], "
                           f"adjusted p {self.delta.p_adj:.3g}")
        if self.teachers is not None:
            t = self.teachers
            for p in t.per_teacher:
                score = "" if math.isnan(p.teacher_metric) else f", teacher {p.teacher_metric * SCALE:.2f}"
                out.append(f"  teacher seed {p.teacher_seed}{score}: {_signed(p.mean)} [{_signed(p.ci_low)}, "
                           f"{_signed(p.ci_high)}] (paired over {p.n} seeds)")
            out.append(f"between teachers: {_signed(t.mean)} [{_signed(t.ci_low)}, {_signed(t.ci_high)}] (95% CI, "
                       f"{t.method}; spread {t.spread * SCALE:.2f}); {t.separated} of {t.teachers} teachers' "
                       "intervals exclude zero")
        if self.rank_check is not None:
            out.append(self.rank_check.line())
        for weak in self.weak_teachers:
            out.append(f"warning: {weak}")
        return out


def factor_names(trials: pd.DataFrame, params: Sequence[str]) -> list[str]:
    """The parameter columns that make a configuration: every parameter but the seed, and
    ``experiment`` when the tables hold several."""
    names = [p for p in params if p not in SEED_COLUMNS and p in trials.columns]
    if trials["experiment"].nunique() > 1:
        names.insert(0, "experiment")
    return names


def phase_of(trials: pd.DataFrame) -> pd.Series:
    """Each trial's phase (tables written before phases existed: all ``search``)."""
    if "phase" not in trials:
        return pd.Series(SEARCH_PHASE, index=trials.index)
    return trials["phase"].fillna(SEARCH_PHASE)


def rank(trials: pd.DataFrame, epochs: pd.DataFrame | None, params: Sequence[str], metric: str, *,
         fidelity: str = "auto", teacher: Mapping[str, float] | None = None, top: int = 10,
         correction: str = "auto") -> Ranking | None:
    """Score ``trials`` under ``fidelity`` and rank their configurations; None when no trial
    has a value to compare yet. ``correction``: of the leaderboard's comparisons with the baseline."""
    scores = score_trials(trials, epochs, metric, fidelity)
    frame = scores.frame
    if frame.empty:
        return None
    names = [n for n in factor_names(trials, params) if frame[n].map(lambda v: not is_null(v)).any()]
    configs = tables.group_configs(frame, names)
    board = tables.leaderboard(frame, configs, top=top, teacher=teacher, metric=metric, correction=correction)
    return Ranking(scores, names, configs, board)


def verdict(ranking: Ranking, phase: str, *, teacher_scores: Mapping[int, float] | None = None,
            proxy: Ranking | None = None, searched: Sequence[str] | None = None) -> Verdict:
    """The verdict of one phase's :class:`Ranking`: its best configuration, the baseline, and
    the best distilled configuration's difference to the baseline (the baseline may be best).

    ``teacher_scores``: each ``confirm.teacher_seeds`` teacher's score (the per-teacher lines);
    ``proxy``: the search phase's ranking, compared with this one (:mod:`raykd.analyze.rank_check`)
    on the ``searched`` keys (default: the factors both rankings have).
    """
    board = ranking.leaderboard
    frame, configs = ranking.scores.frame, ranking.configs
    best = board[board["role"] != "teacher"].iloc[0]
    base = board[board["role"] == "baseline"]
    best_id = configs.order[0]
    best_rows = configs.rows(frame, best_id)
    seeds = sorted({int(s) for s in best_rows["seed"] if not is_null(s)})
    epochs = sorted({int(e) for e in best_rows.get("epoch", []) if not is_null(e)})
    baseline = delta = spread = None
    distilled = board[(board["role"] == "config")
                      & (board[METHOD] != BASELINE_METHOD if METHOD in board else True)]
    if len(base):
        b = base.iloc[0]
        baseline = Estimate(float(b["mean"]), float(b["ci_low"]), float(b["ci_high"]), int(b["n"]))
        if len(distilled):
            d = distilled.iloc[0]
            delta = Delta(str(d["config"]), float(d["diff"]), float(d["diff_low"]), float(d["diff_high"]),
                          d["diff_test"] == "paired", int(d["diff_n"]), float(d["diff_p"]),
                          board.attrs.get("correction", "none"), float(d.get("diff_p_adj", math.nan)),
                          float(d.get("diff_low_adj", math.nan)), float(d.get("diff_high_adj", math.nan)))
            spread = across_teachers(configs.rows(frame, configs.order[int(d["rank"]) - 1]),
                                     configs.rows(frame, configs.baseline), teacher_scores)
    teacher_row = board[board["role"] == "teacher"]
    teacher_metric = float(teacher_row.iloc[0]["mean"]) if len(teacher_row) else math.nan
    return Verdict(
        metric=ranking.scores.metric, phase=phase, fidelity=ranking.scores.fidelity,
        fidelity_note=ranking.scores.note, best_config=ranking.values(best_id), best_label=str(best["config"]),
        best=Estimate(float(best["mean"]), float(best["ci_low"]), float(best["ci_high"]), int(best["n"])),
        best_seeds=seeds, best_epochs=epochs, baseline=baseline, delta=delta, teachers=spread,
        rank_check=_rank_check(proxy, ranking, searched) if proxy is not None else None,
        teacher_metric=teacher_metric,
        weak_teachers=_weak_teachers(teacher_metric, teacher_scores, baseline, delta))


def _rank_check(proxy: Ranking, confirmed: Ranking, searched: Sequence[str] | None) -> RankCheck | None:
    keys = [n for n in confirmed.names if n in proxy.names and (not searched or n in searched or n == METHOD)]
    shown = tables.varying(confirmed.scores.frame, confirmed.names) or confirmed.names
    labels = {}
    for key in confirmed.configs.keys:
        values = dict(zip(confirmed.names, key))
        labels[tuple(values[k] for k in keys)] = tables.config_label(values, shown)
    return rank_check(proxy.scores.frame, confirmed.scores.frame, keys, labels)


def _weak_teachers(teacher_metric: float, teacher_scores: Mapping[int, float] | None, baseline: Estimate | None,
                   delta: Delta | None) -> list[str]:
    """A line for each teacher of a distilled student that scores below the baseline student's mean."""
    if baseline is None or delta is None or math.isnan(baseline.mean):
        return []
    scores = {f"the teacher of seed {s}": v for s, v in (teacher_scores or {}).items()} or (
        {"the teacher": teacher_metric} if not math.isnan(teacher_metric) else {})
    return [f"{who} scores {value * SCALE:.2f}, below the baseline student's {baseline.mean * SCALE:.2f}: "
            f"{delta.label} learns from a weaker model" for who, value in scores.items() if value < baseline.mean]


def decide(trials: pd.DataFrame, epochs: pd.DataFrame | None, params: Sequence[str], metric: str, *,
           fidelity: str = "auto", teacher: Mapping[str, float] | None = None,
           teacher_scores: Mapping[int, float] | None = None, rank_check: bool = False,
           searched: Sequence[str] | None = None, correction: str = "auto",
           confirm_teacher: Mapping[str, float] | None = None) -> Verdict | None:
    """The verdict of a search's tables: its confirmation trials when there are any (compared
    at their full budget), else its search phase under ``fidelity``.

    ``teacher``: the teacher's metrics (``teacher.json``); ``confirm_teacher``: the confirmation's
    own teacher's, when ``confirm.set`` gave it another; ``teacher_scores``: the score of each
    ``confirm.teacher_seeds`` teacher; ``rank_check``: compare the search phase's ranking of the
    confirmed configurations (on the ``searched`` keys) with theirs."""
    confirm = phase_of(trials) == CONFIRM_PHASE
    if confirm.any():
        ranking = rank(trials[confirm], epochs, params, metric, fidelity="completed",
                       teacher=confirm_teacher or teacher, correction=correction)
        if ranking is not None:
            proxy = rank(trials[~confirm], epochs, params, metric, fidelity=fidelity) \
                if rank_check and (~confirm).any() else None
            return verdict(ranking, CONFIRM_PHASE, teacher_scores=teacher_scores, proxy=proxy, searched=searched)
    ranking = rank(trials[~confirm], epochs, params, metric, fidelity=fidelity, teacher=teacher,
                   correction=correction)
    return verdict(ranking, SEARCH_PHASE) if ranking is not None else None


def _plain(value: Any) -> Any:
    key = tables.exact_value(value)
    return list(key) if isinstance(key, tuple) else key


def _nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nulls(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _ci(e: Estimate) -> str:
    if math.isnan(e.ci_low):
        return f"{e.mean * SCALE:.2f}"
    return f"{e.mean * SCALE:.2f} ± {(e.ci_high - e.ci_low) / 2 * SCALE:.2f}"


def _at_epochs(epochs: Sequence[int]) -> str:
    """``, at epoch 2`` (``, at epochs 2, 3``): where the trials of a configuration were ranked."""
    if not epochs:
        return ""
    return f", at epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, epochs))}"


def _signed(value: float) -> str:
    return "—" if math.isnan(value) else f"{value * SCALE:+.2f}"
