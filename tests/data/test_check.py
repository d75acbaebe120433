"""check_coco and `python -m raykd.data check`: every problem kind counted, exit codes 0 and 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raykd.data.check import check_coco
from raykd.errors import UserError

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raykd.data", *args], capture_output=True, text=True, timeout=120)


def save(path: Path, width: int, height: int, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 90, dtype=np.uint8)).save(path, fmt)


def img(image_id: int, file_name: str, width: int = 40, height: int = 30) -> dict:
    return {"id": image_id, "file_name": file_name, "width": width, "height": height}


def ann(ann_id: int, image_id: int, bbox: list, category_id: int = 1, **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def write(path: Path, images: list, annotations: list, categories: list = CATEGORIES) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture
def good_set(tmp_path: Path) -> tuple[Path, Path]:
    save(tmp_path / "im" / "a.png", 40, 30)
    save(tmp_path / "im" / "sub" / "b.jpg", 40, 30, "JPEG")
    save(tmp_path / "im" / "c.png", 40, 30)
    images = [img(1, "a.png"), img(2, "sub/b.jpg"), img(3, "c.png")]
    annotations = [
        ann(1, 1, [1, 1, 10, 10]),
        ann(2, 2, [5, 5, 20, 20], category_id=5),
        ann(3, 2, [0, 0, 40, 30], iscrowd=1),
    ]
    return write(tmp_path / "good.json", images, annotations), tmp_path / "im"


def test_good_set_is_usable(good_set) -> None:
    report = check_coco(*good_set)
    assert report.usable and not report.problems
    assert (report.images, report.annotations, report.boxes, report.crowd) == (3, 3, 2, 1)
    assert report.images_without_annotations == 1 and report.categories == {1: "a", 5: "b"}
    assert report.summary() == "usable: 3 images, 2 boxes, 2 classes"


def test_each_problem_kind_is_counted(tmp_path: Path) -> None:
    root = tmp_path / "im"
    for name in ("ok1.png", "ok2.png", "ok3.png", "dup.png"):
        save(root / name, 40, 30)
    save(root / "wrong_size.png", 41, 30)
    (root / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = Image.new("RGB", (40, 30))
    good.save(root / "truncated.jpg", quality=95)
    (root / "truncated.jpg").write_bytes((root / "truncated.jpg").read_bytes()[:200])
    images = [
        img(1, "ok1.png"),
        img(2, "ok2.png"),
        img(3, "ok3.png"),
        img(4, "gone.png"),  # missing_image
        img(5, "gone2.png"),  # missing_image
        img(6, "junk.png"),  # unreadable_image
        img(7, "truncated.jpg"),  # unreadable_image
        img(8, "wrong_size.png"),  # size_mismatch
        img(1, "dup.png"),  # duplicate_image_id
        {"id": 9, "width": 40, "height": 30},  # missing_key
    ]
    annotations = [
        ann(1, 1, [1, 1, 10, 10]),
        ann(2, 1, [-5, 2, 10, 10]),  # outside_image (clipped, kept)
        ann(3, 1, [35, 25, 10, 10]),  # outside_image
        ann(4, 1, [0.5, 0.5, 39.9, 29.9]),  # within the 1-px tolerance: fine
        ann(5, 2, [3, 3, 0, 5]),  # degenerate_box
        ann(6, 2, [50, 3, 5, 5]),  # degenerate_box (outside entirely)
        ann(7, 2, [3, 3, 5, 5], category_id=2),  # unknown_category_id
        ann(8, 2, [3, 3, 5, 5], category_id=3),  # unknown_category_id
        ann(9, 2, [3, 3, 5, 5], category_id=4),  # unknown_category_id
        ann(9, 2, [3, 3, 5, 5]),  # duplicate_annotation_id
        ann(10, 77, [3, 3, 5, 5]),  # unknown_image_id
        ann(11, 2, [3, 3, 5]),  # malformed
        ann(12, 2, [0, 0, 40, 30], iscrowd=1),
        ann(13, 2, [0, 0, 40, 30], iscrowd=1),
    ]
    categories = CATEGORIES + [{"id": 5, "name": "again"}]  # duplicate_category_id
    report = check_coco(write(tmp_path / "bad.json", images, annotations, categories), root)
    assert dict(report.problems) == {
        "missing_image": 2,
        "unreadable_image": 2,
        "size_mismatch": 1,
        "duplicate_image_id": 1,
        "missing_key": 1,
        "outside_image": 2,
        "degenerate_box": 2,
        "unknown_category_id": 3,
        "duplicate_annotation_id": 1,
        "unknown_image_id": 1,
        "malformed": 1,
        "duplicate_category_id": 1,
    }
    assert report.crowd == 2 and report.images == 8 and report.boxes == 4
    assert report.images_without_annotations == 6  # ids 3..8 (the duplicate entry is not an image)
    assert not report.usable and report.fatal == 14 and report.warnings == 4
    assert report.examples["missing_image"][0] == f"images[3].file_name: image file not found: {root / 'gone.png'}"
    expected = "annotations[6].category_id: expected one of the category ids [1, 5]"
    assert report.examples["unknown_category_id"][0].startswith(expected)
    assert report.examples["degenerate_box"] == [
        "annotations[4].bbox: width or height <= 0.001 px after clipping (dropped)",
        "annotations[5].bbox: width or height <= 0.001 px after clipping (dropped)",
    ]
    assert len(report.examples["unknown_category_id"]) == 3
    text = report.format()
    assert "unknown_category_id" in text and "FATAL" in text and "warning" in text


def test_warnings_only_leave_the_set_usable(tmp_path: Path) -> None:
    save(tmp_path / "a.png", 40, 30)
    annotations = [ann(1, 1, [30, 20, 20, 20]), ann(2, 1, [3, 3, 5, 1e-4])]
    report = check_coco(write(tmp_path / "w.json", [img(1, "a.png")], annotations), tmp_path)
    assert report.usable and dict(report.problems) == {"outside_image": 1, "degenerate_box": 1}
    assert report.summary().startswith("usable: 1 images, 1 boxes, 2 classes; 2 warnings")


def test_unreadable_json_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"images": [}')
    with pytest.raises(UserError, match="not valid JSON at line 1 column 13"):
        check_coco(tmp_path / "broken.json", tmp_path)


def test_missing_image_folder_is_fatal(good_set) -> None:
    report = check_coco(good_set[0], good_set[1] / "nope")
    assert not report.usable and report.problems["missing_image"] == 1


# ---- the command ----


def test_cli_good_set_exits_0(good_set) -> None:
    result = cli("check", str(good_set[0]), "--images", str(good_set[1]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "usable: 3 images, 2 boxes, 2 classes"
    assert "1 without annotations" in result.stdout and "1 crowd regions" in result.stdout and result.stderr == ""


def test_cli_bad_set_exits_2_with_one_line(good_set, tmp_path: Path) -> None:
    data = json.loads(good_set[0].read_text())
    data["images"][0]["file_name"] = "missing.png"
    data["annotations"][0]["category_id"] = 99
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    result = cli("check", str(bad), "--images", str(good_set[1]))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"python -m raykd.data: error: {bad}: not usable: 2 fatal problems")
    assert "missing_image 1" in result.stderr and "unknown_category_id 1" in result.stderr
    assert "images[0].file_name" in result.stdout  # the report names where


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "expected COCO JSON, the file is not valid JSON at line 1 column 2"),
        (json.dumps({"images": []}), "categories: expected a list (missing key)"),
        (None, "annotation file not found"),
    ],
)
def test_cli_unreadable_file_exits_2_with_one_line(tmp_path: Path, content, expected) -> None:
    path = tmp_path / "x.json"
    if content is not None:
        path.write_text(content)
    result = cli("check", str(path), "--images", str(tmp_path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"python -m raykd.data: error: {path}: {expected}\n"


def test_cli_help_and_synth(tmp_path: Path) -> None:
    for args in (["--help"], ["check", "--help"], ["synth", "--help"]):
        result = cli(*args)
        assert result.returncode == 0 and "usage: python -m raykd.data" in result.stdout
    result = cli("synth", str(tmp_path / "s"), "--images", "6", "--image-size", "64", "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote 6 train + 1 val images of 64 px")
    assert json.loads((tmp_path / "s" / "synth.json").read_text())["val_images"] == 1
    again = cli("synth", str(tmp_path / "s"), "--images", "6", "--image-size", "64", "--seed", "2")
    assert again.returncode == 0 and again.stdout.startswith("found (same parameters, kept) 6 train")
    bad = cli("synth", str(tmp_path / "t"), "--num-classes", "9")
    assert bad.returncode == 2
    assert bad.stderr == "python -m raykd.data: error: --num-classes: expected at most 6 shape classes, got 9\n"


def test_cli_masks_checks_every_segmentation(good_set, tmp_path: Path) -> None:
    data = json.loads(good_set[0].read_text())  # a box-only file: usable for boxes, not for masks
    assert cli("check", str(good_set[0]), "--images", str(good_set[1])).returncode == 0
    result = cli("check", str(good_set[0]), "--images", str(good_set[1]), "--masks")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "not usable: 3 fatal problems (missing_key 3)" in result.stderr
    assert "annotations[0].segmentation" in result.stderr
    data["annotations"][0]["segmentation"] = [[1, 1, 11, 1, 11, 11, 1, 11]]  # polygons, pixels
    data["annotations"][1]["segmentation"] = {"size": [30, 40], "counts": [0, 1200]}  # uncompressed RLE
    data["annotations"][2]["segmentation"] = {"size": [31, 40], "counts": [0, 1240]}  # not the image's size
    masked = tmp_path / "masked.json"
    masked.write_text(json.dumps(data))
    result = cli("check", str(masked), "--images", str(good_set[1]), "--masks")
    assert result.returncode == 2 and "malformed 1" in result.stderr and "annotations[2].segmentation" in result.stderr
    del data["annotations"][2]
    masked.write_text(json.dumps(data))
    result = cli("check", str(masked), "--images", str(good_set[1]), "--masks")
    assert result.returncode == 0, result.stderr
    result = cli("check", "--format", "yolo", "--yaml", str(tmp_path / "d.yaml"), "--split", "train", "--masks")
    assert result.returncode == 2 and "YOLO splits have no instance masks" in result.stderr and "--masks" in result.stderr
