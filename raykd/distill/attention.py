"""FGD-form spatial and channel attention of a feature map, per image and per level."""

from __future__ import annotations

import torch
from torch import Tensor


def spatial_attention(feat: Tensor, tau: float) -> Tensor:
    """``A_s = H·W · softmax_hw(mean_c |F| / τ)``: ``[N, C, H, W]`` -> ``[N, 1, H, W]``, mean 1."""
    n, _, h, w = feat.shape
    g_s = feat.abs().mean(dim=1).reshape(n, h * w)
    return (h * w * torch.softmax(g_s / tau, dim=1)).reshape(n, 1, h, w)


def channel_attention(feat: Tensor, tau: float) -> Tensor:
    """``A_c = C · softmax_c(mean_hw |F| / τ)``: ``[N, C, H, W]`` -> ``[N, C, 1, 1]``, mean 1."""
    n, c = feat.shape[:2]
    g_c = feat.abs().mean(dim=(2, 3))
    return (c * torch.softmax(g_c / tau, dim=1)).reshape(n, c, 1, 1)
