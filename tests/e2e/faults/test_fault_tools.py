"""The fault suite's own counting (fast): what the hardening ledger records as found."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from fault_tools import intact_trials

from raykd.results import TableWriter

pytest_plugins = ["pytester"]  # runs a small suite through the ledger of tests/conftest.py


def test_a_torn_or_folderless_trial_is_not_counted_as_found(tmp_path):
    root = tmp_path / "search"
    writer = TableWriter(root / "tables", "search", {"distill.method": pa.string()}, flush_every_s=0)
    for trial, epochs in (("whole", (1, 2)), ("torn", (1,)), ("no_folder", (1, 2)), ("running", (1,))):
        for epoch in epochs:
            writer.add_result(trial, {"distill.method": "none"},
                              {"epoch": epoch, "epochs_total": 2, "bbox_mAP": 0.1 * epoch})
        if trial != "running":
            writer.end_trial(trial)
        writer.flush()
        if trial != "no_folder":
            (root / f"trial_{trial}").mkdir(parents=True)
    assert intact_trials(root, epochs=2) == ["whole"]
    assert intact_trials(root, epochs=2, statuses={"TERMINATED", "RUNNING"}) == ["running", "whole"]
    assert intact_trials(tmp_path / "nothing", epochs=2) == []


def test_the_ledger_counts_declared_faults_and_fails_what_did_not_pass(pytester):
    """Faults count at collection; a fault test that fails, errors or is skipped survived none;
    trials stay lost unless a ``finally`` records them found."""
    pytester.makeconftest((Path(__file__).parents[2] / "conftest.py").read_text())
    pytester.makepyfile(test_ledger='''
        import pytest

        @pytest.mark.fault("ok", injected=2, trials=3)
        def test_survives(fault_ledger):
            try:
                pass
            finally:
                fault_ledger(3)

        @pytest.mark.fault("crashes before counting", trials=4)
        def test_crashes(fault_ledger):
            raise RuntimeError("the resumed driver crashed")

        @pytest.mark.fault("counted, then fails", trials=2)
        def test_counted_then_fails(fault_ledger):
            try:
                pass
            finally:
                fault_ledger(1)
            assert False

        @pytest.mark.fault("skipped")
        def test_skipped():
            pytest.skip("no tmpfs here")

        @pytest.fixture
        def broken():
            raise OSError("setup failed")

        @pytest.mark.fault("errors in setup", trials=1)
        def test_errors(broken, fault_ledger):
            pass
    ''')
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2, skipped=1, errors=1)
    result.stdout.fnmatch_lines(["hardening: faults injected 6, survived 2, trials lost 6; *"])
