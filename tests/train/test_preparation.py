"""FreeKD's prompt stage (a reconstruction): tokens trained on the frozen teacher, cached, loaded
into the distiller's FreeKD losses by the training loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raykd.config import ModelConfig, load_experiment
from raykd.distill.freekd import PROMPT_SEED, initial_tokens, train_prompt_tokens
from raykd.errors import UserError
from raykd.models import build_detector
from raykd.train.preparation import DetectorProbe

LEVELS = ["0", "1", "2", "p6", "p7"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _batches():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 48, generator=g), torch.rand(3, 50, 64, generator=g)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[10.0, 10.0, 40.0, 30.0]]), "labels": torch.tensor([1])}]
    return [(images, targets)]


def _train(teacher, steps):
    probe = DetectorProbe(teacher, torch.device("cpu"), relabel=lambda labels: labels)
    return train_prompt_tokens(probe, _batches() * steps, steps, num_tokens=3, lr=0.05, dice_weight=1.0,
                               log=lambda line: None)


def test_prompt_stage_trains_every_teacher_level_and_leaves_the_teacher_alone():
    torch.manual_seed(0)
    teacher = build_detector(ModelConfig(arch="fcos", backbone="resnet18", fpn_channels=32), 4, 64)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    prompts = _train(teacher, 2)
    assert list(prompts) == LEVELS
    with torch.random.fork_rng():
        torch.manual_seed(PROMPT_SEED)
        start = initial_tokens(32, 3)
    for level in LEVELS:
        assert prompts[level].shape == (4, 3, 32)
        assert not torch.equal(prompts[level], start)  # Adam moved every token set
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in teacher.parameters())
    again = _train(teacher, 2)
    for level in LEVELS:  # fixed seed: every trial's prompts are the same, one cache entry fits all
        torch.testing.assert_close(again[level], prompts[level])


def test_prompt_stage_refuses_two_stage_teachers():
    teacher = build_detector(ModelConfig(arch="faster_rcnn", backbone="resnet18", fpn_channels=32), 4, 64)
    with pytest.raises(UserError, match="dense-head teacher"):
        _train(teacher, 1)


@pytest.mark.slow
def test_loop_trains_prompts_once_and_loads_them(write_experiment, tiny_teacher):
    from raykd.train.loop import fit
    from raykd.train.teacher import ensure_teacher

    cfg = load_experiment(write_experiment(teacher=tiny_teacher, train={"epochs": 1, "steps_per_epoch": 1},
                                           distill={"method": "freekd", "freekd_prompt_steps": 2}))
    checkpoint = ensure_teacher(cfg, log=lambda line: None, progress=False)
    lines: list[str] = []
    states = []
    fit(cfg, teacher_checkpoint=checkpoint, progress=False, log=lines.append,
        on_epoch_end=lambda metrics, make_state: states.append(make_state()))
    assert any("freekd_prompts: training" in line for line in lines)
    cached = list((Path(cfg.cache_dir) / "freekd_prompts").glob("*/state.pt"))
    assert len(cached) == 1
    prompts = torch.load(cached[0], weights_only=True)
    tokens = {key.split(".")[1]: value for key, value in states[-1]["distiller"].items() if key.endswith("mask_token")}
    assert sorted(tokens) == sorted(LEVELS)  # FCOS student and teacher: every level paired with its own key
    for level, value in tokens.items():
        assert torch.equal(value.cpu(), prompts[level])
    lines.clear()
    fit(cfg, teacher_checkpoint=checkpoint, progress=False, log=lines.append, on_epoch_end=lambda m, s: None)
    assert any("freekd_prompts: cached" in line for line in lines)
    assert not any("freekd_prompts: training" in line for line in lines)
