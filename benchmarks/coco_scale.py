"""The data path at COCO size: building the train dataset, the driver's check and evaluation,
against pycocotools, each step in a fresh process.

    python benchmarks/coco_scale.py [--images 118287] [--val-images 5000] [--work DIR]
                                    [--out benchmarks/out/coco_scale.json]

Generates (once, kept in ``--work``) a COCO-train-sized annotation file (118,287 images, ~7.3
boxes each with a 12-point polygon, 1% crowd regions, 80 categories with COCO's id gaps: ~860k
boxes, ~250 MB), a val-sized one (5,000 images, ~34k boxes) and 100 detections per val image
(jittered truth and random boxes). Then, each in its own process: pycocotools' ``COCO(file)``;
raykd's ``CocoDetection`` with an empty index folder (first build) and again (second build:
the index is memory-mapped); the driver's check (``validate_data``'s index read and image
listing over 118k empty image files); pycocotools' ``COCOeval`` and raykd's evaluation
(``train.evaluator``'s default) of the detections, whose 12 stats must agree to 1e-6. Time is
wall time of the step alone, the median of ``--rounds`` interleaved rounds for the builds; peak
RSS is the process's ``ru_maxrss`` (and its growth over the RSS before the step, which leaves out
the interpreter and imports: torch for raykd). Ratios are of one run; prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(work: Path, n_train: int, n_val: int) -> None:
    import numpy as np
    import orjson

    def split(n_images: int, seed: int, first_id: int) -> dict:
        rng = np.random.default_rng(seed)
        sizes = rng.choice([(640, 480), (480, 640), (640, 427), (500, 375), (640, 640)], size=n_images)
        per_image = rng.poisson(7.3, size=n_images)
        n = int(per_image.sum())
        owner = np.repeat(np.arange(n_images), per_image)
        wh = sizes[owner].astype(np.float64)
        w = np.round(rng.uniform(0.02, 0.6, size=n) * wh[:, 0], 2)
        h = np.round(rng.uniform(0.02, 0.6, size=n) * wh[:, 1], 2)
        x = np.round(rng.uniform(0, 1, size=n) * (wh[:, 0] - w), 2)
        y = np.round(rng.uniform(0, 1, size=n) * (wh[:, 1] - h), 2)
        angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        px = np.round(x[:, None] + w[:, None] * (0.5 + 0.5 * np.cos(angles)), 2)
        py = np.round(y[:, None] + h[:, None] * (0.5 + 0.5 * np.sin(angles)), 2)
        polygons = np.stack([px, py], axis=2).reshape(n, 24).tolist()
        cats = rng.choice(COCO_CATEGORY_IDS, size=n).tolist()
        crowd = (rng.random(n) < 0.01).astype(int).tolist()
        ids = (first_id + np.arange(n_images)).tolist()
        images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": int(s[0]), "height": int(s[1])}
                  for i, s in zip(ids, sizes.tolist())]
        owner_ids = (first_id + owner).tolist()
        box = np.stack([x, y, w, h], axis=1).tolist()
        area = np.round(w * h * 0.785, 2).tolist()
        annotations = [{"id": k + 1, "image_id": owner_ids[k], "category_id": cats[k], "bbox": box[k],
                        "area": area[k], "iscrowd": crowd[k], "segmentation": [polygons[k]]} for k in range(n)]
        categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in COCO_CATEGORY_IDS]
        return {"info": {"description": "raykd coco_scale benchmark"}, "images": images,
                "annotations": annotations, "categories": categories}

    train = split(n_train, 0, 1)
    (work / "train.json").write_bytes(orjson.dumps(train))
    del train
    val = split(n_val, 1, 10_000_000)
    (work / "val.json").write_bytes(orjson.dumps(val))
    rng = np.random.default_rng(2)
    dets = []
    by_image: dict[int, list] = {}
    for ann in val["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image in val["images"]:
        truth = by_image.get(image["id"], [])
        for k in range(100):
            if k < len(truth) and rng.random() < 0.8:
                x, y, w, h = truth[k]["bbox"]
                j = rng.normal(0, 0.08, 4) * [w, h, w, h]
                box, cat = [x + j[0], y + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0)], truth[k]["category_id"]
            else:
                w, h = rng.uniform(8, image["width"] / 2), rng.uniform(8, image["height"] / 2)
                box = [rng.uniform(0, image["width"] - w), rng.uniform(0, image["height"] - h), w, h]
                cat = int(rng.choice(COCO_CATEGORY_IDS))
            dets.append({"image_id": image["id"], "category_id": cat, "bbox": [round(float(v), 2) for v in box],
                         "score": round(float(rng.random()), 4)})
    (work / "dets.json").write_bytes(orjson.dumps(dets))
    images = work / "images"
    images.mkdir(exist_ok=True)
    for i in range(1, n_train + 1):  # empty files: the driver's check only lists them
        (images / f"{i:012d}.jpg").touch()


def task(name: str, work: Path) -> dict:
    """One measured step in this (fresh) process."""
    if name == "pycocotools_build":
        import contextlib
        import io

        from pycocotools.coco import COCO

        before, start = _rss_mb(), time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(work / "train.json"))
        result = {"boxes": len(coco.anns)}
    elif name in ("raykd_first_build", "raykd_second_build"):
        from raykd.data import CocoDetection

        before, start = _rss_mb(), time.perf_counter()
        ds = CocoDetection(work / "train.json", work / "images", image_size=1333, train=True,
                           index_dir=work / "index")
        result = {"boxes": len(ds.index.arrays["boxes"])}
    elif name == "raykd_driver_check":
        from raykd.data.annindex import load_index
        from raykd.train.setup import missing_images

        before, start = _rss_mb(), time.perf_counter()
        index = load_index(work / "train.json", work / "index")
        result = {"missing": len(missing_images(index, work / "images"))}
    elif name in ("pycocotools_eval", "raykd_eval"):
        import numpy as np
        import orjson

        from raykd.data.annindex import load_index
        from raykd.data.cocoeval import coco_stats, ground_truth

        evaluator = "pycocotools" if name == "pycocotools_eval" else None
        if evaluator is None:
            from raykd.config import default_evaluator

            evaluator = default_evaluator()
        index = load_index(work / "val.json", None)
        gt = ground_truth(index.coco_dataset(), evaluator)
        dets = orjson.loads((work / "dets.json").read_bytes())
        before, start = _rss_mb(), time.perf_counter()
        stats = coco_stats(gt, dets, index.arrays["image_ids"].tolist(), "bbox", evaluator)
        result = {"evaluator": evaluator, "stats": np.asarray(stats).tolist(), "detections": len(dets)}
    else:
        raise SystemExit(f"unknown task {name}")
    return {"time_s": time.perf_counter() - start, "peak_rss_mb": _peak_mb(), "rss_before_mb": before, **result}


def run_task(name: str, work: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--task", name, "--work", str(work)], capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=118_287, help="train images (default: COCO train2017's)")
    parser.add_argument("--val-images", type=int, default=5000, help="val images (default: val2017's)")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/coco_scale_data"),
                        help="where the generated files are kept between runs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/coco_scale.json"))
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of the build steps; the median is reported (default: 3)")
    parser.add_argument("--task", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:
        print(json.dumps(task(args.task, args.work)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    meta = args.work / "generated.json"
    wanted = {"images": args.images, "val_images": args.val_images, "version": 1}
    if not meta.is_file() or json.loads(meta.read_text()) != wanted:
        print(f"generating {args.images} train and {args.val_images} val images' annotations in {args.work} ...",
              flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                        f"import coco_scale; from pathlib import Path; "
                        f"coco_scale.generate(Path({str(args.work)!r}), {args.images}, {args.val_images})"],
                       check=True)
        meta.write_text(json.dumps(wanted))
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    import shutil
    import statistics

    runs: dict[str, list[dict]] = {}
    for round_ in range(args.rounds):  # interleaved, so that each ratio compares the same conditions
        shutil.rmtree(args.work / "index", ignore_errors=True)
        for name in ("pycocotools_build", "raykd_first_build", "raykd_second_build", "raykd_driver_check"):
            print(f"round {round_ + 1}/{args.rounds}: {name} ...", flush=True)
            runs.setdefault(name, []).append(run_task(name, args.work))
    for name in ("pycocotools_eval", "raykd_eval"):
        print(f"{name} ...", flush=True)
        runs[name] = [run_task(name, args.work)]
    rows = {}
    for name, results in runs.items():  # the median time's run, with every time kept
        ordered = sorted(results, key=lambda r: r["time_s"])
        rows[name] = {**ordered[len(ordered) // 2], "times_s": [r["time_s"] for r in results],
                      "median_time_s": statistics.median(r["time_s"] for r in results)}
    ref_build, ref_eval = rows["pycocotools_build"], rows["pycocotools_eval"]
    import numpy as np

    stats_diff = float(np.max(np.abs(np.subtract(rows["raykd_eval"]["stats"], ref_eval["stats"]))))
    ratios = {}
    for name in ("raykd_first_build", "raykd_second_build", "raykd_driver_check"):
        r = rows[name]
        ratios[name] = {"time": r["median_time_s"] / ref_build["median_time_s"],
                        "peak_rss": r["peak_rss_mb"] / ref_build["peak_rss_mb"],
                        "rss_growth": (r["peak_rss_mb"] - r["rss_before_mb"])
                        / (ref_build["peak_rss_mb"] - ref_build["rss_before_mb"])}
    ratios["raykd_eval"] = {"time": rows["raykd_eval"]["median_time_s"] / ref_eval["median_time_s"]}
    train_mb = (args.work / "train.json").stat().st_size / 2**20
    print(f"\ntrain file: {args.images} images, {rows['pycocotools_build']['boxes']} annotations, {train_mb:.0f} MB; "
          f"val: {args.val_images} images, {rows['raykd_eval']['detections']} detections")
    print(f"{'step':<22}{'time s':>9}{'peak MB':>9}{'growth MB':>11}{'time x':>8}{'peak x':>8}{'growth x':>10}")
    for name, r in rows.items():
        ratio = ratios.get(name, {})
        fmt = lambda k, ratio=ratio: f"{ratio[k]:.2f}" if k in ratio else "-"  # noqa: E731
        print(f"{name:<22}{r['median_time_s']:>9.2f}{r['peak_rss_mb']:>9.0f}{r['peak_rss_mb'] - r['rss_before_mb']:>11.0f}"
              f"{fmt('time'):>8}{fmt('peak_rss'):>8}{fmt('rss_growth'):>10}")
    print(f"evaluation stats, raykd ({rows['raykd_eval']['evaluator']}) vs pycocotools: max |diff| {stats_diff:.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.platform(), "cpus": __import__("os").cpu_count(),
                                    "train_file_mb": train_mb, "rows": rows, "ratios": ratios,
                                    "eval_stats_max_abs_diff": stats_diff}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
