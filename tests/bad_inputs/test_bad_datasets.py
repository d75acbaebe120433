"""Bad COCO sets: ``python -m raykd.data check`` refuses them, and ``raykd.train`` / ``raykd.search``
refuse them before anything starts (the annotation file is named, with the key of the first problem)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from bad_input_tools import ANNOTATIONS, CATEGORIES, IMAGES


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
