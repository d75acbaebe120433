"""Facts defined once: URIs, the search folder's layout, path-typed config keys,
how a trial stopped. Each test fails when a copy drifts from the definition or one comes back."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from raykd.config import PATH_KEYS, SHARED_PATH_KEYS, ExperimentConfig, load_experiment, path_field, path_keys
from raykd.results import TableWriter, load_table
from raykd.results.layout import SearchFolder
from raykd.search.space import Space
from raykd.stop_reasons import stop_reason, stopped_early_text
from raykd.submit.package import node_local_paths
from raykd.uri import is_shared_uri, is_uri, resolve_storage

ROOT = Path(__file__).resolve().parent.parent


def test_is_uri_is_the_only_scheme_test_in_the_package():
    assert is_uri("s3://bucket/x") and is_uri("file:///tmp/x") and is_uri("http://head:8265")
    assert not any(is_uri(p) for p in ("results", "/abs/results", "~/results", Path("/x")))
    assert is_shared_uri("gs://b/x") and not is_shared_uri("file:///tmp/x") and not is_shared_uri("/mnt/nfs")
    assert resolve_storage("s3://bucket/raykd/") == "s3://bucket/raykd"
    scattered = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "raykd").rglob("*.py"))
                 if path.name != "uri.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"""["']://["']\s+(not\s+)?in\b""", line)]
    assert scattered == [], "test with raykd.uri.is_uri instead"


def test_path_keys_come_from_the_marked_fields_weights_included():
    for key in ("teacher.weights", "teacher.backbone_weights", "student.weights", "student.backbone_weights",
                "teacher.checkpoint", "data.train.annotations", "data.val.root", "data.val.yaml", "cache_dir"):
        assert key in SHARED_PATH_KEYS, key
    assert set(PATH_KEYS) - set(SHARED_PATH_KEYS) == {"train.output_dir", "teacher.train.output_dir"}
    assert len(PATH_KEYS) == len(set(PATH_KEYS))
    assert path_keys(ExperimentConfig) == PATH_KEYS

    from pydantic import BaseModel

    class Extra(BaseModel):  # a new marked field is a path key without another list to edit
        notes: str = path_field("notes.txt")
        inner: ExperimentConfig | None = None

    assert path_keys(Extra)[:2] == ("notes", "inner.data.train.annotations")


def test_relative_weights_files_resolve_and_are_named_for_multi_node_clusters(tmp_path):
    exp = {"data": {"synthetic": {"out_dir": "/abs/data"}}, "cache_dir": "/abs/cache",
           "student": {"weights": "weights/student.pt", "backbone_weights": "ResNet18_Weights.IMAGENET1K_V1"},
           "teacher": {"checkpoint": "/abs/t.pt", "backbone_weights": "weights/backbone.pt"}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"experiment": "exp.yaml",
                                                         "space": {"distill.alpha": {"choice": [1.0]}}}))
    cfg = load_experiment(tmp_path / "exp.yaml")
    assert cfg.student.weights == str(tmp_path / "weights" / "student.pt")
    assert cfg.student.backbone_weights == "ResNet18_Weights.IMAGENET1K_V1"  # an enum, not a path
    assert cfg.teacher.backbone_weights == str(tmp_path / "weights" / "backbone.pt")
    space = Space(tmp_path / "space.yaml")
    assert node_local_paths(space, {}, "/shared") == ["student.weights", "teacher.backbone_weights"]
    assert node_local_paths(space, {"student.weights": "/shared/s.pt"}, "/shared") == ["teacher.backbone_weights"]


def test_search_and_readers_share_one_layout(tmp_path):
    paths = SearchFolder.of(str(tmp_path), "s1")
    assert (paths.root, paths.storage, paths.name) == (f"{tmp_path}/s1", str(tmp_path), "s1")
    assert paths.tables == f"{tmp_path}/s1/tables" and paths.teacher == f"{tmp_path}/s1/teacher.json"
    assert paths.confirm == f"{tmp_path}/s1/confirm"
    uri = SearchFolder.of("s3://bucket/x/", "s1")
    assert (uri.root, uri.storage, uri.name, uri.journal) == ("s3://bucket/x/s1", "s3://bucket/x", "s1", None)
    writer = TableWriter(paths.tables, "s1", {"distill.method": pa.string()}, flush_every_s=0)
    writer.add_result("t1", {"distill.method": "none"}, {"epoch": 1, "epochs_total": 2, "bbox_mAP": 0.1})
    writer.end_trial("t1")
    writer.flush()
    assert load_table(paths.tables)["stop_reason"].to_pylist() == [stop_reason("TERMINATED", 1, 2)]


@pytest.mark.parametrize("status, run, total, reason", [
    ("RUNNING", 1, 3, "running"), ("ERROR", 1, 3, "error"), ("TERMINATED", 2, 3, "early_stopped"),
    ("TERMINATED", 3, 3, "completed"), ("TERMINATED", 2, None, "completed")])
def test_one_definition_of_stopped_early(status, run, total, reason):
    from raykd.analyze.scores import _not_completed
    from raykd.tracking import feed

    assert stop_reason(status, run, total) == reason
    assert feed.stop_reason is stop_reason  # the trackers record what the tables hold
    if reason == "early_stopped":
        row = {"status": status, "stop_reason": reason, "epochs_run": run, "epochs_total": total}
        assert _not_completed(row) == stopped_early_text(run, total)
        assert stopped_early_text(run, total) == f"stopped early by the scheduler after epoch {run} of {total}"


def test_progress_lines_say_stopped_early_as_the_analysis_does(capsys):
    from types import SimpleNamespace

    from raykd.search.progress import ProgressCallback

    progress = ProgressCallback("bbox_mAP", "max", epochs=4)
    for trial_id, epoch in (("a", 2), ("b", 4)):
        trial = SimpleNamespace(trial_id=trial_id, config={}, last_result={"bbox_mAP": 0.5})
        progress.on_trial_start(0, [], trial)
        progress.on_trial_result(0, [], trial, {"epoch": epoch, "bbox_mAP": 0.5})
        progress.on_trial_complete(0, [], trial)
    out = capsys.readouterr().out
    assert f"trial a {stopped_early_text(2, 4)}\n" in out and "trial b completed" in out
    assert progress._counts["stopped"] == 1 and progress._counts["done"] == 1
