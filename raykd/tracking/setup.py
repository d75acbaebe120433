"""``--log`` and ``--mlflow-uri``: which trackers a search or a training run feeds, checked
before anything starts, and kept in ``tracking.json`` of the search folder so ``--resume``
continues with the same ones."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from raykd.errors import UserError
from raykd.tracking.base import Tracker
from raykd.uri import is_uri

BACKENDS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "raykd[mlflow]"),
            "wandb": ("wandb", "raykd[wandb]")}
"""``--log`` name -> (module it needs, what to pip install)."""
SETUP_FILE = "tracking.json"
TENSORBOARD_FOLDER = "tensorboard"
MLFLOW_FOLDER = "mlruns"
WANDB_FOLDER = "wandb"  # W&B's own name for the folder it writes under its dir


RESUME_NOTES = {
    "search": "--resume keeps the search's",
    "run": "--resume without --log keeps the run's; with --log it takes those, filled with the run's history",
}
"""What ``--resume`` does with the trackers, per kind of command (see :func:`for_search`, :func:`for_train`)."""


def add_tracking_args(parser: argparse.ArgumentParser, kind: str = "search") -> None:
    """``--log`` and ``--mlflow-uri`` of ``raykd.search`` (and ``raykd.submit``), ``kind="search"``,
    and of ``raykd.train``, ``kind="run"``."""
    parser.add_argument("--log", metavar="BACKENDS",
                        help=f"also log every epoch to these trackers, comma-separated: {', '.join(BACKENDS)} "
                             f"(default: none; {RESUME_NOTES[kind]})")
    parser.add_argument("--mlflow-uri", metavar="URI",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a SQLite database in "
                             f"{MLFLOW_FOLDER}/ of the output folder)")


def parse_backends(text: str | None) -> tuple[str, ...]:
    """``"tensorboard,mlflow"`` -> the backends, in the order of :data:`BACKENDS`."""
    names = [part.strip() for part in (text or "").split(",") if part.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or (text is not None and not names):
        raise UserError(f"unknown tracker {', '.join(map(repr, unknown)) or repr(text)}; expected a comma-separated "
                        f"list of {', '.join(BACKENDS)}", key="--log")
    return tuple(n for n in BACKENDS if n in names)


def check_installed(backends: tuple[str, ...]) -> None:
    """One line and exit 2 (a :class:`UserError`) when a backend's package is missing."""
    for name in backends:
        module, install = BACKENDS[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"{name} is not installed: pip install '{install}'", key="--log")


def for_search(log: str | None, mlflow_uri: str | None, *, storage: str, root: str, name: str,
               resume: bool) -> TrackingSetup:
    """The trackers of the search ``name`` at ``root``: those of ``--log`` for a new search,
    those it started with for ``--resume`` (from ``tracking.json``; on a URI storage Tune's
    restored state carries them)."""
    folder = None if is_uri(storage) else root
    given = TrackingSetup.from_args(log, mlflow_uri, folder=folder, experiment=name)
    if not resume:
        return given
    return given.continued(TrackingSetup.load(folder), log_given=log is not None or mlflow_uri is not None)


def for_train(log: str | None, mlflow_uri: str | None, *, output_dir: str, name: str, resume: bool) -> TrackingSetup:
    """The trackers of a ``raykd.train`` run writing ``output_dir`` (MLflow experiment: the
    experiment's ``name``). ``--resume`` without ``--log`` keeps those the run started with;
    with ``--log`` it takes those (unlike a search, whose trackers live in Tune's saved state):
    the resumed history fills each new tracker in."""
    given = TrackingSetup.from_args(log, mlflow_uri, folder=output_dir, experiment=name)
    stored = TrackingSetup.load(output_dir) if resume and log is None and mlflow_uri is None else None
    if stored is None:
        return given
    check_installed(stored.backends)
    return stored


def run_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of an experiment (``ExperimentConfig.model_dump``) as dotted keys, without
    its file locations, as the params of a ``raykd.train`` run."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if key in ("data", "cache_dir", "output_dir", "checkpoint"):
            continue
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in run_config(value).items()})
        else:
            flat[key] = value
    return flat


