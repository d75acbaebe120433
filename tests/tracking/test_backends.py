"""Experiment tracking: ``--log tensorboard,mlflow`` read back with TensorBoard's and MLflow's
own readers and compared with the Parquet tables; optuna-dashboard serving a search's journal;
each backend logging an epoch once however often it is reported (driver kills: tests/e2e/faults/)."""

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
from tracking_tools import (
    mlflow_history,
    mlflow_runs,
    tensorboard_hparams,
    tensorboard_scalars,
    wandb_config,
    wandb_history,
    wandb_summary,
)

from raykd.errors import UserError
from raykd.results import load
from raykd.tracking import TrackingSetup, TrialInfo, epoch_scalars, parse_backends
from raykd.tracking.feed import TrackerFeed
from raykd.tracking.setup import for_search, for_train

REPO = Path(__file__).resolve().parents[2]
TRIAL = TrialInfo("t1", "trial_t1", {"distill.method": "mgd", "distill.alpha": 1e-7, "distill.pyramid_scales": [1, 2],
                                     "distill.fusion": None})


def _result(epoch: int, ap: float) -> dict:
    return {"epoch": epoch, "epochs_total": 3, "bbox_mAP": ap, "AP_S": -1.0, "AP50": 2 * ap, "loss_total": 3.0 - epoch,
            "loss_det": 2.0, "loss_kd_mgd_0": 0.25, "lr": 1e-3, "epoch_time": 1.5, "device": "cpu", "timestamp": 9.0}


# --- no Ray --------------------------------------------------------------------------------------


def test_parse_backends_and_refusals(tmp_path, monkeypatch):
    assert parse_backends("mlflow, tensorboard") == ("tensorboard", "mlflow")
    assert parse_backends(None) == ()
    assert parse_backends("wandb,tensorboard,mlflow") == ("tensorboard", "mlflow", "wandb")
    for bad in ("tensorbord", "", "mlflow,comet"):
        with pytest.raises(UserError, match="--log: unknown tracker"):
            parse_backends(bad)
    for local in ("tensorboard", "wandb"):
        with pytest.raises(UserError, match=f"{local} writes local files"):
            TrackingSetup.from_args(local, None, folder=None, experiment="s")
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
    bare = str(tmp_path / "bare")
    for_search(None, None, storage=str(tmp_path), root=bare, name="bare", resume=False).save()
    with pytest.raises(UserError, match="--log: this search logs to no tracker since it started"):
        for_search("tensorboard", None, storage=str(tmp_path), root=bare, name="bare", resume=True)


