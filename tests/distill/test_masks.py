"""Attention, cell partition and masks: counts per cell, polarity, the documented random draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from raykd.distill.attention import channel_attention, spatial_attention
from raykd.distill.cells import cell_grid, cell_mean
from raykd.distill.masks import MaskSettings, dual_masks, random_spatial_mask, topk_cell_mask

pytestmark = pytest.mark.usefixtures("one_thread")


CPU = torch.device("cpu")


def _cells_numpy(h: int, w: int, g: int) -> list[tuple[slice, slice]]:
    rows = np.round(np.linspace(0, h, g + 1)).astype(int)
    cols = np.round(np.linspace(0, w, g + 1)).astype(int)
    return [(slice(rows[r], rows[r + 1]), slice(cols[c], cols[c + 1])) for r in range(g) for c in range(g)]


@pytest.mark.parametrize(("h", "w", "g"), [(7, 5, 2), (7, 5, 3), (16, 16, 4), (3, 1, 2), (2, 2, 4), (1, 1, 2), (5, 9, 1)])
def test_cell_grid_follows_rounded_linspace(h, w, g):
    grid = cell_grid(h, w, g, CPU)
    cell_map = grid.cell_of.reshape(h, w)
    for index, (rs, cs) in enumerate(_cells_numpy(h, w, g)):
        assert (cell_map[rs, cs] == index).all()
        assert grid.counts[index] == (rs.stop - rs.start) * (cs.stop - cs.start)
    assert grid.counts.sum() == h * w


def test_cell_mean():
    values = torch.arange(12.0).reshape(1, 1, 12)  # a 3x4 map
    grid = cell_grid(3, 4, 2, CPU)  # rows [0,2) [2,3) (round(1.5) = 2), cols [0,2) [2,4)
    expected = torch.tensor([[[(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4, (8 + 9) / 2, (10 + 11) / 2]]])
    torch.testing.assert_close(cell_mean(values, grid), expected)


@pytest.mark.parametrize("ratio", [0.65, 0.5, 0.25, 1.0])
@pytest.mark.parametrize(("h", "w", "g"), [(7, 5, 2), (7, 5, 3), (16, 16, 4), (3, 1, 2), (4, 4, 4), (1, 1, 1), (9, 6, 1)])
def test_topk_masks_round_ratio_k_per_cell(h, w, g, ratio):
    torch.manual_seed(0)
    scores = torch.randn(3, h * w, dtype=torch.float64)
    grid = cell_grid(h, w, g, CPU)
    keep = topk_cell_mask(scores, grid, ratio).reshape(3, h, w)
    s = scores.reshape(3, h, w)
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    for rs, cs in _cells_numpy(h, w, g):
        k_cell = (rs.stop - rs.start) * (cs.stop - cs.start)
        if k_cell == 0:
            continue
        masked = (keep[:, rs, cs] == 0).reshape(3, -1)
        expected = round(ratio * k_cell) if k_cell >= 2 else 0
        assert (masked.sum(1) == expected).all()
        if 0 < expected < k_cell:  # the masked ones are the highest scores of the cell
            cell_scores = s[:, rs, cs].reshape(3, -1)
            lowest_masked = torch.where(masked, cell_scores, torch.inf).amin(1)
            highest_kept = torch.where(~masked, cell_scores, -torch.inf).amax(1)
            assert (lowest_masked > highest_kept).all()


def _settings(**kw) -> MaskSettings:
    base = dict(rule="topk", polarity="salient", source="teacher", spatial_ratio=0.25, channel_ratio=0.5, tau=0.5)
    base.update(kw)
    return MaskSettings(**base)


def test_polarity_picks_highest_or_lowest_attention():
    torch.manual_seed(0)
    teacher = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    student = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    g_s = teacher.abs().mean(1).reshape(2, -1)
    g_c = teacher.abs().mean((2, 3))
    for polarity, pick in (("salient", True), ("background", False)):
        keep_s, keep_c = dual_masks(student, teacher, _settings(polarity=polarity), 1, True, True)
        assert keep_s.shape == (2, 1, 4, 4) and keep_c.shape == (2, 6, 1, 1)
        masked_s = keep_s.reshape(2, -1) == 0
        masked_c = keep_c.reshape(2, -1) == 0
        assert (masked_s.sum(1) == 4).all() and (masked_c.sum(1) == 3).all()
        expected_s = g_s.topk(4, dim=1, largest=pick).indices
        expected_c = g_c.topk(3, dim=1, largest=pick).indices
        assert (masked_s.gather(1, expected_s)).all()
        assert (masked_c.gather(1, expected_c)).all()


def test_attention_source_student_uses_student_scores():
    torch.manual_seed(1)
    teacher = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    student = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    keep_s, _ = dual_masks(student, teacher, _settings(source="student"), 1, True, False)
    expected = student.detach().abs().mean(1).reshape(1, -1).topk(4).indices
    assert (keep_s.reshape(1, -1).gather(1, expected) == 0).all()
    assert not keep_s.requires_grad


def test_channel_masks_per_cell_use_local_attention():
    torch.manual_seed(2)
    h, w, g, c = 6, 4, 2, 8
    teacher = torch.randn(2, c, h, w, dtype=torch.float64)
    _, keep_c = dual_masks(teacher, teacher, _settings(), g, False, True)
    assert keep_c.shape == (2, c, h, w)
    for rs, cs in _cells_numpy(h, w, g):
        block = keep_c[:, :, rs, cs]
        assert (block == block[:, :, :1, :1]).all()  # constant inside a cell
        local = teacher[:, :, rs, cs].abs().mean((2, 3))
        masked = block[:, :, 0, 0] == 0
        assert (masked.sum(1) == 4).all()
        assert masked.gather(1, local.topk(4, dim=1).indices).all()


def test_small_cells_stay_unmasked_in_both_branches():
    torch.manual_seed(3)
    teacher = torch.randn(2, 4, 4, 4, dtype=torch.float64)  # g = 4: every cell has one position
    keep_s, keep_c = dual_masks(teacher, teacher, _settings(spatial_ratio=0.65), 4, True, True)
    assert (keep_s == 1).all() and (keep_c == 1).all()


def test_attention_sampled_masks_the_right_count_and_follows_attention():
    torch.manual_seed(4)
    teacher = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    teacher[:, :, :2] *= 50  # two rows with overwhelming attention
    settings = _settings(rule="attention_sampled", spatial_ratio=0.25, tau=0.05)
    keep_s, keep_c = dual_masks(teacher, teacher, settings, 1, True, True)
    assert (keep_s == 0).sum() == 16 and (keep_c == 0).sum() == 2
    assert (keep_s[0, 0, :2] == 0).all()


def _mgd_reference_mask(n: int, h: int, w: int, lambda_mgd: float) -> Tensor:
    """yzd-v/MGD ``det/mmdet/distillation/losses/mgd.py:63-64`` (commit 2c9da0b), as written."""
    mat = torch.rand((n, 1, h, w)).to(CPU)
    return torch.where(mat > 1 - lambda_mgd, 0, 1).to(CPU)


def test_random_mask_is_the_reference_draw():
    feat = torch.zeros(2, 3, 5, 7, dtype=torch.float64)
    for ratio in (0.65, 0.45, 0.5):
        torch.manual_seed(5)
        keep = random_spatial_mask(feat, ratio)
        torch.manual_seed(5)
        expected = _mgd_reference_mask(2, 5, 7, ratio).double()
        assert keep.dtype == torch.float64 and torch.equal(keep, expected)
    torch.manual_seed(5)
    u = torch.rand((2, 1, 5, 7))
    assert not torch.equal(expected, (u >= 0.5).double())  # keeping u >= λ would mask other positions
    torch.manual_seed(6)
    big = random_spatial_mask(torch.zeros(4, 1, 100, 100), 0.65)
    assert abs(float(1 - big.mean()) - 0.65) < 0.02


def test_attention_is_fgd_form():
    torch.manual_seed(7)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    a_s, a_c = spatial_attention(x, 0.5), channel_attention(x, 0.5)
    assert a_s.shape == (2, 1, 3, 4) and a_c.shape == (2, 5, 1, 1)
    torch.testing.assert_close(a_s.mean((1, 2, 3)), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(a_c.mean((1, 2, 3)), torch.ones(2, dtype=torch.float64))
    g = x[1].abs().mean(0).reshape(-1)
    torch.testing.assert_close(a_s[1].reshape(-1), 12 * torch.exp(2 * g) / torch.exp(2 * g).sum())


def test_random_dual_masks_draw_spatial_then_channel_per_cell():
    feat = torch.zeros(2, 3, 4, 5, dtype=torch.float64)
    settings = _settings(rule="random", spatial_ratio=0.65, channel_ratio=0.4)
    torch.manual_seed(8)
    keep_s, keep_c = dual_masks(feat, feat, settings, 2, True, True)
    torch.manual_seed(8)
    u_s = torch.rand((2, 1, 4, 5), dtype=torch.float32)
    u_c = torch.rand((2, 3, 4), dtype=torch.float32)
    assert torch.equal(keep_s, (u_s <= 1 - 0.65).double())
    grid = cell_grid(4, 5, 2, CPU)
    expected_c = (u_c <= 1 - 0.4).double()[:, :, grid.cell_of].reshape(2, 3, 4, 5)
    assert torch.equal(keep_c, expected_c)
    torch.manual_seed(8)
    _, keep_c1 = dual_masks(feat, feat, settings, 1, False, True)  # g = 1: one [N, C, 1, 1] draw
    torch.manual_seed(8)
    mat = torch.rand((2, 3, 1, 1))  # mmrazor MGDConnector's channel draw (commit 90c7af1)
    assert torch.equal(keep_c1, torch.where(mat > 1 - 0.4, 0, 1).double())
