"""``_base_`` in experiment and space files: merged key by key (later bases and the file itself
win), relative to the file; cycles and missing bases refused in one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raykd.config import load_experiment, load_with_bases, merge
from raykd.errors import UserError
from raykd.search.space import Space

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_merge_is_key_by_key_and_lists_replace():
    base = {"train": {"epochs": 4, "lr": 0.1, "milestones": [2, 3]}, "name": "a"}
    over = {"train": {"epochs": 2, "milestones": [1]}, "distill": {"method": "mgd"}}
    assert merge(base, over) == {"train": {"epochs": 2, "lr": 0.1, "milestones": [1]}, "name": "a",
                                 "distill": {"method": "mgd"}}
    assert base["train"]["epochs"] == 4  # inputs untouched


def test_experiment_inherits_later_bases_and_the_file_win(experiment_dict, tmp_path):
    first = write(tmp_path / "bases" / "first.yaml", {**experiment_dict(), "name": "first"})
    write(tmp_path / "bases" / "second.yaml", {"name": "second", "train": {"epochs": 5, "lr": 0.5}})
    child = write(tmp_path / "child.yaml", {"_base_": ["bases/first.yaml", "bases/second.yaml"],
                                            "train": {"lr": 0.25}})
    cfg = load_experiment(child)
    assert cfg.name == "second"  # the later base wins over the earlier
    assert (cfg.train.epochs, cfg.train.lr) == (5, 0.25)  # the file wins over its bases, key by key
    assert cfg.train.steps_per_epoch == load_experiment(first).train.steps_per_epoch  # kept from the first
    assert load_experiment(child, {"train.lr": 0.125}).train.lr == 0.125  # --set wins over everything


def test_relative_paths_are_relative_to_the_file_that_holds_them(experiment_dict, tmp_path):
    write(tmp_path / "deep" / "base.yaml", {**experiment_dict(), "cache_dir": "cache_of_base"})
    child = write(tmp_path / "child.yaml", {"_base_": "deep/base.yaml", "train": {"output_dir": "out_of_child"}})
    cfg = load_experiment(child)
    assert cfg.cache_dir == str(tmp_path / "deep" / "cache_of_base")
    assert cfg.train.output_dir == str(tmp_path / "out_of_child")


def test_bases_of_bases_are_merged(experiment_dict, tmp_path):
    write(tmp_path / "a.yaml", {**experiment_dict(), "name": "a"})
    write(tmp_path / "b.yaml", {"_base_": "a.yaml", "train": {"epochs": 7}})
    child = write(tmp_path / "c.yaml", {"_base_": "b.yaml", "name": "c"})
    cfg = load_experiment(child)
    assert (cfg.name, cfg.train.epochs) == ("c", 7)


@pytest.mark.parametrize("layout, expected", [
    ({"a.yaml": {"_base_": "a.yaml"}}, "a.yaml: _base_: inherits from itself (a.yaml -> a.yaml)"),
    ({"a.yaml": {"_base_": "b.yaml"}, "b.yaml": {"_base_": "a.yaml"}},
     "b.yaml: _base_: inherits from itself (a.yaml -> b.yaml -> a.yaml)"),
    ({"a.yaml": {"_base_": "missing.yaml"}}, "a.yaml: _base_: base file not found: "),
    ({"a.yaml": {"_base_": 3}}, "a.yaml: _base_: expected a file path or a list of file paths"),
    ({"a.yaml": {"_base_": []}}, "a.yaml: _base_: expected a file path or a list of file paths"),
])
def test_cycles_and_missing_bases_are_refused(tmp_path, layout, expected):
    for name, data in layout.items():
        write(tmp_path / name, data)
    with pytest.raises(UserError) as err:
        load_with_bases(tmp_path / "a.yaml")
    assert expected in str(err.value)


def test_a_cycle_exits_2_with_one_line(tmp_path):
    write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    proc = subprocess.run([sys.executable, "-m", "raykd", "config", "show", str(tmp_path / "a.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "inherits from itself" in proc.stderr and "Traceback" not in proc.stderr


def test_space_inherits_and_its_experiment_is_relative_to_the_base(write_experiment, tmp_path):
    experiment = write_experiment()
    shared = write(tmp_path / "spaces" / "common" / "shared.yaml", {
        "experiment": str(Path("..") / ".." / experiment.relative_to(tmp_path)),
        "search": {"num_samples": 3, "seed": 5}, "space": {"train.seed": [0, 1]}})
    child = write(tmp_path / "spaces" / "child.yaml", {"_base_": "common/shared.yaml", "search": {"num_samples": 2},
                                                       "space": {"train.steps_per_epoch": [1, 2]}})
    space = Space(child)
    assert space.experiment_path.resolve() == experiment.resolve()
    assert (space.settings.search.num_samples, space.settings.search.seed) == (2, 5)
    assert set(space.params) == {"train.seed", "train.steps_per_epoch"}
    # the runs table keeps the merged space, which needs none of the bases to be read again
    kept = yaml.safe_load(space.text)
    assert "_base_" not in kept and kept["search"] == {"num_samples": 2, "seed": 5}
    assert Path(kept["experiment"]).resolve() == experiment.resolve()
    assert Space(shared).settings.search.num_samples == 3


def test_the_repository_configs_that_inherit_resolve_as_before():
    """reproduction_student.yaml is the demo's experiment under its own name and output folder;
    the COCO experiments share _coco_2x.yaml's data and recipe."""
    demo = load_experiment(ROOT / "experiments" / "demo_student.yaml").model_dump(mode="json")
    repro = load_experiment(ROOT / "experiments" / "reproduction_student.yaml").model_dump(mode="json")
    assert repro["name"] == "reproduction_student"
    assert repro["train"].pop("output_dir").endswith("runs/reproduction_student")
    demo["train"].pop("output_dir")
    assert {**repro, "name": demo["name"]} == demo
    assert "_base_" in yaml.safe_load((ROOT / "experiments" / "reproduction_student.yaml").read_text())
    for name, lr in (("fcos_r50", 0.01), ("retinanet_r50", 0.01), ("faster_rcnn_r50", 0.02)):
        cfg = load_experiment(ROOT / "experiments" / "coco" / f"{name}.yaml")
        assert (cfg.name, cfg.train.lr, cfg.train.epochs, cfg.train.milestones) == (f"coco_{name}", lr, 24, [16, 22])
        assert (cfg.data.min_size, cfg.data.image_size, cfg.data.train.images) == (800, 1333, "/data/coco/train2017")
