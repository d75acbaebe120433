"""The search driver SIGKILLed at seven points of one search, each time continued with --resume.

Each kill is triggered by what the driver has just printed, so it lands at that point of
the search's life: teacher training, Tune starting, a trial started, a result reported (its
checkpoint in flight), mid-epoch, a trial finished while others run, and the final summary.
Ray's processes of each killed driver are SIGKILLed with it (their session), as when a
machine loses the driver's process tree.
"""

from __future__ import annotations

import time

import pytest
from fault_tools import check_parts, check_search, intact_trials

from raykd.results import load

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# (what the driver printed last, seconds to wait after it, name of the point)
KILL_POINTS = [
    (r"teacher: not found, training", 0.5, "teacher training"),
    (r"^running: results in", 0.0, "Tune starting"),
    (r"trial \w+ started", 0.0, "first trial started"),
    (r"epoch 1/3", 0.0, "first result, checkpoint in flight"),
    (r"epoch 2/3", 0.7, "mid-epoch"),
    (r"trial \w+ completed", 0.0, "a trial finished, others running"),
    (r"^done: ", 0.0, "final summary"),
]


@pytest.mark.fault("driver SIGKILL", injected=len(KILL_POINTS), trials=4)
def test_driver_killed_at_seven_points_then_resumed(fault_space, search_driver, tmp_path, fault_ledger):
    space = fault_space(num_samples=4, epochs=3)
    driver = search_driver(space)
    root = tmp_path / "results" / "faulty"
    try:
        for i, (pattern, delay, _point) in enumerate(KILL_POINTS):
            # Killed while training the teacher, the search had not begun: it is run again as it was
            # started. Killed before Tune saved a state, --resume starts it over in its folder.
            driver.start(*([] if i <= 1 else ["--resume"]))
            driver.wait_for(pattern)
            time.sleep(delay)
            driver.kill()
            if (root / "tables").is_dir():
                check_parts(root / "tables")
        driver.start("--resume")
        assert driver.finish() == 0, driver.text()[-3000:]
        assert "best (search phase)" in driver.text()
    finally:
        fault_ledger(len(intact_trials(root, epochs=3)))
    check_search(root, trials_expected=4, epochs=3)
    runs = load(root / "tables", table="runs")
    # The driver killed while training the teacher wrote nothing; the others each wrote a run row.
    assert len(runs) == len(KILL_POINTS) and runs["resumed"].sum() == len(KILL_POINTS) - 1

