"""The training loop through Ray, against the same loop run inline, on a GPU (or CPU).

    python benchmarks/ray_gpu.py [--device cuda|cpu] [--parts train packing] [--coco] [--amp]
                                 [--method mgd] [--steps 20] [--out benchmarks/out/ray_gpu.json]

Two parts, each a real run of :func:`raykd.train.loop.fit` on synthetic data (random-weight
FCOS teacher saved as a raykd checkpoint, distilled into a random-weight FCOS student):

- ``train``: one experiment run inline (``fit`` in this process) and through Ray Train's
  ``TorchTrainer`` with one worker of ``--cpus-per-worker`` CPUs, one run per value
  (:func:`raykd.train.worker.make_trainer`: NCCL process group, a GPU per worker, a checkpoint
  reported every epoch). Compares the loop's own ``step_time``
  (data + forward + backward + optimiser; median over the epochs after the first) and the wall
  time of the whole run (start-up, evaluation and checkpoints included).
- ``packing``: a search of 4 trials (Ray Tune) per ``--packing GPUS:EXECUTOR`` item, by
  default ``gpus_per_worker: 1`` inline (one trial at a time) and ``0.25`` (four trials share
  the GPU) inline and through Ray Train; the search's wall time.
  On CPU both searches use no GPU (the trials share the CPUs): the part only checks that it runs.

``--coco``: 800×1333-sized inputs (synthetic 512 px images resized by ``data.min_size 800`` /
``data.max_size 1333``), ResNet-50 + FPN-256 student, ResNet-101 + FPN-256 teacher, batch 2.
Default: 96 px, ResNet-18 / ResNet-34, FPN 64 / 128 (minutes on a CPU). Writes JSON and prints
a short table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import ray  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from raykd.config import ModelConfig, experiment_from_dict  # noqa: E402
from raykd.data import generate_synthetic  # noqa: E402
from raykd.models.builders import build_detector  # noqa: E402
from raykd.train.checkpoint import STATE_FILE, load_state  # noqa: E402
from raykd.train.loop import fit  # noqa: E402
from raykd.train.teacher import save_model  # noqa: E402
from raykd.train.worker import make_trainer  # noqa: E402

DEFAULT_OUT = Path("benchmarks/out/ray_gpu.json")


def sizes(coco: bool) -> dict[str, Any]:
    if coco:
        return {"synthetic": 512, "min_size": 800, "max_size": 1333, "student": ("resnet50", 256),
                "teacher": ("resnet101", 256)}
    return {"synthetic": 96, "min_size": None, "max_size": 96, "student": ("resnet18", 64),
            "teacher": ("resnet34", 128)}


def prepare(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Synthetic data and a random-weight teacher checkpoint; returns the experiment dict."""
    s = sizes(args.coco)
    data = root / "data"
    paths = generate_synthetic(data, train_images=2 * args.steps, val_images=8, seed=0, image_size=s["synthetic"])
    names = [c["name"] for c in sorted(json.loads(paths.train_annotations.read_text())["categories"],
                                       key=lambda c: c["id"])]
    teacher_cfg = ModelConfig(arch="fcos", backbone=s["teacher"][0], fpn_channels=s["teacher"][1])
    torch.manual_seed(0)
    teacher = build_detector(teacher_cfg, len(names) + 1, s["max_size"], s["min_size"])
    teacher_path = root / "teacher.pt"
    save_model(teacher.state_dict(), teacher_path)
    return {
        "name": "ray-gpu",
        "data": {"train": {"annotations": str(paths.train_annotations), "images": str(paths.train_images)},
                 "val": {"annotations": str(paths.val_annotations), "images": str(paths.val_images)},
                 "max_size": s["max_size"], "min_size": s["min_size"], "val_max_images": 8},
        "teacher": {"arch": "fcos", "backbone": s["teacher"][0], "fpn_channels": s["teacher"][1],
                    "checkpoint": str(teacher_path)},
        "student": {"arch": "fcos", "backbone": s["student"][0], "fpn_channels": s["student"][1]},
        "distill": {"method": args.method},
        "train": {"epochs": args.epochs, "steps_per_epoch": args.steps, "batch_size": 2, "optimizer": "sgd",
                  "lr": 0.005, "warmup_iters": 10, "schedule": "constant", "amp": args.amp, "seed": 0,
                  "device": args.device, "threads": None if args.device == "cuda" else 1,
                  "output_dir": str(root / "run")},
    }


def _steady(history: list[dict[str, Any]]) -> float:
    """Median step time (s) over the epochs after the first (cuDNN autotuning, allocator warm-up)."""
    return statistics.median(m["step_time"] for m in (history[1:] or history))


def run_inline(exp: dict[str, Any]) -> dict[str, Any]:
    history: list[dict[str, Any]] = []
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fit(experiment_from_dict(exp), on_epoch_end=lambda record, _state: history.append(record.as_report()), progress=False,
        log=lambda line: None)
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"how": "inline", "wall_s": wall, "step_ms": 1e3 * _steady(history), "peak_mb": peak,
            "epochs": len(history)}


