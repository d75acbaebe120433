"""A realistic search table, analysed: what ``python -m raykd.analyze`` costs and shows.

python benchmarks/analyze_report.py [--configs-per-method 3] [--seeds 3] [--root DIR] [--out FILE]

Writes, with :class:`raykd.results.TableWriter` (no Ray, no training), a search of the demo
space's shape under ``ROOT/search``: the baseline and three sampled configurations of each
of mgd / dmkd / samkd (mask ratio, α (log); for SAMKD β (log), pyramid scales and SLD;
fusion for DMKD and SAMKD), every configuration run with three seeds (30 trials). Curves
follow ``mAP(e) = final · (1 − exp(−e/τ))`` plus noise, ASHA-like stopping after epochs 2
and 4 for the weakest trials, one failed trial, one still running, and a ``teacher.json``. Then runs the
command on it (all formats) and times the stages.
Prints a table and writes JSON (default ``benchmarks/out/analyze_report.json``); the report
folder stays at ``ROOT/search/report`` to look at.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from raykd.results import TableWriter

PARAMS = {
    "distill.method": pa.string(),
    "distill.mask_ratio": pa.float64(),
    "distill.alpha": pa.float64(),
    "distill.beta": pa.float64(),
    "distill.pyramid_scales": pa.list_(pa.int64()),
    "distill.fusion": pa.string(),
    "distill.sld": pa.bool_(),
    "train.seed": pa.int64(),
}
EPOCHS = 8
GAIN = {"none": 0.0, "mgd": 0.020, "dmkd": 0.028, "samkd": 0.034}  # final bbox_mAP over the baseline


def _config(method: str, seed: int, rng: np.random.Generator) -> dict:
    config = {"distill.method": method, "train.seed": seed}
    if method != "none":
        config["distill.mask_ratio"] = float(rng.uniform(0.3, 0.9))
        config["distill.alpha"] = float(math.exp(rng.uniform(math.log(1e-6), math.log(1e-4))))
    if method in ("dmkd", "samkd"):
        config["distill.fusion"] = str(rng.choice(["learned", "mean", "gate"]))
    if method == "samkd":
        config["distill.beta"] = float(math.exp(rng.uniform(math.log(0.1), math.log(10.0))))
        config["distill.pyramid_scales"] = [[1], [1, 2], [1, 2, 4]][int(rng.integers(3))]
        config["distill.sld"] = bool(rng.integers(2))
    return config


def _final(config: dict) -> float:
    """Plausible final bbox_mAP of a configuration: baseline 0.30, method gain, penalties away from
    good settings (seed noise is added per trial)."""
    value = 0.30 + GAIN[config["distill.method"]]
    if "distill.mask_ratio" in config:
        value -= 0.04 * (config["distill.mask_ratio"] - 0.65) ** 2 / 0.1
        value -= 0.004 * abs(math.log10(config["distill.alpha"]) + 5.0)
    if config.get("distill.fusion") == "mean":
        value -= 0.004
    if "distill.pyramid_scales" in config:
        value += 0.002 * (len(config["distill.pyramid_scales"]) - 1) + (0.004 if config["distill.sld"] else 0.0)
        value -= 0.003 * abs(math.log10(config["distill.beta"]))
    return value


def write_search(root: Path, configs_per_method: int = 3, seeds: int = 3, seed: int = 0) -> Path:
    """A search folder (``root/tables`` + ``root/teacher.json``): the baseline and
    ``configs_per_method`` sampled configurations of each method, each run with ``seeds`` seeds."""
    rng = np.random.default_rng(seed)
    writer = TableWriter(root / "tables", "demo", PARAMS, flush_every_s=3600)
    trials = []
    for method in GAIN:
        for c in range(1 if method == "none" else configs_per_method):
            sampled = _config(method, 0, rng)
            for s in range(seeds):
                config = {**sampled, "train.seed": s}
                final = _final(config) + float(rng.normal(0, 0.003))
                trials.append((f"{method}_{c}_{s}", config, final, float(rng.uniform(2.0, 3.5))))
    finals = sorted(f for _, _, f, _ in trials)
    cut2, cut4 = finals[len(finals) // 4], finals[len(finals) // 2]
    for n, (trial_id, config, final, tau) in enumerate(trials):
        stop = EPOCHS
        if final < cut2 and n % 2 == 0:
            stop = 2
        elif final < cut4 and n % 3 == 0:
            stop = 4
        failed = trial_id == "samkd_1_1"
        running = trial_id == "dmkd_2_2"
        if failed:
            stop = 3
        if running:
            stop = 5
        clock = 0.0
        for epoch in range(1, stop + 1):
            mean = final * (1 - math.exp(-epoch / tau))
            value = max(mean + float(rng.normal(0, 0.002)), 0.0)
            epoch_time = 55.0 * (1.25 if config["distill.method"] == "samkd" else
                                 1.15 if config["distill.method"] != "none" else 1.0) * float(rng.uniform(0.95, 1.05))
            clock += epoch_time
            writer.add_result(trial_id, config, {
                "epoch": epoch, "epochs_total": EPOCHS, "bbox_mAP": value, "AP50": min(value * 1.7, 1.0),
                "AP75": value * 1.05, "AP_S": value * 0.55, "AP_M": value * 1.1, "AP_L": value * 1.35,
                "loss_total": 2.0 * math.exp(-epoch / 4) + 0.5, "loss_det": 1.6 * math.exp(-epoch / 4) + 0.4,
                "loss_kd": 0.4 * math.exp(-epoch / 4) if config["distill.method"] != "none" else 0.0,
                "lr": 0.01 * (0.1 if epoch > 6 else 1.0), "step_time": epoch_time / 500, "epoch_time": epoch_time,
                "executor": "ray_train", "num_workers": 2, "device": "cuda:0",
                "time_total_s": clock, "time_this_iter_s": epoch_time,
            })
        if failed:
            writer.end_trial(trial_id, "ERROR", config=config, error="Traceback (most recent call last):\n"
                             "  ...\nFloatingPointError: loss became NaN at step 1412 (loss_kd=inf)")
        elif not running:
            writer.end_trial(trial_id, config=config)
    writer.flush()
    (root / "teacher.json").write_text(json.dumps({"checkpoint": "teacher.pt", "bbox_mAP": 0.392, "AP50": 0.6,
                                                   "AP_S": 0.22, "AP_M": 0.43, "AP_L": 0.51, "epoch": 24}))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs-per-method", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--root", help="where the search folder goes (default: a temporary folder)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "analyze_report.json"))
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="raykd-analyze-")) / "search"
    t0 = time.perf_counter()
    write_search(root, args.configs_per_method, args.seeds)
    t1 = time.perf_counter()
    from raykd.analyze.pipeline import analyze, build_report
    from raykd.analyze.report import FORMATS, write

    t2 = time.perf_counter()
    analysis = analyze([str(root)])
    t3 = time.perf_counter()
    report = build_report(analysis)
    t4 = time.perf_counter()
    files = write(report, root / "report", FORMATS)
    t5 = time.perf_counter()
    result = {
        "trials": len(analysis.inputs.trials), "compared": len(analysis.scores.frame),
        "fidelity": analysis.scores.note,
        "seconds": {"write_tables": t1 - t0, "import": t2 - t1, "analyze": t3 - t2, "plots_and_format": t4 - t3,
                    "write_report": t5 - t4},
        "files": len(files), "report": str(root / "report"), "python": platform.python_version(),
        "machine": platform.machine(),
    }
    for key, value in result["seconds"].items():
        print(f"{key:18s} {value:7.2f} s")
    print(f"{result['trials']} trials, {result['compared']} compared; {result['files']} files in {result['report']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
