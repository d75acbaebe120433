"""Detector builders, taps (losses equal the model's own, shapes, no teacher gradient), inheriting."""

from __future__ import annotations

import pytest
import torch

from raykd.config import ModelConfig
from raykd.errors import UserError
from raykd.models import build_detector, forward_taps, inherit_neck_and_head, load_weights
from raykd.models.taps import split_levels


def _batch():
    images = [torch.rand(3, 64, 48), torch.rand(3, 50, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    return images, targets


@pytest.mark.parametrize("arch", ["fcos", "retinanet", "faster_rcnn"])
def test_tap_losses_equal_the_models_own(arch):
    torch.manual_seed(0)
    student = build_detector(ModelConfig(arch=arch, backbone="resnet18", fpn_channels=32), 4, 64).train()
    teacher = build_detector(ModelConfig(arch=arch, backbone="resnet34", fpn_channels=64), 4, 64)
    images, targets = _batch()
    torch.manual_seed(1)
    taps = forward_taps(student, teacher, images, targets, with_logits=True)
    torch.manual_seed(1)
    reference = student(images, targets)
    assert taps.losses.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(taps.losses[name], reference[name])
    levels = ["0", "1", "2", "3", "pool"] if arch == "faster_rcnn" else ["0", "1", "2", "p6", "p7"]
    assert list(taps.student_feats) == levels == list(taps.teacher_feats)
    assert taps.image_sizes == [(64, 48), (50, 64)]  # unpadded, per image (the batch tensor is 64×64)
    for level in levels:
        s, t = taps.student_feats[level], taps.teacher_feats[level]
        assert s.shape[:2] == (2, 32) and t.shape[:2] == (2, 64) and s.shape[2:] == t.shape[2:]
        assert not t.requires_grad and s.requires_grad
    assert not teacher.training  # the tap put the teacher in eval mode
    if arch == "faster_rcnn":
        assert taps.student_logits is None
    else:
        anchors = 9 if arch == "retinanet" else 1
        assert taps.student_logits["0"].shape == (2, anchors * 4, 8, 8)
        assert taps.teacher_logits["p7"].shape == (2, anchors * 4, 1, 1)


def test_split_levels_matches_torchvision_layout():
    feats = [torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 2, 2)]
    a, k = 2, 3
    flat = torch.arange(2 * (12 + 4) * a * k, dtype=torch.float32).reshape(2, (12 + 4) * a, k)
    levels = split_levels(flat, feats)
    assert levels[0].shape == (2, a * k, 3, 4) and levels[1].shape == (2, a * k, 2, 2)
    # level 0, image 1, position (h=2, w=1), anchor 1, class 2 -> flat index (2*4 + 1)*A + 1
    assert levels[0][1, 1 * k + 2, 2, 1] == flat[1, (2 * 4 + 1) * a + 1, 2]
    assert levels[1][0, 0 * k + 1, 1, 0] == flat[0, 12 * a + (1 * 2 + 0) * a + 0, 1]


def test_teacher_receives_no_gradient():
    student = build_detector(ModelConfig(arch="fcos", backbone="resnet18", fpn_channels=32), 3, 64).train()
    teacher = build_detector(ModelConfig(arch="fcos", backbone="resnet18", fpn_channels=32), 3, 64)
    images, targets = _batch()
    taps = forward_taps(student, teacher, images, targets, with_logits=True)
    loss = sum(taps.losses.values()) + sum(((s - t) ** 2).mean() for s, t in
                                           zip(taps.student_feats.values(), taps.teacher_feats.values()))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in student.parameters())


def test_inherit_copies_everything_but_the_backbone_body():
    teacher = build_detector(ModelConfig(arch="fcos", backbone="resnet34", fpn_channels=32), 3, 64)
    student = build_detector(ModelConfig(arch="fcos", backbone="resnet18", fpn_channels=32), 3, 64)
    copied = inherit_neck_and_head(student, teacher)
    s, t = student.state_dict(), teacher.state_dict()
    assert copied == sum(1 for k in t if not k.startswith("backbone.body."))
    assert torch.equal(s["head.classification_head.cls_logits.weight"], t["head.classification_head.cls_logits.weight"])
    assert torch.equal(s["backbone.fpn.layer_blocks.0.0.weight"], t["backbone.fpn.layer_blocks.0.0.weight"])
    assert not torch.equal(s["backbone.body.conv1.weight"], t["backbone.body.conv1.weight"])


def test_inherit_refuses_different_fpn_width():
    teacher = build_detector(ModelConfig(arch="fcos", backbone="resnet18", fpn_channels=64), 3, 64)
    student = build_detector(ModelConfig(arch="fcos", backbone="resnet18", fpn_channels=32), 3, 64)
    with pytest.raises(UserError, match="fpn_channels"):
        inherit_neck_and_head(student, teacher)


def test_load_weights_round_trip_and_clear_errors(tmp_path):
    cfg = ModelConfig(arch="retinanet", backbone="resnet18", fpn_channels=32)
    a, b = build_detector(cfg, 3, 64), build_detector(cfg, 3, 64)
    torch.save({"model": a.state_dict()}, tmp_path / "a.pt")
    load_weights(b, tmp_path / "a.pt")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_weights(b, tmp_path / "corrupt.pt")
    other = build_detector(ModelConfig(arch="retinanet", backbone="resnet18", fpn_channels=64), 3, 64)
    with pytest.raises(UserError, match="does not match"):
        load_weights(other, tmp_path / "a.pt")
    with pytest.raises(UserError, match="not found"):
        load_weights(b, tmp_path / "missing.pt")


def test_mobilenet_backbone_strides():
    model = build_detector(ModelConfig(arch="fcos", backbone="mobilenet_v3_large", fpn_channels=32), 3, 128).eval()
    feats = model.backbone(torch.rand(1, 3, 128, 128))
    assert [f.shape[-1] for f in feats.values()] == [16, 8, 4, 2, 1]
