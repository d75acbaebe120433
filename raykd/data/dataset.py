"""The COCO-format detection dataset the trainer reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision import tv_tensors

from raykd.data.annindex import AnnotationIndex, DataWarning, load_index
from raykd.data.cocoeval import Evaluator, ground_truth
from raykd.data.images import load_rgb
from raykd.data.transforms import detection_transforms
from raykd.errors import UserError

__all__ = ["CocoDetection", "DataWarning"]


class CocoDetection(torch.utils.data.Dataset):
    """A COCO annotation file and its image folder, as detection samples.

    ``dataset[i]`` is ``(image, target)``: ``image`` float32 ``[3, H, W]`` in [0, 1], resized so
    that ``max(H, W) == image_size`` (with ``min_size``: ``min(H, W) == min_size`` unless that would
    take the longer side past ``image_size``, see :func:`~raykd.data.transforms.detection_transforms`);
    ``target`` holds ``boxes`` float32 ``[K, 4]`` (xyxy, pixels
    of the resized image), ``labels`` int64 ``[K]`` in ``1..num_classes-1``, ``image_id`` (int,
    the file's id) and ``orig_size`` int64 ``[2]`` = (height, width) of the original image.
    ``K`` may be 0. With ``masks=True`` (Mask R-CNN) the target also holds ``masks`` uint8
    ``[K, H, W]``, each annotation's ``segmentation`` (polygons or RLE, decoded as pycocotools'
    ``annToMask`` does) resized and flipped with its box; a missing or malformed one is a
    :class:`UserError` naming it. Without, segmentations are not read.
    Category ids are mapped to contiguous labels in sorted order (label 0 is
    background) and back with :meth:`label_to_cat_id`. Crowd regions are not targets but stay
    in :attr:`coco`, which evaluation uses as it is. Boxes are clipped to the image;
    degenerate ones are dropped and counted in one :class:`DataWarning`. Images are opened
    when a sample is read: a missing or unreadable one raises :class:`UserError`.
    ``index_dir``: where the file's :class:`~raykd.data.annindex.AnnotationIndex` is cached
    (``cache_dir/annotations``; built on the first read, memory-mapped after); None: parsed
    in memory each time.
    """

    def __init__(self, annotations: str | Path, images: str | Path, image_size: int, train: bool,
                 min_size: int | None = None, masks: bool = False, index_dir: str | Path | None = None):
        if image_size < 1:
            raise UserError(f"expected a positive image size, got {image_size}", key="image_size")
        self.annotations_path = Path(annotations)
        self.images_dir = Path(images)
        if not self.images_dir.is_dir():
            raise UserError("image folder not found", file=self.images_dir)
        self.image_size = int(image_size)
        self.min_size = min_size
        self.train = bool(train)
        self.masks = bool(masks)
        index = load_index(self.annotations_path, index_dir, masks=masks)
        index.warn_dropped()
        self.index: AnnotationIndex = index
        self._gt: dict[str, Any] = {}  # evaluator -> its COCO object, built on first use (evaluation)

        self.cat_ids: list[int] = sorted(index.categories)
        self.cat_id_to_label: dict[int, int] = {cat_id: i + 1 for i, cat_id in enumerate(self.cat_ids)}
        self.class_names: list[str] = [index.categories[cat_id] for cat_id in self.cat_ids]
        self.num_classes: int = len(self.cat_ids) + 1
        self.image_ids: list[int] = index.arrays["image_ids"].tolist()
        self._labels = np.searchsorted(np.asarray(self.cat_ids, dtype=np.int64), index.arrays["box_categories"]) + 1
        self.transforms = detection_transforms(self.image_size, self.train, min_size)

    @property
    def coco(self) -> COCO:
        """The pycocotools ``COCO`` object of the annotation file (``area``/``iscrowd`` filled in
        where missing), crowd regions and all: :meth:`ground_truth` of ``pycocotools``."""
        return self.ground_truth("pycocotools")

    def ground_truth(self, evaluator: Evaluator) -> Any:
        """The evaluator's ``COCO`` object of the annotation file for evaluation (crowd regions
        and all; with ``masks`` the segmentations too), built once from the index: the content
        the dataset was made from, whatever happened to the file since."""
        if evaluator not in self._gt:
            self._gt[evaluator] = ground_truth(self.index.coco_dataset(segmentations=self.masks), evaluator)
        return self._gt[evaluator]

    def __getstate__(self) -> dict[str, Any]:
        # Loader workers started by spawn/forkserver get the flat arrays, not the COCO index.
        return {**self.__dict__, "_gt": {}}

    def label_to_cat_id(self, label: int) -> int:
        """The file's category id of a contiguous label (1..num_classes-1)."""
        if not 1 <= label < self.num_classes:
            raise ValueError(f"label {label} is not in 1..{self.num_classes - 1}")
        return self.cat_ids[label - 1]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        arrays = self.index.arrays
        width, height = (int(v) for v in arrays["image_sizes"][index])
        key = f"images[{int(arrays['image_keys'][index])}].file_name"
        image = load_rgb(self.images_dir / self.index.file_name(index), (width, height), key)
        start, stop = int(arrays["box_offsets"][index]), int(arrays["box_offsets"][index + 1])
        boxes = tv_tensors.BoundingBoxes(
            torch.from_numpy(np.array(arrays["boxes"][start:stop])), format="XYXY", canvas_size=(height, width)
        )
        labels = torch.from_numpy(self._labels[start:stop].copy())
        sample = {"boxes": boxes, "labels": labels}
        if self.masks:
            sample["masks"] = tv_tensors.Mask(self._decode_masks(start, stop, height, width))
        image, target = self.transforms(image, sample)
        out = {
            "boxes": target["boxes"].as_subclass(torch.Tensor),
            "labels": target["labels"],
            "image_id": self.image_ids[index],
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
        }
        if "masks" in target:
            out["masks"] = target["masks"].as_subclass(torch.Tensor)
        return image.as_subclass(torch.Tensor), out

    def _decode_masks(self, start: int, stop: int, height: int, width: int) -> torch.Tensor:
        """uint8 ``[stop - start, height, width]``: boxes ``start:stop``'s segmentations as pycocotools'
        ``annToMask`` decodes them (polygons merged; RLE as given)."""
        masks = np.zeros((stop - start, height, width), dtype=np.uint8)
        box_gt = self.index.arrays["box_gt"]
        for i in range(start, stop):
            seg = self.index.segmentation(int(box_gt[i]))
            try:
                if isinstance(seg, list):
                    rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
                elif isinstance(seg["counts"], list):
                    rle = mask_utils.frPyObjects(seg, height, width)
                else:
                    rle = seg
                masks[i - start] = mask_utils.decode(rle)
            except (ValueError, TypeError, KeyError) as err:
                raise UserError(f"cannot decode the instance mask ({err})", file=self.annotations_path,
                                key=f"annotations[{int(self.index.arrays['gt_keys'][box_gt[i]])}].segmentation") from None
        return torch.from_numpy(masks)

    def __repr__(self) -> str:
        return (
            f"CocoDetection({str(self.annotations_path)!r}, images={len(self)}, boxes={len(self._labels)}, "
            f"classes={self.class_names}, image_size={self.image_size}, train={self.train}"
            f"{', masks=True' if self.masks else ''})"
        )
