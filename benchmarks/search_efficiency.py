"""TPE + ASHA against random search at equal compute, on the demo task.

For each seed, runs the demo space twice: Optuna TPE with ASHA early stopping, and Optuna's
random sampler with no early stopping. Compute is counted in training epochs (every trial
epoch costs about the same here). For each run the best bbox_mAP found so far is recorded
against cumulative epochs, in the order trials finished; the comparison is made at the
compute the cheaper strategy spent in total.

    python benchmarks/search_efficiency.py [--seeds 0 1 2] [--num-samples 12] [--out ...]
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
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import ray  # noqa: E402

from raykd.results import load  # noqa: E402
from raykd.search.space import Space  # noqa: E402
from raykd.search.tuner import SearchPaths, build_tuner  # noqa: E402
from raykd.train.setup import resolve_data  # noqa: E402
from raykd.train.teacher import ensure_teacher  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = {
    "tpe+asha": {"search.sampler": "tpe"},
    "random": {"search.sampler": "random", "scheduler.type": "none"},
}


def best_curve(trials) -> list[tuple[int, float]]:
    """(cumulative epochs, best final bbox_mAP so far) in the order trials finished."""
    done = trials.sort_values("updated_at")
    spent, best, curve = 0, 0.0, []
    for _, row in done.iterrows():
        spent += int(row["epochs_run"])
        if row["stop_reason"] == "completed":
            best = max(best, float(row["final_bbox_mAP"]))
        curve.append((spent, best))
    return curve


def best_at(curve: list[tuple[int, float]], budget: int) -> float:
    return max([b for spent, b in curve if spent <= budget], default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(REPO / "search_spaces/demo.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-samples", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/out/search_efficiency.json")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, overrides in STRATEGIES.items():
                space = Space(args.space, {**overrides, "search.seed": seed}, num_samples=args.num_samples)
                resolve_data(space.base_config.data, space.base_config.cache_dir)
                teacher = ensure_teacher(space.base_config)
                paths = SearchPaths(tmp, f"{name}-{seed}")
                start = time.perf_counter()
                print(f"seed {seed}: {name} ...", flush=True)
                build_tuner(space, paths, teacher, quiet=True).fit()
                trials = load(paths.tables)
                curve = best_curve(trials)
                runs.append({"strategy": name, "seed": seed, "wall_s": time.perf_counter() - start,
                             "epochs": curve[-1][0], "best": curve[-1][1], "curve": curve})
    ray.shutdown()
    table = []
    for seed in args.seeds:
        pair = {r["strategy"]: r for r in runs if r["seed"] == seed}
        budget = min(r["epochs"] for r in pair.values())
        for r in pair.values():
            r["best_at_equal_compute"] = best_at(r["curve"], budget)
            r["equal_compute_epochs"] = budget
    for name in STRATEGIES:
        mine = [r for r in runs if r["strategy"] == name]
        table.append({
            "strategy": name,
            "epochs_mean": statistics.mean(r["epochs"] for r in mine),
            "wall_s_mean": statistics.mean(r["wall_s"] for r in mine),
            "best_mean": statistics.mean(r["best"] for r in mine),
            "best_equal_compute_mean": statistics.mean(r["best_at_equal_compute"] for r in mine),
            "best_equal_compute_std": statistics.pstdev(r["best_at_equal_compute"] for r in mine),
        })
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"num_samples": args.num_samples, "seeds": args.seeds, "summary": table,
                               "runs": runs}, indent=2))
    print(f"\n{'strategy':<10}{'epochs':>8}{'wall s':>9}{'best mAP':>10}{'best @ equal compute':>23}")
    for row in table:
        print(f"{row['strategy']:<10}{row['epochs_mean']:>8.1f}{row['wall_s_mean']:>9.0f}{row['best_mean']:>10.4f}"
              f"{row['best_equal_compute_mean']:>15.4f} ± {row['best_equal_compute_std']:.4f}")
    print(f"(means over seeds {args.seeds}; written to {out})")


if __name__ == "__main__":
    main()
