"""PKD, Pearson-correlation feature distillation (exact, after MMRazor's PKDLoss)."""

from __future__ import annotations

from torch import Tensor, nn

from raykd.distill.inputs import LevelInputs


def standardise(feat: Tensor) -> Tensor:
    """Per channel over (N, H, W): ``(x − mean) / (std + 1e-6)``, ``[N, C, H, W]`` -> same.

    ``std`` is the unbiased (n − 1) estimate as in the reference; with a single value per
    channel (N = H = W = 1) it falls back to the biased one (0) instead of NaN.
    """
    flat = feat.transpose(0, 1).reshape(feat.shape[1], -1)
    correction = 1 if flat.shape[1] > 1 else 0
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True, correction=correction)
    normed = (flat - mean) / (std + 1e-6)
    n, c, h, w = feat.shape
    return normed.reshape(c, n, h, w).transpose(0, 1)


class PKDLoss(nn.Module):
    """``L = w · mean((Ŝ' − T̂)²) / 2`` with Ŝ', T̂ standardised per channel over (N, H, W)."""

    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight

    def forward(self, inputs: LevelInputs) -> dict[str, Tensor]:
        diff = standardise(inputs.student) - standardise(inputs.teacher)
        return {"pkd": self.weight * diff.pow(2).mean() / 2}
