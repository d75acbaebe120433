"""Turning an experiment config into datasets, models and a device (no Ray here)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from raykd.config import DataConfig, ExperimentConfig, ScheduleConfig, config_hash
from raykd.data import CocoDetection, ensure_synthetic
from raykd.data.annindex import AnnotationIndex, annotation_digest, cached_index, load_index, stat_key, store_index
from raykd.data.converted import coco_paths
from raykd.data.transforms import detection_transforms
from raykd.distill.methods import REGISTRY
from raykd.errors import UserError
from raykd.models import build_detector, inherit_neck_and_head, load_weights
from raykd.models.builders import build_pretrained
from raykd.models.labels import LabelSpace, data_space, matched_space
from raykd.models.weights import load_state_into, read_file


@dataclass
class DataPaths:
    train_annotations: str
    train_images: str
    val_annotations: str
    val_images: str
    # annotation indexes :func:`validate_data` parsed and did not find cached: (stat key, index)
    pending: list[tuple[str, AnnotationIndex]] = field(default_factory=list, repr=False, compare=False)


def resolve_data(cfg: DataConfig, cache_dir: str | Path) -> DataPaths:
    """COCO paths of the configured data: a synthetic block is generated when missing, VOC and
    YOLO splits are read from (or converted into) COCO files under ``cache_dir/data``."""
    if cfg.train is not None and cfg.val is not None:
        train, val = coco_paths([cfg.train, cfg.val], cache_dir)
        return DataPaths(str(train.annotations), str(train.images), str(val.annotations), str(val.images))
    syn = cfg.synthetic
    paths = ensure_synthetic(syn.out_dir, train_images=syn.train_images, val_images=syn.val_images,
                             seed=syn.seed, image_size=syn.image_size)
    return DataPaths(str(paths.train_annotations), str(paths.train_images),
                     str(paths.val_annotations), str(paths.val_images))


def _check_paths(paths: DataPaths) -> None:
    for key, value in (("data.train.annotations", paths.train_annotations), ("data.val.annotations", paths.val_annotations)):
        if not os.path.isfile(value):
            raise UserError("annotation file not found", file=value, key=key)
    for key, value in (("data.train.images", paths.train_images), ("data.val.images", paths.val_images)):
        if not os.path.isdir(value):
            raise UserError("image folder not found", file=value, key=key)


def _same_categories(train_ids: list[int], val_ids: list[int], val_file: str) -> None:
    if train_ids != val_ids:
        raise UserError(f"val categories {val_ids} differ from train categories {train_ids}", file=val_file,
                        key="categories")


def index_dir(cache_dir: str | Path) -> Path:
    """Where annotation indexes are cached (:mod:`raykd.data.annindex`)."""
    return Path(cache_dir) / "annotations"


def build_datasets(cfg: DataConfig, cache_dir: str | Path, masks: bool = False) -> tuple[CocoDetection, CocoDetection]:
    """Train and val datasets; ``masks``: with instance masks (a Mask R-CNN is trained). Their
    annotation indexes are read from (or written to) :func:`index_dir`. Training images come as
    uint8 (:func:`~raykd.data.transforms.device_image` converts them on the device)."""
    paths = resolve_data(cfg, cache_dir)
    _check_paths(paths)
    train = CocoDetection(paths.train_annotations, paths.train_images, image_size=cfg.image_size, train=True,
                          min_size=cfg.min_size, masks=masks, index_dir=index_dir(cache_dir))
    val = CocoDetection(paths.val_annotations, paths.val_images, image_size=cfg.image_size, train=False,
                        min_size=cfg.min_size, masks=masks, index_dir=index_dir(cache_dir))
    _same_categories(train.cat_ids, val.cat_ids, paths.val_annotations)
    # Training images leave the loader workers as uint8 and become floats on the device
    # (raykd.data.transforms.device_image).
    train.transforms = detection_transforms(cfg.image_size, True, cfg.min_size, uint8=True)
    return train, val


def loader_workers(cpus_per_worker: float, gpus_per_worker: float) -> int:
    """``data.num_workers``' default in a search trial: on a GPU, one loader process per CPU the
    trial's worker holds beyond the one that drives the GPU, at most 8
    (``min(floor(cpus_per_worker) − 1, 8)``, at least 0); on the CPU 0, since the worker's torch
    threads already use its CPUs (``train.threads``). Outside a search the default is 0."""
    if gpus_per_worker <= 0:
        return 0
    return min(max(int(cpus_per_worker) - 1, 0), 8)


def validate_data(cfg: DataConfig, cache_dir: str | Path, masks: bool = False) -> DataPaths:
    """Check the configured data before anything starts (a synthetic block is generated first,
    VOC and YOLO splits converted and cached under ``cache_dir``, :func:`resolve_data`):
    both annotation files read as COCO without a problem (their annotation indexes, built here
    when missing so that the trials only memory-map them, :func:`index_dir`), every image file
    they list exists, train and val have the same categories; with ``masks`` (a Mask R-CNN is
    trained) every annotation has a well-formed segmentation. Images are not decoded here
    (``python -m raykd.data check`` does that); an unreadable one fails when read. Indexes not
    cached yet are parsed in memory and kept in ``pending``: :func:`store_indexes` writes them
    once every other input is accepted too, so a refused run leaves nothing behind."""
    paths = resolve_data(cfg, cache_dir)
    _check_paths(paths)
    root = index_dir(cache_dir)
    categories = []
    for annotations, images in ((paths.train_annotations, paths.train_images),
                                (paths.val_annotations, paths.val_images)):
        key = stat_key(annotations)
        index = cached_index(annotations, root, masks, key=key)
        if index is None:
            index = load_index(annotations, None, masks=masks)
            paths.pending.append((key, index))
        _images_exist(index, images, annotations)
        categories.append(sorted(index.categories))
    _same_categories(*categories, paths.val_annotations)
    return paths


def store_indexes(paths: DataPaths, cache_dir: str | Path) -> None:
    """Write the annotation indexes :func:`validate_data` parsed (the trials then memory-map them)."""
    for key, index in paths.pending:
        store_index(index_dir(cache_dir), key, index)
    paths.pending.clear()


def _images_exist(index: AnnotationIndex, images: str, annotations: str) -> None:
    missing = missing_images(index, images)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        first = missing[0]
        raise UserError(f"image file not found: {os.path.join(images, index.file_name(first))}{more}",
                        file=annotations, key=f"images[{int(index.arrays['image_keys'][first])}].file_name")


def missing_images(index: AnnotationIndex, images: str | Path) -> list[int]:
    """Rows of ``index``'s images whose file is not in the folder ``images``: one directory
    listing per sub-folder the file names use, compared as a set (not a stat per image)."""
    listed: dict[str, set[str]] = {}
    missing = []
    for row, name in enumerate(index.file_names()):
        folder, _, base = name.rpartition("/")
        if folder not in listed:
            try:
                with os.scandir(os.path.join(images, folder)) as entries:
                    listed[folder] = {e.name for e in entries if e.is_file()}
            except OSError:
                listed[folder] = set()
        if base not in listed[folder]:
            missing.append(row)
    return missing


def choose_device(cfg: ScheduleConfig, assigned: torch.device | str | None = None) -> torch.device:
    """The training device, made current on CUDA (``torch.cuda.set_device``) so the NCCL
    communicator, autocast and pinned-memory copies all use it.

    ``assigned``: the launcher's device (Ray Train's ``ray.train.torch.get_device()``, the GPU
    Ray gave this worker); without it ``LOCAL_RANK`` (torchrun's) picks among the visible GPUs,
    else the first. ``train.device: cpu`` ignores a GPU.
    """
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("CUDA requested but no GPU is visible", key="train.device")
    device = torch.device(assigned) if assigned is not None else None
    if device is None or device.type != "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_student(cfg: ExperimentConfig, num_classes: int, teacher: nn.Module | None) -> nn.Module:
    student = build_detector(cfg.student, num_classes, cfg.data.image_size, cfg.data.min_size)
    if cfg.student.inherit:
        inherit_neck_and_head(student, teacher)
    return student


def build_teacher(cfg: ExperimentConfig, num_classes: int, checkpoint: str) -> nn.Module:
    """The frozen teacher in eval mode with gradients off, weights from ``checkpoint``."""
    teacher = build_detector(cfg.teacher, num_classes, cfg.data.image_size, cfg.data.min_size)
    load_weights(teacher, checkpoint, what="teacher.checkpoint")
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


@dataclass
class Pair:
    """The models of one experiment. space: the student's label space (training targets are
    mapped into it, predictions back out of it); teacher_space: the teacher's."""

    student: nn.Module
    space: LabelSpace
    teacher: nn.Module | None = None
    teacher_space: LabelSpace | None = None


