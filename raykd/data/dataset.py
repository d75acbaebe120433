"""The COCO-format detection dataset the trainer reads."""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision import tv_tensors

from raykd.data.cocofile import (
    MIN_BOX_SIZE,
    OUTSIDE_TOLERANCE,
    CocoFile,
    Targets,
    prepare_boxes,
    read_coco,
)
from raykd.data.images import load_rgb
from raykd.data.transforms import detection_transforms
from raykd.errors import UserError


class DataWarning(UserWarning):
    """Something in a dataset was dropped or changed (e.g. degenerate boxes)."""


def _coco_api(dataset: dict[str, Any]) -> COCO:
    """A pycocotools ``COCO`` over an already parsed dict, without its prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """A COCO annotation file and its image folder, as detection samples.

    ``dataset[i]`` is ``(image, target)``: ``image`` float32 ``[3, H, W]`` in [0, 1], resized so
    that ``max(H, W) == image_size`` (with ``min_size``: ``min(H, W) == min_size`` unless that would
    take the longer side past ``image_size``, see :func:`~raykd.data.transforms.detection_transforms`); ``target`` holds ``boxes`` float32 ``[K, 4]`` (xyxy, pixels
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
    """

    def __init__(self, annotations: str | Path, images: str | Path, image_size: int, train: bool,
                 min_size: int | None = None, masks: bool = False):
        if image_size < 1:
            raise UserError(f"expected a positive image size, got {image_size}", key="image_size")
        self.annotations_path = Path(annotations)
        self.images_dir = Path(images)
        if not self.images_dir.is_dir():
            raise UserError("image folder not found", file=self.images_dir)
        self.image_size = int(image_size)
        self.min_size = min_size
        self.train = bool(train)
        parsed = read_coco(self.annotations_path, masks=masks)
        parsed.raise_first_problem()
        self._file_digest = hashlib.sha256(parsed.raw).hexdigest()
        self._coco: COCO | None = None  # built on first use (evaluation): the parsed JSON is not kept

        self.cat_ids: list[int] = sorted(parsed.categories)
        self.cat_id_to_label: dict[int, int] = {cat_id: i + 1 for i, cat_id in enumerate(self.cat_ids)}
        self.class_names: list[str] = [parsed.categories[cat_id] for cat_id in self.cat_ids]
        self.num_classes: int = len(self.cat_ids) + 1
        self.image_ids: list[int] = [image.id for image in parsed.images]

        targets = prepare_boxes(parsed)
        self._warn_dropped(parsed, targets)
        # Flat arrays rather than per-image Python objects: forked loader workers share their pages.
        self._boxes = targets.boxes
        self._labels = np.asarray([self.cat_id_to_label[c] for c in targets.category_ids.tolist()], dtype=np.int64)
        self._offsets = targets.offsets
        sizes = [(image.width, image.height) for image in parsed.images]
        self._sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        self._files = [image.file_name for image in parsed.images]
        self._file_keys = np.asarray([image.index for image in parsed.images], dtype=np.int64)
        self.masks = bool(masks)
        # Per box, its segmentation as the file gives it (decoded when a sample is read).
        self._segmentations = [parsed.data["annotations"][i]["segmentation"] for i in targets.indices.tolist()] \
            if masks else None
        self._box_keys = targets.indices
        self.transforms = detection_transforms(self.image_size, self.train, min_size)

    def _warn_dropped(self, parsed: CocoFile, targets: Targets) -> None:
        parts = []
        if targets.degenerate:
            first = ", ".join(f"annotations[{i}]" for i in targets.degenerate[:3])
            parts.append(
                f"dropped {len(targets.degenerate)} degenerate boxes (width or height <= {MIN_BOX_SIZE:g} px "
                f"after clipping to the image; e.g. {first})"
            )
        if targets.outside:
            parts.append(
                f"clipped {len(targets.outside)} boxes reaching more than {OUTSIDE_TOLERANCE:g} px outside the image"
            )
        if parts:
            warnings.warn(f"{parsed.path}: {'; '.join(parts)}", DataWarning, stacklevel=3)

    @property
    def coco(self) -> COCO:
        """The pycocotools ``COCO`` object of the annotation file (``area``/``iscrowd`` filled in
        where missing), crowd regions and all, for evaluation. Read again from the file on first
        use; a file changed since the dataset was made is a :class:`UserError`."""
        if self._coco is None:
            parsed = read_coco(self.annotations_path)
            if hashlib.sha256(parsed.raw).hexdigest() != self._file_digest:
                raise UserError(
                    "the annotation file changed while it was in use; start again", file=self.annotations_path
                )
            self._coco = _coco_api(parsed.data)
        return self._coco

    def __getstate__(self) -> dict[str, Any]:
        # Loader workers started by spawn/forkserver get the flat arrays, not the COCO index.
        return {**self.__dict__, "_coco": None}

    def label_to_cat_id(self, label: int) -> int:
        """The file's category id of a contiguous label (1..num_classes-1)."""
        if not 1 <= label < self.num_classes:
            raise ValueError(f"label {label} is not in 1..{self.num_classes - 1}")
        return self.cat_ids[label - 1]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        width, height = (int(v) for v in self._sizes[index])
        key = f"images[{int(self._file_keys[index])}].file_name"
        image = load_rgb(self.images_dir / self._files[index], (width, height), key)
        start, stop = int(self._offsets[index]), int(self._offsets[index + 1])
        boxes = tv_tensors.BoundingBoxes(
            torch.from_numpy(self._boxes[start:stop].copy()), format="XYXY", canvas_size=(height, width)
        )
        labels = torch.from_numpy(self._labels[start:stop].copy())
        sample = {"boxes": boxes, "labels": labels}
        if self._segmentations is not None:
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
        for i in range(start, stop):
            seg = self._segmentations[i]
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
                                key=f"annotations[{int(self._box_keys[i])}].segmentation") from None
        return torch.from_numpy(masks)

    def __repr__(self) -> str:
        return (
            f"CocoDetection({str(self.annotations_path)!r}, images={len(self)}, boxes={len(self._boxes)}, "
            f"classes={self.class_names}, image_size={self.image_size}, train={self.train}"
            f"{', masks=True' if self.masks else ''})"
        )
