"""DistillConfig: validation, list parsing from search strings, resolved defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from raykd.distill import METHODS, DistillConfig


def test_methods_registry_matches_literal():
    assert METHODS == ("none", "feature_mse", "mgd", "fgd", "cwd", "pkd", "dmkd", "samkd", "amd", "freekd", "dfmsd")


@pytest.mark.parametrize(
    "bad",
    [
        {"unknown_key": 1},
        {"method": "kd"},
        {"mask_ratio": 1.5},
        {"mask_ratio": -0.1},
        {"channel_mask_ratio": 2.0},
        {"tau": 0.0},
        {"cwd_tau": -1.0},
        {"alpha": -1e-5},
        {"alpha": float("nan")},
        {"weight": float("inf")},
        {"pyramid_scales": [0, 1]},
        {"pyramid_scales": [1, 1]},
        {"pyramid_scales": []},
        {"pyramid_scales": "1,two"},
        {"levels": ["0", "a.b"]},
        {"levels": ["0", "0"]},
        {"levels": []},
        {"fusion": "concat"},
        {"mask_rule": "top"},
        {"sld_ratio": 0.0},
        {"T_kd": 0.0},
        {"sld_weighting": "hard"},
    ],
)
def test_invalid_values_raise(bad):
    with pytest.raises(ValidationError):
        DistillConfig(**bad)


def test_assignment_is_validated():
    cfg = DistillConfig(method="mgd")
    with pytest.raises(ValidationError):
        cfg.mask_ratio = 3.0


def test_string_booleans_and_floats_are_accepted():
    cfg = DistillConfig(method="samkd", sld="false", share_generators="true", alpha="1e-6")
    assert cfg.sld is False and cfg.share_generators is True and cfg.alpha == 1e-6


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("mgd", {"alpha": 2e-5}),
        ("fgd", {"alpha": 1e-3, "beta": 5e-4, "gamma": 5e-4, "lambda_gl": 5e-6}),
        ("cwd", {"weight": 10.0}),
        ("pkd", {"weight": 6.0}),
        ("feature_mse", {"weight": 1.0}),
        ("dmkd", {"alpha": 2e-5}),
        ("samkd", {"alpha": 2e-5, "beta": 1.0}),
        ("amd", {"alpha": 2e-5}),
        ("freekd", {"alpha": 1.0}),
        ("dfmsd", {"alpha": 2e-5}),
    ],
)
def test_resolved_fills_published_defaults(method, expected):
    resolved = DistillConfig(method=method).resolved()
    for key, value in expected.items():
        assert getattr(resolved, key) == value
        assert DistillConfig(method=method).require(key) == value
    unused = {"alpha", "beta", "gamma", "lambda_gl", "weight"} - set(expected)
    assert all(getattr(resolved, key) is None for key in unused)


def test_explicit_weights_win_over_defaults():
    cfg = DistillConfig(method="fgd", alpha=3e-3, lambda_gl=0.0)
    assert cfg.resolved().alpha == 3e-3 and cfg.resolved().lambda_gl == 0.0 and cfg.resolved().beta == 5e-4


def test_require_rejects_weights_a_method_does_not_have():
    with pytest.raises(ValueError):
        DistillConfig(method="cwd").require("alpha")


def test_defaults():
    cfg = DistillConfig()
    assert cfg.method == "none" and cfg.levels is None
    assert (cfg.mask_ratio, cfg.channel_mask_ratio, cfg.tau, cfg.cwd_tau) == (0.65, 0.5, 0.5, 1.0)
    assert (cfg.mask_rule, cfg.polarity, cfg.attention_source, cfg.branches, cfg.fusion) == (
        "topk", "salient", "teacher", "dual", "learned"
    )
    assert cfg.pyramid_scales == [1, 2, 4] and cfg.pyramid_mode == "cells" and cfg.sld is True
    assert (cfg.sld_weighting, cfg.sld_ratio, cfg.sld_tau, cfg.sld_discrepancy, cfg.T_kd) == (
        "softmax", 0.5, 1.0, "feature", 1.0
    )
