"""GPU resources without a GPU: Ray's logical GPUs (``ray.init(num_gpus=...)``) show what each
trial and each Ray Train worker asks for and how many run at once, with both executors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raykd.config import ScheduleConfig
from raykd.errors import UserError
from raykd.search.space import ResourceSettings
from raykd.search.tuner import TRAIN_DRIVER_CPU, trial_resources
from raykd.train.setup import choose_device

PROBE = Path(__file__).parents[1] / "support" / "gpu_packing_probe.py"


@pytest.mark.parametrize("gpus", [0.25, 0.5, 1, 2])
def test_train_workers_request_exactly_gpus_per_worker(gpus):
    from raykd.train.worker import make_trainer

    trainer = make_trainer({"name": "x"}, workers=1, gpus_per_worker=gpus, cpus_per_worker=3,
                           storage_path="/tmp/unused", name="x")
    scaling = trainer.scaling_config
    assert scaling.use_gpu and scaling.resources_per_worker == {"CPU": 3, "GPU": gpus}


def test_cpu_workers_request_no_gpu():
    from raykd.train.worker import scaling_config

    scaling = scaling_config(2, 1, 0)
    assert not scaling.use_gpu and scaling.resources_per_worker == {"CPU": 1}


def test_trial_requests_per_executor():
    inline = ResourceSettings(cpus_per_worker=2, gpus_per_worker=0.25, executor="inline")
    train = ResourceSettings(cpus_per_worker=2, gpus_per_worker=0.25, executor="train")
    assert trial_resources(inline) == {"CPU": 2, "GPU": 0.25}
    assert trial_resources(train) == {"CPU": TRAIN_DRIVER_CPU}  # its worker holds the GPU share


@pytest.mark.parametrize("settings, message", [
    ({"workers_per_trial": 2, "gpus_per_worker": 0.5}, "fractional gpus_per_worker only for single-worker"),
    ({"gpus_per_worker": 1.5}, "a fraction of one GPU or whole GPUs"),
])
def test_what_ray_cannot_do_is_refused_before_it_starts(settings, message):
    with pytest.raises(ValueError, match=message):
        ResourceSettings(**settings)


def test_device_is_cpu_without_cuda_and_refused_when_cuda_is_asked_for():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert choose_device(ScheduleConfig(device="auto"), "cuda:1") == torch.device("cpu")
    with pytest.raises(UserError, match="no GPU is visible"):
        choose_device(ScheduleConfig(device="cuda"))


def _probe(executor: str, gpus: float, num_gpus: float, want: int, out: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                                       os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, str(PROBE), executor, str(gpus), str(num_gpus), str(want), str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the probe shuts its Ray down on SIGTERM
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    return [json.loads(p.read_text()) for p in sorted(out.glob("trial*.json"))]


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["inline", "train"])
def test_quarter_gpus_pack_four_trials_on_one_gpu(executor, tmp_path):
    rows = _probe(executor, 0.25, 1, 4, tmp_path)
    assert len(rows) == 4
    assert all(row["assigned"].get("GPU") == pytest.approx(0.25) for row in rows)
    assert {row["cuda_visible_devices"] for row in rows} == {"0"}
    assert max(row["seen_at_once"] for row in rows) == 4


@pytest.mark.slow
def test_half_gpus_run_two_at_once_through_ray_train(tmp_path):
    rows = _probe("train", 0.5, 1, 2, tmp_path)
    assert len(rows) == 4 and all(row["assigned"].get("GPU") == pytest.approx(0.5) for row in rows)
    assert max(row["seen_at_once"] for row in rows) == 2  # a whole GPU each (today's request) gives 1
