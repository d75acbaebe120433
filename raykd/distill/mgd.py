"""MGD, masked generative distillation (exact, after the reference code of yzd-v/MGD)."""

from __future__ import annotations

from torch import Tensor, nn

from raykd.distill.connectors import GenerationBlock
from raykd.distill.inputs import LevelInputs
from raykd.distill.masks import random_spatial_mask
from raykd.distill.record import note


class MGDLoss(nn.Module):
    """``L = α · Σ (G(S' ⊙ M) − T)² / N`` with M a fresh random spatial mask of ratio λ.

    ``channels`` is the teacher width C_t; the generation block G is ``C_t -> C_t``.
    """

    def __init__(self, channels: int, alpha: float, mask_ratio: float):
        super().__init__()
        self.alpha = alpha
        self.mask_ratio = mask_ratio
        self.generation = GenerationBlock(channels)

    def forward(self, inputs: LevelInputs) -> dict[str, Tensor]:
        student, teacher = inputs.student, inputs.teacher
        keep = random_spatial_mask(student, self.mask_ratio, inputs.generator)
        generated = self.generation(student * keep)
        note("mask_spatial", keep)
        note("reconstruction", generated)
        return {"mgd": self.alpha * (generated - teacher).pow(2).sum() / student.shape[0]}
