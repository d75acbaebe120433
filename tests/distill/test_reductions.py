"""The reconstructions reduce to their parents: DMKD -> MGD, SAMKD -> DMKD; SLD against its formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raykd.distill import DistillConfig, build_distiller, flat_terms
from raykd.distill.dfmsd import DFMSDLoss
from raykd.distill.dmkd import DualReconstruction
from raykd.distill.inputs import LevelInputs
from raykd.distill.masks import MaskSettings, dual_masks
from raykd.distill.pkd import standardise

pytestmark = pytest.mark.usefixtures("one_thread")


LEVELS = {"0": (8, 8), "1": (4, 4), "p7": (1, 1)}
N, CS, CT, K, A = 2, 3, 4, 3, 2


def _feats(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    student = {k: torch.randn(N, CS, h, w, generator=g, dtype=torch.float64, requires_grad=True) for k, (h, w) in LEVELS.items()}
    teacher = {k: torch.randn(N, CT, h, w, generator=g, dtype=torch.float64) for k, (h, w) in LEVELS.items()}
    s_logits = {k: torch.randn(N, A * K, h, w, generator=g, dtype=torch.float64, requires_grad=True)
                for k, (h, w) in LEVELS.items()}
    t_logits = {k: torch.randn(N, A * K, h, w, generator=g, dtype=torch.float64) for k, (h, w) in LEVELS.items()}
    return student, teacher, s_logits, t_logits


def _build(**kw):
    return build_distiller(DistillConfig(**kw), CS, CT, list(LEVELS), num_classes=K).double()


def _run(distiller, seed: int, student, teacher, logits=(None, None)):
    torch.manual_seed(seed)
    out = flat_terms(distiller(student, teacher, logits[0], logits[1], [torch.zeros(0, 4)] * N, [(32, 32)] * N))
    grads = torch.autograd.grad(sum(out.values()), list(student.values()) + list(distiller.parameters()))
    return out, grads


def test_dmkd_spatial_random_equals_mgd_on_the_same_draw():
    student, teacher, _, _ = _feats()
    mgd = _build(method="mgd", mask_ratio=0.5)
    dmkd = _build(method="dmkd", branches="spatial", mask_rule="random", mask_ratio=0.5)
    dmkd.align.load_state_dict(mgd.align.state_dict())
    for level in LEVELS:
        dmkd.losses[level].reconstruction.spatial.load_state_dict(mgd.losses[level].generation.state_dict())
    out_m, grads_m = _run(mgd, 11, student, teacher)
    out_d, grads_d = _run(dmkd, 11, student, teacher)
    for level in LEVELS:
        assert torch.equal(out_m[f"mgd_{level}"], out_d[f"dmkd_{level}"])
    assert len(grads_m) == len(grads_d)
    for a, b in zip(grads_m, grads_d):
        assert torch.equal(a, b)
    # a different draw gives a different loss: the equality above is not vacuous
    out_other, _ = _run(dmkd, 12, student, teacher)
    assert not torch.equal(out_other["dmkd_0"], out_d["dmkd_0"])


SWITCHES = [
    {},
    {"mask_rule": "random"},
    {"mask_rule": "attention_sampled", "polarity": "background"},
    {"attention_source": "student", "fusion": "gate"},
    {"branches": "channel"},
    {"fusion": "sum_losses"},
    {"fusion": "mean", "mask_rule": "random", "branches": "spatial"},
]


@pytest.mark.parametrize("switches", SWITCHES)
@pytest.mark.parametrize("mode", ["cells", "pooled"])
def test_samkd_single_scale_without_sld_equals_dmkd(switches, mode):
    student, teacher, s_logits, t_logits = _feats(1)
    dmkd = _build(method="dmkd", alpha=0.1, **switches)
    samkd = _build(method="samkd", alpha=0.1, pyramid_scales=[1], pyramid_mode=mode, sld=False, **switches)
    samkd.align.load_state_dict(dmkd.align.state_dict())
    for level in LEVELS:
        samkd.losses[level].reconstructions[0].load_state_dict(dmkd.losses[level].reconstruction.state_dict())
    out_d, grads_d = _run(dmkd, 3, student, teacher, (s_logits, t_logits))
    out_s, grads_s = _run(samkd, 3, student, teacher, (s_logits, t_logits))
    assert sorted(out_s) == sorted(f"sfd_{level}" for level in LEVELS)
    for level in LEVELS:
        torch.testing.assert_close(out_s[f"sfd_{level}"], out_d[f"dmkd_{level}"], rtol=1e-12, atol=0)
    for a, b in zip(grads_d, grads_s):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_samkd_extra_scales_change_the_loss():
    student, teacher, _, _ = _feats(2)
    one = _build(method="samkd", pyramid_scales=[1], sld=False, share_generators=True)
    three = _build(method="samkd", pyramid_scales=[1, 2, 4], sld=False, share_generators=True)
    three.load_state_dict(one.state_dict())
    out_1, _ = _run(one, 0, student, teacher)
    out_3, _ = _run(three, 0, student, teacher)
    assert not torch.allclose(out_1["sfd_0"], out_3["sfd_0"])
    assert len(list(three.losses["0"].reconstructions)) == 1
    assert len(list(_build(method="samkd", pyramid_scales=[1, 2]).losses["0"].reconstructions)) == 2


def _sld_reference(s, t, z_s, z_t, g, weighting, tau_w, ratio, temp, beta):
    """Loops over images and cells; logits [N, A*K, H, W] with class 0 dropped."""
    n, _, h, w = s.shape
    rows = torch.round(torch.linspace(0, h, g + 1, dtype=torch.float64)).long().tolist()
    cols = torch.round(torch.linspace(0, w, g + 1, dtype=torch.float64)).long().tolist()
    cells = [(slice(rows[r], rows[r + 1]), slice(cols[c], cols[c + 1])) for r in range(g) for c in range(g)]
    cells = [(rs, cs) for rs, cs in cells if rs.stop > rs.start and cs.stop > cs.start]
    zs = z_s.reshape(n, A, K, h, w)[:, :, 1:] / temp
    zt = z_t.reshape(n, A, K, h, w)[:, :, 1:] / temp
    total = 0.0
    for i in range(n):
        d = ((s[i] - t[i]) ** 2).mean(0).detach()
        cell_d = torch.zeros(h, w, dtype=torch.float64)
        means = []
        for rs, cs in cells:
            cell_d[rs, cs] = d[rs, cs].mean()
            means.append(d[rs, cs].mean())
        if weighting == "softmax":
            weights = h * w * torch.softmax(cell_d.reshape(-1) / tau_w, 0).reshape(h, w)
        else:
            k = max(1, round(ratio * len(cells)))
            chosen = torch.tensor(means).argsort(descending=True)[:k].tolist()
            weights = torch.zeros(h, w, dtype=torch.float64)
            for j in chosen:
                weights[cells[j]] = 1.0
        p_t, p_s = torch.sigmoid(zt[i]), torch.sigmoid(zs[i])
        kl = p_t * torch.log(p_t / p_s) + (1 - p_t) * torch.log((1 - p_t) / (1 - p_s))
        total = total + (weights * kl.sum((0, 1))).sum()
    return beta * temp**2 * total / (n * h * w)


@pytest.mark.parametrize("weighting", ["softmax", "mask"])
@pytest.mark.parametrize("scales", [[1, 3], [2], [1]])
def test_sld_matches_formula(weighting, scales):
    student, teacher, s_logits, t_logits = _feats(4)
    d = _build(method="samkd", beta=0.3, pyramid_scales=scales, sld_weighting=weighting, sld_tau=0.7, sld_ratio=0.3, T_kd=2.0)
    torch.manual_seed(0)
    out = flat_terms(d(student, teacher, s_logits, t_logits, [torch.zeros(0, 4)] * N, [(32, 32)] * N))
    for level in LEVELS:
        conv = d.align[level]
        s = F.conv2d(student[level], conv.weight, conv.bias)
        want = _sld_reference(s, teacher[level], s_logits[level], t_logits[level], max(scales), weighting, 0.7, 0.3, 2.0, 0.3)
        torch.testing.assert_close(out[f"sld_{level}"], want, rtol=1e-10, atol=1e-14)
        g_got = torch.autograd.grad(out[f"sld_{level}"], [s_logits[level], student[level]], allow_unused=True, retain_graph=True)
        g_want = torch.autograd.grad(want, [s_logits[level]])
        torch.testing.assert_close(g_got[0], g_want[0], rtol=1e-9, atol=1e-14)
        assert g_got[1] is None  # the region weights carry no gradient into the features


def _local_topk(scores, ratio):
    """Keep-mask over the last dim: the round(ratio*K) highest are 0 (none when K < 2)."""
    k = round(ratio * scores.shape[-1]) if scores.shape[-1] >= 2 else 0
    keep = torch.ones_like(scores)
    if k:
        keep.scatter_(-1, scores.topk(k, dim=-1).indices, 0.0)
    return keep


def _gen(block, x):
    return F.conv2d(F.relu(F.conv2d(x, block[0].weight, block[0].bias, padding=1)), block[2].weight, block[2].bias, padding=1)


@pytest.mark.parametrize("mode", ["cells", "pooled"])
def test_sfd_matches_formula(mode):
    """α · mean_g Σ(fuse(G_s(S'⊙M_s), G_c(S'⊙M_c)) − T)² / N with masks built cell by cell."""
    g0 = torch.Generator().manual_seed(9)
    h, w, ratio_s, ratio_c, alpha = 5, 6, 0.6, 0.5, 0.3
    s = torch.randn(N, CT, h, w, generator=g0, dtype=torch.float64, requires_grad=True)
    t = torch.randn(N, CT, h, w, generator=g0, dtype=torch.float64)
    cfg = DistillConfig(method="samkd", alpha=alpha, pyramid_scales=[1, 2], pyramid_mode=mode, sld=False,
                        mask_ratio=ratio_s, channel_mask_ratio=ratio_c)
    d = build_distiller(cfg, CT, CT, ["0"], num_classes=K).double()
    with torch.no_grad():
        for i, recon in enumerate(d.losses["0"].reconstructions):
            recon.fuse.logits.copy_(torch.tensor([0.3 + i, -0.5]))  # unequal fusion weights
    got = flat_terms(d({"0": s}, {"0": t}, None, None, [torch.zeros(0, 4)] * N, [(40, 48)] * N))["sfd_0"]
    losses = []
    for g, recon in zip([1, 2], d.losses["0"].reconstructions):
        s_g, t_g = (s, t) if mode == "cells" else (F.max_pool2d(s, g, g, ceil_mode=True), F.max_pool2d(t, g, g, ceil_mode=True))
        cells = g if mode == "cells" else 1
        hh, ww = t_g.shape[-2:]
        rows = torch.round(torch.linspace(0, hh, cells + 1, dtype=torch.float64)).long().tolist()
        cols = torch.round(torch.linspace(0, ww, cells + 1, dtype=torch.float64)).long().tolist()
        keep_s = torch.ones(N, 1, hh, ww, dtype=torch.float64)
        keep_c = torch.ones(N, CT, hh, ww, dtype=torch.float64)
        for r in range(cells):
            for c in range(cells):
                rs, cs = slice(rows[r], rows[r + 1]), slice(cols[c], cols[c + 1])
                cell = t_g[:, :, rs, cs].abs()
                if cell[0, 0].numel() == 0:
                    continue
                shape = cell.shape[-2:]
                keep_s[:, 0, rs, cs] = _local_topk(cell.mean(1).reshape(N, -1), ratio_s).reshape(N, *shape)
                if cell[0, 0].numel() >= 2:
                    keep_c[:, :, rs, cs] = _local_topk(cell.mean((2, 3)), ratio_c)[:, :, None, None]
        weights = torch.softmax(recon.fuse.logits, 0)
        fused = weights[0] * _gen(recon.spatial, s_g * keep_s) + weights[1] * _gen(recon.channel, s_g * keep_c)
        losses.append(((fused - t_g) ** 2).sum() / N)
    want = alpha * (losses[0] + losses[1]) / 2
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
    torch.testing.assert_close(torch.autograd.grad(got, s)[0], torch.autograd.grad(want, s)[0], rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("mask_rule", ["topk", "random"])
def test_amd_without_channel_adapter_equals_dmkd_spatial(mask_rule):
    student, teacher, _, _ = _feats()
    amd = _build(method="amd", channel_adapter=False, mask_rule=mask_rule)
    dmkd = _build(method="dmkd", branches="spatial", mask_rule=mask_rule)
    dmkd.load_state_dict(amd.state_dict())
    out_a, grads_a = _run(amd, 3, student, teacher)
    out_d, grads_d = _run(dmkd, 3, student, teacher)
    for level in LEVELS:
        assert torch.equal(out_a[f"amd_{level}"], out_d[f"dmkd_{level}"])
    for a, b in zip(grads_a, grads_d):
        assert torch.equal(a, b)


def test_amd_matches_formula():
    """``α Σ (G(SE(S') ⊙ M_s) − T)² / N``, M_s the top-λ teacher spatial attention, written out."""
    student, teacher, _, _ = _feats()
    d = _build(method="amd", alpha=0.3, mask_ratio=0.5)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    out, _ = _run(d, 0, student, teacher)
    want = {}
    for level, (h, w) in LEVELS.items():
        loss = d.losses[level]
        s = F.conv2d(student[level], d.align[level].weight, d.align[level].bias)
        se = loss.adapter
        pooled = s.mean(dim=(2, 3), keepdim=True)
        s = s * torch.sigmoid(F.conv2d(torch.relu(F.conv2d(pooled, se.squeeze.weight, se.squeeze.bias)),
                                       se.excite.weight, se.excite.bias))
        total = 0.0
        for n in range(N):
            scores = teacher[level][n].abs().mean(0).reshape(-1)
            k = round(0.5 * h * w) if h * w >= 2 else 0
            keep = torch.ones(h * w, dtype=torch.float64)
            keep[scores.argsort(descending=True, stable=True)[:k]] = 0.0
            gen = loss.reconstruction.spatial
            x = (s[n] * keep.reshape(1, h, w))[None]
            x = F.conv2d(torch.relu(F.conv2d(x, gen[0].weight, gen[0].bias, padding=1)), gen[2].weight, gen[2].bias, padding=1)
            total = total + ((x[0] - teacher[level][n]) ** 2).sum()
        want[f"amd_{level}"] = 0.3 * total / N
    for key in want:
        torch.testing.assert_close(out[key], want[key], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("switches", [{}, {"mask_rule": "random"}, {"branches": "spatial", "polarity": "background"}])
def test_dfmsd_with_its_three_parts_off_equals_dmkd(switches):
    student, teacher, _, _ = _feats()
    off = {"dfmsd_alignment": "none", "dfmsd_enhancement": "none", "dfmsd_adaptation": "none"}
    dfmsd = _build(method="dfmsd", **off, **switches)
    dmkd = _build(method="dmkd", **switches)
    dmkd.load_state_dict(dfmsd.state_dict())
    out_f, grads_f = _run(dfmsd, 5, student, teacher)
    out_d, grads_d = _run(dmkd, 5, student, teacher)
    for level in LEVELS:
        assert torch.equal(out_f[f"dfmsd_{level}"], out_d[f"dmkd_{level}"])
    for a, b in zip(grads_f, grads_d):
        assert torch.equal(a, b)


def test_dfmsd_parts_change_the_loss_as_described():
    """Adapter: zero-initialised (identity at the start); alignment: PKD's standardisation of S'
    and T before masking; enhancement: a box's cells are masked first."""
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, CT, 8, 8, generator=g, dtype=torch.float64)
    t = torch.randn(2, CT, 8, 8, generator=g, dtype=torch.float64)
    boxes = [torch.tensor([[0.0, 0.0, 12.0, 12.0]]), torch.zeros(0, 4)]  # cells 0..3 × 0..3 of image 0
    masks = MaskSettings("topk", "salient", "teacher", 0.25, 0.5, 0.5)
    block = DualReconstruction(CT, "spatial", "learned").double()

    def loss(**switches):
        args = {"alignment": "none", "enhancement": "none", "boost": 50.0, "adaptation": "none"} | switches
        module = DFMSDLoss(CT, 1.0, masks, "spatial", "learned", **args).double()
        module.reconstruction.load_state_dict(block.state_dict())
        return module(LevelInputs(s, t, None, None, boxes, [(32, 32)] * 2))["dfmsd"], module

    plain, _ = loss()
    adapted, module = loss(adaptation="adapter")
    assert torch.count_nonzero(module.adapter.weight) == 0 and torch.equal(adapted, plain)

    aligned, _ = loss(alignment="standardize")
    s_hat, t_hat = standardise(s), standardise(t)
    keep = torch.ones(2, 1, 8, 8, dtype=torch.float64)
    scores = t_hat.abs().mean(1).reshape(2, -1)
    for n in range(2):
        keep[n].view(-1)[scores[n].argsort(descending=True, stable=True)[:16]] = 0.0
    torch.testing.assert_close(aligned, block(s_hat, t_hat, keep, None), rtol=1e-12, atol=1e-12)

    enhanced, _ = loss(enhancement="boxes")
    boost = torch.ones(2, 1, 8, 8, dtype=torch.float64)
    boost[0, 0, :4, :4] = 51.0
    keep_s, _ = dual_masks(s, t, masks, 1, True, False, boost)
    assert (keep_s[0, 0, :4, :4] == 0).all() and keep_s[0].sum() == 48  # the 16 masked cells: the box
    torch.testing.assert_close(enhanced, block(s, t, keep_s, None), rtol=1e-12, atol=1e-12)
    assert not torch.equal(enhanced, plain)
