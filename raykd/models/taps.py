"""Taps: one forward pass that returns the student's losses and both models' FPN features.

The batch is transformed once, by the student's transform; the teacher (eval mode, no
gradient) runs its backbone (and dense head) on exactly that batch tensor. This avoids the
pitfalls of calling ``teacher(images)``: a second resize, double normalisation, and a
train-mode random ``min_size`` that differs between the two models.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet


@dataclass
class TapOutput:
    """What the distiller needs from one training step.

    losses: the student's detector losses (scalars), as torchvision names them.
    student_feats / teacher_feats: ``{level: [N, C, H, W]}`` in FPN order, keyed by the
        student's level keys (Faster R-CNN's ``'pool'`` is its P6). Teacher tensors carry no gradient.
    student_logits / teacher_logits: ``{level: [N, A*K, H, W]}`` classification logits of
        dense heads (A anchors per location, K classes incl. background channel 0); None for
        Faster R-CNN or when not requested.
    boxes: ground-truth boxes per image, ``[K_i, 4]`` xyxy, pixels of the batch tensor.
    image_sizes: per image (h_i, w_i), px: its resized size before padding (ImageList.image_sizes).
    """

    losses: dict[str, Tensor]
    student_feats: dict[str, Tensor]
    teacher_feats: dict[str, Tensor] | None
    student_logits: dict[str, Tensor] | None
    teacher_logits: dict[str, Tensor] | None
    boxes: list[Tensor]
    image_sizes: list[tuple[int, int]]


def is_dense(model: nn.Module) -> bool:
    return isinstance(model, (FCOS, RetinaNet))


def split_levels(flat: Tensor, feats: list[Tensor]) -> list[Tensor]:
    """``[N, sum(H*W*A), K]`` head output -> per level ``[N, A*K, H, W]``.

    torchvision concatenates levels in FPN order, each laid out (H, W, A) row-major.
    """
    n, total, k = flat.shape
    hw = [f.shape[-2] * f.shape[-1] for f in feats]
    anchors = total // sum(hw)
    out = []
    for chunk, f in zip(flat.split([x * anchors for x in hw], dim=1), feats):
        h, w = f.shape[-2:]
        out.append(chunk.reshape(n, h, w, anchors * k).permute(0, 3, 1, 2))
    return out


def _pick(levels: dict[str, Tensor], pairs: Mapping[str, str] | None) -> dict[str, Tensor]:
    """``{student key: levels[teacher key]}`` for ``pairs`` (None: every level, as named)."""
    return dict(levels) if pairs is None else {s: levels[t] for s, t in pairs.items()}


def _student_losses(model: nn.Module, images, targets, features: OrderedDict[str, Tensor]):
    """Detector losses from already computed features; returns (losses, head outputs or None)."""
    feats = list(features.values())
    if isinstance(model, FasterRCNN):
        proposals, rpn_losses = model.rpn(images, features, targets)
        _, roi_losses = model.roi_heads(features, proposals, images.image_sizes, targets)
        return {**rpn_losses, **roi_losses}, None
    head = model.head(feats)
    anchors = model.anchor_generator(images, feats)
    if isinstance(model, FCOS):
        per_level = [f.size(2) * f.size(3) for f in feats]
        return model.compute_loss(targets, head, anchors, per_level), head
    return model.compute_loss(targets, head, anchors), head


def forward_taps(
    student: nn.Module,
    teacher: nn.Module | None,
    images: list[Tensor],
    targets: list[dict[str, Tensor]],
    *,
    with_logits: bool = False,
    pairs: Mapping[str, str] | None = None,
) -> TapOutput:
    """Run the student (training) and the teacher (eval, no grad) on one transformed batch.

    images: list of ``[3, H_i, W_i]`` floats in [0, 1]; targets: dicts with ``boxes`` (xyxy
    px) and ``labels``. The student's losses equal ``student(images, targets)``.
    pairs: student level key -> teacher level key at the same stride
    (:func:`~raykd.models.levels.paired_levels`); features and logits come back keyed by the
    student's keys for these levels only. None: every level, the same keys on both sides.
    """
    batch, tgts = student.transform(images, targets)
    s_features = student.backbone(batch.tensors)
    losses, s_head = _student_losses(student, batch, tgts, s_features)
    s_logits = t_feats = t_logits = None
    if with_logits and s_head is not None:
        s_logits = _pick(dict(zip(s_features, split_levels(s_head["cls_logits"], list(s_features.values())))),
                         None if pairs is None else {s: s for s in pairs})
    s_feats = _pick(s_features, None if pairs is None else {s: s for s in pairs})
    if teacher is not None:
        if teacher.training:
            teacher.eval()
        with torch.no_grad():
            t_features = teacher.backbone(batch.tensors)
            t_feats = _pick(t_features, pairs)
            if with_logits and is_dense(teacher) and s_head is not None:
                t_head = teacher.head(list(t_features.values()))
                t_logits = _pick(dict(zip(t_features, split_levels(t_head["cls_logits"], list(t_features.values())))),
                                 pairs)
    return TapOutput(
        losses=losses,
        student_feats=s_feats,
        teacher_feats=t_feats,
        student_logits=s_logits,
        teacher_logits=t_logits,
        boxes=[t["boxes"] for t in tgts],
        image_sizes=[(int(h), int(w)) for h, w in batch.image_sizes],
    )
