"""Multiple-comparison corrections against statsmodels, quantile bins and effect curves on crafted tables."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from raykd.analyze import tables
from raykd.analyze.correction import adjust, correct, interval_confidence, resolve
from raykd.analyze.curves import BANDWIDTH, effect_curve
from raykd.analyze.factors import describe, level_frame
from raykd.results import ParamSpec

P = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216]


@pytest.mark.parametrize("ours, theirs", [("holm", "holm"), ("bh", "fdr_bh")])
def test_adjusted_p_values_equal_statsmodels_multipletests(ours, theirs):
    rng = np.random.default_rng(3)
    for p in (P, list(rng.uniform(0, 0.2, 9)), [0.5], [0.01, 0.01, 0.02]):
        assert adjust(p, ours) == pytest.approx(multipletests(p, alpha=0.05, method=theirs)[1])
    with_nan = [0.01, np.nan, 0.04]  # an undefined comparison is not part of the family
    adjusted = adjust(with_nan, ours)
    assert np.isnan(adjusted[1]) and adjusted[[0, 2]] == pytest.approx(multipletests([0.01, 0.04], method=theirs)[1])


def test_interval_levels_bonferroni_and_fcr():
    assert interval_confidence(P, "holm") == pytest.approx(1 - 0.05 / 10)
    rejected = int(multipletests(P, alpha=0.05, method="fdr_bh")[0].sum())
    assert interval_confidence(P, "bh") == pytest.approx(1 - rejected * 0.05 / 10)
    assert interval_confidence(P, "none") == 0.95 and interval_confidence([0.2], "holm") == 0.95
    assert (resolve("auto", 1), resolve("auto", 3), resolve("bh", 3)) == ("none", "holm", "bh")


def _grid():
    rows = [("none", None, s, v) for s, v in enumerate([0.30, 0.31, 0.29])]
    for a, shift in ((0.5, 0.05), (0.6, 0.01), (0.7, 0.004)):
        rows += [("mgd", a, s, v + shift + 0.002 * s * (1 + a * 10 % 3) - 0.003 * (s == 1))
                 for s, v in enumerate([0.30, 0.31, 0.29])]
    frame = pd.DataFrame(rows, columns=["distill.method", "distill.mask_ratio", "seed", "value"])
    for m in tables.SIZE_METRICS:
        frame[m] = np.nan
    frame["cost_h"] = 0.1
    return frame


def test_leaderboard_intervals_widen_to_the_corrected_level():
    frame = _grid()
    configs = tables.group_configs(frame, ["distill.method", "distill.mask_ratio"])
    raw = tables.leaderboard(frame, configs, correction="none")
    holm = tables.leaderboard(frame, configs)  # auto: three comparisons with the baseline
    assert raw.attrs["correction"] == "none" and holm.attrs["correction"] == "holm"
    rows = holm[holm["diff_p"].notna()]
    assert len(rows) == 3
    assert rows["diff_p_adj"].to_numpy() == pytest.approx(multipletests(rows["diff_p"], method="holm")[1])
    for _, r in rows.iterrows():
        part = frame[(frame["distill.method"] == "mgd") & (frame["distill.mask_ratio"].astype(str) == r["distill.mask_ratio"])]
        d = part["value"].to_numpy() - frame[frame["distill.method"] == "none"]["value"].to_numpy()
        ref = sps.ttest_1samp(d, 0)
        assert r["diff_p"] == pytest.approx(ref.pvalue)
        ci = ref.confidence_interval(1 - 0.05 / 3)  # Bonferroni over three comparisons
        assert (r["diff_low_adj"], r["diff_high_adj"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    bh, method = correct(raw, "bh")
    assert method == "bh" and bh["diff_p_adj"].dropna().to_numpy() == pytest.approx(
        multipletests(raw["diff_p"].dropna(), method="fdr_bh")[1])


def test_numeric_values_seen_once_are_binned_by_quantile_and_choices_stay_levels():
    values = [0.412, 0.5134, 0.6043, 0.45, 0.66, 0.7, 0.52, 0.58, 0.48, 0.61, 0.69, 0.43]
    frame = pd.DataFrame({"distill.mask_ratio": values, "distill.alpha": [1e-6, 2e-6] * 6,
                          "train.lr": [1e-3] * 11 + [2e-3], "value": np.arange(12) / 100})
    specs = {"distill.mask_ratio": ParamSpec("distill.mask_ratio", "uniform", low=0.4, high=0.7),
             "distill.alpha": ParamSpec("distill.alpha", "loguniform", low=1e-7, high=1e-5),
             "train.lr": ParamSpec("train.lr", "choice", choices=(1e-3, 2e-3))}
    f = {x.name: x for x in describe(frame, list(specs), specs)}
    ratio = f["distill.mask_ratio"]
    assert ratio.kind == "bins" and len(ratio.levels) == 4
    assert ratio.edges == pytest.approx(np.quantile(values, [0, 0.25, 0.5, 0.75, 1]))
    assert level_frame(frame, [ratio])["distill.mask_ratio"].value_counts().tolist() == [3, 3, 3, 3]
    assert f["distill.alpha"].kind == "levels" and f["distill.alpha"].levels == ("1e-06", "2e-06")  # n = 6 each
    assert f["train.lr"].kind == "levels" and len(f["train.lr"].levels) == 2  # a choice: categorical
    two = {x.name: x for x in describe(frame, ["distill.mask_ratio"], specs, bins=2)}
    assert two["distill.mask_ratio"].edges == pytest.approx(np.quantile(values, [0, 0.5, 1]))


def test_effect_curve_is_the_kernel_weighted_line_with_its_band():
    rng = np.random.default_rng(0)
    x = np.linspace(0.3, 0.9, 15)
    exact = effect_curve(x, 2 * x + 1, points=7)
    assert exact.fit == pytest.approx(2 * exact.x + 1) and exact.high - exact.low == pytest.approx(0, abs=1e-9)
    y = 2 * x + 1 + rng.normal(0, 0.05, len(x))
    curve = effect_curve(x, y, points=5)
    h = BANDWIDTH * 0.6
    for x0, fit in zip(curve.x, curve.fit):
        w = np.exp(-0.5 * ((x - x0) / h) ** 2)
        wls = sm.WLS(y, sm.add_constant(x - x0), weights=w).fit()
        assert fit == pytest.approx(wls.params[0])
    assert (curve.low < curve.fit).all() and (curve.fit < curve.high).all()
    assert effect_curve(x[:4], y[:4]) is None
