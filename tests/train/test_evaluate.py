"""COCO evaluation equals pycocotools' own result, including category ids with gaps."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from raykd.data import CocoDetection
from raykd.metric_names import BOX_METRICS as METRICS
from raykd.train.evaluate import coco_metrics, to_coco_results

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 12, "name": "fox"}]


def _gt_file(tmp_path):
    images = [{"id": 10, "file_name": "a.png", "width": 200, "height": 100},
              {"id": 20, "file_name": "b.png", "width": 120, "height": 160},
              {"id": 30, "file_name": "c.png", "width": 64, "height": 64}]
    anns = [
        {"id": 1, "image_id": 10, "category_id": 3, "bbox": [10, 10, 50, 40], "area": 2000, "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 12, "bbox": [120.5, 20.25, 70, 70], "area": 4900, "iscrowd": 0},
        {"id": 3, "image_id": 20, "category_id": 7, "bbox": [0, 0, 30, 20], "area": 600, "iscrowd": 0},
        {"id": 4, "image_id": 20, "category_id": 7, "bbox": [40, 60, 80, 100], "area": 8000, "iscrowd": 0},
        {"id": 5, "image_id": 20, "category_id": 3, "bbox": [60, 10, 40, 30], "area": 1200, "iscrowd": 1},
    ]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return path


# Hand-made detections in original pixels (xywh) with the file's category ids.
DETECTIONS = [
    (10, 3, [12, 11, 48, 41], 0.9), (10, 12, [118, 22, 72, 66], 0.8), (10, 7, [5, 5, 30, 30], 0.6),
    (20, 7, [1, 0, 29, 21], 0.95), (20, 7, [42, 58, 76, 104], 0.7), (20, 3, [60, 10, 40, 30], 0.5),
    (20, 12, [10, 100, 20, 20], 0.3), (30, 3, [1, 1, 10, 10], 0.2),
]


def _reference(gt_path, image_ids):
    gt = COCO(str(gt_path))
    dets = [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in DETECTIONS]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.imgIds = image_ids
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return dict(zip(METRICS, ev.stats[:6]))


def test_metrics_equal_pycocotools_with_category_gaps_and_resizing(tmp_path):
    gt_path = _gt_file(tmp_path)
    for name, size in (("a.png", (100, 200)), ("b.png", (160, 120)), ("c.png", (64, 64))):
        from PIL import Image

        Image.new("RGB", size[::-1]).save(tmp_path / name)
    dataset = CocoDetection(gt_path, tmp_path, image_size=96, train=False)
    assert dataset.cat_ids == [3, 7, 12] and dataset.num_classes == 4
    # What the model would output: xyxy in the resized input, contiguous labels.
    outputs, targets, sizes = [], [], []
    for index, image_id in enumerate(dataset.image_ids):
        image, target = dataset[index]
        in_h, in_w = image.shape[-2:]
        orig_h, orig_w = target["orig_size"].tolist()
        rows = [d for d in DETECTIONS if d[0] == image_id]
        boxes = torch.tensor([[x * in_w / orig_w, y * in_h / orig_h, (x + w) * in_w / orig_w, (y + h) * in_h / orig_h]
                              for _, _, (x, y, w, h), _ in rows], dtype=torch.float32).reshape(-1, 4)
        outputs.append({"boxes": boxes, "scores": torch.tensor([r[3] for r in rows]),
                        "labels": torch.tensor([dataset.cat_id_to_label[r[1]] for r in rows])})
        targets.append(target)
        sizes.append((in_h, in_w))
    results = to_coco_results(outputs, targets, sizes, dataset.label_to_cat_id)
    ours = coco_metrics(dataset.coco, results, dataset.image_ids)
    reference = _reference(gt_path, dataset.image_ids)
    for name in METRICS:
        assert ours[name] == pytest.approx(reference[name], abs=1e-6), name
    assert 0.2 < ours["bbox_mAP"] < 1.0  # a non-trivial score: the comparison means something


def test_subset_scores_only_its_images(tmp_path):
    gt_path = _gt_file(tmp_path)
    gt = COCO(str(gt_path))
    dets = [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in DETECTIONS if i == 10]
    only_a = coco_metrics(gt, dets, [10])
    assert only_a["bbox_mAP"] == pytest.approx(_reference_subset(gt_path, dets, [10]))
    assert coco_metrics(gt, dets, [10, 20])["bbox_mAP"] < only_a["bbox_mAP"]


def _reference_subset(gt_path, dets, ids):
    gt = COCO(str(gt_path))
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.imgIds = ids
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return ev.stats[0]


def test_no_detections_scores_zero_not_an_error(tmp_path):
    gt = COCO(str(_gt_file(tmp_path)))
    metrics = coco_metrics(gt, [], [10, 20, 30])
    assert metrics["bbox_mAP"] == 0.0 and set(metrics) == set(METRICS)
    assert np.isfinite(list(metrics.values())).all()
