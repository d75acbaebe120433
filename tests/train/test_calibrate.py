"""distill.loss_ratio: the calibrated weight gives the requested ratio, is the same on every rank,
is kept in the checkpoint and not recalibrated on resume; loss_ratio with a weight is refused."""

from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path

import pytest
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from raykd.config import load_experiment
from raykd.errors import UserError
from raykd.train import calibrate
from raykd.train import loop as loop_module
from raykd.train.loop import fit

RATIO = 0.5


@pytest.fixture
def mgd_cfg(write_experiment, tiny_teacher):
    from raykd.train.teacher import ensure_teacher

    def make(**train):
        cfg = load_experiment(write_experiment(
            teacher=tiny_teacher, distill={"method": "mgd", "loss_ratio": RATIO, "calibration_steps": 2},
            train={"epochs": 1, "steps_per_epoch": 2, **train}))
        return cfg, ensure_teacher(cfg, log=lambda line: None, progress=False)

    return make


def _fit(cfg, checkpoint, **kwargs):
    states, lines = [], []
    fit(cfg, teacher_checkpoint=checkpoint, progress=False, log=lines.append,
        on_epoch_end=lambda record, make_state: states.append(copy.deepcopy(make_state())), **kwargs)
    return states, lines


def test_calibrated_weight_gives_the_requested_ratio_on_the_calibration_batches(mgd_cfg):
    cfg, checkpoint = mgd_cfg()
    run = loop_module._setup(cfg, checkpoint, log=lambda line: None)
    step = run.train_module

    def prepare(batch):
        return loop_module._on_device(run, batch)

    batches = [batch for _, batch in zip(range(cfg.distill.calibration_steps), run.train_loader)]
    scale = calibrate.calibrated_scale(cfg.distill, step, batches, prepare, None, log=lambda line: None)
    assert scale > 0
    step.kd_scale = scale  # the same batches measured again, independently, with the weight applied
    again = calibrate.measure(step, batches, cfg.distill.calibration_steps, RATIO, prepare)
    assert again.kd / again.det == pytest.approx(RATIO, rel=0.05)


def test_weight_is_logged_kept_in_the_checkpoint_and_not_recalibrated_on_resume(mgd_cfg, monkeypatch):
    cfg, checkpoint = mgd_cfg()
    states, lines = _fit(cfg, checkpoint)
    scale = states[-1][calibrate.STATE_KEY]
    assert scale > 0 and any(line.startswith(f"distill.loss_ratio {RATIO:g}: over 2 batches") and "alpha" in line
                             for line in lines)

    def no_measure(*args, **kwargs):
        raise AssertionError("a resumed run calibrated again")

    monkeypatch.setattr(calibrate, "measure", no_measure)
    longer = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 2})})
    resumed, lines = _fit(longer, checkpoint, resume_state=states[-1])
    assert resumed[-1][calibrate.STATE_KEY] == scale
    assert any("from the checkpoint (not recalibrated)" in line for line in lines)


def test_loss_ratio_beside_a_weight_is_refused_in_one_line(write_experiment, tiny_teacher):
    path = write_experiment(teacher=tiny_teacher, distill={"method": "mgd", "loss_ratio": 0.5, "alpha": 1e-6})
    with pytest.raises(UserError) as err:
        load_experiment(path)
    assert "give it or distill.alpha, not both" in str(err.value) and "\n" not in str(err.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, cfg_json: str, checkpoint: str, out: str) -> None:
    from raykd.config import ExperimentConfig

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = ExperimentConfig.model_validate_json(cfg_json)
        states, _ = _fit(cfg, checkpoint)
        Path(out, f"rank{rank}.json").write_text(json.dumps({"scale": states[-1][calibrate.STATE_KEY]}))
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_rank_of_a_two_worker_run_holds_the_same_weight(mgd_cfg, tmp_path):
    cfg, checkpoint = mgd_cfg()
    mp.spawn(_rank_main, args=(2, _free_port(), cfg.model_dump_json(), checkpoint, str(tmp_path)), nprocs=2)
    scales = [json.loads((tmp_path / f"rank{r}.json").read_text())["scale"] for r in (0, 1)]
    assert scales[0] > 0 and scales[0] == scales[1]
    alone, _ = _fit(cfg, checkpoint)  # one worker sees other batches: the pooled sums differ
    assert alone[-1][calibrate.STATE_KEY] != scales[0]


def test_tables_show_the_resolved_weights_beside_the_ratio():
    import pandas as pd

    from raykd.analyze.pipeline import _resolved_weights

    board = pd.DataFrame({"distill.method": ["fgd", "none"], "kd_scale": [0.5, float("nan")]})
    assert _resolved_weights(board) == {
        "resolved weights (loss_ratio)": ["alpha 0.0005, beta 0.00025, gamma 0.00025, lambda_gl 2.5e-06", "—"]}
    assert calibrate.resolved_weights(calibrate.DistillConfig(method="mgd"), 0.1) == {"alpha": pytest.approx(2e-6)}
    assert _resolved_weights(board.assign(kd_scale=float("nan"))) == {}


def test_a_pretrained_teacher_used_as_it_is_is_scored_once_and_cached(write_experiment, tiny_teacher, monkeypatch):
    """Its own trained checkpoint, given as teacher.weights: the score equals the one stored at training."""
    from raykd.train import setup, teacher_eval
    from raykd.train.teacher import ensure_teacher, teacher_metrics

    teacher = {**tiny_teacher, "train": {**tiny_teacher["train"], "epochs": 8, "lr": 5e-3}}  # AP above zero
    trained = load_experiment(write_experiment(teacher=teacher))
    checkpoint = ensure_teacher(trained, log=lambda line: None, progress=False)
    as_is = {k: v for k, v in teacher.items() if k != "train"} | {"weights": checkpoint}
    cfg = load_experiment(write_experiment("as_is.yaml", teacher=as_is))
    lines = []
    metrics = teacher_eval.pretrained_teacher_metrics(cfg, log=lines.append)
    stored = teacher_metrics(checkpoint)
    assert metrics["AP50"] == pytest.approx(stored["AP50"], abs=1e-4) and metrics["AP50"] > 0, (metrics, stored)
    assert metrics["bbox_mAP"] == pytest.approx(stored["bbox_mAP"], abs=1e-4)
    assert any("scores bbox_mAP" in line for line in lines)
    monkeypatch.setattr(setup, "build_datasets", lambda *a, **k: pytest.fail("evaluated twice"))
    assert teacher_eval.pretrained_teacher_metrics(cfg, log=lines.append) == metrics
