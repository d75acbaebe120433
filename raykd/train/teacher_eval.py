"""The validation scores of a pretrained teacher used as it is (``teacher.weights``, no
``teacher.train``), evaluated once and cached.

A teacher the search trains has its scores in its checkpoint (``teacher.json``); one used as
it is has none, yet a distilled student whose teacher scores below the baseline student learns
from a weaker model, which the verdict flags. When the weights' head fits the data set (its
categories name every class), the teacher is scored on the validation set like a student and
the scores are cached under ``cache_dir/teachers/pretrained-<hash>/metrics.json`` (the hash of
the teacher's model settings and the data's identity); a head that does not fit has no score
on this data set (None).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from raykd.config import ExperimentConfig, ModelConfig, config_hash

METRICS_FILE = "metrics.json"


def pretrained_cache_path(cfg: ExperimentConfig) -> Path:
    """Where the scores of ``cfg``'s pretrained teacher on ``cfg``'s validation data are cached."""
    from raykd.train.setup import data_fingerprint

    model = cfg.teacher.model_dump(include=set(ModelConfig.model_fields))
    key = config_hash(model, data_fingerprint(cfg), cfg.data.val.model_dump(), cfg.data.val_max_images)
    return Path(cfg.cache_dir) / "teachers" / f"pretrained-{key}" / METRICS_FILE


def pretrained_teacher_metrics(cfg: ExperimentConfig, *, log: Callable[[str], None] = print) -> dict | None:
    """COCO metrics of ``cfg.teacher`` as its ``weights`` are, on the validation set (cached);
    None when its head does not fit the data set's classes."""
    path = pretrained_cache_path(cfg)
    if path.is_file():
        cached = json.loads(path.read_text())
        return cached or None
    from raykd.data import build_loader
    from raykd.models.builders import build_pretrained
    from raykd.train.loop import evaluate_model
    from raykd.train.setup import build_datasets

    _, val_ds = build_datasets(cfg.data, cfg.cache_dir)
    teacher, space, head_fits = build_pretrained(cfg.teacher, val_ds.class_names, val_ds.cat_ids,
                                                 cfg.data.image_size, key="teacher", min_size=cfg.data.min_size,
                                                 log=log)
    metrics: dict = {}
    if head_fits:
        count = min(len(val_ds), cfg.data.val_max_images or len(val_ds))
        subset = torch.utils.data.Subset(val_ds, range(count))
        loader = build_loader(subset, batch_size=cfg.train.batch_size, shuffle=False,
                              num_workers=cfg.data.num_workers or 0, seed=0)
        teacher.eval()
        metrics = evaluate_model(teacher, loader, val_ds, val_ds.image_ids[:count], torch.device("cpu"), None,
                                 label_to_cat_id=space.label_to_cat_id, evaluator=cfg.train.evaluator)
        log(f"teacher: {cfg.teacher.weights} scores bbox_mAP {metrics.get('bbox_mAP', float('nan')):.4f} on the "
            f"validation set (cached in {path.parent})")
    else:
        log(f"teacher: {cfg.teacher.weights}: its head does not fit the data set's classes; no validation score")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(metrics))
    os.replace(tmp, path)
    return metrics or None
