"""The annotation index (raykd.data.annindex): the same targets as a parse of the file, built
once per content, rebuilt when the file changes or the index is damaged, one index when two
processes build it together."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

import raykd.data.annindex as annindex
from raykd.data.annindex import annotation_digest, load_index
from raykd.data.cocofile import prepare_boxes, read_coco
from raykd.errors import UserError

CATEGORIES = [{"id": 10, "name": "ten"}, {"id": 2, "name": "two"}, {"id": 7, "name": "seven"}]


def coco_doc(n_images: int = 30, seed: int = 0, masks: bool = False) -> dict:
    """Images of several sizes (one in a sub-folder, some without boxes), boxes past the border,
    degenerate ones and crowd regions."""
    rng = np.random.default_rng(seed)
    images = [{"id": 100 + 3 * i, "file_name": f"{'sub/' if i == 0 else ''}{i}.png",
               "width": int(rng.integers(40, 120)), "height": int(rng.integers(40, 120))} for i in range(n_images)]
    annotations = []
    for k in range(6 * n_images):
        image = images[int(rng.integers(0, n_images - 3))]  # the last 3 images have no annotations
        x, y = rng.uniform(-5, image["width"]), rng.uniform(-5, image["height"])
        w = [0.0, 0.0005, float(rng.uniform(1, 40))][int(rng.integers(0, 3))]
        ann = {"id": k + 1, "image_id": image["id"], "category_id": int(rng.choice([10, 2, 7])),
               "bbox": [x, y, w, float(rng.uniform(1, 40))], "iscrowd": int(rng.random() < 0.1)}
        if masks:
            ann["segmentation"] = [[x, y, x + 3, y, x + 3, y + 3]]
        annotations.append(ann)
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_index_holds_the_targets_and_ground_truth_of_a_parse(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", coco_doc(masks=True))
    coco = read_coco(path, masks=True)
    targets = prepare_boxes(coco)
    built = load_index(path, tmp_path / "idx", masks=True)
    cached = load_index(path, tmp_path / "idx", masks=True)
    assert isinstance(cached.arrays["boxes"], np.memmap)  # read from the cache, not parsed again
    for index in (built, cached):
        a = index.arrays
        assert np.array_equal(a["boxes"], targets.boxes) and np.array_equal(a["box_offsets"], targets.offsets)
        assert np.array_equal(a["box_categories"], targets.category_ids)
        assert np.array_equal(a["gt_keys"][a["box_gt"]], targets.indices)
        assert index.degenerate == len(targets.degenerate) > 0 and index.crowd == targets.crowd > 0
        assert list(index.file_names()) == [i.file_name for i in coco.images]
        assert index.coco_dataset()["annotations"] == [
            {**{k: ann[k] for k in ("id", "image_id", "category_id", "bbox", "iscrowd")},
             "area": ann.get("area", ann["bbox"][2] * ann["bbox"][3])} for ann in coco.data["annotations"]]
        assert index.segmentation(5) == coco.data["annotations"][5]["segmentation"]
        assert index.digest == coco.digest


def test_second_read_parses_nothing_and_the_digest_reads_nothing(tmp_path: Path, monkeypatch) -> None:
    path = write(tmp_path / "a.json", coco_doc())
    first = load_index(path, tmp_path / "idx")

    def no_parse(*args, **kwargs):
        raise AssertionError("the file was parsed again")

    monkeypatch.setattr(annindex, "read_coco", no_parse)
    again = load_index(path, tmp_path / "idx")
    assert np.array_equal(again.arrays["boxes"], first.arrays["boxes"])
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: (_ for _ in ()).throw(AssertionError(f"read {self}"))
                        if self == path else real_open(self, *a, **k))
    assert annotation_digest(path, tmp_path / "idx") == first.digest


def test_a_changed_file_gets_a_new_index(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", coco_doc(seed=0))
    first = load_index(path, tmp_path / "idx")
    write(path, coco_doc(seed=1))
    second = load_index(path, tmp_path / "idx")
    assert second.digest != first.digest
    assert np.array_equal(second.arrays["boxes"], prepare_boxes(read_coco(path)).boxes)
    assert annotation_digest(path, tmp_path / "idx") == second.digest == annotation_digest(path, None)


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta"])
def test_a_damaged_index_is_rebuilt_never_used(tmp_path: Path, damage: str, monkeypatch) -> None:
    path = write(tmp_path / "a.json", coco_doc())
    first = load_index(path, tmp_path / "idx")
    boxes = np.array(first.arrays["boxes"])
    (folder,) = [p for p in (tmp_path / "idx").iterdir() if p.is_dir()]
    target = folder / "boxes.npy"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-40])
    elif damage == "flip":
        raw = bytearray(target.read_bytes())
        raw[-5] ^= 0xFF
        target.write_bytes(bytes(raw))
    else:
        (folder / "meta.json").write_text('{"version": 1, "digest"')
    parses = []
    real = annindex.read_coco
    monkeypatch.setattr(annindex, "read_coco", lambda *a, **k: parses.append(1) or real(*a, **k))
    again = load_index(path, tmp_path / "idx")
    assert parses == [1]  # rebuilt from the file
    assert np.array_equal(again.arrays["boxes"], boxes)
    assert annindex._read_index(folder) is not None  # and the rebuilt one is whole


def _build(path: str, root: str, start, queue) -> None:
    start.wait()
    queue.put(load_index(path, root).digest)


def test_two_processes_building_at_once_make_one_index(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", coco_doc(n_images=400))
    ctx = multiprocessing.get_context("spawn")
    start, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_build, args=(str(path), str(tmp_path / "idx"), start, queue)) for _ in range(2)]
    for proc in procs:
        proc.start()
    start.set()
    digests = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0]
    entries = sorted(p.name for p in (tmp_path / "idx").iterdir() if not p.name.startswith(".stat-"))
    assert len(set(digests)) == 1 and len([e for e in entries if e.endswith("-boxes")]) == 1
    assert not [e for e in entries if e.startswith(".tmp")]  # no leftovers


def test_a_masks_index_serves_box_readers_and_problems_still_name_the_key(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", coco_doc(masks=True))
    load_index(path, tmp_path / "idx", masks=True)
    assert load_index(path, tmp_path / "idx").masks  # found, not rebuilt
    bad = coco_doc()
    bad["annotations"][3]["bbox"] = [1, 2, 3]
    with pytest.raises(UserError, match=r"annotations\[3\]\.bbox"):
        load_index(write(tmp_path / "bad.json", bad), tmp_path / "idx")
    assert not any(p.name.startswith("stat-") and json.loads(p.read_text()).get("digest") is None
                   for p in (tmp_path / "idx").iterdir() if p.suffix == ".json")


def test_unwritable_cache_falls_back_to_memory_with_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", coco_doc())
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(annindex.DataWarning, match="cannot write the annotation index"):
        index = load_index(path, blocker / "idx")
    assert len(index.arrays["boxes"]) > 0


def test_driver_check_lists_folders_instead_of_a_stat_per_image(tmp_path: Path, monkeypatch) -> None:
    from raykd.train.setup import missing_images

    path = write(tmp_path / "a.json", coco_doc())
    index = load_index(path, None)
    images = tmp_path / "im"
    (images / "sub").mkdir(parents=True)
    for name in list(index.file_names())[:-2]:
        (images / name).write_bytes(b"")
    monkeypatch.setattr(os.path, "isfile", lambda p: (_ for _ in ()).throw(AssertionError("a stat per image")))
    assert missing_images(index, images) == [index.num_images - 2, index.num_images - 1]
    (images / "sub" / "0.png").unlink()
    assert missing_images(index, images)[0] == 0


def _reference_targets(doc: dict) -> tuple[list, list, list[int]]:
    """Per image, in file order: the training boxes and category ids as the loader made them
    before the index existed (a per-annotation loop: crowd left out, clipped, degenerate dropped)."""
    size = {im["id"]: (im["width"], im["height"]) for im in doc["images"]}
    per_image: dict[int, list] = {im["id"]: [] for im in doc["images"]}
    for ann in doc["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        width, height = size[ann["image_id"]]
        x, y, w, h = (float(v) for v in ann["bbox"])
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
        if w <= 1e-3 or h <= 1e-3 or x2 - x1 <= 1e-3 or y2 - y1 <= 1e-3:
            continue
        per_image[ann["image_id"]].append(((x1, y1, x2, y2), ann["category_id"]))
    boxes = [b for im in doc["images"] for b, _ in per_image[im["id"]]]
    cats = [c for im in doc["images"] for _, c in per_image[im["id"]]]
    return boxes, cats, [len(per_image[im["id"]]) for im in doc["images"]]


@pytest.mark.parametrize("which", ["crafted", "synthetic"])
def test_same_boxes_and_labels_as_the_per_annotation_loop(tmp_path: Path, which: str) -> None:
    if which == "crafted":
        path = write(tmp_path / "a.json", coco_doc(n_images=60, seed=3))
    else:
        from raykd.data import ensure_synthetic

        path = ensure_synthetic(tmp_path / "syn", train_images=40, val_images=8, seed=0, image_size=64).train_annotations
    boxes, cats, counts = _reference_targets(json.loads(Path(path).read_text()))
    index = load_index(path, tmp_path / "idx")
    np.testing.assert_array_equal(index.arrays["boxes"], np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    assert index.arrays["box_categories"].tolist() == cats
    assert np.diff(index.arrays["box_offsets"]).tolist() == counts


@pytest.mark.parametrize("text", [
    '{"a": 1, "segmentation": [[1, 2, 3, 4, 5, 6]], "b": 2}',
    '{"segmentation" : {"size": [2, 3], "counts": "a]b[c"}, "c": {"segmentation": [], "d": 1}}',
    '{"name": "segmentation", "segmentation": {"counts": [1, 2], "size": [1, 3]}, "x": "\\"segmentation\\": [["}',
    '{"segmentation": [[1, 2] ], "b": {"c": [[1]]}}',  # a shape the search does not take: left to the parser
    '{"segmentation": 5}',
])
def test_segmentations_cut_from_the_text_parse_as_dropped_ones(text: str) -> None:
    from raykd.data.cocofile import _drop_segmentation, _without_segmentations

    expected = json.loads(text, object_hook=_drop_segmentation)
    stripped = _without_segmentations(text)
    if stripped is not None:
        strip = json.loads(stripped, object_hook=lambda o: {k: v for k, v in o.items() if k != "segmentation"})
        assert strip == expected


def test_a_bad_file_names_the_line_and_column_of_the_file_itself(tmp_path: Path) -> None:
    doc = json.dumps(coco_doc(n_images=5, masks=True), indent=1)
    broken = doc.replace('"iscrowd"', '"iscrowd" 0,', 1)  # after many segmentations
    line = broken[:broken.index('"iscrowd" 0')].count("\n") + 1
    with pytest.raises(UserError, match=f"not valid JSON at line {line} column"):
        read_coco(write_path(tmp_path / "bad.json", broken))


def write_path(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
