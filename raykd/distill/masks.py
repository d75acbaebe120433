"""Keep-masks (1 = kept, 0 = masked) for feature-masking distillation.

Random draws without a ``generator`` are the reference code's call,
``torch.rand(shape).to(feature.device)``: the global CPU generator in the default dtype
(float32), moved to the feature's device, so a seeded run draws the same numbers on CPU and GPU
(``distill.draw: reference``). With a ``generator`` (the trainer's per-rank one on the training
device, ``distill.draw: device``) the same call draws on that device: no host work, no copy. Both the spatial
and the per-channel draw mask where
``u > 1 − ratio`` (probability ``ratio``), as yzd-v/MGD ``det/mmdet/distillation/losses/mgd.py``
(commit 2c9da0b) and mmrazor's ``MGDConnector`` (``mgd_connector.py``, commit 90c7af1, which
draws ``[N, 1, H, W]`` or ``[N, C, 1, 1]``). Two methods that draw the same shapes in the same order after
the same ``torch.manual_seed`` get the same masks. :func:`dual_masks` draws the spatial mask
before the channel mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from raykd.distill.cells import CellGrid, cell_broadcast, cell_grid, cell_mean
from raykd.distill.options import AttentionSource, MaskRule, Polarity


def _uniform(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    if generator is None:
        return torch.rand(shape).to(device)
    return torch.rand(shape, device=generator.device, generator=generator).to(device)


def random_spatial_mask(feat: Tensor, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """MGD's mask: ``[N, C, H, W]`` -> ``[N, 1, H, W]``, masked (0) where ``u > 1 − ratio``."""
    n, _, h, w = feat.shape
    return (_uniform((n, 1, h, w), feat.device, generator) <= 1 - ratio).to(feat.dtype)


