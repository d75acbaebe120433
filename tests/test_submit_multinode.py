"""``python -m raykd.submit`` on a two-node cluster (``ray.cluster_utils.Cluster``): the storage
check, and trials spread over both nodes.

The cluster (a head with 0 CPUs and two 1-CPU nodes) runs in a helper process, this file run
as a script, so that none of Ray's process-wide state (``ray_current_cluster``, internal KV)
touches the test process or other Ray instances on the machine; it is stopped through the
process ids it started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from proc_tools import descendants, free_port, kill_pids  # noqa: E402
from test_submit_jobs import report, write_space  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


class TwoNodes:
    def __init__(self):
        self.temp_dir = tempfile.mkdtemp(prefix="rkm", dir="/tmp")
        self.token = secrets.token_hex(16)
        self.dashboard_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                   RAY_TMPDIR=self.temp_dir)
        env.pop("RAY_ADDRESS", None)
        started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(self.dashboard_port), str(free_port())], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=open(Path(self.temp_dir) / "cluster.log", "w"), env=env, text=True,
            start_new_session=True)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=120)
        if not line or not line[0].strip():
            self.stop()
            raise RuntimeError(f"the two-node cluster did not start: {(Path(self.temp_dir) / 'cluster.log').read_text()[-2000:]}")
        self.info = json.loads(line[0])
        self.start_s = time.monotonic() - started

    def stop(self) -> None:
        pids = descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.stdin.close()  # the helper shuts the cluster down and exits
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        kill_pids(pids + descendants(self.process.pid))
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def two_nodes():
    cluster = TwoNodes()
    print(f"\n[two nodes] up in {cluster.start_s:.1f} s at {cluster.address}")
    yield cluster
    cluster.stop()


@pytest.fixture(autouse=True)
def token(two_nodes, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", two_nodes.token)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def trial_nodes(client, root: Path) -> dict[str, str]:
    """Node id of every trial: Tune records the trial process's pid, the state API each actor's node."""
    from ray.util.state.common import ListApiOptions, StateResource

    actors = client.state().list(StateResource.ACTORS, options=ListApiOptions(limit=10_000), raise_on_missing_output=False)
    node_of_pid = {a.pid: a.node_id for a in actors if a.pid}
    nodes = {}
    for result in root.glob("trial_*/result.json"):
        pids = {json.loads(line)["pid"] for line in result.read_text().splitlines() if line.strip()}
        assert len(pids) == 1, pids
        nodes[result.parent.name.removeprefix("trial_")] = node_of_pid[pids.pop()]
    return nodes


def test_trials_land_on_both_nodes_and_local_storage_must_be_shared(two_nodes, write_experiment, tmp_path, capsys):
    from raykd.results import load
    from raykd.submit.__main__ import main
    from raykd.submit.client import JobsClient

    space = write_space(tmp_path, write_experiment(), num_samples=2)
    storage = tmp_path / "results"
    args = [str(space), "--address", two_nodes.address, "--storage", str(storage), "--name", "spread"]
    with pytest.raises(SystemExit) as exit_info:
        from raykd.errors import run_cli

        run_cli(lambda _: main(args), "python -m raykd.submit")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count("\n") == 0, err
    assert "3 nodes" in err and "--shared-storage" in err and "s3://" in err
    client = JobsClient(two_nodes.address)
    assert client.list() == []  # nothing was submitted

    # On this machine the path is the same on every node: say so, and the search runs.
    code = main(args + ["--shared-storage", "--follow"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "3 nodes, 2 CPUs" in out
    trials = load(storage / "spread" / "tables")
    assert len(trials) == 2 and set(trials["stop_reason"]) == {"completed"}
    nodes = trial_nodes(client, storage / "spread")
    assert set(nodes) == set(trials["trial_id"])
    workers = set(two_nodes.info["workers"])
    assert set(nodes.values()) == workers, (nodes, two_nodes.info)  # one trial on each 1-CPU node
    report(capsys, f"two nodes: cluster up {two_nodes.start_s:.1f} s; trials {sorted(nodes)} on "
                   f"{len(set(nodes.values()))} nodes")


def _serve(dashboard_port: int, agent_port: int) -> None:
    """Run a head with 0 CPUs and two 1-CPU nodes until stdin closes; print their ids first."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port,
        "dashboard_agent_listen_port": agent_port})
    try:
        # Real nodes unpack the job's working_dir on their own disks; here they share one, so each
        # gets its own runtime_env folder (a node re-unpacking it would pull the driver's cwd away).
        workers = [cluster.add_node(num_cpus=1, runtime_env_dir_name=f"runtime_resources_{i}") for i in range(2)]
        cluster.wait_for_nodes()
        print(json.dumps({"gcs": cluster.address, "head": cluster.head_node.node_id,
                          "workers": [w.node_id for w in workers]}), flush=True)
        sys.stdin.read()
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
