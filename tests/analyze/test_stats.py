"""raykd.analyze statistics and fidelity rules against hand computations on fixed tables."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from raykd.analyze import stats
from raykd.analyze.scores import score_trials
from raykd.errors import UserError

A = [0.30, 0.32, 0.35, 0.31]
B = [0.28, 0.27, 0.30]


# --- means, intervals, differences ------------------------------------------------------


def test_mean_ci_is_the_student_t_interval():
    ci = stats.mean_ci(A)
    # by hand: mean 0.32, s² = (0.0004 + 0 + 0.0009 + 0.0001) / 3, t(0.975, 3) = 3.182446...
    s = math.sqrt(0.0014 / 3)
    half = 3.182446305284263 * s / 2
    assert (ci.n, ci.mean, ci.std) == (4, pytest.approx(0.32), pytest.approx(s))
    assert (ci.low, ci.high) == (pytest.approx(0.32 - half), pytest.approx(0.32 + half))
    # and scipy's own interval of the mean, computed independently
    low, high = sps.t.interval(0.95, 3, loc=np.mean(A), scale=sps.sem(A))
    assert (ci.low, ci.high) == (pytest.approx(low), pytest.approx(high))
    assert ci.half == pytest.approx(half)
    ninety = stats.mean_ci(A, confidence=0.90)
    assert ninety.high - ninety.mean == pytest.approx(sps.t.ppf(0.95, 3) * s / 2)


def test_mean_ci_drops_nan_and_is_undefined_below_two_values():
    assert stats.mean_ci([0.2, float("nan"), 0.4]).mean == pytest.approx(0.3)
    one = stats.mean_ci([0.25])
    assert one.n == 1 and one.mean == 0.25 and math.isnan(one.low) and math.isnan(one.std)
    none = stats.mean_ci([])
    assert none.n == 0 and math.isnan(none.mean)


def test_welch_difference_matches_hand_and_scipy():
    d = stats.welch_diff(A, B)
    va, vb = np.var(A, ddof=1) / 4, np.var(B, ddof=1) / 3
    dof = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    half = sps.t.ppf(0.975, dof) * math.sqrt(va + vb)
    assert d.diff == pytest.approx(0.32 - 0.85 / 3)
    assert d.dof == pytest.approx(dof)
    assert (d.low, d.high) == (pytest.approx(d.diff - half), pytest.approx(d.diff + half))
    ref = sps.ttest_ind(A, B, equal_var=False).confidence_interval(0.95)
    assert (d.low, d.high) == (pytest.approx(ref.low), pytest.approx(ref.high))


def test_welch_difference_edge_cases():
    single = stats.welch_diff([0.5], B)
    assert single.diff == pytest.approx(0.5 - np.mean(B)) and math.isnan(single.low)
    flat = stats.welch_diff([0.3, 0.3], [0.1, 0.1])
    assert (flat.diff, flat.low, flat.high) == (pytest.approx(0.2), pytest.approx(0.2), pytest.approx(0.2))
    assert math.isnan(stats.welch_diff([], B).diff)


def test_group_stats_per_group():
    frame = pd.DataFrame({"m": ["x"] * 4 + ["y"] * 3 + [None], "v": A + B + [9.0]})
    table = stats.group_stats(frame, "m", "v").set_index("m")
    assert list(table.index) == ["x", "y"]  # the null group is left out
    assert table.loc["x", "n"] == 4 and table.loc["x", "mean"] == pytest.approx(0.32)
    assert table.loc["y", "ci_high"] == pytest.approx(stats.mean_ci(B).high)


# --- rung alignment and fidelity ----------------------------------------------------------

# Four trials of 4 epochs: t1 completed, t2 stopped by ASHA after epoch 2, t3 failed during
# epoch 4, t4 still running at epoch 1. bbox_mAP per epoch below; AP_S = bbox_mAP / 2.
CURVES = {"t1": [0.10, 0.20, 0.30, 0.28], "t2": [0.12, 0.18], "t3": [0.05, 0.15, 0.25], "t4": [0.11]}
STATUS = {"t1": ("TERMINATED", "completed", None), "t2": ("TERMINATED", "early_stopped", None),
          "t3": ("ERROR", "error", "RuntimeError: CUDA out of memory"), "t4": ("RUNNING", "running", None)}


def epochs_table(curves=CURVES):
    rows = []
    for trial, curve in curves.items():
        for epoch, value in enumerate(curve, start=1):
            rows.append({"experiment": "e", "trial_id": trial, "epoch": epoch, "bbox_mAP": value,
                         "AP_S": value / 2, "time_total_s": 100.0 * epoch})
    return pd.DataFrame(rows)


def trials_table(curves=CURVES):
    rows = []
    for trial, curve in curves.items():
        status, reason, error = STATUS.get(trial, STATUS["t1"])
        best = int(np.nanargmax(curve))
        rows.append({"experiment": "e", "trial_id": trial, "status": status, "stop_reason": reason, "error": error,
                     "epochs_run": len(curve), "epochs_total": 4, "num_workers": 2, "wall_s": 100.0 * len(curve),
                     "device_hours": 200.0 * len(curve) / 3600, "best_epoch": best + 1, "seed": 0,
                     **{f"final_{m}": None for m in ("AP50", "AP75", "AP_M", "AP_L")},
                     **{f"best_{m}": None for m in ("AP50", "AP75", "AP_M", "AP_L")},
                     "final_bbox_mAP": curve[-1], "final_AP_S": curve[-1] / 2,
                     "best_bbox_mAP": curve[best], "best_AP_S": curve[best] / 2})
    return pd.DataFrame(rows)


def test_common_epoch_is_the_last_epoch_every_trial_reached():
    epochs = epochs_table()
    last = stats.last_scored_epoch(epochs, "bbox_mAP", ["experiment", "trial_id"])
    assert last.to_dict() == {("e", "t1"): 4, ("e", "t2"): 2, ("e", "t3"): 3, ("e", "t4"): 1}
    assert stats.common_epoch([4, 2, 3]) == 2 and stats.common_epoch([]) is None
    at2 = stats.rows_at_epoch(epochs, 2, "bbox_mAP")
    assert dict(zip(at2["trial_id"], at2["bbox_mAP"])) == {"t1": 0.20, "t2": 0.18, "t3": 0.15}


def test_best_and_last_rows_per_trial():
    epochs = epochs_table({"t1": [0.1, 0.3, 0.3, 0.2], "t2": [0.2, 0.1]})
    best = stats.rows_at_best(epochs, "bbox_mAP", ["experiment", "trial_id"])
    assert dict(zip(best["trial_id"], best["epoch"])) == {"t1": 2, "t2": 1}  # the earliest of equal bests
    last = stats.rows_at_last(epochs, ["experiment", "trial_id"])
    assert dict(zip(last["trial_id"], last["epoch"])) == {"t1": 4, "t2": 2}


def test_common_epoch_fidelity_compares_every_live_trial_at_the_same_epoch():
    scores = score_trials(trials_table(), epochs_table(), "bbox_mAP", "auto", min_trials=2)
    assert (scores.fidelity, scores.epoch) == ("common-epoch", 2)  # over t1 (4 epochs) and t2 (2): not the failed t3
    values = dict(zip(scores.frame["trial_id"], scores.frame["value"]))
    assert values == {"t1": pytest.approx(0.20), "t2": pytest.approx(0.18)}
    assert scores.frame.set_index("trial_id").loc["t1", "AP_S"] == pytest.approx(0.10)  # AP_S of the same epoch
    assert scores.frame.set_index("trial_id").loc["t1", "cost_h"] == pytest.approx(200 * 2 / 3600)
    reasons = dict(zip(scores.excluded["trial_id"], scores.excluded["reason"]))
    assert reasons == {"t3": "failed after 3 epoch(s)", "t4": "still running, not yet at epoch 2"}
    assert scores.excluded.set_index("trial_id").loc["t3", "error"] == "RuntimeError: CUDA out of memory"
    assert "epoch 2" in scores.note and "2 finished" in scores.note


def test_completed_fidelity_compares_full_schedules_at_their_final_epoch():
    scores = score_trials(trials_table(), epochs_table(), "bbox_mAP", "completed")
    assert scores.fidelity == "completed" and scores.note == "completed trials only, at their final epoch"
    assert dict(zip(scores.frame["trial_id"], scores.frame["value"])) == {"t1": pytest.approx(0.28)}
    reasons = dict(zip(scores.excluded["trial_id"], scores.excluded["reason"]))
    assert reasons["t2"] == "stopped early by the scheduler after epoch 2 of 4"
    assert reasons["t3"].startswith("failed") and reasons["t4"] == "still running (epoch 1)"


def test_auto_falls_back_to_completed_when_too_few_trials_have_a_value_at_the_epoch():
    # t5 and t6 ran their schedule but were not evaluated at epoch 2: only t1 and t2 share it
    curves = {"t1": [0.10, 0.20, 0.30, 0.28], "t2": [0.12, 0.18], "t5": [0.1, np.nan, 0.2, 0.25],
              "t6": [0.1, np.nan, 0.2, 0.22]}
    epochs = epochs_table(curves)
    assert stats.common_epoch(stats.last_scored_epoch(epochs, "bbox_mAP", ["experiment", "trial_id"])) == 2
    scores = score_trials(trials_table(curves), epochs, "bbox_mAP")
    assert scores.fidelity == "completed" and "would leave 2 trial(s), fewer than 3" in scores.note
    assert dict(zip(scores.frame["trial_id"], scores.frame["value"])) == {
        "t1": pytest.approx(0.28), "t5": pytest.approx(0.25), "t6": pytest.approx(0.22)}
    assert score_trials(trials_table(), epochs_table(), "bbox_mAP").fidelity == "common-epoch"  # 2 at E beat 1


def test_explicit_common_epoch_keeps_even_few_trials():
    scores = score_trials(trials_table(), epochs_table(), "bbox_mAP", "common-epoch")
    assert scores.fidelity == "common-epoch" and len(scores.frame) == 2


def test_best_fidelity_takes_each_trials_best_epoch():
    scores = score_trials(trials_table(), epochs_table(), "bbox_mAP", "best")
    values = dict(zip(scores.frame["trial_id"], zip(scores.frame["value"], scores.frame["epoch"])))
    assert values == {"t1": (pytest.approx(0.30), 3), "t2": (pytest.approx(0.18), 2),
                      "t4": (pytest.approx(0.11), 1)}
    assert list(scores.excluded["trial_id"]) == ["t3"] and "optimistic" in scores.note


def test_without_epochs_table_completed_uses_the_final_columns():
    scores = score_trials(trials_table(), None, "AP_S")
    assert scores.fidelity == "completed" and "no epochs table" in scores.note
    assert dict(zip(scores.frame["trial_id"], scores.frame["value"])) == {"t1": pytest.approx(0.14)}
    assert scores.frame["cost_h"].iloc[0] == pytest.approx(400 * 2 / 3600)
    best = score_trials(trials_table(), None, "bbox_mAP", "best")
    assert dict(zip(best.frame["trial_id"], best.frame["value"]))["t1"] == pytest.approx(0.30)
    with pytest.raises(UserError, match="needs the epochs table"):
        score_trials(trials_table(), None, "bbox_mAP", "common-epoch")


def test_paired_difference_equals_scipy_ttest_rel():
    a, b = [0.36, 0.35, 0.39, 0.33], [0.30, 0.31, 0.35, 0.30]
    d = stats.paired_diff(a, b)
    ref = sps.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert (d.paired, d.n, d.dof, d.test) == (True, 4, 3.0, "paired")
    assert (d.diff, d.low, d.high) == (pytest.approx(np.mean(np.subtract(a, b))), pytest.approx(ci.low),
                                        pytest.approx(ci.high))
    # paired is narrower than Welch here: the seeds share most of their variance
    assert d.high - d.low < stats.welch_diff(a, b).high - stats.welch_diff(a, b).low


def test_compare_pairs_by_seed_not_by_position():
    a, seeds_a = pd.Series([0.39, 0.36, 0.35]), pd.Series([2, 0, 1])
    b, seeds_b = pd.Series([0.30, 0.31, 0.35]), pd.Series([0, 1, 2])
    d = stats.compare(a, b, seeds_a, seeds_b)
    ci = sps.ttest_rel([0.36, 0.35, 0.39], [0.30, 0.31, 0.35]).confidence_interval(0.95)
    assert d.paired and d.n == 3 and (d.low, d.high) == (pytest.approx(ci.low), pytest.approx(ci.high))


@pytest.mark.parametrize("seeds_a, seeds_b", [
    ([0, 1, 2], [0, 1, 3]),  # different seed sets
    ([0, 0, 1], [0, 1, 1]),  # a seed twice: no one-to-one pairing
    ([0, 1, None], [0, 1, 2]),  # an unknown seed
])
def test_compare_falls_back_to_welch(seeds_a, seeds_b):
    a, b = pd.Series([0.36, 0.35, 0.37]), pd.Series([0.30, 0.31, 0.29])
    d = stats.compare(a, b, pd.Series(seeds_a, dtype=object), pd.Series(seeds_b, dtype=object))
    ref = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert not d.paired and d.test == "welch" and (d.low, d.high) == (pytest.approx(ref.low), pytest.approx(ref.high))
