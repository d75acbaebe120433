"""Experiment files: validation errors name the file and key; overrides; relative paths."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from raykd.config import load_experiment, parse_overrides
from raykd.errors import UserError


def test_relative_paths_resolve_against_the_file(tmp_path):
    sub = tmp_path / "exps"
    sub.mkdir()
    path = sub / "e.yaml"
    path.write_text(yaml.safe_dump({"data": {"synthetic": {"out_dir": "../data"}}, "train": {"output_dir": "out"}}))
    cfg = load_experiment(path)
    assert cfg.data.synthetic.out_dir == str((tmp_path / "data").resolve())
    assert cfg.train.output_dir == str((sub / "out").resolve())


def test_overrides_parse_values_as_yaml(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"data": {"synthetic": {"out_dir": "d"}}}))
    cfg = load_experiment(path, parse_overrides(["train.epochs=3", "train.lr=0.5", "distill.pyramid_scales=[1, 2]"]))
    assert (cfg.train.epochs, cfg.train.lr, cfg.distill.pyramid_scales) == (3, 0.5, [1, 2])


@pytest.mark.parametrize("raw, key, words", [
    ({"data": {"synthetic": {"out_dir": "d"}}, "train": {"epoch": 3}}, "train.epoch", "unknown key"),
    ({"data": {"synthetic": {"out_dir": "d"}}, "train": {"epochs": 0}}, "train.epochs", "greater than or equal to 1"),
    ({"data": {"synthetic": {"out_dir": "d"}}, "student": {"arch": "yolo"}}, "student.arch", "fcos"),
    ({"data": {"synthetic": {"out_dir": "d"}}, "student": {"fpn_channels": 48}}, "student", "multiple of 32"),
    ({"data": {}}, "data", "either data.synthetic"),
    ({"data": {"synthetic": {"out_dir": "d"}}, "distill": {"method": "mgd"}}, "(top level)", "needs a teacher"),
    ({"data": {"synthetic": {"out_dir": "d"}}, "teacher": {"arch": "fcos"}}, "teacher", "teacher.checkpoint"),
])
def test_bad_experiment_names_file_and_key(tmp_path, raw, key, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as info:
        load_experiment(path)
    assert info.value.key == key and info.value.file == str(path)
    assert words in info.value.message


def test_yaml_python_tags_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("data: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_experiment(path)


def test_train_cli_bad_file_is_one_line_exit_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"data": {"synthetic": {"out_dir": "d"}}, "train": {"lr": -1}}))
    proc = subprocess.run([sys.executable, "-m", "raykd.train", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert str(path) in lines[0] and "train.lr" in lines[0]
