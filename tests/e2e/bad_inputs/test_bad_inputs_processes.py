"""A few bad inputs in real processes: the exit code and stderr line ``python -m`` really gives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bad_input_tools import ANNOTATIONS, check_line, snapshot

REPO = Path(__file__).resolve().parents[3]


def run_module(cmd: str, *argv, cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", f"raykd.{cmd}", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)
    return proc.returncode, proc.stderr


def _python_tag_space(b):
    marker = b.root / "MARKER"
    return [b.space(text=f"experiment: exp.yaml\nfixed: !!python/object/apply:os.system ['touch {marker}']\n"),
            "--storage", b.storage]


def _negative_box(b):
    annotations, images = b.coco(annotations=[ANNOTATIONS[0], {**ANNOTATIONS[1], "bbox": [4, 4, -8, 12]}])
    return ["check", annotations, "--images", images]


def _images_missing(b):
    experiment, _ = b.coco_experiment(files={"b.png": None})
    return [experiment]


@pytest.mark.parametrize(("cmd", "argv", "where", "what"), [
    pytest.param("search", _python_tag_space, ["space.yaml"], "could not determine a constructor for the tag",
                 id="search-space-with-python-tag",
                 marks=pytest.mark.bad_input("test_bad_spaces.py::test_space_with_python_tag_runs_nothing")),
    pytest.param("search", lambda b: [b.space(), "--storage", b.storage, "--num-samples", "abc"], ["--num-samples"],
                 "invalid int value: 'abc' (see --help)", id="search-num-samples-not-a-number",
                 marks=pytest.mark.bad_input("test_bad_flags.py::search-num-samples-not-a-number")),
    pytest.param("data", _negative_box, ["set.json", "annotations[1].bbox"], "width and height >= 0",
                 id="data-check-box-with-negative-width",
                 marks=pytest.mark.bad_input("test_bad_datasets.py::box-with-negative-width")),
    pytest.param("train", _images_missing, ["set.json", "images[1].file_name"], "image file not found",
                 id="train-image-file-missing"),
])
def test_real_process(bench, cmd, argv, where, what):
    args = argv(bench)
    before = snapshot(bench.root)
    code, stderr = run_module(cmd, *args, cwd=bench.root)
    check_line(cmd, code, stderr, where, what)
    assert snapshot(bench.root) == before
    assert not (bench.root / "MARKER").exists()
