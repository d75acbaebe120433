"""Reading and validating a COCO annotation file: every problem named by file and key.

:func:`read_coco` parses the JSON and walks ``images``, ``categories`` and ``annotations``,
collecting :class:`Problem` s instead of stopping at the first one, so the ``check`` command
can count them and the dataset can raise the first one as a :class:`UserError`.
:func:`prepare_boxes` turns the valid annotations into training targets: xyxy boxes clipped
to the image, crowd regions left out, degenerate boxes dropped and counted.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raykd.errors import UserError

MIN_BOX_SIZE = 1e-3
"""Boxes narrower or lower than this (pixels of the original image, after clipping) are degenerate."""

OUTSIDE_TOLERANCE = 1.0
"""Boxes may reach this many pixels past the image border before they count as outside."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in an annotation file that makes the set unusable."""

    kind: str  # e.g. "missing_key", "duplicate_image_id", "unknown_category_id"
    key: str  # where, e.g. "annotations[12].bbox"
    message: str  # what was expected


@dataclass(frozen=True)
class ImageEntry:
    index: int  # position in the file's "images" list
    id: int
    file_name: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class AnnotationEntry:
    # slots and the file's own number objects in `bbox`: a COCO-train-sized file has ~860k of these
    index: int  # position in the file's "annotations" list
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels
    iscrowd: bool


@dataclass
class CocoFile:
    """The valid entries of a COCO file (invalid ones are skipped and listed in ``problems``)."""

    path: Path
    data: dict[str, Any]  # the parsed JSON, with `area` and `iscrowd` filled in where missing
    digest: str  # sha256 of the file's bytes
    images: list[ImageEntry] = field(default_factory=list)
    categories: dict[int, str] = field(default_factory=dict)  # id -> name
    annotations: list[AnnotationEntry] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def raise_first_problem(self) -> None:
        """Raise the first problem as a :class:`UserError` naming the file and key."""
        if self.problems:
            n = len(self.problems) - 1
            more = f" (and {n} more problems; run `python -m raykd.data check`)" if n else ""
            raise UserError(self.problems[0].message + more, file=self.path, key=self.problems[0].key)


def read_coco(path: str | Path, *, masks: bool = False) -> CocoFile:
    """Parse and validate ``path``; raise :class:`UserError` only when nothing can be read.
    With ``masks`` (a Mask R-CNN trains on it) its problems include :func:`mask_problems`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError("annotation file not found", file=path) from None
    except OSError as err:
        raise UserError(f"cannot read the annotation file ({err.strerror})", file=path) from None
    coco = parse_coco(raw, path)
    del raw  # the parsed objects are several times its size: not both kept
    if masks:
        coco.problems.extend(mask_problems(coco))
    return coco


def parse_coco(raw: bytes, path: Path) -> CocoFile:
    """Parse and validate the bytes of a COCO file; ``path`` names it in problems. The caller
    should drop ``raw`` once this returns: only the parsed form is kept."""
    digest = hashlib.sha256(raw).hexdigest()
    data = _loads(raw, path)
    if not isinstance(data, dict):
        raise UserError("expected a JSON object with images, annotations and categories", file=path)
    coco = CocoFile(path=path, data=data, digest=digest)
    for key in ("images", "categories"):
        if key not in data:
            raise UserError("expected a list (missing key)", file=path, key=key)
        if not isinstance(data[key], list):
            raise UserError("expected a list", file=path, key=key)
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise UserError("expected a list", file=path, key="annotations")
    _read_categories(coco)
    declared = _read_images(coco)
    if not data["images"]:
        coco.problems.append(Problem("no_images", "images", "expected at least one image, the list is empty"))
    _read_annotations(coco, declared)
    return coco


def _loads(raw: bytes, path: Path) -> Any:
    """orjson (3-4x faster than json, and it builds no intermediate str); json for what orjson
    refuses and json accepts (NaN, Infinity: reported by the validation, not as bad JSON)."""
    import orjson

    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f" at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise UserError(f"expected COCO JSON, the file is not valid JSON{where}", file=path) from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _entries(coco: CocoFile, section: str, required: dict[str, str]):
    """Yield ``(index, key, entry)`` for the dict entries of ``section`` holding every required key."""
    for i, entry in enumerate(coco.data[section]):
        key = f"{section}[{i}]"
        if not isinstance(entry, dict):
            coco.problems.append(Problem("malformed", key, "expected an object"))
            continue
        missing = [name for name in required if name not in entry]
        for name in missing:
            coco.problems.append(Problem("missing_key", f"{key}.{name}", f"expected {required[name]} (missing key)"))
        if not missing:
            yield i, key, entry


def _read_categories(coco: CocoFile) -> None:
    required = {"id": "an integer category id", "name": "a category name"}
    seen: set[int] = set()
    for _, key, entry in _entries(coco, "categories", required):
        if _new_id(coco, key, entry["id"], seen, "duplicate_category_id"):
            coco.categories[entry["id"]] = str(entry["name"])
    if not coco.categories and not coco.problems:
        coco.problems.append(Problem("no_categories", "categories", "expected at least one category"))


def _new_id(coco: CocoFile, key: str, value: Any, seen: set[int], kind: str) -> bool:
    """Record an entry's id; False (and a problem) when it is not an integer or already seen."""
    if not _is_int(value):
        coco.problems.append(Problem("malformed", f"{key}.id", f"expected an integer, got {value!r}"))
        return False
    if value in seen:
        what = kind.removeprefix("duplicate_").replace("_", " ")
        coco.problems.append(Problem(kind, f"{key}.id", f"duplicate {what} {value}"))
        return False
    seen.add(value)
    return True


