"""Pascal VOC and YOLO sets read as they are: the same set written as COCO, VOC and YOLO gives
the same boxes, labels and pycocotools mAP; VOC's 1-based coordinates and difficult flags;
YOLO's names and missing label files; the converted-file cache; the check and convert commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from format_tools import coco_to_voc, coco_to_yolo  # noqa: E402
from PIL import Image

from raykd.config import VocSplit, YoloSplit, experiment_from_dict
from raykd.data import CocoDetection
from raykd.data.converted import coco_paths
from raykd.metric_names import BOX_METRICS as METRICS
from raykd.train.evaluate import coco_metrics

CATEGORIES = [{"id": 2, "name": "cat"}, {"id": 5, "name": "dog"}]  # id order = sorted names, as VOC's default
IMAGES = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
          {"id": 2, "file_name": "b.png", "width": 32, "height": 48},
          {"id": 3, "file_name": "c.png", "width": 50, "height": 50},
          {"id": 4, "file_name": "d.png", "width": 36, "height": 36}]  # no objects
# (image id, category id, xywh in pixels)
BOXES = [(1, 2, [0, 0, 40, 30]), (1, 5, [3, 4, 10, 7]), (2, 5, [5, 6, 20, 30]), (2, 2, [1, 30, 9, 17]),
         (3, 2, [12, 13, 25, 11]), (3, 5, [30, 2, 19, 40]), (3, 5, [0, 45, 8, 5])]
# (image, class name, xywh in pixels, score): near hits, a wrong class, a miss, a duplicate
PREDICTIONS = [("a", "cat", [0, 1, 39, 29], 0.9), ("a", "dog", [3, 4, 10, 7], 0.7), ("a", "cat", [3, 4, 10, 7], 0.4),
               ("b", "dog", [6, 7, 18, 28], 0.8), ("b", "cat", [2, 28, 9, 18], 0.6), ("b", "dog", [5, 6, 20, 29], 0.3),
               ("c", "cat", [11, 13, 25, 12], 0.85), ("c", "dog", [33, 5, 15, 30], 0.5), ("c", "dog", [0, 0, 9, 9], 0.2),
               ("d", "dog", [3, 3, 10, 10], 0.1)]


def _coco_set(folder: Path, crowd: tuple[int, ...] = ()) -> tuple[Path, Path]:
    """The small COCO set: PNG images of the declared sizes, boxes of BOXES (``crowd``: their
    indices marked iscrowd=1)."""
    images = folder / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image in IMAGES:
        pixels = rng.integers(0, 255, (image["height"], image["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / image["file_name"])
    anns = [{"id": i + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3],
             "iscrowd": int(i in crowd)} for i, (img, cat, box) in enumerate(BOXES)]
    path = folder / "train.json"
    path.write_text(json.dumps({"images": IMAGES, "annotations": anns, "categories": CATEGORIES}))
    return path, images


def _datasets(tmp_path: Path, crowd: tuple[int, ...] = ()) -> dict[str, CocoDetection]:
    """The set as COCO, VOC and YOLO (YOLO only without crowd regions), each read by raykd."""
    annotations, images = _coco_set(tmp_path / "coco", crowd)
    coco_to_voc(annotations, images, tmp_path / "voc", "train")
    splits = {"voc": VocSplit(format="voc", root=str(tmp_path / "voc"), split="train")}
    if not crowd:
        data_yaml = coco_to_yolo(annotations, images, tmp_path / "yolo", "train")
        splits["yolo"] = YoloSplit(format="yolo", yaml=str(data_yaml), split="train")
    out = {"coco": CocoDetection(annotations, images, image_size=50, train=False)}
    for fmt, split in splits.items():
        (paths,) = coco_paths([split], tmp_path / "cache")
        out[fmt] = CocoDetection(paths.annotations, paths.images, image_size=50, train=False)
    return out


def _metrics(dataset: CocoDetection, predictions=PREDICTIONS) -> dict[str, float]:
    """pycocotools' metrics of PREDICTIONS, mapped to the data set's image and category ids by
    image file stem and class name."""
    coco = dataset.coco
    image_id = {Path(img["file_name"]).stem: img["id"] for img in coco.dataset["images"]}
    cat_id = {c["name"]: c["id"] for c in coco.dataset["categories"]}
    results = [{"image_id": image_id[stem], "category_id": cat_id[name], "bbox": box, "score": score}
               for stem, name, box, score in predictions]
    return coco_metrics(coco, results, dataset.image_ids)


def test_same_set_as_coco_voc_and_yolo_gives_same_boxes_labels_and_map(tmp_path):
    sets = _datasets(tmp_path)
    reference = sets["coco"]
    assert reference.class_names == ["cat", "dog"]
    base = _metrics(reference)
    assert 0.2 < base["bbox_mAP"] < 0.95  # neither trivial nor perfect: the comparison means something
    for fmt in ("voc", "yolo"):
        dataset = sets[fmt]
        assert dataset.class_names == reference.class_names, fmt
        assert len(dataset) == len(reference) == 4
        for i in range(len(reference)):
            (image, target), (ref_image, ref_target) = dataset[i], reference[i]
            assert image.shape == ref_image.shape
            assert target["orig_size"].tolist() == ref_target["orig_size"].tolist()
            np.testing.assert_allclose(target["boxes"].numpy(), ref_target["boxes"].numpy(), atol=1e-4)
            assert target["labels"].tolist() == ref_target["labels"].tolist()
        gt = sorted((a["bbox"], a["area"]) for a in dataset.coco.dataset["annotations"])
        ref_gt = sorted((a["bbox"], a["area"]) for a in reference.coco.dataset["annotations"])
        np.testing.assert_allclose(np.array([b + [a] for b, a in gt]), np.array([b + [a] for b, a in ref_gt]),
                                   atol=1e-9)
        metrics = _metrics(dataset)
        for name in METRICS:
            assert metrics[name] == pytest.approx(base[name], abs=1e-6), (fmt, name)


def test_voc_difficult_objects_are_ignored_like_coco_crowd_regions(tmp_path):
    difficult = (1, 4)  # a's dog, c's first cat
    sets = _datasets(tmp_path, crowd=difficult)
    voc, coco = sets["voc"], sets["coco"]
    flags = [a["iscrowd"] for a in voc.coco.dataset["annotations"]]
    assert flags == [int(i in difficult) for i in range(len(BOXES))]
    # not training targets: a keeps one box of two, c two of three
    assert [len(voc[i][1]["boxes"]) for i in range(4)] == [1, 2, 2, 0]
    assert _metrics(voc) == pytest.approx(_metrics(coco), abs=1e-6)
    # a detection on a difficult object counts neither right nor wrong (here: both mAPs equal without it)
    on_difficult = [p for p in PREDICTIONS if not (p[0] == "a" and p[1] == "dog")]
    assert _metrics(voc) == pytest.approx(_metrics(voc, on_difficult), abs=1e-9)
    plain = _datasets(tmp_path / "plain")["voc"]  # the same dog box, not difficult: the detection matters
    assert _metrics(plain)["bbox_mAP"] != pytest.approx(_metrics(plain, on_difficult)["bbox_mAP"], abs=1e-3)


def _voc_root(root: Path, objects: str, filename: str = "x.jpg", size: str = "<width>20</width><height>10</height>",
              image: str = "x.png") -> Path:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8)).save(root / "JPEGImages" / image)
    (root / "Annotations" / "x.xml").write_text(
        f"<annotation><filename>{filename}</filename><size>{size}<depth>3</depth></size>{objects}</annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("x\n")
    return root


def _obj(name: str, box: tuple, difficult: int = 0) -> str:
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def test_voc_one_based_inclusive_coordinates_converted_exactly(tmp_path):
    objects = _obj("zebra", (1, 1, 20, 10)) + _obj("ant", (10, 3, 10, 7)) + _obj("ant", (2.5, 1, 4.5, 2), difficult=1)
    # the XML names x.jpg; the image beside the stem is x.png; <size> is empty: read from the image
    root = _voc_root(tmp_path / "voc", objects, size="<width>0</width><height>0</height>")
    (paths,) = coco_paths([VocSplit(format="voc", root=str(root), split="train")], tmp_path / "cache")
    coco = json.loads(paths.annotations.read_text())
    assert coco["images"] == [{"id": 1, "file_name": "x.png", "width": 20, "height": 10}]
    assert coco["categories"] == [{"id": 1, "name": "ant"}, {"id": 2, "name": "zebra"}]  # sorted names
    # whole image (1..W, 1..H) -> [0, 0, W, H]; one pixel column 10 -> x 9, width 1
    assert [(a["category_id"], a["bbox"], a["iscrowd"]) for a in coco["annotations"]] == [
        (2, [0.0, 0.0, 20.0, 10.0], 0), (1, [9.0, 2.0, 1.0, 5.0], 0), (1, [1.5, 0.0, 3.0, 2.0], 1)]
    dataset = CocoDetection(paths.annotations, paths.images, image_size=20, train=False)
    assert dataset[0][1]["boxes"].tolist() == [[0.0, 0.0, 20.0, 10.0], [9.0, 2.0, 10.0, 7.0]]  # difficult left out


def test_voc_classes_given_fix_the_label_order(tmp_path):
    root = _voc_root(tmp_path / "voc", _obj("zebra", (1, 1, 5, 5)) + _obj("ant", (2, 2, 6, 6)), filename="x.png")
    split = VocSplit(format="voc", root=str(root), split="train", classes=["zebra", "ant", "bee"])
    (paths,) = coco_paths([split], tmp_path / "cache")
    coco = json.loads(paths.annotations.read_text())
    assert [c["name"] for c in coco["categories"]] == ["zebra", "ant", "bee"]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2]


def test_yolo_names_as_mapping_and_images_without_label_files(tmp_path):
    root = tmp_path / "yolo"
    for name, size in (("p.jpg", (30, 20)), ("q.png", (16, 16)), ("r.png", (10, 40))):
        (root / "images" / "val").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((size[1], size[0], 3), dtype=np.uint8)).save(root / "images" / "val" / name)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "val" / "p.txt").write_text("1 0.5 0.5 1.0 1.0\n\n0 0.25 0.25 0.1 0.5\n")
    (root / "labels" / "val" / "q.txt").write_text("")  # empty: no objects; r has no label file
    (root / "sets").mkdir()
    data_yaml = root / "sets" / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": "..", "val": "images/val", "names": {0: "car", 1: "bus"}}))
    (paths,) = coco_paths([YoloSplit(format="yolo", yaml=str(data_yaml), split="val")], tmp_path / "cache")
    coco = json.loads(paths.annotations.read_text())
    assert paths.images == root / "images" / "val"
    assert [(i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [
        ("p.jpg", 30, 20), ("q.png", 16, 16), ("r.png", 10, 40)]
    assert coco["categories"] == [{"id": 1, "name": "car"}, {"id": 2, "name": "bus"}]
    boxes = [(a["image_id"], a["category_id"], a["bbox"]) for a in coco["annotations"]]
    assert boxes == [(1, 2, [0.0, 0.0, 30.0, 20.0]), (1, 1, [pytest.approx(6.0), 0.0, pytest.approx(3.0), 10.0])]


def test_converted_file_is_cached_by_the_sources(tmp_path, monkeypatch):
    from raykd.data import voc

    root = _voc_root(tmp_path / "voc", _obj("ant", (2, 2, 6, 6)), filename="x.png")
    split = VocSplit(format="voc", root=str(root), split="train")
    (first,) = coco_paths([split], tmp_path / "cache")
    stamp = first.annotations.stat().st_mtime_ns
    parse = voc.read_voc
    monkeypatch.setattr(voc, "read_voc", lambda *args: pytest.fail("parsed again, the cache holds it"))
    (again,) = coco_paths([split], tmp_path / "cache")  # as every trial of a search does
    assert again.annotations == first.annotations and again.annotations.stat().st_mtime_ns == stamp  # not rewritten
    monkeypatch.setattr(voc, "read_voc", parse)
    xml = root / "Annotations" / "x.xml"
    xml.write_text(xml.read_text().replace("<xmax>6</xmax>", "<xmax>7</xmax>"))
    (changed,) = coco_paths([split], tmp_path / "cache")
    assert changed.annotations != first.annotations
    assert json.loads(changed.annotations.read_text())["annotations"][0]["bbox"] == [1.0, 1.0, 6.0, 5.0]


def test_experiment_config_takes_every_format(tmp_path):
    cfg = experiment_from_dict({"data": {
        "train": {"format": "voc", "root": "/d/VOC2012", "split": "train", "classes": ["a", "b"]},
        "val": {"format": "yolo", "yaml": "/d/data.yaml", "split": "val"}}})
    assert isinstance(cfg.data.train, VocSplit) and isinstance(cfg.data.val, YoloSplit)
    plain = experiment_from_dict({"data": {"train": {"annotations": "/a.json", "images": "/i"},
                                           "val": {"format": "coco", "annotations": "/b.json", "images": "/i"}}})
    assert plain.data.train.format == plain.data.val.format == "coco"


def test_data_check_and_convert_commands(tmp_path, capsys):
    from raykd.data.__main__ import main

    annotations, images = _coco_set(tmp_path / "coco")
    coco_to_voc(annotations, images, tmp_path / "voc", "train")
    data_yaml = coco_to_yolo(annotations, images, tmp_path / "yolo", "train")
    assert main(["check", "--format", "voc", "--root", str(tmp_path / "voc"), "--split", "train"]) == 0
    assert "usable: 4 images, 7 boxes, 2 classes" in capsys.readouterr().out
    assert main(["check", "--format", "yolo", "--yaml", str(data_yaml), "--split", "train"]) == 0
    assert "usable: 4 images, 7 boxes, 2 classes" in capsys.readouterr().out
    out = tmp_path / "voc.json"
    assert main(["convert", "--format", "voc", "--root", str(tmp_path / "voc"), "--split", "train",
                 "--out", str(out)]) == 0
    converted = json.loads(out.read_text())
    original = json.loads(annotations.read_text())
    assert [a["bbox"] for a in converted["annotations"]] == [a["bbox"] for a in original["annotations"]]
    assert [i["file_name"] for i in converted["images"]] == [i["file_name"] for i in original["images"]]


@pytest.mark.slow
def test_one_epoch_on_voc_and_yolo_copies_trains_as_on_the_coco_original(tiny_data, write_experiment, tmp_path):
    """The synthetic set written as VOC (classes in the COCO id order) and as YOLO trains the
    same model: same losses, same pycocotools metrics, the same weights to the bit."""
    from format_tools import write_copies

    from raykd.config import load_experiment
    from raykd.train.loop import fit

    names = write_copies(tiny_data, tmp_path / "copies")
    voc = {"format": "voc", "root": str(tmp_path / "copies/voc"), "classes": names}
    yolo = {"format": "yolo", "yaml": str(tmp_path / "copies/yolo/data.yaml")}
    data = {"coco": {}, "voc": {"train": {**voc, "split": "train"}, "val": {**voc, "split": "val"}},
            "yolo": {"train": {**yolo, "split": "train"}, "val": {**yolo, "split": "val"}}}
    runs = {}
    for fmt, splits in data.items():
        path = write_experiment(f"{fmt}.yaml", train={"epochs": 1, "output_dir": str(tmp_path / fmt)})
        raw = yaml.safe_load(path.read_text())
        raw["data"].update(splits)
        path.write_text(yaml.safe_dump(raw))
        history, weights = [], {}
        fit(load_experiment(path), progress=False, log=lambda line: None,
            on_epoch_end=lambda record, make_state, history=history, weights=weights: (
                history.append(record.as_report()), weights.update(make_state()["model"])))
        runs[fmt] = (history[-1], weights)
    metrics, weights = runs["coco"]
    for fmt in ("voc", "yolo"):
        other, other_weights = runs[fmt]
        for key in (*METRICS, "loss_total", "loss_classification", "loss_bbox_regression", "loss_bbox_ctrness"):
            assert other[key] == pytest.approx(metrics[key], abs=1e-6), (fmt, key)
        assert all(torch.equal(other_weights[k], weights[k]) for k in weights), fmt
