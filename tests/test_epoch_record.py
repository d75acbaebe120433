"""The typed epoch record and the loss-term structure: built once by
the loop, flattened once for reports, read back by the results writer and the progress lines."""

from __future__ import annotations

import pytest
import torch

from raykd.distill import DistillConfig, build_distiller, flat_terms, total_loss
from raykd.epoch_record import EpochLosses, EpochRecord, LossSummary
from raykd.metric_names import FIXED_LOSSES


def test_losses_sum_per_level_and_per_term():
    losses = EpochLosses()
    losses.add({"classification": 1.0, "bbox_regression": 0.5}, {"0": {"mgd": 0.2}, "p6": {"mgd": 0.4}})
    losses.add({"classification": 3.0, "bbox_regression": 0.5}, {"0": {"mgd": 0.4}, "p6": {"mgd": 0.2}})
    summary = losses.summary()
    assert summary.det == pytest.approx(2.5) and summary.kd == pytest.approx(0.6)
    assert summary.total == pytest.approx(3.1)
    assert summary.terms == pytest.approx({"classification": 2.0, "bbox_regression": 0.5, "mgd_0": 0.3,
                                           "mgd_p6": 0.3, "mgd": 0.6})


def test_a_report_reads_back_as_the_record_and_ignores_tune_keys():
    record = EpochRecord(epoch=2, epochs_total=3,
                         losses=LossSummary(total=1.5, det=1.0, kd=0.5, terms={"fgd_fg_0": 0.5, "fgd_fg": 0.5}),
                         scores={"bbox_mAP": 0.25, "AP50": 0.5, "AP_L": -1.0}, lr=0.01, step_time=0.2,
                         epoch_time=9.0, time_total_s=18.0, num_workers=2, device="cpu", timestamp=1.0)
    report = record.as_report()
    assert set(FIXED_LOSSES) <= set(report) and report["loss_fgd_fg_0"] == 0.5 and report["bbox_mAP"] == 0.25
    assert EpochRecord.from_report({**report, "trial_id": "x", "training_iteration": 7, "done": False}) == record
    with pytest.raises(KeyError):
        EpochRecord.from_report({"loss_total": 1.0})


def test_a_report_without_values_reads_as_none_not_zero():
    record = EpochRecord.from_report({"epoch": 1})
    assert record.lr is None and record.losses.total is None and record.scores == {}
    assert record.score("segm_mAP") is None


def test_distiller_returns_terms_by_level_and_term():
    levels = ["0", "1"]
    distiller = build_distiller(DistillConfig(method="fgd"), 8, 8, levels, num_classes=3)
    feats = {lv: torch.randn(2, 8, 8, 8) for lv in levels}
    boxes = [torch.tensor([[4.0, 4.0, 30.0, 30.0]]), torch.zeros(0, 4)]
    terms = distiller(feats, {k: v + 1 for k, v in feats.items()}, None, None, boxes, [(64, 64), (64, 48)])
    assert list(terms) == levels
    assert all(list(level_terms) == ["fgd_fg", "fgd_bg", "fgd_at", "fgd_gl"] for level_terms in terms.values())
    flat = flat_terms(terms)
    assert list(flat)[:2] == ["fgd_fg_0", "fgd_bg_0"] and len(flat) == 8
    torch.testing.assert_close(total_loss(terms), sum(flat.values()))


def test_metrics_jsonl_writes_cocos_minus_one_as_null():
    """``metrics.jsonl`` kept pycocotools' -1 (no objects of that size) where the
    tables store null; NaN (not JSON) too."""
    import json

    from raykd.epoch_record import metrics_lines

    record = EpochRecord(epoch=1, epochs_total=2, losses=LossSummary(total=1.0, det=1.0, kd=0.0),
                         scores={"bbox_mAP": 0.25, "AP_S": -1.0, "AP_M": 0.0, "AP_L": float("nan")}, lr=-1.0,
                         step_time=0.1, epoch_time=1.0, time_total_s=1.0)
    text = metrics_lines([record.as_report(), record.as_report()])
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 2 and text.endswith("\n") and "NaN" not in text
    assert (lines[0]["bbox_mAP"], lines[0]["AP_S"], lines[0]["AP_M"], lines[0]["AP_L"]) == (0.25, None, 0.0, None)
    assert lines[0]["lr"] == -1.0 and lines[0]["epoch"] == 1  # only COCO metrics are touched

