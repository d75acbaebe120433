"""``python -m raykd.submit`` against a real one-node cluster this module starts and stops itself.

The cluster is ``ray start --head --block`` in a process group of its own, with its own temp
dir, free ports and a token (``RAY_AUTH_MODE=token``); it is stopped through the process ids
it started, never with ``ray stop`` (which would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from jobs_tools import report, write_space
from proc_tools import free_port, stop_process_tree

from raykd.results import load, load_table
from raykd.submit.__main__ import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


# ---------------------------------------------------------------------------- the cluster


class RayHead:
    """A one-node cluster (head with ``num_cpus`` CPUs and the dashboard on 127.0.0.1)."""

    def __init__(self, num_cpus: int = 2):
        self.temp_dir = tempfile.mkdtemp(prefix="rks", dir="/tmp")  # short: Ray's unix sockets live here
        self.token = secrets.token_hex(16)
        self.dashboard_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                   RAY_TMPDIR=self.temp_dir)
        env.pop("RAY_ADDRESS", None)
        ports = [free_port() for _ in range(5)]
        command = [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1", "--port", str(ports[0]), "--num-cpus", str(num_cpus),
            "--include-dashboard=true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--ray-client-server-port", str(ports[1]), "--dashboard-agent-listen-port", str(ports[2]),
            "--dashboard-agent-grpc-port", str(ports[3]), "--runtime-env-agent-port", str(ports[4]),
            "--object-store-memory", str(200 * 1024 * 1024), "--disable-usage-stats", "--temp-dir", self.temp_dir,
        ]
        self.log = open(Path(self.temp_dir) / "ray_start.log", "w")
        started = time.monotonic()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        try:
            self._wait_ready(timeout_s=90)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - started

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        request = urllib.request.Request(f"{self.address}/api/version",
                                         headers={"Authorization": f"Bearer {self.token}"})
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {(Path(self.temp_dir) / 'ray_start.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the dashboard at {self.address} did not come up")
            time.sleep(0.3)

    def stop(self) -> None:
        """SIGTERM to ``ray start --block`` (it drains and stops its processes), then SIGKILL what is left."""
        stop_process_tree(self.process, self.process.terminate, timeout=40)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    """One cluster for this module's tests (module scope: it is gone before other modules run)."""
    head = RayHead()
    print(f"\n[cluster] up in {head.start_s:.1f} s at {head.address}")
    yield head
    started = time.monotonic()
    head.stop()
    print(f"\n[cluster] stopped in {time.monotonic() - started:.1f} s")


