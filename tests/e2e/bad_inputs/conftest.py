"""The bench every bad-input case runs on: a working folder that already holds a search's tables.

``bench.check_refused(cmd, argv, where=..., what=...)`` runs ``python -m raykd.<cmd>`` in-process and
checks exit 2, one stderr line naming ``where`` and saying ``what``, no Ray, and that no file
under the working folder (the earlier search's tables included) was created, changed or removed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from bad_input_tools import ANNOTATIONS, CATEGORIES, EARLIER, IMAGES, check_refused
from PIL import Image


@pytest.fixture(scope="session")
def results_template(tmp_path_factory) -> Path:
    """A results folder holding one finished search: Parquet tables (trials, epochs) and teacher.json."""
    from raykd.results import TableWriter

    root = tmp_path_factory.mktemp("results_template")
    writer = TableWriter(root / EARLIER / "tables", EARLIER, {"distill.method": pa.string()}, flush_every_s=0)
    for trial, method in (("t1", "none"), ("t2", "mgd")):
        for epoch in (1, 2):
            writer.add_result(trial, {"distill.method": method},
                              {"epoch": epoch, "epochs_total": 2, "bbox_mAP": 0.1 * epoch, "time_total_s": 5.0 * epoch,
                               "time_this_iter_s": 5.0})
        writer.end_trial(trial)
    writer.flush()
    (root / EARLIER / "teacher.json").write_text(json.dumps({"checkpoint": "teacher.pt", "bbox_mAP": 0.2}))
    assert len(list((root / EARLIER / "tables").rglob("*.parquet"))) >= 2
    return root


class Bench:
    """Files for one case, all under ``root`` (the watched folder, also the working directory)."""

    def __init__(self, root: Path, write_experiment, results_template: Path):
        self.root = root
        self.storage = root / "results"
        shutil.copytree(results_template, self.storage)
        self.teacher = root / "teacher.pt"  # configured in every experiment; absent unless a case writes it
        self._write_experiment = write_experiment

    def experiment(self, name: str = "exp.yaml", *, data: dict | None = None, drop: tuple[str, ...] = (),
                   **sections) -> Path:
        """The tiny experiment of tests/conftest.py (a teacher block reading ``self.teacher``,
        output under the results folder) with ``data`` and ``sections`` merged in, ``drop`` keys removed."""
        sections.setdefault("teacher", {"arch": "fcos", "backbone": "resnet18", "fpn_channels": 64,
                                        "checkpoint": str(self.teacher)})
        sections.setdefault("train", {})
        sections["train"] = {"output_dir": str(self.storage / "run"), **sections["train"]}
        path = self._write_experiment(name, **sections)
        raw = yaml.safe_load(path.read_text())
        raw["data"].update(data or {})
        for key in drop:
            raw.pop(key)
        path.write_text(yaml.safe_dump(raw))
        return path

    def space(self, name: str = "space.yaml", *, exp: Path | None = None, text: str | None = None,
              **changes) -> Path:
        """A valid space over ``exp`` (default: :meth:`experiment`); ``changes`` replace top-level
        keys (None drops one); or ``text`` as the whole file."""
        path = self.root / name
        if text is not None:
            path.write_text(text)
            return path
        raw = {"experiment": str(exp or self.experiment()), "metric": "bbox_mAP", "mode": "max",
               "scheduler": {"type": "none"},
               "space": {"distill.method": {"choice": ["none", "mgd"]},
                         "distill.alpha": {"loguniform": [1e-8, 1e-6], "when": {"distill.method": "mgd"}}}}
        raw = {key: value for key, value in {**raw, **changes}.items() if value is not None}
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    def coco(self, name: str = "set", *, images=IMAGES, annotations=ANNOTATIONS, categories=CATEGORIES,
             text: str | None = None, files: dict[str, bytes | None] | None = None) -> tuple[Path, Path]:
        """A small COCO set: ``name.json`` and ``name/`` with a 32 px PNG per image entry.
        ``text`` replaces the JSON; ``files`` replaces image files (bytes) or leaves them out (None)."""
        folder = self.root / name
        folder.mkdir()
        for entry in IMAGES:
            Image.fromarray(np.full((32, 32, 3), 120, dtype=np.uint8)).save(folder / entry["file_name"])
        for file_name, data in (files or {}).items():
            if data is None:
                (folder / file_name).unlink()
            else:
                (folder / file_name).write_bytes(data)
        path = self.root / f"{name}.json"
        doc = {"images": images, "annotations": annotations, "categories": categories}
        path.write_text(text if text is not None else json.dumps(doc))
        return path, folder

    def coco_experiment(self, **coco) -> tuple[Path, Path]:
        """(experiment, annotation file): an experiment training on ``self.coco(**coco)``, val good."""
        annotations, images = self.coco(**coco)
        val, val_images = self.coco("val")
        split = {"annotations": str(annotations), "images": str(images)}
        data = {"train": split, "val": {"annotations": str(val), "images": str(val_images)}, "image_size": 64}
        return self.experiment("data_exp.yaml", data=data), annotations

    def check_refused(self, cmd: str, argv, *, where, what: str) -> str:
        where = [where] if isinstance(where, str) else list(where)
        return check_refused(cmd, [str(a) for a in argv], where=where, what=what, watch=self.root)


@pytest.fixture
def bench(tmp_path, write_experiment, results_template, monkeypatch) -> Bench:
    monkeypatch.chdir(tmp_path)  # anything written relative to the working directory is watched too
    return Bench(tmp_path, write_experiment, results_template)
