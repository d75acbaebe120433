"""What a search job ships and runs: its runtime_env, entrypoint, submission id and metadata.

The job's working_dir is the project (the folder holding ``pyproject.toml`` and ``raykd/``)
without results, caches, checkpoints and ``.git``. A space or experiment file outside the
project is copied to ``_raykd_job/`` of a staging folder whose other entries link to the
project, so one package carries both. ``--no-package`` ships only the space and experiment
files and relies on raykd being installed on the cluster.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import raykd
from raykd.config import (
    BASE_KEY,
    PATH_KEYS,
    SHARED_PATH_KEYS,
    get_dotted,
    load_with_bases,
    load_yaml,
    parse_overrides,
    relative_path,
    resolve_paths,
)
from raykd.errors import UserError
from raykd.search.space import Space
from raykd.uri import is_shared_uri, is_uri, resolve_storage  # noqa: F401 (resolve_storage: for raykd.submit)

EXCLUDES = (".git", "/results", "/runs", "/data_cache", "/cache", "/benchmarks/out", "*.pt", "__pycache__")
"""gitignore-style patterns left out of the package; top-level folders are anchored with ``/``
(a bare ``results`` would also drop the ``raykd/results`` package)."""

JOB_FILES = "_raykd_job"

ENV_VARS = {
    # Train blocks every report for up to this long (2 s by default, docs/architecture.md).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # `stop` interrupts the search like Ctrl-C: Tune saves its state, so it can resume.
    "RAY_JOB_STOP_SIGNAL": "SIGINT",
    # Seconds Tune gets to save that state before the job is killed (Ray's default: 3).
    "RAY_JOB_STOP_WAIT_TIME_S": "60",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
}

JOB_ID_VAR = "RAYKD_JOB_ID"  # the job's own id, recorded in the search folder's owner file
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def project_root() -> Path | None:
    """The source checkout raykd runs from, or None for an installed package."""
    root = Path(raykd.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "raykd").is_dir() else None


def check_storage(storage: str, nodes: int, shared: bool) -> None:
    """Refuse node-local storage on a multi-node cluster unless marked shared."""
    if nodes > 1 and not shared and not is_shared_uri(storage):
        raise UserError(
            f"the cluster has {nodes} nodes, so trials on other nodes cannot write to the node-local path "
            f"{storage}: pass a URI every node reaches (s3://bucket/raykd, gs://...) or, if it is a shared "
            "mount (NFS) visible at the same path on every node, add --shared-storage", key="--storage")


def node_local_paths(space: Space, overrides: dict[str, Any], storage: str) -> list[str]:
    """Keys of the experiment file holding relative paths that trials read (not overridden by the
    space or --set): :data:`raykd.config.SHARED_PATH_KEYS`, weights files included.

    The job reads them at the absolute paths they resolve to on the submitting machine
    (:func:`job_paths`), which other nodes have only on a shared mount. ``cache_dir`` is named
    when it is unset and ``storage`` is a URI (:func:`shared_cache` keeps it on the driver's node).
    """
    raw = load_with_bases(space.experiment_path)  # relative as written, bases included
    overridden = set(space.settings.fixed) | set(overrides)
    found = []
    for key in SHARED_PATH_KEYS:
        if key not in overridden and relative_path(get_dotted(raw, key, default=None)):
            found.append(key)
    if "cache_dir" not in raw and "cache_dir" not in overridden and raw.get("teacher") and is_uri(storage):
        found.append("cache_dir")
    return found


NODE_CACHE = "~/.cache/raykd"
"""``cache_dir`` of a job whose storage is a URI: the caches are local files, so they stay on the
driver's node (outside the job's package, kept from one job to the next)."""


def shared_cache(storage: str) -> str:
    """The ``cache_dir`` a submitted search gets when its experiment sets none: ``STORAGE/cache``,
    shared by every search on that storage (:data:`NODE_CACHE` for a URI storage)."""
    return NODE_CACHE if is_uri(storage) else f"{storage.rstrip('/')}/cache"


def job_paths(space: Space, overrides: dict[str, Any], storage: str) -> dict[str, str]:
    """``--set`` values that make the job read the files the experiment means here.

    On the cluster the experiment is a copy inside the job's package, so each relative path key
    (in the experiment file, the space's ``fixed`` block or ``--set``) is passed as the absolute
    path it resolves to on this machine; without any ``cache_dir``, it is :func:`shared_cache`.
    """
    raw = load_with_bases(space.experiment_path, resolve_paths)  # a base file's paths: absolute, against its folder
    own = load_yaml(space.experiment_path)
    given = {**space.settings.fixed, **overrides}
    base = space.experiment_path.resolve().parent  # what raykd.config resolves relative paths against
    found = {}
    for key in PATH_KEYS:
        value = given[key] if key in given else get_dotted(raw, key, default=None)
        if relative_path(value):
            found[key] = str((base / value).resolve())
        elif key not in given and get_dotted(own, key, default=None) is None and isinstance(value, str) \
                and value and not is_uri(value):  # from a base file, which the job would resolve in its package
            found[key] = value
    if "cache_dir" not in given and "cache_dir" not in raw:
        found["cache_dir"] = shared_cache(storage)
    return found


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UserError(f"expected letters, digits, '.', '_' or '-', got {name!r}", key="--name")
    return name


def submission_id(name: str, attempt: int) -> str:
    """``raykd-NAME`` for the first submission, ``raykd-NAME-rK`` for the K-th resume."""
    return f"raykd-{name}" if attempt == 0 else f"raykd-{name}-r{attempt}"


@dataclass
class SearchJob:
    """One submission of a search: everything ``JobSubmissionClient.submit_job`` needs."""

    name: str
    storage: str
    entrypoint: str
    submission_id: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    space_in_package: str
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def results(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    def submit_kwargs(self) -> dict[str, Any]:
        kwargs = dict(entrypoint=self.entrypoint, runtime_env=self.runtime_env, metadata=self.metadata,
                      submission_id=self.submission_id)
        if self.entrypoint_num_cpus is not None:
            kwargs["entrypoint_num_cpus"] = self.entrypoint_num_cpus
        if self.entrypoint_num_gpus is not None:
            kwargs["entrypoint_num_gpus"] = self.entrypoint_num_gpus
        return kwargs


def stage(space: Space, staging: Path, root: Path | None) -> tuple[Path, str]:
    """The working_dir to ship and the space file's path inside it.

    With ``root`` (the project) and both files inside it, that is the project itself.
    Otherwise ``staging`` gets the two files under ``_raykd_job/`` (their relative layout
    kept; an absolute ``experiment:`` is rewritten to the copy) and, with ``root``, a link to
    every top-level entry of the project.
    """
    space_file, exp_file = space.path.resolve(), space.experiment_path.resolve()
    if root is not None and space_file.is_relative_to(root) and exp_file.is_relative_to(root):
        return root, space_file.relative_to(root).as_posix()
    for file in (space_file, exp_file):  # only these two files travel: their _base_ files would not
        if BASE_KEY in load_yaml(file):
            raise UserError(f"inherits from {BASE_KEY} files, which a job that ships only the space and experiment "
                            "files lacks: keep both files inside the project and ship it (without --no-package)",
                            file=file, key=BASE_KEY)
    staging.mkdir(parents=True, exist_ok=True)
    if root is not None:
        for entry in root.iterdir():
            if entry.name not in (".git", JOB_FILES):
                (staging / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    common = Path(os.path.commonpath([space_file.parent, exp_file.parent]))
    space_copy = staging / JOB_FILES / space_file.relative_to(common)
    exp_copy = staging / JOB_FILES / exp_file.relative_to(common)
    for src, dst in ((space_file, space_copy), (exp_file, exp_copy)):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    raw = yaml.safe_load(space.text)
    if Path(raw["experiment"]).expanduser().is_absolute():
        raw["experiment"] = os.path.relpath(exp_copy, space_copy.parent)
        space_copy.write_text(yaml.safe_dump(raw, sort_keys=False))
    return staging, space_copy.relative_to(staging).as_posix()


def build_job(space: Space, *, name: str, storage: str, staging: Path, package: bool = True, resume: bool = False,
              attempt: int = 0, num_samples: int | None = None, overrides: list[str] = (),
              excludes: list[str] = (), driver_cpus: float | None = None,
              driver_gpus: float | None = None, log: str | None = None,
              mlflow_uri: str | None = None) -> SearchJob:
    """The job that runs ``python -m raykd.search`` on the cluster for ``space``.

    ``log`` and ``mlflow_uri`` are passed on as the search's ``--log`` and ``--mlflow-uri``
    (the trackers run in the job, so their packages must be installed on the cluster).

    ``storage`` must already be absolute or a URI (:func:`resolve_storage`); ``staging`` is
    an empty temporary folder that must live until the job is submitted.
    """
    root = project_root() if package else None
    if package and root is None:
        raise UserError("raykd is installed as a package, not run from a source checkout: pass --no-package "
                        "(with raykd installed on the cluster)", key="--no-package")
    working_dir, space_rel = stage(space, staging, root)
    patterns = list(EXCLUDES) + list(excludes)
    if root is not None and not is_uri(storage) and Path(storage).is_relative_to(root):
        patterns.append("/" + Path(storage).relative_to(root).as_posix())  # results kept inside the project
    args = ["python", "-m", "raykd.search", space_rel, "--address", "auto", "--storage", storage, "--name", name]
    if num_samples is not None:
        args += ["--num-samples", str(num_samples)]
    paths = job_paths(space, parse_overrides(list(overrides)), storage)
    for item in overrides:
        if item.partition("=")[0].strip() not in paths:
            args += ["--set", item]
    for key, value in paths.items():
        args += ["--set", f"{key}={value}"]
    if resume:
        args.append("--resume")
    if log is not None:
        args += ["--log", log]
    if mlflow_uri is not None:
        args += ["--mlflow-uri", mlflow_uri]
    metadata = {"tool": "raykd", "space": space.name, "space_file": str(space.path), "name": name,
                "storage": storage, "user": _user(), "resume": str(attempt) if resume else "0"}
    job = SearchJob(
        name=name, storage=storage, entrypoint=shlex.join(args), submission_id=submission_id(name, attempt),
        runtime_env={"working_dir": str(working_dir), "excludes": patterns,
                     "env_vars": {**ENV_VARS, **git_env(root), JOB_ID_VAR: submission_id(name, attempt)}},
        metadata=metadata, space_in_package=space_rel, entrypoint_num_cpus=driver_cpus,
        entrypoint_num_gpus=driver_gpus,
    )
    if root is None:
        job.notes.append("package: only the space and experiment files (raykd must be installed on the cluster)")
    else:
        job.notes.append(f"package: project {root} (without {', '.join(patterns)})")
    return job


def git_env(root: Path | None) -> dict[str, str]:
    """``RAYKD_GIT_COMMIT`` / ``RAYKD_GIT_DIRTY`` of the shipped project: the package has no ``.git``,
    so the job cannot find them itself (for the provenance table)."""
    if root is None:
        return {}
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    if head.returncode != 0:
        return {}
    return {"RAYKD_GIT_COMMIT": head.stdout.strip(), "RAYKD_GIT_DIRTY": "1" if status.stdout.strip() else "0"}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
