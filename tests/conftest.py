"""Shared fixtures: a tiny synthetic COCO set and tiny experiment files (64 px, a few images)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """12 train / 6 val synthetic images of 64 px (generated once per test session)."""
    from raykd.data import generate_synthetic

    out = tmp_path_factory.mktemp("tiny_shapes")
    generate_synthetic(out, train_images=12, val_images=6, seed=0, image_size=64)
    return out


def tiny_experiment_dict(data: Path, out: Path, **sections) -> dict:
    """A CPU experiment that trains in seconds: FCOS ResNet-18 with 32-channel FPNs at 64 px."""
    exp = {
        "name": "tiny",
        "data": {"train": {"annotations": str(data / "annotations/train.json"), "images": str(data / "images/train")},
                 "val": {"annotations": str(data / "annotations/val.json"), "images": str(data / "images/val")},
                 "image_size": 64},
        "student": {"arch": "fcos", "backbone": "resnet18", "fpn_channels": 32},
        "train": {"epochs": 2, "batch_size": 4, "optimizer": "adamw", "lr": 1e-3, "warmup_iters": 2,
                  "schedule": "cosine", "clip_grad": 10.0, "threads": 1, "output_dir": str(out / "run")},
        "cache_dir": str(out / "cache"),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(exp.get(key), dict):
            exp[key] = {**exp[key], **value}
        else:
            exp[key] = value
    return exp


_TEACHER = {"arch": "fcos", "backbone": "resnet18", "fpn_channels": 64,
           "train": {"epochs": 1, "batch_size": 4, "optimizer": "adamw", "lr": 1e-3, "warmup_iters": 2,
                     "schedule": "constant", "threads": 1}}


@pytest.fixture
def tiny_teacher() -> dict:
    """A teacher block trained (1 epoch, cached under the test's cache_dir) when first needed."""
    return copy.deepcopy(_TEACHER)


@pytest.fixture
def write_experiment(tiny_data, tmp_path):
    """Write a tiny experiment YAML (sections override the defaults) and return its path."""

    def write(name: str = "exp.yaml", **sections) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(tiny_experiment_dict(tiny_data, tmp_path, **sections)))
        return path

    return write


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (2 CPUs, no dashboard), shut down at the end."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
