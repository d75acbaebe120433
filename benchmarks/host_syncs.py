"""Host reads of a training step on the CPU: how often raykd's own code makes the host wait for
the device's values (``Tensor.item``, ``float(t)``, ``bool(t)``, ``int(t)``, ``.nonzero()``,
``.tolist()`` called from a file under ``raykd/``), per step of one epoch after a warm-up epoch.

    python benchmarks/host_syncs.py DATA_DIR [--steps 4]

DATA_DIR: a synthetic set (``python -m raykd.data synth DATA_DIR --image-size 64``). The raykd
that PYTHONPATH names is measured, so the same command on an older checkout gives the "before"
(on a GPU, ``benchmarks/gpu_paths.py syncs`` counts every sync with CUDA's sync debug mode).
Prints one JSON line per method (none, MGD, SAMKD).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from raykd.config import experiment_from_dict
from raykd.train import loop

RAYKD = str(Path(loop.__file__).parents[1])
HOST_READS = ("item", "__float__", "__bool__", "__int__", "nonzero", "tolist")


def count_host_reads(run, epoch: int) -> int:
    """Host reads from raykd's code during one :func:`raykd.train.loop.train_one_epoch` of ``run``."""
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counted(name: str):
        def call(tensor, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(RAYKD):
                calls.append(name)
            return originals[name](tensor, *args, **kwargs)
        return call

    for name in HOST_READS:
        setattr(torch.Tensor, name, counted(name))
    try:
        loop.train_one_epoch(run, epoch, progress=False)
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return len(calls)


def experiment(data: Path, folder: str, method: str, steps: int) -> dict:
    split = lambda name: {"annotations": str(data / f"annotations/{name}.json"),  # noqa: E731
                          "images": str(data / f"images/{name}")}
    exp = {"name": "host-syncs", "data": {"train": split("train"), "val": split("val"), "image_size": 64},
           "student": {"arch": "fcos", "backbone": "resnet18", "fpn_channels": 32},
           "distill": {"method": method, "pyramid_scales": [1, 2, 4], "mask_rule": "random"},
           "train": {"epochs": 2, "steps_per_epoch": steps, "batch_size": 2, "optimizer": "sgd", "lr": 0.001,
                     "threads": 1, "output_dir": f"{folder}/run"},
           "cache_dir": f"{folder}/cache"}
    if method != "none":
        exp["teacher"] = {"arch": "fcos", "backbone": "resnet18", "fpn_channels": 32,
                          "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2}}
    return exp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="a synthetic data set of 64 px images")
    parser.add_argument("--steps", type=int, default=4, help="steps per epoch (default: 4)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for method in ("none", "mgd", "samkd"):
        with tempfile.TemporaryDirectory() as folder:
            run = loop._setup(experiment_from_dict(experiment(args.data, folder, method, args.steps)), None,
                              log=lambda line: None)
            loop.train_one_epoch(run, 1, progress=False)  # warm-up: cached grids and tables
            reads = count_host_reads(run, 2)
            print(json.dumps({"raykd": RAYKD, "method": method, "steps": run.steps_per_epoch, "host_reads": reads,
                              "per_step": reads / run.steps_per_epoch}), flush=True)


if __name__ == "__main__":
    main()
