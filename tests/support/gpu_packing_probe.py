"""Run by tests/search/test_gpu_resources.py in its own process: a Ray with logical GPUs only
(``ray.init(num_gpus=...)``, no CUDA needed), four Tune trials whose resources come from
raykd's own functions, and one JSON line per trial worker on stdout.

usage: python tests/support/gpu_packing_probe.py EXECUTOR GPUS_PER_WORKER NUM_GPUS WANT OUT_DIR

Each worker holds its resources until it has seen WANT workers holding theirs at once (or
:data:`WAIT_S` passed; Ray Train workers start seconds apart on a small machine), then
:data:`HOLD_S` more, and records the most it saw.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import ray
from ray import tune

from raykd.search.space import ResourceSettings
from raykd.search.tuner import trial_resources

HOLD_S = 3.0
WAIT_S = 120.0


def _record(out: Path, trial: int, want: int) -> None:
    """What this worker was given, and the most workers it saw holding theirs at once."""
    live = out / "live"
    live.mkdir(exist_ok=True)
    mine = live / str(trial)
    mine.touch()
    start, seen = time.time(), 0
    while time.time() - start < WAIT_S:
        seen = max(seen, len(list(live.iterdir())))
        if seen >= want:
            break
        time.sleep(0.2)
    end = time.time() + HOLD_S
    while time.time() < end:
        seen = max(seen, len(list(live.iterdir())))
        time.sleep(0.2)
    mine.unlink()
    assigned = ray.get_runtime_context().get_assigned_resources()
    (out / f"trial{trial}.json").write_text(json.dumps({
        "trial": trial, "seen_at_once": seen, "assigned": assigned,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}))


def main() -> None:
    executor, gpus, num_gpus, want, out = (sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]),
                                           Path(sys.argv[5]))
    res = ResourceSettings(workers_per_trial=1, cpus_per_worker=1, gpus_per_worker=gpus, executor=executor)

    def inline(config):
        _record(out, config["trial"], want)

    def through_train(config):
        from ray.train import RunConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from raykd.train.worker import scaling_config

        trainer = TorchTrainer(lambda _: _record(out, config["trial"], want),
                               scaling_config=scaling_config(1, res.cpus_per_worker, res.gpus_per_worker),
                               torch_config=TorchConfig(backend="gloo"),  # the CPU stands in for the GPU here
                               run_config=RunConfig(name=f"probe{config['trial']}", storage_path=str(out / "ray")))
        trainer.fit()

    fn = inline if executor == "inline" else through_train
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a test's time-out still shuts Ray down below
    # 4 workers of 1 CPU, and Ray Train's trial drivers (0.01 each)
    ray.init(num_cpus=5, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(tune.with_resources(fn, trial_resources(res)),
                           param_space={"trial": tune.grid_search([0, 1, 2, 3])},
                           tune_config=tune.TuneConfig(max_concurrent_trials=4),
                           run_config=tune.RunConfig(storage_path=str(out / "tune"), verbose=0))
        tuner.fit()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
