"""FGD, focal and global distillation (exact, after the reference code of yzd-v/FGD)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from raykd.distill.attention import channel_attention, spatial_attention
from raykd.distill.connectors import ContextBlock
from raykd.distill.inputs import LevelInputs
from raykd.distill.record import note


def box_masks(
    boxes: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]], feat: Tensor
) -> tuple[Tensor, Tensor]:
    """Foreground and background masks of one level, both ``[N, 1, H, W]``.

    As the reference code (yzd-v/FGD ``fgd.py``): image i's boxes ``[K_i, 4]`` (xyxy, pixels)
    are scaled by that image's resized, unpadded size ``image_sizes[i] = (h_i, w_i)`` to the
    level's whole (padded) grid (``x · W / w_i``, ``y · H / h_i``) and cover the cells
    ``floor(x1)..ceil(x2)`` and ``floor(y1)..ceil(y2)``, both ends included; every covered
    cell takes ``max(current, 1 / box area in cells)``, that inclusive area computed as
    ``1.0 / h / w`` in the default dtype (float32) like the reference. Background:
    ``1[fg = 0]`` divided by its count per image.
    """
    n, _, h, w = feat.shape
    fg = feat.new_zeros(n, h, w)
    rows = torch.arange(h, device=feat.device)
    cols = torch.arange(w, device=feat.device)
    for i, (image_boxes, (img_h, img_w)) in enumerate(zip(boxes, image_sizes, strict=True)):
        if image_boxes.numel() == 0:
            continue
        b = image_boxes.to(feat.device)
        x1 = torch.floor(b[:, 0] / img_w * w).long()
        x2 = torch.ceil(b[:, 2] / img_w * w).long()
        y1 = torch.floor(b[:, 1] / img_h * h).long()
        y2 = torch.ceil(b[:, 3] / img_h * h).long()
        area = (1.0 / (y2 + 1 - y1) / (x2 + 1 - x1)).to(feat.dtype)
        in_rows = (rows[None, :] >= y1[:, None]) & (rows[None, :] <= y2[:, None])  # [K, H]
        in_cols = (cols[None, :] >= x1[:, None]) & (cols[None, :] <= x2[:, None])  # [K, W]
        inside = in_rows[:, :, None] & in_cols[:, None, :]
        fg[i] = torch.where(inside, area[:, None, None], fg.new_zeros(())).amax(dim=0)
    bg = (fg == 0).to(feat.dtype)
    bg = bg / bg.sum(dim=(1, 2), keepdim=True).clamp(min=1.0)
    return fg.unsqueeze(1), bg.unsqueeze(1)


class FGDLoss(nn.Module):
    """``α L_fg + β L_bg + γ L_at + λ L_gl`` on one level, each term returned separately.

    ``L_fg = Σ M_fg A_s^t A_c^t (T − S')² / N``, ``L_bg`` likewise with M_bg,
    ``L_at = Σ|A_c^s − A_c^t| / N + Σ|A_s^s − A_s^t| / N`` (attention at temperature τ),
    ``L_gl = Σ (GC_s(S') − GC_t(T))² / N`` with one GcBlock per input (``channels`` = C_t).
    """

    def __init__(self, channels: int, alpha: float, beta: float, gamma: float, lambda_gl: float, tau: float):
        super().__init__()
        self.alpha, self.beta, self.gamma, self.lambda_gl, self.tau = alpha, beta, gamma, lambda_gl, tau
        self.context_student = ContextBlock(channels)
        self.context_teacher = ContextBlock(channels)

    def forward(self, inputs: LevelInputs) -> dict[str, Tensor]:
        student, teacher = inputs.student, inputs.teacher
        n = student.shape[0]
        spatial_t, channel_t = spatial_attention(teacher, self.tau), channel_attention(teacher, self.tau)
        spatial_s, channel_s = spatial_attention(student, self.tau), channel_attention(student, self.tau)
        fg, bg = box_masks(inputs.boxes, inputs.image_sizes, teacher)
        for name, value in (("mask_fg", fg), ("mask_bg", bg), ("attention_spatial", spatial_t),
                            ("attention_channel", channel_t)):
            note(name, value)
        # Σ_c first: the masks and A_s^t are [N, 1, H, W], so the full-size product is formed once
        weighted = spatial_t * (channel_t * (teacher - student).pow(2)).sum(dim=1, keepdim=True)
        attention = (channel_s - channel_t).abs().sum() / n + (spatial_s - spatial_t).abs().sum() / n
        relation = (self.context_student(student) - self.context_teacher(teacher)).pow(2).sum() / n
        return {
            "fgd_fg": self.alpha * (fg * weighted).sum() / n,
            "fgd_bg": self.beta * (bg * weighted).sum() / n,
            "fgd_at": self.gamma * attention,
            "fgd_gl": self.lambda_gl * relation,
        }
