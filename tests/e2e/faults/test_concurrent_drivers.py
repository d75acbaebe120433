"""Two drivers on one search folder: the second one refuses before it starts Ray or writes
anything; a driver SIGKILLed while holding the folder is taken over by ``--resume``. The same
for two ``raykd.train`` runs on one output_dir; two processes needing one missing teacher train
it once (a file lock), and a holder SIGKILLed mid-training hands it to the waiting one."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fault_tools import REPO, SearchDriver, check_search, intact_trials

from raykd.config import load_experiment
from raykd.results import load
from raykd.train.teacher import ensure_teacher, teacher_cache_path, teacher_metrics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROG = "python -m raykd.search"


def refusal(root, owner_pid: int) -> str:
    """The one line a refused driver prints (a regex)."""
    return (rf"^{PROG}: error: {re.escape(str(root))}: --name: in use by {PROG} on host "
            rf"{re.escape(socket.gethostname())}, pid {owner_pid}, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC; "
            r"two drivers must not write one search: .* or use another --name$")


def _only_line(driver: SearchDriver) -> str:
    lines = [line for line in driver.text().splitlines() if line.strip()]
    assert len(lines) == 1, driver.text()[-3000:]
    return lines[0]


@pytest.mark.fault("double start", trials=2)
def test_two_drivers_started_together_one_runs(fault_space, tmp_path, fault_ledger):
    space = fault_space(num_samples=2, epochs=2)
    root = tmp_path / "results" / "twice"
    drivers = [SearchDriver(space, tmp_path / "results", "twice", tmp_path / f"logs-{i}") for i in range(2)]
    try:
        for driver in drivers:
            driver.start()
        codes = [driver.finish() for driver in drivers]
        assert sorted(codes) == [0, 2], [d.text()[-2000:] for d in drivers]
        winner, loser = (drivers[0], drivers[1]) if codes[0] == 0 else (drivers[1], drivers[0])
        assert re.match(refusal(root, winner.process.pid), _only_line(loser)), _only_line(loser)
        assert "best (search phase)" in winner.text()
        check_search(root, trials_expected=2, epochs=2)
        assert len(load(root / "tables", table="runs")) == 1  # the refused driver wrote no run row
        assert not (root / ".owner.json").exists()  # released at the end
    finally:
        fault_ledger(len(intact_trials(root, epochs=2)))
        for driver in drivers:
            driver.close()


@pytest.mark.fault("resume while running", injected=2)
@pytest.mark.fault("driver SIGKILL holding the folder", trials=2)
def test_resume_while_running_refused_then_killed_owner_taken_over(fault_space, search_driver, tmp_path,
                                                                   fault_ledger):
    # long enough to outlive the two refused starts: on an idle machine 4 epochs took 14 s, less
    # than two drivers take to start, be refused and exit
    epochs = 12
    space = fault_space(num_samples=2, epochs=epochs)
    root = tmp_path / "results" / "faulty"
    first = search_driver(space)
    first.start()
    first.wait_for(r"trial \w+ started")
    # --resume typed while it runs, and a plain double submit, both at once
    others = [SearchDriver(space, tmp_path / "results", "faulty", tmp_path / f"logs-second{i}") for i in range(2)]
    try:
        others[0].start("--resume")
        others[1].start()
        codes = [other.finish(timeout=300) for other in others]
        assert first.process.poll() is None, first.text()[-3000:]  # the running driver is untouched
        assert codes == [2, 2]
        for other in others:
            assert re.match(refusal(root, first.process.pid), _only_line(other)), _only_line(other)
    finally:
        for other in others:
            other.close()
    try:
        first.wait_for(rf"epoch 1/{epochs}")
        first.kill()  # SIGKILL while holding the folder: its owner file stays
        assert (root / ".owner.json").exists()
        first.start("--resume")
        assert first.finish() == 0, first.text()[-3000:]
        assert f"search folder {root}: taken over from its last driver (its process has ended)" in first.text()
    finally:
        fault_ledger(len(intact_trials(root, epochs=epochs)))
    check_search(root, trials_expected=2, epochs=epochs)


class Process:
    """A command in its own session, its output in a file."""

    def __init__(self, cmd: list[str], log: Path):
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text(), re.MULTILINE):
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {pattern!r}:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} after {timeout} s:\n{self.text()[-3000:]}"
            time.sleep(0.05)

    def finish(self, timeout: float = 600) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.mark.fault("double start and resume while running (raykd.train)", injected=2)
def test_two_train_runs_on_one_output_dir(write_experiment, tmp_path, fault_ledger):
    # Far more epochs than the test waits for: the first run must still hold the folder when the
    # refused starts are checked, however slow they are to start (it is SIGKILLed after them).
    path = write_experiment(train={"epochs": 1000})
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "raykd.train", str(path), "--no-progress"]
    first = Process(cmd, tmp_path / "first.log")
    try:
        first.wait_for(r"epoch 1/1000")
        for flags in ([], ["--resume"]):
            second = subprocess.run(cmd + flags, cwd=REPO, capture_output=True, text=True, timeout=300)
            assert second.returncode == 2 and second.stdout == "", second.stdout[-2000:]
            assert re.fullmatch(rf"python -m raykd.train: error: {re.escape(str(run))}: train.output_dir: in use by "
                                rf"python -m raykd.train on host \S+, pid {first.proc.pid}, started [^;]+; another run "
                                r"is writing there: .*train.output_dir\n", second.stderr), second.stderr
            assert first.proc.poll() is None
    finally:
        first.kill()  # SIGKILL: its owner file stays
    assert (run / ".owner.json").exists()
    done = sorted(json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines())
    resumed = subprocess.run(cmd + ["--resume", "--set", f"train.epochs={done[-1] + 1}"], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"output folder {run}: taken over from its last run (its process has ended)" in resumed.stdout
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, done[-1] + 2))
    assert not (run / ".owner.json").exists()


# The first holder: ensure_teacher whose training stalls (it is SIGKILLed while holding the lock).
STALLED_HOLDER = textwrap.dedent("""
    import sys, time
    import raykd.train.loop
    from raykd.config import load_experiment
    from raykd.train.teacher import ensure_teacher
    raykd.train.loop.fit = lambda *args, **kwargs: time.sleep(600)
    ensure_teacher(load_experiment(sys.argv[1]), progress=False)
