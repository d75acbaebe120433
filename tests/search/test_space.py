"""Space files: every shipped space validates; invalid ones fail with file + key, exit 2, nothing started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from raykd.errors import UserError
from raykd.search.space import Space

REPO = Path(__file__).resolve().parents[2]
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("path", sorted((REPO / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_validate(path):
    space = Space(path)
    assert space.params and space.settings.search.num_samples >= 1
    for point in space.points:
        assert set(point) <= set(space.params)


@pytest.fixture
def space_file(write_experiment, tiny_teacher, tmp_path):
    exp = write_experiment(teacher=tiny_teacher)

    def write(**changes) -> Path:
        raw = {"experiment": str(exp), "metric": "bbox_mAP", "mode": "max",
               "space": {"distill.method": {"choice": ["none", "mgd"]},
                         "distill.alpha": {"loguniform": [1e-8, 1e-6], "when": {"distill.method": "mgd"}}}}
        for key, value in changes.items():
            if value is None:
                raw.pop(key, None)
            else:
                raw[key] = value
        path = tmp_path / "space.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return write


BAD = [
    ("unknown top key", {"metrc": "bbox_mAP"}, "metrc", "unknown key"),
    ("missing experiment", {"experiment": None}, "experiment", "required"),
    ("experiment not found", {"experiment": "nope.yaml"}, "experiment", "not found"),
    ("unknown space key", {"space": {"distill.alpah": {"uniform": [0, 1]}}}, "space.distill.alpah", "unknown key"),
    ("bad choice value", {"space": {"distill.method": {"choice": ["mgd", "magic"]}}}, "space.distill.method",
     "magic"),
    ("value out of range", {"space": {"distill.mask_ratio": {"uniform": [0.5, 1.5]}}}, "space.distill.mask_ratio",
     "1.5"),
    ("reversed bounds", {"space": {"train.lr": {"uniform": [0.1, 0.01]}}}, "space.train.lr", "low < high"),
    ("negative loguniform", {"space": {"train.lr": {"loguniform": [0, 0.1]}}}, "space.train.lr", "positive"),
    ("two kinds", {"space": {"train.lr": {"uniform": [0.1, 0.2], "choice": [0.1]}}}, "space.train.lr",
     "exactly one"),
    ("empty choice", {"space": {"train.seed": {"choice": []}}}, "space.train.seed", "at least one"),
    ("condition on unknown key", {"space": {"distill.alpha": {"uniform": [1e-8, 1e-6], "when": {"distill.method": "mgd"}}}},
     "space.distill.alpha.when", "not a searched key"),
    ("condition on impossible value", {"space": {"distill.method": {"choice": ["none", "mgd"]},
                                                 "distill.beta": {"uniform": [0.1, 1], "when": {"distill.method": "samkd"}}}},
     "space.distill.beta.when", "never takes"),
    ("condition cycle", {"space": {"distill.method": {"choice": ["none", "mgd"], "when": {"train.seed": 0}},
                                   "train.seed": {"choice": [0, 1], "when": {"distill.method": "mgd"}}}},
     "space.", "cycle"),
    ("bad sampler", {"search": {"sampler": "bayes"}}, "search.sampler", "tpe"),
    ("zero samples", {"search": {"num_samples": 0}}, "search.num_samples", "greater than or equal to 1"),
    ("bad scheduler", {"scheduler": {"type": "pbt"}}, "scheduler.type", "asha"),
    ("bad mode", {"mode": "maximise"}, "mode", "max"),
    ("unknown metric", {"metric": "accuracy"}, "metric", "unknown metric"),
    ("metric/mode lengths", {"metric": ["bbox_mAP", "step_time"], "mode": ["max"]}, "(top level)", "same length"),
    ("fractional gpu for ddp", {"resources": {"workers_per_trial": 2, "gpus_per_worker": 0.5}}, "resources",
     "fractional"),
    ("inline with workers", {"resources": {"workers_per_trial": 2, "executor": "inline"}}, "resources", "inline"),
    ("unknown fixed key", {"fixed": {"train.epoch": 3}}, "fixed.train.epoch", "unknown"),
    ("unknown named point", {"points_to_evaluate": ["paper"]}, "points_to_evaluate[0]", "unknown named point"),
    ("point on unsearched key", {"points_to_evaluate": [{"train.lr": 0.1}]}, "points_to_evaluate[0]",
     "not a searched key"),
    ("output dir searched", {"space": {"train.output_dir": {"choice": ["a", "b"]}}}, "space.train.output_dir",
     "cannot be searched"),
]


@pytest.mark.parametrize("label, changes, key, words", BAD, ids=[b[0] for b in BAD])
def test_invalid_spaces_name_file_and_key(space_file, label, changes, key, words):
    path = space_file(**changes)
    with pytest.raises(UserError) as info:
        Space(path)
    where = f"{info.value.key}"
    assert info.value.file is not None and str(info.value.file).endswith(("space.yaml", "nope.yaml")), str(info.value)
    assert where.startswith(key) or key in str(info.value), str(info.value)
    assert words in str(info.value), str(info.value)


def test_cli_bad_space_is_one_line_and_starts_nothing(space_file, tmp_path):
    path = space_file(space={"distill.mask_ratio": {"uniform": [0.5, 1.5]}})
    storage = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "raykd.search", str(path), "--storage", str(storage)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert str(path) in proc.stderr and "space.distill.mask_ratio" in proc.stderr
    assert not storage.exists()  # nothing started, nothing written


def test_conditions_in_define_by_run(space_file):
    space = Space(space_file(fixed={"train.epochs": 1}, space={
        "distill.method": {"choice": ["none", "mgd", "samkd"]},
        "distill.alpha": {"loguniform": [1e-8, 1e-6], "when": {"distill.method": ["mgd", "samkd"]}},
        "distill.pyramid_scales": {"choice": [[1], [1, 2]], "when": {"distill.method": "samkd"}},
        "train.seed": {"value": 3},
    }))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fn = space.define_by_run()
    seen = set()
    for _ in range(30):
        trial = study.ask()
        constants = fn(trial)
        method = trial.params["distill.method"]
        seen.add(method)
        assert ("distill.alpha" in trial.params) == (method != "none")
        assert ("distill.pyramid_scales" in trial.params) == (method == "samkd")
        lists = {}
        if method == "samkd":
            assert trial.params["distill.pyramid_scales"] in ("1", "1,2")
            # Optuna stores the encoded choice; the config gets the list (laid over it).
            lists = {"distill.pyramid_scales": [int(v) for v in trial.params["distill.pyramid_scales"].split(",")]}
        assert constants == {"train.seed": 3, "train.epochs": 1, **lists}
        study.tell(trial, 0.0)
    assert seen == {"none", "mgd", "samkd"}


def test_same_seed_gives_same_first_configurations(space_file):
    space = Space(space_file(search={"sampler": "tpe", "seed": 7}))

    def first(n: int) -> list[dict]:
        from raykd.search.tuner import make_sampler

        study = optuna.create_study(sampler=make_sampler(space), direction="maximize")
        fn = space.define_by_run()
        out = []
        for i in range(n):
            trial = study.ask()
            fn(trial)
            out.append(dict(trial.params))
            study.tell(trial, float(i % 3))
        return out

    a, b = first(12), first(12)
    assert a == b
    other = Space(space_file(search={"sampler": "tpe", "seed": 8}))
    from raykd.search.tuner import make_sampler

    study = optuna.create_study(sampler=make_sampler(other))
    fn = other.define_by_run()
    c = []
    for _ in range(12):
        t = study.ask()
        fn(t)
        c.append(dict(t.params))
        study.tell(t, 0.0)
    assert c != a


def test_named_points_fill_active_keys(space_file):
    space = Space(space_file(points_to_evaluate=["baseline", "mgd_defaults", {"distill.method": "mgd"}]))
    assert space.points[0] == {"distill.method": "none"}
    assert space.points[1]["distill.method"] == "mgd" and 1e-8 <= space.points[1]["distill.alpha"] <= 1e-6
    assert space.points[2]["distill.alpha"] == pytest.approx(1e-7)  # geometric middle of the range


@pytest.mark.parametrize("confirm, repeats, key, message", [
    ({"top": 1, "seeds": [1, 7]}, 1, "confirm.seeds", "expected fresh seeds, not ones the search phase runs: [1]"),
    ({"top": 1, "seeds": [3, 9]}, 3, "confirm.seeds", "[3]"),  # repeats run seeds 1, 2, 3
    ({"top": 1, "seeds": [7, 7]}, 1, "confirm.seeds", "expected distinct seeds"),
    ({"top": 1, "seeds": [7]}, 1, "confirm.seeds", "at least 2"),
    ({"top": 0, "seeds": [7, 8]}, 1, "confirm.top", "greater than or equal to 1"),
    ({"top": 2, "seeds": [7, 8], "rank_check": True}, 1, "confirm", "rank_check needs top >= 3"),
    ({"top": 1, "seeds": [7, 8], "teacher_seeds": [1, 1]}, 1, "confirm.teacher_seeds", "expected distinct seeds"),
    ({"top": 1, "seeds": [7, 8], "set": {"distill.method": "mgd"}}, 1, "confirm.set.distill.method",
     "a key the search does not sample"),
    ({"top": 1, "seeds": [7, 8], "set": {"train.seed": 3}}, 1, "confirm.set.train.seed", "does not sample"),
    ({"top": 1, "seeds": [7, 8], "set": {"train.epoks": 3}}, 1, "confirm.set.train.epoks", "unknown key"),
    ({"top": 1, "seeds": [7, 8], "set": {"train": {"epochs": -1}}}, 1, "confirm.set.train.epochs", "not valid"),
])
def test_confirm_block_is_checked(space_file, confirm, repeats, key, message):
    path = space_file(confirm=confirm, search={"repeats": repeats},
                      space={"distill.method": {"choice": ["none", "mgd"]}, "train.seed": {"choice": [0, 1]}})
    with pytest.raises(UserError) as err:
        Space(path)
    assert (err.value.key, str(path)) == (key, str(err.value.file)) and message in err.value.message


def test_confirm_block_with_fresh_seeds_is_accepted(space_file):
    space = Space(space_file(confirm={"top": 2, "seeds": [100, 101, 102]},
                             space={"distill.method": {"choice": ["none", "mgd"]}, "train.seed": {"choice": [0, 1]}}))
    assert space.settings.confirm.seeds == [100, 101, 102] and space.settings.confirm.baseline is True
    assert space.search_seeds() == {0, 1}


def test_confirmation_points_take_the_top_of_each_method_and_the_baseline(space_file, tmp_path):
    import pyarrow as pa

    from raykd.results import TableWriter
    from raykd.search.confirm import confirmation_points

    space = Space(space_file(
        confirm={"top": 1, "per": "distill.method", "seeds": [100, 101]},
        space={"distill.method": {"choice": ["none", "mgd", "dmkd"]},
               "distill.alpha": {"loguniform": [1e-8, 1e-6], "when": {"distill.method": ["mgd", "dmkd"]}}}))
    root = tmp_path / "search"
    writer = TableWriter(root / "tables", "search", {"distill.method": pa.string(), "distill.alpha": pa.float64()})
    scores = [("a", "mgd", 1e-7, 0.30), ("b", "mgd", 2e-7, 0.35), ("c", "dmkd", 1e-7, 0.20),
              ("d", "dmkd", 3e-7, 0.25), ("e", "none", None, 0.22)]
    for trial_id, method, alpha, value in scores:
        config = {"distill.method": method, **({"distill.alpha": alpha} if alpha else {})}
        writer.add_result(trial_id, config, {"epoch": 1, "epochs_total": 1, "bbox_mAP": value})
        writer.end_trial(trial_id, config=config)
    writer.flush()
    points = confirmation_points(space, str(root))
    # the best mgd and the best dmkd (not the two best overall, both mgd), then the baseline,
    # seed after seed
    assert points == [{"distill.method": m, **a, "train.seed": s}
                      for s in (100, 101)
                      for m, a in (("mgd", {"distill.alpha": 2e-7}), ("dmkd", {"distill.alpha": 3e-7}),
                                   ("none", {}))]
    space.settings.confirm.per = None
    space.settings.confirm.top = 2
    assert [p["distill.alpha"] for p in confirmation_points(space, str(root))[:2]] == [2e-7, 1e-7]


def test_confirmation_points_carry_confirm_set_and_one_point_per_teacher(space_file, tmp_path):
    import pyarrow as pa

    from raykd.results import TableWriter
    from raykd.search.confirm import ConfirmTeacher, confirmation_points

    space = Space(space_file(confirm={"top": 1, "seeds": [100, 101], "teacher_seeds": [4, 5],
                                      "set": {"train": {"epochs": 3}, "data.image_size": 96}}))
    assert space.settings.confirm.set == {"train.epochs": 3, "data.image_size": 96}
    root = tmp_path / "search"
    writer = TableWriter(root / "tables", "search", {"distill.method": pa.string(), "distill.alpha": pa.float64()})
    for trial_id, method, alpha, value in [("a", "mgd", 1e-7, 0.30), ("b", "none", None, 0.22)]:
        config = {"distill.method": method, **({"distill.alpha": alpha} if alpha else {})}
        writer.add_result(trial_id, config, {"epoch": 1, "epochs_total": 1, "bbox_mAP": value})
        writer.end_trial(trial_id, config=config)
    writer.flush()
    teachers = [ConfirmTeacher(4, "/t4.pt", {}), ConfirmTeacher(5, "/t5.pt", {})]
    points = confirmation_points(space, str(root), teachers)
    proxy = {"train.epochs": 3, "data.image_size": 96}
    mgd = {"distill.method": "mgd", "distill.alpha": 1e-7, **proxy}
    # the baseline builds no teacher (no student.inherit): once per seed
    assert points == [p for s in (100, 101) for p in (
        {**mgd, "train.seed": s, "teacher.train.seed": 4, "teacher.checkpoint": "/t4.pt"},
        {**mgd, "train.seed": s, "teacher.train.seed": 5, "teacher.checkpoint": "/t5.pt"},
        {"distill.method": "none", **proxy, "train.seed": s})]
    space.base["student"]["inherit"] = True  # now the baseline starts from the teacher's weights
    assert sum(p["distill.method"] == "none" for p in confirmation_points(space, str(root), teachers)) == 4


def test_confirm_per_must_be_a_searched_key(space_file):
    path = space_file(confirm={"top": 1, "per": "distill.fusion", "seeds": [100, 101]})
    with pytest.raises(UserError) as err:
        Space(path)
    assert err.value.key == "confirm.per" and "expected a searched key" in err.value.message


def test_confirmation_searcher_suggests_each_point_once_and_resumes_from_json(tmp_path):
    import numpy as np
    from ray.tune.search import Searcher

    from raykd.search.tuner import FixedPoints

    points = [{"distill.method": "samkd", "distill.pyramid_scales": [1, 2], "train.seed": np.int64(100)},
              {"distill.method": "none", "train.seed": 100}, {"distill.method": "none", "train.seed": 101}]
    searcher = FixedPoints(points)
    assert searcher.suggest("t1") == {"distill.method": "samkd", "distill.pyramid_scales": [1, 2], "train.seed": 100}
    searcher.save(str(tmp_path / "state.json"))  # numpy scalars from the tables are written as numbers
    restored = FixedPoints([])
    restored.restore(str(tmp_path / "state.json"))
    assert [restored.suggest("t2"), restored.suggest("t3")] == points[1:]  # the first is not suggested again
    assert restored.suggest("t4") == Searcher.FINISHED


def test_the_demo_says_it_is_a_smoke_test_and_the_reproduction_confirms_over_three_teachers():
    root = Path(__file__).resolve().parents[2] / "search_spaces"
    demo = Space(root / "demo.yaml")
    assert "smoke test" in demo.settings.closing_note and "its interval may include zero" in demo.settings.closing_note
    assert "python -m raykd.search search_spaces/shapes_reproduction.yaml" in demo.settings.closing_note
    reproduction = Space(root / "shapes_reproduction.yaml")
    assert len(reproduction.settings.confirm.teacher_seeds) == 3 and reproduction.settings.confirm.per == "distill.method"


def test_define_by_run_resumes_from_its_pickle_and_from_the_older_one(space_file):
    """Tune pickles the searcher (with this space) when it checkpoints; a resumed search unpickles
    it: today's pickle and the one written before the specs existed (key -> entry dump)."""
    import pickle

    space = Space(space_file(space={
        "distill.method": {"choice": ["none", "mgd"]},
        "distill.alpha": {"loguniform": [1e-8, 1e-6], "when": {"distill.method": "mgd"}},
    }))
    expected = list(space.params.values())
    assert pickle.loads(pickle.dumps(space.define_by_run())).specs == expected
    older = object.__new__(type(space.define_by_run()))
    older.__setstate__({"params": {k: e.model_dump(exclude_unset=True) for k, e in space.settings.space.items()},
                        "fixed": {}})
    assert older.specs == expected
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert older(study.ask()) is None  # no constants: plain scalars sampled
