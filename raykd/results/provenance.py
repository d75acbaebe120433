"""The ``runs`` table: where, with what and from which sources a search ran."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import socket
import subprocess
from datetime import datetime, timezone

import pyarrow as pa

from raykd.results import schema as S
from raykd.results.store import join, publish, resolve

_PACKAGES = ("raykd", "torch", "torchvision", "ray", "optuna", "pyarrow")


def write_run(
    root: str | os.PathLike,
    experiment: str,
    *,
    dataset_fingerprint: str | None = None,
    space_path: str | os.PathLike | None = None,
    space_text: str | None = None,
    resumed: bool = False,
) -> dict:
    """Publish one ``runs`` row for a search start (or resume) and return it.

    Computes the provenance: package versions, git commit of the current directory (null
    outside a repository), host, platform, Python, CPU model/count and CUDA device names
    (torch is imported here, only if installed). ``space_text`` defaults to the file's text.
    """
    if space_text is None and space_path is not None and os.path.isfile(space_path):
        with open(space_path, encoding="utf-8") as f:
            space_text = f.read()
    commit, dirty = _git()
    row = {
        "experiment": experiment,
        "started_at": datetime.now(timezone.utc),
        "resumed": resumed,
        "schema_version": S.SCHEMA_VERSION,
        **{f"{name}_version": _version(name) for name in _PACKAGES},
        "git_commit": commit,
        "git_dirty": dirty,
        "dataset_fingerprint": dataset_fingerprint,
        "space_path": os.fspath(space_path) if space_path is not None else None,
        "space_text": space_text,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python_version": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cuda_devices": _cuda_devices(),
    }
    write_run_row(root, row)
    return row


def write_run_row(root: str | os.PathLike, row: dict) -> str:
    """Publish ``row`` (columns of :func:`~raykd.results.schema.runs_schema`) as a part."""
    fs, base = resolve(root)
    schema = S.for_experiment(S.runs_schema(), row["experiment"])
    return publish(fs, join(base, "runs"), pa.Table.from_pylist([row], schema=schema))


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git() -> tuple[str | None, bool | None]:
    """(HEAD commit, whether the work tree has changes) of the current directory, or nulls.

    A job sent by ``raykd.submit`` runs from a package without ``.git``; it carries the
    submitter's commit in ``RAYKD_GIT_COMMIT`` / ``RAYKD_GIT_DIRTY``.
    """
    if os.environ.get("RAYKD_GIT_COMMIT"):
        dirty = os.environ.get("RAYKD_GIT_DIRTY")
        return os.environ["RAYKD_GIT_COMMIT"], None if dirty is None else dirty.lower() in ("1", "true", "yes")
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return head.stdout.strip() or None, dirty


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _cuda_devices() -> list[str] | None:
    """Names of the visible CUDA devices; null without torch or CUDA."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
