"""MGD, FGD, CWD, PKD and feature MSE against independent float64 computations of the
METHODS.md formulas (values and gradients w.r.t. student features and module parameters)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from raykd.distill import DistillConfig, build_distiller, flat_terms

pytestmark = pytest.mark.usefixtures("one_thread")


N, CS, CT = 2, 3, 4
SHAPES = {"0": (8, 6), "1": (4, 3)}
# Resized, unpadded size per image; the batch tensor is 64×48 (strides 8 and 16), image 1 is padded.
IMAGE_SIZES = [(64, 48), (40, 44)]
BOXES = [
    torch.tensor([[3.0, 5.0, 20.0, 30.0], [10.0, 0.0, 48.0, 64.0]]),  # second box touches the border
    torch.tensor([[1.5, 2.0, 17.0, 13.5], [30.0, 20.0, 44.0, 40.0]]),
]


def _inputs(seed: int = 0) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    student = {k: torch.randn(N, CS, h, w, generator=g, dtype=torch.float64, requires_grad=True) for k, (h, w) in SHAPES.items()}
    teacher = {k: 2 * torch.randn(N, CT, h, w, generator=g, dtype=torch.float64) for k, (h, w) in SHAPES.items()}
    return student, teacher


def _randomise(module: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial values for every parameter (zero-initialised convs would hide gradients)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _build(method: str, **kwargs):
    distiller = build_distiller(DistillConfig(method=method, **kwargs), CS, CT, list(SHAPES), num_classes=3)
    distiller.double()
    _randomise(distiller)
    return distiller


def _align(distiller, level: str, s: Tensor) -> Tensor:
    conv = distiller.align[level]
    return F.conv2d(s, conv.weight, conv.bias)


def _assert_matches(distiller, got: dict[str, Tensor], want: dict[str, Tensor], student: dict[str, Tensor]) -> None:
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-14)
    params = [p for p in distiller.parameters()]
    inputs = list(student.values()) + params
    g_got = torch.autograd.grad(sum(got.values()), inputs, allow_unused=True, retain_graph=True)
    g_want = torch.autograd.grad(sum(want.values()), inputs, allow_unused=True)
    for a, b in zip(g_got, g_want):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert all(g is not None for g in g_got[: len(student)])


def test_feature_mse_matches_formula():
    student, teacher = _inputs()
    d = _build("feature_mse", weight=0.7)
    got = flat_terms(d(student, teacher, None, None, BOXES, IMAGE_SIZES))
    want = {}
    for k in SHAPES:
        diff = _align(d, k, student[k]) - teacher[k]
        want[f"mse_{k}"] = 0.7 * (diff**2).sum() / diff.numel()
    _assert_matches(d, got, want, student)


def _generation(block, x: Tensor) -> Tensor:
    return F.conv2d(F.relu(F.conv2d(x, block[0].weight, block[0].bias, padding=1)), block[2].weight, block[2].bias, padding=1)


def test_mgd_matches_formula_on_the_same_draw():
    student, teacher = _inputs()
    d = _build("mgd", alpha=3e-2, mask_ratio=0.4)
    torch.manual_seed(123)
    got = flat_terms(d(student, teacher, None, None, BOXES, IMAGE_SIZES))
    torch.manual_seed(123)
    want = {}
    for k, (h, w) in SHAPES.items():
        keep = torch.where(torch.rand((N, 1, h, w)) > 1 - 0.4, 0, 1).double()  # yzd-v/MGD mgd.py:63-64
        assert 0 < keep.sum() < keep.numel()
        gen = _generation(d.losses[k].generation, _align(d, k, student[k]) * keep)
        want[f"mgd_{k}"] = 3e-2 * sum(((gen[n] - teacher[k][n]) ** 2).sum() for n in range(N)) / N
    _assert_matches(d, got, want, student)


def _attention(x: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Per image: spatial [H, W] and channel [C] attention, written out."""
    c, h, w = x.shape
    g_s = x.abs().mean(0)
    a_s = h * w * torch.exp(g_s / tau) / torch.exp(g_s / tau).sum()
    g_c = x.abs().reshape(c, -1).mean(1)
    a_c = c * torch.exp(g_c / tau) / torch.exp(g_c / tau).sum()
    return a_s, a_c