def _gumbel(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> Tensor:
    u = _uniform(shape, device, generator).clamp(min=1e-12, max=1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def topk_cell_mask(scores: Tensor, grid: CellGrid, ratio: float) -> Tensor:
    """Spatial top-k per cell: ``scores [N, H·W]`` -> keep-mask ``[N, H·W]``.

    In every cell with K ≥ 2 positions the ``round(ratio·K)`` highest-scoring positions are
    masked (ties broken by position, first wins); cells with K < 2 positions stay unmasked.
    """
    n, p = scores.shape
    by_score = scores.argsort(dim=1, descending=True, stable=True)
    if grid.g == 1:  # one cell: the rank is the place in by_score, no grouping by cell
        k = round(ratio * p) if p >= 2 else 0
        keep = (torch.arange(p, device=scores.device) >= k).to(scores.dtype).expand(n, p)
        return torch.empty_like(scores).scatter_(1, by_score, keep)
    k_per_cell = torch.round(ratio * grid.counts.to(torch.float64)).long()
    k_per_cell = torch.where(grid.counts >= 2, k_per_cell, torch.zeros_like(k_per_cell))
    by_cell = grid.cell_of[by_score].argsort(dim=1, stable=True)
    positions = by_score.gather(1, by_cell)  # grouped by cell, best score first within a cell
    cells = grid.cell_of[positions]
    starts = torch.cumsum(grid.counts, 0) - grid.counts
    rank = torch.arange(p, device=scores.device).expand(n, p) - starts[cells]
    keep = (rank >= k_per_cell[cells]).to(scores.dtype)
    return torch.empty_like(scores).scatter_(1, positions, keep)


def topk_channel_mask(scores: Tensor, grid: CellGrid, ratio: float) -> Tensor:
    """Channel top-k per cell: ``scores [N, C, g·g]`` -> keep-mask ``[N, C, g·g]``.

    In every cell with ≥ 2 positions the ``round(ratio·C)`` highest-scoring channels are
    masked; cells with fewer positions stay unmasked.
    """
    c = scores.shape[1]
    k = round(ratio * c)
    keep = torch.ones_like(scores)
    if k > 0:
        top = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
        keep.scatter_(1, top, 0.0)
    small = (grid.counts < 2).expand_as(keep)
    return torch.where(small, torch.ones_like(keep), keep)


@dataclass(frozen=True)
class MaskSettings:
    """How DMKD/SAMKD choose what to mask.

    ``rule``: ``topk`` masks, in every cell, the ``round(ratio·K)`` positions (channels) with
    the highest attention (``polarity="salient"``) or the lowest (``"background"``);
    ``attention_sampled`` masks as many, sampled without replacement with probability
    ∝ ``softmax(±G/τ)`` (the attention, or its reverse for ``background``) by Gumbel top-k.
    Both leave a cell with fewer than 2 positions unmasked — also a whole 1×1 map in DMKD.
    ``random`` is MGD's Bernoulli draw, per position (spatial) and per channel and cell
    (channel), blind to attention and polarity and without the 2-position rule, so that
    DMKD with ``branches="spatial"`` is exactly MGD. ``source``: whose attention (teacher T,
    or the aligned student S' detached). Ratios are λ_s and λ_c.
    """

    rule: MaskRule
    polarity: Polarity
    source: AttentionSource
    spatial_ratio: float
    channel_ratio: float
    tau: float


def attention_source(student: Tensor, teacher: Tensor, settings: MaskSettings) -> Tensor | None:
    """``|F|`` of the attention source, detached, ``[N, C, H, W]``; None for the random rule
    (it reads no attention)."""
    if settings.rule == "random":
        return None
    return (teacher if settings.source == "teacher" else student).detach().abs()


def dual_masks(
    student: Tensor,
    teacher: Tensor,
    settings: MaskSettings,
    g: int,
    spatial: bool,
    channel: bool,
    spatial_boost: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Keep-masks of the spatial and channel branches on a g×g cell grid (g = 1: whole map).

    ``student`` (aligned) and ``teacher`` are ``[N, C, H, W]``. Returns the spatial mask
    ``[N, 1, H, W]`` (or None when ``spatial`` is False) and the channel mask ``[N, C, 1, 1]``
    for g = 1, ``[N, C, H, W]`` (constant inside each cell) for g > 1 (or None). Attention
    (``G_s = mean_c |F|`` per position, ``G_c = mean |F|`` over each cell's positions) is
    computed per cell. Random draws: spatial ``[N, 1, H, W]`` first, then channel ``[N, C, g·g]``.
    ``spatial_boost`` ``[N, 1, H, W]`` (DFMSD's masking enhancement) multiplies ``G_s`` before
    the spatial top-k or sampling; the random rule ignores it. ``generator``: see the module's doc.
    """
    with torch.no_grad():
        source = attention_source(student, teacher, settings)
    return grid_masks(teacher, source, settings, g, spatial, channel, spatial_boost, generator)


def grid_masks(
    teacher: Tensor,
    source: Tensor | None,
    settings: MaskSettings,
    g: int,
    spatial: bool,
    channel: bool,
    spatial_boost: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """:func:`dual_masks` from a precomputed :func:`attention_source`, so that several grids
    on one map (SAMKD's cells) share it. ``teacher`` gives the shape, device and the random
    masks' dtype."""
    n, c, h, w = teacher.shape
    with torch.no_grad():
        grid = cell_grid(h, w, g, teacher.device)
        sign = 1.0 if settings.polarity == "salient" else -1.0
        keep_s = keep_c = None
        if spatial:
            if source is None:
                keep_s = random_spatial_mask(teacher, settings.spatial_ratio, generator)
            else:
                attention = source.mean(dim=1, keepdim=True)
                if spatial_boost is not None:
                    attention = attention * spatial_boost
                scores = sign * attention.reshape(n, h * w) / settings.tau
                if settings.rule == "attention_sampled":
                    scores = scores + _gumbel((n, h * w), teacher.device, generator).to(scores.dtype)
                keep_s = topk_cell_mask(scores, grid, settings.spatial_ratio).reshape(n, 1, h, w)
        if channel:
            if source is None:
                per_cell = (_uniform((n, c, g * g), teacher.device, generator) <= 1 - settings.channel_ratio).to(teacher.dtype)
            else:
                scores = sign * cell_mean(source.reshape(n, c, h * w), grid) / settings.tau
                if settings.rule == "attention_sampled":
                    scores = scores + _gumbel((n, c, g * g), teacher.device, generator).to(scores.dtype)
                per_cell = topk_channel_mask(scores, grid, settings.channel_ratio)
            keep_c = per_cell.reshape(n, c, 1, 1) if g == 1 else cell_broadcast(per_cell, grid)
    return keep_s, keep_c
