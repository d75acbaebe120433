"""Experiment tracking: ``--log tensorboard,mlflow`` read back with TensorBoard's and MLflow's
own readers and compared with the Parquet tables; optuna-dashboard serving a search's journal;
each backend logging an epoch once however often it is reported (driver kills: tests/faults/)."""

from __future__ import annotations

import json
import pickle
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from raykd.errors import UserError
from raykd.results import load
from raykd.tracking import TrackingSetup, TrialInfo, epoch_scalars, parse_backends
from raykd.tracking.feed import TrackerFeed
from raykd.tracking.setup import for_search

REPO = Path(__file__).resolve().parents[1]
TRIAL = TrialInfo("t1", "trial_t1", {"distill.method": "mgd", "distill.alpha": 1e-7, "distill.pyramid_scales": [1, 2],
                                     "distill.fusion": None})


def _result(epoch: int, ap: float) -> dict:
    return {"epoch": epoch, "epochs_total": 3, "bbox_mAP": ap, "AP_S": -1.0, "AP50": 2 * ap, "loss_total": 3.0 - epoch,
            "loss_det": 2.0, "loss_kd_mgd_0": 0.25, "lr": 1e-3, "epoch_time": 1.5, "device": "cpu", "timestamp": 9.0}


# --- reading each backend back with its own reader ----------------------------------------------


def tensorboard_scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every value of ``tag`` in the event files of ``run``, duplicates kept."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(run), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    return [(s.step, s.value) for s in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def tensorboard_hparams(run: Path) -> dict:
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = ea.EventAccumulator(str(run))
    acc.Reload()
    content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in hparams.items()}


def mlflow_runs(uri: str, experiment: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=[experiment])
    finally:
        mlflow.set_tracking_uri(None)


def mlflow_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


# --- no Ray --------------------------------------------------------------------------------------


def test_parse_backends_and_refusals(tmp_path, monkeypatch):
    assert parse_backends("mlflow, tensorboard") == ("tensorboard", "mlflow")
    assert parse_backends(None) == ()
    for bad in ("tensorbord", "", "mlflow,wandb"):
        with pytest.raises(UserError, match="--log: unknown tracker"):
            parse_backends(bad)
    with pytest.raises(UserError, match="tensorboard writes local files"):
        TrackingSetup.from_args("tensorboard", None, folder=None, experiment="s")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UserError, match="--mlflow-uri: with a URI --storage"):
        TrackingSetup.from_args("mlflow", None, folder=None, experiment="s")
    with pytest.raises(UserError, match="--mlflow-uri without mlflow"):
        TrackingSetup.from_args("tensorboard", "sqlite:///x.db", folder=str(tmp_path), experiment="s")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    with pytest.raises(UserError, match=r"--log: mlflow is not installed: pip install 'raykd\[mlflow\]'"):
        TrackingSetup.from_args("tensorboard,mlflow", None, folder=str(tmp_path), experiment="s")


def test_mlflow_uri_from_flag_then_environment_then_search_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = TrackingSetup.from_args("mlflow", None, folder=str(tmp_path), experiment="s")
    assert default.mlflow_uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    assert TrackingSetup.from_args("mlflow", None, folder=str(tmp_path), experiment="s").mlflow_uri == \
        "sqlite:///from-env.db"
    assert TrackingSetup.from_args("mlflow", "sqlite:///flag.db", folder=str(tmp_path), experiment="s").mlflow_uri \
        == "sqlite:///flag.db"


