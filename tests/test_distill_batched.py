"""The batched and index-based loss pieces equal the per-cell and per-grid loops they replaced
(float64, fixed seeds): cell means, the one-cell top-k, SAMKD's grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from raykd.distill.cells import CellGrid, cell_grid, cell_mean
from raykd.distill.masks import topk_cell_mask

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
GRIDS = [(7, 5, 2), (7, 5, 3), (16, 16, 4), (3, 1, 2), (2, 2, 4), (1, 1, 2), (5, 9, 1), (1, 1, 1)]


def _cell_mean_loop(values: Tensor, h: int, w: int, g: int) -> Tensor:
    """Per cell, the mean of its positions of ``values [N, C, H·W]``; 0 in empty cells."""
    rows = np.round(np.linspace(0, h, g + 1)).astype(int)
    cols = np.round(np.linspace(0, w, g + 1)).astype(int)
    maps = values.reshape(*values.shape[:2], h, w)
    out = values.new_zeros(*values.shape[:2], g * g)
    for r in range(g):
        for c in range(g):
            cell = maps[:, :, rows[r]:rows[r + 1], cols[c]:cols[c + 1]]
            if cell.shape[-1] * cell.shape[-2]:
                out[:, :, r * g + c] = cell.mean(dim=(2, 3))
    return out


@pytest.mark.parametrize(("h", "w", "g"), GRIDS)
def test_cell_mean_equals_the_per_cell_loop(h, w, g):
    values = torch.randn(2, 3, h * w, generator=torch.Generator().manual_seed(h * 100 + w * 10 + g), dtype=torch.float64)
    torch.testing.assert_close(cell_mean(values, cell_grid(h, w, g, CPU)), _cell_mean_loop(values, h, w, g),
                               rtol=1e-12, atol=1e-15)


def _topk_grouped(scores: Tensor, grid: CellGrid, ratio: float) -> Tensor:
    """The grouped-by-cell ranking that ``topk_cell_mask`` runs for every g (before its one-cell path)."""
    n, p = scores.shape
    k_per_cell = torch.round(ratio * grid.counts.to(torch.float64)).long()
    k_per_cell = torch.where(grid.counts >= 2, k_per_cell, torch.zeros_like(k_per_cell))
    by_score = scores.argsort(dim=1, descending=True, stable=True)
    by_cell = grid.cell_of[by_score].argsort(dim=1, stable=True)
    positions = by_score.gather(1, by_cell)
    cells = grid.cell_of[positions]
    starts = torch.cumsum(grid.counts, 0) - grid.counts
    rank = torch.arange(p).expand(n, p) - starts[cells]
    keep = (rank >= k_per_cell[cells]).to(scores.dtype)
    return torch.empty_like(scores).scatter_(1, positions, keep)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.65, 1.0])
@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 2), (5, 9), (8, 8)])
def test_one_cell_topk_equals_the_grouped_ranking(h, w, ratio):
    g = torch.Generator().manual_seed(h * w)
    scores = torch.randint(0, 4, (3, h * w), generator=g).double()  # many ties: first position wins
    grid = cell_grid(h, w, 1, CPU)
    assert torch.equal(topk_cell_mask(scores, grid, ratio), _topk_grouped(scores, grid, ratio))
