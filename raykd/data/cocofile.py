"""Reading and validating a COCO annotation file: every problem named by file and key.

:func:`read_coco` parses the JSON and walks ``images``, ``categories`` and ``annotations``,
collecting :class:`Problem` s instead of stopping at the first one, so the ``check`` command
can count them and the dataset can raise the first one as a :class:`UserError`.
:func:`prepare_boxes` turns the valid annotations into training targets: xyxy boxes clipped
to the image, crowd regions left out, degenerate boxes dropped and counted.
"""

from __future__ import annotations

import hashlib
import itertools
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


@dataclass(frozen=True)
class AnnotationColumns:
    """The valid annotations of a file as arrays ``[M]``, in file order."""

    index: np.ndarray  # int64: position in the file's "annotations" list
    id: np.ndarray  # int64
    image_id: np.ndarray  # int64
    category_id: np.ndarray  # int64
    bbox: np.ndarray  # float64 [M, 4]: x, y, w, h in pixels
    area: np.ndarray  # float64: the file's `area`, else w * h (COCOeval reads it)
    iscrowd: np.ndarray  # bool (the file's `iscrowd`, else 0)

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class CocoFile:
    """The valid entries of a COCO file (invalid ones are skipped and listed in ``problems``)."""

    path: Path
    data: dict[str, Any]  # the parsed JSON (without segmentations unless read with masks)
    digest: str  # sha256 of the file's bytes
    images: list[ImageEntry] = field(default_factory=list)
    categories: dict[int, str] = field(default_factory=dict)  # id -> name
    annotations: AnnotationColumns | None = None
    problems: list[Problem] = field(default_factory=list)

    def raise_first_problem(self) -> None:
        """Raise the first problem as a :class:`UserError` naming the file and key."""
        if self.problems:
            n = len(self.problems) - 1
            more = f" (and {n} more problems; run `python -m raykd.data check`)" if n else ""
            raise UserError(self.problems[0].message + more, file=self.path, key=self.problems[0].key)


