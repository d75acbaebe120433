"""The search's progress lines (:class:`raykd.search.progress.ProgressCallback`) read each
trial's own schedule from its results, not the experiment's ``train.epochs``."""

from __future__ import annotations

from types import SimpleNamespace

from raykd.epoch_record import EpochRecord, LossSummary
from raykd.search.progress import ProgressCallback


def _result(epoch: int, epochs_total: int, ap: float) -> dict:
    return EpochRecord(epoch=epoch, epochs_total=epochs_total, losses=LossSummary(total=1.0, det=1.0, kd=0.0),
                       scores={"bbox_mAP": ap}, lr=0.01, step_time=0.1, epoch_time=2.0,
                       time_total_s=2.0 * epoch).as_report()


def _run(callback: ProgressCallback, trial, epochs_total: int, epochs_run: int) -> None:
    callback.on_trial_start(0, [trial], trial)
    for epoch in range(1, epochs_run + 1):
        result = _result(epoch, epochs_total, 0.1 * epoch)
        trial.last_result = result
        callback.on_trial_result(0, [trial], trial, result)
    callback.on_trial_complete(0, [trial], trial)


def test_a_searched_epoch_budget_is_each_trials_own(capsys):
    """with ``train.epochs: {choice: [2]}`` over an experiment of 4 epochs the
    lines said "epoch 1/4", and trials that ran both epochs "stopped early ... after epoch 2"."""
    callback = ProgressCallback("bbox_mAP", "max", epochs=4)
    _run(callback, SimpleNamespace(trial_id="a", config={"train.epochs": 2}, last_result={}), 2, 2)
    out = capsys.readouterr().out
    assert "trial a epoch 1/2: bbox_mAP 0.1000" in out and "trial a epoch 2/2: bbox_mAP 0.2000" in out
    assert "trial a completed: bbox_mAP 0.2" in out and "stopped early" not in out
    assert callback._counts == {"running": 0, "done": 1, "stopped": 0, "error": 0}


def test_a_trial_stopped_before_its_own_last_epoch_is_early_stopped(capsys):
    callback = ProgressCallback("bbox_mAP", "max", epochs=2)
    _run(callback, SimpleNamespace(trial_id="b", config={"train.epochs": 4}, last_result={}), 4, 2)
    out = capsys.readouterr().out
    assert "trial b epoch 2/4" in out and "trial b stopped early by the scheduler after epoch 2 of 4" in out
    assert callback._counts["stopped"] == 1


def test_trial_start_lines_name_each_key_by_its_shortest_unshared_suffix():
    from raykd.search.progress import _short

    line = _short({"distill.method": "mgd", "distill.alpha": 2e-6, "train.seed": 101, "teacher.train.seed": 0,
                   "teacher.checkpoint": "/t.pt", "__trial_index__": 0})
    assert line == "method=mgd alpha=2e-06 train.seed=101 teacher.train.seed=0 checkpoint=/t.pt"
