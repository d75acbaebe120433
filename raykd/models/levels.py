"""FPN levels by stride: which teacher level a student level is distilled from.

Level keys differ between head families (one-stage P3-P7: ``'0','1','2','p6','p7'``;
two-stage on a ResNet P2-P6: ``'0'..'3','pool'``), so levels are paired by stride, not by key:
Faster R-CNN's P2-P6 with RetinaNet/FCOS's P3-P7 share P3-P6 (strides 8, 16, 32, 64).
"""

from __future__ import annotations

from raykd.config import ModelConfig
from raykd.errors import UserError
from raykd.models.builders import TWO_STAGE


def level_strides(cfg: ModelConfig) -> dict[str, int]:
    """The FPN levels a detector of ``cfg`` taps, key -> stride in input pixels, in FPN order."""
    if cfg.arch in TWO_STAGE:
        keys = ["0", "1", "2", "3", "pool"] if cfg.backbone != "mobilenet_v3_large" else ["0", "1", "2", "pool"]
        first = 4 if cfg.backbone != "mobilenet_v3_large" else 8
    else:
        keys, first = ["0", "1", "2", "p6", "p7"], 8
    return {key: first * 2**i for i, key in enumerate(keys)}


def paired_levels(student: ModelConfig, teacher: ModelConfig) -> dict[str, str]:
    """Student level key -> the teacher's level key at the same stride, for every shared stride."""
    by_stride = {stride: key for key, stride in level_strides(teacher).items()}
    return {key: by_stride[stride] for key, stride in level_strides(student).items() if stride in by_stride}


def distilled_levels(chosen: list[str] | None, student: ModelConfig, teacher: ModelConfig) -> dict[str, str]:
    """The pairs ``distill.levels`` selects (student keys; None: every shared level); a key
    that is not a level both models tap is a :class:`UserError` naming what is available."""
    pairs = paired_levels(student, teacher)
    if not pairs:
        raise UserError(f"the student ({student.arch}) and teacher ({teacher.arch}) share no FPN stride",
                        key="distill.levels")
    if chosen is None:
        return pairs
    unknown = [level for level in chosen if level not in pairs]
    if unknown:
        strides = level_strides(student)
        offer = ", ".join(f"'{key}' (stride {strides[key]})" for key in pairs)
        raise UserError(f"{unknown} are not levels both the student ({student.arch}) and the teacher "
                        f"({teacher.arch}) tap; expected some of {offer}", key="distill.levels")
    return {level: pairs[level] for level in chosen}
