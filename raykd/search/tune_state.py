"""Every assumption raykd makes about Ray Tune's (and Optuna's) internals, in one module.

Resuming a search after its driver was killed needs more than Tune's public API. Each
assumption below is checked against the installed Ray and Optuna by a canary in
``tests/search/test_tune_canaries.py``, which fails loudly on an upgrade that breaks it:

A1 State files: each driver session S of a search keeps one set of state files in the search
   folder (``experiment_state-S.json``, ``search_gen_state-S.json`` (a pickle, whatever its
   suffix), ``searcher-state-S.pkl``, ``callback-states-S.pkl``) beside ``tuner.pkl``, and
   rewrites it in place by copying from a staging folder, with no rename. A driver killed
   during that copy leaves a torn set; Tune's restore then fails and Tune quietly starts the
   search over, losing its trials. :func:`set_aside_torn` moves torn sets out of Tune's sight
   so that it restores the newest whole one. A first session has no older set to fall back
   on, so while a search runs :class:`BackUpState` keeps a copy of the newest whole set in
   ``.state-backup/`` (swapped in by renames), which :func:`restore_backup` puts back when it
   is newer than every whole set left. (canary: ``test_state_files_are_named_as_assumed``)
A2 ``Tuner.can_restore(folder)`` is true once a search saved its state there and false for a
   folder without one. (canary: ``test_state_files_are_named_as_assumed``)
A3 Trial checkpoints are folders ``checkpoint_NNNNNN`` (zero-padded, so they sort by name) in
   the trial's folder, which callbacks reach as ``trial.storage.storage_filesystem`` and
   ``trial.storage.trial_fs_path``; ``tune.Checkpoint`` has ``path`` and ``filesystem``. The
   checkpoint Tune hands a restarted trial is the one its last saved state names, which can be
   stale, deleted or torn after a kill: :func:`resume_state_of` takes the trial's newest
   readable folder instead. (canary: ``test_trial_checkpoints_are_where_assumed``)
A4 Tune refuses to restore a trial whose checkpoint folder is gone, so an ended trial's
   checkpoints are kept as few-byte "finished" markers (:class:`ShrinkFinishedCheckpoints`),
   not deleted. (canary: ``test_trial_checkpoints_are_where_assumed`` reads a marker back)
A5 ``OptunaSearch`` keeps the ids of trials it closed in the set ``_completed_trials``, and
   Optuna raises ``UpdateFinishedTrialError`` when a result arrives for a closed trial (a
   resumed trial re-reports its last epochs): :class:`ResumableOptunaSearch`.
   (canary: ``test_optuna_search_closed_trial``)
A6 ``Repeater`` gives each repeat of a configuration ``__trial_index__`` 0, 1, ... in its
   config; the trainable shifts the seed by it. (canary: ``test_repeater_sets_trial_index``)
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pyarrow.fs as pafs
import torch
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from raykd.errors import UserError
from raykd.train.checkpoint import STATE_FILE, load_state

STATE_FILES = ("experiment_state-{}.json", "search_gen_state-{}.json", "searcher-state-{}.pkl",
               "callback-states-{}.pkl")
TORN_FOLDER = ".torn-state"
BACKUP_FOLDER = ".state-backup"
_SETTLED_S = 0.5  # a set untouched this long is not being copied by Tune
FINISHED = "finished"
EPOCH_FILE = "epoch.json"  # beside the state in each trial checkpoint: the epoch it was reported with
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
        for last, _, _ in pickletools.genops(data):  # noqa: B007 - the last opcode is what is wanted
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


def restorable(root: str | Path, *, trials_recorded: Callable[[], bool], log: Callable[[str], None] = print) -> bool:
    """Whether Tune saved a whole state under the local search folder ``root`` to restore.

    Torn state sets are set aside first and a newer backup put back (A1). A folder without
    any state (its driver died before Tune saved one) starts over, unless ``trials_recorded()``
    says trials already reached the tables: then the search cannot continue.
    """
    for session in set_aside_torn(root):
        log(f"resume: Tune's state of session {session} was torn when its driver stopped; moved to "
            f"{Path(root, TORN_FOLDER, session)}")
    restored = restore_backup(root)
    if restored:
        log(f"resume: restored Tune's state of session {restored} from its last whole copy in "
            f"{Path(root, BACKUP_FOLDER)}")
    if has_state(root):
        return True
    if trials_recorded():
        raise UserError("Tune's saved state is missing or torn but the tables hold trials: this search cannot "
                        "continue; start a new one with another --name", file=root, key="--resume")
    return False


def can_restore(root: str | Path, *, local: bool) -> bool:
    """Whether the Tune experiment at ``root`` (a search phase's folder) can be restored (A2);
    on local storage its state set must also be whole (A1)."""
    return tune.Tuner.can_restore(str(root)) and (not local or has_state(root))


class BackUpState(tune.Callback):
    """Every ``every_s`` seconds, copy Tune's newest whole saved state of the search folder
    ``root`` (local storage) to ``root/.state-backup/``: the fallback when a full disk or a
    kill tears the state of a search's first session (A1)."""

    def __init__(self, root: str, every_s: float = 2.0):
        self.root, self.every_s = root, every_s
        self._last = 0.0

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            back_up(self.root)


def finished_marker() -> bytes:
    """The bytes of a training state that says the trial has ended (A4)."""
    buffer = io.BytesIO()
    torch.save({FINISHED: True}, buffer)
    return buffer.getvalue()


class ShrinkFinishedCheckpoints(tune.Callback):
    """Replace the training state in an ended trial's checkpoints by a few-byte "finished"
    marker: they only serve to resume it in flight, and each holds the student and its
    optimiser (about 150 MB for the demo's student).

    The folders stay: if the driver dies before Tune's next saved state records the end,
    the resumed search restarts the trial from one of them, finds the marker and ends it at
    once (A4: Tune refuses to restore from a missing folder).
    """

    def on_trial_complete(self, iteration, trials, trial, **info):
        storage = trial.storage
        fs, folder = storage.storage_filesystem, storage.trial_fs_path
        try:
            entries = fs.get_file_info(pafs.FileSelector(folder))
        except (OSError, FileNotFoundError):
            return
        marker = finished_marker()
        for entry in entries:
            if entry.type == pafs.FileType.Directory and entry.base_name.startswith("checkpoint_"):
                with fs.open_output_stream(f"{entry.path}/{STATE_FILE}") as out:
                    out.write(marker)


def resume_state_of(checkpoint: tune.Checkpoint | None) -> dict[str, Any] | None:
    """The training state a restarted trial continues from (A3).

    Tune names the checkpoint of its last saved search state. After a driver was killed that
    one can be stale (newer checkpoints were written since), deleted (``num_to_keep``, or the
    trial finished) or torn; on a local disk the trial's newest readable checkpoint folder is
    used instead, and with none the trial starts over (its results are re-reported and
    replace the earlier rows in the tables).
    """
    if checkpoint is None:
        return None
    folder = Path(checkpoint.path)
    if not isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        with checkpoint.as_directory() as local:
            return load_state(Path(local) / STATE_FILE)
    for candidate in sorted(folder.parent.glob("checkpoint_*"), reverse=True):
        try:
            return load_state(candidate / STATE_FILE)
        except UserError:  # torn by a kill while Tune copied it
            continue
    return None


def reported_epoch(checkpoint: tune.Checkpoint) -> int:
    """The epoch whose result was reported with ``checkpoint`` (0 when unknown)."""
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{EPOCH_FILE}") as stream:
            return int(json.loads(stream.read())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that tolerates results of a trial Optuna has already closed (A5).

    A driver killed after Optuna's journal recorded a trial's end, but before Tune's next
    saved state did, resumes that trial from its last checkpoint; it reports its last epochs
    again (the same values: resume is exact), which Optuna refuses for a finished trial.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)
