"""COCO box (and, for Mask R-CNN, instance mask) evaluation through pycocotools' COCOeval.

Predictions are mapped back to the original image size and to the file's category ids, so
the numbers are the ones pycocotools reports on the annotation file itself.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor, nn

from raykd.data.transforms import device_image
from raykd.metric_names import BOX_METRICS, SEGM_METRICS
from raykd.models.precision import autocast_parts, conv_parts

METRICS = BOX_METRICS
MASK_THRESHOLD = 0.5
"""A predicted mask pixel is in the instance when its probability is above this (torchvision's,
detectron2's and mmdet's choice)."""
_IOU_METRICS = {"bbox": BOX_METRICS, "segm": SEGM_METRICS}


def to_coco_results(
    outputs: list[dict[str, Tensor]],
    targets: list[dict[str, Tensor]],
    input_sizes: list[tuple[int, int]],
    label_to_cat_id,
) -> list[dict]:
    """Detections in the model's input pixels -> COCO result dicts (xywh, original pixels).

    outputs: per image ``boxes [D, 4]`` xyxy, ``scores [D]``, ``labels [D]`` (the model's), and
    for Mask R-CNN ``masks [D, 1, H, W]``, probabilities pasted into the input image: they are
    resized (bilinear) to the original size, thresholded at :data:`MASK_THRESHOLD` and added as
    a compressed RLE ``segmentation``;
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
        keep, kept_ids = [], []
        for i, label in enumerate(out["labels"].tolist()):
            if label == 0:  # one-stage heads also score the (never positive) background channel
                continue
            category_id = label_to_cat_id(int(label))
            if category_id is None:  # a pretrained head's class the data set does not have
                continue
            keep.append(i)
            kept_ids.append(category_id)
        masks = _rle_masks(out["masks"][keep], (orig_h, orig_w)) if "masks" in out and keep else None
        scores = out["scores"].tolist()
        for j, (i, category_id) in enumerate(zip(keep, kept_ids)):
            result = {"image_id": image_id, "category_id": category_id, "bbox": boxes[i].tolist(),
                      "score": float(scores[i])}
            if masks is not None:
                result["segmentation"] = masks[j]
            results.append(result)
    return results


def _rle_masks(probabilities: Tensor, size: tuple[int, int], chunk: int = 16) -> list[dict]:
    """``[D, 1, h, w]`` mask probabilities -> D compressed RLEs of ``size`` = (H, W) (counts as str)."""
    rles = []
    for part in probabilities.detach().float().cpu().split(chunk):
        if tuple(part.shape[-2:]) != size:
            part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
        binary = (part[:, 0] > MASK_THRESHOLD).numpy().astype(np.uint8)
        for rle in mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))):
            rles.append({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")})
    return rles


def coco_metrics(coco_gt: COCO, results: list[dict], image_ids: Iterable[int], iou_type: str = "bbox"
                 ) -> dict[str, float]:
    """bbox_mAP, AP50, AP75, AP_S, AP_M, AP_L over ``image_ids`` (pycocotools; -1 = no such objects).

    ``iou_type="segm"``: the same from the results' ``segmentation`` masks, named
    ``segm_mAP``, ``segm_AP50``, ... (:data:`~raykd.metric_names.SEGM_METRICS`); each result
    then enters without its box, so pycocotools takes its area and box from the mask.
    """
    names = _IOU_METRICS[iou_type]
    image_ids = sorted(set(int(i) for i in image_ids))
    if iou_type == "segm":
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r]
    else:
        results = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    if not results:
        has_gt = bool(coco_gt.getAnnIds(imgIds=image_ids, iscrowd=False))
        return {name: (0.0 if has_gt else -1.0) for name in names}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(names, np.asarray(evaluator.stats[:6]))}


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, label_to_cat_id, *,
            amp: torch.dtype | None = None) -> list[dict]:
    """Run ``model`` in eval mode over ``loader``; return COCO result dicts. ``amp``: autocast
    dtype of its convolutions only (box decoding and post-processing stay fp32,
    :mod:`raykd.models.precision`)."""
    was_training = model.training
    model.eval()
    results: list[dict] = []
    for images, targets in loader:
        images = [device_image(img, device) for img in images]
        with autocast_parts(conv_parts(model), device.type, amp):
            outputs = model(images)
        sizes = [tuple(img.shape[-2:]) for img in images]
        results.extend(to_coco_results(outputs, targets, sizes, label_to_cat_id))
    model.train(was_training)
    return results
