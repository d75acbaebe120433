"""Optimiser and the per-iteration learning-rate schedule (linear warm-up, then step or cosine)."""

from __future__ import annotations

import math

import torch
from torch import nn

from raykd.config import ScheduleConfig


def build_optimizer(cfg: ScheduleConfig, modules: list[nn.Module]) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters of ``modules`` (student + distiller).

    Norm layers and biases get no weight decay. Both use torch's fused kernels, which take the
    same steps as the default per-tensor loop (``tests/train/test_optim.py``): on the CPU, one thread,
    AdamW's step over a ResNet-18 takes 11 ms instead of 52 (``benchmarks/optimizer_step.py``).
    """
    decay, no_decay = [], []
    for module in modules:
        for param in module.parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


def lr_factor(cfg: ScheduleConfig, iteration: int, steps_per_epoch: int) -> float:
    """Multiplier of ``cfg.lr`` at ``iteration`` (0-based, counted over the whole run)."""
    if cfg.schedule == "step":
        epoch = iteration // steps_per_epoch
        factor = cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    elif cfg.schedule == "cosine":
        total = max(cfg.epochs * steps_per_epoch, 1)
        factor = 0.5 * (1.0 + math.cos(math.pi * min(iteration, total) / total))
    else:
        factor = 1.0
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """A LambdaLR stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(cfg, it, steps_per_epoch))
