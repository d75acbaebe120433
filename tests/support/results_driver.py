"""Tune driver for the resume test: ``fit`` or ``restore`` a search that streams to Parquet.

python tests/support/results_driver.py fit|restore STORAGE RESULTS MARKERS

The trainable checkpoints every epoch and touches ``MARKERS/<trial_id>-<epoch>-<mode>`` so
the test knows when to SIGKILL this driver and which epochs ran again after the restore.
Ray is started here (a fresh local instance).
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0.5")  # snapshot often: the kill finds checkpoints

import pyarrow as pa  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402

from raykd.epoch_record import EpochRecord, LossSummary  # noqa: E402
from raykd.results import write_run  # noqa: E402
from raykd.results.callback import ParquetResultsCallback  # noqa: E402

EPOCHS = 4
BBOX = [0.5, 0.3, 0.2, 0.1]  # best epoch is the first: it survives only if history is kept
MODE, STORAGE, RESULTS, MARKERS = sys.argv[1:5]
NAME = "resume"


def trainable(config):
    start = 1
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            start = json.loads(Path(folder, "state.json").read_text())["epoch"] + 1
    trial_id = tune.get_context().get_trial_id()
    for epoch in range(start, EPOCHS + 1):
        time.sleep(0.6)
        Path(MARKERS, f"{trial_id}-{epoch}-{MODE}").touch()
        record = EpochRecord(
            epoch=epoch, epochs_total=EPOCHS,
            losses=LossSummary(total=1.0 / epoch, det=0.5, kd=0.5 / epoch, terms={"mgd": 0.5 / epoch}),
            scores={"bbox_mAP": BBOX[epoch - 1], "AP50": 0.6, "AP75": 0.4, "AP_S": -1.0, "AP_M": 0.3, "AP_L": 0.5},
            lr=0.01, step_time=0.1, epoch_time=0.6, time_total_s=None, num_workers=1, device="cpu")
        metrics = {**record.as_report(), "executor": "tune_function"}
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def main():
    ray.init(num_cpus=2, include_dashboard=False, address="local")
    write_run(RESULTS, NAME, dataset_fingerprint="synthetic", resumed=MODE == "restore")
    if MODE == "fit":
        params = {"distill.method": pa.string(), "train.seed": pa.int64()}
        tuner = tune.Tuner(
            trainable,
            param_space={"distill.method": tune.grid_search(["mgd", "dmkd", "samkd"]), "train.seed": 0},
            tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),
            run_config=tune.RunConfig(
                name=NAME, storage_path=STORAGE, verbose=0,
                callbacks=[ParquetResultsCallback(RESULTS, NAME, params, flush_every_s=1000)],
            ),
        )
    else:  # the callback comes back unpickled with the run config
        tuner = tune.Tuner.restore(os.path.join(STORAGE, NAME), trainable, resume_unfinished=True,
                                   resume_errored=True)
    tuner.fit()
    ray.shutdown()


if __name__ == "__main__":
    main()
