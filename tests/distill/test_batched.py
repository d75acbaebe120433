"""The batched and index-based loss pieces equal the per-cell and per-grid loops they replaced
(float64, fixed seeds): cell means, the one-cell top-k, SAMKD's grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from raykd.distill import DistillConfig, build_distiller
from raykd.distill.cells import CellGrid, cell_grid, cell_mean
from raykd.distill.dmkd import note_masks
from raykd.distill.inputs import LevelInputs
from raykd.distill.masks import dual_masks, topk_cell_mask
from raykd.distill.record import Recorder, recording, scope

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


SAMKD_SWITCHES = [
    {},
    {"mask_rule": "random"},
    {"mask_rule": "attention_sampled", "polarity": "background", "attention_source": "student"},
    {"fusion": "sum_losses"},
    {"branches": "channel", "fusion": "gate"},
]


def _samkd_level(share: bool, scales: list[int], **switches) -> nn.Module:
    cfg = DistillConfig(method="samkd", alpha=0.3, pyramid_scales=scales, share_generators=share, sld=False, **switches)
    loss = build_distiller(cfg, 4, 4, ["0"], num_classes=3).double().losses["0"]
    with torch.no_grad():
        for recon in loss.reconstructions:
            for p in recon.parameters():
                p.add_(0.1 * torch.randn_like(p))  # a gate or fusion away from its symmetric start
    return loss


def _per_grid_sfd(loss: nn.Module, student: Tensor, teacher: Tensor) -> Tensor:
    """The loop SAMKD's cells mode ran: per grid its masks, then its reconstruction's loss."""
    per_grid = []
    for i, g in enumerate(loss.scales):
        recon = loss.reconstructions[i % len(loss.reconstructions)]
        keep_s, keep_c = dual_masks(student, teacher, loss.masks, g, recon.spatial is not None, recon.channel is not None)
        with scope(f"g{g}"):
            note_masks(keep_s, keep_c)
            per_grid.append(recon(student, teacher, keep_s, keep_c))
    return loss.alpha * torch.stack(per_grid).mean()


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("switches", SAMKD_SWITCHES)
@pytest.mark.parametrize(("h", "w", "scales"), [(6, 7, [1, 2, 4]), (3, 2, [1, 3])])  # (3, 2) by 3: empty cells
def test_samkd_cells_equal_the_per_grid_loop(share, switches, h, w, scales):
    loss = _samkd_level(share, scales, **switches)
    g0 = torch.Generator().manual_seed(5)
    student = torch.randn(2, 4, h, w, generator=g0, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 4, h, w, generator=g0, dtype=torch.float64)
    params = list(loss.parameters())
    results = []
    for run in (lambda: loss(LevelInputs(student, teacher, None, None, [], []))["sfd"],
                lambda: _per_grid_sfd(loss, student, teacher)):
        torch.manual_seed(11)  # the same global draws for the random and sampled rules
        with recording(Recorder()) as recorder:
            value = run()
        results.append((value, torch.autograd.grad(value, [student, *params]), recorder.values))
    (got, got_grads, got_notes), (want, want_grads, want_notes) = results
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    assert sorted(got_notes) == sorted(want_notes)
    for key, value in want_notes.items():
        torch.testing.assert_close(got_notes[key], value, rtol=1e-12, atol=1e-14)
