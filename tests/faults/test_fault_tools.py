"""The fault suite's own counting (fast): what the hardening ledger records as found."""

from __future__ import annotations

import pyarrow as pa

from fault_tools import intact_trials
from raykd.results import TableWriter


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
