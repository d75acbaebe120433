"""A local multi-node Ray cluster (``ray.cluster_utils.Cluster``) run in a helper process.

The cluster (a head with 0 CPUs and two (or ``workers``) 1-CPU nodes, token authentication) lives in its own
process, this file run as a script, so that none of Ray's process-wide state
(``ray_current_cluster``, internal KV) touches the test process or other Ray instances on the
machine. The test talks to it over stdin/stdout (one JSON line per command) and stops it
through the process ids it started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from proc_tools import descendants, free_port, stop_process_tree  # noqa: E402


class TwoNodes:
    def __init__(self, workers: int = 2):
        self.temp_dir = tempfile.mkdtemp(prefix="rkm", dir="/tmp")
        self.token = secrets.token_hex(16)
        self.dashboard_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                   RAY_TMPDIR=self.temp_dir)
        env.pop("RAY_ADDRESS", None)
        started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(self.dashboard_port), str(free_port()), str(workers)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=open(Path(self.temp_dir) / "cluster.log", "w"), env=env, text=True,
            start_new_session=True)
        self.info = self._reply(timeout=120, what="the multi-node cluster did not start")
        self.start_s = time.monotonic() - started

    @property
    def gcs_address(self) -> str:
        return self.info["gcs"]

    def env(self) -> dict:
        """Environment for a process that joins the cluster (its token)."""
        env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0")
        env.pop("RAY_ADDRESS", None)
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        return env

    def remove_node_running(self, title: str) -> dict:
        """Kill the worker node (no graceful shutdown) that runs a process whose command line
        holds ``title`` (Ray names a trial's process ``ray::ImplicitFunc...``); returns
        ``{"removed": node id, "pid": that process}``."""
        self.process.stdin.write(f"remove_node_running {title}\n")
        self.process.stdin.flush()
        return self._reply(timeout=60, what=f"no node running {title!r} was removed")

    def remove_node_of(self, pid: int) -> dict:
        """Kill the worker node (no graceful shutdown) whose raylet started process ``pid``;
        returns ``{"removed": node id, "pid": pid}`` (``removed`` None when no node runs it)."""
        self.process.stdin.write(f"remove_node_of {pid}\n")
        self.process.stdin.flush()
        return self._reply(timeout=60, what=f"no node running pid {pid} was removed")

    def _reply(self, timeout: float, what: str) -> dict:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=timeout)
        if not line or not line[0].strip():
            log = (Path(self.temp_dir) / "cluster.log").read_text()[-2000:]  # stop() removes the folder
            self.stop()
            raise RuntimeError(f"{what}: {log}")
        return json.loads(line[0])

    def stop(self) -> None:
        # Closing stdin makes the helper shut the cluster down and exit.
        stop_process_tree(self.process, self.process.stdin.close, timeout=60)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _serve(dashboard_port: int, agent_port: int, count: int) -> None:
    """Run a head with 0 CPUs and ``count`` 1-CPU nodes until stdin closes; print their ids first."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port,
        "dashboard_agent_listen_port": agent_port})
    try:
        # Real nodes unpack the job's working_dir on their own disks; here they share one, so each
        # gets its own runtime_env folder (a node re-unpacking it would pull the driver's cwd away).
        workers = [cluster.add_node(num_cpus=1, runtime_env_dir_name=f"runtime_resources_{i}") for i in range(count)]
        cluster.wait_for_nodes()
        print(json.dumps({"gcs": cluster.address, "head": cluster.head_node.node_id,
                          "workers": [w.node_id for w in workers]}), flush=True)
        for command in sys.stdin:  # until stdin closes
            name, _, arg = command.strip().partition(" ")
            if name in ("remove_node_running", "remove_node_of"):
                found = [(w, pid) for w in workers for pid in descendants(w.all_processes["raylet"][0].process.pid)
                         if (arg in _cmdline(pid) if name == "remove_node_running" else pid == int(arg))]
                if not found:
                    print(json.dumps({"removed": None, "pid": None}), flush=True)
                    continue
                node, pid = found[0]
                cluster.remove_node(node, allow_graceful=False)
                workers.remove(node)
                print(json.dumps({"removed": node.node_id, "pid": pid}), flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
