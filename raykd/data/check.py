"""Validating a COCO set before training on it: every problem counted, with examples."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from raykd.data.cocofile import MIN_BOX_SIZE, OUTSIDE_TOLERANCE, CocoFile, ImageEntry, Problem, prepare_boxes, read_coco

WARNING_KINDS = ("outside_image", "degenerate_box")
"""Problem kinds the loader handles itself (clipping, dropping): the set stays usable."""

_EXAMPLES = 3


@dataclass
class CheckReport:
    """What :func:`check_coco` found. ``problems`` counts each kind; ``examples`` holds the first
    few ``"key: message"`` of each. Kinds: ``missing_key``, ``malformed``, ``duplicate_image_id``,
    ``duplicate_annotation_id``, ``duplicate_category_id``, ``unknown_image_id``,
    ``unknown_category_id``, ``no_categories``, ``no_images``, ``negative_box_size``, ``missing_image``,
    ``unreadable_image``, ``size_mismatch`` (all fatal) and ``outside_image``, ``degenerate_box`` (warnings)."""

    annotations_file: Path
    images_dir: Path
    images: int = 0  # valid image entries
    annotations: int = 0  # valid annotation entries, crowd regions included
    categories: dict[int, str] = field(default_factory=dict)
    crowd: int = 0
    boxes: int = 0  # training boxes left after dropping degenerate ones (crowd regions excluded)
    images_without_annotations: int = 0  # info, not a problem
    problems: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def fatal(self) -> int:
        return sum(n for kind, n in self.problems.items() if kind not in WARNING_KINDS)

    @property
    def warnings(self) -> int:
        return sum(n for kind, n in self.problems.items() if kind in WARNING_KINDS)

    @property
    def usable(self) -> bool:
        return self.fatal == 0

    def add(self, kind: str, key: str, message: str) -> None:
        self.problems[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < _EXAMPLES:
            examples.append(f"{key}: {message}")

    def summary(self) -> str:
        """One line: usable or not, with the counts."""
        counts = ", ".join(f"{kind} {n}" for kind, n in sorted(self.problems.items()))
        if not self.usable:
            return f"not usable: {self.fatal} fatal problem{'' if self.fatal == 1 else 's'} ({counts})"
        tail = f"; {self.warnings} warnings ({counts}) handled by clipping/dropping" if self.warnings else ""
        return f"usable: {self.images} images, {self.boxes} boxes, {len(self.categories)} classes{tail}"

    def first_fatal(self) -> str | None:
        """``"key: message"`` of the first fatal problem found, if any."""
        return next((ex[0] for kind, ex in self.examples.items() if kind not in WARNING_KINDS and ex), None)

    def format(self) -> str:
        """The multi-line report printed by ``python -m raykd.data check``."""
        ids = ", ".join(str(i) for i in sorted(self.categories)[:12]) + (", ..." if len(self.categories) > 12 else "")
        lines = [
            f"annotations: {self.annotations_file}",
            f"images dir:  {self.images_dir}",
            f"images:      {self.images} ({self.images_without_annotations} without annotations)",
            f"annotations: {self.annotations} ({self.crowd} crowd regions, not training targets)",
            f"categories:  {len(self.categories)} (ids {ids})",
        ]
        if self.problems:
            lines.append("problems:")
            for kind, n in sorted(self.problems.items()):
                level = "warning" if kind in WARNING_KINDS else "FATAL"
                lines.append(f"  {kind:<24} {n:>7}  {level}")
                lines.extend(f"      e.g. {example}" for example in self.examples.get(kind, []))
        else:
            lines.append("problems:    none")
        return "\n".join(lines)


def check_coco(annotations: str | Path, images: str | Path, progress: bool = False,
               masks: bool = False) -> CheckReport:
    """Check an annotation file and its image folder; every image file is opened and decoded.
    With ``masks`` (a Mask R-CNN will train on it) every annotation's ``segmentation`` is
    checked too (:func:`~raykd.data.cocofile.mask_problems`).

    Raises :class:`~raykd.errors.UserError` only when the file cannot be read as COCO JSON at
    all (not JSON, no ``images``/``categories`` list); everything else is counted in the report.
    """
    return check_parsed(read_coco(annotations, masks=masks), images, progress)


def check_parsed(coco: CocoFile, images: str | Path, progress: bool = False) -> CheckReport:
    """:func:`check_coco` of an already parsed file (e.g. a converted VOC or YOLO split)."""
    report = CheckReport(annotations_file=coco.path, images_dir=Path(images))
    report.images = len(coco.images)
    report.annotations = len(coco.annotations)
    report.categories = dict(coco.categories)
    for problem in coco.problems:
        report.add(problem.kind, problem.key, problem.message)

    targets = prepare_boxes(coco)
    report.crowd = targets.crowd
    report.boxes = len(targets.boxes)
    for index in targets.outside:
        message = f"reaches more than {OUTSIDE_TOLERANCE:g} px outside the image (clipped)"
        report.add("outside_image", f"annotations[{index}].bbox", message)
    for index in targets.degenerate:
        message = f"width or height <= {MIN_BOX_SIZE:g} px after clipping (dropped)"
        report.add("degenerate_box", f"annotations[{index}].bbox", message)
    annotated = set(coco.annotations.image_id.tolist())
    report.images_without_annotations = sum(image.id not in annotated for image in coco.images)

    if not report.images_dir.is_dir():
        report.add("missing_image", "--images", f"image folder not found: {report.images_dir}")
        return report
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda image: _check_image(report.images_dir, image), coco.images)
        bar = tqdm(results, total=len(coco.images), desc="images", unit="img", disable=not progress, leave=False)
        for image, problem in zip(coco.images, bar):
            if problem is not None:
                report.add(problem.kind, f"images[{image.index}].file_name", problem.message)
    return report


def _check_image(images_dir: Path, image: ImageEntry) -> Problem | None:
    """Open, verify and decode one image; the problem found, if any."""
    path = images_dir / image.file_name
    expected = (image.width, image.height)
    try:
        with Image.open(path) as img:
            img.verify()  # structure and checksums; must come straight after open
        with Image.open(path) as img:
            size = img.size
            if size == expected[::-1] and img.getexif().get(0x0112) in (5, 6, 7, 8):
                size = expected  # annotated on the EXIF-rotated view, which the loader shows
            img.draft("RGB", (max(size[0] // 8, 1), max(size[1] // 8, 1)))  # JPEG: decode all, cheaply
            img.load()
    except FileNotFoundError:
        return Problem("missing_image", "", f"image file not found: {path}")
    except Exception as err:  # noqa: BLE001 - any decoder failure means the file is unusable
        return Problem("unreadable_image", "", f"cannot read {path}: {err}")
    if size != expected:
        return Problem(
            "size_mismatch", "", f"{path} is {size[0]}x{size[1]}, the annotations say {expected[0]}x{expected[1]}"
        )
    return None