""")
ENSURE = "import sys; from raykd.config import load_experiment; from raykd.train.teacher import ensure_teacher; " \
         "print('checkpoint', ensure_teacher(load_experiment(sys.argv[1]), progress=False), flush=True)"


@pytest.mark.fault("teacher cache: holder SIGKILLed while another process waits")
def test_teacher_cache_lock_against_other_processes(write_experiment, tiny_teacher, tmp_path, fault_ledger):
    path = write_experiment(teacher=tiny_teacher, distill={"method": "mgd"})
    target = teacher_cache_path(load_experiment(path))
    holder = Process([sys.executable, "-c", STALLED_HOLDER, str(path)], tmp_path / "holder.log")
    waiter = None
    try:
        holder.wait_for(r"teacher: not found, training")
        waiter = Process([sys.executable, "-c", ENSURE, str(path)], tmp_path / "waiter.log")
        waiter.wait_for(r"teacher: another process is training it \(lock .*\.lock\); waiting")
        time.sleep(1.0)
        assert "training" not in waiter.text().split("waiting", 1)[1] and not target.exists()
        holder.kill()  # SIGKILL while holding the lock: the kernel releases it
        assert waiter.finish() == 0, waiter.text()[-3000:]
    finally:
        holder.kill()
        if waiter is not None:
            waiter.kill()
    log = waiter.text()
    assert log.index("waiting") < log.index("teacher: not found, training") < log.index(f"checkpoint {target}")
    assert teacher_metrics(target)["epoch"] == 1  # a whole checkpoint
    lines = []
    assert ensure_teacher(load_experiment(path), log=lines.append, progress=False) == str(target)
    assert lines == [f"teacher: cached at {target}"]


@pytest.mark.fault("search folder taken over from a live driver")
def test_driver_whose_folder_is_taken_over_stops_before_publishing(fault_space, search_driver, tmp_path,
                                                                   fault_ledger):
    """Another host judged this driver gone (no heartbeat) and took the folder: the driver finds a
    foreign owner at its next table publish and stops, adding nothing to the tables."""
    space = fault_space(num_samples=2, epochs=3)
    root = tmp_path / "results" / "faulty"
    driver = search_driver(space)
    driver.start()
    driver.wait_for(r"trial \w+ started")
    owner = json.loads((root / ".owner.json").read_text())
    (root / ".owner.json").write_text(json.dumps({**owner, "id": "f" * 32, "host": "elsewhere", "pid": 1}))
    parts = {p.name for p in (root / "tables").glob("*/*.parquet")}
    code = driver.finish(timeout=300)
    errors = [line for line in driver.text().splitlines() if line.startswith(f"{PROG}: error:")]
    assert code == 2 and errors == [
        f"{PROG}: error: {root}: this folder was taken over by {PROG} on host elsewhere, pid 1, started "
        f"{owner['started_at']} while {PROG} ran; stopped writing to it"], driver.text()[-3000:]
    assert "Traceback" not in driver.text()
    # At most the one publish under way when the owner file changed lands after it.
    assert len({p.name for p in (root / "tables").glob("*/*.parquet")} - parts) <= 2
    assert json.loads((root / ".owner.json").read_text())["host"] == "elsewhere"  # not removed by the old driver
