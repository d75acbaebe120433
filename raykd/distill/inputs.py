"""What every per-level loss module receives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LevelInputs:
    """One FPN level of one batch.

    ``student``: aligned student feature S' ``[N, C_t, H, W]``; ``teacher``: T, same shape,
    detached. ``student_logits`` / ``teacher_logits``: dense-head classification logits
    ``[N, A·K, H, W]`` or None (two-stage students). ``boxes``: per image ground truth
    ``[K_i, 4]`` xyxy in pixels of the batch tensor; ``image_sizes``: per image its resized,
    unpadded size ``(h_i, w_i)`` in pixels (torchvision's ``ImageList.image_sizes``).
    ``generator``: where random masks are drawn (a per-rank generator on the features' device;
    None: the reference code's global CPU generator, :mod:`raykd.distill.masks`).
    """

    student: Tensor
    teacher: Tensor
    student_logits: Tensor | None
    teacher_logits: Tensor | None
    boxes: Sequence[Tensor]
    image_sizes: Sequence[tuple[int, int]]
    generator: torch.Generator | None = None
