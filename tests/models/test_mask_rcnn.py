"""Mask R-CNN: instance masks read from COCO files (polygons and RLE) and the synthetic set,
segm mAP equal to pycocotools', training with masks and distillation, VOC/YOLO refused."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from raykd.config import load_experiment
from raykd.data import CocoDetection, generate_synthetic
from raykd.errors import UserError
from raykd.metric_names import SEGM_METRICS
from raykd.train.evaluate import coco_metrics, to_coco_results

pytestmark = pytest.mark.usefixtures("one_thread")

W, H = 96, 64  # original image; resized to 48 x 32 (image_size 48)


def _rle(mask: np.ndarray, compressed: bool) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": [H, W], "counts": rle["counts"].decode("ascii")}
    # COCO's uncompressed RLE: run lengths in column-major order, starting with 0s
    return {"size": [H, W], "counts": _runs(mask.astype(np.uint8).flatten(order="F"))}


def _runs(flat: np.ndarray) -> list[int]:
    counts, value, run = [], 0, 0
    for v in flat.tolist():
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return counts


def _blob(cx: int, cy: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.uint8)


def _coco_file(tmp_path, segmentations: list, boxes: list) -> tuple:
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (W, H), (90, 120, 30)).save(tmp_path / "img" / "a.png")
    anns = [{"id": i + 1, "image_id": 5, "category_id": 3, "bbox": box, "iscrowd": 0, "area": box[2] * box[3],
             **({"segmentation": seg} if seg is not None else {})}
            for i, (seg, box) in enumerate(zip(segmentations, boxes))]
    data = {"images": [{"id": 5, "file_name": "a.png", "width": W, "height": H}], "annotations": anns,
            "categories": [{"id": 3, "name": "thing"}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return path, tmp_path / "img"


def _three_formats(tmp_path):
    polygons = [[4, 4, 30, 4, 30, 20, 4, 20], [10, 24, 24, 24, 17, 40]]  # a rectangle and a triangle: merged
    compressed, uncompressed = _blob(60, 30, 12), _blob(80, 50, 9)
    segs = [polygons, _rle(compressed, True), _rle(uncompressed, False)]
    boxes = [[4, 4, 26, 36], [48, 18, 25, 25], [71, 41, 19, 19]]
    return _coco_file(tmp_path, segs, boxes)


def test_polygon_and_rle_masks_equal_pycocotools_ann_to_mask_after_the_resize(tmp_path):
    path, images = _three_formats(tmp_path)
    coco = COCO(str(path))
    expected = torch.stack([torch.from_numpy(coco.annToMask(coco.anns[i])) for i in (1, 2, 3)])
    assert all(m.sum() > 50 for m in expected)
    resized = F.interpolate(expected[:, None].float(), size=(32, 48), mode="nearest")[:, 0].to(torch.uint8)
    ds = CocoDetection(path, images, image_size=48, train=False, masks=True)
    image, target = ds[0]
    assert image.shape == (3, 32, 48)
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (3, 32, 48)
    torch.testing.assert_close(target["masks"], resized, rtol=0, atol=0)
    # In training the masks flip with the image and the boxes.
    train = CocoDetection(path, images, image_size=48, train=True, masks=True)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        _, t = train[0]
        flipped = bool(t["boxes"][0, 0] > 48 / 2)
        seen.add(flipped)
        want = resized.flip(-1) if flipped else resized
        torch.testing.assert_close(t["masks"], want, rtol=0, atol=0)
        torch.testing.assert_close(t["boxes"], target["boxes"] if not flipped else
                                   torch.stack([48 - target["boxes"][:, 2], target["boxes"][:, 1],
                                                48 - target["boxes"][:, 0], target["boxes"][:, 3]], 1))
    assert seen == {True, False}


def test_masks_are_read_only_for_mask_archs_and_a_missing_one_is_named(tmp_path):
    path, images = _coco_file(tmp_path, [None], [[4, 4, 20, 20]])
    image, target = CocoDetection(path, images, image_size=48, train=False)[0]  # box-only: no segmentation needed
    assert "masks" not in target and target["boxes"].shape == (1, 4)
    with pytest.raises(UserError) as caught:
        CocoDetection(path, images, image_size=48, train=False, masks=True)
    assert caught.value.key == "annotations[0].segmentation" and "missing key" in caught.value.message
    path, images = _coco_file(tmp_path, [{"size": [H, W + 1], "counts": "abc"}], [[4, 4, 20, 20]])
    with pytest.raises(UserError, match=r"image's size \[height, width\] = \[64, 96\]"):
        CocoDetection(path, images, image_size=48, train=False, masks=True)


def test_the_synthetic_set_writes_masks_of_its_shapes(tmp_path):
    paths = generate_synthetic(tmp_path / "s", train_images=20, val_images=1, image_size=64, num_classes=6)
    data = json.loads(paths.train_annotations.read_text())
    coco = COCO(str(paths.train_annotations))
    kinds = set()
    for ann in data["annotations"]:
        seg = ann["segmentation"]
        kinds.add("polygons" if isinstance(seg, list) else "rle")
        mask = coco.annToMask(coco.anns[ann["id"]])
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        # the mask lies in the shape's box and reaches (within a pixel) each of its sides
        assert abs(xs.min() - x) <= 1 and abs(ys.min() - y) <= 1, ann
        assert abs(xs.max() + 1 - (x + w)) <= 1 and abs(ys.max() + 1 - (y + h)) <= 1, ann
    assert kinds == {"polygons", "rle"}  # the ring (with its hole) is an RLE


def _segm_reference(gt_path, dets: list[dict]) -> list[float]:
    gt = COCO(str(gt_path))
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), "segm")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return list(ev.stats[:6])


def test_segm_metrics_of_ground_truth_masks_are_one_and_of_a_shifted_mask_less(tmp_path):
    rect_a = np.zeros((H, W), np.uint8)
    rect_a[10:30, 6:40] = 1
    rect_b = np.zeros((H, W), np.uint8)
    rect_b[36:60, 44:84] = 1
    path, _ = _coco_file(tmp_path, [_rle(rect_a, True), _rle(rect_b, True)], [[6, 10, 34, 20], [44, 36, 40, 24]])
    gt = COCO(str(path))
    targets = [{"image_id": 5, "orig_size": torch.tensor([H, W])}]

    def predict(masks: list[np.ndarray]) -> dict[str, float]:
        # as Mask R-CNN returns them: probabilities pasted into its (half size) input image
        small = F.interpolate(torch.tensor(np.stack(masks), dtype=torch.float32)[:, None], size=(H // 2, W // 2),
                              mode="area")
        outputs = [{"boxes": torch.tensor([[3.0, 5.0, 20.0, 15.0], [25.0, 18.0, 45.0, 30.0]]),
                    "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 1]), "masks": small}]
        results = to_coco_results(outputs, targets, [(H // 2, W // 2)], lambda label: 3)
        assert [r["segmentation"]["size"] for r in results] == [[H, W]] * 2  # back in the file's pixels
        metrics = coco_metrics(gt, results, [5], iou_type="segm")
        assert set(metrics) == set(SEGM_METRICS)
        direct = [{"image_id": 5, "category_id": 3, "segmentation": _rle(m, True), "score": s}
                  for m, s in zip(masks, (0.9, 0.8))]
        assert [metrics[name] for name in SEGM_METRICS] == pytest.approx(_segm_reference(path, direct))
        return metrics

    exact = predict([rect_a, rect_b])
    assert exact["segm_mAP"] == pytest.approx(1.0) and exact["segm_AP50"] == pytest.approx(1.0)
    shifted = predict([rect_a, np.roll(rect_b, 8, axis=1)])  # IoU 32/48: found at IoU thresholds 0.5 to 0.65 only
    assert shifted["segm_AP50"] == pytest.approx(1.0) and 0.5 < shifted["segm_mAP"] < 0.8
    # the box metrics of the same results ignore the masks
    box = coco_metrics(gt, to_coco_results(
        [{"boxes": torch.tensor([[3.0, 5.0, 20.0, 15.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1]),
          "masks": torch.zeros(1, 1, H // 2, W // 2)}], targets, [(H // 2, W // 2)], lambda label: 3), [5])
    assert box["AP50"] == pytest.approx(0.5, abs=0.01)  # one of the two boxes found


def test_the_results_tables_carry_segm_columns_null_for_box_only_runs(tmp_path):
    from raykd.results import TableWriter, load_table
    from raykd.results.schema import epochs_schema, trials_schema

    assert {"segm_mAP", "segm_AP_L"} <= set(epochs_schema().names)
    assert {"final_segm_mAP", "best_segm_mAP"} <= set(trials_schema({}).names)
    writer = TableWriter(tmp_path, "exp", {"student.arch": pa.string()})
    base = {"epoch": 1, "epochs_total": 1, "bbox_mAP": 0.3, "AP50": 0.5, "AP75": 0.2, "AP_S": 0.1, "AP_M": 0.2,
            "AP_L": 0.3, "loss_total": 1.0, "loss_det": 1.0, "loss_kd": 0.0, "time_total_s": 1.0}
    writer.add_result("box", {"student.arch": "faster_rcnn"}, base)
    writer.add_result("mask", {"student.arch": "mask_rcnn"}, {**base, **{m: 0.25 for m in SEGM_METRICS}})
    writer.end_trial("box"), writer.end_trial("mask")
    writer.flush()
    trials = {row["trial_id"]: row for row in load_table(tmp_path).to_pylist()}
    assert trials["box"]["final_segm_mAP"] is None and trials["mask"]["final_segm_mAP"] == 0.25
    epochs = {row["trial_id"]: row for row in load_table(tmp_path, table="epochs").to_pylist()}
    assert epochs["box"]["segm_AP50"] is None and epochs["mask"]["segm_AP50"] == 0.25


def test_a_mask_rcnn_student_trains_with_masks_and_is_distilled_from_a_mask_rcnn_teacher(experiment_dict, tmp_path):
    schedule = {"epochs": 1, "batch_size": 4, "optimizer": "adamw", "lr": 1e-3, "warmup_iters": 2,
                "schedule": "constant", "threads": 1, "steps_per_epoch": 1}
    exp = experiment_dict(student={"arch": "mask_rcnn", "fpn_channels": 32},
                          teacher={"arch": "mask_rcnn", "backbone": "resnet18", "fpn_channels": 32, "train": schedule},
                          distill={"method": "mgd"}, train={**schedule, "output_dir": str(tmp_path / "run")})
    exp["data"]["val_max_images"] = 2
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    proc = subprocess.run([sys.executable, "-m", "raykd.train", str(path), "--no-progress"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (m,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for name in ("bbox_mAP", *SEGM_METRICS):  # null: COCO's -1, no objects of that size
        assert m[name] is None or 0.0 <= m[name] <= 1.0, name
    assert m["bbox_mAP"] is not None and m["segm_mAP"] is not None
    assert m["loss_mask"] > 0 and m["loss_mgd"] > 0 and {"loss_mgd_0", "loss_mgd_pool"} <= m.keys()
    assert "segm mAP" in proc.stdout
    teacher = [line for line in proc.stdout.splitlines() if line.startswith("teacher: epoch 1/1")]
    assert teacher and "segm mAP" in teacher[0]  # the teacher trained with masks too
    assert (tmp_path / "run" / "model_best.pt").is_file()


@pytest.mark.parametrize("fmt, block, key", [
    ("voc", {"student": {"arch": "mask_rcnn_v2"}}, "student.arch"),
    ("yolo", {"teacher": {"arch": "mask_rcnn", "train": {"epochs": 1}}}, "teacher.arch"),
])
def test_a_trained_mask_arch_on_voc_or_yolo_is_refused_in_one_line(tmp_path, fmt, block, key):
    split = {"format": "voc", "root": str(tmp_path / "voc"), "split": "train"} if fmt == "voc" else \
        {"format": "yolo", "yaml": str(tmp_path / "data.yaml"), "split": "train"}
    exp = {"data": {"train": split, "val": {**split, "split": "val"}}, **block,
           "train": {"output_dir": str(tmp_path / "run")}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    proc = subprocess.run([sys.executable, "-m", "raykd.train", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert key in proc.stderr and "instance masks" in proc.stderr and fmt.upper() in proc.stderr
    assert not (tmp_path / "run").exists()
    # A frozen Mask R-CNN teacher (no train block) needs no masks: taken on the same data.
    frozen = {"data": exp["data"], "teacher": {"arch": "mask_rcnn", "checkpoint": str(tmp_path / "t.pt")}}
    path.write_text(yaml.safe_dump(frozen))
    assert load_experiment(path).teacher.arch == "mask_rcnn"


@pytest.mark.parametrize("student", [{"arch": "mask_rcnn"}, None])
def test_a_search_of_mask_rcnn_students_on_boxes_only_data_is_refused_before_ray(experiment_dict, tmp_path, student):
    path, images = _coco_file(tmp_path, [None], [[4, 4, 20, 20]])  # a box without a segmentation
    split = {"annotations": str(path), "images": str(images)}
    exp = experiment_dict(**({"student": student} if student else {}))
    exp["data"] = {"train": split, "val": split, "image_size": 48}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    space = {"experiment": str(tmp_path / "exp.yaml"), "search": {"num_samples": 2},
             "space": {"train.lr": {"loguniform": [1e-4, 1e-3]}} if student else
             {"student.arch": {"choice": ["fcos", "mask_rcnn"]}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    proc = subprocess.run([sys.executable, "-m", "raykd.search", str(tmp_path / "space.yaml"),
                           "--storage", str(tmp_path / "results"), "--name", "masks"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert str(path) in proc.stderr and "annotations[0].segmentation" in proc.stderr
    assert "Started a local Ray" not in proc.stdout + proc.stderr
    assert not (tmp_path / "results" / "masks" / "tables").exists()  # nothing written
