"""raykd.analyze factors, ablation/leaderboard/OFAT/path tables and importances on fixed tables."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from raykd.analyze import tables
from raykd.analyze.factors import describe, level_frame
from raykd.analyze.importance import ALL, importances

M = "distill.method"
R = "distill.mask_ratio"


def scored(rows):
    """A scored-trials frame from (method, mask_ratio, seed, value) rows."""
    frame = pd.DataFrame(rows, columns=[M, R, "seed", "value"])
    frame["AP_S"] = frame["value"] / 2
    frame["AP_M"] = frame["value"]
    frame["AP_L"] = np.nan  # no large objects: stays NaN, not 0
    frame["cost_h"] = 0.5
    return frame


# none x3 seeds, mgd@0.65 x3, mgd@0.45 x2, dmkd@0.65 x2, dmkd@0.45 x1
GRID = scored([
    ("none", None, 0, 0.30), ("none", None, 1, 0.31), ("none", None, 2, 0.29),
    ("mgd", 0.65, 0, 0.36), ("mgd", 0.65, 1, 0.35), ("mgd", 0.65, 2, 0.37),
    ("mgd", 0.45, 0, 0.33), ("mgd", 0.45, 1, 0.34),
    ("dmkd", 0.65, 0, 0.34), ("dmkd", 0.65, 1, 0.32),
    ("dmkd", 0.45, 0, 0.31),
])


# --- factors --------------------------------------------------------------------------


def test_factors_levels_bins_and_conditions():
    rng = np.random.default_rng(0)
    n = 24
    methods = ["none", "mgd", "samkd"] * 8
    frame = pd.DataFrame({
        M: methods,
        R: [None if m == "none" else v for m, v in zip(methods, np.linspace(0.3, 0.9, n))],
        "distill.alpha": [None if m == "none" else v for m, v in zip(methods, np.geomspace(1e-6, 1e-4, n))],
        "distill.beta": [float(rng.uniform(0.1, 10)) if m == "samkd" else None for m in methods],
        "distill.pyramid_scales": [[[1, 2, 4], [1], [1, 2]][i // 3 % 3] if m == "samkd" else None
                                   for i, m in enumerate(methods)],
        "distill.sld": [bool(i // 3 % 2) if m == "samkd" else None for i, m in enumerate(methods)],
        "train.epochs": [3, 6] * 12,
    })
    f = {x.name: x for x in describe(frame, list(frame.columns))}
    assert f[M].levels == ("none", "mgd", "samkd") and not f[M].conditional
    ratio = f[R]
    assert ratio.kind == "bins" and not ratio.log and ratio.conditional
    defined = frame[R].dropna().tolist()  # 16 values seen once each: 4 quantile bins of 4 trials
    assert ratio.edges == pytest.approx(np.quantile(defined, np.linspace(0, 1, 4 + 1)))
    assert level_frame(frame, [ratio])[R].value_counts().tolist() == [4, 4, 4, 4]
    assert ratio.condition == "distill.method ∈ {mgd, samkd}"
    assert [ratio.level(v) for v in (min(defined), max(defined))] == [ratio.levels[0], ratio.levels[-1]]
    assert ratio.level(None) is None
    alpha = f["distill.alpha"]
    alpha_values = frame["distill.alpha"].dropna()
    assert alpha.log and alpha.edges == pytest.approx(np.quantile(alpha_values, np.linspace(0, 1, 5)))
    assert f["distill.beta"].condition == "distill.method ∈ {samkd}"
    assert f["distill.pyramid_scales"].levels == ("[1]", "[1, 2]", "[1, 2, 4]")
    assert f["distill.sld"].levels == ("off", "on")
    assert f["train.epochs"].kind == "levels" and f["train.epochs"].levels == ("3", "6")
    levels = level_frame(frame, list(f.values()))
    assert levels.loc[0, M] == "none" and pd.isna(levels.loc[0, R]) and levels.loc[2, "distill.sld"] == "off"


# --- ablation table ---------------------------------------------------------------------


def test_ablation_table_matches_hand_computation():
    factor = describe(GRID, [M])[0]
    levels = level_frame(GRID, [factor])
    failed = pd.Series(["dmkd", "dmkd", "mgd"])
    ab = tables.ablation(GRID, levels, factor, failed)
    t = ab.table.set_index("level")
    assert ab.reference == "none" and list(t.index) == ["none", "dmkd", "mgd"]
    mgd = [0.36, 0.35, 0.37, 0.33, 0.34]
    none = [0.30, 0.31, 0.29]
    assert t.loc["mgd", "n"] == 5 and t.loc["mgd", "mean"] == pytest.approx(0.35)
    low, high = sps.t.interval(0.95, 4, loc=0.35, scale=sps.sem(mgd))
    assert (t.loc["mgd", "ci_low"], t.loc["mgd", "ci_high"]) == (pytest.approx(low), pytest.approx(high))
    ref = sps.ttest_ind(mgd, none, equal_var=False).confidence_interval(0.95)
    assert t.loc["mgd", "diff"] == pytest.approx(0.05)
    assert (t.loc["mgd", "diff_low"], t.loc["mgd", "diff_high"]) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert t.loc["mgd", "diff_test"] == "welch"  # seed 0 twice at the mgd level: not pairable
    assert math.isnan(t.loc["none", "diff"]) and t.loc["none", "reference"]
    assert t.loc["mgd", "AP_S"] == pytest.approx(0.175) and math.isnan(t.loc["mgd", "AP_L"])
    assert (t.loc["dmkd", "failed"], t.loc["mgd", "failed"], t.loc["none", "failed"]) == (2, 1, 0)


def test_reference_level_is_the_most_common_then_first():
    factor = describe(pd.DataFrame({"x": ["a", "b", "c"]}), ["x"])[0]
    assert tables.reference_level(factor, {"a": 2, "b": 3, "c": 3}) == "b"
    method = describe(GRID, [M])[0]
    assert tables.reference_level(method, {"mgd": 5, "none": 1}) == "none"
    assert tables.reference_level(method, {"mgd": 5, "dmkd": 2}) == "mgd"


def test_interaction_cells():
    factors = describe(GRID, [M, R])
    levels = level_frame(GRID, factors)
    cells = tables.interaction(GRID, levels, *factors)
    cell = cells[(cells[M] == "mgd") & (cells[R] == "0.45")].iloc[0]
    assert (cell["n"], cell["mean"]) == (2, pytest.approx(0.335))
    assert len(cells) == 4  # none has no mask ratio: not a cell
    assert tables.pick_pairs([tables.ablation(GRID, levels, f) for f in factors], levels) == [tuple(factors)]


# --- configurations -------------------------------------------------------------------


def test_leaderboard_pools_seeds_and_adds_baseline_and_teacher():
    configs = tables.group_configs(GRID, [M, R])
    board = tables.leaderboard(GRID, configs, top=2, teacher={"bbox_mAP": 0.42, "AP_S": 0.2})
    assert list(board["role"]) == ["config", "config", "baseline", "teacher"]
    first = board.iloc[0]
    assert (first["config"], first["n"], first["seeds"]) == ("method=mgd, mask_ratio=0.65", 3, "0, 1, 2")
    assert first["mean"] == pytest.approx(0.36)
    # both ran seeds 0, 1, 2: a paired interval over the three per-seed differences
    ref = sps.ttest_rel([0.36, 0.35, 0.37], [0.30, 0.31, 0.29]).confidence_interval(0.95)
    assert (first["diff"], first["diff_low"], first["diff_high"]) == (
        pytest.approx(0.06), pytest.approx(ref.low), pytest.approx(ref.high))
    assert (first["diff_test"], first["diff_n"]) == ("paired", 3)
    assert board.iloc[1]["config"] == "method=mgd, mask_ratio=0.45" and board.iloc[1]["rank"] == 2
    base = board.iloc[2]
    assert (base["rank"], base["config"], base["n"]) == (5, "method=none", 3)  # 5th of 5 configurations
    assert base["mean"] == pytest.approx(0.30) and math.isnan(base["diff"])
    teacher = board.iloc[3]
    assert teacher["mean"] == 0.42 and teacher["diff"] == pytest.approx(0.12) and teacher["AP_S"] == 0.2


def test_ofat_finds_single_changes_around_the_best():
    configs = tables.group_configs(GRID, [M, R])
    t = tables.ofat(GRID, configs)
    changes = {(r["factor"], r["value"]): r for _, r in t.iterrows()}
    # best = mgd@0.65; neighbours: mgd@0.45 (ratio), dmkd@0.65 (method), none (method; ratio undefined there)
    assert set(changes) == {("(best configuration)", ""), (R, "0.45"), (M, "dmkd"), (M, "none")}
    ratio = changes[(R, "0.45")]
    assert ratio["best"] == "0.65" and ratio["n"] == 2 and ratio["diff"] == pytest.approx(0.335 - 0.36)
    ref = sps.ttest_ind([0.34, 0.32], [0.36, 0.35, 0.37], equal_var=False).confidence_interval(0.95)
    assert changes[(M, "dmkd")]["diff_low"] == pytest.approx(ref.low)


def test_ofat_is_empty_without_neighbours():
    frame = scored([("mgd", 0.65, 0, 0.3), ("dmkd", 0.45, 0, 0.2)])
    assert tables.ofat(frame, tables.group_configs(frame, [M, R])).empty


def test_ablation_path_applies_the_largest_estimated_gain_first():
    factors = describe(GRID, [M, R])
    levels = level_frame(GRID, factors)
    path = tables.ablation_path(GRID, levels, factors, tables.group_configs(GRID, [M, R]))
    # marginal effects by hand: method: (mean(mgd) - grand mean) - (mean(none) - grand mean);
    # mask ratio 0.65 among the 8 distilled trials: mean(0.65) - mean(distilled)
    gain_method = 0.35 - 0.30
    distilled = GRID[GRID[M] != "none"]["value"].mean()
    gain_ratio = np.mean([0.36, 0.35, 0.37, 0.34, 0.32]) - distilled
    assert list(path["factor"]) == ["(baseline)", M, R, "(best, observed)"]
    assert (path["from"].iloc[1], path["to"].iloc[1]) == ("none", "mgd")
    assert (path["from"].iloc[2], path["to"].iloc[2]) == ("(undefined)", "0.65")  # only once mgd defines it
    assert path["gain"].iloc[1] == pytest.approx(gain_method)
    assert path["gain"].iloc[2] == pytest.approx(gain_ratio)
    assert path["value"].iloc[0] == pytest.approx(0.30)
    assert path["value"].iloc[2] == pytest.approx(0.30 + gain_method + gain_ratio)
    assert path["value"].iloc[3] == pytest.approx(0.36) and path["n"].iloc[3] == 3


def test_ablation_path_orders_independent_changes_by_gain():
    frame = pd.DataFrame([("a0", "b0", "none", 0.1), ("a1", "b0", "mgd", 0.2), ("a0", "b1", "mgd", 0.5),
                          ("a1", "b1", "mgd", 0.6)], columns=["x", "y", M, "value"])
    factors = describe(frame, ["x", "y", M])
    path = tables.ablation_path(frame, level_frame(frame, factors), factors,
                                tables.group_configs(frame, ["x", "y", M]))
    # y: 0.55 - 0.15 = +0.4; method: 1.3/3 - 0.1 = +0.333; x: 0.4 - 0.3 = +0.1
    assert list(path["factor"]) == ["(baseline)", "y", M, "x", "(best, observed)"]
    assert list(path["gain"].iloc[1:4]) == pytest.approx([0.4, 1.3 / 3 - 0.1, 0.1])
    assert path["value"].iloc[3] == pytest.approx(0.1 + 0.4 + 1.3 / 3 - 0.1 + 0.1)


# --- importances -----------------------------------------------------------------------


def conditional_study(beta_weight, ratio_weight, seed=1):
    """60 trials, half SAMKD (with β, log-uniform); value = weights · (ratio, log10 β) + tiny noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(60):
        method = ["mgd", "samkd"][i % 2]
        a_noise = float(rng.uniform(0, 1))  # named to sort first: the Optuna 5.0.0 ordering trap
        ratio = float(rng.uniform(0.3, 0.9))
        beta = float(np.exp(rng.uniform(np.log(0.1), np.log(10)))) if method == "samkd" else None
        value = 0.3 + ratio_weight * ratio + (beta_weight * np.log10(beta) if beta else 0) + 0.001 * a_noise
        rows.append({M: method, R: ratio, "distill.beta": beta, "a_noise": a_noise, "value": value})
    frame = pd.DataFrame(rows)
    names = [M, R, "distill.beta", "a_noise"]
    conditions = {f.name: f.condition for f in describe(frame, names) if f.condition}
    return importances(frame, names, conditions=conditions).frame


