"""COCO detection metrics through one of two evaluators with the same numbers.

``pycocotools`` is the reference; ``faster_coco_eval`` (the same algorithm in C++, about 6x
faster on a val2017-sized set, ``benchmarks/coco_scale.py``) gives the same 12 ``COCOeval.stats``
to float precision (``tests/data/test_cocoeval.py`` checks it on crowd regions, empty images
and categories without detections). No torch here: ``raykd.data evaluate`` scores a
detections file with it, and the trainer (:mod:`raykd.train.evaluate`) scores its epochs.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

from raykd.config import default_evaluator
from raykd.metric_names import BOX_METRICS, BOX_RECALLS, SEGM_METRICS, SEGM_RECALLS

Evaluator = Literal["faster_coco_eval", "pycocotools"]
EVALUATORS: tuple[str, ...] = ("faster_coco_eval", "pycocotools")
"""``train.evaluator``'s values; :func:`~raykd.config.default_evaluator` picks the default."""
IouType = Literal["bbox", "segm"]
IOU_TYPES: tuple[str, ...] = ("bbox", "segm")
STAT_NAMES = {"bbox": BOX_METRICS + BOX_RECALLS, "segm": SEGM_METRICS + SEGM_RECALLS}
"""The names of ``COCOeval.stats[0:12]`` per IoU type: the six APs the tables record, then the six ARs."""


__all__ = ["EVALUATORS", "STAT_NAMES", "coco_metrics", "coco_stats", "default_evaluator", "ground_truth"]


def ground_truth(dataset: dict[str, Any], evaluator: Evaluator) -> Any:
    """The evaluator's ``COCO`` object over an already parsed COCO dict (images, annotations with
    ``area`` and ``iscrowd``, categories); the dict is used as it is, not copied."""
    if evaluator == "faster_coco_eval":
        from faster_coco_eval import COCO
    else:
        from pycocotools.coco import COCO
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_stats(gt: Any, results: list[dict], image_ids: Iterable[int], iou_type: IouType = "bbox",
               evaluator: Evaluator = "pycocotools") -> np.ndarray:
    """``COCOeval.stats`` (float64 ``[12]``: AP@[.5:.95], AP50, AP75, AP small/medium/large, AR@1,
    AR@10, AR@100, AR small/medium/large; -1 where the ground truth has no such objects) of
    ``results`` (COCO result dicts: ``image_id``, ``category_id``, ``score`` and ``bbox`` xywh in
    pixels, or ``segmentation`` RLE for ``segm``) over ``image_ids``. ``gt``: from
    :func:`ground_truth` with the same evaluator. No results: AP 0 where there are objects."""
    image_ids = sorted({int(i) for i in image_ids})
    if iou_type == "segm":
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r]
    else:
        results = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    if not results:
        has_gt = bool(gt.getAnnIds(imgIds=image_ids, iscrowd=False))
        return np.full(12, 0.0 if has_gt else -1.0)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        if evaluator == "faster_coco_eval":
            from faster_coco_eval import COCOeval_faster

            cocoeval = COCOeval_faster(gt, dt, iouType=iou_type, print_function=lambda *a, **k: None)
        else:
            from pycocotools.cocoeval import COCOeval

            cocoeval = COCOeval(gt, dt, iouType=iou_type)
        cocoeval.params.imgIds = image_ids
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    return np.asarray(cocoeval.stats[:12], dtype=np.float64)


def coco_metrics(gt: Any, results: list[dict], image_ids: Iterable[int], iou_type: IouType = "bbox",
                 evaluator: Evaluator = "pycocotools", *, recalls: bool = False) -> dict[str, float]:
    """:func:`coco_stats` by name: ``bbox_mAP, AP50, AP75, AP_S, AP_M, AP_L`` (``segm_*`` for
    masks; :mod:`raykd.metric_names`), with ``recalls`` also the six ARs."""
    stats = coco_stats(gt, results, image_ids, iou_type, evaluator)
    names = STAT_NAMES[iou_type][: 12 if recalls else 6]
    return {name: float(v) for name, v in zip(names, stats)}
