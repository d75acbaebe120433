"""FreeKD, distillation via semantic frequency prompts (exact, after the reference code of
Gumpest/FreeKD ``mmrazor/models/losses/freekd.py`` and its detection configs, commit e0874f5).

The mask tokens ("frequency prompts") are frozen during distillation, as in the reference
configs (``distiller.losses``: ``lr_mult=0``); they are a buffer here, so the student's
optimiser never sees them. The reference first trains them on the teacher (its released
``*_prompt.pth``); raykd has no prompt stage yet, so they keep the reference's initialisation
``N(0, 0.01²)`` unless :meth:`FreeKDLoss.load_tokens` sets them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raykd.distill.inputs import LevelInputs
from raykd.distill.wavelets import haar_dwt

DWT_LEVELS = 3


class FreeKDLoss(nn.Module):
    """FreeKD's frequency loss and its companion FPN MSE on one level (``channels`` = C_t).

    With the 3-level Haar DWT ``D`` (zero mode) of S' and T, for each high-frequency level j
    (bands ``D_j [N, C, 3, H_j, W_j]``): prompt masks ``M_j = σ(P_j · Σ_o D_j(T)_o) [N, T, H_j, W_j]``
    from the mask tokens ``P_j [T, C]`` (``mask_token[j]``; ``mask_token[0]``, the low band's,
    is unused by the loss, as in the reference);
    ``L_freq = Σ_j mean_{n,t,c,o,h,w} |M_j ⊙ D_j(S') − M_j ⊙ D_j(T)|`` and ``L_mse = mean((S' − T)²)``.
    Since ``M_j > 0`` the mean is computed as ``Σ M_j · Σ_{c,o}|D_j(S') − D_j(T)| / (N·T·C·3·H_j·W_j)``,
    without the ``[N, T, C, 3, H_j, W_j]`` tensor. Terms: ``freekd = α L_freq``, ``freekd_mse = β L_mse``.
    """

    def __init__(self, channels: int, num_tokens: int, alpha: float, beta: float):
        super().__init__()
        self.alpha, self.beta = alpha, beta
        # the reference's draw: randn, then overwritten in place by normal_(0, 0.01)
        self.register_buffer("mask_token", torch.randn(DWT_LEVELS + 1, num_tokens, channels).normal_(0, 0.01))

    def load_tokens(self, tokens: Tensor) -> None:
        """Set the frozen prompts ``[4, T, C]`` (e.g. the reference's ``mask_modules.i.mask_token``)."""
        if tokens.shape != self.mask_token.shape:
            raise ValueError(f"expected mask tokens of shape {tuple(self.mask_token.shape)}, got {tuple(tokens.shape)}")
        self.mask_token.copy_(tokens)

    def prompt_masks(self, teacher_highs: Tensor, level: int) -> Tensor:
        """``[N, C, 3, H, W]`` teacher bands of DWT level ``level`` (1..3) -> masks ``[N, T, H, W]``."""
        n, c, _, h, w = teacher_highs.shape
        band_sum = teacher_highs.sum(dim=2).reshape(n, c, h * w)
        return torch.sigmoid(self.mask_token[level] @ band_sum).reshape(n, -1, h, w)

    def forward(self, inputs: LevelInputs) -> dict[str, Tensor]:
        student, teacher = inputs.student, inputs.teacher
        _, highs_s = haar_dwt(student, DWT_LEVELS)
        _, highs_t = haar_dwt(teacher, DWT_LEVELS)
        freq = student.new_zeros(())
        for level, (hs, ht) in enumerate(zip(highs_s, highs_t), start=1):
            masks = self.prompt_masks(ht, level)
            distance = (hs - ht).abs().sum(dim=(1, 2))  # [N, H_j, W_j]
            freq = freq + (masks * distance[:, None]).sum() / (masks.numel() * hs.shape[1] * hs.shape[2])
        mse = (student - teacher).pow(2).mean()
        return {"freekd": self.alpha * freq, "freekd_mse": self.beta * mse}
