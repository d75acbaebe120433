"""The GPU paths of the trainer that a timing table does not show, one JSON line per result.

    python benchmarks/gpu_paths.py PART [--device cuda|cpu] [--tiny] [--steps N]

PART:
- ``syncs``: host-device syncs per training step of :func:`raykd.train.loop.train_one_epoch`
  (FCOS student; none, MGD, SAMKD), ``train.log_every`` past the epoch: on CUDA counted by
  ``torch.cuda.set_sync_debug_mode("warn")`` (every sync, torchvision's included), on the CPU by
  counting ``Tensor.item/__float__/__bool__/nonzero/tolist`` calls from raykd's own code.
- ``archs``: FCOS, RetinaNet, Faster R-CNN and Mask R-CNN students (ResNet-18) distilled with
  MGD from a heterogeneous teacher (RetinaNet ResNet-34 for FCOS, FCOS for the others; random
  weights: :func:`raykd.train.loop.fit` is called directly, so nothing trains the teacher): one
  short epoch each, ``train.amp: bf16`` on CUDA; step time, peak memory, box (and segm) mAP.
- ``amp_ap``: one checkpoint (an FCOS trained for the epoch) evaluated with ``amp`` off and
  bf16: box mAP of each, and their difference.
- ``ddp``: two DDP ranks (gloo) on one device, one short epoch: each rank's loss sums (its own
  shard of the data) and the metrics (scored on rank 0, broadcast: the same on both).

``--tiny``: 64 px synthetic images, 3 steps (a CPU check that the script runs). Default:
320 px images, ``--steps`` steps (default 30). Nothing in the project depends on this script.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from host_syncs import count_host_reads  # benchmarks/host_syncs.py, beside this script

from raykd.config import experiment_from_dict
from raykd.data import generate_synthetic
from raykd.train import loop


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


def experiment(root: Path, args: argparse.Namespace, *, student: str = "fcos", teacher: str | None = "retinanet",
               method: str = "mgd", amp: str = "off", epochs: int = 1) -> dict[str, Any]:
    size = 64 if args.tiny else 320
    data = root / f"data{size}"
    if not (data / "annotations").is_dir():
        generate_synthetic(data, train_images=4 * args.steps, val_images=8, seed=0, image_size=size)
    exp: dict[str, Any] = {
        "name": "gpu-paths",
        "data": {"train": {"annotations": str(data / "annotations/train.json"), "images": str(data / "images/train")},
                 "val": {"annotations": str(data / "annotations/val.json"), "images": str(data / "images/val")},
                 "image_size": size, "val_max_images": 8},
        "student": {"arch": student, "backbone": "resnet18", "fpn_channels": 64},
        "distill": {"method": method},
        "train": {"epochs": epochs, "steps_per_epoch": args.steps, "batch_size": 2, "optimizer": "sgd", "lr": 0.005,
                  "warmup_iters": 2, "schedule": "constant", "amp": amp, "device": args.device,
                  "log_every": 10_000, "output_dir": str(root / "run"), "threads": 1 if args.device == "cpu" else None},
        "cache_dir": str(root / "cache"),
    }
    if method != "none" and teacher is not None:  # the train block only satisfies the schema: fit() never reads it
        exp["teacher"] = {"arch": teacher, "backbone": "resnet34", "fpn_channels": 128,
                          "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2}}
    return exp


def count_syncs(run, epoch: int) -> int:
    """Syncs in one epoch of ``run``: CUDA's sync debug warnings, or raykd's host reads on the CPU."""
    if run.device.type != "cuda":
        return count_host_reads(run, epoch)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            loop.train_one_epoch(run, epoch, progress=False)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def part_syncs(root: Path, args: argparse.Namespace) -> None:
    for method in ("none", "mgd", "samkd"):
        teacher = "fcos" if method == "samkd" else "retinanet"  # SLD compares dense logits of one layout
        cfg = experiment_from_dict(experiment(root, args, method=method, teacher=teacher,
                                              amp="bf16" if args.device == "cuda" else "off", epochs=2))
        run = loop._setup(cfg, None, log=lambda line: None)
        loop.train_one_epoch(run, 1, progress=False)  # warm-up: grids, label tables, cuDNN
        syncs = count_syncs(run, 2)
        emit({"part": "syncs", "method": method, "device": str(run.device), "steps": run.steps_per_epoch,
              "syncs_per_epoch": syncs, "syncs_per_step": syncs / run.steps_per_epoch,
              "how": "cuda sync debug mode" if run.device.type == "cuda" else "raykd host reads"})


def _fit(cfg) -> tuple[list[dict[str, Any]], float, float | None]:
    history: list[dict[str, Any]] = []
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    loop.fit(cfg, on_epoch_end=lambda record, _s: history.append(record.as_report()), progress=False,
             log=lambda line: None)
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return history, time.perf_counter() - start, peak


def part_archs(root: Path, args: argparse.Namespace) -> None:
    amp = "bf16" if args.device == "cuda" else "off"
    for student in ("fcos", "retinanet", "faster_rcnn", "mask_rcnn"):
        teacher = "retinanet" if student == "fcos" else "fcos"
        cfg = experiment_from_dict(experiment(root / student, args, student=student, teacher=teacher, amp=amp))
        try:
            history, wall, peak = _fit(cfg)
            last = history[-1]
            emit({"part": "archs", "student": student, "teacher": teacher, "amp": amp, "wall_s": wall,
                  "step_ms": 1e3 * last["step_time"], "peak_mb": peak, "bbox_mAP": last.get("bbox_mAP"),
                  "segm_mAP": last.get("segm_mAP"), "loss_total": last.get("loss_total")})
        except Exception as err:  # one failing arch must not hide the others
            emit({"part": "archs", "student": student, "teacher": teacher, "error": f"{type(err).__name__}: {err}"})


def part_amp_ap(root: Path, args: argparse.Namespace) -> None:
    cfg = experiment_from_dict(experiment(root, args, method="none", teacher=None, epochs=1))
    run = loop._setup(cfg, None, log=lambda line: None)
    loop.train_one_epoch(run, 1, progress=False)
    row: dict[str, Any] = {"part": "amp_ap", "device": str(run.device)}
    for name, dtype in (("off", None), ("bf16", torch.bfloat16)):
        if dtype is not None and run.device.type != "cuda":
            continue
        metrics = loop.evaluate_model(run.student, run.val_loader, run.val_ds, run.val_ids, run.device, dtype,
                                      label_to_cat_id=run.space.label_to_cat_id)
        row[f"bbox_mAP_{name}"] = metrics["bbox_mAP"]
    if "bbox_mAP_bf16" in row:
        row["difference"] = row["bbox_mAP_bf16"] - row["bbox_mAP_off"]
    emit(row)


def _ddp_rank(rank: int, exp: dict[str, Any], port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        device = "cuda:0" if exp["train"]["device"] == "cuda" else None
        history: list[dict[str, Any]] = []
        loop.fit(experiment_from_dict(exp), on_epoch_end=lambda record, _s: history.append(record.as_report()),
                 progress=False, log=lambda line: None, device=device)
        Path(out, f"rank{rank}.json").write_text(json.dumps(history[-1]))
    finally:
        dist.destroy_process_group()


def part_ddp(root: Path, args: argparse.Namespace) -> None:
    exp = experiment(root, args, method="mgd", teacher="retinanet")
    start = time.perf_counter()
    mp.spawn(_ddp_rank, args=(exp, 29_500 + os.getpid() % 1000, str(root)), nprocs=2, join=True)
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]
    emit({"part": "ddp", "backend": "gloo", "device": args.device, "wall_s": time.perf_counter() - start,
          "loss_total": [r["loss_total"] for r in ranks], "bbox_mAP": [r.get("bbox_mAP") for r in ranks],
          "ranks_agree_on_metrics": ranks[0].get("bbox_mAP") == ranks[1].get("bbox_mAP")})


PARTS = {"syncs": part_syncs, "archs": part_archs, "amp_ap": part_amp_ap, "ddp": part_ddp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="64 px, 3 steps: a CPU check that the script runs")
    parser.add_argument("--steps", type=int, default=30, help="steps per epoch (default: 30)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.tiny:
        args.steps = 3
    with tempfile.TemporaryDirectory() as tmp:
        PARTS[args.part](Path(tmp), args)


if __name__ == "__main__":
    main()
