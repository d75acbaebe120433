"""Weights & Biases: one W&B run per trial, in the project ``$WANDB_PROJECT`` (default ``raykd``)
and the group named after the search; the trial's config, its epochs as history with
``step = epoch``, its ``status``, ``stop_reason`` and ``phase`` in the run's summary.

Run files go to ``FOLDER/wandb/``. Offline (``WANDB_MODE=offline``, or no ``WANDB_API_KEY``
and no ``WANDB_MODE``) nothing leaves the machine; ``wandb sync FOLDER/wandb/offline-run-*``
uploads later. A trial's run id is derived from the folder and the trial id, so a resumed
search continues the same run; every driver writes its own run folder (W&B makes one per
start), and an epoch already in any of them is not logged again: the transaction logs
(``run-ID.wandb``, W&B's LevelDB-style record log of protobuf records, written online too)
are read back (:func:`logged_steps`).
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from raykd.tracking.base import ERROR, TrialInfo

DEFAULT_PROJECT = "raykd"
LOG_HEADER = 7  # b":W&B", a 2-byte magic, a version byte
BLOCK = 32768  # LevelDB log blocks; a record's 7-byte header never straddles two
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
FLUSH_INTERVAL_S = 0.1
"""How often W&B writes the run's transaction log (its default, 15 s, lost every epoch a SIGKILLed
driver had logged: measured, a kill 1 s after the log left only the header; at 0.1 s with the
row committed, a kill right after the log kept it)."""


def run_id(folder: str, trial_id: str) -> str:
    """The W&B run id of a trial: stable across drivers, distinct across searches (12 hex digits)."""
    return hashlib.sha256(f"{folder}\0{trial_id}".encode()).hexdigest()[:12]


def wandb_mode() -> str:
    """``$WANDB_MODE``; else ``online`` with ``$WANDB_API_KEY`` set, ``offline`` without (a
    search must never stop at W&B's login prompt)."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def _records(path: Path) -> Iterator[bytes]:
    """The records of one W&B transaction log; a torn or corrupt tail (a killed driver) ends it."""
    data = path.read_bytes()
    if not data.startswith(b":W&B"):
        return
    pos, pending = LOG_HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding to the block's end
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            return
        pos += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def logged_steps(folder: str | Path, rid: str) -> set[tuple[str, int]]:
    """(key, step) of every history value of run ``rid`` in any run folder under ``folder/wandb``
    (offline or online, from every driver that wrote it)."""
    from wandb.proto import wandb_internal_pb2 as pb

    found: set[tuple[str, int]] = set()
    for log in sorted(Path(folder, "wandb").glob(f"*-{rid}/run-{rid}.wandb")):
        for raw in _records(log):
            record = pb.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "history":
                step = record.history.step.num
                found.update(("/".join(item.nested_key) or item.key, step) for item in record.history.item)
    return found


class WandbTracker:
    """One W&B run per trial under ``folder`` (the search or output folder), group ``group``
    (the search's or run's name)."""

    name = "wandb"

    def __init__(self, folder: str | Path, group: str):
        self.folder, self.group = str(folder), group
        self._runs: dict[str, Any] = {}  # trial id -> wandb Run
        self._logged: dict[str, set[tuple[str, int]]] = {}

    def __getstate__(self) -> dict:
        # Pickled with Tune's state: open runs stay behind, the transaction logs tell what is logged.
        return {"folder": self.folder, "group": self.group, "_runs": {}, "_logged": {}}

    def open(self) -> None:
        Path(self.folder).mkdir(parents=True, exist_ok=True)

    def _run(self, trial: TrialInfo):
        run = self._runs.get(trial.trial_id)
        if run is not None:
            return run
        import wandb

        rid = run_id(self.folder, trial.trial_id)
        logged = logged_steps(self.folder, rid)
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in trial.config.items()
                  if not k.startswith("__") and v is not None}
        run = wandb.init(
            dir=self.folder, project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT), group=self.group,
            name=trial.name, id=rid, resume="allow", config=config, mode=wandb_mode(), reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True,
                                    x_transaction_log_flush_interval=FLUSH_INTERVAL_S))
        run.summary.update({"raykd.trial_id": trial.trial_id, "phase": trial.phase, "status": "RUNNING"})
        self._runs[trial.trial_id], self._logged[trial.trial_id] = run, logged
        return run

    def log_epoch(self, trial: TrialInfo, epoch: int, scalars: Mapping[str, float]) -> None:
        run = self._run(trial)
        logged = self._logged[trial.trial_id]
        missing = {k: v for k, v in scalars.items() if (k, epoch) not in logged}
        if missing:
            run.log(missing, step=epoch, commit=True)  # the step's row now, not when the next one starts
            logged.update((k, epoch) for k in missing)

    def finish(self, trial: TrialInfo, status: str, stop_reason: str) -> None:
        run = self._run(trial)
        run.summary.update({"status": status, "stop_reason": stop_reason})
        run.finish(exit_code=1 if status == ERROR else 0)
        self._runs.pop(trial.trial_id, None)
        self._logged.pop(trial.trial_id, None)

    def close(self) -> None:
        for run in self._runs.values():
            run.finish()
        self._runs, self._logged = {}, {}
