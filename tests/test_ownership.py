"""raykd.ownership: one live process per folder, dead owners taken over, races won by exactly one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from raykd import ownership
from raykd.ownership import (
    OWNER_FILE,
    FolderOwned,
    OwnershipLost,
    check_held,
    claim,
    has_content,
    refuse_if_owned,
    this_process,
)

REPO = Path(__file__).resolve().parents[1]
HOLD = textwrap.dedent("""
    import sys, time
    from raykd.ownership import claim, FolderOwned
    folder, start_at = sys.argv[1], float(sys.argv[2])
    time.sleep(max(0.0, start_at - time.time()))
    try:
        held = claim(folder, command="holder", key="--name", todo="wait")
    except FolderOwned as err:
        print("refused", err, flush=True)
        sys.exit(2)
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin or kills this process
    held.release()
""")


def _holder(folder: Path, start_at: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(start_at)], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _write_owner(folder: Path, owner: ownership.Owner, age_s: float = 0.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / OWNER_FILE
    path.write_text(json.dumps(asdict(owner)))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def _claim(folder, **kw):
    return claim(folder, command="test", key="--name", todo="do something else", **kw)


def test_owner_file_names_this_process(tmp_path):
    held = _claim(tmp_path / "s")
    try:
        record = json.loads((tmp_path / "s" / OWNER_FILE).read_text())
        assert record["pid"] == os.getpid() and record["start_ticks"] == int(_stat(os.getpid())[19])
        assert record["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        assert held.taken_over is None
    finally:
        held.release()
    assert not (tmp_path / "s").exists()  # created by the claim, nothing else written: removed


def test_release_keeps_a_folder_with_content(tmp_path):
    held = _claim(tmp_path / "s")
    (tmp_path / "s" / "tables").mkdir()
    held.release()
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["tables"]


def test_live_process_refuses_then_dead_one_is_taken_over(tmp_path):
    folder = tmp_path / "s"
    holder = _holder(folder)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderOwned) as err:
            _claim(folder)
        line = str(err.value)
        assert line.startswith(f"{folder}: --name: in use by holder on host ")
        assert f"pid {holder.pid}, started 20" in line and line.endswith("; do something else")
        with pytest.raises(FolderOwned):
            refuse_if_owned(folder, key="--name", todo="x")
    finally:
        holder.kill()
        holder.wait()
    refuse_if_owned(folder, key="--name", todo="x")  # a dead owner does not refuse
    held = _claim(folder)
    assert held.taken_over == "its process has ended"
    held.release()


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _owned_by_child(folder: Path) -> tuple[subprocess.Popen, int]:
    """A live child process named as the owner of ``folder`` (checked: it refuses); its start ticks."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.1)
    ticks = int(_stat(child.pid)[19])
    _write_owner(folder, replace(this_process("old"), pid=child.pid, start_ticks=ticks))
    with pytest.raises(FolderOwned):
        _claim(folder)
    return child, ticks


def test_reused_pid_is_not_the_owner(tmp_path):
    """The owner file names a live pid, but that process started at another time."""
    other, ticks = _owned_by_child(tmp_path / "s")
    try:
        _write_owner(tmp_path / "s", replace(this_process("old"), pid=other.pid, start_ticks=ticks - 100))
        held = _claim(tmp_path / "s")
        assert "another process" in held.taken_over
        held.release()
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("change, age, taken", [
    ({"host": "elsewhere"}, 5.0, False),
    ({"host": "elsewhere"}, ownership.STALE_AFTER_S + 60, True),
    ({"boot_id": "another-boot"}, 5.0, False),  # same host name, live twin or just rebooted: wait
    ({"boot_id": "another-boot"}, 3 * ownership.HEARTBEAT_S, True),
    ({"pid_ns": "pid:[1]"}, 5.0, False),  # another container: its pids are not visible here
])
def test_owners_elsewhere_go_stale_by_heartbeat_only(tmp_path, change, age, taken):
    _write_owner(tmp_path / "s", replace(this_process("remote"), pid=1, start_ticks=1, **change), age_s=age)
    if not taken:
        with pytest.raises(FolderOwned, match="in use by remote"):
            _claim(tmp_path / "s")
        return
    held = _claim(tmp_path / "s")
    assert held.taken_over and "heartbeat" in held.taken_over
    held.release()


