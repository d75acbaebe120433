"""A search with ``--log tensorboard,mlflow,wandb`` whose driver is SIGKILLed twice mid-trial and
resumed: TensorBoard, MLflow and W&B (offline) hold every epoch of every trial exactly once, with
the tables' values.

Killed right after an epoch is reported, the restarted trials report again the epochs Tune's
saved state had not recorded (see raykd/search/trainable.py); the trackers must skip those.
"""

from __future__ import annotations

import time

import pytest
from fault_tools import check_search, intact_trials
from tracking_tools import mlflow_history, mlflow_runs, tensorboard_scalars, wandb_history, wandb_summary

from raykd.results import load
from raykd.tracking.wandb_backend import run_id

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

KILLS = [(r"epoch 1/3", 0.3), (r"epoch 2/3", 0.0)]  # (what the driver printed last, seconds after it)


@pytest.mark.fault("driver SIGKILL with trackers", injected=len(KILLS), trials=2)
def test_trackers_hold_each_epoch_once_after_driver_kills(fault_space, search_driver, tmp_path, fault_ledger,
                                                          monkeypatch, wandb_offline):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the search folder's own mlruns/
    space = fault_space(num_samples=2, epochs=3)
    driver = search_driver(space, name="tracked", extra=["--log", "tensorboard,mlflow,wandb"])  # --resume repeats it
    root = tmp_path / "results" / "tracked"
    try:
        for i, (pattern, delay) in enumerate(KILLS):
            driver.start(*([] if i == 0 else ["--resume"]))
            driver.wait_for(pattern)
            time.sleep(delay)
            driver.kill()
        driver.start("--resume")
        assert driver.finish() == 0, driver.text()[-3000:]
    finally:
        fault_ledger(len(intact_trials(root, epochs=3)))
    trials = check_search(root, trials_expected=2, epochs=3)
    epochs = load(root / "tables", table="epochs")
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    runs = mlflow_runs(uri, "tracked")
    assert sorted(runs["tags.raykd.trial_id"]) == sorted(trials["trial_id"])  # one run per trial, continued
    for trial_id in trials["trial_id"]:
        rows = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")
        expected = [(int(e), pytest.approx(v, rel=1e-6)) for e, v in zip(rows["epoch"], rows["bbox_mAP"])]
        board = root / "tensorboard" / f"trial_{trial_id}"
        assert sorted(tensorboard_scalars(board, "metrics/bbox_mAP")) == expected, trial_id
        assert sorted(s for s, _ in tensorboard_scalars(board, "loss/loss_total")) == [1, 2, 3]
        run = runs[runs["tags.raykd.trial_id"] == trial_id].iloc[0]
        assert (run["status"], run["tags.status"]) == ("FINISHED", "TERMINATED")
        assert mlflow_history(uri, run["run_id"], "bbox_mAP") == expected, trial_id
        assert [s for s, _ in mlflow_history(uri, run["run_id"], "loss_total")] == [1, 2, 3]
        rid = run_id(str(root), trial_id)
        assert wandb_history(root, rid, "bbox_mAP") == expected, trial_id
        assert [s for s, _ in wandb_history(root, rid, "loss_total")] == [1, 2, 3]
        assert wandb_summary(root, rid)["status"] == "TERMINATED"
