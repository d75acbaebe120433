"""Pictures of one trial of a search, from its newest checkpoint (for ``raykd.analyze``'s report).

A search folder ``STORAGE/NAME`` holds ``trial_<id>/checkpoint_*/state.pt`` (student and
distiller), the space file's path in its ``runs`` table and the teacher in ``teacher.json``.
A trial that ended keeps a few-byte marker instead of its weights, so only trials whose
checkpoint still holds them can be drawn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raykd.config import ExperimentConfig, apply_overrides
from raykd.errors import UserError
from raykd.results.layout import TEACHER_FILE, TRIAL_PREFIX, SearchFolder
from raykd.train.checkpoint import load_state
from raykd.uri import is_uri
from raykd.visualize.render import Picture, pictures, prepare


@dataclass
class TrialPictures:
    """``pictures`` of the trial, and ``note``: what they show, or why there are none."""

    pictures: list[Picture] = field(default_factory=list)
    note: str = ""


def trial_checkpoint(root: Path, trial_id: str) -> Path | None:
    """The newest ``trial_<id>/checkpoint_*/state.pt`` under ``root`` that holds weights."""
    for state in sorted(Path(SearchFolder(str(root)).trial(trial_id)).glob("checkpoint_*/state.pt"), reverse=True):
        try:
            data = load_state(state)
        except UserError:  # torn by a kill
            continue
        if isinstance(data, dict) and "model" in data:
            return state
    return None


def trial_config(root: Path, space_path: str, params: Mapping[str, Any]) -> tuple[ExperimentConfig, Path]:
    """The trial's experiment: the space's base experiment with ``params`` (dotted keys, nulls
    left out) applied and the search's teacher checkpoint; also the experiment file's path."""
    from raykd.search.space import Space

    space = Space(space_path)
    overrides = {key: value.item() if hasattr(value, "item") else value for key, value in params.items()}
    teacher = root / TEACHER_FILE
    if teacher.is_file():
        checkpoint = json.loads(teacher.read_text()).get("checkpoint")
        if checkpoint:
            overrides["teacher.checkpoint"] = checkpoint
    return apply_overrides(space.base, overrides, file=space.experiment_path), space.experiment_path


def best_trial_pictures(root: Path, trial_id: str, space_path: str | None, params: Mapping[str, Any],
                        images: int = 2) -> TrialPictures:
    """Up to ``images`` val pictures of trial ``trial_id`` of the search folder ``root``."""
    state = trial_checkpoint(root, trial_id)
    if state is None:
        return TrialPictures(note=f"No distillation pictures: trial {trial_id} has no checkpoint with weights under "
                                  f"{root} (an ended trial keeps a marker only); `python -m raykd.visualize` draws "
                                  "them for a trained run (`--student RUN_DIR`).")
    if not space_path:
        return TrialPictures(note="No distillation pictures: the runs table names no space file.")
    try:
        cfg, experiment = trial_config(root, space_path, params)
        dataset, models = prepare(cfg, experiment, "val", state)
        drawn = pictures(cfg, dataset, models, images, "val")
    except UserError as err:
        return TrialPictures(note=f"No distillation pictures of trial {trial_id}: {err}")
    return TrialPictures(drawn, f"Trial {trial_id} from {state}: what its distiller masked and reconstructed on the "
                                f"first {len(drawn)} val images (`python -m raykd.visualize` draws more).")


def search_pictures(results: Sequence[str], trial: Mapping[str, Any], params: Sequence[str],
                    images: int = 2) -> TrialPictures | None:
    """Pictures of ``trial`` (a row of the trials table: ``experiment``, ``trial_id``, ``seed`` and
    the ``params`` columns) when one of the local ``results`` folders (a search folder or its
    ``tables/``) holds its trial folder; None when none does."""
    trial_id = str(trial["trial_id"])
    roots = [base for path in results if not is_uri(path)
             for base in (Path(path), Path(path).parent) if (base / f"{TRIAL_PREFIX}{trial_id}").is_dir()]
    if not roots:
        return None
    root = roots[0]
    values = {key: trial[key] for key in params if key in trial and not _is_null(trial[key])}
    if "seed" in trial and not _is_null(trial["seed"]):
        values["train.seed"] = int(trial["seed"])
    return best_trial_pictures(root, trial_id, _space_path(root, str(trial["experiment"])), values, images)


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _space_path(root: Path, experiment: str) -> str | None:
    """The newest space file the search ``experiment`` recorded in its runs table."""
    from raykd.results import load

    tables = Path(SearchFolder(str(root)).tables)
    if not (tables / "runs").is_dir():
        return None
    runs = load(tables, table="runs")
    paths = [p for e, p in zip(runs["experiment"], runs["space_path"]) if e == experiment and isinstance(p, str) and p]
    return paths[-1] if paths else None
