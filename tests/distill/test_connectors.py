"""Connectors: fusion modes, generation block, the two-branch reconstruction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raykd.distill.connectors import Fusion, GenerationBlock
from raykd.distill.dmkd import DualReconstruction


def _pair(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)


def test_learned_fusion_starts_equal_and_uses_softmax_weights():
    a, b = _pair()
    fusion = Fusion("learned", 3)
    torch.testing.assert_close(fusion(a, b), (a + b) / 2)
    with torch.no_grad():
        fusion.logits.copy_(torch.tensor([1.0, -1.0]))
    w0 = torch.exp(torch.tensor(1.0)) / (torch.exp(torch.tensor(1.0)) + torch.exp(torch.tensor(-1.0)))
    torch.testing.assert_close(fusion(a, b), w0 * a + (1 - w0) * b)


def test_mean_and_gate_fusion():
    a, b = _pair(1)
    assert list(Fusion("mean", 3).parameters()) == []
    torch.testing.assert_close(Fusion("mean", 3)(a, b), (a + b) / 2)
    gate = Fusion("gate", 3)
    torch.testing.assert_close(gate(a, b), (a + b) / 2)
    with torch.no_grad():
        gate.gate.copy_(torch.tensor([2.0, 0.0, -3.0]).reshape(1, 3, 1, 1))
    sig = torch.sigmoid(torch.tensor([2.0, 0.0, -3.0])).reshape(1, 3, 1, 1)
    torch.testing.assert_close(gate(a, b), sig * a + (1 - sig) * b)
    with pytest.raises(ValueError):
        Fusion("sum_losses", 3)


def test_generation_block_shape_and_layers():
    block = GenerationBlock(5)
    x = torch.randn(2, 5, 3, 4)
    y = F.conv2d(F.relu(F.conv2d(x, block[0].weight, block[0].bias, padding=1)), block[2].weight, block[2].bias, padding=1)
    torch.testing.assert_close(block(x), y)
    assert block[0].kernel_size == (3, 3) and block[2].kernel_size == (3, 3)


def test_sum_losses_keeps_two_separate_losses():
    s, t = _pair(2)
    keep_s = (torch.rand(2, 1, 4, 4) > 0.5).float()
    keep_c = (torch.rand(2, 3, 1, 1) > 0.5).float()
    recon = DualReconstruction(3, "dual", "sum_losses")
    assert recon.fuse is None
    want = ((recon.spatial(s * keep_s) - t) ** 2).sum() / 2 + ((recon.channel(s * keep_c) - t) ** 2).sum() / 2
    torch.testing.assert_close(recon(s, t, keep_s, keep_c), want)


@pytest.mark.parametrize(("branches", "spatial", "channel"),
                         [("spatial", True, False), ("channel", False, True), ("dual", True, True)])
def test_branches_build_only_their_generators(branches, spatial, channel):
    recon = DualReconstruction(3, branches, "learned")
    assert (recon.spatial is not None, recon.channel is not None) == (spatial, channel)
    assert (recon.fuse is not None) == (branches == "dual")
