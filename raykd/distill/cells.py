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

    ``cell_of``: ``[H·W]`` int64, the cell of every position in row-major order; ``row_of``
    ``[H]`` / ``col_of`` ``[W]`` int64: the cell row (column) of every row (column).
    ``counts``: ``[g·g]`` int64, the number of positions per cell; ``nonempty``: how many
    cells have at least one position (a Python int: reading it needs no device sync).
    """

    g: int
    height: int
    width: int
    cell_of: Tensor
    row_of: Tensor
    col_of: Tensor
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
    return CellGrid(g=g, height=height, width=width, cell_of=cell_of.to(device), row_of=rows.to(device),
                    col_of=cols.to(device), counts=counts.to(device),
                    nonempty=int(np.count_nonzero(counts.numpy())))  # built on the CPU: no device sync


def cell_mean(values: Tensor, grid: CellGrid) -> Tensor:
    """Mean of ``values [N, C, H·W]`` over each cell's positions: ``[N, C, g·g]`` (0 in empty cells).

    Summed over column bands, then row bands: a scatter-add of all H·W positions into g·g
    cells would make up to H·W atomic adds on one address on a GPU.
    """
    n, c = values.shape[:2]
    if grid.g == 1:
        return values.mean(dim=2, keepdim=True)
    maps = values.reshape(n, c, grid.height, grid.width)
    by_column = maps.new_zeros(n, c, grid.height, grid.g).index_add_(3, grid.col_of, maps)
    sums = maps.new_zeros(n, c, grid.g, grid.g).index_add_(2, grid.row_of, by_column)
    return sums.reshape(n, c, grid.num_cells) / grid.counts.clamp(min=1).to(values.dtype)


def cell_broadcast(per_cell: Tensor, grid: CellGrid) -> Tensor:
    """Spread ``per_cell [N, C, g·g]`` back to positions: ``[N, C, H, W]``."""
    n, c = per_cell.shape[:2]
    return per_cell[:, :, grid.cell_of].reshape(n, c, grid.height, grid.width)
