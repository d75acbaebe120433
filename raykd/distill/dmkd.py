"""DMKD, dual masked knowledge distillation — a RECONSTRUCTION from the abstract of
arXiv 2309.02719 (no public code), built on the exact MGD/FGD pieces; see METHODS.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from raykd.distill.connectors import Fusion, GenerationBlock
from raykd.distill.inputs import LevelInputs
from raykd.distill.masks import MaskSettings, dual_masks
from raykd.distill.options import Branches, FusionMode
from raykd.distill.record import note


def note_masks(keep_spatial: Tensor | None, keep_channel: Tensor | None) -> None:
    """Record the keep-masks of the enabled branches (see :mod:`raykd.distill.record`)."""
    for name, keep in (("mask_spatial", keep_spatial), ("mask_channel", keep_channel)):
        if keep is not None:
            note(name, keep)


def note_reconstruction(parts: Sequence[Tensor]) -> None:
    """Record the fused reconstruction, or the two branches' when not fused (``sum_losses``)."""
    if len(parts) == 1:
        note("reconstruction", parts[0])
    else:
        note("reconstruction_spatial", parts[0])
        note("reconstruction_channel", parts[1])


def _batch(tensors: list[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


class DualReconstruction(nn.Module):
    """Generation blocks of the enabled branches and their fusion (``channels`` = C_t).

    ``forward`` returns the un-weighted ``Σ (F − T)² / N`` where
    ``F = fuse(G_s(S' ⊙ M_s), G_c(S' ⊙ M_c))``; with one branch ``F`` is that branch's
    reconstruction; with ``fusion = "sum_losses"`` it is the sum of the two branches' losses.
    """

    def __init__(self, channels: int, branches: Branches, fusion: FusionMode):
        super().__init__()
        self.spatial = GenerationBlock(channels) if branches in ("spatial", "dual") else None
        self.channel = GenerationBlock(channels) if branches in ("channel", "dual") else None
        self.fuse = Fusion(fusion, channels) if branches == "dual" and fusion != "sum_losses" else None

    def forward(
        self, student: Tensor, teacher: Tensor, keep_spatial: Tensor | None, keep_channel: Tensor | None
    ) -> Tensor:
        parts = self.reconstruct(student, [keep_spatial], [keep_channel])
        note_reconstruction(parts)
        return self.squared_errors(parts, teacher)[0]

    def reconstruct(
        self, student: Tensor, keeps_spatial: Sequence[Tensor | None], keeps_channel: Sequence[Tensor | None]
    ) -> list[Tensor]:
        """The reconstructions of S' ``[N, C, H, W]`` under G mask pairs, G·N images in one call
        per generation block: ``[F]`` (one branch, or fused) or ``[F_s, F_c]``, each ``[G·N, C, H, W]``
        with the pairs in order along dim 0. Masks broadcast against S' (``[N, 1, H, W]``,
        ``[N, C, 1, 1]``, ``[N, C, H, W]``)."""
        parts = []
        if self.spatial is not None:
            parts.append(self.spatial(_batch([student * keep for keep in keeps_spatial])))
        if self.channel is not None:
            parts.append(self.channel(_batch([student * keep for keep in keeps_channel])))
        if self.fuse is not None:
            parts = [self.fuse(parts[0], parts[1])]
        return parts

    @staticmethod
    def squared_errors(parts: Sequence[Tensor], teacher: Tensor) -> Tensor:
        """``[G]``: per mask pair, ``Σ (F − T)² / N`` summed over ``parts`` (``[G·N, C, H, W]`` each)
        against T ``[N, C, H, W]``."""
        n = teacher.shape[0]
        per_part = [(part.unflatten(0, (-1, n)) - teacher).pow(2).sum(dim=(1, 2, 3, 4)) / n for part in parts]
        return torch.stack(per_part).sum(dim=0)


class DMKDLoss(nn.Module):
    """``L = α · Σ (fuse(G_s(S' ⊙ M_s), G_c(S' ⊙ M_c)) − T)² / N`` on one level.

    Masks from :func:`~raykd.distill.masks.dual_masks` on the whole map (one cell).
    """

    def __init__(self, channels: int, alpha: float, masks: MaskSettings, branches: Branches, fusion: FusionMode):
        super().__init__()
        self.alpha = alpha
        self.masks = masks
        self.reconstruction = DualReconstruction(channels, branches, fusion)

    def forward(self, inputs: LevelInputs) -> dict[str, Tensor]:
        recon = self.reconstruction
        keep_s, keep_c = dual_masks(
            inputs.student, inputs.teacher, self.masks, 1, recon.spatial is not None, recon.channel is not None,
            generator=inputs.generator,
        )
        note_masks(keep_s, keep_c)
        return {"dmkd": self.alpha * recon(inputs.student, inputs.teacher, keep_s, keep_c)}
