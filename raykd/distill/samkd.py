"""SAMKD: spatially hierarchical feature masking (SFD) plus region-adaptive logit
distillation (SLD) — a RECONSTRUCTION from the abstract of arXiv 2501.07101v2 (no public
code), built on DMKD's masks and reconstructions; see METHODS.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raykd.distill.cells import cell_grid
from raykd.distill.dmkd import DualReconstruction, note_masks, note_reconstruction
from raykd.distill.inputs import LevelInputs
from raykd.distill.masks import MaskSettings, attention_source, dual_masks, grid_masks
from raykd.distill.options import Branches, FusionMode, PyramidMode, SLDDiscrepancy, SLDWeighting
from raykd.distill.record import note, scope
from raykd.distill.sld import binary_kl, foreground_logits, region_discrepancy, region_weights


class SAMKDLoss(nn.Module):
    """``{"sfd": α · mean_g L_g, "sld": β · T² · Σ W · KL / (N·H·W)}`` on one level.

    SFD, for every grid g of ``scales``: ``cells`` mode masks the full-resolution map per
    g×g cell (local attention, see :func:`~raykd.distill.masks.dual_masks`); ``pooled`` mode
    max-pools S' and T by g (kernel = stride = g, partial windows kept) and masks the pooled
    map as a whole. ``L_g = Σ (F_g − T_g)² / N`` with DMKD's reconstruction and fusion —
    one per grid, or one for all grids when ``share_generators`` (in ``cells`` mode the grids'
    masked maps then go through it as one batch).

    SLD (only when both logits are given and ``sld_weight`` is not None): discrepancy
    ``D = mean_c (S' − T)²`` (``feature``) or the mean over anchors and foreground classes
    of ``(z_s − z_t)²`` (``logit``), no gradient, averaged over the cells of the finest grid;
    weights from :func:`~raykd.distill.sld.region_weights`; KL from
    :func:`~raykd.distill.sld.binary_kl` over foreground classes (class 0 is dropped).
    """

    def __init__(
        self,
        channels: int,
        alpha: float,
        masks: MaskSettings,
        branches: Branches,
        fusion: FusionMode,
        scales: Sequence[int],
        pyramid_mode: PyramidMode,
        share_generators: bool,
        sld_weight: float | None,
        num_classes: int,
        sld_weighting: SLDWeighting,
        sld_ratio: float,
        sld_tau: float,
        sld_discrepancy: SLDDiscrepancy,
        temperature: float,
    ):
        super().__init__()
        self.alpha = alpha
        self.masks = masks
        self.scales = tuple(scales)
        self.pyramid_mode = pyramid_mode
        count = 1 if share_generators else len(self.scales)
        self.reconstructions = nn.ModuleList(DualReconstruction(channels, branches, fusion) for _ in range(count))
        self.sld_weight = sld_weight
        self.num_classes = num_classes
        self.sld_weighting = sld_weighting
        self.sld_ratio = sld_ratio
        self.sld_tau = sld_tau
        self.sld_discrepancy = sld_discrepancy
        self.temperature = temperature

    def forward(self, inputs: LevelInputs) -> dict[str, Tensor]:
        losses = {"sfd": self.alpha * self._sfd(inputs.student, inputs.teacher, inputs.generator).mean()}
        if self.sld_weight is not None and inputs.student_logits is not None:
            if inputs.teacher_logits is None:
                raise ValueError("SLD needs teacher logits when student logits are given")
            losses["sld"] = self._sld(inputs)
        return losses

    def _sfd(self, student: Tensor, teacher: Tensor, generator: torch.Generator | None) -> Tensor:
        """``[G]``: L_g per grid of ``scales``."""
        if self.pyramid_mode == "pooled":
            return torch.stack([self._pooled_loss(i, g, student, teacher, generator) for i, g in enumerate(self.scales)])
        masks = self._cell_masks(student, teacher, generator)
        if len(self.reconstructions) == 1:
            return self._shared_cells_losses(student, teacher, masks)
        per_grid = []
        for g, recon, (keep_s, keep_c) in zip(self.scales, self.reconstructions, masks, strict=True):
            with scope(f"g{g}"):
                note_masks(keep_s, keep_c)
                per_grid.append(recon(student, teacher, keep_s, keep_c))
        return torch.stack(per_grid)

    def _cell_masks(
        self, student: Tensor, teacher: Tensor, generator: torch.Generator | None
    ) -> list[tuple[Tensor | None, Tensor | None]]:
        """Every grid's masks on the full map, drawn grid by grid in ``scales`` order; one |F|."""
        recon = self.reconstructions[0]
        with torch.no_grad():
            source = attention_source(student, teacher, self.masks)
        return [grid_masks(teacher, source, self.masks, g, recon.spatial is not None, recon.channel is not None,
                           generator=generator) for g in self.scales]

    def _shared_cells_losses(
        self, student: Tensor, teacher: Tensor, masks: list[tuple[Tensor | None, Tensor | None]]
    ) -> Tensor:
        """``[G]``: the shared generators run once on the G masked copies of S' stacked along dim 0."""
        recon = self.reconstructions[0]
        keeps_s, keeps_c = zip(*masks, strict=True)
        parts = recon.reconstruct(student, keeps_s, keeps_c)
        n = student.shape[0]
        for i, (g, (keep_s, keep_c)) in enumerate(zip(self.scales, masks, strict=True)):
            with scope(f"g{g}"):
                note_masks(keep_s, keep_c)
                note_reconstruction([part[i * n:(i + 1) * n] for part in parts])
        return recon.squared_errors(parts, teacher)

    def _pooled_loss(self, index: int, g: int, student: Tensor, teacher: Tensor,
                     generator: torch.Generator | None) -> Tensor:
        """L_g on S' and T max-pooled by g (kernel = stride = g, partial windows kept), one cell."""
        recon = self.reconstructions[index % len(self.reconstructions)]
        student = F.max_pool2d(student, g, g, ceil_mode=True)
        teacher = F.max_pool2d(teacher, g, g, ceil_mode=True)
        keep_s, keep_c = dual_masks(
            student, teacher, self.masks, 1, recon.spatial is not None, recon.channel is not None,
            generator=generator,
        )
        with scope(f"g{g}"):
            note_masks(keep_s, keep_c)
            note("target", teacher)
            return recon(student, teacher, keep_s, keep_c)

    def _sld(self, inputs: LevelInputs) -> Tensor:
        student, teacher = inputs.student, inputs.teacher
        z_s = foreground_logits(inputs.student_logits, self.num_classes)
        z_t = foreground_logits(inputs.teacher_logits, self.num_classes)
        n, _, h, w = student.shape
        if z_s.shape[-2:] != (h, w) or z_t.shape != z_s.shape:
            raise ValueError(
                f"logits {tuple(z_s.shape)} / {tuple(z_t.shape)} do not match the feature map {h}x{w}"
            )
        with torch.no_grad():
            if self.sld_discrepancy == "feature":
                discrepancy = (student - teacher).pow(2).mean(dim=1)
            else:
                discrepancy = (z_s - z_t).pow(2).mean(dim=(1, 2))
            grid = cell_grid(h, w, max(self.scales), student.device)
            per_cell = region_discrepancy(discrepancy, grid)
            weights = region_weights(per_cell, grid, self.sld_weighting, self.sld_tau, self.sld_ratio)
            note("region_weights", weights)
        kl = binary_kl(z_s, z_t, self.temperature)
        return self.sld_weight * self.temperature**2 * (weights * kl).sum() / (n * h * w)
