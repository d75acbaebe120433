"""FreeKD: the Haar DWT against pytorch_wavelets, the loss against a transcription of the
reference code (Gumpest/FreeKD mmrazor/models/losses/freekd.py, commit e0874f5), float64."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from raykd.distill import DistillConfig, build_distiller, flat_terms
from raykd.distill.freekd import prompt_reconstruction
from raykd.distill.wavelets import haar_dwt, haar_idwt

with warnings.catch_warnings():  # pytorch_wavelets imports the deprecated pkg_resources
    warnings.simplefilter("ignore")
    from pytorch_wavelets import DWTForward, DWTInverse


pytestmark = pytest.mark.usefixtures("one_thread")


def _in_float64(build):
    """A pytorch_wavelets module with its filters built in float64 (they follow the default dtype)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return build()
    finally:
        torch.set_default_dtype(before)


def _reference_dwt() -> DWTForward:
    return _in_float64(lambda: DWTForward(J=3, mode="zero", wave="haar"))


def _reference_idwt() -> DWTInverse:
    return _in_float64(lambda: DWTInverse(mode="zero", wave="haar"))


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (2, 3, 7, 10), (1, 2, 5, 3), (2, 3, 1, 1), (1, 1, 2, 9)])
def test_haar_dwt_matches_pytorch_wavelets(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    low_r, highs_r = _reference_dwt()(x)
    low, highs = haar_dwt(x, 3)
    torch.testing.assert_close(low, low_r, rtol=1e-12, atol=1e-14)
    assert len(highs) == len(highs_r) == 3
    for h, h_r in zip(highs, highs_r):
        assert h.shape == h_r.shape
        torch.testing.assert_close(h, h_r, rtol=1e-12, atol=1e-14)
    weights = [torch.randn(h.shape, generator=g, dtype=torch.float64) for h in [low, *highs]]
    grad = torch.autograd.grad(sum((w * h).sum() for w, h in zip(weights, [low, *highs])), x)[0]
    grad_r = torch.autograd.grad(sum((w * h).sum() for w, h in zip(weights, [low_r, *highs_r])), x)[0]
    torch.testing.assert_close(grad, grad_r, rtol=1e-12, atol=1e-14)


def _reference_freekd(y_s: Tensor, y_t: Tensor, mask_token: Tensor, xfm: DWTForward) -> Tensor:
    """``FreeKDLoss.forward`` for one stage with loss_weight 1, as written in the reference."""

    def forward_mask(x: Tensor, token: Tensor) -> Tensor:
        n, c, h, w = x.shape
        token = token.expand(n, -1, -1)
        attn = token @ x.view(n, -1, h * w)
        return attn.sigmoid().view(n, -1, h, w)

    cA, (cH, cV, cD) = xfm(y_t)
    cA_s, (cH_s, cV_s, cD_s) = xfm(y_s)
    mask_cH = forward_mask(cH.sum(2), mask_token[1])
    out_cH = cH.unsqueeze(1) * mask_cH.unsqueeze(2).unsqueeze(2)
    out_cH_s = cH_s.unsqueeze(1) * mask_cH.unsqueeze(2).unsqueeze(2)
    mask_cV = forward_mask(cV.sum(2), mask_token[2])
    out_cV = cV.unsqueeze(1) * mask_cV.unsqueeze(2).unsqueeze(2)
    out_cV_s = cV_s.unsqueeze(1) * mask_cV.unsqueeze(2).unsqueeze(2)
    mask_cD = forward_mask(cD.sum(2), mask_token[3])
    out_cD = cD.unsqueeze(1) * mask_cD.unsqueeze(2).unsqueeze(2)
    out_cD_s = cD_s.unsqueeze(1) * mask_cD.unsqueeze(2).unsqueeze(2)
    return F.l1_loss(out_cH_s, out_cH) + F.l1_loss(out_cV_s, out_cV) + F.l1_loss(out_cD_s, out_cD)


LEVELS = {"0": (12, 10), "1": (6, 5), "p7": (1, 1)}
N, CS, CT, TOKENS = 2, 3, 4, 5


def test_freekd_matches_the_reference_code():
    g = torch.Generator().manual_seed(1)
    student = {k: torch.randn(N, CS, h, w, generator=g, dtype=torch.float64, requires_grad=True) for k, (h, w) in LEVELS.items()}
    teacher = {k: torch.randn(N, CT, h, w, generator=g, dtype=torch.float64) for k, (h, w) in LEVELS.items()}
    cfg = DistillConfig(method="freekd", alpha=0.7, freekd_mse_weight=3.0, freekd_tokens=TOKENS)
    d = build_distiller(cfg, CS, CT, list(LEVELS), num_classes=3).double()
    for level in LEVELS:  # prompts strong enough that the masks vary between 0 and 1
        d.losses[level].load_tokens(torch.randn(4, TOKENS, CT, generator=g, dtype=torch.float64))
    assert not any(name.endswith("mask_token") for name, _ in d.named_parameters())  # frozen, as lr_mult=0
    got = flat_terms(d(student, teacher, None, None, [torch.zeros(0, 4)] * N, [(96, 80)] * N))
    xfm = _reference_dwt()
    want = {}
    for level in LEVELS:
        aligned = F.conv2d(student[level], d.align[level].weight, d.align[level].bias)
        tokens = d.losses[level].mask_token
        want[f"freekd_{level}"] = 0.7 * _reference_freekd(aligned, teacher[level], tokens, xfm)
        want[f"freekd_mse_{level}"] = 3.0 * torch.nn.MSELoss()(aligned, teacher[level])
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-14)
    inputs = list(student.values()) + list(d.parameters())
    g_got = torch.autograd.grad(sum(got.values()), inputs, retain_graph=True)
    g_want = torch.autograd.grad(sum(want.values()), inputs)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    masks = d.losses["0"].prompt_masks(haar_dwt(teacher["0"], 3)[1][0], 1)
    assert masks.min() < 0.2 and masks.max() > 0.8


