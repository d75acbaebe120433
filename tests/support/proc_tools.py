"""Process helpers for tests that start and kill Ray: free ports, process trees, sessions."""

from __future__ import annotations

import os
import signal
import socket
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path


def session_processes(sid: int) -> list[int]:
    """Pids of the live processes in session ``sid`` (a driver started with start_new_session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid``: Ray's raylet, GCS and agents survive their
    driver and ignore SIGTERM, and live in their own process groups."""
    kill_pids(session_processes(sid))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc, so nothing but the tree we started)."""
    children = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children[ppid].append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass



def stop_process_tree(process, ask: Callable[[], None], timeout: float) -> None:
    """Stop a helper that started Ray: ``ask`` it to stop (close its stdin, SIGTERM, ...), wait up
    to ``timeout`` s, SIGKILL it if it is still there, then SIGKILL every process it had started
    and anything left in its process group."""
    import subprocess

    pids = descendants(process.pid)
    if process.poll() is None:
        ask()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    kill_pids(pids + descendants(process.pid))
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
