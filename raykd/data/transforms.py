"""Detection transforms on torchvision transforms v2: resize as torchvision's detectors do, flip, to float."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


def detection_transforms(image_size: int, train: bool, min_size: int | None = None, *,
                         uint8: bool = False) -> v2.Compose:
    """Transforms for ``(PIL image, {"boxes": BoundingBoxes, "labels": ...})`` samples.

    Without ``min_size`` the longer image side becomes ``image_size`` pixels. With it, the
    shorter side becomes ``min_size`` unless the longer side would then pass ``image_size``,
    which caps it (torchvision's detection resize; COCO: 800 / 1333). The aspect ratio is kept
    (the other side truncated to an integer) and boxes are scaled by the same per-axis ratios;
    in training the image and its boxes are flipped horizontally with probability 0.5. The
    output image is float32 ``[3, H, W]`` in [0, 1] (``uint8``: the same image before that
    last conversion, uint8 ``[3, H, W]``, 4× fewer bytes from a loader worker to the
    training device, where :func:`device_image` converts it). Detectors are built with the same
    ``min_size`` / ``max_size`` so their own transform does not resize again.
    No ``SanitizeBoundingBoxes``: degenerate boxes are dropped (and counted) when the
    annotation file is read, and images without boxes pass through unchanged.
    """
    steps: list[v2.Transform] = [v2.ToImage(), v2.Resize(size=min_size, max_size=image_size, antialias=True)]
    if train:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if not uint8:
        steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def device_image(image: Tensor, device: torch.device) -> Tensor:
    """An image of :func:`detection_transforms` on ``device`` as float32 in [0, 1]: a uint8
    one is copied as it is (asynchronously from pinned memory) and converted there, with the
    same function as the CPU path (the same values)."""
    image = image.to(device, non_blocking=True)
    return TF.to_dtype(image, torch.float32, scale=True) if image.dtype == torch.uint8 else image