@pytest.fixture(autouse=True)
def token(cluster, monkeypatch):
    """The client side of token auth: Ray's standard variables."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster.token)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return cluster.token


# ---------------------------------------------------------------------------- tiny searches


def timings(out: str, job_id: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(rf"\[raykd\.submit\] {re.escape(job_id)}: (\w+) after ([\d.]+) s", out)}


def test_demo_search_follows_to_success(cluster, write_experiment, tmp_path, capsys):
    space = write_space(tmp_path, write_experiment(), num_samples=3)
    storage = tmp_path / "results"
    code = main([str(space), "--address", cluster.address, "--storage", str(storage), "--name", "demo", "--follow"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "submitted job raykd-demo" in out
    assert f"results: {storage}/demo" in out
    trials = load(storage / "demo" / "tables")
    assert len(trials) == 3 and trials["trial_id"].is_unique
    assert set(trials["stop_reason"]) == {"completed"} and set(trials["epochs_run"]) == {2}
    assert "search demo" in out and "done: 3 trials" in out  # the search's own summary, streamed
    seen = timings(out, "raykd-demo")
    assert seen["SUCCEEDED"] >= seen["RUNNING"]
    report(capsys, f"demo job (3 trials x 2 epochs): submit->RUNNING {seen['RUNNING']:.1f} s, "
                   f"submit->SUCCEEDED {seen['SUCCEEDED']:.1f} s")

    # The same job through --status, --logs and --list.
    assert main(["--status", "raykd-demo", "--address", cluster.address]) == 0
    status = capsys.readouterr().out
    assert "raykd-demo: SUCCEEDED" in status and f"results: {storage}/demo" in status
    assert main(["--logs", "raykd-demo", "--address", cluster.address]) == 0
    assert "done: 3 trials" in capsys.readouterr().out
    assert main(["--list", "--address", cluster.address]) == 0
    assert re.search(r"raykd-demo\s+SUCCEEDED .* search demo", capsys.readouterr().out)


def test_stopped_search_resumes_with_every_trial_once(cluster, write_experiment, tmp_path, capsys):
    from raykd.submit.client import JobsClient

    space = write_space(tmp_path, write_experiment(), num_samples=4, epochs=3)
    storage = tmp_path / "results"
    args = [str(space), "--address", cluster.address, "--storage", str(storage), "--name", "stopme"]
    assert main(args) == 0
    capsys.readouterr()
    client = JobsClient(cluster.address)
    submitted = time.monotonic()
    deadline = submitted + 120
    while "epoch 1/3" not in client.logs("raykd-stopme"):  # the first trial is under way
        assert client.status("raykd-stopme") not in ("SUCCEEDED", "FAILED", "STOPPED"), client.logs("raykd-stopme")
        assert time.monotonic() < deadline
        time.sleep(0.3)
    stop_at = time.monotonic()
    assert main(["--stop", "raykd-stopme", "--address", cluster.address]) == 0
    stop_s = time.monotonic() - stop_at
    out = capsys.readouterr().out
    assert "raykd-stopme: STOPPED" in out and "--resume --name stopme" in out
    before = load(storage / "stopme" / "tables")
    assert (before["stop_reason"] == "completed").sum() < 4  # stopped mid-search

    code = main(args + ["--resume", "--follow"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "submitted job raykd-stopme-r1 (resume of search stopme)" in out
    trials = load(storage / "stopme" / "tables")
    assert len(trials) == 4 and trials["trial_id"].is_unique, trials[["trial_id", "stop_reason"]]
    assert set(trials["stop_reason"]) == {"completed"} and set(trials["epochs_run"]) == {3}
    assert set(before["trial_id"]) <= set(trials["trial_id"])  # the same trials, continued
    epochs = load_table(storage / "stopme" / "tables", table="epochs")
    assert epochs.num_rows == 12
    runs = load_table(storage / "stopme" / "tables", table="runs")
    assert runs["resumed"].to_pylist() == [False, True]
    seen = timings(out, "raykd-stopme-r1")
    report(capsys, f"stop: --stop->STOPPED {stop_s:.1f} s (after {stop_at - submitted:.1f} s of running); resume "
                   f"(4 trials x 3 epochs): submit->RUNNING {seen['RUNNING']:.1f} s, "
                   f"submit->SUCCEEDED {seen['SUCCEEDED']:.1f} s")


def test_bad_job_ids_and_tokens_are_one_line_errors(cluster, capsys, monkeypatch):
    for action in ("--status", "--logs", "--stop"):
        with pytest.raises(SystemExit) as exit_info:
            _cli([action, "no-such-job", "--address", cluster.address])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "no job 'no-such-job'" in err, err
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong-token")
    with pytest.raises(SystemExit) as exit_info:
        _cli(["--list", "--address", cluster.address])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count("\n") == 0 and "rejected the token" in err, err
    assert "wrong-token" not in err and cluster.token not in err
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    # No token anywhere: a fresh process, since Ray caches in-process the token an earlier
    # ray.init loaded (resetting that cache would break the session's other Ray tests).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = tempfile.mkdtemp()  # no ~/.ray/auth_token either
    proc = subprocess.run([sys.executable, "-m", "raykd.submit", "--list", "--address", cluster.address],
                          capture_output=True, text=True, env=env, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.count("\n") == 0, err
    assert "requires a token" in err and "RAY_AUTH_TOKEN" in err, err


def _cli(argv: list[str]) -> None:
    from raykd.errors import run_cli

    run_cli(lambda _: main(argv), "python -m raykd.submit")


def test_failed_search_follows_to_exit_1(cluster, write_experiment, tmp_path, capsys):
    space = write_space(tmp_path, write_experiment(), num_samples=1)
    # Valid here, impossible there: the search itself refuses GPU trials on a CPU-only cluster.
    code = main([str(space), "--address", cluster.address, "--storage", str(tmp_path / "results"), "--name", "gpu",
                 "--set", "resources.gpus_per_worker=1", "--follow"])
    out = capsys.readouterr().out
    assert code == 1, out[-3000:]
    assert "note: the space asks for GPUs and the cluster has none now" in out
    assert "each worker needs 1.0 GPU but the cluster has 0" in out
    assert "job raykd-gpu FAILED" in out


def test_second_job_finds_the_teacher_in_the_storage_cache(cluster, experiment_dict, tiny_data, tiny_teacher, tmp_path,
                                                           capsys):
    """An experiment outside the project with relative data paths and no cache_dir: both jobs read
    the user's data (the package's copy of the experiment has none beside it) and share
    STORAGE/cache, so the second job trains no teacher."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "shapes").symlink_to(tiny_data, target_is_directory=True)
    exp = experiment_dict(teacher=tiny_teacher, train={"epochs": 1})
    del exp["cache_dir"]
    for split in ("train", "val"):
        exp["data"][split] = {"annotations": f"shapes/annotations/{split}.json", "images": f"shapes/images/{split}"}
    (user / "exp.yaml").write_text(yaml.safe_dump(exp))
    space = write_space(user, Path("exp.yaml"), num_samples=1, epochs=1)
    storage = tmp_path / "results"
    outs = []
    for name in ("first", "second"):
        code = main([str(space), "--address", cluster.address, "--storage", str(storage), "--name", name, "--follow"])
        outs.append(capsys.readouterr().out)
        assert code == 0, outs[-1][-3000:]
        assert f"--set cache_dir={storage}/cache" in outs[-1]
        assert f"data.train.annotations={(user / 'shapes/annotations/train.json').resolve()}" in outs[-1]
        assert len(load(storage / name / "tables")) == 1
    teachers = storage / "cache" / "teachers"
    assert f"teacher: not found, training fcos resnet18/FPN64 for 1 epochs into {teachers}/" in outs[0]
    cached = re.search(rf"teacher: cached at ({re.escape(str(teachers))}/\w+/model_best\.pt)", outs[1])
    assert cached and "teacher: not found" not in outs[1], outs[1][-3000:]
    assert Path(cached[1]).is_file()
    report(capsys, f"second job: {cached[0]}")
