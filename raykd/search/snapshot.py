"""Tune's saved search state on a local disk: finding the newest whole one before a resume.

Each driver session S of a search keeps one set of state files in the search folder
(``experiment_state-S.json``, ``search_gen_state-S.json``, ``searcher-state-S.pkl``,
``callback-states-S.pkl``) and rewrites it in place by copying from a staging folder, with no
rename. A driver killed during that copy leaves a torn set; Tune's restore then fails and
Tune quietly starts the search over, losing its trials. :func:`set_aside_torn` moves torn
sets out of Tune's sight so that it restores the newest whole one. A first session has no
older set to fall back on, so while a search runs :func:`back_up` keeps a copy of the newest
whole set in ``.state-backup/`` (swapped in by renames), which :func:`restore_backup` puts
back when it is newer than every whole set left.
"""

from __future__ import annotations

import json
import pickletools
import os
import re
import shutil
import time
from pathlib import Path

STATE_FILES = ("experiment_state-{}.json", "search_gen_state-{}.json", "searcher-state-{}.pkl",
               "callback-states-{}.pkl")
TORN_FOLDER = ".torn-state"
BACKUP_FOLDER = ".state-backup"
_SETTLED_S = 0.5  # a set untouched this long is not being copied by Tune
_SESSION = re.compile(r"^(?:experiment_state|search_gen_state|searcher-state|callback-states)-(.+)\.(?:json|pkl)$")


def is_whole(path: Path) -> bool:
    """Whether a JSON or pickle state file reads to its end, whatever its suffix says
    (``search_gen_state-*.json`` is a pickle). Pickles are walked opcode by opcode with
    :mod:`pickletools` (nothing is unpickled)."""
    try:
        data = path.read_bytes()
        if not data.startswith(b"\x80"):  # every pickle protocol >= 2 starts with PROTO
            json.loads(data)
            return True
        last = None
        for last, _, _ in pickletools.genops(data):
            pass
        return last is not None and last.name == "STOP"
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def sessions(root: Path) -> list[str]:
    """Session names with any state file under ``root``, oldest first (they are timestamps)."""
    found = {m.group(1) for p in root.iterdir() if (m := _SESSION.match(p.name))}
    return sorted(found)


def _present(root: Path, session: str) -> list[Path]:
    """The state files of ``session`` under ``root``, ``experiment_state`` first when there."""
    return [f for f in (root / pattern.format(session) for pattern in STATE_FILES) if f.exists()]


def _whole_set(root: Path, session: str) -> list[Path] | None:
    """The session's files when its ``experiment_state`` is there and every file is whole."""
    present = _present(root, session)
    if present and present[0].name == STATE_FILES[0].format(session) and all(is_whole(f) for f in present):
        return present
    return None


def set_aside_torn(root: str | Path) -> list[str]:
    """Move the newest sessions' state sets that are torn (a file unreadable, or no
    ``experiment_state``) into ``root/.torn-state/``; stop at the first whole set.

    Returns the sessions moved, newest first. Sets older than a whole one are left alone:
    Tune reads only the newest.
    """
    root = Path(root)
    moved = []
    for session in reversed(sessions(root)):
        if _whole_set(root, session):
            break
        aside = root / TORN_FOLDER / session
        aside.mkdir(parents=True, exist_ok=True)
        for f in _present(root, session):
            f.replace(aside / f.name)
        moved.append(session)
    return moved


def has_state(root: str | Path) -> bool:
    """Whether Tune saved a whole search state under ``root`` (its Tuner file and a state set)."""
    root = Path(root)
    return is_whole(root / "tuner.pkl") and any((root / STATE_FILES[0].format(s)).exists() for s in sessions(root))


def back_up(root: str | Path) -> str | None:
    """Copy the newest state set to ``root/.state-backup/`` if it is whole, settled and did not
    change while copied; returns its session, or None when nothing was copied."""
    root = Path(root)
    found = sessions(root)
    if not found:
        return None
    files = _whole_set(root, found[-1])
    if not files:
        return None
    stamps = [(f.stat().st_mtime_ns, f.stat().st_size) for f in files]
    if time.time_ns() - max(m for m, _ in stamps) < _SETTLED_S * 1e9:
        return None
    staging = root / f"{BACKUP_FOLDER}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        for f in files:
            shutil.copy2(f, staging / f.name)
        if stamps != [(f.stat().st_mtime_ns, f.stat().st_size) for f in files]:
            raise OSError("the state changed while it was copied")
        target, retired = root / BACKUP_FOLDER, root / f"{BACKUP_FOLDER}.old-{os.getpid()}"
        if target.exists():
            target.rename(retired)
        staging.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    except OSError:  # full disk, a concurrent copy...: the previous backup stays
        shutil.rmtree(staging, ignore_errors=True)
        return None
    return found[-1]


def restore_backup(root: str | Path) -> str | None:
    """Put the backed-up set back into ``root`` when it is whole and newer than every whole set
    there; returns its session, or None."""
    root = Path(root)
    candidates = [root / BACKUP_FOLDER, *sorted(root.glob(f"{BACKUP_FOLDER}.old-*"))]
    backup = next((c for c in candidates if c.is_dir() and sessions(c)), None)
    if backup is None:
        return None
    session = sessions(backup)[-1]
    files = _whole_set(backup, session)
    newest_here = max((s for s in sessions(root) if _whole_set(root, s)), default=None)
    if not files or (newest_here is not None and newest_here >= session):
        return None
    for f in files:
        shutil.copy2(f, root / f.name)
    return session
