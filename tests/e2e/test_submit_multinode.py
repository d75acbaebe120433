"""``python -m raykd.submit`` on a two-node cluster (``ray.cluster_utils.Cluster``): the storage
check, and trials spread over both nodes.

The cluster (a head with 0 CPUs and two 1-CPU nodes) runs in a helper process, see
tests/support/cluster_tools.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cluster_tools import TwoNodes
from jobs_tools import report, write_space

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


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
