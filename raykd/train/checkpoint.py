"""Training-state checkpoints on local disk: atomic writes, ``weights_only`` reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from raykd.errors import UserError

STATE_FILE = "state.pt"


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """Write a training state atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by :func:`save_state` (no pickle: ``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"cannot read training checkpoint ({type(err).__name__})", file=path) from None


def latest_state(out: Path) -> Path | None:
    """The newest training state under ``out``: a one-worker run's ``checkpoints/state.pt`` or a
    Ray Train run's ``ray/*/checkpoint_*/state.pt``, so either kind resumes the other."""
    candidates = [out / "checkpoints" / "state.pt", *out.glob("ray/*/checkpoint_*/state.pt")]
    found = [p for p in candidates if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None
