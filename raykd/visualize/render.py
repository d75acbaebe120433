"""From an experiment to PNG pictures: data, models, one figure per image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from raykd.config import ExperimentConfig
from raykd.data import CocoDetection
from raykd.errors import UserError
from raykd.train.setup import validate_data
from raykd.visualize.collect import collect
from raykd.visualize.draw import figure, png_bytes
from raykd.visualize.models import Models, build_models

SPLITS = ("val", "train")


@dataclass
class Picture:
    """One rendered image: its COCO id and the PNG bytes."""

    image_id: int
    png: bytes


def split_dataset(cfg: ExperimentConfig, split: str) -> CocoDetection:
    """The ``split`` images of ``cfg``'s data, resized as for evaluation (no random flips)."""
    paths = validate_data(cfg.data, cfg.cache_dir)
    annotations, images = ((paths.val_annotations, paths.val_images) if split == "val"
                           else (paths.train_annotations, paths.train_images))
    return CocoDetection(annotations, images, image_size=cfg.data.image_size, train=False)


def prepare(cfg: ExperimentConfig, experiment: str | Path, split: str,
            student: str | Path | None) -> tuple[CocoDetection, Models]:
    """Check and load everything a picture needs (data, teacher, student): every mistake is a
    :class:`UserError` raised before anything is drawn or written."""
    if split not in SPLITS:
        raise UserError(f"expected one of {', '.join(SPLITS)}, got {split!r}", key="--split")
    dataset = split_dataset(cfg, split)
    return dataset, build_models(cfg, experiment, dataset, student)


def pictures(cfg: ExperimentConfig, dataset: CocoDetection, models: Models, count: int, split: str) -> list[Picture]:
    """The first ``count`` images of ``dataset``; image i's masks follow seed ``train.seed + i``."""
    student = models.student_source
    if models.distiller is not None and not models.distiller_trained:
        student += "; distiller blocks untrained"
    out = []
    for index in range(min(count, len(dataset))):
        image, target = dataset[index]
        view = collect(models, image, target, seed=cfg.train.seed + index)
        subtitle = f"{split} image {view.image_id} · student: {student}"
        out.append(Picture(view.image_id, png_bytes(figure(view, cfg.distill, subtitle))))
    return out
