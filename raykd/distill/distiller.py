"""The `Distiller` the trainer calls, and how to build one from a `DistillConfig`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn

from raykd.distill.config import LEVEL_NAME, DistillConfig
from raykd.distill.connectors import align_conv
from raykd.distill.inputs import LevelInputs
from raykd.distill.methods import REGISTRY
from raykd.metric_names import term_key

LevelTerms = dict[str, dict[str, Tensor]]
"""A distiller's output: level -> term -> scalar loss (e.g. ``{"0": {"fgd_fg": ..., "fgd_bg": ...}}``)."""
_V = TypeVar("_V")


def flat_terms(terms: Mapping[str, Mapping[str, _V]]) -> dict[str, _V]:
    """``{level: {term: v}}`` -> ``{term_key(term, level): v}``, level-major."""
    return {term_key(term, level): value for level, level_terms in terms.items() for term, value in level_terms.items()}


def total_loss(terms: Mapping[str, Mapping[str, Tensor]]) -> Tensor:
    """The sum of every term at every level (what the trainer adds to the detector's loss)."""
    return sum(value for level_terms in terms.values() for value in level_terms.values())


class Distiller(nn.Module):
    """Owns per-level align convs and loss modules; its parameters join the student's optimiser.

    ``align[level]`` maps the student feature to the teacher's width (1×1 conv or identity);
    ``losses[level]`` takes a :class:`~raykd.distill.inputs.LevelInputs` and returns named
    scalar terms. Teacher tensors are detached here, so the teacher never gets a gradient.
    ``needs_logits``: whether any loss reads dense-head logits (the trainer may skip tapping
    them otherwise; without logits such losses drop their logit terms). ``generator``: where
    the losses draw random masks (the trainer sets a per-rank one for ``distill.draw: device``;
    None: the reference code's global CPU generator).
    """

    def __init__(
        self,
        levels: Sequence[str],
        align: Mapping[str, nn.Module],
        losses: Mapping[str, nn.Module],
        needs_logits: bool = False,
    ):
        super().__init__()
        self.needs_logits = needs_logits
        self.generator: torch.Generator | None = None
        bad = [level for level in levels if not LEVEL_NAME.match(level)]
        if bad:
            raise ValueError(f"level names must use letters, digits and '_' only, got {bad}")
        self.levels = tuple(levels)
        self.align = nn.ModuleDict({level: align[level] for level in self.levels})
        self.losses = nn.ModuleDict({level: losses[level] for level in self.levels})

    def forward(
        self,
        student_feats: dict[str, Tensor],
        teacher_feats: dict[str, Tensor],
        student_logits: dict[str, Tensor] | None,
        teacher_logits: dict[str, Tensor] | None,
        boxes: list[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> LevelTerms:
        """Loss terms by level, ``{level: {term: scalar}}`` (:func:`total_loss` sums them).

        Features ``[N, C, H, W]`` per FPN level (student C_s, teacher C_t; same H, W);
        logits ``[N, A·K, H, W]`` per level or None; ``boxes`` per image ``[K_i, 4]`` xyxy in
        pixels of the batch tensor; ``image_sizes`` per image its resized, unpadded ``(h_i, w_i)``.
        """
        if len(image_sizes) != len(boxes) or any(len(size) != 2 for size in image_sizes):
            raise ValueError(f"expected one (h, w) per image for {len(boxes)} images, got {image_sizes!r}")
        out: LevelTerms = {}
        for level in self.levels:
            student = self.align[level](student_feats[level])
            teacher = teacher_feats[level].detach()
            if student.shape != teacher.shape:
                raise ValueError(
                    f"level {level!r}: aligned student {tuple(student.shape)} != teacher {tuple(teacher.shape)}"
                )
            inputs = LevelInputs(
                student=student,
                teacher=teacher,
                student_logits=student_logits[level] if student_logits is not None else None,
                teacher_logits=teacher_logits[level].detach() if teacher_logits is not None else None,
                boxes=boxes,
                image_sizes=image_sizes,
                generator=self.generator,
            )
            out[level] = dict(self.losses[level](inputs))
        return out


def selected_levels(cfg: DistillConfig, levels: Sequence[str]) -> list[str]:
    """``cfg.levels`` (in that order) if set, else every level of ``levels``; unknown names raise."""
    if cfg.levels is None:
        return list(levels)
    unknown = [level for level in cfg.levels if level not in levels]
    if unknown:
        raise ValueError(f"distill.levels {unknown} are not among the model's levels {list(levels)}")
    return list(cfg.levels)


def term_names(cfg: DistillConfig, levels: Sequence[str], dense_head: bool = True) -> list[str]:
    """Every key the distiller returns, level-major: e.g. ``["fgd_fg_0", "fgd_bg_0", ...]``.

    The method's logit terms (SAMKD's ``sld``) are left out when it does not read logits
    (``distill.sld: false``) or the student has no dense head (``dense_head=False``).
    """
    method = REGISTRY[cfg.method]
    with_logits = dense_head and method.reads_logits(cfg)
    terms = [t for t in method.terms if with_logits or t not in method.logit_terms]
    return [term_key(term, level) for level in selected_levels(cfg, levels) for term in terms]


def build_distiller(
    cfg: DistillConfig, student_channels: int, teacher_channels: int, levels: Sequence[str], num_classes: int
) -> Distiller | None:
    """A :class:`Distiller` for ``cfg.method`` (its registry entry, raykd/distill/methods.py) on
    ``cfg.levels`` (or all ``levels``); None for ``"none"``.

    ``student_channels`` / ``teacher_channels``: FPN widths C_s, C_t; ``num_classes``: K of
    the dense head including the background class 0 (used by SAMKD's SLD).
    """
    method = REGISTRY[cfg.method]
    if method.build is None:
        return None
    chosen = selected_levels(cfg, levels)
    return Distiller(
        chosen,
        align={level: align_conv(student_channels, teacher_channels) for level in chosen},
        losses={level: method.build(cfg, teacher_channels, num_classes) for level in chosen},
        needs_logits=method.reads_logits(cfg),
    )
