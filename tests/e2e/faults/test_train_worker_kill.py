"""Ray Train worker: ``--workers 2`` reports like one worker and resumes from its checkpoint
after a worker is SIGKILLed mid-epoch.

In tests/e2e/faults/, which runs before the submit tests, whose clusters change the token Ray
caches in-process.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from raykd.config import load_experiment
from raykd.train.checkpoint import STATE_FILE, load_state
from raykd.train.loop import fit

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _kill_rank_after_first_checkpoint(storage: Path, pid_dir: Path, record: dict) -> None:
    deadline = time.time() + 240
    while time.time() < deadline:
        # Two persisted checkpoints: the first is then surely registered by the controller
        # (a checkpoint still being reported when its worker dies is not resumed from).
        if len(list(storage.rglob("checkpoint_*/state.pt"))) >= 2 and (pid_dir / "rank1.pid").exists():
            pid = int((pid_dir / "rank1.pid").read_text())
            record["killed_pid"], record["time"] = pid, time.time()
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.2)


@pytest.mark.fault("Ray Train worker SIGKILL", trials=1)
def test_two_workers_report_like_one_and_resume_after_a_kill(ray_local, write_experiment, tmp_path, fault_ledger):
    from raykd.train.worker import make_trainer

    path = write_experiment(train={"epochs": 4})
    cfg = load_experiment(path)
    single: list[dict] = []
    fit(cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1})}),
        on_epoch_end=lambda record, s: single.append(record.as_report()), progress=False, log=lambda line: None)

    storage, pid_dir = tmp_path / "ray_train", tmp_path / "pids"
    pid_dir.mkdir()
    trainer = make_trainer(cfg.model_dump(mode="json"), workers=2, storage_path=str(storage),
                           name="ddp", max_failures=2, pid_dir=str(pid_dir))
    record: dict = {}
    killer = threading.Thread(target=_kill_rank_after_first_checkpoint, args=(storage, pid_dir, record))
    killer.start()
    found = 0
    try:
        result = trainer.fit()
        found = int(result.error is None)
    finally:
        killer.join()
        fault_ledger(found)
    assert result.error is None
    assert "killed_pid" in record, "no checkpoint appeared to kill a worker after"
    assert int((pid_dir / "rank1.pid").read_text()) != record["killed_pid"]  # the group was restarted

    with result.checkpoint.as_directory() as folder:
        history = load_state(Path(folder) / STATE_FILE)["history"]
    assert [m["epoch"] for m in history] == [1, 2, 3, 4]  # each epoch once: resumed, not restarted
    assert history[0]["timestamp"] < record["time"] < history[-1]["timestamp"]
    assert all(m["num_workers"] == 2 for m in history)
    ray_keys = set(result.metrics)
    assert set(single[0]) - {"num_workers"} <= ray_keys
    assert result.metrics["executor"] == "train" and result.metrics["epoch"] == 4
