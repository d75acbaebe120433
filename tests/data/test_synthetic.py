"""The synthetic shapes set: determinism, counts, boxes, category gaps, ensure_synthetic."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from raykd.data import CocoDetection, ensure_synthetic, generate_synthetic, synthetic
from raykd.data.check import check_coco
from raykd.data.synthetic import CLASSES, _draw_shape
from raykd.errors import UserError

SMALL = {"train_images": 12, "val_images": 4, "image_size": 64}


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "a", seed=3, **SMALL)
    generate_synthetic(tmp_path / "b", seed=3, **SMALL)
    generate_synthetic(tmp_path / "c", seed=4, **SMALL)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len(a) == 12 + 4 + 3 and a == b
    assert a["annotations/train.json"] != c["annotations/train.json"]
    assert a["images/train/000001.png"] != c["images/train/000001.png"]


def test_layout_counts_and_recorded_parameters(tmp_path: Path) -> None:
    paths = generate_synthetic(tmp_path / "s", seed=1, **SMALL)
    assert paths.train_annotations == tmp_path / "s" / "annotations" / "train.json"
    assert paths.val_images == tmp_path / "s" / "images" / "val"
    assert len(list(paths.train_images.glob("*.png"))) == 12 and len(list(paths.val_images.glob("*.png"))) == 4
    recorded = json.loads((tmp_path / "s" / "synth.json").read_text())
    assert {k: recorded[k] for k in ("train_images", "val_images", "seed", "image_size", "num_classes")} == {
        **SMALL,
        "seed": 1,
        "num_classes": 4,
    }
    splits = [(paths.train_annotations, paths.train_images, 12), (paths.val_annotations, paths.val_images, 4)]
    for annotations, images, count in splits:
        report = check_coco(annotations, images)
        assert report.usable and not report.problems and report.images == count


def test_boxes_are_tight_inside_the_image_and_categories_have_gaps(tmp_path: Path) -> None:
    paths = generate_synthetic(tmp_path / "s", train_images=60, val_images=2, image_size=160, seed=0)
    coco = json.loads(paths.train_annotations.read_text())
    assert [c["id"] for c in coco["categories"]] == [1, 3, 7, 10]
    assert [c["name"] for c in coco["categories"]] == ["rectangle", "ellipse", "triangle", "cross"]
    per_image: dict[int, list] = {image["id"]: [] for image in coco["images"]}
    for ann in coco["annotations"]:
        per_image[ann["image_id"]].append(ann["bbox"])
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 160 and y + h <= 160
        assert 12 <= w <= 75 and 12 <= h <= 75 and ann["area"] == w * h and ann["iscrowd"] == 0
    assert all(1 <= len(boxes) <= 6 for boxes in per_image.values())
    assert {ann["category_id"] for ann in coco["annotations"]} == {1, 3, 7, 10}
    areas = [ann["area"] for ann in coco["annotations"]]
    assert min(areas) < 32**2 < max(areas)  # COCO small and medium objects both present
    for boxes in per_image.values():  # overlaps allowed, but no shape mostly hidden
        for (ax, ay, aw, ah), (bx, by, bw, bh) in combinations(boxes, 2):
            iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
            ih = max(0, min(ay + ah, by + bh) - max(ay, by))
            assert iw * ih <= min(aw * ah, bw * bh) / 3 + 1e-9


@pytest.mark.parametrize("name", [name for _, name in CLASSES])
def test_every_shape_fills_its_box_exactly(name: str) -> None:
    rng = np.random.default_rng(0)
    for x, y, w, h in [(3, 5, 12, 12), (10, 2, 40, 17), (0, 0, 75, 60), (20, 30, 13, 50)]:
        canvas = Image.new("L", (100, 100))
        _draw_shape(ImageDraw.Draw(canvas), name, x, y, w, h, 255, rng)
        ys, xs = np.nonzero(np.asarray(canvas))
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h), (name, x, y, w, h)


def test_dataset_reads_the_synthetic_set(tmp_path: Path) -> None:
    paths = generate_synthetic(tmp_path / "s", num_classes=6, **SMALL)
    ds = CocoDetection(paths.train_annotations, paths.train_images, image_size=64, train=True)
    assert ds.cat_ids == [1, 3, 7, 10, 12, 15] and ds.num_classes == 7
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and len(target["boxes"]) >= 1


def test_bad_parameters_and_non_empty_folders_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="at most 6"):
        generate_synthetic(tmp_path / "x", num_classes=7, **SMALL)
    with pytest.raises(UserError) as caught:
        generate_synthetic(tmp_path / "x", train_images=0)
    assert caught.value.key == "train_images"
    with pytest.raises(UserError) as caught:
        generate_synthetic(tmp_path / "x", seed=-1)
    assert caught.value.key == "seed"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("precious")
    with pytest.raises(UserError, match="empty or new folder"):
        generate_synthetic(tmp_path / "full", **SMALL)
    with pytest.raises(UserError, match="not a raykd synthetic set"):
        ensure_synthetic(tmp_path / "full", **SMALL)
    assert (tmp_path / "full" / "mine.txt").read_text() == "precious"


def test_ensure_synthetic_reuses_a_matching_set_and_replaces_another(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    paths = ensure_synthetic(out, **SMALL)
    assert paths.train_annotations.is_file()
    marker = out / "images" / "train" / "marker"
    marker.write_text("still here")
    assert ensure_synthetic(out, **SMALL) == paths and marker.exists()  # same parameters: kept
    ensure_synthetic(out, **{**SMALL, "seed": 5})  # other parameters: regenerated
    assert not marker.exists()
    assert json.loads((out / "synth.json").read_text())["seed"] == 5
    generate_synthetic(tmp_path / "direct", **{**SMALL, "seed": 5})
    assert files(out) == files(tmp_path / "direct")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".synth.lock", "direct", "synth"]  # no temporary folders left


def test_ensure_synthetic_repairs_an_incomplete_set_and_removes_stale_temporaries(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    ensure_synthetic(out, **SMALL)
    shutil.rmtree(out / "images" / "val")
    (tmp_path / ".synth.tmp-killed").mkdir()  # as left by a run killed while generating
    paths = ensure_synthetic(out, **SMALL)
    assert len(list(paths.val_images.glob("*.png"))) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [".synth.lock", "synth"]


def _ensure(out: str) -> str:
    return str(ensure_synthetic(out, train_images=20, val_images=4, image_size=64).train_annotations)


def test_concurrent_ensure_synthetic_calls_generate_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "generations.log"
    generate = synthetic.generate_synthetic

    def slow_counted_generate(*args, **kwargs):
        with open(log, "a") as f:
            f.write("generated\n")
        time.sleep(0.5)  # a wide window for the other processes
        return generate(*args, **kwargs)

    monkeypatch.setattr(synthetic, "generate_synthetic", slow_counted_generate)  # inherited by the forked pool
    out = tmp_path / "data" / "shared"
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_ensure, [str(out)] * 3)
    assert results == [str(out / "annotations" / "train.json")] * 3
    assert log.read_text().count("generated") == 1
    assert len(list((out / "images" / "train").glob("*.png"))) == 20
    assert sorted(p.name for p in out.parent.iterdir()) == [".shared.lock", "shared"]  # no temporary folders left
