"""Bad search-space files given to ``python -m raykd.search``: refused before anything starts."""

from __future__ import annotations

import pytest

SPACE = {"distill.method": {"choice": ["none", "mgd"]}}


def _space(**params):
    return {**SPACE, **params}


def _beta_when(condition):
    return _space(**{"distill.beta": {"uniform": [0.1, 1], "when": condition}})


# (id, what the space file gets, key named, words of what was expected)
CASES = [
    ("yaml-syntax-error", {"text": "experiment: exp.yaml\nspace: {distill.method: [none, mgd\n"}, None,
     "not valid YAML at line 3"),
    ("empty-file", {"text": ""}, None, "expected a mapping at the top level"),
    ("top-level-list", {"text": "- experiment: exp.yaml\n"}, None, "expected a mapping at the top level"),
    ("missing-experiment-key", {"experiment": None}, "experiment", "required key is missing"),
    ("experiment-file-missing", {"experiment": "nowhere/exp.yaml"}, "experiment",
     "experiment file not found"),
    ("unknown-top-level-key", {"metrc": "bbox_mAP"}, "metrc", "unknown key"),
    ("mode-not-max-or-min", {"mode": "maximise"}, "mode", "Input should be 'max' or 'min' (got 'maximise')"),
    ("unknown-metric", {"metric": "accuracy"}, "metric", "unknown metric 'accuracy'; expected one of"),
    ("unknown-sampler", {"search": {"sampler": "bayes"}}, "search.sampler", "'tpe'"),
    ("num-samples-zero", {"search": {"num_samples": 0}}, "search.num_samples", "greater than or equal to 1"),
    ("space-is-a-list", {"space": ["distill.method", "distill.alpha"]}, "space",
     "Input should be a valid dictionary"),
    ("empty-choice", {"space": _space(**{"train.seed": {"choice": []}})}, "space.train.seed",
     "choice needs at least one option"),
    ("uniform-low-above-high", {"space": _space(**{"distill.mask_ratio": {"uniform": [0.9, 0.3]}})},
     "space.distill.mask_ratio", "low < high, got [0.9, 0.3]"),
    ("loguniform-from-zero", {"space": _space(**{"train.lr": {"loguniform": [0, 0.1]}})}, "space.train.lr",
     "loguniform needs a positive lower bound"),
    ("two-kinds-for-one-key", {"space": _space(**{"train.lr": {"uniform": [0.1, 0.2], "choice": [0.1]}})},
     "space.train.lr", "expected exactly one of choice, uniform, loguniform, int, value"),
    ("unknown-searched-key", {"space": _space(**{"distill.alpah": {"uniform": [0, 1]}})},
     "space.distill.alpah", "unknown key: the experiment has no distill.alpah"),
    ("value-outside-schema-range", {"space": _space(**{"distill.mask_ratio": {"uniform": [0.5, 1.5]}})},
     "space.distill.mask_ratio", "value 1.5 is not valid for distill.mask_ratio"),
    ("invalid-choice-for-distill-method", {"space": {"distill.method": {"choice": ["mgd", "magic"]}}},
     "space.distill.method", "value 'magic' is not valid for distill.method: Input should be 'none'"),
    ("when-on-unknown-key", {"space": _beta_when({"distill.fusion": "mean"})},
     "space.distill.beta.when", "condition on 'distill.fusion', which is not a searched key"),
    ("when-on-impossible-value", {"space": _beta_when({"distill.method": "samkd"})},
     "space.distill.beta.when", "distill.method never takes the value 'samkd'"),
    ("cyclic-when", {"space": {"distill.method": {"choice": ["none", "mgd"], "when": {"train.seed": 0}},
                               "train.seed": {"choice": [0, 1], "when": {"distill.method": "mgd"}}}},
     "space.distill.method.when", "conditions form a cycle"),
    ("unknown-named-point", {"points_to_evaluate": ["paper_defaults"]}, "points_to_evaluate[0]",
     "unknown named point 'paper_defaults'; expected one of"),
    ("point-with-invalid-value", {"points_to_evaluate": [{"distill.method": "magic"}]},
     "points_to_evaluate[0].distill.method", "value 'magic' is not valid"),
    ("fixed-value-of-wrong-type", {"fixed": {"train.epochs": "three"}}, "fixed.train.epochs",
     "valid integer"),
    ("asha-with-two-metrics", {"metric": ["bbox_mAP", "step_time"], "mode": ["max", "min"],
                               "scheduler": {"type": "asha"}}, None, "asha stops trials on one metric"),
    ("confirm-set-unknown-key", {"confirm": {"top": 1, "seeds": [100, 101], "set": {"train.epoks": 3}}},
     "confirm.set.train.epoks", "unknown key"),
    ("confirm-rank-check-with-two", {"confirm": {"top": 2, "seeds": [100, 101], "rank_check": True}}, "confirm",
     "rank_check needs top >= 3"),
]


@pytest.mark.parametrize(("changes", "key", "what"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_space_file(bench, changes, key, what):
    space = bench.space(**changes)
    where = [str(space)] + ([key] if key else [])
    bench.check_refused("search", [space, "--storage", bench.storage], where=where, what=what)


def test_space_with_python_tag_runs_nothing(bench):
    marker = bench.root / "MARKER"
    space = bench.space(text=f"experiment: exp.yaml\nfixed: !!python/object/apply:os.system ['touch {marker}']\n")
    bench.check_refused("search", [space, "--storage", bench.storage], where=[str(space)],
                  what="could not determine a constructor for the tag "
                       "'tag:yaml.org,2002:python/object/apply:os.system'")
    assert not marker.exists()


def test_space_whose_experiment_is_invalid(bench):
    experiment = bench.experiment("bad_exp.yaml", student={"arch": "yolo"})
    space = bench.space(exp=experiment)
    bench.check_refused("search", [space, "--storage", bench.storage], where=[str(experiment), "student.arch"],
                  what="Input should be 'fcos', 'retinanet', 'retinanet_v2', 'faster_rcnn', 'faster_rcnn_v2', "
                       "'mask_rcnn' or 'mask_rcnn_v2' (got 'yolo')")
