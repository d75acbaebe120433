"""The Tune callback with a real local Ray: live tables, and resume after a driver SIGKILL."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
from proc_tools import kill_session

from raykd.epoch_record import EpochRecord, LossSummary
from raykd.errors import UserError
from raykd.results import ParamSpec, load, load_table
from raykd.results.read import read_parts

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).parents[1] / "support" / "results_driver.py"


# --- resume after SIGKILL (runs its own Ray in subprocesses; first, before the fixture) ---


def _start_driver(mode, tmp_path, log):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = [sys.executable, str(DRIVER), mode, str(tmp_path / "tune"), str(tmp_path / "results"),
            str(tmp_path / "markers")]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_resume_after_driver_sigkill_keeps_every_epoch_once(tmp_path):
    (tmp_path / "markers").mkdir()
    log_path = tmp_path / "driver.log"
    sessions = []
    try:
        with open(log_path, "w") as log:
            driver = _start_driver("fit", tmp_path, log)
            sessions.append(driver.pid)
            deadline = time.monotonic() + 120
            # Kill once a trial has reported epoch 2 (of 4): trials are mid-run.
            while not any(m.name.endswith("-2-fit") for m in (tmp_path / "markers").iterdir()):
                assert driver.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "the driver made no progress"
                time.sleep(0.05)
            driver.send_signal(signal.SIGKILL)
            driver.wait()
            kill_session(driver.pid)

            before = load_table(tmp_path / "results")
            assert before.num_rows >= 1
            assert "RUNNING" in before["status"].to_pylist()  # killed mid-run

            driver = _start_driver("restore", tmp_path, log)
            sessions.append(driver.pid)
            assert driver.wait(timeout=150) == 0, log_path.read_text()[-3000:]
    finally:
        for sid in sessions:
            kill_session(sid)

    markers = {m.name for m in (tmp_path / "markers").iterdir()}
    resumed = [t for t in before["trial_id"].to_pylist() if f"{t}-1-fit" in markers and f"{t}-1-restore" not in markers]
    assert resumed, f"no trial resumed from a checkpoint: {sorted(markers)}"
    trials = load_table(tmp_path / "results").to_pylist()
    assert len(trials) == 3
    assert sorted(t["distill.method"] for t in trials) == ["dmkd", "mgd", "samkd"]
    for trial in trials:
        assert (trial["status"], trial["stop_reason"], trial["epochs_run"]) == ("TERMINATED", "completed", 4)
        # For the resumed trials the best epoch (1) ran only before the crash.
        assert (trial["best_epoch"], trial["best_bbox_mAP"], trial["final_bbox_mAP"]) == (1, 0.5, 0.1)
        assert trial["wall_s"] > 4 * 0.6 and trial["train.seed"] == 0
    epochs = load_table(tmp_path / "results", table="epochs")
    for trial in trials:
        rows = [r for r in epochs.to_pylist() if r["trial_id"] == trial["trial_id"]]
        assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
        assert [r["bbox_mAP"] for r in rows] == [0.5, 0.3, 0.2, 0.1]
    assert epochs.num_rows == 12
    runs = load_table(tmp_path / "results", table="runs")
    assert runs["resumed"].to_pylist() == [False, True]


# --- a live search with the callback, in this process ----------------------------------


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session (reused if another fixture started one)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


EPOCHS = 3


PYRAMID_SCALES = ParamSpec("distill.pyramid_scales", "choice", choices=((1,), (1, 2), (1, 2, 4)))


def space(trial):
    """Define-by-run space (module level: OptunaSearch pickles it); pyramid scales are conditional."""
    method = trial.suggest_categorical("distill.method", ["mgd", "samkd"])
    trial.suggest_float("distill.mask_ratio", 0.3, 0.9)
    lists = {}
    if method == "samkd":  # Optuna stores "1,2"; the config gets [1, 2] (as raykd's DefineByRun does)
        lists["distill.pyramid_scales"] = PYRAMID_SCALES.suggest(trial)
    trial.suggest_categorical("train.seed", [0, 1])
    return lists or None


def fails(config):
    return config["distill.method"] == "mgd" and config["train.seed"] == 1


def trainable(config):
    from ray import tune

    if fails(config):
        raise ValueError("diverged")
    for epoch in range(1, EPOCHS + 1):
        time.sleep(0.4)
        record = EpochRecord(
            epoch=epoch, epochs_total=EPOCHS,
            losses=LossSummary(total=2.0 / epoch, det=1.0 / epoch, kd=1.0 / epoch,
                               terms={"mgd_0": 0.5 / epoch, "mgd_1": 0.5 / epoch}),
            scores={"bbox_mAP": config["distill.mask_ratio"] * epoch / EPOCHS, "AP50": 0.5, "AP75": 0.3,
                    "AP_S": -1.0, "AP_M": 0.2, "AP_L": 0.4},
            lr=0.01, step_time=0.1, epoch_time=0.4, time_total_s=None, num_workers=1, device="cpu")
        tune.report({**record.as_report(), "executor": "tune_function"})


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_live_search_streams_typed_rows(tmp_path, ray_local):
    import optuna
    from ray import cloudpickle, tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from raykd.results.callback import ParquetResultsCallback

    # Ray workers cannot import this test module: ship the trainable and space by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    root = tmp_path / "results"
    params = {"distill.method": pa.string(), "distill.mask_ratio": pa.float64(),
              "distill.pyramid_scales": pa.list_(pa.int64()), "train.seed": pa.int64()}
    searcher = OptunaSearch(
        space=space, metric="bbox_mAP", mode="max", sampler=optuna.samplers.RandomSampler(seed=3),
        points_to_evaluate=[
            {"distill.method": "samkd", "distill.mask_ratio": 0.8, "distill.pyramid_scales": "1,2", "train.seed": 0},
            {"distill.method": "mgd", "distill.mask_ratio": 0.6, "train.seed": 0},
            {"distill.method": "mgd", "distill.mask_ratio": 0.5, "train.seed": 1},  # raises
        ],
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            num_samples=4, max_concurrent_trials=2, reuse_actors=True, search_alg=searcher,
            scheduler=ASHAScheduler(time_attr="epoch", metric="bbox_mAP", mode="max", max_t=EPOCHS,
                                    grace_period=1, reduction_factor=2),
        ),
        run_config=tune.RunConfig(
            name="live", storage_path=str(tmp_path / "tune"), verbose=0,
            callbacks=[ParquetResultsCallback(root, "live", params, flush_every_s=0)],
        ),
    )

    seen, errors, done = [], [], threading.Event()

    def watch():  # a reader in another thread while the search runs
        while not done.is_set():
            try:
                epochs = load_table(root, table="epochs").num_rows
                running = load_table(root, filters={"status": "RUNNING"}).num_rows
                seen.append((epochs, running))
            except UserError:
                seen.append((0, 0))  # nothing published yet
            except Exception as err:  # e.g. a partial part file
                errors.append(err)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        grid = tuner.fit()
    finally:
        done.set()
        watcher.join()

    assert not errors
    trials = load_table(root)
    assert trials.num_rows == 4 and len(set(trials["trial_id"].to_pylist())) == 4
    import duckdb  # the search ended: a plain query of the part files sees each trial once

    assert duckdb.sql(f"SELECT count(*) FROM '{root}/trials/*.parquet'").fetchall()[0][0] == 4
    for name, pa_type in params.items():
        assert trials.schema.field(name).type == pa_type
    epochs = load_table(root, table="epochs")
    total = epochs.num_rows
    counts = [n for n, _ in seen]
    assert counts == sorted(counts), "the table never shrinks"
    assert any(0 < n < total for n in counts), f"no read saw a partial run: {seen}"
    assert any(running > 0 for _, running in seen), "no read saw a RUNNING trial"

    configs = {r.path: r.config for r in grid}
    assert len(configs) == 4
    rows = trials.to_pylist()
    with_scales = 0
    for row in rows:
        trial_epochs = [e["epoch"] for e in epochs.to_pylist() if e["trial_id"] == row["trial_id"]]
        config = next(c for p, c in configs.items() if row["trial_id"] in p)
        assert row["distill.method"] == config["distill.method"]
        assert row["distill.mask_ratio"] == config["distill.mask_ratio"]
        assert row["train.seed"] == config["train.seed"] and row["seed"] == config["train.seed"]
        if "distill.pyramid_scales" in config:
            with_scales += 1
            assert row["distill.pyramid_scales"] == config["distill.pyramid_scales"]
        else:
            assert row["distill.pyramid_scales"] is None
        if fails(config):
            assert (row["status"], row["stop_reason"], row["epochs_run"]) == ("ERROR", "error", 0)
            assert "ValueError: diverged" in row["error"]
            assert trial_epochs == []
            continue
        assert row["status"] == "TERMINATED" and row["error"] is None
        assert trial_epochs == list(range(1, row["epochs_run"] + 1))
        assert row["stop_reason"] == ("completed" if row["epochs_run"] == EPOCHS else "early_stopped")
        assert row["best_bbox_mAP"] == pytest.approx(config["distill.mask_ratio"] * row["epochs_run"] / EPOCHS)
        assert row["final_AP_S"] is None
        assert dict(row["loss_terms"]) == {"mgd_0": row["loss_total"] / 4, "mgd_1": row["loss_total"] / 4}
    assert 0 < with_scales < 4
    # Nothing was written twice: one published row per reported epoch.
    assert read_parts(root, "epochs", missing_ok=False).num_rows == total
    assert len(load(root, filters={"status": "ERROR"})) >= 1
