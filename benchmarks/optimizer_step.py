"""Time of one optimiser step on CPU: torch's default per-tensor loop vs its fused kernel.

    python benchmarks/optimizer_step.py [--threads 1] [--steps 30] [--out benchmarks/out/optimizer_step.json]

For the parameters of a torchvision ResNet-18 and ResNet-34 (the demo's student and teacher
backbones), with random gradients: the mean wall time of ``optimizer.step()`` for SGD
(momentum 0.9) and AdamW, the optimiser ``raykd.train.optim.build_optimizer`` returns (fused)
against the same parameter groups with torch's default implementation. All settings run in one
process, interleaved, so the ratios compare like with like on a noisy machine. Prints a table
and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18, resnet34

from raykd.config import ScheduleConfig
from raykd.train.optim import build_optimizer


def _step_ms(model: nn.Module, name: str, fused: bool, steps: int) -> float:
    optimizer = build_optimizer(ScheduleConfig(optimizer=name, lr=1e-3), [model])
    if not fused:  # the same groups and settings, torch's default implementation
        optimizer = type(optimizer)([{**group, "fused": None} for group in optimizer.param_groups])
    for _ in range(3):  # state allocation
        optimizer.step()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: a demo trial's)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setting and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/optimizer_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for model_name, build in (("resnet18", resnet18), ("resnet34", resnet34)):
        model = build()
        params = list(model.parameters())
        for p in params:
            p.grad = torch.randn_like(p)
        for optimizer in ("sgd", "adamw"):
            times = {False: [], True: []}
            for _ in range(args.rounds):
                for fused in (False, True):
                    times[fused].append(_step_ms(model, optimizer, fused, args.steps))
            default, fused = (sorted(times[f])[len(times[f]) // 2] for f in (False, True))
            rows.append({"model": model_name, "parameters": sum(p.numel() for p in params), "optimizer": optimizer,
                         "default_ms": default, "fused_ms": fused, "default_over_fused": default / fused})
    result = {"torch": torch.__version__, "threads": args.threads, "steps": args.steps, "rounds": args.rounds,
              "platform": platform.platform(), "python": platform.python_version(), "rows": rows}
    print(f"optimizer.step() on CPU, {args.threads} thread(s), median of {args.rounds} rounds × {args.steps} steps:")
    print("| model | optimizer | default ms | fused ms | default / fused |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['optimizer']} | {row['default_ms']:.1f} | {row['fused_ms']:.1f} | "
              f"{row['default_over_fused']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
