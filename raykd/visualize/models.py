"""The models a picture is drawn from: the experiment's teacher, its student (untrained or from
a run) and its distiller, built as the training loop builds them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from raykd.config import ExperimentConfig
from raykd.data import CocoDetection
from raykd.distill import Distiller, build_distiller
from raykd.errors import UserError
from raykd.models import load_weights
from raykd.models.labels import LabelSpace
from raykd.train.checkpoint import load_state
from raykd.train.setup import build_pair, seed_everything
from raykd.train.teacher import teacher_cache_path

MODEL_FILES = ("model_best.pt", "model_final.pt")


@dataclass
class Models:
    """Teacher and student in eval mode, the distiller (None for ``distill.method: none``).

    ``student_source``: where the student's weights came from (``untrained (seed S)`` or a
    path); ``distiller_trained``: whether the distiller's blocks (generation, fusion, align)
    were loaded from a training state rather than freshly initialised; ``space``: the
    student's label space (data set labels are mapped into it, as in training).
    """

    teacher: nn.Module
    student: nn.Module
    space: LabelSpace
    distiller: Distiller | None
    student_source: str
    distiller_trained: bool


def teacher_checkpoint(cfg: ExperimentConfig, experiment: str | Path) -> str | None:
    """The teacher's trained weights as the trainer finds them (``teacher.checkpoint``, else the
    teacher a search or a run trained and cached for this experiment), or None for a teacher
    that is ``teacher.weights`` as they are. Nothing is trained here."""
    teacher = cfg.teacher
    if teacher is None:
        raise UserError("no teacher block: the pictures compare the student with a teacher", file=experiment,
                        key="teacher")
    if teacher.checkpoint and Path(teacher.checkpoint).is_file():
        return teacher.checkpoint
    if teacher.checkpoint is None and teacher.train is None:
        return None
    if not teacher.checkpoint and teacher_cache_path(cfg).is_file():
        return str(teacher_cache_path(cfg))
    how = (f"`python -m raykd.train {experiment} --set distill.method=mgd` trains it first (from teacher.train)"
           if teacher.train is not None else "point teacher.checkpoint at a trained teacher")
    missing = teacher.checkpoint or teacher_cache_path(cfg)
    raise UserError(f"teacher checkpoint not found ({missing}); {how}", file=experiment, key="teacher.checkpoint")


def student_checkpoint(path: str | Path) -> Path:
    """The file to load for ``--student``: the file itself, or for a run folder its newest
    training state (``checkpoints/state.pt`` or a Ray Train checkpoint: student and distiller),
    else ``model_best.pt``, else ``model_final.pt`` (the student alone)."""
    from raykd.train.checkpoint import latest_state

    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError("no such run folder or checkpoint file", file=path, key="--student")
    state = latest_state(path)
    if state is not None:
        return state
    for name in MODEL_FILES:
        if (path / name).is_file():
            return path / name
    raise UserError(f"no checkpoint in this folder (expected checkpoints/state.pt, {' or '.join(MODEL_FILES)})",
                    file=path, key="--student")


def _load_distiller(distiller: Distiller, path: Path, method: str) -> bool:
    """Load the distiller's weights from a training state at ``path``; False when it holds none."""
    state = load_state(path)
    saved = state.get("distiller") if isinstance(state, dict) else None
    if saved is None:
        return False
    try:
        distiller.load_state_dict(saved)
    except RuntimeError:
        raise UserError(f"the run's distiller does not match distill.method={method} with these settings "
                        "(pass the run's --set values)", file=path, key="--student") from None
    return True


def _is_finished_marker(path: Path) -> bool:
    """A search's ended trial keeps a few-byte marker instead of its weights."""
    if path.stat().st_size > 4096:
        return False
    state = load_state(path)
    return isinstance(state, dict) and set(state) == {"finished"}


def build_models(cfg: ExperimentConfig, experiment: str | Path, dataset: CocoDetection,
                 student: str | Path | None = None) -> Models:
    """Teacher, student and distiller of ``cfg`` on the CPU, built as the training loop builds
    them after ``seed_everything(train.seed)``: an untrained student is the one training starts
    from. ``dataset`` gives the classes."""
    teacher_file = teacher_checkpoint(cfg, experiment)
    seed_everything(cfg.train.seed)
    pair = build_pair(cfg, dataset.class_names, dataset.cat_ids, teacher_file, with_teacher=True,
                      log=lambda line: None)
    model, num_classes = pair.student, pair.space.num_classes
    distiller = None
    if cfg.distill.method != "none":
        try:  # cfg.distill.levels, all of them among the model's
            distiller = build_distiller(cfg.distill, student_channels=cfg.student.fpn_channels,
                                        teacher_channels=cfg.teacher.fpn_channels, levels=level_names(model),
                                        num_classes=num_classes)
        except ValueError as err:
            raise UserError(str(err), file=experiment, key="distill.levels") from None
    source, trained = f"untrained (seed {cfg.train.seed})", False
    if student is not None:
        path = student_checkpoint(student)
        if _is_finished_marker(path):
            raise UserError("this checkpoint is a finished search trial's marker and holds no weights",
                            file=path, key="--student")
        load_weights(model, path, what="--student")
        if distiller is not None:
            trained = _load_distiller(distiller, path, cfg.distill.method)
        source = str(path)
    model.eval()
    if distiller is not None:
        distiller.eval()
    return Models(teacher=pair.teacher, student=model, space=pair.space, distiller=distiller,
                  student_source=source, distiller_trained=trained)


def level_names(model: nn.Module) -> list[str]:
    """The FPN levels of ``model``'s family (two-stage: P2-P6, dense heads: P3-P7)."""
    from torchvision.models.detection import FasterRCNN

    return ["0", "1", "2", "3", "pool"] if isinstance(model, FasterRCNN) else ["0", "1", "2", "p6", "p7"]