def test_a_resumed_training_run_keeps_its_trackers_or_takes_new_ones(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = str(tmp_path / "run")
    first = for_train("tensorboard", None, output_dir=out, name="tiny", resume=False)
    first.save()
    assert for_train(None, None, output_dir=out, name="tiny", resume=True) == first
    assert for_train("mlflow", None, output_dir=out, name="tiny", resume=True).backends == ("mlflow",)


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


def test_wandb_holds_each_epoch_of_each_trial_once_across_drivers(tmp_path, wandb_offline):
    """W&B offline: a driver logs epochs 1-2 of two trials and stops (its feed pickled as in Tune's
    state; its runs end, the trials do not); the next one is fed epochs 1-3 again: every epoch of
    every trial is in the run folder once, each driver's run folder adding only what was missing.
    (A driver SIGKILLed mid-trial: tests/e2e/faults/test_tracking_resume.py.)"""
    from raykd.tracking.wandb_backend import run_id

    setup = TrackingSetup.from_args("wandb", None, folder=str(tmp_path), experiment="exp")
    other = TrialInfo("t2", "trial_t2", {"distill.method": "none"})
    first = TrackerFeed(setup)
    for epoch in (1, 2):
        for trial in (TRIAL, other):
            first.epoch(trial, _result(epoch, 0.1 * epoch))
    second = pickle.loads(pickle.dumps(first))
    first.close()  # one W&B run per id and process: the first driver's end before the second's start
    # W&B names an offline run's folder by the second it started in: a restarted driver (which
    # starts Ray first) is always seconds later; two runs in one second would share a folder
    time.sleep(max(0.0, 1.05 - (time.time() % 1.0)))
    for trial in (TRIAL, other):
        for epoch in (1, 2, 3):
            second.epoch(trial, _result(epoch, 0.1 * epoch))
        second.finish(trial, "TERMINATED")
    second.close()

    expected = [(1, 0.1), (2, 0.2), (3, pytest.approx(0.3))]
    for trial in (TRIAL, other):
        rid = run_id(str(tmp_path), trial.trial_id)
        assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{rid}"))) == 2  # one per driver
        assert wandb_history(tmp_path, rid, "bbox_mAP") == expected
        assert [s for s, _ in wandb_history(tmp_path, rid, "loss_kd_mgd_0")] == [1, 2, 3]
        assert wandb_history(tmp_path, rid, "AP_S") == []  # COCO's -1: no value, as the tables' null
        summary = wandb_summary(tmp_path, rid)
        assert (summary["status"], summary["stop_reason"], summary["phase"]) == ("TERMINATED", "completed", "search")
    assert wandb_config(tmp_path, run_id(str(tmp_path), "t1")) == {
        "distill.method": "mgd", "distill.alpha": pytest.approx(1e-7), "distill.pyramid_scales": [1, 2]}
    assert run_id(str(tmp_path), "t1") != run_id(str(tmp_path / "other-search"), "t1")


def tiny_space(experiment: Path, path: Path, num_samples: int = 2) -> Path:
    raw = {"experiment": str(experiment), "metric": "bbox_mAP", "mode": "max",
           "search": {"sampler": "tpe", "num_samples": num_samples, "max_concurrent": 2, "seed": 0},
           "scheduler": {"type": "none"},
           "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "executor": "inline"},
           "space": {"distill.method": {"choice": ["none", "mgd"]},
                     "distill.alpha": {"loguniform": [1e-8, 1e-6], "when": {"distill.method": "mgd"}}}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class _Broken:
    name = "broken"

    def log_epoch(self, trial, epoch, scalars):
        raise ConnectionError("tracking server gone")


def test_a_failing_backend_is_left_out_with_one_warning_and_the_others_go_on(tmp_path, caplog):
    setup = TrackingSetup.from_args("tensorboard", None, folder=str(tmp_path), experiment="exp")
    feed = TrackerFeed(setup)
    feed.trackers.insert(0, _Broken())
    for epoch in (1, 2):
        feed.epoch(TRIAL, _result(epoch, 0.1 * epoch))
    feed.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "tracking: broken failed (ConnectionError: tracking server gone)" in warnings[0]
    assert [s for s, _ in tensorboard_scalars(tmp_path / "tensorboard" / "trial_t1", "metrics/bbox_mAP")] == [1, 2]


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


# --- a real search ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str, deadline: float):
    """GET ``url`` as JSON, retrying while the server starts."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def check_optuna_dashboard(journal: Path, study: str, n_trials: int) -> None:
    """``optuna-dashboard optuna.journal`` (the README's command) serves the study and its trials."""
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("optuna-dashboard")), str(journal), "--host",
                               "127.0.0.1", "--port", str(port)], cwd=journal.parent, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        studies = _get_json(f"http://127.0.0.1:{port}/api/studies", time.monotonic() + 60)["study_summaries"]
        assert [s["study_name"] for s in studies] == [study]
        detail = _get_json(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}", time.monotonic() + 30)
        assert len(detail["trials"]) == n_trials
        assert {t["state"] for t in detail["trials"]} == {"Complete"}
    finally:
        server.kill()
        server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.ray
def test_search_seen_by_tensorboard_mlflow_and_optuna_dashboard(ray_local, write_experiment, tiny_teacher, tmp_path,
                                                                 monkeypatch):
    """Per trial, TensorBoard's event reader and ``mlflow.search_runs`` give the same per-epoch
    bbox_mAP as the Parquet epochs table; ``--mlflow-uri`` is where the runs go (the search
    folder gets no mlruns/), though MLFLOW_TRACKING_URI points elsewhere."""
    from raykd.search.__main__ import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'not-this-one.db'}")
    uri = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    (tmp_path / "elsewhere").mkdir()
    space = tiny_space(write_experiment(teacher=tiny_teacher, train={"epochs": 2}), tmp_path / "space.yaml")
    argv = [str(space), "--storage", str(tmp_path / "results"), "--name", "tracked", "--log", "tensorboard,mlflow",
            "--mlflow-uri", uri, "--quiet"]
    assert main(argv) == 0
    root = tmp_path / "results" / "tracked"
    trials = load(root / "tables")
    epochs = load(root / "tables", table="epochs")
    assert len(trials) == 2 and set(trials["epochs_run"]) == {2}

    runs = mlflow_runs(uri, "tracked")
    assert sorted(runs["tags.raykd.trial_id"]) == sorted(trials["trial_id"])
    assert not (root / "mlruns").exists() and not (tmp_path / "not-this-one.db").exists()
    for trial in trials.itertuples():
        table = sorted(epochs.loc[epochs["trial_id"] == trial.trial_id, ["epoch", "bbox_mAP"]].itertuples(index=False))
        expected = [(int(e), pytest.approx(v, rel=1e-6)) for e, v in table]
        assert len(expected) == 2
        assert tensorboard_scalars(root / "tensorboard" / f"trial_{trial.trial_id}", "metrics/bbox_mAP") == expected
        method = trials.loc[trials["trial_id"] == trial.trial_id, "distill.method"].item()
        assert tensorboard_hparams(root / "tensorboard" / f"trial_{trial.trial_id}")["distill.method"] == method
        run = runs[runs["tags.raykd.trial_id"] == trial.trial_id].iloc[0]
        assert mlflow_history(uri, run["run_id"], "bbox_mAP") == expected
        assert (run["status"], run["tags.status"], run["tags.stop_reason"], run["tags.phase"]) == \
            ("FINISHED", "TERMINATED", "completed", "search")
    check_optuna_dashboard(root / "optuna.journal", "tracked", n_trials=2)


