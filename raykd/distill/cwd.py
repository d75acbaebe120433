"""CWD, channel-wise distillation (exact, after MMRazor's ChannelWiseDivergence)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raykd.distill.inputs import LevelInputs


class CWDLoss(nn.Module):
    """``L = w τ² / (C·N) · Σ_{n,c} KL(φ(T_nc) ‖ φ(S'_nc))``, φ a softmax over H·W at temperature τ."""

    def __init__(self, weight: float, tau: float):
        super().__init__()
        self.weight = weight
        self.tau = tau

    def forward(self, inputs: LevelInputs) -> dict[str, Tensor]:
        n, c, h, w = inputs.student.shape
        log_p_t = torch.log_softmax(inputs.teacher.reshape(n * c, h * w) / self.tau, dim=1)
        log_p_s = torch.log_softmax(inputs.student.reshape(n * c, h * w) / self.tau, dim=1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
        return {"cwd": self.weight * self.tau**2 * kl / (c * n)}
