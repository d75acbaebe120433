"""CocoDetection on hand-written COCO files: what real COCO files contain."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.cocoeval import COCOeval

from raykd.data import CocoDetection, DataWarning, collate_detection
from raykd.errors import UserError

CATEGORIES = [{"id": 10, "name": "ten"}, {"id": 2, "name": "two"}, {"id": 7, "name": "seven"}]  # gaps, unsorted


def make_image(path: Path, width: int, height: int, mode: str = "RGB", seed: int = 0) -> np.ndarray:
    """Write a random image; returns its pixels as stored."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        pixels = rng.integers(0, 65536, size=(height, width), dtype=np.uint16)
        Image.fromarray(pixels).save(path)
        return pixels
    channels = {"RGB": 3, "RGBA": 4, "L": None, "CMYK": 4}[mode]
    shape = (height, width) if channels is None else (height, width, channels)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    Image.fromarray(pixels, mode=mode).save(path)
    return pixels


def write_coco(path: Path, images: list, annotations: list, categories: list = CATEGORIES) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def ann(ann_id: int, image_id: int, bbox: list, category_id: int = 2, **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def img(image_id: int, file_name: str, width: int, height: int) -> dict:
    return {"id": image_id, "file_name": file_name, "width": width, "height": height}


@pytest.fixture
def two_images(tmp_path: Path) -> CocoDetection:
    """100x50 image with three boxes (one of each category) and one without annotations."""
    make_image(tmp_path / "im" / "a.png", 100, 50)
    make_image(tmp_path / "im" / "b.png", 100, 50, seed=1)
    annotations = [
        ann(1, 5, [10, 5, 20, 10], category_id=10),
        ann(2, 5, [40, 10, 10, 30], category_id=2),
        ann(3, 5, [60, 20, 30, 20], category_id=7),
    ]
    path = write_coco(tmp_path / "a.json", [img(5, "a.png", 100, 50), img(9, "b.png", 100, 50)], annotations)
    return CocoDetection(path, tmp_path / "im", image_size=100, train=False)


def test_category_id_gaps_map_to_contiguous_labels_and_back(two_images: CocoDetection) -> None:
    ds = two_images
    assert ds.cat_ids == [2, 7, 10]
    assert ds.num_classes == 4
    assert ds.cat_id_to_label == {2: 1, 7: 2, 10: 3}
    assert ds.class_names == ["two", "seven", "ten"]
    assert [ds.label_to_cat_id(label) for label in (1, 2, 3)] == [2, 7, 10]
    with pytest.raises(ValueError):
        ds.label_to_cat_id(0)
    with pytest.raises(ValueError):
        ds.label_to_cat_id(4)
    _, target = ds[0]
    assert target["labels"].tolist() == [3, 1, 2]  # category ids 10, 2, 7 in file order


def test_target_contract(two_images: CocoDetection) -> None:
    image, target = two_images[0]
    assert type(image) is torch.Tensor and image.dtype == torch.float32 and image.shape == (3, 50, 100)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (3, 4)
    assert type(target["boxes"]) is torch.Tensor
    assert target["labels"].dtype == torch.int64
    assert type(target["image_id"]) is int and target["image_id"] == 5
    assert target["orig_size"].dtype == torch.int64 and target["orig_size"].tolist() == [50, 100]
    assert two_images.image_ids == [5, 9]
    expected = torch.tensor([[10, 5, 30, 15], [40, 10, 50, 40], [60, 20, 90, 40]], dtype=torch.float32)
    assert torch.equal(target["boxes"], expected)


def test_image_without_annotations_gives_empty_target_and_collates(tmp_path: Path, two_images: CocoDetection) -> None:
    image, target = two_images[1]
    assert target["image_id"] == 9
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    images, targets = collate_detection([two_images[0], two_images[1]])
    assert [t["image_id"] for t in targets] == [5, 9] and len(images) == 2
    # Also in training mode, where the flip sees an empty box set.
    train = CocoDetection(two_images.annotations_path, two_images.images_dir, 100, train=True)
    for _ in range(6):
        assert train[1][1]["boxes"].shape == (0, 4)


def test_crowd_regions_are_not_targets_but_stay_for_evaluation(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png", 64, 64)
    annotations = [ann(1, 1, [1, 1, 20, 20]), ann(2, 1, [30, 30, 30, 30], iscrowd=1, area=900.0)]
    ds = CocoDetection(write_coco(tmp_path / "a.json", [img(1, "a.png", 64, 64)], annotations), tmp_path, 64, False)
    _, target = ds[0]
    assert target["boxes"].tolist() == [[1, 1, 21, 21]]
    assert ds.coco.anns[2]["iscrowd"] == 1 and ds.coco.getAnnIds(imgIds=[1]) == [1, 2]
    # `area` and `iscrowd` are filled in where the file leaves them out (COCOeval reads both).
    assert ds.coco.anns[1]["area"] == 400 and ds.coco.anns[1]["iscrowd"] == 0


def test_perfect_detections_score_one_through_the_label_mapping(tmp_path: Path) -> None:
    """Targets mapped back to category ids and original pixels give AP 1 against `coco` (crowd ignored)."""
    make_image(tmp_path / "a.png", 120, 60)
    make_image(tmp_path / "b.png", 50, 80, seed=2)
    annotations = [
        ann(1, 1, [10, 10, 40, 30], category_id=10),
        ann(2, 1, [70, 5, 45, 50], category_id=7),
        ann(3, 1, [0, 0, 120, 60], category_id=2, iscrowd=1),
        ann(4, 2, [5, 20, 40, 50], category_id=2),
    ]
    images = [img(1, "a.png", 120, 60), img(2, "b.png", 50, 80)]
    ds = CocoDetection(write_coco(tmp_path / "a.json", images, annotations), tmp_path, 96, False)
    results = []
    for i in range(len(ds)):
        image, target = ds[i]
        height, width = target["orig_size"].tolist()
        scale = torch.tensor([width / image.shape[2], height / image.shape[1]] * 2)
        for box, label in zip((target["boxes"] * scale).tolist(), target["labels"].tolist()):
            x1, y1, x2, y2 = box
            category_id = ds.label_to_cat_id(label)
            bbox = [x1, y1, x2 - x1, y2 - y1]
            results.append({"image_id": target["image_id"], "category_id": category_id, "bbox": bbox, "score": 0.9})
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(ds.coco, ds.coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_border_touching_float_boxes_are_kept_and_scaled(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png", 200, 100)
    annotations = [
        ann(1, 1, [0.0, 0.0, 200.0, 100.0]),  # the whole image
        ann(2, 1, [150.5, 60.25, 49.5, 39.75]),  # touches the right and bottom borders
        ann(3, 1, [0.0, 10.5, 12.25, 3.5]),  # touches the left border
        ann(4, 1, [180.3, 0.0, 19.700000001, 7.0]),  # past the border by float error: clipped
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing here deserves a warning
        path = write_coco(tmp_path / "a.json", [img(1, "a.png", 200, 100)], annotations)
        ds = CocoDetection(path, tmp_path, 100, False)
    image, target = ds[0]
    assert image.shape == (3, 50, 100)
    expected = torch.tensor(
        [[0, 0, 100, 50], [75.25, 30.125, 100, 50], [0, 5.25, 6.125, 7.0], [90.15, 0, 100, 3.5]], dtype=torch.float32
    )
    torch.testing.assert_close(target["boxes"], expected)


def test_degenerate_boxes_are_dropped_with_one_warning_counting_them(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png", 100, 80)
    annotations = [
        ann(1, 1, [10, 10, 0, 20]),  # zero width
        ann(2, 1, [10, 10, 20, 0.0005]),  # height below 1e-3
        ann(4, 1, [150, 10, 20, 20]),  # entirely right of the image
        ann(5, 1, [5, -30, 20, 30]),  # ends exactly at the top border: nothing left after clipping
        ann(6, 1, [20, 20, 30, 30]),  # fine
        ann(7, 1, [90, 70, 30, 30]),  # reaches 20 px past the corner: clipped, kept
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_coco(tmp_path / "a.json", [img(1, "a.png", 100, 80)], annotations)
        ds = CocoDetection(path, tmp_path, 100, False)
    data_warnings = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(data_warnings) == 1
    message = str(data_warnings[0].message)
    assert "dropped 4 degenerate boxes" in message and "clipped 1 boxes" in message and "a.json" in message
    assert ds[0][1]["boxes"].tolist() == [[20, 20, 50, 50], [90, 70, 100, 80]]


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [
        ("RGB", ".png"),
        ("RGB", ".jpg"),
        ("L", ".png"),
        ("L", ".jpg"),
        ("RGBA", ".png"),
        ("I;16", ".png"),
        ("CMYK", ".jpg"),
    ],
)
def test_every_image_mode_becomes_rgb_float(tmp_path: Path, mode: str, suffix: str) -> None:
    pixels = make_image(tmp_path / f"a{suffix}", 40, 30, mode=mode)
    path = write_coco(tmp_path / "a.json", [img(1, f"a{suffix}", 40, 30)], [ann(1, 1, [1, 1, 10, 10])])
    image, _ = CocoDetection(path, tmp_path, image_size=40, train=False)[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    if mode == "L":
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    if suffix == ".png" and mode in ("RGB", "RGBA"):  # lossless: the colour channels as stored, alpha dropped
        assert torch.equal((image * 255).round().to(torch.uint8), torch.from_numpy(pixels[..., :3]).permute(2, 0, 1))
    if mode == "I;16":  # 16 bits scaled to [0, 1], not clipped at 255
        expected = torch.from_numpy(pixels.astype(np.float32) / 65535)
        assert (image[0] - expected).abs().max() < 1 / 255 + 1e-6


def test_palette_image_with_transparency_becomes_rgb(tmp_path: Path) -> None:
    palette = Image.new("P", (20, 10))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    path = write_coco(tmp_path / "a.json", [img(1, "p.png", 20, 10)], [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, _ = CocoDetection(path, tmp_path, 20, False)[0]
    assert image.shape == (3, 10, 20) and image[:, 0, 0].tolist() == [1.0, 0.0, 0.0]


def test_file_names_in_sub_folders(tmp_path: Path) -> None:
    make_image(tmp_path / "root" / "2017" / "city" / "x.png", 30, 30)
    path = write_coco(tmp_path / "a.json", [img(3, "2017/city/x.png", 30, 30)], [ann(1, 3, [2, 2, 6, 6])])
    image, target = CocoDetection(path, tmp_path / "root", 30, False)[0]
    assert image.shape == (3, 30, 30) and target["image_id"] == 3


@pytest.mark.parametrize(
    ("width", "height", "image_size", "resized"),
    [(300, 120, 160, (64, 160)), (90, 200, 160, (160, 72)), (40, 25, 160, (100, 160)), (160, 160, 160, (160, 160))],
)
def test_resize_keeps_aspect_ratio_and_scales_boxes_exactly(tmp_path: Path, width, height, image_size, resized) -> None:
    make_image(tmp_path / "a.png", width, height)
    box = [width * 0.1, height * 0.2, width * 0.5, height * 0.6]
    path = write_coco(tmp_path / "a.json", [img(1, "a.png", width, height)], [ann(1, 1, box)])
    image, target = CocoDetection(path, tmp_path, image_size, train=False)[0]
    assert tuple(image.shape[1:]) == resized and max(image.shape[1:]) == image_size
    sx, sy = resized[1] / width, resized[0] / height
    x, y, w, h = box
    expected = torch.tensor([[x * sx, y * sy, (x + w) * sx, (y + h) * sy]], dtype=torch.float32)
    torch.testing.assert_close(target["boxes"], expected)
    assert target["orig_size"].tolist() == [height, width]


def test_horizontal_flip_mirrors_image_and_boxes_exactly(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png", 60, 40)
    annotations = [ann(1, 1, [5, 4, 20, 10]), ann(2, 1, [31.5, 20, 28.5, 20])]
    path = write_coco(tmp_path / "a.json", [img(1, "a.png", 60, 40)], annotations)
    plain_image, plain = CocoDetection(path, tmp_path, 60, train=False)[0]
    train = CocoDetection(path, tmp_path, 60, train=True)
    torch.manual_seed(0)
    seen = {"flipped": 0, "kept": 0}
    for _ in range(40):
        image, target = train[0]
        if torch.equal(image, plain_image):
            assert torch.equal(target["boxes"], plain["boxes"])
            seen["kept"] += 1
        else:
            assert torch.equal(image, plain_image.flip(-1))
            x1, y1, x2, y2 = plain["boxes"].unbind(1)
            torch.testing.assert_close(target["boxes"], torch.stack([60 - x2, y1, 60 - x1, y2], dim=1))
            assert target["boxes"].tolist()[1] == [0.0, 20.0, 28.5, 40.0]
            seen["flipped"] += 1
    assert seen["flipped"] >= 8 and seen["kept"] >= 8  # p = 0.5


def test_evaluation_mode_never_flips(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png", 30, 20)
    path = write_coco(tmp_path / "a.json", [img(1, "a.png", 30, 20)], [ann(1, 1, [1, 2, 5, 5])])
    ds = CocoDetection(path, tmp_path, 30, train=False)
    first = ds[0]
    assert all(torch.equal(ds[0][0], first[0]) and torch.equal(ds[0][1]["boxes"], first[1]["boxes"]) for _ in range(10))


def test_fingerprint_depends_on_file_bytes_and_image_size(two_images: CocoDetection, tmp_path: Path) -> None:
    """The data fingerprint the teacher cache and the runs table use (raykd.train.setup.data_fingerprint)."""
    from raykd.config import experiment_from_dict
    from raykd.train.setup import data_fingerprint

    def fingerprint(train_annotations: Path, image_size: int, val: Path | None = None) -> str:
        split = lambda path: {"annotations": str(path), "images": str(two_images.images_dir)}  # noqa: E731
        return data_fingerprint(experiment_from_dict({"data": {
            "train": split(train_annotations), "val": split(val or train_annotations), "image_size": image_size}}))

    fp = fingerprint(two_images.annotations_path, 100)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fingerprint(two_images.annotations_path, 100, val=tmp_path / "other.json") == fp  # the train split's
    assert fingerprint(two_images.annotations_path, 64) != fp
    data = json.loads(two_images.annotations_path.read_text())
    data["annotations"][0]["bbox"][0] += 1
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(data))
    assert fingerprint(changed, 100) != fp


def test_pickled_dataset_leaves_coco_behind_and_rebuilds_it(two_images: CocoDetection) -> None:
    assert two_images.coco.getImgIds() == [5, 9]
    copy = pickle.loads(pickle.dumps(two_images))
    assert copy._gt == {}
    assert torch.equal(copy[0][1]["boxes"], two_images[0][1]["boxes"])
    assert copy.coco.getImgIds() == [5, 9]


def test_coco_is_the_content_the_dataset_was_built_from(two_images: CocoDetection) -> None:
    """Evaluation's ground truth comes from the dataset's annotation index, not a second read of
    the file: a file changed mid-run cannot score against other boxes than it trained on."""
    path = two_images.annotations_path
    path.write_text(path.read_text().replace('"width": 100', '"width": 101', 1))
    assert [two_images.coco.imgs[i]["width"] for i in (5, 9)] == [100, 100]


# ---- user errors: the file and the key are named ----


def _error(tmp_path: Path, content: str | dict) -> UserError:
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(UserError) as caught:
        CocoDetection(path, tmp_path, 64, False)
    assert caught.value.file == str(path)
    return caught.value


GOOD_IMAGE = img(1, "a.png", 10, 10)


def doc(images=(GOOD_IMAGE,), categories=CATEGORIES, annotations=()) -> dict:
    return {"images": list(images), "categories": list(categories), "annotations": list(annotations)}


BOX = [0, 0, 1, 1]


@pytest.mark.parametrize(
    ("content", "key", "words"),
    [
        ('{"images": [', None, "not valid JSON at line 1"),
        ("[1, 2]", None, "JSON object"),
        ({"images": [GOOD_IMAGE], "annotations": []}, "categories", "missing key"),
        ({"images": {}, "categories": CATEGORIES}, "images", "expected a list"),
        (doc(categories=[]), "categories", "at least one category"),
        (doc(images=[GOOD_IMAGE, {"id": 2, "width": 5, "height": 5}]), "images[1].file_name", "missing key"),
        (doc(images=[GOOD_IMAGE, img(1, "b.png", 5, 5)]), "images[1].id", "duplicate image id 1"),
        (doc(images=[img(1, "a.png", 0, 10)]), "images[0].width", "positive integer"),
        (doc(categories=CATEGORIES + [{"id": 2, "name": "x"}]), "categories[3].id", "duplicate category id 2"),
        (doc(categories=[{"id": "a", "name": "x"}]), "categories[0].id", "integer"),
        (
            doc(annotations=[ann(1, 1, BOX), ann(2, 1, BOX, category_id=3)]),
            "annotations[1].category_id",
            "expected one of the category ids [2, 7, 10], got 3",
        ),
        (doc(annotations=[ann(1, 4, BOX)]), "annotations[0].image_id", "id of an image"),
        (doc(annotations=[ann(1, 1, [0, 0, 1])]), "annotations[0].bbox", "4 finite numbers"),
        (doc(annotations=[ann(1, 1, [0, 0, 1, float("nan")])]), "annotations[0].bbox", "4 finite"),
        (doc(annotations=[ann(1, 1, BOX), ann(1, 1, [0, 0, 2, 2])]), "annotations[1].id", "duplicate annotation id 1"),
        (doc(annotations=[{"id": 1, "image_id": 1, "bbox": BOX}]), "annotations[0].category_id", "missing key"),
        (doc(annotations=[ann(1, 1, BOX, iscrowd=2)]), "annotations[0].iscrowd", "expected 0 or 1"),
        (doc(annotations=[ann(1, 1, [0, 0, -1, 1])]), "annotations[0].bbox", "width and height >= 0"),
        (doc(images=[]), "images", "expected at least one image"),
    ],
)
def test_bad_annotation_files_raise_user_errors_naming_the_key(tmp_path: Path, content, key, words) -> None:
    err = _error(tmp_path, content)
    assert err.key == key
    assert words in err.message


def test_several_problems_are_counted_in_the_error(tmp_path: Path) -> None:
    err = _error(tmp_path, {"images": [{"id": 1}, {"id": 2}], "categories": CATEGORIES})
    assert err.key == "images[0].file_name"
    assert "and 5 more problems" in err.message and "raykd.data check" in err.message


def test_missing_annotation_file_or_image_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="annotation file not found"):
        CocoDetection(tmp_path / "nope.json", tmp_path, 64, False)
    path = write_coco(tmp_path / "a.json", [GOOD_IMAGE], [])
    with pytest.raises(UserError, match="image folder not found"):
        CocoDetection(path, tmp_path / "nope", 64, False)


def test_missing_unreadable_or_resized_images_fail_when_read(tmp_path: Path) -> None:
    make_image(tmp_path / "ok.png", 10, 10)
    make_image(tmp_path / "small.png", 8, 10)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    images = [img(i + 1, name, 10, 10) for i, name in enumerate(["ok.png", "gone.png", "junk.png", "small.png"])]
    ds = CocoDetection(write_coco(tmp_path / "a.json", images, []), tmp_path, 10, False)  # lazily: no error yet
    ds[0]
    with pytest.raises(UserError, match="image file not found") as missing:
        ds[1]
    assert missing.value.file == str(tmp_path / "gone.png") and missing.value.key == "images[1].file_name"
    with pytest.raises(UserError, match="cannot read the image") as junk:
        ds[2]
    assert junk.value.key == "images[2].file_name"
    with pytest.raises(UserError, match="image is 8x10 but the annotations say width x height = 10x10") as small:
        ds[3]
    assert small.value.key == "images[3].width"


def test_exif_rotated_photo_matches_annotations_made_on_the_rotated_view(tmp_path: Path) -> None:
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    stored.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    path = write_coco(tmp_path / "a.json", [img(1, "photo.jpg", 20, 40)], [ann(1, 1, [0, 0, 20, 10])])
    image, _ = CocoDetection(path, tmp_path, 40, False)[0]
    assert image.shape == (3, 40, 20)
    assert image[2, 2, 10] > 0.8 and image[0, 2, 10] < 0.2  # the strip is now at the top, as displayed
