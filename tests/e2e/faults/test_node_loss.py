"""Worker nodes removed from a ``ray.cluster_utils.Cluster`` (a 0-CPU head and 1-CPU nodes, all on
this machine) mid-trial: a search's trial is retried on another node from its last checkpoint,
the search finishes and holds every trial once; a two-rank Ray Train trial losing the node of its
second rank restarts its worker group and resumes from its checkpoint."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster_tools import TwoNodes
from fault_tools import check_search, intact_trials
from proc_tools import kill_session

from raykd.train.checkpoint import STATE_FILE, load_state

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.mark.fault("node removed", trials=1)
def test_a_node_lost_mid_trial_is_retried_on_another_node(fault_space, search_driver, tmp_path, fault_ledger):
    root = tmp_path / "results" / "node-loss"
    cluster = TwoNodes()
    try:
        space = fault_space(num_samples=1, epochs=5, space={"distill.method": {"choice": ["mgd"]}})
        driver = search_driver(space, name="node-loss", extra=["--address", cluster.gcs_address])
        driver.start(env=cluster.env())
        driver.wait_for(r"epoch 2/5")
        removed = cluster.remove_node_running("ImplicitFunc")
        assert removed["removed"] in cluster.info["workers"], removed
        assert driver.finish() == 0, driver.text()[-3000:]
    finally:
        cluster.stop()
        fault_ledger(len(intact_trials(root, epochs=5)))
    (trial,) = check_search(root, trials_expected=1, epochs=5)["trial_id"]
    assert driver.text().count(f"trial {trial} started") == 2  # first run, then the retry

    reports = [json.loads(line) for line in (root / f"trial_{trial}" / "result.json").read_text().splitlines()]
    before = [r["epoch"] for r in reports if r["pid"] == removed["pid"]]
    after = [r["epoch"] for r in reports if r["pid"] != removed["pid"]]
    # result.json is Tune's own log, which it rewinds to what it had synced when it restores a
    # trial: the first process's epoch 2 may or may not be in it. The driver printed that epoch
    # (wait_for above) and the tables hold every epoch once (check_search).
    assert before[:1] == [1] and after and after[-1] == 5
    # The retry ran on the surviving node (the removed node's processes are gone, the head has no
    # CPU) and continued from a checkpoint: epoch 1 was not trained again.
    assert len({r["pid"] for r in reports if r["pid"] != removed["pid"]}) == 1
    assert min(after) >= 2, reports

    # The driver ran with the cluster's token in its environment: it is in no log or file.
    secret = cluster.token.encode()
    assert secret not in driver.text().encode()
    leaked = [p for p in (tmp_path / "results").rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert leaked == [], leaked


@pytest.mark.fault("node removed, search over two nodes", trials=2)
def test_a_search_spread_over_two_nodes_loses_one_and_keeps_every_trial_once(fault_space, search_driver, tmp_path,
                                                                            fault_ledger):
    """Two trials at once on two 1-CPU nodes (the head has no CPU): one trial per node. The node
    of one is removed mid-trial; that trial is retried from its checkpoint on the other node once
    it is free, and the tables hold both trials exactly once with every epoch once."""
    root = tmp_path / "results" / "spread"
    cluster = TwoNodes()
    try:
        space = fault_space(num_samples=2, epochs=4, space={"distill.method": {"choice": ["none", "mgd"]}})
        driver = search_driver(space, name="spread", extra=["--address", cluster.gcs_address])
        driver.start(env=cluster.env())
        driver.wait_for(r"trial (\w+) started[\s\S]*trial (?!\1)\w+ started")  # both at once: one on each node
        started = set(re.findall(r"trial (\w+) started", driver.text()))
        for trial in started:
            driver.wait_for(rf"trial {trial} epoch 2/4")
        assert "completed" not in driver.text()
        removed = cluster.remove_node_running("ImplicitFunc")
        assert removed["removed"] in cluster.info["workers"], removed
        assert driver.finish() == 0, driver.text()[-3000:]
    finally:
        cluster.stop()
        fault_ledger(len(intact_trials(root, epochs=4)))
    trials = check_search(root, trials_expected=2, epochs=4)
    lost = [t for t in trials["trial_id"]
            if any(json.loads(line)["pid"] == removed["pid"]
                   for line in (root / f"trial_{t}" / "result.json").read_text().splitlines())]
    assert len(lost) == 1, lost
    (trial,) = lost
    assert driver.text().count(f"trial {trial} started") == 2  # first run, then the retry
    reports = [json.loads(line) for line in (root / f"trial_{trial}" / "result.json").read_text().splitlines()]
    after = [r["epoch"] for r in reports if r["pid"] != removed["pid"]]
    assert after and after[-1] == 4 and min(after) >= 2, reports  # continued from a checkpoint


TRAINER = """
import json, sys
import ray
from raykd.config import load_experiment
from raykd.train.worker import make_trainer

