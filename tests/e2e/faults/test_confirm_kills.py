"""The search driver SIGKILLed in the confirmation phase, then continued with --resume: the
confirmation trials finish once each, tagged ``phase = confirm``, on the fresh seeds."""

from __future__ import annotations

import pytest
from fault_tools import check_parts, intact_trials

from raykd.results import load

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

KILL_POINTS = [
    (r"^confirm: \d+ configurations", "confirmation phase starting"),
    (r"^confirm: [\s\S]*epoch 1/2", "first confirmation result, checkpoint in flight"),
]


@pytest.mark.fault("driver SIGKILL in the confirmation phase", injected=len(KILL_POINTS), trials=7)
def test_driver_killed_in_the_confirmation_phase_then_resumed(fault_space, search_driver, tmp_path, fault_ledger):
    space = fault_space(num_samples=3, epochs=2, confirm={"top": 1, "seeds": [100, 101], "baseline": True})
    driver = search_driver(space)
    root = tmp_path / "results" / "faulty"
    try:
        for i, (pattern, _point) in enumerate(KILL_POINTS):
            driver.start(*([] if i == 0 else ["--resume"]))
            driver.wait_for(pattern, timeout=600)
            driver.kill()
            check_parts(root / "tables")
        driver.start("--resume")
        assert driver.finish() == 0, driver.text()[-3000:]
        assert "best (confirmation on fresh seeds)" in driver.text()
    finally:
        fault_ledger(len(intact_trials(root, epochs=2)))

    trials = load(root / "tables")
    epochs = load(root / "tables", table="epochs")
    assert trials["trial_id"].is_unique and len(trials) == 7
    assert set(trials["status"]) == {"TERMINATED"} and set(trials["epochs_run"]) == {2}
    confirmed = trials[trials["phase"] == "confirm"]
    assert len(confirmed) == 4 and (trials["phase"] == "search").sum() == 3
    assert sorted(confirmed["seed"]) == [100, 100, 101, 101] and "none" in set(confirmed["distill.method"])
    for trial_id in trials["trial_id"]:  # every epoch once: nothing lost, nothing twice
        assert sorted(epochs.loc[epochs["trial_id"] == trial_id, "epoch"]) == [1, 2]
    assert {p.name.removeprefix("trial_") for p in (root / "confirm").glob("trial_*")} == set(confirmed["trial_id"])


@pytest.mark.fault("driver SIGKILL while confirming over teacher seeds", injected=2, trials=8)
def test_driver_killed_while_confirming_over_teacher_seeds_retrains_no_cached_teacher(
        fault_space, search_driver, tmp_path, fault_ledger):
    """Killed while the second teacher trains, then in the first confirmation epoch: every resumed
    driver finds the teachers trained before in the cache, and the phase ends with every pair once."""
    space = fault_space(num_samples=2, epochs=2, confirm={"top": 1, "seeds": [100, 101], "baseline": True,
                                                          "teacher_seeds": [5, 6]},
                        points_to_evaluate=["baseline", "mgd_defaults"])
    driver = search_driver(space)
    root = tmp_path / "results" / "faulty"
    try:
        driver.start()
        driver.wait_for(r"^\[teacher seed 6\] teacher: not found", timeout=600)
        driver.kill()
        assert "[teacher seed 5] teacher: best epoch" in driver.text()
        driver.start("--resume")
        driver.wait_for(r"^confirm: [\s\S]*epoch 1/2", timeout=600)
        assert "[teacher seed 5] teacher: cached at" in driver.text()
        assert "[teacher seed 5] teacher: not found" not in driver.text()
        driver.kill()
        check_parts(root / "tables")
        driver.start("--resume")
        assert driver.finish() == 0, driver.text()[-3000:]
        assert "not found, training" not in driver.text()  # both teachers cached now
        assert "between teachers: " in driver.text()
    finally:
        fault_ledger(len(intact_trials(root, epochs=2, statuses={"TERMINATED"})))

    trials = load(root / "tables")
    confirmed = trials[trials["phase"] == "confirm"]
    assert trials["trial_id"].is_unique and len(confirmed) == 6 and set(confirmed["status"]) == {"TERMINATED"}
    distilled = confirmed[confirmed["distill.method"] != "none"]
    assert sorted(zip(distilled["teacher.train.seed"], distilled["seed"])) == [(5, 100), (5, 101), (6, 100), (6, 101)]
