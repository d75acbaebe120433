"""The optimiser builder: torch's fused kernels, checked against torch's reference per-tensor loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raykd.config import ScheduleConfig
from raykd.train.optim import build_optimizer


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))


def _reference(cfg: ScheduleConfig, model: nn.Module) -> torch.optim.Optimizer:
    """What the builder promises, written with torch's unfused, single-tensor implementation."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, foreach=False)
    return torch.optim.AdamW(groups, lr=cfg.lr, foreach=False)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_optimiser_takes_the_reference_steps(name):
    cfg = ScheduleConfig(optimizer=name, lr=1e-2, weight_decay=0.05)
    ours, ref = _model(0), _model(0)
    opt = build_optimizer(cfg, [ours])
    assert opt.defaults["fused"] is True
    opt_ref = _reference(cfg, ref)
    torch.manual_seed(1)
    for _ in range(5):
        x = torch.randn(4, 3, 8, 8)
        for model, optimizer in ((ours, opt), (ref, opt_ref)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    start = _model(0)
    for (name_, p), p_ref, p0 in zip(ours.named_parameters(), ref.parameters(), start.parameters()):
        assert not torch.equal(p, p0), name_  # every parameter moved
        torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-6, msg=name_)
