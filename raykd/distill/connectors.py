"""Connectors: trainable modules between the tapped features and the losses.

All of them are ordinary ``nn.Module``s owned by the :class:`~raykd.distill.Distiller`, so
their parameters join the student's optimiser.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raykd.distill.options import FusionMode


def align_conv(student_channels: int, teacher_channels: int) -> nn.Module:
    """``S' = align(S)``: a 1×1 conv with bias from C_s to C_t channels, identity when equal."""
    if student_channels == teacher_channels:
        return nn.Identity()
    return nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=True)


class GenerationBlock(nn.Sequential):
    """MGD's generation block ``conv3×3 → ReLU → conv3×3`` (C → C, padding 1): ``[N, C, H, W]`` -> same."""

    def __init__(self, channels: int):
        super().__init__(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        )


class Fusion(nn.Module):
    """Fuses two reconstructions ``a, b [N, C, H, W]`` into one.

    ``learned``: ``softmax(θ)₀·a + softmax(θ)₁·b`` with two learnable scalars θ, initialised
    equal; ``mean``: ``(a + b) / 2``; ``gate``: ``σ(γ)⊙a + (1 − σ(γ))⊙b`` with a learnable
    per-channel ``γ ∈ R^C`` initialised 0 (a static gate, not input dependent).
    ``sum_losses`` is not a fusion of features; the caller keeps two losses instead.
    """

    def __init__(self, mode: FusionMode, channels: int):
        super().__init__()
        if mode == "sum_losses":
            raise ValueError("fusion 'sum_losses' keeps two losses; there is nothing to fuse")
        self.logits = nn.Parameter(torch.zeros(2)) if mode == "learned" else None
        self.gate = nn.Parameter(torch.zeros(1, channels, 1, 1)) if mode == "gate" else None

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.logits is not None:
            weights = torch.softmax(self.logits, dim=0)
            return weights[0] * a + weights[1] * b
        if self.gate is not None:
            gate = torch.sigmoid(self.gate)
            return gate * a + (1.0 - gate) * b
        return 0.5 * (a + b)


class ContextBlock(nn.Module):
    """FGD's GcBlock: ``x + add(context(x))``, ``[N, C, H, W]`` -> same.

    context: softmax over H·W of a 1×1 conv (C → 1) weights a sum of ``x`` -> ``[N, C, 1, 1]``;
    add: 1×1 conv C → C/2 → LayerNorm([C/2, 1, 1]) → ReLU → 1×1 conv C/2 → C. As in the
    reference, the mask conv is Kaiming-normal (fan_in, bias 0) and the last conv is zero.
    """

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(channels // 2, 1)
        self.mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.add = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.mask.bias)
        nn.init.zeros_(self.add[-1].weight)
        nn.init.zeros_(self.add[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        weights = torch.softmax(self.mask(x).reshape(n, 1, h * w), dim=2)  # [N, 1, HW]
        context = (x.reshape(n, c, h * w) * weights).sum(dim=2).reshape(n, c, 1, 1)
        return x + self.add(context)


class ChannelAdapter(nn.Module):
    """Squeeze-and-excitation channel re-weighting, ``[N, C, H, W]`` -> same.

    ``x ⊙ σ(W₂ ReLU(W₁ mean_{hw}(x)))`` with 1×1 convs (bias on) ``C → max(C // reduction, 1) → C``
    at PyTorch's default initialisation. AMD's "channel-adaptive module" (a reconstruction).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.squeeze = nn.Conv2d(channels, hidden, kernel_size=1)
        self.excite = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.excite(torch.relu(self.squeeze(pooled))))
