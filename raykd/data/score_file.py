"""Scoring a COCO detections file against an annotation file (``raykd.data evaluate``), with the
evaluator raykd trains with (:mod:`raykd.data.cocoeval`); every mistake in the detections is
one line naming the file and the entry."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from raykd.data.annindex import load_index
from raykd.data.cocoeval import Evaluator, IouType, coco_metrics, ground_truth
from raykd.errors import UserError


def read_detections(path: Path, image_ids: set[int], category_ids: set[int], iou_type: IouType) -> list[dict]:
    """The detections in ``path`` (a JSON list of ``{image_id, category_id, score, bbox}``; for
    ``segm`` a ``segmentation`` RLE or polygons instead of, or beside, ``bbox``), checked against
    the ground truth's image and category ids. Raises :class:`UserError` naming the first bad entry."""
    import orjson

    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise UserError("detections file not found", file=path, key="--detections") from None
    except OSError as err:
        raise UserError(f"cannot read the detections file ({err.strerror})", file=path, key="--detections") from None
    except orjson.JSONDecodeError as err:
        raise UserError(f"expected a JSON list of detections, the file is not valid JSON ({err})", file=path) from None
    if isinstance(data, dict) and "annotations" in data:
        raise UserError("expected a list of detections (COCO results format), got a COCO annotation file", file=path)
    if not isinstance(data, list):
        raise UserError(f"expected a list of detections (COCO results format), got a JSON {type(data).__name__}",
                        file=path)
    for i, det in enumerate(data):
        problem = _problem(det, image_ids, category_ids, iou_type)
        if problem:
            key, message = problem
            raise UserError(message, file=path, key=f"[{i}]{key}")
    return data


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _problem(det: Any, image_ids: set[int], category_ids: set[int], iou_type: IouType) -> tuple[str, str] | None:
    if not isinstance(det, dict):
        return "", "expected an object {image_id, category_id, score, bbox}"
    needed = ("image_id", "category_id", "score") + (("bbox",) if iou_type == "bbox" else ("segmentation",))
    for name in needed:
        if name not in det:
            return f".{name}", "expected a value (missing key)"
    if not _int(det["image_id"]) or det["image_id"] not in image_ids:
        return ".image_id", f"expected the id of an image in the annotation file, got {det['image_id']!r}"
    if not _int(det["category_id"]) or det["category_id"] not in category_ids:
        return ".category_id", f"expected one of the category ids {sorted(category_ids)[:20]}, got {det['category_id']!r}"
    if not _finite(det["score"]):
        return ".score", f"expected a finite number, got {det['score']!r}"
    if "bbox" in det:
        bbox = det["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite(v) for v in bbox) and min(bbox[2:]) >= 0):
            return ".bbox", f"expected [x, y, width, height] of 4 finite numbers, width and height >= 0, got {bbox!r}"
    if iou_type == "segm":
        seg = det["segmentation"]
        if not (isinstance(seg, dict) and isinstance(seg.get("counts"), (str, list)) and isinstance(seg.get("size"), list)):
            return ".segmentation", "expected an RLE {size: [height, width], counts}"
    return None


def evaluate_file(annotations: Path, detections: Path, iou_type: IouType, evaluator: Evaluator) -> dict[str, float]:
    """The 12 COCO metrics (the tables' six APs, then six ARs; :data:`~raykd.data.cocoeval.STAT_NAMES`)
    of ``detections`` on every image of ``annotations``."""
    index = load_index(annotations, None, masks=iou_type == "segm")
    image_ids = set(index.arrays["image_ids"].tolist())
    dets = read_detections(detections, image_ids, set(index.categories), iou_type)
    gt = ground_truth(index.coco_dataset(segmentations=iou_type == "segm"), evaluator)
    return coco_metrics(gt, dets, sorted(image_ids), iou_type, evaluator, recalls=True)
