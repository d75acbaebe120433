"""Two drivers on one search folder: the second one refuses before it starts Ray or writes
anything; a driver SIGKILLed while holding the folder is taken over by ``--resume``."""

from __future__ import annotations

import re
import socket

import pytest

from fault_tools import SearchDriver, check_search
from raykd.results import load

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
        assert "best trial" in winner.text()
        trials = load(root / "tables")
        fault_ledger("double start", trials_expected=2, trials_found=len(trials))
        check_search(root, trials_expected=2, epochs=2)
        assert len(load(root / "tables", table="runs")) == 1  # the refused driver wrote no run row
        assert not (root / ".owner.json").exists()  # released at the end
    finally:
        for driver in drivers:
            driver.close()


def test_resume_while_running_refused_then_killed_owner_taken_over(fault_space, search_driver, tmp_path,
                                                                   fault_ledger):
    space = fault_space(num_samples=2, epochs=2)
    root = tmp_path / "results" / "faulty"
    first = search_driver(space)
    first.start()
    first.wait_for(r"trial \w+ started")
    for flags in (["--resume"], []):  # --resume typed while it runs, and a plain double submit
        second = SearchDriver(space, tmp_path / "results", "faulty", tmp_path / f"logs-second{len(flags)}")
        try:
            second.start(*flags)
            assert second.finish(timeout=120) == 2
            assert re.match(refusal(root, first.process.pid), _only_line(second)), _only_line(second)
        finally:
            second.close()
        assert first.process.poll() is None  # the running driver is untouched
    first.wait_for(r"epoch 1/2")
    first.kill()  # SIGKILL while holding the folder: its owner file stays
    assert (root / ".owner.json").exists()
    first.start("--resume")
    assert first.finish() == 0, first.text()[-3000:]
    assert f"search folder {root}: taken over from its last driver (its process has ended)" in first.text()
    trials = load(root / "tables")
    fault_ledger("resume while running", injected=2)
    fault_ledger("driver SIGKILL holding the folder", trials_expected=2, trials_found=len(trials))
    check_search(root, trials_expected=2, epochs=2)
