"""End-to-end searches on tiny data with each executor, and search-then-confirm (driver kills: tests/e2e/faults/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from raykd.analyze.factors import SCALE
from raykd.results import load

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture
def tiny_space(write_experiment, tiny_teacher, tmp_path):
    def write(executor: str = "inline", num_samples: int = 3, epochs: int = 2, **extra) -> Path:
        exp = write_experiment(teacher=tiny_teacher, train={"epochs": epochs})
        raw = {
            "experiment": str(exp), "metric": "bbox_mAP", "mode": "max",
            "search": {"sampler": "tpe", "num_samples": num_samples, "max_concurrent": 2, "seed": 0},
            "scheduler": {"type": "none"},
            "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "executor": executor},
            "space": {"distill.method": {"choice": ["none", "mgd", "samkd"]},
                      "distill.alpha": {"loguniform": [1e-8, 1e-6], "when": {"distill.method": ["mgd", "samkd"]}},
                      "distill.pyramid_scales": {"choice": [[1], [1, 2]], "when": {"distill.method": "samkd"}}},
            "points_to_evaluate": ["baseline", {"distill.method": "samkd", "distill.pyramid_scales": [1, 2]}],
            "fixed": {"train.warmup_iters": 3},
            **extra,
        }
        path = tmp_path / f"space_{executor}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return write


def _check_tables(root: Path, n_trials: int, epochs: int):
    trials = load(root / "tables")
    assert len(trials) == n_trials and trials["trial_id"].is_unique
    assert set(trials["status"]) == {"TERMINATED"} and set(trials["epochs_run"]) == {epochs}
    assert (trials["final_bbox_mAP"] >= 0).all()
    assert trials["seed"].notna().all() and set(trials["train.warmup_iters"]) == {3}  # fixed keys are columns
    samkd = trials[trials["distill.method"] == "samkd"]
    assert len(samkd) >= 1 and [list(v) for v in samkd["distill.pyramid_scales"]][0] in ([1], [1, 2])
    assert trials.loc[trials["distill.method"] == "none", "distill.alpha"].isna().all()  # conditional: null
    epoch_rows = load(root / "tables", table="epochs")
    for trial_id in trials["trial_id"]:
        assert sorted(epoch_rows.loc[epoch_rows["trial_id"] == trial_id, "epoch"]) == list(range(1, epochs + 1))
    return trials


@pytest.mark.parametrize("executor", ["inline", "train"])
def test_search_runs_with_each_executor(ray_local, tiny_space, tmp_path, executor, capsys):
    from raykd.search.__main__ import main

    epochs = 2 if executor == "inline" else 1
    space = tiny_space(executor=executor, num_samples=3 if executor == "inline" else 2, epochs=epochs)
    assert main([str(space), "--storage", str(tmp_path / "results"), "--name", executor]) == 0
    out = capsys.readouterr().out
    assert "best (search phase)" in out and f"python -m raykd.analyze {tmp_path / 'results' / executor}" in out
    # Tune's banner (its experiment table, "View detailed results here") only with -v (raykd/console.py)
    assert "Configuration for experiment" not in out and "View detailed results here" not in out
    trials = _check_tables(tmp_path / "results" / executor, 3 if executor == "inline" else 2, epochs)
    assert set(trials["executor"]) == {executor}
    assert (tmp_path / "results" / executor / "optuna.journal").is_file()
    if executor == "inline":
        assert set(trials["distill.method"]) >= {"none", "samkd"}  # the points to evaluate ran


def _verdict_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("best (", "baseline (", "best − baseline",
                                                                      "best distilled ("))]


def test_confirmation_trials_run_on_fresh_seeds_and_lead_the_verdict(ray_local, tiny_space, tmp_path, capsys):
    from raykd.analyze.__main__ import main as analyze
    from raykd.search.__main__ import main as search

    # The search runs exactly its two points_to_evaluate (the baseline; samkd with the list
    # pyramid_scales [1, 2]), so the confirmed distilled configuration holds a list value.
    space = tiny_space(num_samples=2, epochs=2, confirm={"top": 1, "seeds": [100, 101], "baseline": True})
    root = tmp_path / "results" / "confirmed"
    assert search([str(space), "--storage", str(root.parent), "--name", root.name]) == 0
    out = capsys.readouterr().out
    assert "confirm: 2 configurations × 2 fresh seeds [100, 101] at the full budget (2 epochs)" in out

    trials = load(root / "tables")
    assert len(trials) == 6 and trials["trial_id"].is_unique
    searched, confirmed = trials[trials["phase"] == "search"], trials[trials["phase"] == "confirm"]
    assert len(searched) == 2 and len(confirmed) == 4
    assert set(confirmed["stop_reason"]) == {"completed"} and set(confirmed["epochs_run"]) == {2}
    assert not set(searched["seed"]) & {100, 101}
    # each confirmed configuration ran once per fresh seed; one of them is the baseline
    by_method = confirmed.groupby("distill.method")["seed"].apply(sorted).to_dict()
    assert by_method == {"none": [100, 101], "samkd": [100, 101]}
    samkd = confirmed[confirmed["distill.method"] == "samkd"]
    assert [list(v) for v in samkd["distill.pyramid_scales"]] == [[1, 2], [1, 2]]
    assert confirmed.loc[confirmed["distill.method"] == "none", "distill.pyramid_scales"].isna().all()

    search_lines = _verdict_lines(out)
    assert search_lines[0].startswith("best (confirmation on fresh seeds): ")
    assert "− baseline: " in search_lines[2] and "(95% CI, paired over 2 seeds)" in search_lines[2]

    assert analyze([str(root), "--format", "md"]) == 0
    analyze_out = capsys.readouterr().out
    assert _verdict_lines(analyze_out) == search_lines  # one definition of best, baseline and delta
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert summary["metric"] == "bbox_mAP" and summary["best"]["phase"] == "confirm"
    assert summary["best"]["n"] == 2 and summary["best"]["seeds"] == [100, 101]
    assert summary["baseline"]["n"] == 2
    assert summary["delta"]["paired"] is True and summary["delta"]["n"] == 2
    assert f"{summary['best']['mean'] * SCALE:.2f}" in search_lines[0]
    best_rows = confirmed[confirmed["distill.method"] == summary["best"]["config"]["distill.method"]]
    assert summary["best"]["mean"] == pytest.approx(best_rows["final_bbox_mAP"].mean())
    report = (root / "report" / "report.md").read_text()
    assert report.index("Confirmation on fresh seeds") < report.index("Leaderboard of the search phase")


def test_confirmation_over_teacher_seeds_with_overrides(ray_local, tiny_space, tmp_path, capsys):
    """confirm.teacher_seeds trains one teacher per seed and runs the distilled configuration with
    each on every seed (the baseline, which builds no teacher, once per seed); confirm.set reaches
    the confirmation trials only."""
    from raykd.analyze.__main__ import main as analyze
    from raykd.search.__main__ import main as search

    space = tiny_space(num_samples=2, epochs=1, confirm={
        "top": 1, "seeds": [100, 101], "baseline": True, "teacher_seeds": [7, 8],
        "set": {"train.epochs": 2, "data.val_max_images": 4}}, closing_note="note: a smoke test\n")
    root = tmp_path / "results" / "teachers"
    assert search([str(space), "--storage", str(root.parent), "--name", root.name]) == 0
    out = capsys.readouterr().out
    assert "× 2 teachers (seeds [7, 8]" in out and "(2 epochs, with train.epochs=2, data.val_max_images=4)" in out
    assert "[teacher seed 7] teacher: not found, training" in out and "[teacher seed 8] teacher: not found" in out

    trials = load(root / "tables")
    searched, confirmed = trials[trials["phase"] == "search"], trials[trials["phase"] == "confirm"]
    assert set(searched["epochs_run"]) == {1} and searched["data.val_max_images"].isna().all()
    assert searched["teacher.train.seed"].isna().all()
    assert set(confirmed["epochs_run"]) == {2} and set(confirmed["data.val_max_images"]) == {4}
    distilled = confirmed[confirmed["distill.method"] != "none"]
    assert sorted(zip(distilled["teacher.train.seed"], distilled["seed"])) == [(7, 100), (7, 101), (8, 100), (8, 101)]
    base = confirmed[confirmed["distill.method"] == "none"]
    assert sorted(base["seed"]) == [100, 101] and base["teacher.train.seed"].isna().all()

    record = json.loads((root / "teacher.json").read_text())["teacher_seeds"]
    assert sorted(record) == ["7", "8"] and record["7"]["checkpoint"] != record["8"]["checkpoint"]
    assert all(Path(r["checkpoint"]).is_file() and "bbox_mAP" in r for r in record.values())

    lines = out.splitlines()
    assert any(line.endswith("(95% CI, paired over all 4 (teacher seed, seed) pairs)") for line in lines)
    assert any(line.startswith("  teacher seed 7, teacher ") for line in lines)
    assert any(line.startswith("between teachers: ") for line in lines)
    assert lines[lines.index("note: a smoke test") + 1].startswith("tables: ")  # after the verdict
    assert analyze([str(root), "--format", "md"]) == 0
    capsys.readouterr()
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert [t["teacher_seed"] for t in summary["teachers"]["per_teacher"]] == [7, 8]
    assert summary["teachers"]["pooled"]["n"] == 4 and summary["teachers"]["between_teachers"]["teachers"] == 2
    assert "Confirmation across teacher seeds" in (root / "report" / "report.md").read_text()


def test_a_confirmation_at_another_image_size_scores_against_its_own_teacher(ray_local, tiny_space, tmp_path, capsys):
    """A proxy search (48 px) confirmed at the experiment's 64 px: the confirmation trains its own
    teacher, teacher.json records it as ``confirm_teacher``, and the report names its score
    beside the search's teacher."""
    from raykd.analyze.__main__ import main as analyze
    from raykd.search.__main__ import main as search

    space = tiny_space(num_samples=2, epochs=1, fixed={"train.warmup_iters": 3, "data.image_size": 48},
                       confirm={"top": 1, "seeds": [100, 101], "baseline": True, "set": {"data.image_size": 64}})
    root = tmp_path / "results" / "proxy"
    assert search([str(space), "--storage", str(root.parent), "--name", root.name]) == 0
    out = capsys.readouterr().out
    assert out.count("teacher: not found, training") == 2  # the search's 48 px teacher, then the confirmation's
    record = json.loads((root / "teacher.json").read_text())
    assert record["confirm_teacher"]["checkpoint"] != record["checkpoint"]
    assert "bbox_mAP" in record["confirm_teacher"]
    assert analyze([str(root), "--format", "md"]) == 0
    printed = capsys.readouterr().out
    assert f"teacher of the confirmation (confirm.set): {record['confirm_teacher']['bbox_mAP'] * 100:.2f}" in printed
    assert "the confirmation's (confirm.set): " in (root / "report" / "report.md").read_text()