def test_resume_keeps_the_trackers_a_search_started_with(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = str(tmp_path / "s")
    first = for_search("tensorboard", None, storage=str(tmp_path), root=root, name="s", resume=False)
    first.save()
    assert for_search(None, None, storage=str(tmp_path), root=root, name="s", resume=True) == first
    assert for_search("tensorboard", None, storage=str(tmp_path), root=root, name="s", resume=True) == first
    with pytest.raises(UserError, match="--log: this search logs to tensorboard since it started"):
        for_search("tensorboard,mlflow", None, storage=str(tmp_path), root=root, name="s", resume=True)


def test_epoch_scalars_leave_out_missing_metrics_and_non_numbers():
    scalars = epoch_scalars(_result(2, 0.25) | {"AP_M": float("nan")})
    assert scalars == {"bbox_mAP": 0.25, "AP50": 0.5, "loss_total": 1.0, "loss_det": 2.0, "loss_kd_mgd_0": 0.25,
                       "lr": 1e-3, "epoch_time": 1.5}


def test_each_backend_logs_an_epoch_once_across_drivers(tmp_path, monkeypatch):
    """A driver logs epochs 1-2 and dies (its feed pickled as in Tune's state, files left open); the
    next one is fed epochs 1-3 again, as a restarted trial reports them: each epoch is there once."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    setup = TrackingSetup.from_args("tensorboard,mlflow", None, folder=str(tmp_path), experiment="exp")
    first = TrackerFeed(setup)
    for epoch in (1, 2):
        first.epoch(TRIAL, _result(epoch, 0.1 * epoch))
    second = pickle.loads(pickle.dumps(first))
    for epoch in (1, 2, 3):
        second.epoch(TRIAL, _result(epoch, 0.1 * epoch))
    second.finish(TRIAL, "TERMINATED")
    second.close()

    expected = [(1, 0.1), (2, 0.2), (3, pytest.approx(0.3))]
    run = tmp_path / "tensorboard" / "trial_t1"
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in tensorboard_scalars(run, "metrics/bbox_mAP")] == expected
    assert [s for s, _ in tensorboard_scalars(run, "loss/loss_kd_mgd_0")] == [1, 2, 3]
    assert tensorboard_scalars(run, "metrics/AP_S") == []  # COCO's -1: no value, as the tables' null
    assert tensorboard_hparams(run) == {"distill.method": "mgd", "distill.alpha": pytest.approx(1e-7),
                                        "distill.pyramid_scales": "[1, 2]"}

    runs = mlflow_runs(setup.mlflow_uri, "exp")
    assert len(runs) == 1, runs
    row = runs.iloc[0]
    assert (row["status"], row["tags.status"], row["tags.stop_reason"], row["tags.phase"]) == \
        ("FINISHED", "TERMINATED", "completed", "search")
    assert row["params.distill.method"] == "mgd" and row["params.distill.pyramid_scales"] == "[1, 2]"
    assert mlflow_history(setup.mlflow_uri, row["run_id"], "bbox_mAP") == expected
    assert [s for s, _ in mlflow_history(setup.mlflow_uri, row["run_id"], "lr")] == [1, 2, 3]


def tiny_space(experiment: Path, path: Path, num_samples: int = 2) -> Path:
    raw = {"experiment": str(experiment), "metric": "bbox_mAP", "mode": "max",
           "search": {"sampler": "tpe", "num_samples": num_samples, "max_concurrent": 2, "seed": 0},
           "scheduler": {"type": "none"},
           "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "executor": "inline"},
           "space": {"distill.method": {"choice": ["none", "mgd"]},
                     "distill.alpha": {"loguniform": [1e-8, 1e-6], "when": {"distill.method": "mgd"}}}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_missing_backend_is_one_line_and_exit_2_before_anything_starts(write_experiment, tiny_teacher, tmp_path):
    """``mlflow`` hidden from the driver (``sys.modules['mlflow'] = None``, as when not installed):
    refused before the teacher is trained, Ray started or the search folder made."""
    space = tiny_space(write_experiment(teacher=tiny_teacher), tmp_path / "space.yaml")
    code = ("import sys, atexit; sys.modules['mlflow'] = None; "
            "atexit.register(lambda: print('ray started:', 'ray' in sys.modules and sys.modules['ray'].is_initialized()));"
            "from raykd.errors import run_cli; from raykd.search.__main__ import main, PROG; run_cli(main, PROG)")
    done = subprocess.run([sys.executable, "-c", code, str(space), "--storage", str(tmp_path / "results"), "--log",
                           "tensorboard,mlflow"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "python -m raykd.search: error: --log: mlflow is not installed: pip install 'raykd[mlflow]'"]
    assert "ray started: False" in done.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()
