"""python -m raykd.export: a plain state dict that torchvision's builder loads strictly, same predictions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torchvision.models import detection

from raykd.config import ModelConfig
from raykd.export import main
from raykd.models import build_detector

CATEGORIES = ["__background__", "circle", "square"]


def _run_dir(tmp_path, write_experiment, student: dict):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(write_experiment(student=student).read_text())
    torch.manual_seed(0)
    model = build_detector(ModelConfig(**student), len(CATEGORIES), 64)
    state = {k: (v + 0.1 * torch.rand_like(v) if "running_" in k else v) for k, v in model.state_dict().items()}
    if "head.classification_head.cls_logits.bias" in state:  # scores above the threshold: detections to compare
        state["head.classification_head.cls_logits.bias"] = torch.zeros_like(state["head.classification_head.cls_logits.bias"])
    model.load_state_dict(state)
    torch.save({"model": state, "categories": CATEGORIES, "metrics": {"epoch": 2, "bbox_mAP": 0.5}},
               run / "model_best.pt")
    return run, model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("student", [
    {"arch": "fcos", "backbone": "resnet50", "fpn_channels": 256, "norm": "frozen_bn", "trainable_layers": 3},
    {"arch": "faster_rcnn", "backbone": "resnet18", "fpn_channels": 32, "norm": "frozen_bn"},
])
def test_export_loads_strictly_into_torchvision_and_predicts_the_same(tmp_path, write_experiment, student):
    run, ours = _run_dir(tmp_path, write_experiment, student)
    assert main([str(run), "--out", str(tmp_path / "student.pth")]) == 0
    meta = json.loads((tmp_path / "student.json").read_text())
    assert meta["categories"] == CATEGORIES and meta["metrics"]["epoch"] == 2
    state = torch.load(tmp_path / "student.pth", weights_only=True)
    assert all(torch.is_tensor(v) for v in state.values())
    if meta["builder"]:  # the three lines of the README
        builder = getattr(detection, meta["builder"].rsplit(".", 1)[1])
        theirs = builder(weights=None, weights_backbone=None, num_classes=len(meta["categories"]), **meta["kwargs"])
    else:
        assert student["backbone"] != "resnet50"
        plain = ModelConfig(**{**student, "norm": "bn"})
        theirs = build_detector(plain, len(meta["categories"]), 64)
    theirs.load_state_dict(state)  # strict
    theirs.eval()
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    with torch.no_grad():
        expected, got = ours(images), theirs(images)
    assert sum(len(p["boxes"]) for p in expected) > 0
    for e, g in zip(expected, got):
        # FrozenBatchNorm2d folds its statistics in another order than BatchNorm2d: float rounding only
        torch.testing.assert_close(g["boxes"], e["boxes"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(g["scores"], e["scores"], rtol=1e-4, atol=1e-4)
        assert torch.equal(g["labels"], e["labels"])


def test_export_refuses_a_folder_without_a_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "raykd.export", str(tmp_path), "--out", str(tmp_path / "s.pth")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "config.yaml" in proc.stderr and not (tmp_path / "s.pth").exists()