def _read_images(coco: CocoFile) -> set[int]:
    """Read ``images``; returns every image id declared, valid entry or not."""
    required = {
        "id": "an integer image id",
        "file_name": "the image's path relative to the image folder",
        "width": "the image width in pixels",
        "height": "the image height in pixels",
    }
    declared: set[int] = set()
    for i, key, entry in _entries(coco, "images", required):
        if not _new_id(coco, key, entry["id"], declared, "duplicate_image_id"):
            continue
        bad = []
        if not isinstance(entry["file_name"], str) or not entry["file_name"]:
            message = f"expected a relative path, got {entry['file_name']!r}"
            bad.append(Problem("malformed", f"{key}.file_name", message))
        for name in ("width", "height"):
            value = entry[name]
            if not (_is_number(value) and value >= 1 and value == int(value)):
                bad.append(Problem("malformed", f"{key}.{name}", f"expected a positive integer, got {value!r}"))
        coco.problems.extend(bad)
        if not bad:
            width, height = int(entry["width"]), int(entry["height"])
            coco.images.append(ImageEntry(i, entry["id"], entry["file_name"], width, height))
    return declared


def _read_annotations(coco: CocoFile, declared_images: set[int]) -> None:
    required = {
        "id": "an integer annotation id",
        "image_id": "the id of an image",
        "category_id": "the id of a category",
        "bbox": "[x, y, width, height]",
    }
    valid_images = {image.id for image in coco.images}
    seen: set[int] = set()
    for i, key, entry in _entries(coco, "annotations", required):
        if not _new_id(coco, key, entry["id"], seen, "duplicate_annotation_id"):
            continue
        bbox = entry["bbox"]
        which = f" (annotation id {entry['id']})"
        if entry["image_id"] not in declared_images:
            message = f"expected the id of an image, got {entry['image_id']!r}{which}"
            coco.problems.append(Problem("unknown_image_id", f"{key}.image_id", message))
        elif entry["category_id"] not in coco.categories:
            known = sorted(coco.categories)
            coco.problems.append(
                Problem(
                    "unknown_category_id",
                    f"{key}.category_id",
                    f"expected one of the category ids {known[:20]}{'...' if len(known) > 20 else ''}, "
                    f"got {entry['category_id']!r}{which}",
                )
            )
        elif not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(_is_number(v) and math.isfinite(v) for v in bbox)
        ):
            coco.problems.append(
                Problem("malformed", f"{key}.bbox", f"expected [x, y, width, height] of 4 finite numbers, got {bbox!r}")
            )
        elif bbox[2] < 0 or bbox[3] < 0:  # zero-size boxes are degenerate (dropped), negative ones a mistake
            message = f"expected [x, y, width, height] with width and height >= 0, got {bbox!r}{which}"
            coco.problems.append(Problem("negative_box_size", f"{key}.bbox", message))
        elif entry.get("iscrowd", 0) not in (0, 1):
            coco.problems.append(Problem("malformed", f"{key}.iscrowd", f"expected 0 or 1, got {entry['iscrowd']!r}"))
        elif "area" in entry and not (_is_number(entry["area"]) and math.isfinite(entry["area"])):
            message = f"expected the area in square pixels, a finite number, got {entry['area']!r}{which}"
            coco.problems.append(Problem("malformed", f"{key}.area", message))
        elif entry["image_id"] in valid_images:  # else its image entry is broken, a problem already
            # COCOeval reads `area` and `iscrowd` from every ground-truth annotation.
            entry.setdefault("iscrowd", 0)
            if "area" not in entry:
                entry["area"] = max(float(bbox[2]), 0.0) * max(float(bbox[3]), 0.0)
            crowd = entry["iscrowd"] == 1
            coco.annotations.append(
                AnnotationEntry(i, entry["id"], entry["image_id"], entry["category_id"], tuple(bbox), crowd)
            )


@dataclass
class Targets:
    """Training targets of every image, in one flat array (cheap to share with loader workers).

    Image ``j``'s boxes are ``boxes[offsets[j]:offsets[j + 1]]``.
    """

    boxes: np.ndarray  # float32 [A, 4], xyxy in pixels of the original image, clipped to it
    category_ids: np.ndarray  # int64 [A]
    offsets: np.ndarray  # int64 [num_images + 1]
    degenerate: list[int]  # indices (in the file) of dropped degenerate annotations
    outside: list[int]  # indices of annotations reaching > OUTSIDE_TOLERANCE px past the border (clipped, kept)
    crowd: int  # crowd regions (kept for evaluation, not targets)
    indices: np.ndarray  # int64 [A]: each box's position in the file's "annotations" list


