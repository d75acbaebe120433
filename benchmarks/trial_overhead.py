"""Share of each trial's wall time spent outside the training loop, per executor.

Runs small real searches (tiny synthetic data, FCOS ResNet-18, no distillation) with the
inline executor and the Ray Train executor at 1 and 2 workers, and times every trial in the
driver (trial start -> trial end) against the time the loop itself reports (sum of its
epochs' ``epoch_time``, evaluation included). Writes JSON and prints a table.

    python benchmarks/trial_overhead.py [--trials 4] [--epochs 2] [--out benchmarks/out/trial_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import ray  # noqa: E402
import yaml  # noqa: E402
from ray.tune import Callback  # noqa: E402

from raykd.data import generate_synthetic  # noqa: E402
from raykd.search.space import Space  # noqa: E402
from raykd.search.tuner import SearchPaths, build_tuner  # noqa: E402


class TrialClock(Callback):
    """Driver-side wall time of every trial and the loop time it reported."""

    def __init__(self):
        self.start: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self.loop: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.start[trial.trial_id] = time.perf_counter()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.loop[trial.trial_id] = self.loop.get(trial.trial_id, 0.0) + float(result.get("epoch_time", 0.0))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.wall[trial.trial_id] = time.perf_counter() - self.start[trial.trial_id]


def write_space(root: Path, executor: str, workers: int, trials: int, epochs: int) -> Path:
    data = root / "data"
    if not data.exists():
        generate_synthetic(data, train_images=16, val_images=8, seed=0, image_size=64)
    exp = {
        "name": "overhead",
        "data": {"train": {"annotations": str(data / "annotations/train.json"), "images": str(data / "images/train")},
                 "val": {"annotations": str(data / "annotations/val.json"), "images": str(data / "images/val")},
                 "image_size": 64},
        "student": {"arch": "fcos", "backbone": "resnet18", "fpn_channels": 32},
        "train": {"epochs": epochs, "batch_size": 4, "optimizer": "adamw", "lr": 1e-3, "warmup_iters": 2,
                  "schedule": "constant", "threads": 1, "output_dir": str(root / "run")},
    }
    (root / "exp.yaml").write_text(yaml.safe_dump(exp))
    space = {"experiment": str(root / "exp.yaml"), "metric": "bbox_mAP", "mode": "max",
             "search": {"sampler": "random", "num_samples": trials, "max_concurrent": 1, "seed": 0},
             "scheduler": {"type": "none"},
             "resources": {"workers_per_trial": workers, "cpus_per_worker": 1, "executor": executor},
             "space": {"train.seed": {"choice": list(range(trials))}}}
    path = root / f"space_{executor}_{workers}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def measure(root: Path, executor: str, workers: int, trials: int, epochs: int) -> dict:
    space = Space(write_space(root, executor, workers, trials, epochs))
    clock = TrialClock()
    paths = SearchPaths(str(root / "results"), f"{executor}{workers}-{time.time_ns()}")
    tuner = build_tuner(space, paths, None, quiet=True, extra_callbacks=[clock])
    tuner.fit()
    rows = [{"wall_s": clock.wall[t], "loop_s": clock.loop.get(t, 0.0)} for t in clock.wall]
    outside = [r["wall_s"] - r["loop_s"] for r in rows]
    return {
        "executor": executor, "workers": workers, "trials": len(rows), "epochs": epochs,
        "median_wall_s": statistics.median(r["wall_s"] for r in rows),
        "median_outside_s": statistics.median(outside),
        "median_outside_share": statistics.median(o / r["wall_s"] for o, r in zip(outside, rows)),
        "first_trial_outside_s": outside[0] if outside else None,
        "trials_detail": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/out/trial_overhead.json")
    args = parser.parse_args()
    # One CPU per worker plus the Ray Train trial driver's 0.01 CPU: 2 workers on a 2-core
    # machine need a third logical CPU, or the worker group never starts.
    ray.init(num_cpus=(os.cpu_count() or 2) + 1, include_dashboard=False, log_to_driver=False)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for executor, workers in (("inline", 1), ("train", 1), ("train", 2)):
            print(f"measuring {executor} executor, {workers} worker(s)...", flush=True)
            results.append(measure(Path(tmp), executor, workers, args.trials, args.epochs))
    ray.shutdown()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"host_cpus": os.cpu_count(), "results": results}, indent=2))
    print(f"\n{'executor':<10}{'workers':>8}{'trials':>8}{'wall s':>9}{'outside s':>11}{'outside %':>11}")
    for r in results:
        print(f"{r['executor']:<10}{r['workers']:>8}{r['trials']:>8}{r['median_wall_s']:>9.1f}"
              f"{r['median_outside_s']:>11.1f}{100 * r['median_outside_share']:>10.0f}%")
    print(f"(medians over trials; written to {out})")


if __name__ == "__main__":
    main()