experiment, storage, pid_dir = sys.argv[1:4]
ray.init(address="auto", log_to_driver=False)
cfg = load_experiment(experiment)
trainer = make_trainer(cfg.model_dump(mode="json"), workers=2, gpus_per_worker=0, storage_path=storage, name="ddp",
                       max_failures=2, pid_dir=pid_dir)
result = trainer.fit()
print(json.dumps({"error": None if result.error is None else repr(result.error), "epoch": result.metrics.get("epoch"),
                  "checkpoint": result.checkpoint.path if result.checkpoint else None}))
"""


@pytest.mark.fault("node of a Ray Train trial's second rank removed", trials=1)
def test_a_two_rank_trial_loses_its_second_ranks_node_and_resumes(write_experiment, tmp_path, fault_ledger):
    """Two DDP ranks on two of three 1-CPU nodes (1 CPU each, so never on one node): the node of
    rank 1 is removed after the first checkpoints; the worker group restarts on the two nodes
    left and resumes from the checkpoint: every epoch once, 4 of 4."""
    storage, pid_dir = tmp_path / "ray_train", tmp_path / "pids"
    pid_dir.mkdir()
    experiment = write_experiment(train={"epochs": 4})
    found, result = 0, None
    cluster = TwoNodes(workers=3)
    log = open(tmp_path / "trainer.log", "w")
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, str(experiment), str(storage), str(pid_dir)],
                               env={**cluster.env(), "RAY_ADDRESS": cluster.gcs_address}, stdout=subprocess.PIPE,
                               stderr=log, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # Two persisted checkpoints: the first is then surely registered by the controller.
        while len(list(storage.rglob("checkpoint_*/state.pt"))) < 2 or not (pid_dir / "rank1.pid").exists():
            assert trainer.poll() is None and time.monotonic() < deadline, (tmp_path / "trainer.log").read_text()[-3000:]
            time.sleep(0.2)
        rank1 = int((pid_dir / "rank1.pid").read_text())
        removed = cluster.remove_node_of(rank1)
        assert removed["removed"] in cluster.info["workers"], removed
        out, _ = trainer.communicate(timeout=400)
        # Ray may print a raylet line to the driver's stdout after the result (a node was removed)
        result = json.loads(next(line for line in reversed(out.splitlines()) if line.startswith('{"error"')))
        found = int(result["error"] is None)
    finally:
        kill_session(trainer.pid)
        cluster.stop()
        log.close()
        fault_ledger(found)
    assert result["error"] is None and result["epoch"] == 4, (tmp_path / "trainer.log").read_text()[-3000:]
    assert int((pid_dir / "rank1.pid").read_text()) != rank1  # the group was restarted
    history = load_state(Path(result["checkpoint"]) / STATE_FILE)["history"]
    assert [m["epoch"] for m in history] == [1, 2, 3, 4]  # each epoch once: resumed, not restarted
    assert all(m["num_workers"] == 2 for m in history)
