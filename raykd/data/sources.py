"""What the VOC and YOLO readers share: the COCO dict they build, and the files they read.

Both readers turn a split into the in-memory COCO form (``images``, ``annotations``,
``categories``) that :class:`~raykd.data.dataset.CocoDetection` and pycocotools read from a
file. :class:`CocoBuilder` assembles it; :class:`Sources` lists the files a split is read from,
whose hash keys the converted file's cache (:mod:`raykd.data.converted`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raykd.data.cocofile import OUTSIDE_TOLERANCE
from raykd.errors import UserError

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
"""Image files the readers pick up (lower-cased suffixes; PIL reads all of them)."""


@dataclass
class Sources:
    """The files a split is read from, relative to ``base``: annotation text files (hashed by
    content) and image files (hashed by size and modification time, not read)."""

    base: Path
    texts: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)

    def digest(self, *options: Any) -> str:
        """SHA-256 hex digest of ``options`` (reader version, split, classes, ...) and the files.
        Paths enter relative to ``base``, so a moved data set keeps its digest."""
        digest = hashlib.sha256(repr(options).encode())
        for path in self.texts:
            digest.update(f"\0T{self._rel(path)}\0".encode())
            digest.update(hashlib.sha256(read_bytes(path)).digest())
        for path in self.images:
            try:
                stat = path.stat()
            except OSError as err:
                raise UserError(f"cannot read the image file ({err.strerror})", file=path) from None
            digest.update(f"\0I{self._rel(path)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        return digest.hexdigest()

    def _rel(self, path: Path) -> str:
        return os.path.relpath(path, self.base)


def read_bytes(path: Path) -> bytes:
    """The bytes of an annotation file; :class:`UserError` naming it when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read the file ({err.strerror})", file=path) from None


def read_lines(path: Path) -> list[str]:
    """The lines of a text annotation file (undecodable bytes replaced)."""
    return read_bytes(path).decode("utf-8", errors="replace").splitlines()


@dataclass
class CocoBuilder:
    """A COCO dict built image by image: ids from 1, ``area`` and ``iscrowd`` on every box."""

    class_names: list[str]  # category ``i + 1`` is ``class_names[i]``
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def add_image(self, file_name: str, width: int, height: int) -> int:
        """Append an image entry; returns its id."""
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        return image_id

    def add_box(self, image_id: int, label: int, xyxy: tuple[float, float, float, float], ignore: bool) -> None:
        """Append a box of class ``class_names[label]``; ``xyxy`` in pixels (0-based, pixel
        edges). ``ignore``: a crowd region (``iscrowd=1``): no training target, and pycocotools
        counts detections on it neither right nor wrong."""
        x1, y1, x2, y2 = xyxy
        w, h = x2 - x1, y2 - y1
        self.annotations.append({"id": len(self.annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                 "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": int(ignore)})

    def to_dict(self) -> dict[str, Any]:
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(self.class_names)]
        return {"images": self.images, "annotations": self.annotations, "categories": categories}


def check_box(xyxy: tuple[float, float, float, float], width: int, height: int, file: Path, key: str,
              written: str) -> None:
    """Refuse a box with ``x2 <= x1`` or ``y2 <= y1``, or reaching more than
    ``OUTSIDE_TOLERANCE`` px past the border of the ``width`` x ``height`` image. ``written``:
    the box as the file writes it, for the message."""
    x1, y1, x2, y2 = xyxy
    if x2 <= x1 or y2 <= y1:
        raise UserError(f"expected a box with x2 > x1 and y2 > y1, got {written}", file=file, key=key)
    tol = OUTSIDE_TOLERANCE
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        raise UserError(f"expected a box inside the {width}x{height} image, got {written} "
                        f"(x {x1:g} to {x2:g}, y {y1:g} to {y2:g} in pixels)", file=file, key=key)
