"""Writing a COCO set as a Pascal VOC folder and as a YOLO set (tests and the format comparison).

``python tests/support/format_tools.py SYNTH_DIR OUT_DIR`` writes ``OUT_DIR/voc`` (one VOC root, splits
``train`` and ``val``) and ``OUT_DIR/yolo`` (``data.yaml``) from a synthetic set's COCO files.
Boxes must be whole pixels for VOC (it writes 1-based inclusive integers); crowd regions are
written as VOC ``difficult`` objects and cannot be written as YOLO.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from xml.sax.saxutils import escape

import yaml


def _load(annotations: Path) -> tuple[dict, list[dict]]:
    coco = json.loads(Path(annotations).read_text())
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    return coco, categories


def _boxes_of(coco: dict) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    return by_image


def coco_to_voc(annotations: Path, images: Path, root: Path, split: str, prefix: str = "") -> list[str]:
    """Write the COCO split as ``root/{Annotations,JPEGImages}`` and ``ImageSets/Main/<split>.txt``
    (VOC ``xmin = x + 1``, ``xmax = x + w``: 1-based, inclusive), image files named ``prefix`` +
    their COCO name (splits share one folder); returns the class names in id order."""
    coco, categories = _load(annotations)
    names = {c["id"]: c["name"] for c in categories}
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    stems, boxes = [], _boxes_of(coco)
    for image in coco["images"]:
        name = f"{prefix}{Path(image['file_name']).name}"
        stem = Path(name).stem
        stems.append(stem)
        shutil.copyfile(images / image["file_name"], root / "JPEGImages" / name)
        objects = []
        for ann in boxes[image["id"]]:
            x, y, w, h = ann["bbox"]
            assert all(float(v).is_integer() for v in (x, y, w, h)), f"VOC needs whole pixels, got {ann['bbox']}"
            objects.append(
                f"<object><name>{escape(names[ann['category_id']])}</name><pose>Unspecified</pose>"
                f"<truncated>0</truncated><difficult>{int(ann.get('iscrowd', 0))}</difficult><bndbox>"
                f"<xmin>{int(x) + 1}</xmin><ymin>{int(y) + 1}</ymin><xmax>{int(x + w)}</xmax><ymax>{int(y + h)}</ymax>"
                f"</bndbox></object>")
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><folder>JPEGImages</folder><filename>{name}</filename>"
            f"<size><width>{image['width']}</width><height>{image['height']}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{''.join(objects)}</annotation>\n")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in stems))
    return [c["name"] for c in categories]


def coco_to_yolo(annotations: Path, images: Path, root: Path, split: str) -> Path:
    """Write the COCO split as ``root/images/<split>/`` and ``root/labels/<split>/*.txt``
    (``class cx cy w h`` normalised, class = rank of the category id) and (re)write
    ``root/data.yaml``; an image without boxes gets no label file."""
    coco, categories = _load(annotations)
    index = {c["id"]: i for i, c in enumerate(categories)}
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    boxes = _boxes_of(coco)
    for image in coco["images"]:
        name = Path(image["file_name"]).name
        shutil.copyfile(images / image["file_name"], root / "images" / split / name)
        lines = []
        for ann in boxes[image["id"]]:
            assert not ann.get("iscrowd"), "YOLO has no crowd regions"
            x, y, w, h = ann["bbox"]
            W, H = image["width"], image["height"]
            lines.append(f"{index[ann['category_id']]} {(x + w / 2) / W!r} {(y + h / 2) / H!r} {w / W!r} {h / H!r}\n")
        if lines:
            (root / "labels" / split / f"{Path(name).stem}.txt").write_text("".join(lines))
    data_yaml = root / "data.yaml"
    raw = yaml.safe_load(data_yaml.read_text()) if data_yaml.is_file() else {"path": "."}
    raw[split] = f"images/{split}"
    raw["names"] = [c["name"] for c in categories]
    data_yaml.write_text(yaml.safe_dump(raw, sort_keys=False))
    return data_yaml


def write_copies(synth: Path, out: Path) -> list[str]:
    """VOC and YOLO copies of a synthetic set's train and val splits; returns the class names."""
    for split in ("train", "val"):
        names = coco_to_voc(synth / "annotations" / f"{split}.json", synth / "images" / split, out / "voc", split,
                            prefix=f"{split}_")
        coco_to_yolo(synth / "annotations" / f"{split}.json", synth / "images" / split, out / "yolo", split)
    return names


if __name__ == "__main__":
    classes = write_copies(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}/voc and {sys.argv[2]}/yolo/data.yaml; classes in id order: {','.join(classes)}")