def run_ray_train(exp: dict[str, Any], root: Path, use_gpu: bool, cpus: float) -> dict[str, Any]:
    trainer = make_trainer(exp, workers=1, gpus_per_worker=1 if use_gpu else 0, cpus_per_worker=cpus,
                           storage_path=str(root / "ray"),
                           name=f"ray-gpu-{time.time_ns()}", teacher_checkpoint=exp["teacher"]["checkpoint"])
    start = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - start
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as folder:
        history = load_state(Path(folder) / STATE_FILE)["history"]
    return {"how": f"ray_train_1_worker_{cpus:g}cpu", "cpus_per_worker": cpus, "wall_s": wall,
            "step_ms": 1e3 * _steady(history), "peak_mb": None,
            "epochs": len(history), "device": history[-1].get("device")}


def run_packing(exp: dict[str, Any], root: Path, gpus: float, use_gpu: bool, executor: str = "inline") -> dict[str, Any]:
    from raykd.search.space import Space
    from raykd.search.tuner import SearchPaths, build_tuner

    (root / "exp.yaml").write_text(yaml.safe_dump(exp))
    space = {"experiment": str(root / "exp.yaml"), "metric": "bbox_mAP", "mode": "max",
             "search": {"sampler": "random", "num_samples": 4, "max_concurrent": 4, "seed": 0},
             "scheduler": {"type": "none"},
             "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "executor": executor,
                           "gpus_per_worker": gpus if use_gpu else 0},
             "space": {"train.seed": {"choice": [0, 1, 2, 3]}}}
    path = root / f"space_{gpus}_{executor}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    paths = SearchPaths(str(root / "results"), f"packing-{gpus}-{time.time_ns()}")
    tuner = build_tuner(Space(path), paths, None, quiet=True)
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    errors = [str(r.error) for r in grid if r.error]
    return {"how": f"search_4_trials_gpu_{gpus}_{executor}", "gpus_per_trial": gpus, "executor": executor,
            "wall_s": wall,
            "trials": len(grid), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parts", nargs="+", choices=("train", "packing"), default=["train", "packing"])
    parser.add_argument("--packing", nargs="+", default=["1:inline", "0.25:inline", "0.25:train"],
                        help="searches of the packing part, GPUS:EXECUTOR each (default: 1:inline 0.25:inline 0.25:train)")
    parser.add_argument("--coco", action="store_true", help="800x1333 inputs, R50 student / R101 teacher")
    parser.add_argument("--amp", action="store_true", help="train.amp: bf16 autocast (CUDA)")
    parser.add_argument("--method", default="mgd", help="distill.method (default: mgd)")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch (default: 20)")
    parser.add_argument("--cpus-per-worker", type=float, nargs="+", default=[1.0],
                        help="Ray Train runs, one per value (Ray sets a worker's OMP_NUM_THREADS from it; default: 1)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default: 3)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default: {DEFAULT_OUT})")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    use_gpu = args.device == "cuda"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))  # a time-out still shuts Ray down below
    rows: list[dict[str, Any]] = []
    cpus = max(os.cpu_count() or 2, 5, *(math.ceil(c) for c in args.cpus_per_worker))
    ray.init(num_cpus=cpus, num_gpus=1 if use_gpu else 0, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            exp = prepare(root, args)
            if "train" in args.parts:
                rows.append(run_inline(exp))
                print(json.dumps(rows[-1]), flush=True)
                for cpus in args.cpus_per_worker:
                    rows.append(run_ray_train(exp, root, use_gpu, cpus))
                    print(json.dumps(rows[-1]), flush=True)
            if "packing" in args.parts:
                packed = {**exp, "train": {**exp["train"], "epochs": 1}}
                for item in args.packing:
                    gpus, executor = item.split(":")
                    rows.append(run_packing(packed, root, float(gpus), use_gpu, executor))
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        ray.shutdown()
    result = {"setup": {"device": torch.cuda.get_device_name() if use_gpu else platform.processor() or "cpu",
                        "coco": args.coco, "amp": args.amp, "method": args.method, "steps": args.steps,
                        "epochs": args.epochs, "torch": torch.__version__, "ray": ray.__version__},
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\n{'run':<30}{'wall s':>9}{'step ms':>10}{'peak MB':>10}")
    for r in rows:
        step = f"{r['step_ms']:>10.1f}" if "step_ms" in r else f"{'-':>10}"
        peak = f"{r['peak_mb']:>10.0f}" if r.get("peak_mb") else f"{'-':>10}"
        print(f"{r['how']:<30}{r['wall_s']:>9.1f}{step}{peak}")
    print(f"(wrote {args.out})")


if __name__ == "__main__":
    main()
