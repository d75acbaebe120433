"""What the Parquet results writer costs per trial event, against the length of an epoch.

python benchmarks/results_writer.py [--epoch-time 60] [--root DIR_OR_URI] [--out FILE]

Measures, on the results root given (default: a temporary local folder):
  * buffering one result (``TableWriter.add_result``);
  * publishing one part file (write to ``.tmp-``, then move) of 1, 10 and 100 rows, and a
    full ``flush()`` of one result (one epochs part + one trials part);
  * reading back a folder of 200 epochs parts and 200 trials parts (a 20-trial x 10-epoch
    search that flushed every result), deduplicated, as Arrow and as pandas; the first
    event of a restored driver (which reads the folder); ``compact`` and reading after it;
  * the worst case per epoch of a trial -- buffer + flush of its result -- as a fraction
    of ``--epoch-time`` seconds (60 s is the order of a CPU epoch).
Prints a table and writes JSON (default ``benchmarks/out/results_writer.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from raykd.epoch_record import EpochRecord, LossSummary
from raykd.results import TableWriter, compact, load, load_table
from raykd.results.store import join, list_parts, publish, resolve

PARAMS = {
    "distill.method": pa.string(),
    "distill.mask_ratio": pa.float64(),
    "distill.alpha": pa.float64(),
    "distill.beta": pa.float64(),
    "distill.pyramid_scales": pa.list_(pa.int64()),
    "distill.fusion": pa.string(),
    "train.seed": pa.int64(),
}
CONFIG = {"distill.method": "samkd", "distill.mask_ratio": 0.6, "distill.alpha": 2e-5, "distill.beta": 1e-6,
          "distill.pyramid_scales": "1,2,4", "distill.fusion": "gate", "train.seed": 1}


def result(epoch: int) -> dict:
    """A realistic trainer result: 6 metrics, 3 losses, 12 named loss terms, Tune's keys."""
    terms = {f"mgd_{level}": 0.1 * level for level in range(5)}
    terms.update({f"fgd_fg_p{level}": 0.01 * level for level in range(3, 8)})
    terms.update(classification=0.4, bbox_regression=0.3)
    record = EpochRecord(
        epoch=epoch, epochs_total=12, losses=LossSummary(total=1.5, det=1.0, kd=0.5, terms=terms),
        scores={"bbox_mAP": 0.3, "AP50": 0.5, "AP75": 0.3, "AP_S": -1.0, "AP_M": 0.2, "AP_L": 0.4},
        lr=0.01, step_time=0.2, epoch_time=60.0, time_total_s=60.0 * epoch, num_workers=2, device="cpu")
    return {**record.as_report(), "executor": "ray_train", "time_this_iter_s": 60.0,
            "training_iteration": epoch, "trial_id": "x", "done": False}


