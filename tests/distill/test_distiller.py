"""The Distiller contract: keys, levels, parameters, no teacher gradient, every switch finite."""

from __future__ import annotations

import itertools
import re
from typing import get_args

import pytest
import torch

from raykd.distill import METHODS, DistillConfig, Distiller, build_distiller, flat_terms, term_names
from raykd.distill.options import AttentionSource, Branches, FusionMode, MaskRule, Polarity

pytestmark = pytest.mark.usefixtures("one_thread")


# P3-P7 of a 128-px input, FCOS/RetinaNet level names
LEVELS = {"0": 16, "1": 8, "2": 4, "p6": 2, "p7": 1}
N, CS, CT, K, A = 2, 16, 32, 4, 1
IMAGE_SIZES = [(128, 128), (128, 96)]  # unpadded, per image
BOXES = [torch.tensor([[8.0, 16.0, 70.0, 90.0], [100.0, 100.0, 128.0, 128.0]]), torch.tensor([[0.0, 0.0, 30.0, 20.0]])]
DISTILLING = [m for m in METHODS if m != "none"]


def _batch(seed: int = 0, teacher_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    sf = {k: torch.randn(N, CS, s, s, generator=g, requires_grad=True) for k, s in LEVELS.items()}
    tf = {k: torch.randn(N, CT, s, s, generator=g, requires_grad=teacher_grad) for k, s in LEVELS.items()}
    sl = {k: torch.randn(N, A * K, s, s, generator=g, requires_grad=True) for k, s in LEVELS.items()}
    tl = {k: torch.randn(N, A * K, s, s, generator=g, requires_grad=teacher_grad) for k, s in LEVELS.items()}
    return sf, tf, sl, tl


def _build(cfg: DistillConfig) -> Distiller:
    distiller = build_distiller(cfg, CS, CT, list(LEVELS), num_classes=K)
    assert distiller is not None
    return distiller


def _assert_finite_step(cfg: DistillConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    distiller = _build(cfg)
    sf, tf, sl, tl = _batch(seed)
    out = flat_terms(distiller(sf, tf, sl, tl, BOXES, IMAGE_SIZES))
    assert list(out) == term_names(cfg, list(LEVELS)), cfg
    for key, value in out.items():
        assert value.dim() == 0 and torch.isfinite(value), (cfg, key, value)
    total = sum(out.values())
    total.backward()
    for name, tensor in itertools.chain(sf.items(), sl.items(), distiller.named_parameters()):
        if tensor.grad is not None:
            assert torch.isfinite(tensor.grad).all(), (cfg, name)
    assert all(sf[k].grad is not None for k in LEVELS), cfg
    return out


def test_none_builds_nothing():
    assert build_distiller(DistillConfig(), CS, CT, list(LEVELS), num_classes=K) is None
    assert term_names(DistillConfig(), list(LEVELS)) == []


@pytest.mark.parametrize("method", DISTILLING)
def test_every_method_default_is_finite_and_keys_are_clean(method):
    out = _assert_finite_step(DistillConfig(method=method))
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", key) for key in out)
    assert {key.rsplit("_", 1)[1] for key in out} == set(LEVELS)


@pytest.mark.parametrize("method", DISTILLING)
def test_teacher_never_receives_a_gradient(method):
    distiller = _build(DistillConfig(method=method))
    sf, tf, sl, tl = _batch(teacher_grad=True)
    out = flat_terms(distiller(sf, tf, sl, tl, BOXES, IMAGE_SIZES))
    sum(out.values()).backward()
    assert all(t.grad is None for t in tf.values())
    assert all(t.grad is None for t in tl.values())
    assert all(s.grad is not None for s in sf.values())


# parameter tensors per level: align (weight, bias) + generation blocks (4 each), learned
# fusion (1), GcBlocks (8 each); SAMKD has one generator pair + fusion per pyramid scale
@pytest.mark.parametrize(
    ("method", "count"),
    [("mgd", 2 + 4), ("fgd", 2 + 2 * 8), ("dmkd", 2 + 4 * 2 + 1), ("samkd", 2 + 3 * (4 * 2 + 1)),
     ("cwd", 2), ("pkd", 2), ("feature_mse", 2)],
)
def test_module_parameters_are_registered(method, count):
    distiller = _build(DistillConfig(method=method))
    per_level = [p for name, p in distiller.named_parameters() if name.split(".")[1] == "0"]
    assert len(per_level) == count
    assert all(p.requires_grad for p in distiller.parameters())


def test_levels_subset_and_unknown_levels():
    cfg = DistillConfig(method="mgd", levels=["p6", "0"])
    distiller = _build(cfg)
    sf, tf, sl, tl = _batch()
    out = flat_terms(distiller(sf, tf, None, None, BOXES, IMAGE_SIZES))
    assert list(out) == ["mgd_p6", "mgd_0"] == term_names(cfg, list(LEVELS))
    with pytest.raises(ValueError, match="pool"):
        build_distiller(DistillConfig(method="mgd", levels=["pool"]), CS, CT, list(LEVELS), num_classes=K)


def test_samkd_without_logits_runs_sfd_only():
    cfg = DistillConfig(method="samkd")
    distiller = _build(cfg)
    assert distiller.needs_logits
    assert not _build(DistillConfig(method="samkd", sld=False)).needs_logits
    assert not any(_build(DistillConfig(method=m)).needs_logits for m in DISTILLING if m != "samkd")
    sf, tf, _, _ = _batch()
    out = flat_terms(distiller(sf, tf, None, None, BOXES, IMAGE_SIZES))
    assert list(out) == term_names(cfg, list(LEVELS), dense_head=False)
    assert all(key.startswith("sfd_") for key in out) and len(out) == len(LEVELS)
    assert "sld_p7" in term_names(cfg, list(LEVELS))
    assert not any(k.startswith("sld") for k in term_names(DistillConfig(method="samkd", sld=False), list(LEVELS)))


def test_mismatched_shapes_raise():
    distiller = _build(DistillConfig(method="feature_mse"))
    sf, tf, _, _ = _batch()
    tf["1"] = tf["1"][:, :, :4, :4]
    with pytest.raises(ValueError, match="level '1'"):
        distiller(sf, tf, None, None, BOXES, IMAGE_SIZES)


_DMKD_SWITCHES = list(
    itertools.product(get_args(MaskRule), get_args(Polarity), get_args(AttentionSource), get_args(Branches), get_args(FusionMode))
)


def test_every_dmkd_switch_combination_is_finite():
    for rule, polarity, source, branches, fusion in _DMKD_SWITCHES:
        cfg = DistillConfig(
            method="dmkd", mask_rule=rule, polarity=polarity, attention_source=source, branches=branches, fusion=fusion
        )
        _assert_finite_step(cfg)


def test_every_samkd_switch_combination_is_finite():
    scales = ([1], [1, 2], [1, 2, 4], [2, 4], [4])
    product = itertools.product(["cells", "pooled"], [False, True], [False, True], ["softmax", "mask"], ["feature", "logit"])
    for i, (mode, share, sld, weighting, discrepancy) in enumerate(product):
        rule, polarity, source, branches, fusion = _DMKD_SWITCHES[(7 * i) % len(_DMKD_SWITCHES)]
        cfg = DistillConfig(
            method="samkd", pyramid_mode=mode, share_generators=share, sld=sld, sld_weighting=weighting,
            sld_discrepancy=discrepancy, pyramid_scales=scales[i % len(scales)], mask_rule=rule, polarity=polarity,
            attention_source=source, branches=branches, fusion=fusion,
        )
        _assert_finite_step(cfg, seed=i)
    # and every DMKD switch value once more under SAMKD's default pyramid
    cycles = (itertools.cycle(get_args(t)) for t in (MaskRule, Polarity, AttentionSource, Branches))
    for values in zip(*cycles, get_args(FusionMode)):
        rule, polarity, source, branches, fusion = values
        _assert_finite_step(DistillConfig(method="samkd", mask_rule=rule, polarity=polarity, attention_source=source,
                                          branches=branches, fusion=fusion))


def test_loss_is_zero_without_boxes_for_fgd_foreground():
    distiller = _build(DistillConfig(method="fgd"))
    sf, tf, _, _ = _batch()
    out = flat_terms(distiller(sf, tf, None, None, [torch.zeros(0, 4), torch.zeros(0, 4)], IMAGE_SIZES))
    assert all(out[f"fgd_fg_{k}"] == 0 for k in LEVELS) and all(out[f"fgd_bg_{k}"] > 0 for k in LEVELS)
