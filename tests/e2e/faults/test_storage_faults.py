"""Storage that is full or read-only: one clear line before anything starts, tables intact.

The storage is a real small tmpfs mounted for the test (the test process runs as root, as
in CI); a read-only remount of it stands for storage that cannot be written.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest
from fault_tools import check_parts, check_search, intact_trials

from raykd.errors import UserError
from raykd.results import load
from raykd.results.writer import TableWriter

pytestmark = [pytest.mark.timeout(300)]


def _mount(path: Path, options: str) -> None:
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")


@pytest.fixture
def small_storage(tmp_path):
    """A 4 MiB tmpfs holding an earlier search's tables; unmounted at the end."""
    mount = tmp_path / "storage"
    mount.mkdir()
    _mount(mount, "size=4m")
    writer = TableWriter(mount / "earlier" / "tables", "earlier", {"distill.method": pa.string()}, flush_every_s=0)
    for trial in ("a", "b"):
        writer.add_result(trial, {"distill.method": "mgd"}, {"epoch": 1, "bbox_mAP": 0.1, "time_total_s": 1.0})
        writer.end_trial(trial)
    writer.flush()
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _fill(folder: Path) -> None:
    """Write a ballast file until the file system says it is full."""
    with open(folder / "ballast", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            assert err.errno == errno.ENOSPC


@pytest.mark.fault("storage full or read-only at the start")
@pytest.mark.parametrize("fault", ["full", "read-only"])
@pytest.mark.parametrize("resume", [False, True], ids=["new search", "resume"])
def test_bad_storage_is_one_clear_error_and_tables_stay_intact(fault_space, small_storage, fault, resume, capsys,
                                                               fault_ledger):
    from raykd.search.__main__ import main

    space = fault_space(num_samples=2)
    before = _snapshot(small_storage / "earlier")
    if fault == "full":
        _fill(small_storage)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(small_storage)], check=True)
    name = ["--name", "earlier", "--resume"] if resume else ["--name", "later"]
    with pytest.raises(UserError) as raised:
        main([str(space), "--storage", str(small_storage), *name])
    message = str(raised.value)
    assert message.startswith(f"{small_storage}: --storage: cannot write there") and "\n" not in message
    assert ("No space left on device" in message and "free some space" in message) if fault == "full" \
        else "Read-only file system" in message, message
    assert "running:" not in capsys.readouterr().out  # nothing started
    assert _snapshot(small_storage / "earlier") == before  # every table file as it was
    assert not (small_storage / "later").exists()
    assert sorted(load(small_storage / "earlier" / "tables")["trial_id"]) == ["a", "b"]
    assert not [p for p in small_storage.iterdir() if p.name.startswith(".raykd-write-test")]


@pytest.mark.slow
@pytest.mark.fault("storage filled mid-search", trials=2)
def test_storage_filling_up_mid_search_stops_it_cleanly_and_resume_finishes(fault_space, search_driver, tmp_path,
                                                                           fault_ledger):
    mount = tmp_path / "results"  # where search_driver's searches write
    mount.mkdir()
    _mount(mount, "size=800m")
    try:
        space = fault_space(num_samples=2, epochs=3, search={"sampler": "tpe", "num_samples": 2,
                                                             "max_concurrent": 1, "seed": 0})
        driver = search_driver(space, name="filling")
        driver.start()
        driver.wait_for(r"epoch 1/3")
        _fill(mount)
        code = driver.finish(timeout=300)
        errors = [line for line in driver.text().splitlines() if line.startswith("python -m raykd.search: error:")]
        root = mount / "filling"
        check_parts(root / "tables")  # every published part reads: nothing torn is visible
        seen = load(root / "tables")
        assert code == 3, driver.text()[-3000:]
        assert len(errors) == 1 and "No space left on device" in errors[0] and "--resume --name filling" in errors[0]

        (mount / "ballast").unlink()
        driver.start("--resume")
        assert driver.finish() == 0, driver.text()[-3000:]
        trials = check_search(root, trials_expected=2, epochs=3)
        assert set(seen["trial_id"]) <= set(trials["trial_id"])
    finally:
        fault_ledger(len(intact_trials(mount / "filling", epochs=3)))
        subprocess.run(["umount", "-l", str(mount)], check=False)
