"""The g×g cell partition of a feature map used by SAMKD (and, with g = 1, by DMKD)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class CellGrid:
    """A g×g partition of an H×W map; cell ``r·g + c`` covers rows ``[b_r, b_{r+1})`` and
    columns ``[b'_c, b'_{c+1})`` with boundaries ``round(linspace(0, H, g+1))`` (rounding
    half to even). Cells can be empty when g > H or g > W.

    ``cell_of``: ``[H·W]`` int64, the cell of every position in row-major order.
    ``counts``: ``[g·g]`` int64, the number of positions per cell; ``nonempty``: how many
    cells have at least one position (a Python int: reading it needs no device sync).
    """

    g: int
    height: int
    width: int
    cell_of: Tensor
    counts: Tensor
    nonempty: int

    @property
    def num_cells(self) -> int:
        return self.g * self.g


def _split(size: int, g: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The cell index of each of ``size`` rows (columns), ``[size]``, and the cell sizes, ``[g]``."""
    bounds = torch.round(torch.linspace(0, size, g + 1, dtype=torch.float64, device=device))
    index = torch.arange(size, dtype=torch.float64, device=device)
    return torch.bucketize(index, bounds[1:-1], right=True), (bounds[1:] - bounds[:-1]).long()


def cell_grid(height: int, width: int, g: int, device: torch.device | str) -> CellGrid:
    """The g×g partition of an ``height × width`` map on ``device``; built once per shape and
    device (on the CPU, then copied) and shared: treat its tensors as read-only."""
    return _cached_grid(height, width, g, torch.device(device))


@lru_cache(maxsize=512)
def _cached_grid(height: int, width: int, g: int, device: torch.device) -> CellGrid:
    cpu = torch.device("cpu")
    rows, row_sizes = _split(height, g, cpu)
    cols, col_sizes = _split(width, g, cpu)
    cell_of = (rows[:, None] * g + cols[None, :]).reshape(-1)
    counts = (row_sizes[:, None] * col_sizes[None, :]).reshape(-1)
    return CellGrid(g=g, height=height, width=width, cell_of=cell_of.to(device), counts=counts.to(device),
                    nonempty=int(np.count_nonzero(counts.numpy())))  # built on the CPU: no device sync


def cell_mean(values: Tensor, grid: CellGrid) -> Tensor:
    """Mean of ``values [N, C, H·W]`` over each cell's positions: ``[N, C, g·g]`` (0 in empty cells)."""
    sums = values.new_zeros(values.shape[0], values.shape[1], grid.num_cells)
    sums.index_add_(2, grid.cell_of, values)
    return sums / grid.counts.clamp(min=1).to(values.dtype)


def cell_broadcast(per_cell: Tensor, grid: CellGrid) -> Tensor:
    """Spread ``per_cell [N, C, g·g]`` back to positions: ``[N, C, H, W]``."""
    n, c = per_cell.shape[:2]
    return per_cell[:, :, grid.cell_of].reshape(n, c, grid.height, grid.width)
