"""A learnable synthetic COCO set: coloured shapes on noisy backgrounds, deterministic by seed.

Layout written under ``out_dir``::

    images/train/000001.png ...    images/val/000001.png ...
    annotations/train.json         annotations/val.json
    synth.json                     (the generator's parameters; written last)

Each image holds 1-6 shapes of the first ``num_classes`` classes below, 12-75 px across at
160 px (sizes scale with ``image_size``; COCO small and medium, no large), in random colours
that contrast with the background; shapes overlap by at most a third of the smaller box.
Category ids have gaps on purpose (1, 3, 7, 10, ...) so label mapping is always exercised.
Every annotation has a ``segmentation`` (for Mask R-CNN): polygons in pixel-edge coordinates
(the cross as two overlapping rectangles), the ring (it has a hole) and the star (thin points)
as a compressed RLE of their drawn pixels. Masks are whole shapes: a later shape drawn over an
earlier one does not cut it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from raykd.errors import UserError

GENERATOR_VERSION = 2  # 2: annotations carry a segmentation
CLASSES: tuple[tuple[int, str], ...] = (
    (1, "rectangle"),
    (3, "ellipse"),
    (7, "triangle"),
    (10, "cross"),
    (12, "star"),
    (15, "ring"),
)
_MIN_SIZE, _MAX_SIZE = 12 / 160, 75 / 160  # object size range, as fractions of the image side
_MAX_OVERLAP = 1 / 3  # intersection / smaller box area allowed between two shapes
_NOISE_STD = 8.0  # pixel noise over the whole image, on the 0-255 scale


@dataclass(frozen=True)
class SyntheticPaths:
    """Where a synthetic set lies: COCO files and their image folders."""

    train_annotations: Path
    train_images: Path
    val_annotations: Path
    val_images: Path


def _paths(out_dir: Path) -> SyntheticPaths:
    return SyntheticPaths(
        train_annotations=out_dir / "annotations" / "train.json",
        train_images=out_dir / "images" / "train",
        val_annotations=out_dir / "annotations" / "val.json",
        val_images=out_dir / "images" / "val",
    )


def _parameters(
    train_images: int, val_images: int, seed: int, image_size: int, num_classes: int
) -> dict[str, Any]:
    """The parameters ``synth.json`` records for these arguments (validated)."""
    checks = {
        "seed": (seed, 0),
        "train_images": (train_images, 1),
        "val_images": (val_images, 1),
        "image_size": (image_size, 64),
        "num_classes": (num_classes, 1),
    }
    for key, (value, low) in checks.items():
        if not isinstance(value, int) or value < low:
            raise UserError(f"expected an integer >= {low}, got {value!r}", key=key)
    if num_classes > len(CLASSES):
        raise UserError(f"expected at most {len(CLASSES)} shape classes, got {num_classes}", key="num_classes")
    return {
        "generator": "raykd.data.synthetic",
        "version": GENERATOR_VERSION,
        "train_images": train_images,
        "val_images": val_images,
        "seed": seed,
        "image_size": image_size,
        "num_classes": num_classes,
    }


def generate_synthetic(
    out_dir: str | Path,
    train_images: int = 3000,
    val_images: int = 500,
    seed: int = 0,
    image_size: int = 160,
    num_classes: int = 4,
) -> SyntheticPaths:
    """Write the synthetic set into ``out_dir`` (absent or empty); same arguments, same bytes.

    ``num_classes`` counts shape classes (at most 6); detectors trained on the set have
    ``num_classes + 1`` labels with background. Not safe against concurrent writers: use
    :func:`ensure_synthetic` for that.
    """
    params = _parameters(train_images, val_images, seed, image_size, num_classes)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError("expected an empty or new folder for the synthetic set", file=out_dir)
    paths = _paths(out_dir)
    for split, count, annotations, images in (
        ("train", train_images, paths.train_annotations, paths.train_images),
        ("val", val_images, paths.val_annotations, paths.val_images),
    ):
        images.mkdir(parents=True, exist_ok=True)
        annotations.parent.mkdir(parents=True, exist_ok=True)
        coco = _generate_split(split, count, images, seed, image_size, num_classes)
        annotations.write_text(json.dumps(coco, separators=(",", ":")))
    (out_dir / "synth.json").write_text(json.dumps(params, indent=2) + "\n")
    return paths


def ensure_synthetic(
    out_dir: str | Path,
    train_images: int = 3000,
    val_images: int = 500,
    seed: int = 0,
    image_size: int = 160,
    num_classes: int = 4,
) -> SyntheticPaths:
    """The synthetic set in ``out_dir``, generated only when missing or made with other parameters.

    Safe when several processes call it at once: one generates into a temporary folder beside
    ``out_dir`` under a file lock (``.<name>.lock``) and renames it into place; the others
    wait and reuse it. A folder without ``synth.json`` is never replaced (it is not ours).
    """
    params = _parameters(train_images, val_images, seed, image_size, num_classes)
    out_dir = Path(out_dir).absolute()
    if _is_complete(out_dir, params):
        return _paths(out_dir)
    # Refused before the lock file is made. Other processes only ever put a complete set in place.
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError("expected a folder for the synthetic set, this is a file", file=out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and _recorded_parameters(out_dir) is None:
        raise UserError(
            "folder exists and is not a raykd synthetic set (no synth.json); not replacing it", file=out_dir
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir.parent / f".{out_dir.name}.lock")):
        if _is_complete(out_dir, params):  # made by another process while we waited
            return _paths(out_dir)
        for pattern in (f".{out_dir.name}.tmp-*", f".{out_dir.name}.old-*"):  # left by a killed run
            for stale in out_dir.parent.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            generate_synthetic(tmp, train_images, val_images, seed, image_size, num_classes)
            if out_dir.exists():
                old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
                os.rename(out_dir, old)
                shutil.rmtree(old)
            os.rename(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _paths(out_dir)


def _is_complete(out_dir: Path, params: dict[str, Any]) -> bool:
    paths = _paths(out_dir)
    folders_there = paths.train_images.is_dir() and paths.val_images.is_dir()
    files_there = paths.train_annotations.is_file() and paths.val_annotations.is_file()
    return _recorded_parameters(out_dir) == params and folders_there and files_there


def _recorded_parameters(out_dir: str | Path) -> dict[str, Any] | None:
    """The parameters recorded in ``out_dir/synth.json``, or None."""
    try:
        return json.loads((Path(out_dir) / "synth.json").read_text())
    except (OSError, ValueError):
        return None


def _generate_split(split: str, count: int, images_dir: Path, seed: int, size: int, num_classes: int) -> dict[str, Any]:
    images, annotations = [], []
    for index in range(count):
        # One random stream per image: any image can be regenerated on its own.
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
        image, shapes = _draw_image(rng, size, num_classes)
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        image.save(images_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for class_index, (x, y, w, h), segmentation in shapes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CLASSES[class_index][0],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": segmentation,
                }
            )
    return {
        "info": {"description": f"raykd synthetic shapes, {split} split", "version": str(GENERATOR_VERSION)},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": cat_id, "name": name, "supercategory": "shape"} for cat_id, name in CLASSES[:num_classes]
        ],
    }


def _draw_image(rng: np.random.Generator, size: int, num_classes: int) -> tuple[Image.Image, list]:
    """One ``size`` x ``size`` RGB image and its shapes ``[(class_index, (x, y, w, h), segmentation), ...]``."""
    # Smooth colour field (bicubic upsampling of a 4x4 grid) as the background.
    grid = rng.uniform(30, 225, size=(4, 4, 3)).astype(np.uint8)
    background = Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)
    canvas = background.copy()
    draw = ImageDraw.Draw(canvas)
    bg = np.asarray(background, dtype=np.float32)
    boxes: list[tuple[int, int, int, int]] = []
    shapes = []
    for _ in range(int(rng.integers(1, 7))):
        class_index = int(rng.integers(num_classes))
        placed = _place(rng, size, boxes)
        if placed is None:
            continue
        x, y, w, h = placed
        colour = _contrasting_colour(rng, bg[y : y + h, x : x + w].mean(axis=(0, 1)))
        segmentation = _draw_shape(draw, CLASSES[class_index][1], x, y, w, h, colour, rng)
        boxes.append(placed)
        shapes.append((class_index, (float(x), float(y), float(w), float(h)), segmentation))
    pixels = np.asarray(canvas, dtype=np.float32) + rng.normal(0.0, _NOISE_STD, size=(size, size, 3)).astype(np.float32)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)), shapes


def _place(rng: np.random.Generator, size: int, boxes: list) -> tuple[int, int, int, int] | None:
    """A box (x, y, w, h) inside the image overlapping earlier ones by at most _MAX_OVERLAP, or None."""
    low, high = max(4, round(_MIN_SIZE * size)), round(_MAX_SIZE * size)
    for _ in range(20):
        side = math.exp(rng.uniform(math.log(low), math.log(high)))
        aspect = math.exp(rng.uniform(-0.4, 0.4))
        w = int(min(max(round(side * aspect), low), high))
        h = int(min(max(round(side / aspect), low), high))
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        if all(_overlap((x, y, w, h), other) <= _MAX_OVERLAP for other in boxes):
            return x, y, w, h
    return None


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection area over the smaller box's area."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(iw, 0) * max(ih, 0) / min(a[2] * a[3], b[2] * b[3])


def _contrasting_colour(rng: np.random.Generator, behind: np.ndarray) -> tuple[int, int, int]:
    """A random colour at least 120 (Euclidean, RGB 0-255) from ``behind``, or the farthest of 10 tries."""
    best, best_distance = None, -1.0
    for _ in range(10):
        colour = rng.integers(0, 256, size=3)
        distance = float(np.linalg.norm(colour - behind))
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= 120:
            break
    return tuple(int(v) for v in best)


def _unit_star() -> np.ndarray:
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    points = np.stack([radii * np.cos(angles), -radii * np.sin(angles)], axis=1)
    return (points - points.min(axis=0)) / (points.max(axis=0) - points.min(axis=0))


_STAR = _unit_star()  # 10 vertices of a five-pointed star spanning the unit square


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, x: int, y: int, w: int, h: int, colour, rng) -> Any:
    """Draw shape ``name`` filling the pixels x..x+w-1, y..y+h-1 exactly (its box is tight).

    Returns its COCO ``segmentation``: polygons in pixel-edge coordinates (the box is
    ``[x, x + w] x [y, y + h]``), or for the ring and the star a compressed RLE of the pixels drawn.
    """
    x1, y1 = x + w - 1, y + h - 1

    def edges(points) -> list[float]:  # pixel indices x..x1 -> edge coordinates x..x+w
        return [round(v, 2) for px, py in points
                for v in (x + (px - x) * w / max(w - 1, 1), y + (py - y) * h / max(h - 1, 1))]

    def box(left: float, top: float, right: float, bottom: float) -> list[float]:
        return [left, top, right, top, right, bottom, left, bottom]

    if name == "rectangle":
        draw.rectangle((x, y, x1, y1), fill=colour)
        return [box(x, y, x + w, y + h)]
    if name == "ellipse":
        draw.ellipse((x, y, x1, y1), fill=colour)
        angles = np.arange(32) * (2 * np.pi / 32)
        return [[round(float(v), 2) for a in angles
                 for v in (x + w / 2 * (1 + np.cos(a)), y + h / 2 * (1 - np.sin(a)))]]
    if name == "triangle":  # pointing up, down, left or right
        corners = {
            0: [(x, y1), (x1, y1), ((x + x1) / 2, y)],
            1: [(x, y), (x1, y), ((x + x1) / 2, y1)],
            2: [(x1, y), (x1, y1), (x, (y + y1) / 2)],
            3: [(x, y), (x, y1), (x1, (y + y1) / 2)],
        }[int(rng.integers(4))]
        draw.polygon(corners, fill=colour)
        return [edges(corners)]
    if name == "cross":
        tx, ty = max(w // 3, 2), max(h // 3, 2)
        cx, cy = x + (w - tx) // 2, y + (h - ty) // 2
        draw.rectangle((cx, y, cx + tx - 1, y1), fill=colour)
        draw.rectangle((x, cy, x1, cy + ty - 1), fill=colour)
        return [box(cx, y, cx + tx, y + h), box(x, cy, x + w, cy + ty)]
    if name == "star":  # its thin points, rasterised from a polygon, lose pixels at small sizes: RLE
        points = [(x + px * (w - 1), y + py * (h - 1)) for px, py in _STAR]
        draw.polygon(points, fill=colour)
        return _drawn_rle(draw.im.size, lambda mask: mask.polygon(points, fill=1))
    if name == "ring":
        width = max(2, min(w, h) // 5)
        draw.ellipse((x, y, x1, y1), outline=colour, width=width)
        return _drawn_rle(draw.im.size, lambda mask: mask.ellipse((x, y, x1, y1), outline=1, width=width))
    raise ValueError(f"unknown shape {name!r}")


def _drawn_rle(size: tuple[int, int], draw) -> dict[str, Any]:
    """The compressed COCO RLE of what ``draw(ImageDraw)`` draws on an empty ``size`` canvas."""
    canvas = Image.new("L", size)
    draw(ImageDraw.Draw(canvas))
    rle = mask_utils.encode(np.asfortranarray(np.asarray(canvas, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
