"""model_best.pt beside model_final.pt; a teacher trained for distillation is its best epoch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from raykd.config import load_experiment
from raykd.train.teacher import BestModel, ensure_teacher


def test_best_model_keeps_the_best_epoch_and_the_last(tmp_path):
    best = BestModel(tmp_path)
    for epoch, ap in enumerate([0.1, 0.3, 0.2], start=1):
        state = {"model": {"w": torch.tensor([float(epoch)])}, "categories": ["__background__", "a"]}
        best.update({"epoch": epoch, "epochs_total": 3, "bbox_mAP": ap}, lambda state=state: state)
    kept = torch.load(tmp_path / "model_best.pt", weights_only=True)
    final = torch.load(tmp_path / "model_final.pt", weights_only=True)
    assert kept["metrics"]["epoch"] == 2 and kept["model"]["w"].item() == 2.0
    assert final["metrics"]["epoch"] == 3 and final["model"]["w"].item() == 3.0
    assert kept["categories"] == ["__background__", "a"]


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", [None, "teachers/mine.pt"])
def test_teacher_trained_for_distillation_is_its_best_epoch(write_experiment, tiny_teacher, tmp_path, checkpoint):
    tiny_teacher["train"]["epochs"] = 3
    if checkpoint:  # a configured teacher.checkpoint that is missing: trained into it
        tiny_teacher["checkpoint"] = str(tmp_path / checkpoint)
    cfg = load_experiment(write_experiment(teacher=tiny_teacher, distill={"method": "mgd"}))
    path = ensure_teacher(cfg, log=lambda line: None, progress=False)
    history = [json.loads(line) for line in (Path(path).parent / "metrics.jsonl").read_text().splitlines()]
    best_epoch = max(history, key=lambda m: m["bbox_mAP"])["epoch"]
    assert path == (str(tmp_path / checkpoint) if checkpoint else str(Path(path).parent / "model_best.pt"))
    assert torch.load(path, weights_only=True)["metrics"]["epoch"] == best_epoch
    assert torch.load(Path(path).parent / "model_final.pt", weights_only=True)["metrics"]["epoch"] == 3


def test_levels_no_model_taps_are_refused_before_training(write_experiment, tmp_path):
    (tmp_path / "teacher.pt").write_bytes(b"")
    path = write_experiment(teacher={"arch": "fcos", "backbone": "resnet18", "fpn_channels": 64,
                                     "checkpoint": str(tmp_path / "teacher.pt")},
                            distill={"method": "mgd", "levels": ["3"]})
    proc = subprocess.run([sys.executable, "-m", "raykd.train", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "distill.levels" in proc.stderr and "'p6' (stride 64)" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_train_run_keeps_the_best_epoch_too(tiny_data, experiment_dict, tmp_path):
    """--workers 2 writes model_best.pt: on a val set without objects every epoch scores -1,
    so the best is the first (ties keep the earlier epoch), not the last."""
    import os

    from raykd.train.checkpoint import load_state

    val = json.loads((tiny_data / "annotations" / "val.json").read_text())
    (tmp_path / "val_empty.json").write_text(json.dumps({**val, "annotations": []}))
    exp = experiment_dict(train={"epochs": 2, "schedule": "constant"})
    exp["data"]["val"]["annotations"] = str(tmp_path / "val_empty.json")
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "raykd.train", str(path), "--no-progress", "--workers", "2"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    best = torch.load(run / "model_best.pt", weights_only=True)
    final = torch.load(run / "model_final.pt", weights_only=True)
    assert best["metrics"]["epoch"] == 1 and best["metrics"]["bbox_mAP"] == -1.0
    assert final["metrics"]["epoch"] == 2 and best["categories"] == final["categories"]
    states = {load_state(p)["epoch"]: load_state(p) for p in run.glob("ray/*/checkpoint_*/state.pt")}
    assert sorted(states) == [1, 2]
    for name, value in states[1]["model"].items():
        torch.testing.assert_close(best["model"][name], value, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(best["model"][k], final["model"][k]) for k in final["model"])


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_a_search_teacher_is_trained_on_ray_train_workers(ray_local, write_experiment, tiny_teacher, tmp_path):
    """As a search trains it (raykd/search/__main__.py): the same trainer as a trial's, its best epoch kept."""
    import functools

    from raykd.train.teacher import needs_training
    from raykd.train.worker import train_through_ray

    tiny_teacher["train"]["epochs"] = 2
    cfg = load_experiment(write_experiment(teacher=tiny_teacher, distill={"method": "mgd"}))
    assert needs_training(cfg)
    lines: list[str] = []
    path = ensure_teacher(cfg, log=lines.append, trainer=functools.partial(
        train_through_ray, workers=1, cpus_per_worker=1, gpus_per_worker=0))
    assert not needs_training(cfg)
    assert any("training through Ray Train: 1 worker(s) × 1 CPU, 0 GPU" in line for line in lines)
    # the workers' epoch lines reach the driver's log, each once, in order
    assert [line.split()[:3] for line in lines if line.startswith("teacher: epoch")] == \
        [["teacher:", "epoch", "1/2"], ["teacher:", "epoch", "2/2"]]
    history = [json.loads(line) for line in (Path(path).parent / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == [1, 2]
    assert (Path(path).parent / "ray" / "teacher").is_dir()  # Ray Train's run folder
    best_epoch = max(history, key=lambda m: m["bbox_mAP"])["epoch"]
    assert torch.load(path, weights_only=True)["metrics"]["epoch"] == best_epoch
    assert torch.load(Path(path).parent / "model_final.pt", weights_only=True)["metrics"]["epoch"] == 2
