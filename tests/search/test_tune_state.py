"""Tune's saved state on disk: torn files found without unpickling, torn sets set aside."""

from __future__ import annotations

import json
import pickle

from raykd.search.tune_state import STATE_FILES, TORN_FOLDER, has_state, is_whole, sessions, set_aside_torn


def _write_set(root, session, *, torn: str | None = None):
    """One session's four state files; ``torn`` names the pattern whose file is cut in half."""
    for pattern in STATE_FILES:
        path = root / pattern.format(session)
        data = (json.dumps({"trials": list(range(50))}).encode() if pattern.startswith("experiment_state")
                else pickle.dumps({"state": list(range(50)), "session": session}, protocol=5))
        if pattern == torn:
            data = data[: len(data) // 2]
        path.write_bytes(data)


def test_whole_and_torn_files_are_told_apart(tmp_path):
    payload = pickle.dumps({"a": [1.0] * 100, "b": "x" * 300}, protocol=5)
    cases = {"whole.pkl": payload, "torn.pkl": payload[:-1], "half.pkl": payload[: len(payload) // 2],
             "empty.pkl": b"", "pickle-named.json": payload, "torn-pickle-named.json": payload[:40],
             "whole.json": b'{"a": [1, 2]}', "torn.json": b'{"a": [1, 2'}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    assert {name for name in cases if is_whole(tmp_path / name)} == {"whole.pkl", "pickle-named.json", "whole.json"}
    assert not is_whole(tmp_path / "missing.pkl")


def test_is_whole_never_unpickles(tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Payload()))
    assert is_whole(tmp_path / "evil.pkl")
    assert not (tmp_path / "ran").exists()


def test_only_the_newest_torn_sets_are_set_aside(tmp_path):
    _write_set(tmp_path, "2026-01-01_10-00-00")
    _write_set(tmp_path, "2026-01-01_10-05-00", torn="callback-states-{}.pkl")  # older torn one: Tune never reads it
    _write_set(tmp_path, "2026-01-01_10-10-00")
    _write_set(tmp_path, "2026-01-01_10-20-00", torn="searcher-state-{}.pkl")
    _write_set(tmp_path, "2026-01-01_10-30-00", torn="experiment_state-{}.json")
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))

    assert set_aside_torn(tmp_path) == ["2026-01-01_10-30-00", "2026-01-01_10-20-00"]
    assert sessions(tmp_path) == ["2026-01-01_10-00-00", "2026-01-01_10-05-00", "2026-01-01_10-10-00"]
    assert sorted(p.name for p in (tmp_path / TORN_FOLDER / "2026-01-01_10-20-00").iterdir()) == sorted(
        pattern.format("2026-01-01_10-20-00") for pattern in STATE_FILES)
    assert has_state(tmp_path)
    assert set_aside_torn(tmp_path) == []  # idempotent


def test_a_set_without_its_experiment_state_is_torn_and_no_state_is_no_state(tmp_path):
    _write_set(tmp_path, "2026-01-01_10-00-00")
    (tmp_path / STATE_FILES[0].format("2026-01-01_10-00-00")).unlink()
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    assert set_aside_torn(tmp_path) == ["2026-01-01_10-00-00"]
    assert not has_state(tmp_path)

    _write_set(tmp_path, "2026-01-01_11-00-00")
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1})[:5])
    assert not has_state(tmp_path)  # a torn Tuner file cannot be restored either


def _age(root, seconds: float = 5.0):
    """Make every file under ``root`` look settled (modified ``seconds`` ago)."""
    import os
    import time

    for path in root.rglob("*"):
        if path.is_file():
            stamp = time.time() - seconds
            os.utime(path, (stamp, stamp))


def test_a_backup_restores_a_first_session_torn_later(tmp_path):
    from raykd.search.tune_state import BACKUP_FOLDER, back_up, restore_backup

    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    _write_set(tmp_path, "2026-01-01_10-00-00")
    assert back_up(tmp_path) is None  # just written: Tune may still be copying it
    _age(tmp_path)
    assert back_up(tmp_path) == "2026-01-01_10-00-00"
    whole = {p.name: p.read_bytes() for p in (tmp_path / BACKUP_FOLDER).iterdir()}

    _write_set(tmp_path, "2026-01-01_10-00-00", torn="searcher-state-{}.pkl")  # the next save tears
    _age(tmp_path)
    assert back_up(tmp_path) is None  # a torn set is never backed up...
    assert {p.name: p.read_bytes() for p in (tmp_path / BACKUP_FOLDER).iterdir()} == whole  # ...nor lost

    assert set_aside_torn(tmp_path) == ["2026-01-01_10-00-00"] and not has_state(tmp_path)
    assert restore_backup(tmp_path) == "2026-01-01_10-00-00"
    assert has_state(tmp_path) and {n: (tmp_path / n).read_bytes() for n in whole} == whole


def test_a_backup_older_than_a_whole_set_is_left_alone(tmp_path):
    from raykd.search.tune_state import back_up, restore_backup

    _write_set(tmp_path, "2026-01-01_10-00-00")
    _age(tmp_path)
    assert back_up(tmp_path) == "2026-01-01_10-00-00"
    _write_set(tmp_path, "2026-01-01_11-00-00")  # a later session's whole set
    assert restore_backup(tmp_path) is None
    assert sessions(tmp_path) == ["2026-01-01_10-00-00", "2026-01-01_11-00-00"]
