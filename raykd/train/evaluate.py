"""COCO box evaluation through pycocotools' COCOeval.

Predictions are mapped back to the original image size and to the file's category ids, so
the numbers are the ones pycocotools reports on the annotation file itself.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor, nn

METRICS = ("bbox_mAP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")


def to_coco_results(
    outputs: list[dict[str, Tensor]],
    targets: list[dict[str, Tensor]],
    input_sizes: list[tuple[int, int]],
    label_to_cat_id,
) -> list[dict]:
    """Detections in the model's input pixels -> COCO result dicts (xywh, original pixels).

    outputs: per image ``boxes [D, 4]`` xyxy, ``scores [D]``, ``labels [D]`` (the model's);
    label_to_cat_id: model label -> the file's category id, or None to drop the detection;
    targets: carry ``image_id`` and ``orig_size`` (H, W); input_sizes: (H, W) fed to the model.
    """
    results = []
    for out, tgt, (in_h, in_w) in zip(outputs, targets, input_sizes):
        if out["boxes"].numel() == 0:
            continue
        orig_h, orig_w = (int(v) for v in tgt["orig_size"])
        scale = torch.tensor([orig_w / in_w, orig_h / in_h] * 2)
        boxes = out["boxes"].detach().float().cpu() * scale
        boxes[:, 2:] -= boxes[:, :2]
        image_id = int(tgt["image_id"])
        for box, score, label in zip(boxes.tolist(), out["scores"].tolist(), out["labels"].tolist()):
            if label == 0:  # one-stage heads also score the (never positive) background channel
                continue
            category_id = label_to_cat_id(int(label))
            if category_id is None:  # a pretrained head's class the data set does not have
                continue
            results.append({"image_id": image_id, "category_id": category_id, "bbox": box, "score": float(score)})
    return results


def coco_metrics(coco_gt: COCO, results: list[dict], image_ids: Iterable[int]) -> dict[str, float]:
    """bbox_mAP, AP50, AP75, AP_S, AP_M, AP_L over ``image_ids`` (pycocotools; -1 = no such objects)."""
    image_ids = sorted(set(int(i) for i in image_ids))
    if not results:
        has_gt = bool(coco_gt.getAnnIds(imgIds=image_ids, iscrowd=False))
        return {name: (0.0 if has_gt else -1.0) for name in METRICS}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(METRICS, np.asarray(evaluator.stats[:6]))}


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, label_to_cat_id, *, amp: bool = False) -> list[dict]:
    """Run ``model`` in eval mode over ``loader``; return COCO result dicts."""
    was_training = model.training
    model.eval()
    results: list[dict] = []
    for images, targets in loader:
        images = [img.to(device, non_blocking=True) for img in images]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            outputs = model(images)
        sizes = [tuple(img.shape[-2:]) for img in images]
        results.extend(to_coco_results(outputs, targets, sizes, label_to_cat_id))
    model.train(was_training)
    return results
