"""AMD, adaptive masked distillation — a RECONSTRUCTION from the abstract of arXiv 2301.13538
(DMKD's predecessor; no public code), built from the existing blocks; see METHODS.md.

The abstract names two parts: attention-guided spatial masking of the student feature (instead
of MGD's random mask), and a "simple and efficient" module that makes the student's channels
adaptive. Here: DMKD's spatial branch (teacher-attention top-k mask, one generation block) with
a squeeze-and-excitation :class:`~raykd.distill.connectors.ChannelAdapter` on S' before masking.
"""

from __future__ import annotations

from torch import Tensor, nn

from raykd.distill.connectors import ChannelAdapter
from raykd.distill.dmkd import DualReconstruction, note_masks
from raykd.distill.inputs import LevelInputs
from raykd.distill.masks import MaskSettings, dual_masks


class AMDLoss(nn.Module):
    """``L = α · Σ (G(SE(S') ⊙ M_s) − T)² / N`` on one level (``channels`` = C_t).

    ``M_s``: the spatial keep-mask of :func:`~raykd.distill.masks.dual_masks` (one cell, the
    DMKD switches ``mask_rule``/``polarity``/``attention_source``/``tau``/``mask_ratio`` apply).
    ``channel_adapter=False`` drops SE, which makes AMD exactly DMKD with ``branches: spatial``.
    """

    def __init__(self, channels: int, alpha: float, masks: MaskSettings, channel_adapter: bool):
        super().__init__()
        self.alpha = alpha
        self.masks = masks
        self.adapter = ChannelAdapter(channels) if channel_adapter else None
        self.reconstruction = DualReconstruction(channels, "spatial", "learned")

    def forward(self, inputs: LevelInputs) -> dict[str, Tensor]:
        student = inputs.student if self.adapter is None else self.adapter(inputs.student)
        keep_s, _ = dual_masks(student, inputs.teacher, self.masks, 1, True, False, generator=inputs.generator)
        note_masks(keep_s, None)
        return {"amd": self.alpha * self.reconstruction(student, inputs.teacher, keep_s, None)}
