"""DFMSD, dual feature masking stage-wise distillation — a RECONSTRUCTION from the abstract of
arXiv 2407.13147 (no public code), built on DMKD's dual masking; see METHODS.md.

The abstract names three parts; each is a switch here (defaults first):

- semantic alignment at each FPN level "for consistent feature distributions":
  ``dfmsd_alignment: standardize | none`` — S' and T standardised per channel over (N, H, W)
  (PKD's normalisation) before masking and reconstruction;
- masking enhancement that strengthens object-aware regions: ``dfmsd_enhancement: boxes |
  none`` — the spatial attention is multiplied by ``1 + κ·1[cell inside a ground-truth box]``
  (κ = ``dfmsd_boost``, FGD's box-to-cell rule) before the top-k, so object cells are masked
  (and must be reconstructed) first;
- stage-wise adaptation for heterogeneous pairs: ``dfmsd_adaptation: adapter | none`` — a
  residual 3×3 conv adapter per level ``S'' = S' + conv(S')``, zero-initialised (identity at
  the start), that learns to move the student's features toward the teacher's; levels are
  paired by stride by the distiller.

With all three off DFMSD is DMKD with the same switches (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raykd.distill.dmkd import DualReconstruction
from raykd.distill.fgd import box_masks
from raykd.distill.inputs import LevelInputs
from raykd.distill.masks import MaskSettings, dual_masks
from raykd.distill.options import Branches, DFMSDAdaptation, DFMSDAlignment, DFMSDEnhancement, FusionMode
from raykd.distill.pkd import standardise


class DFMSDLoss(nn.Module):
    """``L = α · Σ (fuse(G_s(A ⊙ M_s), G_c(A ⊙ M_c)) − T̂)² / N`` on one level (``channels`` = C_t).

    ``A = adapt(align(S'))`` and ``T̂ = align(T)`` with ``align`` the semantic alignment and
    ``adapt`` the stage adapter; masks from :func:`~raykd.distill.masks.dual_masks` (one cell)
    with the box-enhanced spatial attention.
    """

    def __init__(
        self,
        channels: int,
        alpha: float,
        masks: MaskSettings,
        branches: Branches,
        fusion: FusionMode,
        alignment: DFMSDAlignment,
        enhancement: DFMSDEnhancement,
        boost: float,
        adaptation: DFMSDAdaptation,
    ):
        super().__init__()
        self.alpha, self.masks = alpha, masks
        self.alignment, self.enhancement, self.boost = alignment, enhancement, boost
        self.adapter = nn.Conv2d(channels, channels, kernel_size=3, padding=1) if adaptation == "adapter" else None
        if self.adapter is not None:
            nn.init.zeros_(self.adapter.weight)
            nn.init.zeros_(self.adapter.bias)
        self.reconstruction = DualReconstruction(channels, branches, fusion)

    def forward(self, inputs: LevelInputs) -> dict[str, Tensor]:
        student, teacher = inputs.student, inputs.teacher
        if self.alignment == "standardize":
            student, teacher = standardise(student), standardise(teacher)
        if self.adapter is not None:
            student = student + self.adapter(student)
        boost = None
        if self.enhancement == "boxes":
            with torch.no_grad():
                fg, _ = box_masks(inputs.boxes, inputs.image_sizes, teacher)
                boost = 1.0 + self.boost * (fg > 0).to(teacher.dtype)
        recon = self.reconstruction
        keep_s, keep_c = dual_masks(
            student, teacher, self.masks, 1, recon.spatial is not None, recon.channel is not None, boost,
            generator=inputs.generator,
        )
        return {"dfmsd": self.alpha * recon(student, teacher, keep_s, keep_c)}