def timed(fn, repeats: int) -> dict:
    """Median/min/max seconds of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": repeats}


def bench_buffer(root: str, n: int) -> dict:
    writer = TableWriter(join(root, "buffer"), "bench", PARAMS, flush_every_s=1e9)
    writer.add_result("warm", CONFIG, result(1))  # the first event reads the (empty) folder
    trial_ids = [f"t{i:03d}" for i in range(20)]
    start = time.perf_counter()
    for i in range(n):
        writer.add_result(trial_ids[i % 20], CONFIG, result(i // 20 + 1))
    per = (time.perf_counter() - start) / n
    return {"median_s": per, "n": n}


def bench_publish(root: str, rows: int, repeats: int) -> dict:
    fs, base = resolve(root)
    scratch = join(root, f"rows-{rows}")
    writer = TableWriter(scratch, "bench", PARAMS, flush_every_s=1e9)
    for i in range(rows):
        writer.add_result(f"t{i}", CONFIG, result(1))
    writer.flush()
    table = load_table(scratch, table="epochs")  # `rows` epoch rows, as the writer builds them
    folder = join(base, f"publish-{rows}")
    return timed(lambda: publish(fs, folder, table), repeats)


def bench_flush(root: str, repeats: int) -> dict:
    writer = TableWriter(join(root, "flush"), "bench", PARAMS, flush_every_s=1e9)
    epochs = iter(range(1, 10**6))

    def one_result():
        writer.add_result("t0", CONFIG, result(next(epochs)))
        writer.flush()

    return timed(one_result, repeats)


def bench_read(root: str, repeats: int) -> dict:
    folder = join(root, "read")
    writer = TableWriter(folder, "bench", PARAMS, flush_every_s=0)
    for epoch in range(1, 11):
        for trial in range(20):
            writer.add_result(f"t{trial:02d}", CONFIG, result(epoch))
            writer.flush()  # one epochs part and one trials part per result
    fs, base = resolve(folder)
    counts = {name: len(list_parts(fs, join(base, name))) for name in ("trials", "epochs")}
    out = {"parts": counts}
    out["trials_arrow"] = timed(lambda: load_table(folder), repeats)
    out["epochs_arrow"] = timed(lambda: load_table(folder, table="epochs"), repeats)
    out["trials_pandas"] = timed(lambda: load(folder), repeats)
    out["resume_first_event"] = timed(
        lambda: TableWriter(folder, "bench", PARAMS).add_result("t00", CONFIG, result(11)), repeats)
    start = time.perf_counter()
    compact(folder)
    out["compact"] = {"median_s": time.perf_counter() - start, "n": 1}
    out["trials_arrow_compacted"] = timed(lambda: load_table(folder), repeats)
    out["epochs_arrow_compacted"] = timed(lambda: load_table(folder, table="epochs"), repeats)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epoch-time", type=float, default=60.0, help="seconds of one training epoch")
    parser.add_argument("--root", help="results root to write into (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "results_writer.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or tmp
        figures = {
            "buffer_result": bench_buffer(root, 2000),
            **{f"publish_{n}_rows": bench_publish(root, n, args.repeats) for n in (1, 10, 100)},
            "flush_one_result": bench_flush(root, args.repeats),
            "read_200_parts": bench_read(root, max(3, args.repeats // 6)),
        }
    per_epoch = figures["buffer_result"]["median_s"] + figures["flush_one_result"]["median_s"]
    report = {
        "epoch_time_s": args.epoch_time,
        "worst_case_per_trial_epoch_s": per_epoch,
        "overhead_fraction_of_epoch": per_epoch / args.epoch_time,
        "figures": figures,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "pyarrow": pa.__version__},
    }
    rows = [("buffer one result", figures["buffer_result"]["median_s"])]
    rows += [(f"publish a part of {n} rows", figures[f"publish_{n}_rows"]["median_s"]) for n in (1, 10, 100)]
    rows += [("flush one result (2 parts)", figures["flush_one_result"]["median_s"])]
    read = figures["read_200_parts"]
    rows += [(f"read trials ({read['parts']['trials']} parts), Arrow", read["trials_arrow"]["median_s"]),
             (f"read epochs ({read['parts']['epochs']} parts), Arrow", read["epochs_arrow"]["median_s"]),
             ("read trials, pandas", read["trials_pandas"]["median_s"]),
             ("first event after a restore (reads folder)", read["resume_first_event"]["median_s"]),
             ("compact both tables into 1 part each", read["compact"]["median_s"]),
             ("read trials after compaction", read["trials_arrow_compacted"]["median_s"]),
             ("read epochs after compaction", read["epochs_arrow_compacted"]["median_s"])]
    width = max(len(name) for name, _ in rows)
    print(f"{'operation':<{width}}  median ms")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds * 1e3:9.3f}")
    print(f"buffer + flush per trial-epoch: {per_epoch * 1e3:.2f} ms = "
          f"{report['overhead_fraction_of_epoch']:.2e} of a {args.epoch_time:g} s epoch")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
