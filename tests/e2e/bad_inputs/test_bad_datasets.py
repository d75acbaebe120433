"""Bad COCO, Pascal VOC and YOLO sets: ``python -m raykd.data check`` (and ``convert``) refuses them,
and ``raykd.train`` / ``raykd.search`` refuse them before anything starts (the annotation file is named,
with the key, object or line of the first problem)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from bad_input_tools import ANNOTATIONS, CATEGORIES, IMAGES
from PIL import Image


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 60, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _annotation(**changes) -> list[dict]:
    """The good annotations with the second one changed."""
    return [ANNOTATIONS[0], {**ANNOTATIONS[1], **changes}]


# (id, what self.coco gets, key named, words of what was expected)
CHECK_CASES = [
    ("broken-json", {"text": '{"images": [{"id": 1,'}, None,
     "expected COCO JSON, the file is not valid JSON at line 1 column 22"),
    ("json-is-a-list", {"text": json.dumps([IMAGES])}, None,
     "expected a JSON object with images, annotations and categories"),
    ("missing-images-key", {"text": json.dumps({"annotations": [], "categories": CATEGORIES})}, "images",
     "expected a list (missing key)"),
    ("images-is-not-a-list", {"text": json.dumps({"images": {"a.png": 1}, "categories": CATEGORIES})}, "images",
     "expected a list"),
    ("image-file-missing", {"files": {"b.png": None}}, "images[1].file_name",
     "missing_image 1); first: images[1].file_name: image file not found"),
    ("corrupt-png-garbage-bytes", {"files": {"a.png": b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20}},
     "images[0].file_name", "unreadable_image 1); first: images[0].file_name: cannot read"),
    ("truncated-png", {"files": {"b.png": _png_bytes()[:60]}}, "images[1].file_name",
     "unreadable_image 1); first: images[1].file_name: cannot read"),
    ("image-of-other-size-than-declared", {"images": [IMAGES[0], {**IMAGES[1], "width": 40}]},
     "images[1].file_name", "is 32x32, the annotations say 40x32"),
    ("box-with-negative-width", {"annotations": _annotation(bbox=[4, 4, -8, 12])}, "annotations[1].bbox",
     "expected [x, y, width, height] with width and height >= 0, got [4, 4, -8, 12] (annotation id 11)"),
    ("box-with-negative-height", {"annotations": _annotation(bbox=[4, 4, 8, -0.5])}, "annotations[1].bbox",
     "width and height >= 0, got [4, 4, 8, -0.5] (annotation id 11)"),
    ("bbox-of-three-numbers", {"annotations": _annotation(bbox=[4, 4, 8])}, "annotations[1].bbox",
     "expected [x, y, width, height] of 4 finite numbers, got [4, 4, 8]"),
    ("unknown-category-id", {"annotations": _annotation(category_id=2)}, "annotations[1].category_id",
     "expected one of the category ids [1, 3], got 2 (annotation id 11)"),
    ("unknown-image-id", {"annotations": _annotation(image_id=99)}, "annotations[1].image_id",
     "expected the id of an image, got 99 (annotation id 11)"),
    ("duplicate-image-id", {"images": [IMAGES[0], {**IMAGES[1], "id": 1}]}, "images[1].id",
     "duplicate image id 1"),
    ("empty-dataset", {"images": [], "annotations": []}, "images",
     "no_images 1); first: images: expected at least one image, the list is empty"),
    ("no-categories", {"categories": [], "annotations": []}, "categories", "expected at least one category"),
]


@pytest.mark.parametrize(("coco", "key", "what"), [pytest.param(*c[1:], id=c[0]) for c in CHECK_CASES])
def test_data_check_refuses(bench, coco, key, what):
    annotations, images = bench.coco(**coco)
    where = [str(annotations)] + ([key] if key else [])
    bench.check_refused("data", ["check", annotations, "--images", images], where=where, what=what)


def test_data_check_annotation_file_missing(bench):
    _, images = bench.coco()
    bench.check_refused("data", ["check", bench.root / "nope.json", "--images", images], where=["nope.json"],
                  what="annotation file not found")


def test_data_check_image_folder_missing(bench):
    annotations, _ = bench.coco()
    bench.check_refused("data", ["check", annotations, "--images", bench.root / "nowhere"],
                  where=[str(annotations), "--images"], what="image folder not found")


# ---- the same mistakes reach neither a training run nor a search ----

TRAIN_CASES = [
    ("broken-json", {"text": "{"}, None, "not valid JSON at line 1"),
    ("image-files-missing", {"files": {"a.png": None, "b.png": None}}, "images[0].file_name",
     "image file not found: {images}/a.png (and 1 more)"),
    ("box-with-negative-width", {"annotations": _annotation(bbox=[4, 4, -8, 12])}, "annotations[1].bbox",
     "width and height >= 0, got [4, 4, -8, 12] (annotation id 11)"),
    ("unknown-category-id", {"annotations": _annotation(category_id=7)}, "annotations[1].category_id",
     "got 7 (annotation id 11)"),
    ("unknown-image-id", {"annotations": _annotation(image_id=5)}, "annotations[1].image_id",
     "expected the id of an image, got 5 (annotation id 11)"),
    ("empty-dataset", {"images": [], "annotations": []}, "images", "expected at least one image"),
    ("categories-differ-from-val", {"categories": CATEGORIES + [{"id": 9, "name": "star"}]}, "categories",
     "val categories [1, 3] differ from train categories [1, 3, 9]"),
]


@pytest.mark.parametrize(("coco", "key", "what"), [pytest.param(*c[1:], id=c[0]) for c in TRAIN_CASES])
def test_train_refuses_bad_data_before_starting(bench, coco, key, what):
    experiment, annotations = bench.coco_experiment(**coco)
    named = bench.root / "val.json" if key == "categories" else annotations
    where = [str(named)] + ([key] if key else [])
    bench.check_refused("train", [experiment], where=where, what=what.format(images=bench.root / "set"))


SEARCH_CASES = [
    ("broken-json", {"text": "[1, 2"}, None, "not valid JSON at line 1"),
    ("box-with-negative-height", {"annotations": _annotation(bbox=[4, 4, 8, -12])}, "annotations[1].bbox",
     "width and height >= 0, got [4, 4, 8, -12] (annotation id 11)"),
    ("empty-dataset", {"images": [], "annotations": []}, "images", "expected at least one image"),
]


@pytest.mark.parametrize(("coco", "key", "what"), [pytest.param(*c[1:], id=c[0]) for c in SEARCH_CASES])
def test_search_refuses_bad_data_before_starting(bench, coco, key, what):
    experiment, annotations = bench.coco_experiment(**coco)
    space = bench.space(exp=experiment)
    where = [str(annotations)] + ([key] if key else [])
    bench.check_refused("search", [space, "--storage", bench.storage], where=where, what=what)


# ---- Pascal VOC and YOLO sets: the file (and object or line) named, nothing written ----

def _obj(name: str, xmin, ymin, xmax, ymax) -> str:
    return (f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


GOOD_XML = {"a": _obj("box", 3, 3, 12, 12), "b": _obj("disc", 5, 5, 12, 16) + _obj("box", 1, 1, 32, 32)}


def _voc(bench, name: str = "voc", xml: dict[str, str | None] | None = None, split: str = "a\nb\n",
         images: tuple[str, ...] = ("a.png", "b.png")) -> Path:
    """A VOC root of two 32 px images (split ``train``); ``xml``: a stem's objects replaced, its
    whole file written as given when it starts with '<annotation' or '!' (raw text), or left out (None)."""
    root = bench.root / name
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for image in images:
        Image.fromarray(np.full((32, 32, 3), 90, dtype=np.uint8)).save(root / "JPEGImages" / image)
    for stem, objects in {**GOOD_XML, **(xml or {})}.items():
        if objects is None:
            continue
        text = objects[1:] if objects.startswith("!") else (
            f"<annotation><filename>{stem}.png</filename><size><width>32</width><height>32</height></size>"
            f"{objects}</annotation>")
        (root / "Annotations" / f"{stem}.xml").write_text(text)
    (root / "ImageSets" / "Main" / "train.txt").write_text(split)
    return root


def _yolo(bench, name: str = "yolo", labels: dict[str, str | None] | None = None, data: dict | None = None,
          files: dict[str, str] | None = None) -> Path:
    """A YOLO set of two 32 px images (split ``val``), names [box, disc]; ``labels``: label files
    replaced (None: left out); ``data``: keys of data.yaml replaced (None: dropped); ``files``: more text files."""
    root = bench.root / name
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for stem in ("a", "b"):
        Image.fromarray(np.full((32, 32, 3), 90, dtype=np.uint8)).save(root / "images" / "val" / f"{stem}.png")
    for stem, text in {"a": "0 0.5 0.5 0.25 0.25\n", "b": "1 0.25 0.5 0.5 1.0\n", **(labels or {})}.items():
        if text is not None:
            (root / "labels" / "val" / f"{stem}.txt").write_text(text)
    raw = {"path": ".", "val": "images/val", "names": ["box", "disc"], **(data or {})}
    (root / "data.yaml").write_text(yaml.safe_dump({k: v for k, v in raw.items() if v is not None}))
    for rel, text in (files or {}).items():
        (root / rel).write_text(text)
    return root / "data.yaml"


# (id, what _voc gets, split, extra flags, where (relative to the VOC root), what was expected)
VOC_CASES = [
    ("malformed-xml", {"xml": {"b": "!<annotation><object><name>box</name></annotation>"}}, "train", [],
     ["Annotations/b.xml"], "not well-formed XML at line 1"),
    ("box-with-x2-before-x1", {"xml": {"a": _obj("box", 12, 3, 5, 12)}}, "train", [],
     ["Annotations/a.xml", "object[0].bndbox"], "expected a box with x2 > x1 and y2 > y1, got xmin 12 ymin 3 xmax 5"),
    ("box-outside-the-image", {"xml": {"b": _obj("disc", 5, 5, 12, 16) + _obj("box", 1, 1, 40, 32)}}, "train", [],
     ["Annotations/b.xml", "object[1].bndbox"], "expected a box inside the 32x32 image"),
    ("box-corner-not-a-number", {"xml": {"a": _obj("box", 3, "three", 12, 12)}}, "train", [],
     ["Annotations/a.xml", "object[0].bndbox.ymin"], "expected a number of pixels, got 'three'"),
    ("object-without-name", {"xml": {"a": _obj("", 3, 3, 12, 12)}}, "train", [],
     ["Annotations/a.xml", "object[0].name"], "expected the object's class <name>"),
    ("class-not-in-classes", {}, "train", ["--classes", "box"],
     ["Annotations/b.xml", "object[0].name"], "expected one of the classes ['box'], got 'disc'"),
    ("split-lists-an-image-without-xml", {"split": "a\n\nzz\n"}, "train", [],
     ["ImageSets/Main/train.txt", "line 3"], "image 'zz' listed in the split has no annotation file"),
    ("split-file-missing", {}, "trainval", [], ["ImageSets/Main/trainval.txt"],
     "split file not found (splits there: train)"),
    ("image-file-missing", {"images": ("a.png",)}, "train", [], ["Annotations/b.xml", "filename"],
     "expected one image file JPEGImages/b.png or JPEGImages/b.* (found none)"),
]


@pytest.mark.parametrize(("voc", "split", "flags", "where", "what"), [pytest.param(*c[1:], id=f"voc-{c[0]}") for c in VOC_CASES])
def test_data_check_and_convert_refuse_bad_voc(bench, voc, split, flags, where, what):
    root = _voc(bench, **voc)
    where = [str(root / part) if "/" in part else part for part in where]
    split_flags = ["--format", "voc", "--root", root, "--split", split, *flags]
    bench.check_refused("data", ["check", *split_flags], where=where, what=what)
    bench.check_refused("data", ["convert", *split_flags, "--out", bench.root / "out.json"], where=where, what=what)


# (id, what _yolo gets, split, where (relative to the YOLO root), what was expected)
YOLO_CASES = [
    ("class-index-out-of-range", {"labels": {"b": "1 0.25 0.5 0.5 1.0\n2 0.5 0.5 0.1 0.1\n"}}, "val",
     ["labels/val/b.txt", "line 2"], "expected a class index in 0..1 (names), got 2"),
    ("line-of-four-fields", {"labels": {"a": "0 0.5 0.5 0.25\n"}}, "val", ["labels/val/a.txt", "line 1"],
     "expected 5 fields 'class cx cy w h', got 4"),
    ("segment-line-of-nine-fields", {"labels": {"a": "0 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5\n"}}, "val",
     ["labels/val/a.txt", "line 1"], "expected 5 fields 'class cx cy w h', got 9"),
    ("field-not-a-number", {"labels": {"a": "0 0.5 half 0.25 0.25\n"}}, "val", ["labels/val/a.txt", "line 1"],
     "expected an integer class and 4 numbers"),
    ("box-outside-the-image", {"labels": {"a": "0 0.9 0.5 0.4 0.2\n"}}, "val", ["labels/val/a.txt", "line 1"],
     "expected a box inside the 32x32 image"),
    ("box-of-zero-width", {"labels": {"b": "1 0.25 0.5 0 1.0\n"}}, "val", ["labels/val/b.txt", "line 1"],
     "expected a box with x2 > x1 and y2 > y1"),
    ("names-entry-missing", {"data": {"names": {0: "box", 2: "disc"}}}, "val", ["data.yaml", "names[1]"],
     "expected a name for class 1 of 0..2 (missing)"),
    ("names-key-missing", {"data": {"names": None}}, "val", ["data.yaml", "names"],
     "expected the class names as a list or a mapping {0: name, ...}, got nothing (missing key)"),
    ("split-key-missing", {}, "test", ["data.yaml", "test"], "(missing key; splits there: val)"),
    ("split-folder-missing", {"data": {"val": "images/nowhere"}}, "val", ["data.yaml", "val"],
     "expected a folder of images or a .txt list, not found"),
    ("split-list-names-a-missing-image", {"data": {"val": "val.txt"}, "files": {"val.txt": "images/val/a.png\n"
                                                                                  "images/val/zz.png\n"}}, "val",
     ["val.txt", "line 2"], "image listed in the split not found"),
]


@pytest.mark.parametrize(("yolo", "split", "where", "what"), [pytest.param(*c[1:], id=f"yolo-{c[0]}") for c in YOLO_CASES])
def test_data_check_and_convert_refuse_bad_yolo(bench, yolo, split, where, what):
    data_yaml = _yolo(bench, **yolo)
    where = [str(data_yaml.parent / part) if "/" in part or part.endswith((".yaml", ".txt")) else part
             for part in where]
    split_flags = ["--format", "yolo", "--yaml", data_yaml, "--split", split]
    bench.check_refused("data", ["check", *split_flags], where=where, what=what)
    bench.check_refused("data", ["convert", *split_flags, "--out", bench.root / "out.json"], where=where, what=what)


def test_train_refuses_bad_voc_val_before_converting_anything(bench):
    """The good train split is converted in memory, but no cache file is written: the val split is bad."""
    root = _voc(bench, xml={"b": _obj("box", 1, 1, 32, 40)})
    data = {"train": {"format": "voc", "root": str(_voc(bench, "good")), "split": "train"},
            "val": {"format": "voc", "root": str(root), "split": "train"}, "image_size": 64}
    experiment = bench.experiment("voc_exp.yaml", data=data)
    bench.check_refused("train", [experiment], where=[str(root / "Annotations/b.xml"), "object[0].bndbox"],
                        what="expected a box inside the 32x32 image")


def test_search_refuses_bad_yolo_before_starting(bench):
    data_yaml = _yolo(bench, labels={"a": "0 0.5 0.5 0.25 0.25 1\n"})
    split = {"format": "yolo", "yaml": str(data_yaml), "split": "val"}
    experiment = bench.experiment("yolo_exp.yaml", data={"train": split, "val": split, "image_size": 64})
    bench.check_refused("search", [bench.space(exp=experiment), "--storage", bench.storage],
                        where=[str(data_yaml.parent / "labels/val/a.txt"), "line 1"], what="expected 5 fields")