@pytest.mark.slow
def test_train_logs_each_epoch_once_across_a_resume(write_experiment, tmp_path, monkeypatch, wandb_offline):
    """``raykd.train --log tensorboard,mlflow,wandb``: per epoch the metrics.jsonl values; ``--resume``
    (two more epochs) logs its resumed history again, and each epoch is still there once."""
    from raykd.tracking.wandb_backend import run_id
    from raykd.train.__main__ import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    experiment = write_experiment(train={"epochs": 1})
    out = tmp_path / "run"
    assert main([str(experiment), "--no-progress", "--log", "tensorboard,mlflow,wandb"]) == 0
    assert main([str(experiment), "--no-progress", "--resume", "--set", "train.epochs=2"]) == 0  # keeps its --log
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = [(m["epoch"], pytest.approx(m["bbox_mAP"], rel=1e-6)) for m in history]
    assert [e for e, _ in expected] == [1, 2]
    assert tensorboard_scalars(out / "tensorboard" / "tiny", "metrics/bbox_mAP") == expected
    assert tensorboard_hparams(out / "tensorboard" / "tiny")["distill.method"] == "none"
    uri = f"sqlite:///{out}/mlruns/mlflow.db"
    runs = mlflow_runs(uri, "tiny")
    assert len(runs) == 1 and runs.iloc[0]["tags.phase"] == "train" and runs.iloc[0]["status"] == "FINISHED"
    assert mlflow_history(uri, runs.iloc[0]["run_id"], "bbox_mAP") == expected
    assert [s for s, _ in mlflow_history(uri, runs.iloc[0]["run_id"], "loss_total")] == [1, 2]
    rid = run_id(str(out), "train")  # a raykd.train run is one trial: RunFeed.TRIAL_ID
    assert wandb_history(out, rid, "bbox_mAP") == expected
    assert wandb_summary(out, rid)["phase"] == "train"


@pytest.mark.slow
@pytest.mark.ray
def test_train_on_ray_train_workers_logs_each_epoch_as_reported(ray_local, write_experiment, tmp_path):
    """``raykd.train --workers 2 --log tensorboard``: the epochs are logged live by Ray Train's
    controller (an event file of another process holds them), and once."""
    import os

    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from raykd.train.__main__ import main

    experiment = write_experiment(train={"epochs": 2})
    assert main([str(experiment), "--no-progress", "--workers", "2", "--log", "tensorboard"]) == 0
    out = tmp_path / "run"
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    board = out / "tensorboard" / "tiny"
    assert tensorboard_scalars(board, "metrics/bbox_mAP") == [
        (m["epoch"], pytest.approx(m["bbox_mAP"], rel=1e-6)) for m in history]
    live = [p for p in board.glob("events.out.tfevents.*") if not p.name.endswith(f".{os.getpid()}.0")
            and any(v.tag == "metrics/bbox_mAP" for e in EventFileLoader(str(p)).Load() for v in e.summary.value)]
    assert live, sorted(p.name for p in board.iterdir())
