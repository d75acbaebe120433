"""Shared fixtures: a tiny synthetic COCO set and tiny experiment files (64 px, a few images)."""

from __future__ import annotations

import copy
import os
import re
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
    (tests import no helper from a conftest: their helpers are modules of tests/support/)."""
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
# A fault test declares its faults before injecting them, with ``@pytest.mark.fault(kind,
# injected=N, trials=T)`` (on the test or on one ``pytest.param``): they are counted when the test
# is collected, and survived only when the test passes (one that fails, errors or is skipped
# survived none). Its ``T`` trials count as lost until the test records, in a ``finally``, how
# many ``fault_tools.intact_trials`` found: ``fault_ledger(found)``. Tests under tests/e2e/bad_inputs/
# count once per distinct input (``bad_input_key``). The totals are printed at the end of every
# run (and kept in pytest's cache under raykd/hardening): docs/reliability.md quotes them.

_FAULTS: dict[str, dict] = {}
_BAD_INPUTS: dict[str, bool] = {}
_BAD_INPUT_KEYS: dict[str, str] = {}  # nodeid -> the input it tries (bad_input_key)


def pytest_collection_finish(session):
    for item in session.items:
        marks = list(item.iter_markers("fault"))
        if marks:
            trials = sum(m.kwargs.get("trials", 0) for m in marks)
            _FAULTS[item.nodeid] = {"kinds": [m.args[0] for m in marks], "trials": trials, "lost": trials,
                                    "injected": sum(m.kwargs.get("injected", 1) for m in marks), "passed": False}
        if "bad_inputs/" in item.nodeid:
            _BAD_INPUT_KEYS[item.nodeid] = bad_input_key(item)


@pytest.fixture
def fault_ledger(request):
    """``record(found)``: the trials this fault test's search left intact, counted by
    ``fault_tools.intact_trials`` in a ``finally`` (every declared trial is lost until then)."""
    entry = _FAULTS.get(request.node.nodeid)
    if entry is None:
        raise RuntimeError("declare the faults this test injects with @pytest.mark.fault(kind, injected=, trials=)")

    def record(found: int) -> None:
        entry["lost"] = max(entry["trials"] - found, 0)

    return record


_TRAILING_INDEX = re.compile(r"-\d+$")


def bad_input_key(item) -> str:
    """The input a bad-input case tries: ``MODULE::CASE`` (a case id, or the test's name when it
    has none), so one input given to several commands (data check, train, search) counts once, as
    do cases that differ only by a trailing index (``random-bytes-0..2``); ``@pytest.mark.bad_input(KEY)``
    names the input a case repeats (the process-level cases)."""
    mark = item.get_closest_marker("bad_input")
    if mark is not None:
        return mark.args[0]
    case = item.callspec.id if hasattr(item, "callspec") else item.originalname
    return f"{item.path.name}::{_TRAILING_INDEX.sub('', case)}"


def pytest_runtest_logreport(report):
    if report.nodeid in _FAULTS:
        if report.when == "call":
            _FAULTS[report.nodeid]["passed"] = report.passed
        elif report.failed or report.skipped:  # setup or teardown: an error or a skip survives nothing
            _FAULTS[report.nodeid]["passed"] = False
    if "bad_inputs/" in report.nodeid and (report.when == "call" or report.failed or report.skipped):
        key = _BAD_INPUT_KEYS.get(report.nodeid, report.nodeid)
        _BAD_INPUTS[key] = _BAD_INPUTS.get(key, True) and report.passed


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if (not _FAULTS and not _BAD_INPUTS) or config.option.collectonly:
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