def test_importances_over_all_trials_leave_conditional_parameters_out():
    t = conditional_study(beta_weight=0.0, ratio_weight=0.3)
    everywhere = t[t["scope"] == ALL].set_index("parameter")
    assert set(everywhere.index) == {M, R, "a_noise"} and (everywhere["n"] == 60).all()
    assert everywhere["fanova"].sum() == pytest.approx(1.0) and everywhere["ped_anova"].sum() == pytest.approx(1.0)
    assert everywhere["fanova"].idxmax() == R and everywhere.loc["a_noise", "fanova"] < 0.05


def test_importances_evaluate_conditional_parameters_on_their_sub_study():
    t = conditional_study(beta_weight=0.3, ratio_weight=0.05)
    assert set(t["scope"]) == {ALL, "distill.method ∈ {samkd}"}
    sub = t[t["scope"] == "distill.method ∈ {samkd}"].set_index("parameter")
    assert set(sub.index) == {R, "distill.beta", "a_noise"} and (sub["n"] == 30).all()  # method is constant there
    assert sub["fanova"].idxmax() == "distill.beta" and sub.loc["distill.beta", "fanova"] > 0.8
    assert sub["ped_anova"].idxmax() == "distill.beta"


def test_importances_skip_small_scopes_with_a_note():
    frame = pd.DataFrame({R: [0.3, 0.5, 0.7, 0.9], "value": [0.1, 0.2, 0.3, 0.4]})
    imp = importances(frame, [R])
    assert imp.frame.empty and "fewer than 6" in imp.notes[0]


