"""The confirmation across teacher seeds and the rank check, against reference computations on fixed numbers."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats as sps

from raykd.analyze import stats, tables
from raykd.analyze.factors import TEACHER_SEED
from raykd.analyze.rank_check import rank_check
from raykd.analyze.scores import Scores
from raykd.analyze.teachers import across_table, across_teachers, matched_differences
from raykd.analyze.verdict import Ranking, verdict

M = "distill.method"
A = "distill.alpha"

# Distilled (mgd) minus baseline per teacher seed, over student seeds 100..103 (teacher 3: one pair missing).
DIFFS = {1: [0.010, 0.004, 0.012, 0.006], 2: [0.001, -0.003, 0.004, 0.002], 3: [0.020, 0.015, 0.018]}
BASE = {100: 0.30, 101: 0.31, 102: 0.29, 103: 0.30}
TEACHER_AP = {1: 0.45, 2: 0.28, 3: 0.47}


def _frame(rows):
    frame = pd.DataFrame(rows, columns=[M, A, TEACHER_SEED, "seed", "value"])
    for m in tables.SIZE_METRICS:
        frame[m] = np.nan
    frame["cost_h"] = 0.1
    return frame


def confirmation_frame():
    """The baseline once per seed (no teacher seed: it does not build the teacher), mgd once per pair."""
    rows = [("none", None, None, s, v) for s, v in BASE.items()]
    for t, diffs in DIFFS.items():
        rows += [("mgd", 1e-6, t, s, BASE[s] + d) for s, d in zip(BASE, diffs)]
    # a second distilled configuration, worse, with teachers 1 and 2 only
    rows += [("mgd", 1e-7, t, s, BASE[s] - 0.01 + 0.001 * t) for t in (1, 2) for s in BASE]
    return _frame(rows)


def _ranking(frame):
    configs = tables.group_configs(frame, [M, A])
    scores = Scores(frame, pd.DataFrame(), "completed", None, "completed trials only", "bbox_mAP")
    return Ranking(scores, [M, A], configs, tables.leaderboard(frame, configs, top=10))


def test_clustered_interval_equals_statsmodels_cluster_robust_ols():
    d = np.array([v for t in DIFFS for v in DIFFS[t]])
    groups = np.array([t for t in DIFFS for _ in DIFFS[t]])
    ref = sm.OLS(d, np.ones((len(d), 1))).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    c = stats.clustered_mean(d, groups)
    low, high = ref.conf_int(0.05)[0]
    assert (c.mean, c.se, c.low, c.high) == pytest.approx((ref.params[0], ref.bse[0], low, high))
    assert (c.clusters, c.n) == (3, 11)
    assert c.spread == pytest.approx(np.std([np.mean(v) for v in DIFFS.values()], ddof=1))


def test_clustered_interval_of_equal_clusters_is_the_t_interval_of_their_means():
    d = np.array([0.1, 0.3, -0.2, 0.0, 0.5, 0.7])
    groups = [1, 1, 2, 2, 3, 3]
    means = [0.2, -0.1, 0.6]
    ci = sps.t.interval(0.95, 2, loc=np.mean(means), scale=sps.sem(means))
    c = stats.clustered_mean(d, groups)
    assert (c.low, c.high) == pytest.approx(ci)
    assert math.isnan(stats.clustered_mean([0.1, 0.2], [1, 1]).low)  # one cluster: no interval


def test_the_baseline_without_a_teacher_pairs_with_every_teachers_trial_of_its_seed():
    frame = confirmation_frame()
    part = frame[(frame[M] == "mgd") & (frame[A] == 1e-6)]
    d = matched_differences(part, frame[frame[M] == "none"])
    assert len(d) == 11
    for t, diffs in DIFFS.items():
        assert d.loc[d["teacher"] == t, "diff"].tolist() == pytest.approx(diffs)


def test_across_teachers_per_teacher_intervals_and_between_teacher_interval():
    frame = confirmation_frame()
    part = frame[(frame[M] == "mgd") & (frame[A] == 1e-6)]
    found = across_teachers(part, frame[frame[M] == "none"], TEACHER_AP)
    assert [t.teacher_seed for t in found.per_teacher] == [1, 2, 3]
    for t in found.per_teacher:
        ref = sps.ttest_1samp(DIFFS[t.teacher_seed], 0).confidence_interval(0.95)
        assert (t.ci_low, t.ci_high, t.n) == (pytest.approx(ref.low), pytest.approx(ref.high), len(DIFFS[t.teacher_seed]))
        assert t.teacher_metric == TEACHER_AP[t.teacher_seed]
    assert [t.separates for t in found.per_teacher] == [True, False, True] and found.separated == 2
    c = stats.clustered_mean([v for t in DIFFS for v in DIFFS[t]], [t for t in DIFFS for _ in DIFFS[t]])
    assert (found.mean, found.ci_low, found.ci_high, found.teachers, found.pairs) == pytest.approx(
        (c.mean, c.low, c.high, 3, 11))


def test_verdict_reports_pooled_per_teacher_and_between_teachers_and_flags_a_weak_teacher():
    frame = confirmation_frame()
    v = verdict(_ranking(frame), "confirm", teacher_scores=TEACHER_AP)
    pooled = sps.ttest_1samp([x for t in DIFFS for x in DIFFS[t]], 0).confidence_interval(0.95)
    assert (v.delta.n, v.delta.paired) == (11, True)
    assert (v.delta.ci_low, v.delta.ci_high) == (pytest.approx(pooled.low), pytest.approx(pooled.high))
    lines = v.lines()
    assert lines[2].endswith("(95% CI, paired over all 11 (teacher seed, seed) pairs)")
    assert lines[3].startswith("  Holm (Bonferroni intervals) over the comparisons with the baseline: ")  # two
    assert lines[4].startswith("  teacher seed 1, teacher 45.00: +0.80 [")
    assert any(line.startswith("between teachers: ") and "2 of 3 teachers' intervals exclude zero" in line
               for line in lines)
    assert any("teacher of seed 2 scores 28.00, below the baseline student's 30.00" in line for line in lines)
    data = json.loads(json.dumps(v.to_json()))
    assert [t["teacher_seed"] for t in data["teachers"]["per_teacher"]] == [1, 2, 3]
    assert data["teachers"]["separated"] == 2 and data["teachers"]["pooled"]["n"] == 11
    assert data["teachers"]["between_teachers"]["ci_low"] == pytest.approx(v.teachers.ci_low)


def test_across_table_has_a_row_per_distilled_configuration():
    frame = confirmation_frame()
    r = _ranking(frame)
    table = across_table(frame, r.configs, {i: str(k) for i, k in enumerate(r.configs.keys)}, TEACHER_AP)
    assert len(table) == 2 and list(table["teachers"]) == [3, 2] and list(table["pairs"]) == [11, 8]
    assert table.loc[1, "teacher_1"] == pytest.approx(-0.009) and "teacher_3" in table


def test_without_teacher_seeds_nothing_changes():
    frame = confirmation_frame()
    frame = frame[frame[TEACHER_SEED].isna() | (frame[TEACHER_SEED] == 1)].assign(**{TEACHER_SEED: None})
    v = verdict(_ranking(frame), "confirm")
    assert v.teachers is None and v.delta.n == 4 and v.lines()[2].endswith("(95% CI, paired over 4 seeds)")


def test_rank_check_equals_scipy_on_fixed_means():
    search = _frame([("mgd", a, None, s, v) for a, vs in {1: [0.30, 0.32], 2: [0.28, 0.28], 3: [0.25, 0.27],
                                                            4: [0.31, 0.33]}.items() for s, v in zip((0, 1), vs)]
                    + [("none", None, None, 0, 0.26)])
    confirm_means = {1: 0.40, 2: 0.41, 3: 0.35, 4: 0.39}
    confirm = _frame([("mgd", a, None, s, v + d) for a, v in confirm_means.items()
                      for s, d in zip((100, 101), (-0.01, 0.01))] + [("none", None, None, 100, 0.36)])
    check = rank_check(search, confirm, [M, A], {("mgd", 4.0): "alpha=4", ("mgd", 2.0): "alpha=2"})
    proxy = [0.31, 0.28, 0.26, 0.32, 0.26]
    full = [0.40, 0.41, 0.35, 0.39, 0.36]
    assert check.n == 5
    assert check.spearman == pytest.approx(sps.spearmanr(proxy, full).statistic)
    assert check.kendall == pytest.approx(sps.kendalltau(proxy, full).statistic)
    assert not check.held and (check.search_best, check.confirmed_best) == ("alpha=4", "alpha=2")
    assert "did NOT hold" in check.line() and "over 5 configurations" in check.line()
    assert rank_check(search, confirm[confirm[A].isin([1.0, 2.0])], [M, A]) is None  # fewer than 3 in common


def test_verdict_and_summary_report_the_rank_check_of_a_proxy_search():
    search = _frame([("mgd", a, None, s, v) for a, v in ((1.0, 0.30), (2.0, 0.31), (3.0, 0.29)) for s in (0, 1)]
                    + [("none", None, None, s, 0.25) for s in (0, 1)])
    confirm = _frame([("mgd", a, None, s, v + 0.001 * (s - 100)) for a, v in ((1.0, 0.40), (2.0, 0.42), (3.0, 0.38))
                      for s in (100, 101)] + [("none", None, None, s, 0.36 + 0.002 * (s - 100)) for s in (100, 101)])
    v = verdict(_ranking(confirm), "confirm", proxy=_ranking(search), searched=[M, A])
    proxy, full = [0.30, 0.31, 0.29, 0.25], [0.4005, 0.4205, 0.3805, 0.361]
    assert v.rank_check.n == 4 and v.rank_check.held
    assert v.rank_check.spearman == pytest.approx(sps.spearmanr(proxy, full).statistic)
    assert any(line.startswith("rank check over 4 configurations: Spearman +1.00, Kendall +1.00: the search's "
                               "ranking held") for line in v.lines())
    data = json.loads(json.dumps(v.to_json()))
    assert data["rank_check"]["kendall"] == pytest.approx(1.0) and data["rank_check"]["n"] == 4
