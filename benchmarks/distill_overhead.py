"""Cost of every distillation method next to a student-only training step.

    python benchmarks/distill_overhead.py [--device cpu|cuda] [--coco] [--amp] [--repeats R]
                                          [--methods mgd fgd ...] [--flops-only] [--out PATH]

Real torchvision FCOS detectors with random weights (``weights=None``): by default a
ResNet-18 + FPN-64 student and a ResNet-34 + FPN-128 teacher on 160 px inputs, batch 2,
91 classes (align convs 64 -> 128 are exercised). ``--coco``: 800×1333 inputs, batch 2,
ResNet-50 + FPN-256 student, ResNet-101 + FPN-256 teacher (the papers' setting; meant for
a GPU). Every method runs in a fresh spawned process so that peak memory is its own.

Per method, medians over ``--repeats`` iterations (after ``--warmup``), the three kinds
interleaved so that they see the same machine load:
- ``student step``: the trainer's own step (``raykd.train.loop.train_step`` on a
  ``DistillStep``) of the student alone: FCOS losses, backward, SGD step;
- ``distill step``: the same call with the teacher and the distiller: the teacher's backbone
  (and head, when the method reads logits) under ``no_grad`` on the same batch tensor plus
  the distillation loss (row ``none``: the teacher forward only);
- ``loss``: the distillation loss alone, forward + backward, on one step's features and
  logits (detached copies that require grad) — the number the issue's goal is about:
  loss ≤ 10 % of the student step at COCO-like sizes.
With row ``none`` measured, ``vs floor`` divides each method's distillation step by the floor
(row ``none``'s: teacher forward + student forward/backward, no loss). ``--amp`` (CUDA only):
``train.amp: bf16`` as the loop runs it: the detectors' convolutions and the generation blocks
under bf16 autocast, box coding and every loss in fp32 (``raykd.models.precision``).
Memory, taken during the warm-up: CUDA ``max_memory_allocated`` over the student steps and
over the distillation steps (reset in between). On CPU: peak RSS
(``resource.getrusage(...).ru_maxrss``) of the method's own process above its RSS once the
models are built, first after the student steps, then after the distillation steps; the
second includes the first and the allocator reuses freed pages, so read it as a high-water
mark. CPU runs use one torch thread unless ``--threads`` says otherwise.
FLOPs (every run, and alone with ``--flops-only``): ``torch.utils.flop_counter`` on meta
tensors, matmul/conv only, so the memory-bound element-wise losses (FGD, CWD, PKD) show as
~0; ``loss/step FLOPs`` divides the loss's forward + backward by the student backbone +
head forward + backward. ``--coco --flops-only`` checks the COCO-size goal on any machine.
Prints a table and writes JSON (default ``benchmarks/out/distill_overhead.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from raykd.distill import METHODS, DistillConfig, build_distiller, total_loss
from raykd.distill.connectors import GenerationBlock
from raykd.models.precision import autocast_parts, conv_parts
from raykd.models.taps import forward_taps
from raykd.train.loop import DistillStep, train_step

DEFAULT_OUT = Path("benchmarks/out/distill_overhead.json")


def build_fcos(backbone: str, fpn_channels: int, num_classes: int, min_size: int, max_size: int) -> FCOS:
    """FCOS on a ResNet body (layers 2-4 -> FPN levels '0', '1', '2', then 'p6', 'p7'), random weights."""
    body = getattr(torchvision.models, backbone)(weights=None)
    widths = [body.inplanes // 4, body.inplanes // 2, body.inplanes]  # layer2..layer4 outputs
    fpn = BackboneWithFPN(
        body,
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=widths,
        out_channels=fpn_channels,
        extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels),
    )
    return FCOS(fpn, num_classes=num_classes, min_size=min_size, max_size=max_size)


def _synthetic_batch(args: dict[str, Any], device: torch.device) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    gen = torch.Generator().manual_seed(0)
    h, w = args["height"], args["width"]
    images, targets = [], []
    for _ in range(args["batch"]):
        count = int(torch.randint(1, 5, (1,), generator=gen))
        xy = torch.rand(count, 2, generator=gen) * torch.tensor([w * 0.7, h * 0.7])
        wh = (0.1 + 0.2 * torch.rand(count, 2, generator=gen)) * torch.tensor([w, h])
        boxes = torch.cat([xy, xy + wh], dim=1)
        labels = torch.randint(1, args["num_classes"], (count,), generator=gen)
        images.append(torch.rand(3, h, w, generator=gen).to(device))
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


def _taps(student: FCOS, teacher: FCOS, distiller: nn.Module, images: list[Tensor],
          targets: list[dict[str, Tensor]], amp: torch.dtype | None) -> dict[str, Any]:
    """The distillation loss's inputs of one step, as the loop's :class:`DistillStep` makes them."""
    parts = conv_parts(student) + conv_parts(teacher)
    with autocast_parts(parts, images[0].device.type, amp):
        taps = forward_taps(student, teacher, images, targets, with_logits=distiller.needs_logits)
    return {"student_feats": taps.student_feats, "teacher_feats": taps.teacher_feats,
            "student_logits": taps.student_logits, "teacher_logits": taps.teacher_logits,
            "boxes": taps.boxes, "image_sizes": taps.image_sizes}


def _detached(taps: dict[str, Any]) -> dict[str, Any]:
    leaf = lambda d: None if d is None else {k: v.detach().requires_grad_() for k, v in d.items()}  # noqa: E731
    return {**taps, "student_feats": leaf(taps["student_feats"]), "student_logits": leaf(taps["student_logits"])}


def _seconds(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _peak_mb(device: torch.device, rss_base_kb: int) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_base_kb) / 1024


def measure(args: dict[str, Any], method: str) -> dict[str, Any]:
    """Everything for one method, run in its own process."""
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    device = torch.device(args["device"])
    sizes = (min(args["height"], args["width"]), max(args["height"], args["width"]))
    student = build_fcos(args["student_backbone"], args["student_channels"], args["num_classes"], *sizes).to(device)
    teacher = build_fcos(args["teacher_backbone"], args["teacher_channels"], args["num_classes"], *sizes).to(device)
    student.train()
    teacher.eval().requires_grad_(False)
    cfg = DistillConfig(method=method)
    distiller = build_distiller(cfg, args["student_channels"], args["teacher_channels"],
                                ["0", "1", "2", "p6", "p7"], args["num_classes"])
    if distiller is not None:
        distiller.to(device)
    params = list(student.parameters()) + (list(distiller.parameters()) if distiller is not None else [])
    optimiser = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    images, targets = _synthetic_batch(args, device)

    amp = torch.bfloat16 if args["amp"] else None
    # the trainer's own step (raykd.train.loop): the student alone, and student + teacher + loss
    # (row none: teacher + student, the floor)
    student_only = DistillStep(student, None, None, amp=amp)
    with_teacher = DistillStep(student, distiller, teacher, amp=amp, distill_amp=amp)

    def student_step() -> None:
        train_step(student_only, optimiser, images, targets, params=params, clip_grad=None)

    def distill_step() -> None:
        train_step(with_teacher, optimiser, images, targets, params=params, clip_grad=None)

    # warm-up, which also gives the peak memory of each kind of step
    rss_base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args["warmup"]):
        student_step()
    student_peak = _peak_mb(device, rss_base_kb)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args["warmup"]):
        distill_step()
    distill_peak = _peak_mb(device, rss_base_kb)
    if distiller is not None:
        taps = _taps(student, teacher, distiller, images, targets, amp)
        blocks = [m for m in distiller.modules() if isinstance(m, GenerationBlock)]

    def loss_only() -> None:
        distiller.zero_grad(set_to_none=True)
        with autocast_parts(blocks, device.type, amp):
            loss = total_loss({lv: {t: v.float() for t, v in terms.items()}
                               for lv, terms in distiller(**_detached(taps)).items()})
        loss.backward()

    # interleaved, so that both kinds of step see the same machine load
    student_times, step_times, loss_times = [], [], []
    for _ in range(args["repeats"]):
        student_times.append(_seconds(student_step, device))
        step_times.append(_seconds(distill_step, device))
        if distiller is not None:
            loss_times.append(_seconds(loss_only, device))
    student_s = statistics.median(student_times)
    step_s = statistics.median(step_times)
    loss_s = statistics.median(loss_times) if loss_times else 0.0
    return {
        "method": method,
        "student_step_ms": 1e3 * student_s,
        "distill_step_ms": 1e3 * step_s,
        "loss_ms": 1e3 * loss_s,
        "loss_over_student_step": loss_s / student_s,
        "distill_step_over_student_step": step_s / student_s,
        "student_peak_mb": student_peak,
        "distill_peak_mb": distill_peak,
        "distiller_params": sum(p.numel() for p in distiller.parameters()) if distiller is not None else 0,
        "times_s": {"student_step": student_times, "distill_step": step_times, "loss": loss_times},
    }


def count_flops(args: dict[str, Any], method: str) -> dict[str, float]:
    """Matmul/conv FLOPs (``torch.utils.flop_counter``; element-wise ops are not counted) of
    the student's backbone + head forward + backward, the teacher's forward and the
    distillation loss forward + backward, on meta tensors: no data, no time, any size."""
    meta = torch.device("meta")
    n, k = args["batch"], args["num_classes"]
    height, width = (32 * math.ceil(args[key] / 32) for key in ("height", "width"))  # the padded batch
    sizes = (min(args["height"], args["width"]), max(args["height"], args["width"]))
    with meta:
        student = build_fcos(args["student_backbone"], args["student_channels"], k, *sizes)
        teacher = build_fcos(args["teacher_backbone"], args["teacher_channels"], k, *sizes)
        distiller = build_distiller(DistillConfig(method=method), args["student_channels"], args["teacher_channels"],
                                    ["0", "1", "2", "p6", "p7"], k)
    images = torch.empty(n, 3, height, width, device=meta)
    out: dict[str, Any] = {}

    def student_pass() -> None:
        feats = student.backbone(images)
        head = student.head(list(feats.values()))
        sum(v.sum() for v in head.values()).backward()
        out["student"] = feats

    def teacher_pass() -> None:
        with torch.no_grad():
            feats = teacher.backbone(images)
            head = teacher.head(list(feats.values())) if distiller is not None and distiller.needs_logits else None
        out["teacher"], out["teacher_head"] = feats, head

    def loss_pass() -> None:
        leaf = lambda f, c: {lv: torch.empty(n, c, *t.shape[-2:], device=meta, requires_grad=True)  # noqa: E731
                             for lv, t in f.items()}
        logits = distiller.needs_logits
        taps = {
            "student_feats": leaf(out["student"], args["student_channels"]),
            "teacher_feats": out["teacher"],
            "student_logits": leaf(out["student"], k) if logits else None,
            "teacher_logits": leaf(out["student"], k) if logits else None,
            "boxes": [torch.tensor([[8.0, 8.0, width / 2, height / 2]], device=meta)] * n,
            "image_sizes": [(args["height"], args["width"])] * n,
        }
        total_loss(distiller(**taps)).backward()

    flops = {}
    for name, fn in (("student", student_pass), ("teacher", teacher_pass), ("loss", loss_pass)):
        if name == "loss" and distiller is None:
            flops[name] = 0.0
            continue
        with FlopCounterMode(display=False) as counter:
            fn()
        flops[name] = float(counter.get_total_flops())
    return {"student_gflop": flops["student"] / 1e9, "teacher_gflop": flops["teacher"] / 1e9,
            "loss_gflop": flops["loss"] / 1e9, "loss_over_student_flops": flops["loss"] / flops["student"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--coco", action="store_true", help="800x1333, FPN 256, R50 student / R101 teacher")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast around every forward (CUDA only)")
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per measurement (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations, also used for memory (>= 1)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: 1 on CPU, steadier on a shared machine; torch's on CUDA)")
    parser.add_argument("--flops-only", action="store_true",
                        help="count FLOPs on meta tensors only (seconds, any machine; e.g. with --coco)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default: {DEFAULT_OUT})")
    parser.add_argument("--jsonl", action="store_true",
                        help="also print each method's row as one JSON line as soon as it is measured")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.amp and not args.device.startswith("cuda"):
        parser.error("--amp: bf16 autocast is measured on CUDA only (train.amp is ignored on CPU)")
    if args.repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup must be >= 1")
    if args.threads is None and not args.device.startswith("cuda"):
        args.threads = 1
    setup: dict[str, Any] = {
        "device": args.device, "batch": 2, "num_classes": 91, "repeats": args.repeats, "warmup": args.warmup,
        "threads": args.threads, "amp": args.amp,
    }
    if args.coco:
        setup.update(height=800, width=1333, student_backbone="resnet50", student_channels=256,
                     teacher_backbone="resnet101", teacher_channels=256)
    else:
        setup.update(height=160, width=160, student_backbone="resnet18", student_channels=64,
                     teacher_backbone="resnet34", teacher_channels=128)

    rows = []
    spawn = multiprocessing.get_context("spawn")
    header = f"{'method':<12}{'loss GFLOP':>11}{'loss/step FLOPs':>16}"
    if not args.flops_only:
        header += (f"{'loss ms':>10}{'loss/step':>11}{'student ms':>12}{'distill ms':>12}{'step ratio':>12}"
                   f"{'vs floor':>10}{'peak MB student':>17}{'peak MB distill':>17}")
    print(header, flush=True)
    floor_ms = None
    for method in args.methods:
        row = {"method": method, **count_flops(setup, method)}
        line = f"{method:<12}{row['loss_gflop']:>11.1f}{100 * row['loss_over_student_flops']:>15.1f}%"
        if not args.flops_only:
            with spawn.Pool(1, maxtasksperchild=1) as pool:
                row.update(pool.apply(measure, (setup, method)))
            if method == "none":
                floor_ms = row["distill_step_ms"]
            row["distill_step_over_floor"] = row["distill_step_ms"] / floor_ms if floor_ms else None
            vs_floor = f"{row['distill_step_over_floor']:>9.2f}x" if floor_ms else f"{'-':>10}"
            line += (f"{row['loss_ms']:>10.1f}{100 * row['loss_over_student_step']:>10.1f}%"
                     f"{row['student_step_ms']:>12.1f}{row['distill_step_ms']:>12.1f}"
                     f"{row['distill_step_over_student_step']:>11.2f}x{vs_floor}"
                     f"{row['student_peak_mb']:>17.0f}{row['distill_peak_mb']:>17.0f}")
        rows.append(row)
        print(line, flush=True)
        if args.jsonl:
            print(json.dumps({k: v for k, v in row.items() if k != "times_s"}), flush=True)
    print(f"student: {rows[0]['student_gflop']:.1f} GFLOP per step (backbone + head, forward + backward); "
          f"teacher forward {rows[0]['teacher_gflop']:.1f} GFLOP (+ head for methods that read logits)")
    memory = ("torch.cuda.max_memory_allocated (MB)" if args.device.startswith("cuda")
              else "peak RSS (ru_maxrss) above the RSS after building the models, MB, per fresh process")
    result = {
        "setup": {**setup, "memory": memory, "torch": torch.__version__, "torchvision": torchvision.__version__,
                  "python": platform.python_version(), "machine": platform.machine(),
                  "cpu_threads": args.threads or torch.get_num_threads(),
                  "cuda_device": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"loss/step = distillation loss forward+backward / student training step "
          f"(FLOPs: matmul/conv only, time: measured); wrote {args.out}")


if __name__ == "__main__":
    main()