def prepare_boxes(coco: CocoFile) -> Targets:
    """xyxy targets per image in ``coco.images`` order: crowd regions left out, boxes clipped,
    degenerate ones (width or height <= MIN_BOX_SIZE after clipping) dropped."""
    anns = coco.annotations
    n = len(anns)
    image_ids = np.fromiter((i.id for i in coco.images), dtype=np.int64, count=len(coco.images))
    sizes = np.asarray([(i.width, i.height) for i in coco.images], dtype=np.float64).reshape(-1, 2)
    order = np.argsort(image_ids, kind="stable")
    bbox = np.asarray([a.bbox for a in anns], dtype=np.float64).reshape(-1, 4)
    index = np.fromiter((a.index for a in anns), dtype=np.int64, count=n)
    category = np.fromiter((a.category_id for a in anns), dtype=np.int64, count=n)
    crowd = np.fromiter((a.iscrowd for a in anns), dtype=bool, count=n)
    # row of each annotation's image in coco.images (every annotation's image is valid)
    pos = order[np.searchsorted(image_ids, np.fromiter((a.image_id for a in anns), dtype=np.int64, count=n),
                                sorter=order)] if n else np.zeros(0, dtype=np.int64)
    width, height = sizes[pos, 0], sizes[pos, 1]
    x, y, w, h = bbox.T
    x1, y1 = np.maximum(x, 0.0), np.maximum(y, 0.0)
    x2, y2 = np.minimum(x + w, width), np.minimum(y + h, height)
    degenerate = ~crowd & ((w <= MIN_BOX_SIZE) | (h <= MIN_BOX_SIZE) | (x2 - x1 <= MIN_BOX_SIZE)
                           | (y2 - y1 <= MIN_BOX_SIZE))
    keep = ~crowd & ~degenerate
    tol = OUTSIDE_TOLERANCE
    outside = keep & ((x < -tol) | (y < -tol) | (x + w > width + tol) | (y + h > height + tol))
    kept = np.flatnonzero(keep)
    kept = kept[np.argsort(pos[kept], kind="stable")]  # image by image, file order within an image
    counts = np.bincount(pos[kept], minlength=len(coco.images))
    return Targets(
        boxes=np.stack([x1, y1, x2, y2], axis=1)[kept].astype(np.float32).reshape(-1, 4),
        category_ids=category[kept],
        offsets=np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(counts)]).astype(np.int64),
        degenerate=index[degenerate].tolist(),
        outside=index[outside].tolist(),
        crowd=int(crowd.sum()),
        indices=index[kept],
    )


def mask_problems(coco: CocoFile) -> list[Problem]:
    """What stops the valid annotations of ``coco`` from giving instance masks (Mask R-CNN
    training and segm evaluation): every one needs a ``segmentation``, polygons
    (``[[x1, y1, x2, y2, x3, y3, ...], ...]``, pixels) or an RLE (``{"size": [height, width],
    "counts": ...}``, compressed string or uncompressed list) of its image's size."""
    size = {image.id: (image.height, image.width) for image in coco.images}
    problems = []
    for ann in coco.annotations:
        key = f"annotations[{ann.index}].segmentation"
        entry = coco.data["annotations"][ann.index]
        if "segmentation" not in entry:
            problems.append(Problem("missing_key", key, "expected an instance mask, polygons or RLE, for a mask "
                                                        f"arch (missing key; annotation id {ann.id})"))
            continue
        message = _segmentation_problem(entry["segmentation"], size[ann.image_id])
        if message:
            problems.append(Problem("malformed", key, f"{message} (annotation id {ann.id})"))
    return problems


def _segmentation_problem(seg: Any, size: tuple[int, int]) -> str | None:
    if isinstance(seg, list):
        if not seg:
            return "expected at least one polygon, got []"
        for polygon in seg:
            if not (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
                    and all(_is_number(v) and math.isfinite(v) for v in polygon)):
                return f"expected polygons [x1, y1, x2, y2, x3, y3, ...] of at least 3 points, got {polygon!r}"[:200]
        return None
    if isinstance(seg, dict):
        counts = seg.get("counts")
        if not (isinstance(counts, str) or (isinstance(counts, list) and all(_is_int(v) and v >= 0 for v in counts))):
            return "expected an RLE whose counts are a string or a list of non-negative integers"
        if seg.get("size") != list(size):
            return f"expected an RLE of the image's size [height, width] = {list(size)}, got {seg.get('size')!r}"
        if isinstance(counts, list) and sum(counts) != size[0] * size[1]:
            return f"expected RLE counts summing to height x width = {size[0] * size[1]}, got {sum(counts)}"
        return None
    return f"expected polygons (a list) or an RLE (a mapping), got {type(seg).__name__}"
