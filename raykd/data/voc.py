"""Pascal VOC folders read as they are, into the COCO form raykd trains and evaluates on.

Layout under ``root``::

    Annotations/<id>.xml           one per image: <filename>, <size>, <object>s
    JPEGImages/<image>             any of IMAGE_SUFFIXES
    ImageSets/Main/<split>.txt     the split: one image id a line

Coordinates: VOC writes ``xmin ymin xmax ymax`` as 1-based, inclusive pixel indices (a box
over the whole ``W`` px image is ``xmin=1, xmax=W``). They become pixel edges as detectron2's
Pascal VOC loader makes them: xyxy ``(xmin - 1, ymin - 1, xmax, ymax)``, so COCO
``x = xmin - 1``, ``w = xmax - xmin + 1`` (exact; no rounding). A box with ``xmax < xmin`` or
reaching more than 1 px past the border (``xmin < 0`` or ``xmax > W + 1``) is refused.

``difficult`` objects become crowd regions (``iscrowd=1``): the loader keeps them out of the
training targets and pycocotools ignores detections on them, as VOC's own evaluation does.

Class names: ``classes`` when given (category ``i + 1`` is ``classes[i]``), else every
``<name>`` in ``Annotations/*.xml`` (the whole folder, so every split of one root gets the same
categories), sorted. The image of an XML: ``JPEGImages/<filename>`` as the XML names it, else
the one file ``JPEGImages/<id>.*`` of an image suffix. Image size: the XML's ``<size>``, else
(missing or 0, as some labelling tools write) read from the image's header.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raykd.data.images import header_size
from raykd.data.sources import IMAGE_SUFFIXES, CocoBuilder, Sources, check_box, read_bytes, read_lines
from raykd.errors import UserError

READER_VERSION = 1
"""Bump when the conversion changes: converted files in the cache are keyed by it."""


def split_file(root: Path, split: str) -> Path:
    return root / "ImageSets" / "Main" / f"{split}.txt"


def voc_sources(root: str | Path, split: str) -> Sources:
    """The files the split is read from: the split file, every XML and every image file."""
    root = Path(root)
    _check_layout(root, split)
    texts = [split_file(root, split), *sorted((root / "Annotations").glob("*.xml"))]
    images = sorted(p for p in (root / "JPEGImages").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return Sources(base=root, texts=texts, images=images)


def read_voc(root: str | Path, split: str, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """The split as a COCO dict (images in split-file order, ids from 1). Raises
    :class:`UserError` naming the file (and line or object) at the first problem."""
    root = Path(root)
    _check_layout(root, split)
    ids = _split_ids(root, split)
    images = _image_files(root / "JPEGImages")
    xml_dir = root / "Annotations"
    if classes is None:
        parsed = {path.stem: _parse(path) for path in sorted(xml_dir.glob("*.xml"))}
        names = sorted({_name(obj, xml_dir / f"{stem}.xml", i)
                        for stem, tree in parsed.items() for i, obj in enumerate(tree.findall("object"))})
    else:
        parsed, names = {}, list(classes)
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise UserError(f"expected each class name once, got {', '.join(map(repr, twice))} more than once",
                            key="classes")
    if not names:
        raise UserError("expected at least one object <name> in the XML files, found none", file=xml_dir)
    label = {name: i for i, name in enumerate(names)}
    builder = CocoBuilder(class_names=names)
    for line, image_id in ids:
        path = xml_dir / f"{image_id}.xml"
        if image_id not in parsed and not path.is_file():
            raise UserError(f"image {image_id!r} listed in the split has no annotation file {path}",
                            file=split_file(root, split), key=f"line {line}")
        tree = parsed[image_id] if image_id in parsed else _parse(path)
        file_name = _image_name(tree, image_id, images, path)
        width, height = _size(tree, path, root / "JPEGImages" / file_name)
        number = builder.add_image(file_name, width, height)
        for i, obj in enumerate(tree.findall("object")):
            name = _name(obj, path, i)
            if name not in label:
                raise UserError(f"expected one of the classes {names}, got {name!r}", file=path,
                                key=f"object[{i}].name")
            xyxy, written = _box(obj, path, i)
            check_box(xyxy, width, height, path, f"object[{i}].bndbox", written)
            builder.add_box(number, label[name], xyxy, ignore=_flag(obj, "difficult", path, i))
    return builder.to_dict()


def _check_layout(root: Path, split: str) -> None:
    if not root.is_dir():
        raise UserError("expected a Pascal VOC folder (Annotations/, JPEGImages/, ImageSets/Main/), not found",
                        file=root)
    for sub in ("Annotations", "JPEGImages"):
        if not (root / sub).is_dir():
            raise UserError(f"expected the folder {sub}/ of a Pascal VOC set, not found", file=root / sub)
    if not split_file(root, split).is_file():
        found = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))
        raise UserError(f"split file not found (splits there: {', '.join(found) or 'none'})",
                        file=split_file(root, split))


def _split_ids(root: Path, split: str) -> list[tuple[int, str]]:
    """(line number, image id) of each non-blank line of the split file."""
    path = split_file(root, split)
    ids = []
    for number, text in enumerate(read_lines(path), start=1):
        fields = text.split()
        if len(fields) > 1:
            raise UserError(f"expected one image id a line, got {len(fields)} fields: {text.strip()!r}",
                            file=path, key=f"line {number}")
        if fields:
            ids.append((number, fields[0]))
    if not ids:
        raise UserError("expected at least one image id, the split file lists none", file=path)
    return ids


def _image_files(folder: Path) -> dict[str, list[str]]:
    """Image file names of ``folder`` by stem."""
    by_stem: dict[str, list[str]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(path.stem, []).append(path.name)
    return by_stem


def _parse(path: Path) -> ET.Element:
    try:
        return ET.fromstring(read_bytes(path))
    except ET.ParseError as err:
        line, column = err.position
        raise UserError(f"expected Pascal VOC XML, the file is not well-formed XML at line {line} column {column + 1}",
                        file=path) from None


def _name(obj: ET.Element, path: Path, index: int) -> str:
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise UserError("expected the object's class <name>, missing or empty", file=path, key=f"object[{index}].name")
    return name


def _image_name(tree: ET.Element, image_id: str, images: dict[str, list[str]], xml: Path) -> str:
    named = Path((tree.findtext("filename") or "").strip()).name
    if named and named in images.get(Path(named).stem, []):
        return named
    candidates = images.get(image_id, [])
    if len(candidates) != 1:
        found = f"found {', '.join(candidates)}" if candidates else "found none"
        raise UserError(f"expected one image file JPEGImages/{named or image_id + '.*'} or JPEGImages/{image_id}.* "
                        f"({found})", file=xml, key="filename")
    return candidates[0]


def _size(tree: ET.Element, xml: Path, image: Path) -> tuple[int, int]:
    values = []
    for key in ("width", "height"):
        text = (tree.findtext(f"size/{key}") or "0").strip()
        try:
            values.append(int(float(text)))
        except ValueError:
            raise UserError(f"expected a whole number of pixels, got {text!r}", file=xml, key=f"size.{key}") from None
    if values[0] > 0 and values[1] > 0:
        return values[0], values[1]
    return header_size(image)


def _box(obj: ET.Element, path: Path, index: int) -> tuple[tuple[float, float, float, float], str]:
    """(xyxy in pixel edges, the box as written) of an object's ``<bndbox>``."""
    key = f"object[{index}].bndbox"
    box = obj.find("bndbox")
    if box is None:
        raise UserError("expected a <bndbox> with xmin, ymin, xmax, ymax, missing", file=path, key=key)
    values = []
    for corner in ("xmin", "ymin", "xmax", "ymax"):
        text = (box.findtext(corner) or "").strip()
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise UserError(f"expected a number of pixels, got {text!r}", file=path, key=f"{key}.{corner}")
        values.append(value)
    xmin, ymin, xmax, ymax = values
    written = f"xmin {xmin:g} ymin {ymin:g} xmax {xmax:g} ymax {ymax:g}"
    return (xmin - 1.0, ymin - 1.0, xmax, ymax), written


def _flag(obj: ET.Element, tag: str, path: Path, index: int) -> bool:
    text = (obj.findtext(tag) or "0").strip()
    if text not in ("0", "1"):
        raise UserError(f"expected 0 or 1, got {text!r}", file=path, key=f"object[{index}].{tag}")
    return text == "1"