def test_unreadable_owner_file_is_taken_over(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / OWNER_FILE).write_text("{not json")
    held = _claim(tmp_path / "s")
    assert held.taken_over == "its owner file was unreadable"
    held.release()


def test_heartbeat_refreshes_the_owner_file(tmp_path, monkeypatch):
    monkeypatch.setattr(ownership, "HEARTBEAT_S", 0.1)
    held = _claim(tmp_path / "s")
    path = tmp_path / "s" / OWNER_FILE
    os.utime(path, (time.time() - 1000, time.time() - 1000))
    time.sleep(0.5)
    assert time.time() - path.stat().st_mtime < 5
    held.release()


def test_taken_over_folder_stops_the_old_owner_at_its_next_publish(tmp_path):
    held = _claim(tmp_path / "s")
    try:
        check_held(tmp_path / "s" / "tables")  # still ours: no error
        check_held(tmp_path / "other")  # not under a claimed folder: no check
        _write_owner(tmp_path / "s", replace(this_process("newcomer"), host="elsewhere"))
        with pytest.raises(OwnershipLost, match="taken over by newcomer on host elsewhere"):
            check_held(tmp_path / "s" / "tables")
    finally:
        held.release()
    assert (tmp_path / "s" / OWNER_FILE).exists()  # the newcomer's file is not removed


def test_processes_racing_for_one_folder_exactly_one_wins(tmp_path):
    folder = tmp_path / "race" / "s"
    start_at = time.time() + 3.0  # every process is up and waiting by then
    procs = [_holder(folder, start_at) for _ in range(4)]
    try:
        firsts = [p.stdout.readline().strip() for p in procs]
        assert sorted(line.split()[0] for line in firsts) == ["held", "refused", "refused", "refused"], firsts
        winner = procs[firsts.index("held")]
        assert all(f"pid {winner.pid}," in line for line in firsts if line.startswith("refused"))
        assert json.loads((folder / OWNER_FILE).read_text())["pid"] == winner.pid
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_uri_storage_owner_object(tmp_path, monkeypatch):
    monkeypatch.setattr(ownership, "SETTLE_S", 0.0)
    uri = f"file://{tmp_path}/s"
    held = _claim(uri)
    try:
        assert json.loads((tmp_path / "s" / OWNER_FILE).read_text())["id"] == held.owner.id
        _write_owner(tmp_path / "s", replace(this_process("remote"), host="elsewhere"))
        with pytest.raises(OwnershipLost):
            check_held(f"{uri}/tables")
        with pytest.raises(FolderOwned, match="in use by remote on host elsewhere"):
            refuse_if_owned(uri, key="--name", todo="x")
    finally:
        held.release()


def test_zombie_owner_is_gone(tmp_path):
    """Killed but not yet reaped by its parent: its /proc entry stays, in state Z."""
    child, _ = _owned_by_child(tmp_path / "s")
    try:
        child.kill()
        deadline = time.monotonic() + 10
        while _stat(child.pid)[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        held = _claim(tmp_path / "s")
        assert held.taken_over == "its process has ended"
        held.release()
    finally:
        child.kill()
        child.wait()


def test_has_content(tmp_path):
    assert not has_content(tmp_path / "missing") and not has_content(tmp_path / "f" / "below_a_file")
    (tmp_path / "f").write_text("")
    assert not has_content(tmp_path / "f" / "below_a_file")
    held = _claim(tmp_path / "s")
    assert not has_content(tmp_path / "s")  # only the owner file
    (tmp_path / "s" / "tables").mkdir()
    assert has_content(tmp_path / "s")
    held.release()
