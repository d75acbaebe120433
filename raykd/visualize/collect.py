"""One image through the training code path, with every tensor the distillation used recorded.

:func:`collect` runs :func:`~raykd.models.taps.forward_taps` (the trainer's forward) and the
:class:`~raykd.distill.Distiller` under a :class:`~raykd.distill.record.Recorder`: the masks,
attention and reconstructions in the result are the ones the losses were computed from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from raykd.distill import flat_terms
from raykd.distill.record import Recorder, record_levels
from raykd.models.taps import forward_taps, is_dense
from raykd.visualize.models import Models


@dataclass
class Detections:
    """Boxes ``[D, 4]`` xyxy in pixels of the image, ``scores [D]``, ``labels [D]``."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


@dataclass
class LevelView:
    """One FPN level of one image (batch dimension removed).

    ``student``: the aligned student feature S' ``[C_t, H, W]`` (the raw student feature when
    nothing is distilled); ``teacher``: T ``[C_t, H, W]``; ``notes``: what the level's loss
    recorded (names in :mod:`raykd.distill.record`, SAMKD's per grid as ``g2/mask_spatial``);
    ``stride``: input pixels per feature cell.
    """

    level: str
    stride: int
    student: Tensor
    teacher: Tensor
    notes: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class ImageView:
    """Everything one picture shows. ``image`` ``[3, H, W]`` in [0, 1] as the models saw it,
    ``boxes`` ``[K, 4]`` its ground truth (pixels), ``losses`` the distiller's terms (floats)."""

    image_id: int
    image: Tensor
    boxes: Tensor
    teacher_detections: Detections
    student_detections: Detections
    levels: list[LevelView]
    losses: dict[str, float]


def strides(image_height: int, feature_heights: list[int]) -> list[int]:
    """The stride of each FPN level, finest first: the power of two nearest to
    ``image_height / H`` of the finest level, doubling from level to level (coarse levels of a
    small image round their size up, so their own ratio understates the stride)."""
    finest = 2 ** round(math.log2(image_height / feature_heights[0]))
    return [finest * 2**i for i in range(len(feature_heights))]


def _detections(output: dict[str, Tensor]) -> Detections:
    return Detections(boxes=output["boxes"].float(), scores=output["scores"].float(), labels=output["labels"])


@torch.no_grad()
def collect(models: Models, image: Tensor, target: dict, seed: int) -> ImageView:
    """Run ``image [3, H, W]`` (and its ``target``: boxes, labels, image_id) through both models
    and the distiller; the distiller's random draws follow ``torch.manual_seed(seed)``."""
    student, teacher, distiller = models.student, models.teacher, models.distiller
    with_logits = distiller is not None and distiller.needs_logits and is_dense(student)
    target = {**target, "labels": models.space.model_labels(target["labels"])}
    taps = forward_taps(student, teacher, [image], [target], with_logits=with_logits)
    recorder = Recorder()
    losses: dict[str, float] = {}
    if distiller is not None:
        torch.manual_seed(seed)
        with record_levels(distiller.losses, recorder):
            terms = distiller(taps.student_feats, taps.teacher_feats, taps.student_logits, taps.teacher_logits,
                              taps.boxes, taps.image_sizes)
        losses = {name: float(value) for name, value in flat_terms(terms).items()}
    levels = list(distiller.levels) if distiller is not None else list(taps.student_feats)
    stride = dict(zip(taps.teacher_feats, strides(image.shape[-2], [f.shape[-2] for f in taps.teacher_feats.values()])))
    views = []
    for level in levels:
        feature = taps.student_feats[level]
        if distiller is not None:
            feature = distiller.align[level](feature)
        teacher_feature = taps.teacher_feats[level]
        views.append(LevelView(level=level, stride=stride[level],
                               student=feature[0], teacher=teacher_feature[0],
                               notes={name: value[0] for name, value in recorder.level(level).items()}))
    return ImageView(image_id=int(target["image_id"]), image=image, boxes=target["boxes"],
                     teacher_detections=_detections(teacher([image])[0]),
                     student_detections=_detections(student([image])[0]), levels=views, losses=losses)
