"""YOLO data sets read as they are (an ultralytics-style ``data.yaml``), into the COCO form.

The YAML file::

    path: .                  # the set's root, relative to the YAML file's folder (default: that folder)
    train: images/train      # a folder of images (searched recursively), or a .txt list of image paths
    val: images/val          #   (list lines relative to the list's folder), relative to `path`
    names: [cat, dog]        # or {0: cat, 1: dog}; optional nc: 2 must agree

Labels: the image ``.../images/<rest>.<ext>`` has ``.../labels/<rest>.txt`` (the last ``images``
folder of its path replaced by ``labels``; beside the image when there is none), one object
a line: ``class cx cy w h``, ``class`` an index into ``names``, the rest normalised to the
image's width and height. An empty or missing label file is an image without objects. Image
sizes are read from the image headers (EXIF rotation applied, as the loader shows them).
Boxes become pixel edges ``x1 = (cx - w / 2) * W``, ``x2 = (cx + w / 2) * W`` (likewise y);
one with ``w <= 0`` or ``h <= 0`` or reaching more than 1 px past the border is refused.
Category ``i + 1`` is ``names[i]``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raykd.config import load_yaml
from raykd.data.images import header_size
from raykd.data.sources import IMAGE_SUFFIXES, CocoBuilder, Sources, check_box, read_lines
from raykd.errors import UserError

READER_VERSION = 1
"""Bump when the conversion changes: converted files in the cache are keyed by it."""


@dataclass(frozen=True)
class YoloSplitFiles:
    """A split's image files and where the COCO ``file_name`` entries are relative to."""

    yaml: Path
    names: list[str]  # class names by index
    images_dir: Path
    images: list[Path]


def yolo_split(yaml_path: str | Path, split: str) -> YoloSplitFiles:
    """Read the YAML file and list the split's images; :class:`UserError` naming the file and
    key (or the list file and line) when a key, a folder or a listed image is missing."""
    yaml_path = Path(yaml_path)
    raw = load_yaml(yaml_path)
    base = yaml_path.resolve().parent
    root = (base / _string(raw, "path", yaml_path, default=".")).resolve()
    names = _names(raw, yaml_path)
    value = _string(raw, split, yaml_path, default=None)
    if value is None:
        splits = [key for key in ("train", "val", "test") if key in raw]
        raise UserError(f"expected the images of split {split!r}: a folder or .txt list relative to path "
                        f"(missing key; splits there: {', '.join(splits) or 'none'})", file=yaml_path, key=split)
    where = root / value
    if where.is_dir():
        images = sorted(p for p in where.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise UserError(f"expected image files ({', '.join(IMAGE_SUFFIXES)}) in {where}, found none",
                            file=yaml_path, key=split)
        return YoloSplitFiles(yaml_path, names, where, images)
    if where.is_file():
        return YoloSplitFiles(yaml_path, names, root, _listed_images(where))
    raise UserError(f"expected a folder of images or a .txt list, not found: {where}", file=yaml_path, key=split)


def yolo_sources(files: YoloSplitFiles) -> Sources:
    """The files the split is read from: the YAML file, its label files and images."""
    labels = [path for path in map(label_path, files.images) if path.is_file()]
    return Sources(base=files.yaml.resolve().parent, texts=[files.yaml, *labels], images=files.images)


def read_yolo(files: YoloSplitFiles) -> dict[str, Any]:
    """The split as a COCO dict (images in sorted or list order, ids from 1). Raises
    :class:`UserError` naming the file (and line) at the first problem."""
    builder = CocoBuilder(class_names=files.names)
    for image in files.images:
        width, height = header_size(image)
        number = builder.add_image(os.path.relpath(image, files.images_dir), width, height)
        labels = label_path(image)
        if not labels.is_file():
            continue
        for line, text in enumerate(read_lines(labels), start=1):
            if text.strip():
                label, xyxy, written = _parse_line(text, labels, line, len(files.names), width, height)
                check_box(xyxy, width, height, labels, f"line {line}", written)
                builder.add_box(number, label, xyxy, ignore=False)
    return builder.to_dict()


def label_path(image: Path) -> Path:
    """``.../images/a/b.jpg`` -> ``.../labels/a/b.txt`` (the last ``images`` folder of the path)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _string(raw: dict[str, Any], key: str, file: Path, default: str | None) -> str | None:
    value = raw.get(key, default)
    if value is not None and not (isinstance(value, str) and value):
        raise UserError(f"expected a path, got {value!r}", file=file, key=key)
    return value


def _names(raw: dict[str, Any], file: Path) -> list[str]:
    names = raw.get("names")
    if isinstance(names, list):
        by_index = dict(enumerate(names))
    elif isinstance(names, dict) and all(isinstance(k, int) and not isinstance(k, bool) for k in names):
        by_index = names
    else:
        got = "nothing (missing key)" if names is None else repr(names)
        raise UserError(f"expected the class names as a list or a mapping {{0: name, ...}}, got {got}",
                        file=file, key="names")
    nc = raw.get("nc", max(by_index, default=-1) + 1)
    if not (isinstance(nc, int) and nc >= 1) or len(by_index) > nc:
        raise UserError(f"expected nc to be the number of names ({len(by_index)}), got {nc!r}", file=file, key="nc")
    out = []
    for index in range(nc):
        name = by_index.get(index)
        if name is None or not str(name).strip():
            raise UserError(f"expected a name for class {index} of 0..{nc - 1} (missing)", file=file,
                            key=f"names[{index}]")
        out.append(str(name).strip())
    return out


def _listed_images(listing: Path) -> list[Path]:
    images = []
    for line, text in enumerate(read_lines(listing), start=1):
        if not text.strip():
            continue
        image = listing.parent / text.strip()
        if not image.is_file():
            raise UserError(f"image listed in the split not found: {image}", file=listing, key=f"line {line}")
        images.append(image)
    if not images:
        raise UserError("expected at least one image path, the list is empty", file=listing)
    return images


def _parse_line(text: str, file: Path, line: int, classes: int, width: int,
                height: int) -> tuple[int, tuple[float, float, float, float], str]:
    """(class index, xyxy in pixels, the line as written) of one label line."""
    fields = text.split()
    key = f"line {line}"
    if len(fields) != 5:
        raise UserError(f"expected 5 fields 'class cx cy w h', got {len(fields)}: {text.strip()!r}", file=file, key=key)
    try:
        label = int(fields[0])
        cx, cy, w, h = (float(v) for v in fields[1:])
    except ValueError:
        raise UserError(f"expected an integer class and 4 numbers, got {text.strip()!r}", file=file, key=key) from None
    if not all(math.isfinite(v) for v in (cx, cy, w, h)):
        raise UserError(f"expected finite numbers, got {text.strip()!r}", file=file, key=key)
    if not 0 <= label < classes:
        raise UserError(f"expected a class index in 0..{classes - 1} (names), got {label}", file=file, key=key)
    xyxy = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
    return label, xyxy, repr(text.strip())