# --- the verdict (best, baseline, delta) ---------------------------------------------------


def _ranking(frame):
    from raykd.analyze.scores import Scores
    from raykd.analyze.verdict import Ranking

    configs = tables.group_configs(frame, [M, R])
    scores = Scores(frame, pd.DataFrame(), "completed", None, "completed trials only", "bbox_mAP")
    return Ranking(scores, [M, R], configs, tables.leaderboard(frame, configs, top=10))


def test_verdict_is_the_leaderboard_top_with_a_paired_delta():
    import json

    from raykd.analyze.verdict import verdict

    v = verdict(_ranking(GRID), "confirm")
    assert (v.best_label, v.best_config, v.best_seeds) == ("method=mgd, mask_ratio=0.65", {M: "mgd", R: 0.65}, [0, 1, 2])
    assert (v.best.n, v.best.mean, v.baseline.n, v.baseline.mean) == (3, pytest.approx(0.36), 3, pytest.approx(0.30))
    ci = sps.ttest_rel([0.36, 0.35, 0.37], [0.30, 0.31, 0.29]).confidence_interval(0.95)
    assert (v.delta.paired, v.delta.n, v.delta.label) == (True, 3, v.best_label)
    assert (v.delta.ci_low, v.delta.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    data = json.loads(json.dumps(v.to_json()))
    assert data["best"]["phase"] == "confirm" and data["delta"]["paired"] is True and data["fidelity"]["rule"] == "completed"
    assert v.lines()[0] == "best (confirmation on fresh seeds): method=mgd, mask_ratio=0.65: bbox_mAP (x100) 36.00 ± 2.48 (n=3)"
    assert v.lines()[2].startswith("best − baseline: +6.00 [") and v.lines()[2].endswith("(95% CI, paired over 3 seeds)")


def test_verdict_says_at_which_epoch_the_best_was_ranked():
    """The closing "best" line names the epoch its trials were scored at (a
    search's progress lines showed the same trial higher at a later epoch)."""
    import json

    from raykd.analyze.verdict import verdict

    frame = GRID.assign(epoch=2)
    frame.loc[frame[M] == "none", "epoch"] = 3
    v = verdict(_ranking(frame), "search")
    assert v.best_epochs == [2]
    assert v.lines()[0] == "best (search phase): method=mgd, mask_ratio=0.65: bbox_mAP (x100) 36.00 ± 2.48 (n=3, at epoch 2)"
    assert json.loads(json.dumps(v.to_json()))["best"]["epochs"] == [2]
    frame.loc[(frame[M] == "mgd") & (frame["seed"] == 2), "epoch"] = 4  # fidelity "best": epochs differ
    assert verdict(_ranking(frame), "search").lines()[0].endswith("(n=3, at epochs 2, 4)")


def test_verdict_when_the_baseline_wins_names_the_best_distilled_configuration():
    from raykd.analyze.verdict import verdict

    frame = scored([("none", None, 0, 0.40), ("none", None, 1, 0.41), ("mgd", 0.65, 0, 0.36), ("mgd", 0.65, 1, 0.35),
                    ("dmkd", 0.65, 0, 0.30)])
    v = verdict(_ranking(frame), "search")
    assert v.best_label == "method=none" and v.best_config == {M: "none"}
    assert v.delta.label == "method=mgd, mask_ratio=0.65" and v.delta.mean == pytest.approx(-0.05)
    assert v.lines()[2].startswith("best distilled (method=mgd, mask_ratio=0.65) − baseline: -5.00")
