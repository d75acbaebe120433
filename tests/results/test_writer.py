"""TableWriter and readers without Ray: atomic parts, dedup, schema evolution, filters."""

import os
import subprocess
import warnings

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import raykd.results.read as read_module
import raykd.results.store as store
from raykd.epoch_record import EpochRecord, LossSummary
from raykd.errors import UserError
from raykd.results import SCHEMA_VERSION, TableWriter, compact, latest_sql, latest_trials, load, load_table, write_run
from raykd.results.read import read_parts
from raykd.results.store import publish, resolve

PARAMS = {"distill.method": pa.string(), "distill.mask_ratio": pa.float64()}


def result(epoch, bbox=0.1, epochs_total=3, time_total_s=None, **extra):
    """A trainer result as the Tune callback passes it (metrics dict + Tune's keys)."""
    record = EpochRecord(
        epoch=epoch, epochs_total=epochs_total,
        losses=LossSummary(total=3.0, det=2.0, kd=1.0, terms={"mgd": 0.75, "mgd_0": 0.25}),
        scores={"bbox_mAP": bbox, "AP50": 0.5, "AP75": 0.25, "AP_S": -1.0, "AP_M": 0.2, "AP_L": 0.3},
        lr=0.01, step_time=0.05, epoch_time=10.0,
        time_total_s=10.0 * epoch if time_total_s is None else time_total_s, num_workers=2, device="cpu")
    return {
        **record.as_report(),
        "executor": "ray_train",
        "time_this_iter_s": 10.0,
        "training_iteration": 1,  # Tune restarts it after a restore: must not matter
        "trial_id": "ignored",
        **extra,
    }


CONFIG = {"distill.method": "mgd", "distill.mask_ratio": 0.5}


