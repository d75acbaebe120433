"""Fault-suite fixtures: a tiny search space and search drivers killed at the end of a test."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fault_tools import SearchDriver


@pytest.fixture
def fault_space(write_experiment, tiny_teacher, tmp_path):
    """``write(num_samples=4, epochs=3, executor="inline", space=None, **top)`` -> a tiny space file.

    The default space searches the method (none / mgd / dmkd) and MGD's alpha; ``space``
    replaces it, ``top`` adds or replaces top-level sections; the experiment trains the tiny
    FCOS of tests/conftest.py with a 1-epoch tiny teacher.
    """

    def write(num_samples: int = 4, epochs: int = 3, executor: str = "inline", space: dict | None = None,
              experiment: dict | None = None, name: str = "space.yaml", **top) -> Path:
        sections = {"teacher": tiny_teacher, "train": {"epochs": epochs}, **(experiment or {})}
        exp = write_experiment(f"exp_{name}", **sections)
        raw = {
            "experiment": str(exp), "metric": "bbox_mAP", "mode": "max",
            "search": {"sampler": "tpe", "num_samples": num_samples, "max_concurrent": 2, "seed": 0},
            "scheduler": {"type": "none"},
            "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "executor": executor},
            "space": space or {"distill.method": {"choice": ["none", "mgd", "dmkd"]},
                               "distill.alpha": {"loguniform": [1e-8, 1e-6], "when": {"distill.method": ["mgd", "dmkd"]}}},
            "fixed": {"train.warmup_iters": 3},
            **top,
        }
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return write


@pytest.fixture
def search_driver(tmp_path):
    drivers = []

    def make(space: Path, name: str = "faulty", extra: list[str] | None = None) -> SearchDriver:
        driver = SearchDriver(space, tmp_path / "results", name, tmp_path / f"logs-{name}", extra)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver.close()