class TrackingSetup(BaseModel):
    """The trackers of one search (or ``raykd.train`` run) and where they write.

    ``folder``: the local search (or output) folder, or None for URI storage; TensorBoard
    writes ``folder/tensorboard/``, W&B ``folder/wandb/``; ``experiment``: MLflow's experiment
    name and W&B's group;
    ``mlflow_uri``: resolved when ``mlflow`` is among ``backends``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    backends: tuple[str, ...] = ()
    folder: str | None = None
    experiment: str
    mlflow_uri: str | None = None

    @classmethod
    def from_args(cls, log: str | None, mlflow_uri: str | None, *, folder: str | None, experiment: str) -> TrackingSetup:
        """The set-up ``--log``/``--mlflow-uri`` ask for; every backend's package is checked
        (one line and exit 2 when one is missing)."""
        backends = parse_backends(log)
        check_installed(backends)
        for local in ("tensorboard", "wandb"):
            if local in backends and folder is None:
                raise UserError(f"{local} writes local files: use a local --storage folder", key="--log")
        uri = None
        if "mlflow" in backends:
            uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or (
                f"sqlite:///{Path(folder, MLFLOW_FOLDER, 'mlflow.db')}" if folder else None)
            if uri is None:
                raise UserError("with a URI --storage, give --mlflow-uri or set MLFLOW_TRACKING_URI", key="--mlflow-uri")
        elif mlflow_uri:
            raise UserError("--mlflow-uri without mlflow in --log", key="--mlflow-uri")
        return cls(backends=backends, folder=folder, experiment=experiment, mlflow_uri=uri)

    def continued(self, stored: TrackingSetup | None, log_given: bool) -> TrackingSetup:
        """The set-up of a resumed search: the stored one (its start's); a ``--log`` given
        again must ask for the same."""
        if stored is None:
            return self
        check_installed(stored.backends)
        if log_given and (self.backends, self.mlflow_uri) != (stored.backends, stored.mlflow_uri):
            raise UserError(f"this search logs to {', '.join(stored.backends) or 'no tracker'}"
                            f"{f' (MLflow at {stored.mlflow_uri})' if stored.mlflow_uri else ''} since it started; "
                            "resume without --log/--mlflow-uri or with the same", key="--log")
        return stored

    # --- the stored copy (local folders only: a URI storage resumes from Tune's state) ---

    @classmethod
    def load(cls, folder: str | None) -> TrackingSetup | None:
        path = Path(folder, SETUP_FILE) if folder else None
        if path is None or not path.is_file():
            return None
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except ValueError as err:
            raise UserError(f"unreadable tracker set-up ({err.__class__.__name__}); delete it to resume without "
                            "trackers", file=path) from None

    def save(self) -> None:
        if self.folder:  # also without trackers: a --log on --resume cannot add any silently
            Path(self.folder).mkdir(parents=True, exist_ok=True)
            Path(self.folder, SETUP_FILE).write_text(self.model_dump_json(indent=1))

    # --- the trackers -------------------------------------------------------------------

    def trackers(self) -> list[Tracker]:
        """One tracker per backend (nothing is opened before the first epoch)."""
        out: list[Tracker] = []
        if "tensorboard" in self.backends:
            from raykd.tracking.tensorboard_backend import TensorBoardTracker

            out.append(TensorBoardTracker(Path(self.folder, TENSORBOARD_FOLDER)))
        if "mlflow" in self.backends:
            from raykd.tracking.mlflow_backend import MlflowTracker

            default = self.folder is not None and self.mlflow_uri == f"sqlite:///{Path(self.folder, MLFLOW_FOLDER, 'mlflow.db')}"
            if default:
                Path(self.folder, MLFLOW_FOLDER).mkdir(parents=True, exist_ok=True)
            out.append(MlflowTracker(self.mlflow_uri, self.experiment, folder=self.folder or self.experiment,
                                     artifact_location=Path(self.folder, MLFLOW_FOLDER, "artifacts").as_uri()
                                     if default else None))
        if "wandb" in self.backends:
            from raykd.tracking.wandb_backend import WandbTracker

            out.append(WandbTracker(self.folder, self.experiment))
        return out

    def describe(self) -> str:
        """One line for the driver's start-up output."""
        parts = []
        if "tensorboard" in self.backends:
            parts.append(f"TensorBoard in {Path(self.folder, TENSORBOARD_FOLDER)}")
        if "mlflow" in self.backends:
            parts.append(f"MLflow experiment {self.experiment!r} at {self.mlflow_uri}")
        if "wandb" in self.backends:
            from raykd.tracking.wandb_backend import wandb_mode

            mode = wandb_mode()
            parts.append(f"W&B ({mode}) group {self.experiment!r}, run files in {Path(self.folder, WANDB_FOLDER)}"
                         + (f" (upload: wandb sync {Path(self.folder, WANDB_FOLDER)}/offline-run-*)"
                            if mode == "offline" else ""))
        return "tracking: " + "; ".join(parts)