def test_freekd_tokens_start_as_the_reference_draw():
    torch.manual_seed(3)
    d = build_distiller(DistillConfig(method="freekd"), 8, 8, ["0"], num_classes=3)
    torch.manual_seed(3)
    want = torch.randn(4, 6, 8).normal_(0, 0.01)  # MaskModule.__init__, num_tokens=6 as the configs
    assert torch.equal(d.losses["0"].mask_token, want)
    with pytest.raises(ValueError, match="mask tokens of shape"):
        d.losses["0"].load_tokens(torch.zeros(4, 2, 8))


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (2, 3, 7, 10), (2, 3, 1, 1)])
def test_haar_idwt_matches_pytorch_wavelets(shape):
    g = torch.Generator().manual_seed(5)
    low, highs = haar_dwt(torch.randn(*shape, generator=g, dtype=torch.float64), 3)
    low = torch.randn(low.shape, generator=g, dtype=torch.float64, requires_grad=True)
    highs = [torch.randn(h.shape, generator=g, dtype=torch.float64, requires_grad=True) for h in highs]
    got, want = haar_idwt(low, highs), _reference_idwt()((low, highs))
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(haar_idwt(*haar_dwt(x, 3))[..., : shape[2], : shape[3]], x)  # perfect reconstruction


def _reference_dice(inputs: Tensor) -> Tensor:
    pred = inputs[:, None, :, :]
    target = inputs[:, :, None, :]
    mask = pred.new_ones(pred.size(0), target.size(1), pred.size(2))
    mask[:, torch.arange(mask.size(1)), torch.arange(mask.size(2))] = 0
    a = torch.sum(pred * target, -1)
    b = torch.sum(pred * pred, -1) + 1e-12
    c = torch.sum(target * target, -1) + 1e-12
    d = (2 * a) / (b + c)
    return (d * mask).sum() / mask.sum()


def _reference_mask_module(x: Tensor, mask_token: Tensor) -> tuple[Tensor, Tensor]:
    """``MaskModule.forward_train`` of the reference, as written."""

    def forward_mask(x: Tensor, token: Tensor) -> Tensor:
        n, c, h, w = x.shape
        attn = token.expand(n, -1, -1) @ x.view(n, -1, h * w)
        return attn.sigmoid().view(n, -1, h, w)

    cA, (cH, cV, cD) = _reference_dwt()(x)
    mask_cA = forward_mask(cA, mask_token[0])
    out_cA = (cA.unsqueeze(1) * mask_cA.unsqueeze(2)).sum(1)
    mask_cH = forward_mask(cH.sum(2), mask_token[1])
    out_cH = (cH.unsqueeze(1) * mask_cH.unsqueeze(2).unsqueeze(2)).sum(1)
    mask_cV = forward_mask(cV.sum(2), mask_token[2])
    out_cV = (cV.unsqueeze(1) * mask_cV.unsqueeze(2).unsqueeze(2)).sum(1)
    mask_cD = forward_mask(cD.sum(2), mask_token[3])
    out_cD = (cD.unsqueeze(1) * mask_cD.unsqueeze(2).unsqueeze(2)).sum(1)
    mask_loss = _reference_dice(mask_cA.flatten(2)) + _reference_dice(mask_cD.flatten(2)) \
        + _reference_dice(mask_cV.flatten(2)) + _reference_dice(mask_cH.flatten(2))
    return _reference_idwt()((out_cA, (out_cH, out_cV, out_cD))), mask_loss


@pytest.mark.parametrize("shape", [(2, 4, 12, 10), (2, 4, 5, 7)])
def test_prompt_reconstruction_matches_the_reference_mask_module(shape):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    tokens = torch.randn(4, TOKENS, shape[1], generator=g, dtype=torch.float64, requires_grad=True)
    out, dice = prompt_reconstruction(x, tokens)
    out_r, dice_r = _reference_mask_module(x, tokens)
    torch.testing.assert_close(out, out_r, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dice, dice_r, rtol=1e-10, atol=1e-14)
    weight = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grad = torch.autograd.grad((weight * out).sum() + dice, tokens)[0]
    grad_r = torch.autograd.grad((weight * out_r).sum() + dice_r, tokens)[0]
    torch.testing.assert_close(grad, grad_r, rtol=1e-9, atol=1e-12)
