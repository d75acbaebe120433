"""What the Ray Jobs tests share (tests/submit/test_jobs.py, tests/e2e/test_submit_multinode.py):
a tiny search space and a timing line printed past pytest's capture."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_space(folder: Path, experiment: Path, *, num_samples: int, epochs: int = 2) -> Path:
    """A tiny inline search: ``num_samples`` random learning rates, two at a time, no early stopping."""
    space = {
        "experiment": str(experiment), "metric": "bbox_mAP", "mode": "max",
        "search": {"sampler": "random", "num_samples": num_samples, "max_concurrent": 2, "seed": 0},
        "scheduler": {"type": "none"},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "gpus_per_worker": 0, "executor": "inline"},
        "fixed": {"train.epochs": epochs},
        "space": {"train.lr": {"loguniform": [1.0e-4, 1.0e-3]}},
    }
    path = folder / "tiny_space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def report(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n[timing] {line}")
