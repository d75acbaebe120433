"""The annotation index: a COCO file's training targets and evaluation ground truth as flat
arrays, built once per file content and memory-mapped by every later reader.

A COCO-train-sized file (118k images, ~860k boxes with polygons) takes seconds and more than a
GB to parse; every rank of every trial of a search reads the same file. The first reader parses
and validates it (:func:`~raykd.data.cocofile.read_coco`) and writes the index under
``ROOT = cache_dir/annotations``; every later reader (another rank, trial or search, the
driver's check, the teacher-cache key) stats the file, finds the index and memory-maps it::

    ROOT/stat-<key>.json             {"digest": sha256 of the file}; key = hash of the file's
                                     resolved path, size, mtime_ns, ctime_ns and inode
    ROOT/<digest[:32]>-<variant>/    meta.json and one .npy per array; variant "boxes", or
                                     "masks" (also every annotation's segmentation, as JSON)

The file is hashed only when its stat key is new (a changed file gets a new key, so a new
digest and index). An index directory appears by one ``rename`` of a complete temporary one;
``meta.json`` records each array's file size and BLAKE2b digest, checked on every load, so a
truncated or corrupted index is rebuilt, never used. A file lock per stat key makes concurrent
builders (ranks starting together) build it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from raykd.data.cocofile import MIN_BOX_SIZE, OUTSIDE_TOLERANCE, CocoFile, prepare_boxes, read_coco
from raykd.errors import UserError

INDEX_VERSION = 1
"""Bumped when the arrays or their meaning change; older indexes are then rebuilt."""

_ARRAYS = (
    # images, in file order: N
    "image_ids", "image_sizes", "image_keys", "name_bytes", "name_offsets",
    # training boxes (crowd regions and degenerate boxes left out), image by image: A
    "boxes", "box_categories", "box_offsets", "box_gt",
    # every valid annotation as COCOeval reads it, crowd regions included: M
    "gt_ids", "gt_image_ids", "gt_categories", "gt_bbox", "gt_area", "gt_crowd", "gt_keys",
)
_MASK_ARRAYS = ("seg_bytes", "seg_offsets")
_EXAMPLES = 3


class DataWarning(UserWarning):
    """Something in a dataset was dropped or changed (e.g. degenerate boxes)."""


@dataclass(frozen=True)
class AnnotationIndex:
    """One COCO file's annotations as arrays (memory-mapped when read from the cache).

    Images ``[N]``: ``image_ids`` int64, ``image_sizes`` int64 ``[N, 2]`` (width, height in
    pixels), ``image_keys`` int64 (position in the file's ``images`` list), file names as UTF-8
    ``name_bytes`` cut at ``name_offsets`` ``[N + 1]``.
    Training boxes ``[A]``: ``boxes`` float32 ``[A, 4]`` xyxy in pixels of the original image,
    clipped to it; ``box_categories`` int64 (the file's category ids); image ``j``'s boxes are
    ``box_offsets[j]:box_offsets[j + 1]``; ``box_gt`` int64: each box's row in the ``gt_*`` arrays.
    Ground truth ``[M]`` (every valid annotation, crowd regions and degenerate boxes included):
    ``gt_ids``, ``gt_image_ids``, ``gt_categories`` int64, ``gt_bbox`` float64 ``[M, 4]`` xywh,
    ``gt_area`` float64 (the file's, else w*h), ``gt_crowd`` uint8, ``gt_keys`` int64 (position in
    the file's ``annotations`` list). With ``masks``: annotation ``g``'s segmentation as JSON in
    ``seg_bytes[seg_offsets[g]:seg_offsets[g + 1]]``.
    """

    path: Path
    digest: str  # sha256 of the file's bytes
    masks: bool
    categories: dict[int, str]  # category id -> name, in the file's order
    arrays: dict[str, np.ndarray]
    degenerate: int  # training boxes dropped as degenerate
    degenerate_examples: tuple[int, ...]  # their first few positions in the file's annotations
    outside: int  # boxes clipped that reached more than OUTSIDE_TOLERANCE px past the border
    crowd: int

    @property
    def num_images(self) -> int:
        return len(self.arrays["image_ids"])

    def file_name(self, i: int) -> str:
        """The file name of image ``i`` (file order), relative to the image folder."""
        offsets = self.arrays["name_offsets"]
        return bytes(self.arrays["name_bytes"][offsets[i]:offsets[i + 1]]).decode("utf-8")

    def file_names(self) -> Iterator[str]:
        blob = bytes(self.arrays["name_bytes"])
        offsets = self.arrays["name_offsets"].tolist()
        for start, stop in zip(offsets[:-1], offsets[1:]):
            yield blob[start:stop].decode("utf-8")

    def segmentation(self, g: int) -> Any:
        """Annotation row ``g``'s ``segmentation`` as the file gives it (polygons or RLE)."""
        if not self.masks:
            raise ValueError("this index was built without segmentations (masks=False)")
        offsets = self.arrays["seg_offsets"]
        return _loads(bytes(self.arrays["seg_bytes"][offsets[g]:offsets[g + 1]]))

    def coco_dataset(self, *, segmentations: bool = False) -> dict[str, Any]:
        """The file as a COCO dict for COCOeval: images (id, file_name, width, height), categories and every
        valid annotation (id, image_id, category_id, bbox, area, iscrowd; ``segmentations``: also
        its segmentation, which needs an index built with masks)."""
        a = self.arrays
        images = [{"id": i, "file_name": name, "width": w, "height": h} for i, name, (w, h) in
                  zip(a["image_ids"].tolist(), self.file_names(), a["image_sizes"].tolist())]
        columns = zip(a["gt_ids"].tolist(), a["gt_image_ids"].tolist(), a["gt_categories"].tolist(),
                      a["gt_bbox"].tolist(), a["gt_area"].tolist(), a["gt_crowd"].tolist())
        annotations = [{"id": i, "image_id": im, "category_id": c, "bbox": b, "area": ar, "iscrowd": cr}
                       for i, im, c, b, ar, cr in columns]
        if segmentations:
            for g, ann in enumerate(annotations):
                ann["segmentation"] = self.segmentation(g)
        categories = [{"id": i, "name": n} for i, n in self.categories.items()]
        return {"images": images, "annotations": annotations, "categories": categories}

    def warn_dropped(self) -> None:
        """One :class:`DataWarning` counting degenerate boxes dropped and boxes clipped, if any."""
        parts = []
        if self.degenerate:
            first = ", ".join(f"annotations[{i}]" for i in self.degenerate_examples)
            parts.append(f"dropped {self.degenerate} degenerate boxes (width or height <= {MIN_BOX_SIZE:g} px "
                         f"after clipping to the image; e.g. {first})")
        if self.outside:
            parts.append(f"clipped {self.outside} boxes reaching more than {OUTSIDE_TOLERANCE:g} px outside the image")
        if parts:
            warnings.warn(f"{self.path}: {'; '.join(parts)}", DataWarning, stacklevel=3)


def _loads(raw: bytes) -> Any:
    import orjson

    return orjson.loads(raw)


def index_from_coco(coco: CocoFile, *, masks: bool) -> AnnotationIndex:
    """The index of an already parsed and valid file (no problems; :func:`read_coco`)."""
    import orjson

    targets = prepare_boxes(coco)
    anns = coco.annotations
    names = [image.file_name.encode("utf-8") for image in coco.images]
    arrays: dict[str, np.ndarray] = {
        "image_ids": np.fromiter((i.id for i in coco.images), dtype=np.int64, count=len(coco.images)),
        "image_sizes": np.asarray([(i.width, i.height) for i in coco.images], dtype=np.int64).reshape(-1, 2),
        "image_keys": np.fromiter((i.index for i in coco.images), dtype=np.int64, count=len(coco.images)),
        "name_bytes": np.frombuffer(b"".join(names), dtype=np.uint8),
        "name_offsets": _offsets(len(n) for n in names),
        "boxes": targets.boxes,
        "box_categories": targets.category_ids,
        "box_offsets": targets.offsets,
        "box_gt": targets.rows,
        "gt_ids": anns.id,
        "gt_image_ids": anns.image_id,
        "gt_categories": anns.category_id,
        "gt_bbox": anns.bbox,
        "gt_area": anns.area,
        "gt_crowd": anns.iscrowd.astype(np.uint8),
        "gt_keys": anns.index,
    }
    if masks:
        entries = coco.data["annotations"]
        segs = [orjson.dumps(entries[i]["segmentation"]) for i in anns.index.tolist()]
        arrays["seg_bytes"] = np.frombuffer(b"".join(segs), dtype=np.uint8)
        arrays["seg_offsets"] = _offsets(len(s) for s in segs)
    return AnnotationIndex(path=coco.path, digest=coco.digest, masks=masks, categories=dict(coco.categories),
                           arrays=arrays, degenerate=len(targets.degenerate),
                           degenerate_examples=tuple(targets.degenerate[:_EXAMPLES]), outside=len(targets.outside),
                           crowd=targets.crowd)


def _offsets(lengths) -> np.ndarray:
    out = np.zeros(1, dtype=np.int64)
    return np.concatenate([out, np.cumsum(np.fromiter(lengths, dtype=np.int64))])


def load_index(path: str | Path, root: str | Path | None, *, masks: bool = False) -> AnnotationIndex:
    """The index of the COCO file ``path``: read from ``root`` when a valid one exists for the
    file as it is now, else parsed, validated (the first problem raised as a
    :class:`~raykd.errors.UserError` naming the file and key) and written there. ``root`` None:
    parsed and kept in memory only. ``masks``: with every annotation's segmentation, checked as a
    Mask R-CNN needs. Concurrent callers wait for one builder; a refused file leaves nothing."""
    path = Path(path)
    if root is None:
        return _parse(path, masks)
    root = Path(root)
    key = stat_key(path)
    found = cached_index(path, root, masks, key=key)
    if found is not None:
        return found
    created = [p for p in (root, *root.parents) if not p.exists()]
    try:
        with _lock(root, key):
            found = cached_index(path, root, masks, key=key)
            if found is not None:
                return found
            index = _parse(path, masks)
            _save(root, key, index)
            return index
    except UserError:  # a refused file leaves nothing behind
        (root / f".stat-{key}.lock").unlink(missing_ok=True)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    except OSError as err:
        warnings.warn(f"{root}: cannot write the annotation index there ({err.strerror}); reading {path} "
                      "without one", DataWarning, stacklevel=2)
        return _parse(path, masks)


def cached_index(path: str | Path, root: str | Path, masks: bool = False, *, key: str | None = None
                 ) -> AnnotationIndex | None:
    """The valid index of ``path`` as it is now under ``root`` (``key``: its :func:`stat_key`), or
    None. A masks index serves a boxes-only reader too."""
    path, root = Path(path), Path(root)
    pointer = _read_json(root / f"stat-{key or stat_key(path)}.json")
    if pointer is None or pointer.get("version") != INDEX_VERSION or not isinstance(pointer.get("digest"), str):
        return None
    for variant in ((True,) if masks else (False, True)):
        index = _read_index(_folder(root, pointer["digest"], variant))
        if index is not None:
            return index if index.path == path else AnnotationIndex(**{**index.__dict__, "path": path})
    return None


def store_index(root: str | Path, key: str, index: AnnotationIndex) -> None:
    """Write ``index`` under ``root`` for the file whose :func:`stat_key` was ``key`` when it was
    read (taken before parsing: a file changed since gets another key, so is read again)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root, key):
        _save(root, key, index)


def _lock(root: Path, key: str) -> FileLock:
    root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(root / f".stat-{key}.lock"))


def annotation_digest(path: str | Path, root: str | Path | None) -> str:
    """sha256 of the file's bytes, from its stat pointer under ``root`` when the file has not
    changed since it was last hashed there (no read), else by reading it once."""
    path = Path(path)
    if not path.is_file():
        raise UserError("annotation file not found", file=path)
    if root is not None:
        pointer = _read_json(Path(root) / f"stat-{stat_key(path)}.json")
        if pointer is not None and pointer.get("version") == INDEX_VERSION and isinstance(pointer.get("digest"), str):
            return pointer["digest"]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _parse(path: Path, masks: bool) -> AnnotationIndex:
    coco = read_coco(path, masks=masks)
    coco.raise_first_problem()
    return index_from_coco(coco, masks=masks)


def stat_key(path: str | Path) -> str:
    """Identity of the file as it is now (resolved path, size, mtime, ctime, inode), without reading it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError("annotation file not found", file=path) from None
    ident = f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}"
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def _folder(root: Path, digest: str, masks: bool) -> Path:
    return root / f"{digest[:32]}-{'masks' if masks else 'boxes'}"


def _save(root: Path, key: str, index: AnnotationIndex) -> None:
    """Write ``index`` as ``root/<digest>-<variant>/`` by one rename of a complete folder, then
    the stat pointer ``key`` to it."""
    final = _folder(root, index.digest, index.masks)
    if _read_index(final) is None:
        _write_folder(root, final, index)
    _write_json(root / f"stat-{key}.json", {"digest": index.digest, "version": INDEX_VERSION})


def _write_folder(root: Path, final: Path, index: AnnotationIndex) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-index-", dir=root))
    try:
        files = {}
        for name, array in index.arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
            files[name] = {"bytes": (tmp / f"{name}.npy").stat().st_size, "blake2b": _file_hash(tmp / f"{name}.npy")}
        meta = {"version": INDEX_VERSION, "digest": index.digest, "masks": index.masks, "source": str(index.path),
                "categories": [[i, n] for i, n in index.categories.items()], "degenerate": index.degenerate,
                "degenerate_examples": list(index.degenerate_examples), "outside": index.outside,
                "crowd": index.crowd, "files": files}
        _write_json(tmp / "meta.json", meta)
        if final.exists():  # a corrupt one (checked above): replaced
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # another process renamed its complete index there first
            if _read_index(final) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_index(folder: Path) -> AnnotationIndex | None:
    """The index in ``folder`` if it is complete and every array matches its recorded size and
    hash; None otherwise (missing, partial, truncated, corrupted, other version)."""
    meta = _read_json(folder / "meta.json")
    if meta is None or meta.get("version") != INDEX_VERSION:
        return None
    names = _ARRAYS + (_MASK_ARRAYS if meta.get("masks") else ())
    files = meta.get("files", {})
    arrays = {}
    try:
        for name in names:
            file = folder / f"{name}.npy"
            if file.stat().st_size != files[name]["bytes"] or _file_hash(file) != files[name]["blake2b"]:
                return None
            arrays[name] = np.load(file, mmap_mode="r")  # pickles refused: allow_pickle defaults to False
        return AnnotationIndex(path=Path(meta["source"]), digest=meta["digest"], masks=bool(meta["masks"]),
                               categories={int(i): str(n) for i, n in meta["categories"]}, arrays=arrays,
                               degenerate=int(meta["degenerate"]),
                               degenerate_examples=tuple(meta["degenerate_examples"]), outside=int(meta["outside"]),
                               crowd=int(meta["crowd"]))
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _file_hash(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(value, fh)
    os.replace(tmp, path)