def _box_masks_reference(boxes: Tensor, img_shape: tuple[int, int], h: int, w: int) -> tuple[Tensor, Tensor]:
    """yzd-v/FGD ``fgd.py`` (commit c03a6cf) for one image, transcribed: boxes scaled by the
    image's own ``img_shape``, integer bounds, area ``1.0/dh/dw`` (default dtype), slicing loop."""
    fg = torch.zeros(h, w, dtype=torch.float64)
    new = torch.ones_like(boxes)
    new[:, 0] = boxes[:, 0] / img_shape[1] * w
    new[:, 2] = boxes[:, 2] / img_shape[1] * w
    new[:, 1] = boxes[:, 1] / img_shape[0] * h
    new[:, 3] = boxes[:, 3] / img_shape[0] * h
    wmin, wmax = torch.floor(new[:, 0]).int(), torch.ceil(new[:, 2]).int()
    hmin, hmax = torch.floor(new[:, 1]).int(), torch.ceil(new[:, 3]).int()
    area = 1.0 / (hmax.view(1, -1) + 1 - hmin.view(1, -1)) / (wmax.view(1, -1) + 1 - wmin.view(1, -1))
    for j in range(len(boxes)):
        region = fg[hmin[j] : hmax[j] + 1, wmin[j] : wmax[j] + 1]
        fg[hmin[j] : hmax[j] + 1, wmin[j] : wmax[j] + 1] = torch.maximum(region, area[0][j])
    bg = torch.where(fg > 0, 0.0, 1.0).double()
    if torch.sum(bg):
        bg = bg / torch.sum(bg)
    return fg, bg


def _gc_block(block, x: Tensor) -> Tensor:
    c, h, w = x.shape
    logits = (block.mask.weight.reshape(1, c) @ x.reshape(c, h * w)).reshape(-1) + block.mask.bias
    context = x.reshape(c, h * w) @ torch.softmax(logits, 0)  # [C]
    conv1, norm, _, conv2 = block.add
    hidden = conv1.weight.reshape(-1, c) @ context + conv1.bias
    hidden = (hidden - hidden.mean()) / torch.sqrt(hidden.var(unbiased=False) + norm.eps)
    hidden = torch.relu(hidden * norm.weight.reshape(-1) + norm.bias.reshape(-1))
    add = conv2.weight.reshape(c, -1) @ hidden + conv2.bias
    return x + add[:, None, None]


def test_fgd_matches_formula():
    student, teacher = _inputs()
    a, b, g_, lam, tau = 1e-1, 5e-2, 3e-2, 2e-2, 0.7
    d = _build("fgd", alpha=a, beta=b, gamma=g_, lambda_gl=lam, tau=tau)
    got = flat_terms(d(student, teacher, None, None, BOXES, IMAGE_SIZES))
    want = {}
    for k, (h, w) in SHAPES.items():
        s_all = _align(d, k, student[k])
        fg_l = bg_l = at_l = gl_l = 0.0
        for n in range(N):
            s, t = s_all[n], teacher[k][n]
            as_t, ac_t = _attention(t, tau)
            as_s, ac_s = _attention(s, tau)
            fg, bg = _box_masks_reference(BOXES[n], IMAGE_SIZES[n], h, w)
            err = (t - s) ** 2 * as_t[None] * ac_t[:, None, None]
            fg_l = fg_l + (err * fg[None]).sum()
            bg_l = bg_l + (err * bg[None]).sum()
            at_l = at_l + (ac_s - ac_t).abs().sum() + (as_s - as_t).abs().sum()
            loss = d.losses[k]
            gl_l = gl_l + ((_gc_block(loss.context_student, s) - _gc_block(loss.context_teacher, t)) ** 2).sum()
        want.update({f"fgd_fg_{k}": a * fg_l / N, f"fgd_bg_{k}": b * bg_l / N,
                     f"fgd_at_{k}": g_ * at_l / N, f"fgd_gl_{k}": lam * gl_l / N})
    _assert_matches(d, got, want, student)


