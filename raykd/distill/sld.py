"""Pieces of SAMKD's region-adaptive logit distillation (SLD) — a RECONSTRUCTION, see METHODS.md."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raykd.distill.cells import CellGrid, cell_broadcast, cell_mean
from raykd.distill.options import SLDWeighting


def foreground_logits(logits: Tensor, num_classes: int) -> Tensor:
    """``[N, A·K, H, W]`` -> ``[N, A, K − 1, H, W]``: drop the unused background class 0."""
    n, channels, h, w = logits.shape
    if channels % num_classes:
        raise ValueError(f"logit channels {channels} are not a multiple of num_classes {num_classes}")
    return logits.reshape(n, channels // num_classes, num_classes, h, w)[:, :, 1:]


def region_discrepancy(discrepancy: Tensor, grid: CellGrid) -> Tensor:
    """Average a per-position discrepancy ``[N, H, W]`` over each cell of ``grid``: ``[N, g·g]``."""
    n = discrepancy.shape[0]
    return cell_mean(discrepancy.reshape(n, 1, -1), grid)[:, 0]


def region_weights(per_cell: Tensor, grid: CellGrid, weighting: SLDWeighting, tau: float, ratio: float) -> Tensor:
    """Per-position weights ``[N, H, W]`` from per-cell discrepancies ``[N, g·g]``.

    ``softmax``: ``W = H·W · softmax_hw(D / τ_w)`` with D the cell value at every position.
    ``mask``: weight 1 in the ``max(1, round(ρ · #non-empty cells))`` cells of highest D
    (ties: first cell wins), 0 elsewhere.
    """
    n = per_cell.shape[0]
    h, w = grid.height, grid.width
    if weighting == "softmax":
        d = cell_broadcast(per_cell[:, None], grid).reshape(n, h * w)
        return (h * w * torch.softmax(d / tau, dim=1)).reshape(n, h, w)
    nonempty = grid.counts > 0
    k = max(1, round(ratio * grid.nonempty))
    scores = per_cell.masked_fill(~nonempty, float("-inf"))
    top = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    chosen = torch.zeros_like(per_cell).scatter_(1, top, 1.0)
    return cell_broadcast(chosen[:, None], grid)[:, 0]


def binary_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per-location KL between sigmoid probabilities at temperature T, summed over anchors and
    classes: ``[N, A, K', H, W]`` (both) -> ``[N, H, W]``.

    ``KL = p_t (log p_t − log p_s) + (1 − p_t)(log(1 − p_t) − log(1 − p_s))``, ``p = σ(z / T)``.
    """
    z_s, z_t = student_logits / temperature, teacher_logits / temperature
    p_t = torch.sigmoid(z_t)
    kl = p_t * (F.logsigmoid(z_t) - F.logsigmoid(z_s)) + (1 - p_t) * (F.logsigmoid(-z_t) - F.logsigmoid(-z_s))
    return kl.sum(dim=(1, 2))
