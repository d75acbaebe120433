"""Fault-suite tools: a search driver run as a killable process, and the checks every fault
test makes on what a search left behind."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from proc_tools import kill_session

from raykd.errors import UserError
from raykd.results import load

REPO = Path(__file__).resolve().parents[2]


class SearchDriver:
    """``python -m raykd.search`` runs in their own sessions, each logging to its own file.

    Every process of every session started here (the driver and the local Ray it started) is
    SIGKILLed by :meth:`close`.
    """

    def __init__(self, space: Path, storage: Path, name: str, logs: Path, extra: list[str] | None = None):
        """``extra``: more flags; without ``--address`` the driver starts a local Ray of 2 CPUs."""
        extra = list(extra or [])
        self.cmd = [sys.executable, "-m", "raykd.search", str(space), "--storage", str(storage), "--name", name,
                    *([] if "--address" in extra else ["--num-cpus", "2"]), *extra]
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.sessions: list[int] = []
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def start(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        self.log_path = self.logs / f"driver-{len(self.sessions)}.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(self.cmd + list(args), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, env=env)
        self.sessions.append(self.process.pid)
        return self.process

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match:
        """Block until ``pattern`` (a regex) shows in the current driver's log."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.text(), re.MULTILINE)
            if found:
                return found
            assert self.process.poll() is None, f"driver exited ({self.process.returncode}) before {pattern!r}:\n" \
                                                f"{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} after {timeout} s:\n{self.text()[-3000:]}"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the driver, then everything its session started (Ray outlives its driver)."""
        self.process.kill()
        self.process.wait()
        kill_session(self.process.pid)

    def finish(self, timeout: float = 600) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"driver did not finish in {timeout} s:\n{self.text()[-3000:]}")

    def close(self) -> None:
        for sid in self.sessions:
            kill_session(sid)


def check_parts(tables: Path) -> int:
    """Every published part file of every table reads on its own; returns how many there are."""
    parts = [p for p in tables.glob("*/*.parquet") if not p.name.startswith(".")]
    for part in parts:
        pq.read_table(part)  # raises on a torn or corrupt file
    return len(parts)


def trial_folders(root: str | Path) -> set[str]:
    """Trial ids of the Tune trial folders (``trial_<id>``) under a search folder: a path or a URI."""
    import pyarrow.fs as pafs

    from raykd.results.store import resolve

    fs, path = resolve(root)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return {i.base_name.removeprefix("trial_") for i in infos
            if i.type == pafs.FileType.Directory and i.base_name.startswith("trial_")}


def intact_trials(root: str | Path, epochs: int, statuses: set[str] = frozenset({"TERMINATED"})) -> list[str]:
    """Ids of the trials a search left whole: in the trials table once, with a Tune trial folder,
    (under ``root`` or its ``confirm/``), a status in ``statuses`` and, when TERMINATED, every epoch
    1..``epochs`` in the epochs table.
    ``root``: a search folder, a path or a URI (``s3://bucket/prefix/NAME``).

    What the hardening ledger counts as found: a trial with a torn curve or no Tune folder is lost."""
    try:
        trials = load(f"{root}/tables")
        epoch_rows = load(f"{root}/tables", table="epochs")
    except UserError:
        return []
    tune_trials = trial_folders(root) | trial_folders(f"{root}/confirm")
    counts = trials["trial_id"].value_counts()
    whole = []
    for row in trials.itertuples():
        if counts[row.trial_id] != 1 or row.trial_id not in tune_trials or row.status not in statuses:
            continue
        seen = sorted(epoch_rows.loc[epoch_rows["trial_id"] == row.trial_id, "epoch"])
        if row.status != "TERMINATED" or (seen == list(range(1, epochs + 1)) and row.epochs_run == epochs):
            whole.append(row.trial_id)
    return whole


def check_search(root: Path, trials_expected: int, epochs: int, statuses: set[str] = frozenset({"TERMINATED"})):
    """The tables of a finished search: each trial once with every epoch once (complete curves),
    every Tune trial folder in the tables and every part file readable. Returns the trials."""
    assert check_parts(root / "tables") > 0
    trials = load(root / "tables")
    assert trials["trial_id"].is_unique
    assert len(trials) == trials_expected, trials[["trial_id", "status"]]
    assert set(trials["status"]) <= set(statuses), trials[["trial_id", "status", "error"]]
    tune_trials = {p.name.removeprefix("trial_") for p in root.glob("trial_*") if p.is_dir()}
    assert tune_trials == set(trials["trial_id"])
    epoch_rows = load(root / "tables", table="epochs")
    for row in trials.itertuples():
        seen = sorted(epoch_rows.loc[epoch_rows["trial_id"] == row.trial_id, "epoch"])
        if row.status == "TERMINATED":
            assert seen == list(range(1, epochs + 1)), (row.trial_id, seen)
            assert row.epochs_run == epochs
    return trials