def test_fgd_box_masks_are_non_trivial_here():
    for n in range(N):
        fg, bg = _box_masks_reference(BOXES[n], IMAGE_SIZES[n], *SHAPES["0"])
        assert (fg > 0).any() and (bg > 0).any() and fg.max() < 1
    # the padded image's own size moves its foreground: scaling by the batch size would differ
    own, _ = _box_masks_reference(BOXES[1], IMAGE_SIZES[1], *SHAPES["0"])
    batch, _ = _box_masks_reference(BOXES[1], IMAGE_SIZES[0], *SHAPES["0"])
    assert not torch.equal(own, batch)


def test_fgd_area_is_computed_in_the_default_dtype_like_the_reference():
    """A 3×7-cell box: the float64 mask holds float32(1/3)/7, not the float64 1/21."""
    from raykd.distill.fgd import box_masks

    feat = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    fg, _ = box_masks([torch.tensor([[0.0, 0.0, 6.0, 2.0]])], [(8, 8)], feat)
    want = (torch.tensor(1.0 / 3, dtype=torch.float32) / 7).double()
    assert fg[0, 0, 0, 0].item() == want.item() != 1.0 / 21


def test_fgd_global_block_starts_as_identity():
    d = build_distiller(DistillConfig(method="fgd"), CS, CT, list(SHAPES), num_classes=3)
    for block in (d.losses["0"].context_student, d.losses["0"].context_teacher):
        assert torch.count_nonzero(block.add[-1].weight) == 0 and torch.count_nonzero(block.add[-1].bias) == 0
        assert torch.count_nonzero(block.mask.bias) == 0


def test_cwd_matches_formula():
    student, teacher = _inputs()
    d = _build("cwd", weight=3.0, cwd_tau=2.0)
    got = flat_terms(d(student, teacher, None, None, BOXES, IMAGE_SIZES))
    want = {}
    for k in SHAPES:
        s_all, t_all = _align(d, k, student[k]), teacher[k]
        kl = 0.0
        for n in range(N):
            for c in range(CT):
                p_t = torch.softmax(t_all[n, c].reshape(-1) / 2.0, 0)
                p_s = torch.softmax(s_all[n, c].reshape(-1) / 2.0, 0)
                kl = kl + (p_t * (torch.log(p_t) - torch.log(p_s))).sum()
        want[f"cwd_{k}"] = 3.0 * 2.0**2 / (CT * N) * kl
    _assert_matches(d, got, want, student)


def test_pkd_matches_formula():
    student, teacher = _inputs()
    d = _build("pkd", weight=8.0)
    got = flat_terms(d(student, teacher, None, None, BOXES, IMAGE_SIZES))

    def standardise(x: Tensor) -> Tensor:
        out = torch.empty_like(x)
        for c in range(x.shape[1]):
            v = x[:, c]
            mean = v.sum() / v.numel()
            std = torch.sqrt(((v - mean) ** 2).sum() / (v.numel() - 1))
            out[:, c] = (v - mean) / (std + 1e-6)
        return out

    want = {}
    for k in SHAPES:
        diff = standardise(_align(d, k, student[k])) - standardise(teacher[k])
        want[f"pkd_{k}"] = 8.0 * (diff**2).sum() / diff.numel() / 2
    _assert_matches(d, got, want, student)


def test_align_is_identity_when_widths_match():
    d = build_distiller(DistillConfig(method="mgd"), CT, CT, list(SHAPES), num_classes=3)
    assert all(isinstance(m, torch.nn.Identity) for m in d.align.values())
    d = build_distiller(DistillConfig(method="mgd"), CS, CT, list(SHAPES), num_classes=3)
    conv = d.align["0"]
    assert conv.kernel_size == (1, 1) and conv.bias is not None and (conv.in_channels, conv.out_channels) == (CS, CT)