def reads_teacher_logits(cfg: ExperimentConfig) -> bool:
    """Whether the distillation method compares the teacher's class logits (SAMKD's SLD)."""
    return REGISTRY[cfg.distill.method].reads_logits(cfg.distill)


def build_pair(cfg: ExperimentConfig, names: list[str], cat_ids: list[int], teacher_checkpoint: str | None,
               *, with_teacher: bool, log=print) -> Pair:
    """Teacher (frozen, eval) and student of ``cfg`` with their weights and label spaces.

    The teacher's weights come from ``teacher_checkpoint`` (a raykd checkpoint; its stored
    categories give its label space) or else from ``teacher.weights``. A student without
    whole-detector weights of its own uses a teacher's pretrained numbering (so logits and
    ``inherit`` line up). A teacher whose head does not fit the data set is refused for
    methods that read its logits. ``names`` / ``cat_ids``: the data set's classes.
    """
    teacher = teacher_space = None
    head_fits = True
    if with_teacher:
        tcfg = cfg.teacher
        if teacher_checkpoint:
            stored = read_file(teacher_checkpoint, "teacher.checkpoint")
            teacher_space = (matched_space(stored.categories, names, cat_ids) if stored.categories else None) \
                or data_space(names, cat_ids)
            teacher = build_detector(tcfg, teacher_space.num_classes, cfg.data.image_size, cfg.data.min_size)
            load_state_into(teacher, stored.state_dict, file=teacher_checkpoint, key="teacher.checkpoint")
        else:
            teacher, teacher_space, head_fits = build_pretrained(tcfg, names, cat_ids, cfg.data.image_size,
                                                                 key="teacher", min_size=cfg.data.min_size, log=log)
        teacher.eval()
        for param in teacher.parameters():
            param.requires_grad_(False)
    adopt = teacher_space if teacher_space is not None and teacher_space.kept and cfg.student.weights is None \
        else None
    student, space, _ = build_pretrained(cfg.student, names, cat_ids, cfg.data.image_size, key="student",
                                         space=adopt, min_size=cfg.data.min_size, log=log)
    # without a checkpoint, a teacher.train block means it is fine-tuned first (ensure_teacher)
    unfit = not head_fits and cfg.teacher.train is None
    if teacher is not None and reads_teacher_logits(cfg) and (unfit or teacher_space.categories != space.categories):
        why = "its head does not fit the data set's classes" if not head_fits else \
            f"it predicts {teacher_space.num_classes} classes, the student {space.num_classes}"
        raise UserError(f"distill.method {cfg.distill.method} compares the teacher's class logits, but {why}: "
                        "add a teacher.train block to fine-tune the teacher on this data set first",
                        key="teacher.train")
    if cfg.student.inherit:
        inherit_neck_and_head(student, teacher)
    return Pair(student, space, teacher, teacher_space)


def data_fingerprint(cfg: ExperimentConfig) -> str:
    """Identity of the training data: the synthetic generator's parameters, or the bytes of
    the training annotation file (sha256; a VOC or YOLO split's converted COCO file), with the
    image size. The file's digest comes from its annotation index's stat pointer when the file
    is unchanged since it was indexed (:func:`~raykd.data.annindex.annotation_digest`), so a
    COCO-sized file is not read again."""
    data = cfg.data
    if data.synthetic is not None:
        syn = data.synthetic.model_dump(exclude={"out_dir"})
        return config_hash("synthetic", syn, *_sizes(data))
    path = Path(resolve_data(data, cfg.cache_dir).train_annotations)
    if not path.is_file():
        raise UserError("annotation file not found", file=path, key="data.train.annotations")
    return config_hash("coco", annotation_digest(path, index_dir(cfg.cache_dir)), *_sizes(data))


def _sizes(data) -> tuple:
    """The resize settings in a data fingerprint (only the image size unless min_size is set,
    so caches keyed before min_size existed stay valid)."""
    return (data.image_size,) if data.min_size is None else (data.image_size, data.min_size)
