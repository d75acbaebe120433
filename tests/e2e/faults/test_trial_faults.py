"""Faults inside trials: a non-finite loss fails only its trial; a bad teacher stops the search
before any trial starts."""

from __future__ import annotations

import pytest
from fault_tools import check_search, intact_trials

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.mark.fault("non-finite loss", injected=2, trials=3)
def test_non_finite_losses_fail_their_trials_and_the_search_goes_on(ray_local, fault_space, tmp_path, capsys,
                                                                     fault_ledger):
    from raykd.search.__main__ import main

    space = fault_space(
        num_samples=3, epochs=2,
        space={"distill.method": {"choice": ["none", "mgd"]},
               "distill.alpha": {"choice": [1e-7, 1e38], "when": {"distill.method": "mgd"}},
               "train.lr": {"choice": [1e-3, 1e12]}},
        points_to_evaluate=[{"distill.method": "mgd", "distill.alpha": 1e38, "train.lr": 1e-3},  # inf
                            {"distill.method": "none", "train.lr": 1e12},  # weights blow up: NaN
                            {"distill.method": "none", "train.lr": 1e-3}])
    root = tmp_path / "results" / "nan"
    try:
        assert main([str(space), "--storage", str(tmp_path / "results"), "--name", "nan"]) == 0
    finally:
        fault_ledger(len(intact_trials(root, epochs=2, statuses={"TERMINATED", "ERROR"})))
    out = capsys.readouterr().out
    trials = check_search(root, trials_expected=3, epochs=2, statuses={"TERMINATED", "ERROR"})

    failed = trials[trials["status"] == "ERROR"]
    assert sorted(failed["train.lr"]) == [1e-3, 1e12]  # the inf and the NaN trial
    for error in failed["error"]:
        assert "non-finite loss at epoch 1" in error, error
    assert set(failed["stop_reason"]) == {"error"}
    healthy = trials[trials["status"] == "TERMINATED"]
    assert len(healthy) == 1 and healthy["final_bbox_mAP"].notna().all()  # the search went on
    assert out.count("FAILED: ") >= 2 and "non-finite loss at epoch 1" in out


@pytest.mark.fault("teacher checkpoint missing, corrupt or of another model")
@pytest.mark.parametrize("problem", ["missing", "corrupt", "other model"])
def test_a_bad_teacher_checkpoint_stops_the_search_before_any_trial(fault_space, tmp_path, capsys, problem,
                                                                     fault_ledger):
    import torch
    import torchvision

    from raykd.search.__main__ import main

    checkpoint = tmp_path / "teacher.pt"
    if problem == "corrupt":
        checkpoint.write_bytes(b"PK\x03\x04 not really a checkpoint" * 10)
    elif problem == "other model":
        torch.save({"model": torchvision.models.resnet18().state_dict()}, checkpoint)
    teacher = {"arch": "fcos", "backbone": "resnet18", "fpn_channels": 64, "checkpoint": str(checkpoint)}
    space = fault_space(num_samples=2, experiment={"teacher": teacher})
    storage = tmp_path / "results"
    with pytest.raises(Exception) as raised:
        main([str(space), "--storage", str(storage), "--name", "bad-teacher"])
    from raykd.errors import UserError

    assert isinstance(raised.value, UserError)
    message = str(raised.value)
    assert str(checkpoint) in message and "teacher.checkpoint" in message and "\n" not in message
    expected = {"missing": "not found", "corrupt": "cannot read checkpoint",
                "other model": "does not match the configured model"}[problem]
    assert expected in message, message
    assert not (storage / "bad-teacher").exists()  # no search folder, no tables, no trial
    assert "running:" not in capsys.readouterr().out
