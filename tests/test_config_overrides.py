"""The one override path (raykd.config.overridden / apply_overrides) and the effective values a
search trial reports for its keys (raykd.search.trainable)."""

from __future__ import annotations

import json

from raykd.config import apply_overrides, effective_values, overridden
from raykd.search.trainable import reported_values, trial_overrides

BASE = {"name": "x", "data": {"synthetic": {"out_dir": "/tmp/raykd-overrides-unused"}},
        "student": {"arch": "fcos", "backbone": "resnet18"},
        "teacher": {"arch": "fcos", "backbone": "resnet18", "checkpoint": "/tmp/t.pt"},
        "distill": {"method": "none", "alpha": 2e-6}, "train": {"seed": 3}}


def test_overrides_never_touch_the_base_and_null_sets_null():
    out = overridden(BASE, {"distill.method": "mgd", "distill.alpha": None, "train.lr": 0.5})
    assert out["distill"] == {"method": "mgd", "alpha": None} and out["train"]["lr"] == 0.5
    assert BASE["distill"] == {"method": "none", "alpha": 2e-6} and "lr" not in BASE["train"]


def test_a_trial_s_undefined_keys_keep_the_base_and_repeats_shift_the_seed():
    config = {"distill.method": "mgd", "distill.mask_ratio": None, "__trial_index__": 2}
    found = trial_overrides(config, BASE, threads=1)
    assert found == {"distill.method": "mgd", "train.seed": 5, "train.threads": 1}
    cfg = apply_overrides(BASE, found)
    assert cfg.distill.mask_ratio == 0.65 and cfg.train.seed == 5


def test_reported_values_are_what_the_validated_config_holds():
    config = {"distill.method": "samkd", "distill.mask_ratio": 0.65000001, "distill.levels": [0, 1],
              "distill.beta": None, "train.seed": 1}
    cfg = apply_overrides(BASE, trial_overrides(config, BASE, threads=None))
    values = json.loads(reported_values(config, cfg))
    assert values == {"distill.method": "samkd", "distill.mask_ratio": 0.65000001, "distill.levels": ["0", "1"]}
    assert effective_values(cfg, ["train.seed"]) == {"train.seed": 1}
