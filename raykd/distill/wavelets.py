"""The 2-D Haar wavelet transform FreeKD uses: ``pytorch_wavelets.DWTForward(J, wave='haar',
mode='zero')`` and its ``DWTInverse`` written out in torch, same layout, same zero padding,
differentiable."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_S = math.sqrt(0.5)  # the Haar filter taps ±1/√2, the same float as PyWavelets' 0.7071067811865476


def _split(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Low and high pass along ``dim`` (-1: width, -2: height), stride 2, odd sizes zero-padded at the end."""
    if x.shape[dim] % 2:
        x = F.pad(x, (0, 1) if dim == -1 else (0, 0, 0, 1))
    even = x[..., 0::2] if dim == -1 else x[..., 0::2, :]
    odd = x[..., 1::2] if dim == -1 else x[..., 1::2, :]
    return _S * even + _S * odd, _S * even - _S * odd


def haar_dwt(x: Tensor, levels: int) -> tuple[Tensor, list[Tensor]]:
    """``x [N, C, H, W]`` -> ``(low, highs)``: ``low [N, C, H_J, W_J]`` and per level j = 1..J
    (finest first) ``highs[j-1] [N, C, 3, H_j, W_j]``, ``H_j = ceil(H_{j-1} / 2)``.

    The three bands are pytorch_wavelets' order: low-pass along the width and high-pass along
    the height, high/low, high/high (rows filtered first, then columns).
    """
    low = x
    highs = []
    for _ in range(levels):
        lo_w, hi_w = _split(low, -1)
        lo_lo, lo_hi = _split(lo_w, -2)
        hi_lo, hi_hi = _split(hi_w, -2)
        low = lo_lo
        highs.append(torch.stack((lo_hi, hi_lo, hi_hi), dim=2))
    return low, highs



def _merge(lo: Tensor, hi: Tensor, dim: int) -> Tensor:
    """Inverse of :func:`_split` along ``dim``: twice the length (no crop)."""
    even, odd = _S * lo + _S * hi, _S * lo - _S * hi
    out = torch.stack((even, odd), dim=dim)  # [..., W, 2] or [..., H, 2, W]: interleaved after the reshape
    shape = list(lo.shape)
    shape[dim] *= 2
    return out.reshape(shape)


def haar_idwt(low: Tensor, highs: list[Tensor]) -> Tensor:
    """Inverse of :func:`haar_dwt` as ``pytorch_wavelets.DWTInverse(wave='haar', mode='zero')``:
    from the coarsest level, the running low band loses its last row/column where it is larger
    than that level's bands; the result is ``[N, C, 2·H_1, 2·W_1]`` (not cropped to the input)."""
    for high in reversed(highs):
        if low.shape[-2] > high.shape[-2]:
            low = low[..., :-1, :]
        if low.shape[-1] > high.shape[-1]:
            low = low[..., :-1]
        lh, hl, hh = high.unbind(dim=2)
        lo_w = _merge(low, lh, -2)
        hi_w = _merge(hl, hh, -2)
        low = _merge(lo_w, hi_w, -1)
    return low
