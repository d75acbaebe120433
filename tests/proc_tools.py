"""Process helpers for tests that SIGKILL a driver: find and kill what its session started."""

from __future__ import annotations

import os
import signal
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
    for pid in session_processes(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
