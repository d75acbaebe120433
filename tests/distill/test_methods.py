"""The method registry (raykd/distill/methods.py): every per-method table is derived from it, and
every entry's declarations hold for the loss module it builds."""

from __future__ import annotations

import pytest
import torch

from raykd.distill import build_distiller, term_names
from raykd.distill.config import DEFAULT_WEIGHTS, METHODS, DistillConfig
from raykd.distill.methods import RECONSTRUCTION, REFERENCE, REGISTRY
from raykd.search.space import NAMED_POINTS
from raykd.visualize.panels import settings_text

LEVELS = ["0", "1"]
RECONSTRUCTED = {"dmkd", "samkd", "amd", "dfmsd"}  # docs/METHODS.md: from the papers' abstracts


def test_the_config_s_choices_and_defaults_are_the_registry_s():
    assert METHODS == tuple(REGISTRY)
    assert DEFAULT_WEIGHTS == {name: dict(m.defaults) for name, m in REGISTRY.items()}
    assert {name for name, m in REGISTRY.items() if m.provenance == RECONSTRUCTION} == RECONSTRUCTED
    assert all(m.provenance in (REFERENCE, RECONSTRUCTION) for m in REGISTRY.values())


def test_every_method_has_its_named_point_and_the_point_is_a_valid_config():
    for name, method in REGISTRY.items():
        if method.build is None:
            continue
        point = NAMED_POINTS[f"{name}_defaults"]
        assert point["distill.method"] == name
        DistillConfig(**{key.removeprefix("distill."): value for key, value in point.items()})
    assert NAMED_POINTS["baseline"] == {"distill.method": "none"}


@pytest.mark.parametrize("name", [n for n in REGISTRY if n != "none"])
def test_declared_terms_and_keys_match_what_the_built_losses_do(name):
    method = REGISTRY[name]
    cfg = DistillConfig(method=name, alpha=1e-5 if "alpha" in method.defaults else None)
    distiller = build_distiller(cfg, student_channels=8, teacher_channels=8, levels=LEVELS, num_classes=3)
    assert distiller.needs_logits == method.reads_logits(cfg)
    torch.manual_seed(0)
    feats = {level: torch.randn(2, 8, 8, 8) for level in LEVELS}
    logits = {level: torch.randn(2, 3, 8, 8) for level in LEVELS} if distiller.needs_logits else None
    boxes = [torch.tensor([[4.0, 4.0, 40.0, 40.0]]), torch.tensor([[8.0, 0.0, 60.0, 30.0]])]
    terms = distiller({k: v.requires_grad_() for k, v in feats.items()}, {k: v + 0.1 for k, v in feats.items()},
                      logits, {k: v + 0.1 for k, v in logits.items()} if logits else None, boxes, [(64, 64)] * 2)
    flat = [f"{term}_{level}" for level, level_terms in terms.items() for term in level_terms]
    assert flat == term_names(cfg, LEVELS)
    # the keys it declares are settings of the config, and the caption shows them
    assert all(key in DistillConfig.model_fields for key in method.keys)
    assert settings_text(cfg).startswith(f"{name}: ")
    assert all(f"{key}=" in settings_text(cfg) for key in method.keys if getattr(cfg.resolved(), key) is not None)


def test_a_method_without_logit_reading_drops_its_logit_terms():
    cfg = DistillConfig(method="samkd", sld=False)
    assert term_names(cfg, LEVELS) == ["sfd_0", "sfd_1"]
    assert term_names(DistillConfig(method="samkd"), LEVELS, dense_head=False) == ["sfd_0", "sfd_1"]
    assert term_names(DistillConfig(method="samkd"), LEVELS) == ["sfd_0", "sld_0", "sfd_1", "sld_1"]


def test_only_freekd_declares_a_preparation_stage_and_it_runs_only_with_prompt_steps():
    staged = {name for name, m in REGISTRY.items() if m.prepare is not None}
    assert staged == {"freekd"}
    stage = REGISTRY["freekd"].prepare
    assert not stage.needed(DistillConfig(method="freekd"))
    assert stage.needed(DistillConfig(method="freekd", freekd_prompt_steps=5))
