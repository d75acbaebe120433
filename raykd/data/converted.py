"""Any configured split as a COCO file: VOC and YOLO splits converted once and cached.

A VOC or YOLO split is converted to COCO JSON under ``CACHE_DIR/data/`` in a file named by a
hash of its sources (:meth:`~raykd.data.sources.Sources.digest`: the annotation files' bytes,
the image files' sizes and times, the reader version and split options), so the trials of a
search read the file the driver wrote instead of parsing the set again, and a changed set is
converted again. The trainer and pycocotools then read that file as any COCO file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raykd.config import CocoSplit, SplitConfig, VocSplit, YoloSplit
from raykd.data import voc, yolo
from raykd.errors import UserError


@dataclass(frozen=True)
class CocoPaths:
    """A split as COCO: the annotation file and the folder its ``file_name`` entries are under."""

    annotations: Path
    images: Path


@dataclass
class Converted:
    """A VOC or YOLO split: the hash of its sources, where its images are, and its reader."""

    digest: str  # SHA-256 of the sources and options
    label: str  # e.g. "voc-train"
    images: Path
    read: Callable[[], dict[str, Any]]  # the COCO dict; UserError at the first problem

    def cache_path(self, cache_dir: str | Path) -> Path:
        return Path(cache_dir) / "data" / f"{self.label}-{self.digest[:16]}.json"


def source(split: VocSplit | YoloSplit) -> Converted:
    """Hash a VOC or YOLO split's sources (the split file, folders and keys are checked here);
    nothing is parsed until ``read()``."""
    label = f"{split.format}-{''.join(c if c.isalnum() or c in '-_.' else '_' for c in split.split)}"
    if isinstance(split, VocSplit):
        digest = voc.voc_sources(split.root, split.split).digest("voc", voc.READER_VERSION, split.split,
                                                                 split.classes)
        return Converted(digest, label, Path(split.root) / "JPEGImages",
                         lambda: voc.read_voc(split.root, split.split, split.classes))
    files = yolo.yolo_split(split.yaml, split.split)
    digest = yolo.yolo_sources(files).digest("yolo", yolo.READER_VERSION, split.split)
    return Converted(digest, label, files.images_dir, lambda: yolo.read_yolo(files))


def to_json(coco: dict[str, Any]) -> bytes:
    return json.dumps(coco, separators=(",", ":")).encode()


def coco_paths(splits: Sequence[SplitConfig], cache_dir: str | Path) -> list[CocoPaths]:
    """Each split as a COCO file. VOC and YOLO splits are read from the cache when it holds
    their sources' conversion, else converted; every split is converted before any file is
    written, so a bad one leaves the cache as it was. Files are written atomically."""
    out: list[CocoPaths] = []
    pending: list[tuple[Path, bytes]] = []
    for split in splits:
        if isinstance(split, CocoSplit):
            out.append(CocoPaths(Path(split.annotations), Path(split.images)))
            continue
        converted = source(split)
        path = converted.cache_path(cache_dir)
        if not path.is_file():
            pending.append((path, to_json(converted.read())))
        out.append(CocoPaths(path, converted.images))
    for path, data in pending:
        write_json(data, path)
    return out


def write_json(data: bytes, path: Path) -> Path:
    """Write ``data`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"cannot write the converted COCO file ({err.strerror})", file=path) from None
    return path