def parts(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# --- rows ------------------------------------------------------------------------------


def test_trial_and_epoch_rows_from_results(tmp_path):
    writer = TableWriter(tmp_path, "exp", PARAMS)
    for epoch, bbox in ((1, 0.2), (2, 0.4), (3, 0.3)):
        writer.add_result("t1", CONFIG, result(epoch, bbox))
    writer.end_trial("t1")
    writer.add_result("t2", CONFIG, result(1, 0.1))  # stopped by the scheduler after epoch 1
    writer.end_trial("t2")
    writer.add_result("t3", CONFIG, result(1, 0.1))
    writer.end_trial("t3", "ERROR", error="ValueError: boom")
    writer.add_result("t4", CONFIG, result(1, 0.1))
    assert writer.flush() == 6 + 4

    trials = {row["trial_id"]: row for row in load_table(tmp_path).to_pylist()}
    t1 = trials["t1"]
    assert (t1["status"], t1["stop_reason"], t1["error"]) == ("TERMINATED", "completed", None)
    assert (t1["final_bbox_mAP"], t1["best_bbox_mAP"], t1["best_epoch"]) == (0.3, 0.4, 2)
    assert t1["final_AP_S"] is None and t1["best_AP_S"] is None  # pycocotools' -1
    assert (t1["epochs_run"], t1["epochs_total"], t1["wall_s"]) == (3, 3, 30.0)
    assert t1["device_hours"] == pytest.approx(30.0 * 2 / 3600)
    assert dict(t1["loss_terms"]) == {"mgd": 0.75, "mgd_0": 0.25}
    assert (t1["loss_total"], t1["executor"], t1["num_workers"], t1["device"]) == (3.0, "ray_train", 2, "cpu")
    assert (trials["t2"]["status"], trials["t2"]["stop_reason"]) == ("TERMINATED", "early_stopped")
    assert (trials["t3"]["status"], trials["t3"]["stop_reason"]) == ("ERROR", "error")
    assert trials["t3"]["error"] == "ValueError: boom"
    assert (trials["t4"]["status"], trials["t4"]["stop_reason"]) == ("RUNNING", "running")

    epochs = load_table(tmp_path, table="epochs", filters={"trial_id": "t1"}).to_pylist()
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert [r["bbox_mAP"] for r in epochs] == [0.2, 0.4, 0.3]
    assert epochs[0]["AP_S"] is None and epochs[0]["lr"] == 0.01
    assert dict(epochs[0]["loss_terms"]) == {"mgd": 0.75, "mgd_0": 0.25}
    assert "distill.method" not in load_table(tmp_path, table="epochs").column_names


def test_maybe_flush_waits_for_the_interval(tmp_path):
    slow = TableWriter(tmp_path / "slow", "exp", PARAMS, flush_every_s=3600)
    slow.add_result("t", CONFIG, result(1))
    assert slow.maybe_flush() == 0 and slow.pending == 2
    assert parts(tmp_path / "slow" / "epochs") == []
    eager = TableWriter(tmp_path / "eager", "exp", PARAMS, flush_every_s=0)
    eager.add_result("t", CONFIG, result(1))
    assert eager.maybe_flush() == 2 and eager.pending == 0
    assert len(parts(tmp_path / "eager" / "epochs")) == 1


def test_result_without_epoch_writes_no_epoch_row(tmp_path):
    writer = TableWriter(tmp_path, "exp", PARAMS)
    writer.add_result("t", CONFIG, {"loss_total": 1.0, "training_iteration": 1})
    writer.flush()
    assert load_table(tmp_path)["epochs_run"].to_pylist() == [0]
    assert parts(tmp_path / "epochs") == []


# --- atomic publishing -----------------------------------------------------------------


def test_failed_write_leaves_no_part_and_existing_parts_intact(tmp_path, monkeypatch):
    writer = TableWriter(tmp_path, "exp", PARAMS)
    writer.add_result("t1", CONFIG, result(1, 0.1))
    writer.flush()
    before = {name: parts(tmp_path / name) for name in ("trials", "epochs")}

    def half_write(table, sink):
        sink.write(b"PAR1" + b"\0" * 100)  # a partial Parquet file, then the disk fails
        raise OSError("disk full")

    monkeypatch.setattr(store, "_write_parquet", half_write)
    writer.add_result("t1", CONFIG, result(2, 0.2))
    with pytest.raises(OSError, match="disk full"):
        writer.flush()
    assert {name: parts(tmp_path / name) for name in ("trials", "epochs")} == before  # no .tmp- left
    assert load_table(tmp_path, table="epochs")["epoch"].to_pylist() == [1]
    assert writer.pending == 2  # kept for the next flush

    monkeypatch.undo()
    writer.flush()
    assert load_table(tmp_path, table="epochs")["epoch"].to_pylist() == [1, 2]
    assert load_table(tmp_path)["epochs_run"].to_pylist() == [2]


def test_part_being_written_is_invisible_to_readers(tmp_path, monkeypatch):
    writer = TableWriter(tmp_path, "exp", PARAMS)
    writer.add_result("t1", CONFIG, result(1))
    writer.flush()
    real_write = store._write_parquet
    seen = []

    def write_and_look(table, sink):
        real_write(table, sink)  # the bytes are on disk under the temporary name
        name = table.schema.metadata[b"raykd.table"].decode()
        assert any(f.startswith(".tmp-") for f in os.listdir(tmp_path / name))
        seen.append(read_parts(tmp_path, name, missing_ok=False).num_rows)

    monkeypatch.setattr(store, "_write_parquet", write_and_look)
    writer.add_result("t1", CONFIG, result(2))
    writer.flush()
    assert seen == [1, 1]  # epochs, then trials: only the old rows while writing
    assert load_table(tmp_path, table="epochs")["epoch"].to_pylist() == [1, 2]


def test_part_names_are_unique_and_tmp_files_ignored(tmp_path):
    fs, base = resolve(tmp_path)
    table = pa.table({"experiment": ["e"], "trial_id": ["t"], "seq": [1]})
    names = {publish(fs, f"{base}/trials", table) for _ in range(20)}
    assert len(names) == 20
    assert all(os.path.basename(n).startswith("part-") and f"-{os.getpid()}-" in n for n in names)
    (tmp_path / "trials" / ".tmp-part-1-2-3.parquet").write_bytes(b"PAR1 garbage")
    assert load_table(tmp_path).num_rows == 1


# --- deduplication ---------------------------------------------------------------------


def test_readers_keep_the_newest_row(tmp_path):
    writer = TableWriter(tmp_path, "exp", PARAMS, flush_every_s=0)
    writer.add_result("t1", CONFIG, result(1, 0.1))
    writer.flush()
    writer.add_result("t1", CONFIG, result(2, 0.2))
    writer.flush()
    writer.add_result("t1", CONFIG, result(2, 0.25))  # epoch 2 reported again
    writer.end_trial("t1")
    writer.flush()
    assert read_parts(tmp_path, "trials", missing_ok=False).num_rows == 3
    assert read_parts(tmp_path, "epochs", missing_ok=False).num_rows == 3
    trials = load_table(tmp_path).to_pylist()
    assert len(trials) == 1 and trials[0]["status"] == "TERMINATED"
    epochs = load_table(tmp_path, table="epochs").to_pylist()
    assert [(r["epoch"], r["bbox_mAP"]) for r in epochs] == [(1, 0.1), (2, 0.25)]


def test_newest_is_chosen_by_seq_not_by_file_order(tmp_path):
    writer = TableWriter(tmp_path, "exp", PARAMS)
    writer.add_result("t1", CONFIG, result(1, 0.1))
    writer.flush()
    newer = load_table(tmp_path, table="epochs").to_pylist()[0]
    newer.update(bbox_mAP=0.9, seq=newer["seq"] + 1)
    # A name that sorts before the writer's parts, holding the newer row.
    pq.write_table(pa.Table.from_pylist([newer], schema=load_table(tmp_path, table="epochs").schema),
                   tmp_path / "epochs" / "part-0-0-0.parquet")
    assert load_table(tmp_path, table="epochs")["bbox_mAP"].to_pylist() == [0.9]


def test_epoch_reported_again_after_restart_drops_abandoned_epochs(tmp_path):
    writer = TableWriter(tmp_path, "exp", PARAMS)
    for epoch, bbox in ((1, 0.1), (2, 0.5), (3, 0.6)):
        writer.add_result("t1", CONFIG, result(epoch, bbox))
    writer.add_result("t1", CONFIG, result(2, 0.2))  # restarted from the epoch-1 checkpoint
    writer.flush()
    row = load_table(tmp_path).to_pylist()[0]
    assert (row["epochs_run"], row["final_bbox_mAP"], row["best_bbox_mAP"], row["best_epoch"]) == (2, 0.2, 0.2, 2)


@pytest.mark.parametrize(
    "resumed_clock",
    [1.0, 21.0],  # TorchTrainer-style clock restarted at 0 / function trainable restored to 20 s
    ids=["clock-restarted", "clock-restored"],
)
def test_new_writer_continues_trials_of_an_earlier_driver(tmp_path, resumed_clock):
    first = TableWriter(tmp_path, "exp", PARAMS)
    first.add_result("t1", CONFIG, result(1, 0.5, epochs_total=3, time_total_s=10.0))
    first.add_result("t1", CONFIG, result(2, 0.3, epochs_total=3, time_total_s=20.0))
    first.add_result("other", CONFIG, result(1, 0.3))
    first.end_trial("other")
    first.flush()
    old_seq = first.last_seq

    second = TableWriter(tmp_path, "exp", PARAMS)  # the driver after Tuner.restore
    second.add_result("t1", CONFIG, result(3, 0.2, epochs_total=3, time_total_s=resumed_clock,
                                           time_this_iter_s=1.0))
    second.end_trial("t1")
    second.flush()
    assert second.last_seq > old_seq
    rows = {r["trial_id"]: r for r in load_table(tmp_path).to_pylist()}
    t1 = rows["t1"]
    assert (t1["status"], t1["stop_reason"], t1["epochs_run"]) == ("TERMINATED", "completed", 3)
    assert (t1["best_bbox_mAP"], t1["best_epoch"], t1["final_bbox_mAP"]) == (0.5, 1, 0.2)
    assert t1["wall_s"] == pytest.approx(21.0)
    assert rows["other"]["status"] == "TERMINATED"  # untouched by the second driver
    epochs = load_table(tmp_path, table="epochs", filters={"trial_id": "t1"})
    assert epochs["epoch"].to_pylist() == [1, 2, 3]


def test_writer_ignores_other_experiments_in_the_folder(tmp_path):
    a = TableWriter(tmp_path, "a", PARAMS)
    a.add_result("t1", CONFIG, result(1, 0.9))
    a.flush()
    b = TableWriter(tmp_path, "b", PARAMS)
    b.add_result("t1", CONFIG, result(1, 0.1))
    b.flush()
    rows = {r["experiment"]: r for r in load_table(tmp_path).to_pylist()}
    assert rows["a"]["best_bbox_mAP"] == 0.9 and rows["b"]["best_bbox_mAP"] == 0.1
    assert load_table(tmp_path, experiment="b").num_rows == 1


# --- schema evolution ------------------------------------------------------------------


def write_old_part(folder, rows, version=b"0", table=b"trials"):
    folder.mkdir(parents=True, exist_ok=True)
    part = pa.Table.from_pylist(rows).replace_schema_metadata(
        {b"raykd.schema_version": version, b"raykd.table": table})
    pq.write_table(part, folder / "part-1-1-1.parquet")


def test_older_schema_parts_load_with_missing_columns_null(tmp_path):
    write_old_part(tmp_path / "trials", [
        {"experiment": "exp", "trial_id": "old", "status": "TERMINATED", "distill.method": "mgd",
         "final_bbox_mAP": 0.3, "epochs_run": 3},
    ])
    alone = load_table(tmp_path).to_pylist()[0]
    assert alone["final_bbox_mAP"] == 0.3 and alone["loss_terms"] is None and alone["device_hours"] is None
    writer = TableWriter(tmp_path, "exp", PARAMS)
    writer.add_result("new", CONFIG, result(1))
    writer.flush()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an older version is no reason to warn
        df = load(tmp_path)
    assert list(df["trial_id"]) == ["new", "old"]
    old = df.set_index("trial_id").loc["old"]
    assert old["status"] == "TERMINATED" and old["distill.method"] == "mgd"
    assert old["loss_terms"] is None and old["device_hours"] != old["device_hours"]  # NaN
    new = df.set_index("trial_id").loc["new"]
    assert new["loss_terms"] == {"mgd": 0.75, "mgd_0": 0.25} and new["device_hours"] > 0


def test_newer_schema_parts_load_with_a_warning(tmp_path):
    write_old_part(tmp_path / "epochs", [
        {"experiment": "exp", "trial_id": "t", "epoch": 1, "bbox_mAP": 0.4, "seq": 5, "future_column": 1.5},
    ], version=str(SCHEMA_VERSION + 1).encode(), table=b"epochs")
    with pytest.warns(UserWarning, match="newer"):
        table = load_table(tmp_path, table="epochs")
    assert table.to_pylist()[0]["future_column"] == 1.5 and table["bbox_mAP"].to_pylist() == [0.4]


def test_int64_and_double_parts_unify_and_late_conditional_column_survives(tmp_path):
    early = TableWriter(tmp_path, "exp", {"distill.method": pa.string(), "distill.alpha": pa.int64()})
    early.add_result("t1", {"distill.method": "mgd", "distill.alpha": 2}, result(1))
    early.flush()
    late = TableWriter(tmp_path, "exp2", {"distill.method": pa.string(), "distill.alpha": pa.float64(),
                                          "distill.beta": pa.float64()})
    late.add_result("t2", {"distill.method": "samkd", "distill.alpha": 0.5, "distill.beta": 1e-6}, result(1))
    late.flush()
    table = load_table(tmp_path)
    assert table.schema.field("distill.alpha").type == pa.float64()
    assert table.schema.field("distill.beta").type == pa.float64()
    assert table["distill.alpha"].to_pylist() == [2.0, 0.5]
    assert table["distill.beta"].to_pylist() == [None, 1e-6]
    assert load(tmp_path).attrs["raykd.params"] == ["distill.method", "distill.alpha", "distill.beta"]


def test_experiments_that_disagree_on_a_type_stay_apart(tmp_path):
    for experiment, pa_type, value in (("a", pa.int64(), 1), ("b", pa.string(), "one"), ("b", pa.string(), "two")):
        writer = TableWriter(tmp_path, experiment, {"train.seed": pa_type})  # reads only its experiment
        writer.add_result(f"t-{value}", {"train.seed": value}, result(1))
        writer.flush()
    with pytest.raises(UserError, match="train.seed"):
        load_table(tmp_path)
    assert load_table(tmp_path, experiment="a")["train.seed"].to_pylist() == [1]
    assert load_table(tmp_path, experiment="b")["train.seed"].to_pylist() == ["one", "two"]
    with pytest.raises(UserError, match="experiment c"):
        load_table(tmp_path, experiment="c")
    assert compact(tmp_path, tables=("trials",)) == {"trials": 2}  # b merged; a has a single part
    assert len(parts(tmp_path / "trials")) == 2
    assert load_table(tmp_path, experiment="b")["train.seed"].to_pylist() == ["one", "two"]


# --- locations and filters -------------------------------------------------------------


def test_missing_or_empty_locations_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such results folder") as err:
        load(tmp_path / "nope")
    assert err.value.file == str(tmp_path / "nope")
    (tmp_path / "empty" / "trials").mkdir(parents=True)
    with pytest.raises(UserError, match="no 'trials' part files"):
        load(tmp_path / "empty")
    with pytest.raises(UserError, match="unknown table"):
        load(tmp_path, table="nope")


def test_several_folders_table_folders_files_and_uris(tmp_path):
    for name in ("a", "b"):
        writer = TableWriter(tmp_path / name, name, PARAMS)
        writer.add_result("t1", CONFIG, result(1))
        writer.flush()
    assert sorted(load([tmp_path / "a", str(tmp_path / "b")])["experiment"]) == ["a", "b"]
    assert load_table((tmp_path / "a" / "trials").as_uri()).num_rows == 1  # file:// URI, table folder
    part = next((tmp_path / "a" / "epochs").glob("part-*.parquet"))
    assert load_table(part, table="epochs").num_rows == 1
    with pytest.raises(UserError, match="'epochs' table, not 'trials'"):
        load_table(part)


def test_filters(tmp_path):
    params = {"distill.method": pa.string(), "distill.pyramid_scales": pa.list_(pa.int64())}
    writer = TableWriter(tmp_path, "exp", params)
    configs = {"a": {"distill.method": "samkd", "distill.pyramid_scales": [1, 2]},
               "b": {"distill.method": "samkd", "distill.pyramid_scales": [1]},
               "c": {"distill.method": "mgd"}}
    for trial_id, config in configs.items():
        writer.add_result(trial_id, config, result(1))
    writer.end_trial("a")
    writer.flush()

    def ids(filters):
        return load_table(tmp_path, filters=filters)["trial_id"].to_pylist()

    assert ids({"distill.method": "samkd"}) == ["a", "b"]
    assert ids({"distill.method": ["mgd", "dmkd"]}) == ["c"]
    assert ids({"distill.pyramid_scales": [1, 2]}) == ["a"]
    assert ids({"distill.pyramid_scales": [[1], [1, 2]]}) == ["a", "b"]
    assert ids({"distill.pyramid_scales": None}) == ["c"]
    assert ids({"status": "TERMINATED"}) == ["a"]  # applied to the newest row only
    assert ids({"status": "RUNNING", "distill.method": "samkd"}) == ["b"]
    assert ids(pc.field("distill.method") == "mgd") == ["c"]
    with pytest.raises(UserError, match="no column 'distill.nope'") as err:
        ids({"distill.nope": 1})
    assert err.value.key == "distill.nope"


# --- runs ------------------------------------------------------------------------------


def test_write_run_records_provenance(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()
    space = repo / "space.yaml"
    space.write_text("space: {}\n")
    monkeypatch.chdir(repo)
    write_run(tmp_path / "res", "exp", dataset_fingerprint="abc123", space_path=space)
    monkeypatch.chdir(tmp_path / "res")  # not a repository
    write_run(tmp_path / "res", "exp", resumed=True)

    runs = load_table(tmp_path / "res", table="runs").to_pylist()
    assert [r["resumed"] for r in runs] == [False, True]
    first, second = runs
    assert (first["git_commit"], first["git_dirty"]) == (head, True)  # space.yaml is untracked
    assert second["git_commit"] is None
    assert first["space_text"] == "space: {}\n" and first["dataset_fingerprint"] == "abc123"
    assert first["pyarrow_version"] == pa.__version__ and first["raykd_version"] is not None
    assert first["schema_version"] == SCHEMA_VERSION and first["cpu_count"] >= 1
    assert first["python_version"].count(".") == 2 and first["hostname"]


# --- compaction ------------------------------------------------------------------------


def test_compact_merges_parts_and_keeps_the_newest_rows(tmp_path):
    writer = TableWriter(tmp_path, "exp", PARAMS, flush_every_s=0)
    for epoch, bbox in ((1, 0.1), (2, 0.2), (2, 0.25)):  # epoch 2 twice: the second version wins
        writer.add_result("t1", CONFIG, result(epoch, bbox))
        writer.flush()
    write_run(tmp_path, "exp")
    write_run(tmp_path, "exp", resumed=True)
    before = {name: load_table(tmp_path, table=name) for name in ("trials", "epochs", "runs")}

    assert compact(tmp_path) == {"trials": 3, "epochs": 3, "runs": 2}
    assert load_table(tmp_path, table="epochs")["bbox_mAP"].to_pylist() == [0.1, 0.25]
    assert read_parts(tmp_path, "epochs", missing_ok=False).num_rows == 2  # superseded row dropped
    for name, table in before.items():
        assert parts(tmp_path / name) and len(parts(tmp_path / name)) == 1
        assert load_table(tmp_path, table=name).equals(table)
    assert load(tmp_path).attrs["raykd.params"] == list(PARAMS)
    assert compact(tmp_path) == {"trials": 0, "epochs": 0, "runs": 0}

    writer.add_result("t1", CONFIG, result(3, 0.9))  # the search goes on after a compaction
    writer.end_trial("t1")
    writer.flush()
    row = load_table(tmp_path).to_pylist()[0]
    assert (row["status"], row["epochs_run"], row["best_bbox_mAP"]) == ("TERMINATED", 3, 0.9)
    resumed = TableWriter(tmp_path, "exp", PARAMS)  # and a restored driver reads merged parts
    resumed.add_result("t1", CONFIG, result(4, 0.1, epochs_total=4))
    resumed.flush()
    assert load_table(tmp_path).to_pylist()[0]["best_epoch"] == 3


def test_reader_lists_again_when_parts_vanish_under_it(tmp_path, monkeypatch):
    writer = TableWriter(tmp_path, "exp", PARAMS, flush_every_s=0)
    for epoch in (1, 2, 3):
        writer.add_result("t1", CONFIG, result(epoch))
        writer.flush()
    real_read_files = read_module.read_files
    calls = []

    def compact_first(files, table):
        if not calls:
            compact(tmp_path, tables=(table,))  # the listed parts are gone now
        calls.append(len(files))
        return real_read_files(files, table)

    monkeypatch.setattr(read_module, "read_files", compact_first)
    assert load_table(tmp_path, table="epochs")["epoch"].to_pylist() == [1, 2, 3]
    assert calls == [3, 1]


def test_pickled_writer_keeps_its_configuration_and_flushes_on_time(tmp_path):
    import pickle

    writer = pickle.loads(pickle.dumps(TableWriter(tmp_path, "exp", PARAMS, flush_every_s=0)))
    writer._last_flush = float("inf")  # as if pickled on a machine whose monotonic clock ran ahead
    writer = pickle.loads(pickle.dumps(writer))
    writer.add_result("t1", CONFIG, result(1))
    assert writer.maybe_flush() == 2
    assert load_table(tmp_path)["distill.mask_ratio"].to_pylist() == [0.5]


def test_seed_reported_by_a_trial_is_kept_when_the_config_has_none(tmp_path):
    import pyarrow as pa

    from raykd.results import TableWriter, load

    writer = TableWriter(tmp_path, "e", {"distill.method": pa.string()}, flush_every_s=0)
    writer.add_result("t1", {"distill.method": "mgd"},
                      {"epoch": 1, "epochs_total": 1, "bbox_mAP": 0.1, "seed": 5, "time_total_s": 1.0})
    writer.end_trial("t1", config={"distill.method": "mgd"})
    writer.flush()
    assert load(tmp_path)["seed"].tolist() == [5]


# --- one row per trial, and one notion of a results folder ----------------------------


def _search_folder(storage, name="s1", trials=("t1", "t2"), epochs=3):
    """A search folder ``storage/name`` whose trials table holds every version of each trial's row."""
    writer = TableWriter(storage / name / "tables", name, PARAMS, flush_every_s=0)
    for trial in trials:
        for epoch in range(1, epochs + 1):
            writer.add_result(trial, CONFIG, result(epoch, 0.1 * epoch, epochs_total=epochs))
            writer.flush()
        writer.end_trial(trial)
        writer.flush()
    return storage / name, writer


def test_latest_state_while_running_and_one_row_per_trial_after_compact(tmp_path):
    import duckdb

    search, writer = _search_folder(tmp_path)
    raw = f"SELECT count(*) FROM '{search}/tables/trials/*.parquet'"
    assert duckdb.sql(raw).fetchall()[0][0] == 8  # 4 versions of each trial's row: what a running search shows
    latest = duckdb.sql(f"SELECT trial_id, status, epochs_run FROM ({latest_sql(search)}) ORDER BY 1").fetchall()
    assert latest == [("t1", "TERMINATED", 3), ("t2", "TERMINATED", 3)]
    assert latest_trials(search).num_rows == 2 and latest_trials(search)["status"].to_pylist() == ["TERMINATED"] * 2
    assert duckdb.sql(f"SELECT count(*) FROM ({latest_sql(search, 'epochs')})").fetchall()[0][0] == 6

    assert writer.compact() == {"trials": 8, "epochs": 6}  # what a search does when it ends
    assert duckdb.sql(raw).fetchall()[0][0] == 2
    assert duckdb.sql(f"SELECT count(*) FROM '{search}/tables/epochs/*.parquet'").fetchall()[0][0] == 6
    assert latest_trials(search).equals(load_table(search / "tables"))


def test_compact_rewrites_a_single_part_holding_old_versions(tmp_path):
    import duckdb

    writer = TableWriter(tmp_path, "exp", PARAMS, flush_every_s=0)
    writer.add_result("t1", CONFIG, result(1))
    writer.flush()
    writer.end_trial("t1")
    writer.flush()
    rows = read_parts(tmp_path, "trials", missing_ok=False)
    for path in parts(tmp_path / "trials"):
        os.remove(tmp_path / "trials" / path)
    publish(*resolve(tmp_path / "trials"), rows)  # one part, two versions of t1's row
    assert compact(tmp_path, tables=("trials",)) == {"trials": 1}
    assert duckdb.sql(f"SELECT status FROM '{tmp_path}/trials/*.parquet'").fetchall() == [("TERMINATED",)]
    assert compact(tmp_path, tables=("trials",)) == {"trials": 0}


def test_load_takes_the_search_folder_its_tables_or_a_storage_root_of_one_search(tmp_path):
    from raykd.analyze.inputs import locate

    search, _ = _search_folder(tmp_path / "results")
    expected = load_table(search / "tables")
    for where in (search, search / "tables", tmp_path / "results", f"{search}/"):
        assert load_table(where).equals(expected), where
        assert load(where, table="epochs").shape[0] == 6
        assert locate([str(where)]).tables["trials"] == [str(search / "tables" / "trials")]
    assert locate([str(tmp_path / "results")]).teacher_files == []
    (search / "teacher.json").write_text('{"bbox_mAP": 0.3}')
    assert locate([str(tmp_path / "results")]).teacher_files == [str(search / "teacher.json")]
    compact(tmp_path / "results")  # compact takes the same folders
    assert len(parts(search / "tables" / "trials")) == 1

    _search_folder(tmp_path / "results", name="s2")
    for reader in (load, lambda where: locate([where]), latest_sql, compact):
        with pytest.raises(UserError, match=r"holds 2 searches \(s1, s2\): name one of them") as err:
            reader(str(tmp_path / "results"))
        assert err.value.file == str(tmp_path / "results")
    assert load_table(tmp_path / "results" / "s2").num_rows == 2


def test_parameter_columns_record_the_values_the_run_used_not_tune_s_samples(tmp_path):
    import json

    from raykd.epoch_record import EFFECTIVE_CONFIG

    writer = TableWriter(tmp_path, "exp", {**PARAMS, "distill.pyramid_scales": pa.list_(pa.int64())})
    sampled = {"distill.method": "mgd", "distill.mask_ratio": 0.6500000123, "distill.pyramid_scales": "1,2"}
    used = {"distill.method": "mgd", "distill.mask_ratio": 0.65, "distill.pyramid_scales": [1, 2]}
    writer.add_result("t1", sampled, result(1, **{EFFECTIVE_CONFIG: json.dumps(used)}))
    writer.end_trial("t1", config=sampled)  # Tune's config again at the end: the effective values stay
    writer.flush()
    row = load(tmp_path).iloc[0]
    assert row["distill.mask_ratio"] == 0.65
    assert list(row["distill.pyramid_scales"]) == [1, 2]
