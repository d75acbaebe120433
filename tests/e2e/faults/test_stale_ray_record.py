"""A ``ray start --head`` cluster SIGKILLed (no ``ray stop``) leaves Ray's record of it behind.
``--address auto`` then fails in one line within seconds; without ``--address`` a search starts
its own private Ray and never contacts the dead address."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from fault_tools import REPO, check_search, intact_trials
from proc_tools import descendants, free_port, kill_pids, kill_session

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.fixture
def stale_record():
    """``(env, gcs address)``: RAY_TMPDIR holds the record of a head that was SIGKILLed."""
    temp = tempfile.mkdtemp(prefix="rkr", dir="/tmp")  # short: Ray's unix sockets live here
    env = dict(os.environ, RAY_TMPDIR=temp, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    ports = [free_port() for _ in range(4)]
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--num-cpus", "1", "--include-dashboard=false", "--ray-client-server-port",
         str(ports[0]), "--dashboard-agent-listen-port", str(ports[1]), "--dashboard-agent-grpc-port", str(ports[2]),
         "--runtime-env-agent-port", str(ports[3]), "--object-store-memory", str(100 * 1024 * 1024),
         "--disable-usage-stats"],
        env=env, stdout=open(Path(temp) / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        record = Path(temp, "ray", "ray_current_cluster")
        try:
            deadline = time.monotonic() + 120
            while not (record.exists() and record.read_text().strip()):
                assert head.poll() is None, (Path(temp) / "head.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the head did not write its record"
                time.sleep(0.2)
        finally:  # SIGKILL the head and every process it started, no ray stop
            kill_pids([head.pid, *descendants(head.pid)])
            kill_session(head.pid)
            head.wait()
        dead = record.read_text().strip()
        assert dead.endswith(f":{port}")
        yield env, dead
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.fault("stale Ray record of a killed head", trials=1)
def test_stale_record_address_auto_fails_fast_default_is_private(stale_record, fault_space, search_driver, tmp_path,
                                                                 fault_ledger):
    env, dead = stale_record
    record = f"{env['RAY_TMPDIR']}/ray/ray_current_cluster"
    space = fault_space(num_samples=1, epochs=1, space={"distill.method": {"choice": ["none"]}})
    storage = tmp_path / "results"
    search = [sys.executable, "-m", "raykd.search", str(space), "--storage", str(storage), "--name", "joined"]
    started = time.monotonic()
    proc = subprocess.run(search + ["--address", "auto"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout[-2000:]
    assert re.fullmatch(rf"python -m raykd.search: error: --address: no Ray cluster answers at {dead} \(from Ray's "
                        rf"record {re.escape(record)} \(from --address auto\)\): Connection refused; start one \(ray "
                        r"start --head\) or leave out --address to run a private local Ray\n", proc.stderr), proc.stderr
    assert took < 60, took  # the Python start-up (torch, Ray imports) included; the check itself is one connect
    assert not (storage / "joined").exists()
    print(f"\n--address auto on a stale record: refused in {took:.1f} s")

    train = subprocess.run([sys.executable, "-m", "raykd.train", str(space.parent / "exp_space.yaml"), "--workers",
                            "2", "--address", "auto"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert train.returncode == 2 and train.stderr.startswith(
        f"python -m raykd.train: error: --address: no Ray cluster answers at {dead} "), train.stderr
    assert len(train.stderr.splitlines()) == 1

    driver = search_driver(space, name="private")
    try:
        driver.start(env=env)
        assert driver.finish(timeout=400) == 0, driver.text()[-3000:]
    finally:
        fault_ledger(len(intact_trials(storage / "private", epochs=1)))
    assert dead not in driver.text() and "Connecting to existing Ray cluster" not in driver.text()
    check_search(storage / "private", trials_expected=1, epochs=1)
