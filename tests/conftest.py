"""Shared fixtures: a tiny synthetic COCO set and tiny experiment files (64 px, a few images)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread is faster and does not spin against other jobs on the machine.
    Modules ask for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
def experiment_dict(tiny_data, tmp_path):
    """``tiny_experiment_dict`` on this test's data and folder: ``experiment_dict(**sections)``
    (tests import no helper from a conftest: tests/faults/ has its own module of that name)."""
    return lambda **sections: tiny_experiment_dict(tiny_data, tmp_path, **sections)


@pytest.fixture
def write_experiment(tiny_data, tmp_path):
    """Write a tiny experiment YAML (sections override the defaults) and return its path."""

    def write(name: str = "exp.yaml", **sections) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(tiny_experiment_dict(tiny_data, tmp_path, **sections)))
        return path

    return write


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    """W&B in offline mode, its caches and settings in this test's folder: nothing leaves the machine."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / ".wandb-home" / name.lower()))


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


# --- hardening figures: faults injected/survived and bad inputs tried/answered ---------------
# Fault tests call ``fault_ledger(...)``; tests under tests/bad_inputs/ count as one bad input
# each. The totals are printed at the end of every run (and kept in pytest's cache under
# raykd/hardening): the README's hardening table quotes them.

_FAULTS: dict[str, dict] = {}
_BAD_INPUTS: dict[str, bool] = {}


@pytest.fixture
def fault_ledger(request):
    """``record(kind, injected=1, trials_expected=None, trials_found=None)``: the faults this test
    injected (survived when the test passes) and, for searches, the trials it expected and found."""

    def record(kind: str, injected: int = 1, trials_expected: int | None = None,
               trials_found: int | None = None) -> None:
        entry = _FAULTS.setdefault(request.node.nodeid, {"kinds": [], "injected": 0, "lost": 0, "passed": False})
        entry["kinds"].append(kind)
        entry["injected"] += injected
        if trials_expected is not None:
            entry["lost"] += max(trials_expected - (trials_found or 0), 0)

    return record


def pytest_runtest_logreport(report):
    if report.when != "call" and not (report.when == "setup" and report.failed):
        return
    if report.nodeid in _FAULTS:
        _FAULTS[report.nodeid]["passed"] = report.passed
    if report.nodeid.startswith("tests/bad_inputs/") or "/bad_inputs/" in report.nodeid:
        _BAD_INPUTS[report.nodeid] = report.passed


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _FAULTS and not _BAD_INPUTS:
        return
    figures = {
        "faults_injected": sum(e["injected"] for e in _FAULTS.values()),
        "faults_survived": sum(e["injected"] for e in _FAULTS.values() if e["passed"]),
        "trials_lost": sum(e["lost"] for e in _FAULTS.values()),
        "fault_kinds": sorted({k for e in _FAULTS.values() for k in e["kinds"]}),
        "bad_inputs_tried": len(_BAD_INPUTS),
        "bad_inputs_answered_clearly": sum(_BAD_INPUTS.values()),
    }
    if getattr(config, "cache", None) is not None:  # absent under -p no:cacheprovider
        config.cache.set("raykd/hardening", figures)
    terminalreporter.write_line(
        f"hardening: faults injected {figures['faults_injected']}, survived {figures['faults_survived']}, "
        f"trials lost {figures['trials_lost']}; bad inputs tried {figures['bad_inputs_tried']}, "
        f"answered with a clear error {figures['bad_inputs_answered_clearly']}")
