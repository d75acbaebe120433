"""The pure-PyTorch loop: metrics per epoch, exact resume, distillation plug-in, NaN stops, CLI."""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import subprocess
import sys

import pytest
import torch

from raykd.config import load_experiment
from raykd.train import loop as loop_module
from raykd.train.checkpoint import load_state
from raykd.train.loop import NonFiniteLoss, fit


def _run(cfg, **kwargs):
    states, history = [], []

    def keep(record, make_state):
        history.append(record.as_report())
        states.append(copy.deepcopy(make_state()))  # the state holds live tensors

    fit(cfg, on_epoch_end=keep, progress=False, log=lambda line: None, **kwargs)
    return history, states


def test_metrics_every_epoch(write_experiment):
    cfg = load_experiment(write_experiment())
    history, states = _run(cfg)
    assert [m["epoch"] for m in history] == [1, 2]
    for m in history:
        for key in ("bbox_mAP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"):
            assert -1.0 <= m[key] <= 1.0
        assert m["loss_total"] == pytest.approx(m["loss_det"]) and m["loss_kd"] == 0.0
        assert {"loss_classification", "loss_bbox_regression", "loss_bbox_ctrness"} <= m.keys()
        assert m["step_time"] > 0 and m["epochs_total"] == 2
    assert states[-1]["epoch"] == 2 and len(states[-1]["history"]) == 2


def test_resume_is_exact(write_experiment):
    cfg = load_experiment(write_experiment(train={"epochs": 3, "schedule": "step", "milestones": [2]}))
    straight, states = _run(cfg)
    resumed, resumed_states = _run(cfg, resume_state=states[0])
    assert [m["epoch"] for m in resumed] == [2, 3]
    for name, value in states[-1]["model"].items():
        torch.testing.assert_close(resumed_states[-1]["model"][name], value, rtol=0, atol=0, msg=name)
    assert resumed[-1]["loss_total"] == straight[-1]["loss_total"]
    assert resumed[-1]["lr"] == straight[-1]["lr"]


def test_distillation_terms_are_logged_per_level(write_experiment, tiny_teacher):
    from raykd.train.teacher import ensure_teacher

    cfg = load_experiment(write_experiment(teacher=tiny_teacher, distill={"method": "mgd", "alpha": 1e-6},
                                           train={"epochs": 1}))
    checkpoint = ensure_teacher(cfg, log=lambda line: None, progress=False)
    assert ensure_teacher(cfg, log=lambda line: None) == checkpoint  # cached, not trained again
    history, _ = _run(cfg, teacher_checkpoint=checkpoint)
    m = history[0]
    assert m["loss_kd"] > 0
    levels = [m[f"loss_mgd_{lv}"] for lv in ("0", "1", "2", "p6", "p7")]
    assert m["loss_mgd"] == pytest.approx(sum(levels))
    assert m["loss_total"] == pytest.approx(m["loss_det"] + m["loss_kd"])


def test_non_finite_loss_stops_with_the_reason(write_experiment, monkeypatch):
    cfg = load_experiment(write_experiment())
    real_forward = loop_module.DistillStep.forward
    calls = {"n": 0}

    def poisoned(self, images, targets):
        total, losses = real_forward(self, images, targets)
        calls["n"] += 1
        if calls["n"] == 2:
            losses.det["classification"] = total * math.nan
            total = total * math.nan
        return total, losses

    monkeypatch.setattr(loop_module.DistillStep, "forward", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at epoch 1 \(step 1: loss_classification=nan") as raised:
        _run(cfg)
    # Ray pickles a trial's exception to the driver: it must come back whole.
    again = pickle.loads(pickle.dumps(raised.value))
    assert type(again) is NonFiniteLoss and str(again) == str(raised.value) and again.epoch == 1


def test_train_cli_writes_checkpoints_and_resumes(write_experiment, tmp_path):
    path = write_experiment(train={"epochs": 1})
    cmd = [sys.executable, "-m", "raykd.train", str(path), "--no-progress"]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "run"
    assert (run / "checkpoints/state.pt").is_file() and (run / "model_final.pt").is_file()
    assert "epoch 1/1" in first.stdout and "mAP" in first.stdout
    quiet = [sys.executable, "-m", "raykd.train", str(path), "-q"]  # no progress lines, no bar
    second = subprocess.run(quiet + ["--resume", "--set", "train.epochs=2"], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert "epoch 2/2" not in second.stdout and "\r" not in second.stderr
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    # 64 px images have no large objects: COCOeval's -1 is written as null, as the tables store it
    assert [m["AP_L"] for m in lines] == [None, None] and all(m["bbox_mAP"] >= 0 for m in lines)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_train_cli_resumes_across_worker_counts(write_experiment, tmp_path):
    """A Ray Train run (2 DDP workers) resumes with --resume, and a one-worker run resumes it."""
    path = write_experiment(train={"epochs": 1})
    cmd = [sys.executable, "-m", "raykd.train", str(path), "--no-progress"]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    run = tmp_path / "run"

    def epochs_after(*args: str) -> list[int]:
        proc = subprocess.run(cmd + list(args), capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert epochs_after("--workers", "2") == [1]
    assert epochs_after("--workers", "2", "--resume", "--set", "train.epochs=2") == [1, 2]
    assert epochs_after("--resume", "--set", "train.epochs=3") == [1, 2, 3]
    state = load_state(run / "checkpoints" / "state.pt")
    assert [m["epoch"] for m in state["history"]] == [1, 2, 3]
    assert [m["num_workers"] for m in state["history"]] == [2, 2, 1]


def test_missing_teacher_checkpoint_is_a_clear_error(write_experiment, tmp_path):
    path = write_experiment(teacher={"arch": "fcos", "backbone": "resnet18", "fpn_channels": 64,
                                     "checkpoint": str(tmp_path / "nope.pt")},
                            distill={"method": "mgd"})
    proc = subprocess.run([sys.executable, "-m", "raykd.train", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "teacher.checkpoint" in proc.stderr and "nope.pt" in proc.stderr