def read_coco(path: str | Path, *, masks: bool = False) -> CocoFile:
    """Parse and validate ``path``; raise :class:`UserError` only when nothing can be read.
    With ``masks`` (a Mask R-CNN trains on it) its problems include :func:`mask_problems`;
    without, segmentations are dropped while the file is parsed (most of a COCO file's memory)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError("annotation file not found", file=path) from None
    except OSError as err:
        raise UserError(f"cannot read the annotation file ({err.strerror})", file=path) from None
    digest = hashlib.sha256(raw).hexdigest()
    text = _decode(raw, path)
    del raw  # not both kept: the parsed objects come on top
    coco = _validate(_loads(text, path, keep_segmentations=masks), path, digest)
    if masks:
        coco.problems.extend(mask_problems(coco))
    return coco


def parse_coco(raw: bytes, path: Path) -> CocoFile:
    """Parse and validate the bytes of a COCO file (segmentations kept); ``path`` names it in problems."""
    return _validate(_loads(_decode(raw, path), path, keep_segmentations=True), path, hashlib.sha256(raw).hexdigest())


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError("expected COCO JSON, the file is not valid UTF-8 text", file=path) from None


def _validate(data: Any, path: Path, digest: str) -> CocoFile:
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
    coco.annotations = None if coco.problems else _fast_annotations(coco)
    if coco.annotations is None:
        _read_annotations(coco, declared)
    return coco


_SEGMENTATION = '"segmentation"'


def _without_segmentations(text: str) -> str | None:
    """``text`` with every annotation's ``"segmentation"`` value replaced by ``null``, found by
    string search (polygons are lists of numbers, ending at the first ``]]``; an RLE is an object
    without braces inside, ending at the first ``}``); None when a value has another shape. A key
    inside a JSON string cannot match: its quotes would be escaped."""
    parts, pos, cursor = [], 0, 0  # copied up to pos; searching from cursor
    while (i := text.find(_SEGMENTATION, cursor)) >= 0:
        j = i + len(_SEGMENTATION)
        while j < len(text) and text[j] in " \t\r\n":
            j += 1
        if j >= len(text) or text[j] != ":":  # a string value "segmentation", not the key
            cursor = j
            continue
        j += 1
        while j < len(text) and text[j] in " \t\r\n":
            j += 1
        if text.startswith("[]", j):
            end = j + 2
        elif text.startswith("[", j):
            end = text.find("]]", j) + 2
        elif text.startswith("{", j):
            end = text.find("}", j) + 1
        else:
            return None
        if end <= j + 1 or "{" in text[j + 1:end - 1] or (text[j] == "[" and "}" in text[j:end]):
            return None
        parts += [text[pos:j], "null"]
        pos = cursor = end
    parts.append(text[pos:])
    return "".join(parts)


def _drop_segmentation(entry: dict) -> dict:
    entry.pop("segmentation", None)
    return entry


def _loads(text: str, path: Path, *, keep_segmentations: bool) -> Any:
    """The stdlib parser: it builds objects while it scans (orjson, through yyjson, first builds a
    document as large again). Without ``keep_segmentations`` the segmentations (most of a COCO
    file) are cut from the text before parsing, or, where that cannot be done safely, dropped
    as each annotation is read: a COCO-train-sized file peaks at about half of pycocotools'
    memory and parses several times faster. An error's line and column are the file's."""
    if not keep_segmentations:
        stripped = _without_segmentations(text)
        if stripped is not None:
            try:
                return json.loads(stripped)
            except json.JSONDecodeError:
                pass  # reported below against the file's own text
    try:
        return json.loads(text, object_hook=None if keep_segmentations else _drop_segmentation)
    except json.JSONDecodeError as err:
        raise UserError(f"expected COCO JSON, the file is not valid JSON at line {err.lineno} column {err.colno}",
                        file=path) from None


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
    rows: list[tuple] = []
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
            area = entry.get("area", max(float(bbox[2]), 0.0) * max(float(bbox[3]), 0.0))
            rows.append((i, entry["id"], entry["image_id"], entry["category_id"], bbox, area,
                         entry.get("iscrowd", 0) == 1))
    index, ids, image_ids, category_ids, bboxes, areas, crowd = zip(*rows) if rows else ((),) * 7
    coco.annotations = _columns(index, ids, image_ids, category_ids, bboxes, areas, crowd)


def _columns(index, ids, image_ids, category_ids, bboxes, areas, crowd) -> AnnotationColumns:
    n = len(index)
    return AnnotationColumns(
        index=np.asarray(index, dtype=np.int64).reshape(n), id=np.asarray(ids, dtype=np.int64).reshape(n),
        image_id=np.asarray(image_ids, dtype=np.int64).reshape(n),
        category_id=np.asarray(category_ids, dtype=np.int64).reshape(n),
        bbox=np.asarray(bboxes, dtype=np.float64).reshape(n, 4), area=np.asarray(areas, dtype=np.float64).reshape(n),
        iscrowd=np.asarray(crowd, dtype=bool).reshape(n))


def _fast_annotations(coco: CocoFile) -> AnnotationColumns | None:
    """The annotations as columns when every one of them is valid, checked column by column
    (a COCO-train-sized file in about a second); None as soon as anything is off, and
    :func:`_read_annotations` then walks them one by one to name each problem."""
    anns = coco.data["annotations"]
    try:
        ids = [a["id"] for a in anns]
        image_ids = [a["image_id"] for a in anns]
        category_ids = [a["category_id"] for a in anns]
        bboxes = [a["bbox"] for a in anns]
        crowd = [a.get("iscrowd", 0) for a in anns]
        areas = [a.get("area") for a in anns]
    except (TypeError, KeyError, AttributeError):  # not an object, or a key missing
        return None
    int_types = set(map(type, ids)) | set(map(type, image_ids)) | set(map(type, category_ids))
    if not int_types <= {int} or len(set(ids)) != len(ids):
        return None
    valid_images = {image.id for image in coco.images}
    if not set(image_ids) <= valid_images or not set(category_ids) <= coco.categories.keys():
        return None
    if set(map(type, bboxes)) - {list} or any(len(b) != 4 for b in bboxes):
        return None
    flat = list(itertools.chain.from_iterable(bboxes))
    if set(map(type, flat)) - {int, float} or not set(crowd) <= {0, 1}:
        return None
    box = np.asarray(flat, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(box).all() or (box[:, 2:] < 0).any():
        return None
    present = [a for a in areas if a is not None]
    if set(map(type, present)) - {int, float} or not np.isfinite(np.asarray(present, dtype=np.float64)).all():
        return None
    area = np.asarray([np.nan if a is None else a for a in areas], dtype=np.float64)
    missing = np.isnan(area)
    area[missing] = np.maximum(box[missing, 2], 0.0) * np.maximum(box[missing, 3], 0.0)
    n = len(anns)
    return AnnotationColumns(index=np.arange(n, dtype=np.int64), id=np.asarray(ids, dtype=np.int64),
                             image_id=np.asarray(image_ids, dtype=np.int64),
                             category_id=np.asarray(category_ids, dtype=np.int64), bbox=box, area=area,
                             iscrowd=np.asarray(crowd, dtype=bool))


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
    rows: np.ndarray  # int64 [A]: each box's row in ``CocoFile.annotations``


def prepare_boxes(coco: CocoFile) -> Targets:
    """xyxy targets per image in ``coco.images`` order: crowd regions left out, boxes clipped,
    degenerate ones (width or height <= MIN_BOX_SIZE after clipping) dropped."""
    anns = coco.annotations
    image_ids = np.fromiter((i.id for i in coco.images), dtype=np.int64, count=len(coco.images))
    sizes = np.asarray([(i.width, i.height) for i in coco.images], dtype=np.float64).reshape(-1, 2)
    order = np.argsort(image_ids, kind="stable")
    # row of each annotation's image in coco.images (every annotation's image is valid)
    pos = order[np.searchsorted(image_ids, anns.image_id, sorter=order)] if len(anns) else anns.index
    width, height = sizes[pos, 0], sizes[pos, 1]
    crowd = anns.iscrowd
    x, y, w, h = anns.bbox.T
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
        category_ids=anns.category_id[kept],
        offsets=np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(counts)]).astype(np.int64),
        degenerate=anns.index[degenerate].tolist(),
        outside=anns.index[outside].tolist(),
        crowd=int(crowd.sum()),
        indices=anns.index[kept],
        rows=kept,
    )


def mask_problems(coco: CocoFile) -> list[Problem]:
    """What stops the valid annotations of ``coco`` from giving instance masks (Mask R-CNN
    training and segm evaluation): every one needs a ``segmentation``, polygons
    (``[[x1, y1, x2, y2, x3, y3, ...], ...]``, pixels) or an RLE (``{"size": [height, width],
    "counts": ...}``, compressed string or uncompressed list) of its image's size."""
    size = {image.id: (image.height, image.width) for image in coco.images}
    problems = []
    anns = coco.annotations
    for index, ann_id, image_id in zip(anns.index.tolist(), anns.id.tolist(), anns.image_id.tolist()):
        key = f"annotations[{index}].segmentation"
        entry = coco.data["annotations"][index]
        if "segmentation" not in entry:
            problems.append(Problem("missing_key", key, "expected an instance mask, polygons or RLE, for a mask "
                                                        f"arch (missing key; annotation id {ann_id})"))
            continue
        message = _segmentation_problem(entry["segmentation"], size[image_id])
        if message:
            problems.append(Problem("malformed", key, f"{message} (annotation id {ann_id})"))
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
