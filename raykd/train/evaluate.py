"""COCO box (and, for Mask R-CNN, instance mask) evaluation of a model's predictions.

Predictions are mapped back to the original image size and to the file's category ids, so
the numbers are the ones COCOeval reports on the annotation file itself
(:mod:`raykd.data.cocoeval`: faster_coco_eval or pycocotools, ``train.evaluator``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import Tensor, nn

from raykd.data.cocoeval import coco_metrics
from raykd.data.transforms import device_image
from raykd.models.precision import autocast_parts, conv_parts

__all__ = ["MASK_THRESHOLD", "coco_metrics", "predict", "rle_encode", "to_coco_results"]

MASK_THRESHOLD = 0.5
"""A predicted mask pixel is in the instance when its probability is above this (torchvision's,
detectron2's and mmdet's choice)."""


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
    """``[D, 1, h, w]`` mask probabilities -> D compressed RLEs of ``size`` = (H, W) (counts as
    str). Resized and thresholded where they are (the GPU in training), then run-length encoded
    there (:func:`rle_encode`): only the run boundaries move to the CPU, not ``D x H x W`` floats."""
    rles = []
    for part in probabilities.detach().split(chunk):
        part = part.float()
        if tuple(part.shape[-2:]) != size:
            part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
        rles.extend(rle_encode(part[:, 0] > MASK_THRESHOLD))
    return rles


def rle_encode(masks: Tensor) -> list[dict]:
    """bool ``[D, H, W]`` (any device) -> D compressed COCO RLEs, the same as pycocotools'
    ``mask.encode`` of the same masks. Runs are found in column-major order on the masks'
    device; only the run boundaries (a few per mask row) go to the CPU, where they are compressed."""
    d, h, w = masks.shape
    if d == 0:
        return []
    flat = masks.transpose(1, 2).reshape(d, h * w)
    changes = torch.nonzero(flat[:, 1:] != flat[:, :-1]).cpu()  # [K, 2]: (mask, position before a change)
    starts_on = flat[:, 0].cpu().tolist()
    per_mask = torch.bincount(changes[:, 0], minlength=d).tolist()
    positions = (changes[:, 1] + 1).tolist()
    out, k = [], 0
    for i in range(d):
        bounds = [0, *positions[k:k + per_mask[i]], h * w]
        k += per_mask[i]
        counts = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        if starts_on[i]:  # COCO RLE counts start with a run of zeros
            counts.insert(0, 0)
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        out.append({"size": [h, w], "counts": rle["counts"].decode("ascii")})
    return out


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
