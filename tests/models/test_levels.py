"""Heterogeneous pairs: FPN levels paired by stride, and distill.levels checked against both models."""

from __future__ import annotations

import pytest
import torch

from raykd.config import ModelConfig
from raykd.distill import build_distiller, flat_terms
from raykd.distill.config import DistillConfig
from raykd.errors import UserError
from raykd.models import build_detector, forward_taps
from raykd.models.levels import distilled_levels, level_strides, paired_levels

RETINANET = ModelConfig(arch="retinanet", backbone="resnet18", fpn_channels=32)
FASTER = ModelConfig(arch="faster_rcnn", backbone="resnet34", fpn_channels=64)


def test_levels_pair_by_stride_not_by_key():
    assert level_strides(FASTER) == {"0": 4, "1": 8, "2": 16, "3": 32, "pool": 64}
    assert level_strides(RETINANET) == {"0": 8, "1": 16, "2": 32, "p6": 64, "p7": 128}
    assert paired_levels(RETINANET, FASTER) == {"0": "1", "1": "2", "2": "3", "p6": "pool"}  # P3-P6
    assert paired_levels(FASTER, RETINANET) == {"1": "0", "2": "1", "3": "2", "pool": "p6"}
    assert paired_levels(RETINANET, RETINANET) == {k: k for k in ("0", "1", "2", "p6", "p7")}


def test_distill_levels_checked_against_levels_both_models_tap():
    fcos = ModelConfig(arch="fcos", backbone="resnet18", fpn_channels=32)
    with pytest.raises(UserError) as err:
        distilled_levels(["3"], fcos, fcos)  # FCOS has no level '3': used to be a KeyError in every trial
    assert err.value.key == "distill.levels" and "'p6' (stride 64)" in str(err.value)
    with pytest.raises(UserError, match="p7"):
        distilled_levels(["p7"], RETINANET, FASTER)  # stride 128: the teacher has no such level
    assert distilled_levels(["p6", "0"], RETINANET, FASTER) == {"p6": "pool", "0": "1"}


def test_faster_rcnn_teacher_distils_a_retinanet_student_on_the_shared_strides():
    torch.manual_seed(0)
    student = build_detector(RETINANET, 3, 64).train()
    teacher = build_detector(FASTER, 3, 64)
    pairs = distilled_levels(None, RETINANET, FASTER)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 48)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])}] * 2
    taps = forward_taps(student, teacher, images, targets, with_logits=True, pairs=pairs)
    assert list(taps.student_feats) == list(taps.teacher_feats) == ["0", "1", "2", "p6"]
    with torch.no_grad():
        reference = teacher.backbone(student.transform(images)[0].tensors)
    for s_key, t_key in pairs.items():
        assert taps.student_feats[s_key].shape[-2:] == taps.teacher_feats[s_key].shape[-2:]
        torch.testing.assert_close(taps.teacher_feats[s_key], reference[t_key])
    assert taps.teacher_logits is None  # a two-stage teacher has no dense logits
    distiller = build_distiller(DistillConfig(method="mgd"), 32, 64, list(pairs), num_classes=3)
    terms = flat_terms(distiller(taps.student_feats, taps.teacher_feats, taps.student_logits, None, taps.boxes,
                      taps.image_sizes))
    assert sorted(terms) == sorted(f"mgd_{level}" for level in pairs)
    sum(terms.values()).backward()
    assert student.backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
