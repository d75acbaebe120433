"""faster_coco_eval and pycocotools give the same 12 COCOeval stats through raykd.data.cocoeval
(crowd regions, images without objects, categories never detected or never present), and
`raykd.data evaluate` scores a detections file or refuses it in one line."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from raykd.data.__main__ import main as data_main
from raykd.data.annindex import load_index
from raykd.data.cocoeval import EVALUATORS, STAT_NAMES, coco_stats, ground_truth
from raykd.errors import UserError

H = W = 64


def _rect(x: int, y: int, w: int, h: int) -> dict:
    m = np.zeros((H, W), np.uint8)
    m[y:y + h, x:x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def crafted(tmp_path: Path) -> tuple[Path, list[dict]]:
    """Ground truth: 12 images (2 empty), 4 categories (id 9 has no objects; id 5 is never
    detected), crowd regions, every size range; detections: jittered truth, misses, false
    positives, detections on empty images and in crowd regions, ties in score."""
    rng = np.random.default_rng(0)
    images = [{"id": i, "file_name": f"{i}.png", "width": W, "height": H} for i in range(1, 13)]
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 3, 5, 9)]
    anns, dets = [], []
    for image in images[:10]:
        for _ in range(int(rng.integers(1, 6))):
            w, h = int(rng.integers(3, 40)), int(rng.integers(3, 40))
            x, y = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
            cat = int(rng.choice([1, 3, 5]))
            crowd = int(rng.random() < 0.15)
            anns.append({"id": len(anns) + 1, "image_id": image["id"], "category_id": cat, "bbox": [x, y, w, h],
                         "area": float(w * h), "iscrowd": crowd, "segmentation": _rect(x, y, w, h)})
            if cat != 5 and rng.random() < 0.8:
                jx, jy = int(rng.integers(-2, 3)), int(rng.integers(-2, 3))
                bx, by = min(max(x + jx, 0), W - w), min(max(y + jy, 0), H - h)
                dets.append({"image_id": image["id"], "category_id": cat, "bbox": [bx, by, w, h],
                             "score": round(float(rng.random()), 2), "segmentation": _rect(bx, by, w, h)})
    for image in images:  # false positives everywhere, empty images included
        for _ in range(3):
            w, h = int(rng.integers(2, 30)), int(rng.integers(2, 30))
            x, y = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
            dets.append({"image_id": image["id"], "category_id": int(rng.choice([1, 3, 9])), "bbox": [x, y, w, h],
                         "score": round(float(rng.random()), 2), "segmentation": _rect(x, y, w, h)})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path, dets


def reference(path: Path, dets: list[dict], iou_type: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        drop = "bbox" if iou_type == "segm" else "segmentation"
        ev = COCOeval(gt, gt.loadRes([{k: v for k, v in d.items() if k != drop} for d in dets]), iou_type)
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return np.asarray(ev.stats)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("evaluator", EVALUATORS)
def test_both_evaluators_give_pycocotools_stats(tmp_path: Path, evaluator: str, iou_type: str) -> None:
    path, dets = crafted(tmp_path)
    index = load_index(path, None, masks=True)
    gt = ground_truth(index.coco_dataset(segmentations=iou_type == "segm"), evaluator)
    ours = coco_stats(gt, dets, index.arrays["image_ids"].tolist(), iou_type, evaluator)
    ref = reference(path, dets, iou_type)
    assert ours.shape == (12,) and 0.05 < ref[0] < 0.95 and ref[1] > 0.2  # scores that mean something
    np.testing.assert_allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("evaluator", EVALUATORS)
def test_no_detections_and_image_subsets(tmp_path: Path, evaluator: str) -> None:
    path, dets = crafted(tmp_path)
    gt = ground_truth(load_index(path, None).coco_dataset(), evaluator)
    assert coco_stats(gt, [], [1, 2], "bbox", evaluator)[0] == 0.0
    assert (coco_stats(gt, [], [11, 12], "bbox", evaluator) == -1).all()  # nothing to find there
    sub = coco_stats(gt, [d for d in dets if d["image_id"] <= 4], [1, 2, 3, 4], "bbox", evaluator)
    with contextlib.redirect_stdout(io.StringIO()):
        ref_gt = COCO(str(path))
        ev = COCOeval(ref_gt, ref_gt.loadRes([{k: v for k, v in d.items() if k != "segmentation"}
                                              for d in dets if d["image_id"] <= 4]), "bbox")
        ev.params.imgIds = [1, 2, 3, 4]
        ev.evaluate(), ev.accumulate(), ev.summarize()
    np.testing.assert_allclose(sub, ev.stats, atol=1e-6)


def test_evaluate_command_prints_the_metrics_as_json(tmp_path: Path, capsys) -> None:
    path, dets = crafted(tmp_path)
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(json.dumps([{k: v for k, v in d.items() if k != "segmentation"} for d in dets]))
    for evaluator in EVALUATORS:
        assert data_main(["evaluate", "--annotations", str(path), "--detections", str(dets_path),
                          "--evaluator", evaluator]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert list(printed) == list(STAT_NAMES["bbox"])
        np.testing.assert_allclose(list(printed.values()), reference(path, dets, "bbox"), atol=1e-6)
    segm_path = tmp_path / "segm.json"
    segm_path.write_text(json.dumps([{k: v for k, v in d.items() if k != "bbox"} for d in dets]))
    assert data_main(["evaluate", "--annotations", str(path), "--detections", str(segm_path), "--iou-type", "segm"]) == 0
    printed = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose([printed[n] for n in STAT_NAMES["segm"]], reference(path, dets, "segm"), atol=1e-6)


@pytest.mark.parametrize(("content", "key", "words"), [
    (None, "--detections", "not found"),
    ('{"annotations": []}', "", "got a COCO annotation file"),
    ("[1, 2", "", "not valid JSON"),
    ('{"a": 1}', "", "expected a list of detections"),
    ('[{"image_id": 99, "category_id": 1, "score": 1, "bbox": [0, 0, 1, 1]}]', "[0].image_id", "id of an image"),
    ('[{"image_id": 1, "category_id": 4, "score": 1, "bbox": [0, 0, 1, 1]}]', "[0].category_id", "category ids"),
    ('[{"image_id": 1, "category_id": 1, "score": "x", "bbox": [0, 0, 1, 1]}]', "[0].score", "finite number"),
    ('[{"image_id": 1, "category_id": 1, "score": 1, "bbox": [0, 0, -1, 1]}]', "[0].bbox", "width and height"),
    ('[{"image_id": 1, "category_id": 1, "score": 1}]', "[0].bbox", "missing key"),
    ('[{"image_id": [1], "category_id": 1, "score": 1, "bbox": [0, 0, 1, 1]}]', "[0].image_id", "id of an image"),
])
def test_evaluate_command_refuses_bad_detections_naming_the_entry(tmp_path: Path, content, key, words) -> None:
    path, _ = crafted(tmp_path)
    dets = tmp_path / "dets.json"
    if content is not None:
        dets.write_text(content)
    with pytest.raises(UserError) as err:
        data_main(["evaluate", "--annotations", str(path), "--detections", str(dets)])
    assert err.value.file == str(dets) and (err.value.key or "") == key and words in err.value.message


def test_evaluate_command_exit_code_and_one_line(tmp_path: Path) -> None:
    dets = tmp_path / "dets.json"
    dets.write_text("[]")
    proc = subprocess.run([sys.executable, "-m", "raykd.data", "evaluate", "--annotations", str(tmp_path / "no.json"),
                           "--detections", str(dets)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"python -m raykd.data: error: {tmp_path / 'no.json'}: annotation "
                                                "file not found"]
