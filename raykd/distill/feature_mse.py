"""Feature MSE (FitNet on FPN features): the plain imitation control."""

from __future__ import annotations

from torch import Tensor, nn

from raykd.distill.inputs import LevelInputs


class FeatureMSELoss(nn.Module):
    """``L = w · mean((S' − T)²)`` over N, C, H, W."""

    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight

    def forward(self, inputs: LevelInputs) -> dict[str, Tensor]:
        return {"mse": self.weight * (inputs.student - inputs.teacher).pow(2).mean()}
