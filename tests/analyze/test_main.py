"""``python -m raykd.analyze`` on tables written by TableWriter (no Ray): a conditional
parameter, ASHA-stopped trials, a failed trial, a running one, a teacher."""

import base64
import contextlib
import io
import json
import re
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats as sps

from raykd.analyze.__main__ import PROG, main
from raykd.epoch_record import EpochRecord, LossSummary
from raykd.errors import run_cli
from raykd.results import ParamSpec, TableWriter, write_run_row

PARAMS = {
    "distill.method": pa.string(),
    "distill.mask_ratio": pa.float64(),
    "distill.beta": pa.float64(),
    "distill.pyramid_scales": pa.list_(pa.int64()),
    "distill.sld": pa.bool_(),
    "train.seed": pa.int64(),
}
MGD = {"distill.method": "mgd", "distill.mask_ratio": 0.5}
SAMKD = {"distill.method": "samkd", "distill.mask_ratio": 0.5, "distill.beta": 1.0,
         "distill.pyramid_scales": [1, 2], "distill.sld": True}
EPOCHS = 4
# trial: (config, final-epoch level, epochs run, how it ends); bbox_mAP at epoch e = level * e / 4
TRIALS = {
    "b0": ({"distill.method": "none", "train.seed": 0}, 0.20, 4, "done"),
    "b1": ({"distill.method": "none", "train.seed": 1}, 0.21, 4, "done"),
    "b2": ({"distill.method": "none", "train.seed": 2}, 0.22, 4, "done"),
    "m0": ({**MGD, "train.seed": 0}, 0.24, 4, "done"),
    "m1": ({**MGD, "train.seed": 1}, 0.25, 4, "done"),
    "m2": ({**MGD, "train.seed": 2}, 0.26, 4, "done"),
    "n0": ({**MGD, "distill.mask_ratio": 0.8, "train.seed": 0}, 0.21, 2, "done"),  # stopped by ASHA
    "s0": ({**SAMKD, "train.seed": 0}, 0.27, 4, "done"),
    "s1": ({**SAMKD, "train.seed": 1}, 0.28, 4, "done"),
    "s2": ({**SAMKD, "distill.beta": 0.1, "train.seed": 0}, 0.22, 2, "done"),  # stopped by ASHA
    "f0": ({**SAMKD, "train.seed": 2}, 0.26, 3, "error"),
    "r0": ({**MGD, "distill.mask_ratio": 0.65, "train.seed": 1}, 0.25, 1, "running"),
}
ERROR = "Traceback (most recent call last):\n  ...\nFloatingPointError: loss_kd is NaN at step 120"
AT_EPOCH_2 = {"none": [0.10, 0.105, 0.11], "mgd": [0.12, 0.125, 0.13, 0.105], "samkd": [0.135, 0.14, 0.11]}


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A search folder: tables/ (trials, epochs, runs) and teacher.json."""
    root = tmp_path_factory.mktemp("search") / "demo"
    # distill.beta is a choice: categorical, tabulated per level even where a level has one trial
    writer = TableWriter(root / "tables", "demo", PARAMS, flush_every_s=3600,
                         specs={"distill.beta": ParamSpec("distill.beta", "choice", choices=(0.1, 1.0))})
    for trial, (config, level, run, end) in TRIALS.items():
        for epoch in range(1, run + 1):
            value = level * epoch / EPOCHS
            record = EpochRecord(
                epoch=epoch, epochs_total=EPOCHS, losses=LossSummary(total=None, det=None, kd=None),
                scores={"bbox_mAP": value, "AP50": 2 * value, "AP75": value, "AP_S": value / 2, "AP_M": value,
                        "AP_L": -1.0},
                lr=None, step_time=None, epoch_time=None, time_total_s=30.0 * epoch, num_workers=1, device="cpu")
            writer.add_result(trial, config, {**record.as_report(), "time_this_iter_s": 30.0, "executor": "inline"})
        if end == "done":
            writer.end_trial(trial, config=config)
        elif end == "error":
            writer.end_trial(trial, "ERROR", config=config, error=ERROR)
    writer.flush()
    write_run_row(root / "tables", {"experiment": "demo", "started_at": datetime.now(timezone.utc),
                                    "space_text": "metric: [bbox_mAP, AP_S]\nmode: [max, max]\n"})
    (root / "teacher.json").write_text(json.dumps({"checkpoint": "t.pt", "bbox_mAP": 0.4, "AP_S": 0.2}))
    # a part being written by a running search: readers must skip it
    (root / "tables" / "trials" / ".tmp-part-1-2-3.parquet").write_bytes(b"PAR1 partial")
    return root


@pytest.fixture(scope="module")
def report(search, tmp_path_factory):
    """The command run once with defaults: (report folder, printed summary)."""
    out = tmp_path_factory.mktemp("report")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([str(search), "--out", str(out)]) == 0
    return out, printed.getvalue()


def csv(out, name):
    return pd.read_csv(out / "csv" / f"{name}.csv", dtype={"level": str})


def test_summary_names_the_fidelity_the_best_and_the_failures(report):
    out, printed = report
    assert "trials: 12 (8 completed, 2 stopped early, 1 failed, 1 running); 10 compared" in printed
    assert "compared at epoch 2" in printed
    assert "failed: 1 trial(s)" in printed and "teacher: 40.00" in printed
    assert f"report: {out}" in printed


def test_ablation_of_the_method_matches_hand_computation_at_the_common_epoch(report):
    out, _ = report
    table = csv(out, "ablation_distill.method").set_index("level")
    assert list(table.index) == ["none", "mgd", "samkd"]  # dmkd/r0 is running, not yet at epoch 2
    for method, values in AT_EPOCH_2.items():
        assert table.loc[method, "n"] == len(values)
        assert table.loc[method, "mean"] == pytest.approx(np.mean(values))
        low, high = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
        assert (table.loc[method, "ci_low"], table.loc[method, "ci_high"]) == (pytest.approx(low), pytest.approx(high))
        assert table.loc[method, "AP_S"] == pytest.approx(np.mean(values) / 2)
    welch = sps.ttest_ind(AT_EPOCH_2["samkd"], AT_EPOCH_2["none"], equal_var=False).confidence_interval(0.95)
    assert (table.loc["samkd", "diff_low"], table.loc["samkd", "diff_high"]) == (
        pytest.approx(welch.low), pytest.approx(welch.high))
    assert table.loc["samkd", "failed"] == 1 and table.loc["none", "reference"]
    assert table["AP_L"].isna().all()  # pycocotools' -1: no large objects, not a zero


def test_conditional_parameter_is_tabulated_where_defined(report):
    out, _ = report
    beta = csv(out, "ablation_distill.beta").set_index("level")
    assert beta.loc["1", "n"] == 2 and beta.loc["0.1", "n"] == 1  # the three SAMKD trials at epoch 2
    assert beta.loc["1", "mean"] == pytest.approx(0.1375)
    md = (out / "report.md").read_text()
    assert "among the 3 trials where it is defined (distill.method ∈ {samkd})" in md
    importance = csv(out, "importance")
    assert "distill.beta" not in set(importance.loc[importance["scope"] == "all trials", "parameter"])


def test_leaderboard_pools_seeds_beside_baseline_and_teacher(report):
    out, _ = report
    board = csv(out, "leaderboard")
    top = board.iloc[0]
    assert top["config"].startswith("method=samkd, mask_ratio=0.5, beta=1") and top["n"] == 2
    assert top["seeds"] == "0, 1" and top["mean"] == pytest.approx(0.1375)
    base = board[board["role"] == "baseline"].iloc[0]
    assert (base["n"], base["mean"]) == (3, pytest.approx(0.105))
    teacher = board[board["role"] == "teacher"].iloc[0]
    assert teacher["mean"] == 0.4 and teacher["diff"] == pytest.approx(0.4 - 0.105)


def test_failed_and_left_out_trials_are_listed_with_their_error(report):
    out, _ = report
    excluded = csv(out, "excluded").set_index("trial_id")
    assert set(excluded.index) == {"f0", "r0"}
    assert excluded.loc["f0", "reason"] == "failed after 3 epoch(s)"
    assert "FloatingPointError" in excluded.loc["f0", "error"]
    assert excluded.loc["r0", "reason"] == "still running, not yet at epoch 2"
    md = (out / "report.md").read_text()
    assert "FloatingPointError: loss_kd is NaN at step 120" in md
    assert "common epoch: every trial compared at epoch 2" in md


def test_report_files_plots_and_self_contained_html(report):
    out, _ = report
    for name in ("effects", "effect_curves", "learning_curves", "cost", "importance", "parallel", "objectives"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    html = (out / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(images) == 7 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert not re.search(r"(src|href)=['\"](?!data:|#)", html)  # nothing outside the page
    assert "FloatingPointError" in html
    md = (out / "report.md").read_text()
    assert "![Learning curves](plots/learning_curves.png)" in md
    tex = (out / "report.tex").read_text()
    assert tex.startswith("\\documentclass") and tex.rstrip().endswith("\\end{document}")
    assert tex.count("\\begin{table}") == tex.count("\\end{table}") == len(list((out / "tex").glob("*.tex")))
    assert "bbox\\_mAP" in tex and "$\\pm$" in tex and "±" not in tex


def test_completed_fidelity_leaves_out_the_stopped_trials(search, tmp_path, capsys):
    assert main([str(search), "--fidelity", "completed", "--format", "csv", "--out", str(tmp_path)]) == 0
    table = csv(tmp_path, "ablation_distill.method").set_index("level")
    assert table.loc["mgd", "n"] == 3 and table.loc["mgd", "mean"] == pytest.approx(0.25)  # final epoch
    excluded = csv(tmp_path, "excluded").set_index("trial_id")
    assert excluded.loc["n0", "reason"] == "stopped early by the scheduler after epoch 2 of 4"
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "plots").exists()
    assert "completed trials only" in capsys.readouterr().out


def test_filter_by_and_metric(search, tmp_path, capsys):
    out = tmp_path / "r"
    assert main([str(search / "tables"), "--filter", "distill.method=none,samkd", "--by", "distill.method",
                 "--metric", "AP_S", "--format", "md,csv", "--out", str(out)]) == 0
    table = csv(out, "ablation_distill.method").set_index("level")
    assert list(table.index) == ["none", "samkd"]
    assert table.loc["samkd", "mean"] == pytest.approx(np.mean(AT_EPOCH_2["samkd"]) / 2)
    assert [p.name for p in (out / "csv").glob("ablation_*.csv")] == ["ablation_distill.method.csv"]
    assert (out / "plots" / "effects.png").exists() and not (out / "report.html").exists()
    assert "of 12 before --filter" in (out / "report.md").read_text()
    assert "teacher: 20.00" in capsys.readouterr().out  # teacher.json found beside the tables folder


def test_part_files_and_default_out(search, tmp_path, monkeypatch, capsys):
    parts = sorted(str(p) for p in (search / "tables").glob("*/part-*.parquet"))
    monkeypatch.chdir(tmp_path)
    assert main([*parts, "--format", "csv"]) == 0  # several inputs: ./report
    assert (tmp_path / "report" / "csv" / "leaderboard.csv").exists()
    assert "12 (8 completed" in capsys.readouterr().out
    assert main([str(search / "tables" / "trials"), "--format", "tex"]) == 0  # one table's folder: siblings too
    assert (search / "tables" / "trials" / "report" / "report.tex").exists()
    assert "compared at epoch 2" in capsys.readouterr().out  # the epochs table was found beside it


@pytest.mark.parametrize(("spec", "trials"), [
    ("distill.pyramid_scales=[1,2]", {"s0", "s1", "s2", "f0"}),
    ("distill.pyramid_scales=null", {"b0", "b1", "b2", "m0", "m1", "m2", "n0", "r0"}),
    ("distill.beta=null,0.1", {"b0", "b1", "b2", "m0", "m1", "m2", "n0", "r0", "s2"}),
    ("distill.sld=on", {"s0", "s1", "s2", "f0"}),
    ("distill.mask_ratio=0.5,0.8", {"m0", "m1", "m2", "n0", "s0", "s1", "s2", "f0"}),
    ("stop_reason=early_stopped", {"n0", "s2"}),
])
def test_filter_values_are_typed_by_column(search, spec, trials):
    from raykd.analyze.inputs import read_inputs

    assert set(read_inputs([str(search)], [spec]).trials["trial_id"]) == trials


def run_main(monkeypatch, capsys, *args):
    """``run_cli`` as the module runs it: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", [PROG, *args])
    with pytest.raises(SystemExit) as stop:
        run_cli(main, PROG)
    return stop.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--metric", "mAP"], "--metric: unknown metric 'mAP'; expected one of bbox_mAP, AP50"),
    (["--by", "distill.fusion"], "--by: unknown column 'distill.fusion'; factors: distill.method"),
    (["--by", "train.seed"], "is the seed"),
    (["--filter", "distill.method"], "--filter: expected KEY=VALUE"),
    (["--filter", "distill.nope=1"], "--filter: no column 'distill.nope'"),
    (["--filter", "distill.mask_ratio=abc"], "does not fit column type double"),
    (["--filter", "distill.method=fgd"], "--filter: no trials left after filtering"),
    (["--format", "pdf"], "--format: unknown format pdf"),
])
def test_user_errors_are_one_line_and_exit_2(search, tmp_path, monkeypatch, capsys, args, message):
    code, err = run_main(monkeypatch, capsys, str(search), "--out", str(tmp_path), *args)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"{PROG}: error: ")
    assert message in err


def test_no_tables_at_the_path(tmp_path, monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, str(tmp_path))
    assert code == 2 and "no raykd tables here" in err and str(tmp_path) in err
    code, err = run_main(monkeypatch, capsys, str(tmp_path / "missing"))
    assert code == 2 and "no such results folder or file" in err


def test_module_help_and_error_exit_in_a_real_process(tmp_path):
    helped = subprocess.run([sys.executable, "-m", "raykd.analyze", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0
    for option in ("--metric", "--by", "--filter", "--format", "--out", "--fidelity", "common-epoch"):
        assert option in helped.stdout
    failed = subprocess.run([sys.executable, "-m", "raykd.analyze", str(tmp_path)], capture_output=True, text=True)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr and len(failed.stderr.splitlines()) == 1
