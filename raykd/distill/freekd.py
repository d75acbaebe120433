"""FreeKD, distillation via semantic frequency prompts (exact, after the reference code of
Gumpest/FreeKD ``mmrazor/models/losses/freekd.py`` and its detection configs, commit e0874f5).

The mask tokens ("frequency prompts") are frozen during distillation, as in the reference
configs (``distiller.losses``: ``lr_mult=0``); they are a buffer here, so the student's
optimiser never sees them. The reference first trains them on the teacher (its released
``*_prompt.pth``); raykd's prompt stage (:func:`train_prompt_tokens`, a reconstruction around
the exact :func:`prompt_reconstruction`; cached by ``raykd/train/preparation.py``) runs when
``distill.freekd_prompt_steps > 0``; otherwise they keep the reference's initialisation ``N(0, 0.01²)``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from raykd.distill.inputs import LevelInputs
from raykd.distill.wavelets import haar_dwt, haar_idwt

DWT_LEVELS = 3
PROMPT_SEED = 0
"""The prompt stage's seed (token draw and batch order): every trial and seed shares one cache entry."""


def initial_tokens(channels: int, num_tokens: int) -> Tensor:
    """The reference's draw of the mask tokens ``[4, T, C]``: randn, then overwritten in place
    by ``normal_(0, 0.01)`` (``MaskModule.__init__``)."""
    return torch.randn(DWT_LEVELS + 1, num_tokens, channels).normal_(0, 0.01)


def token_masks(feature: Tensor, tokens: Tensor) -> Tensor:
    """``σ(P · x)``: ``feature [N, C, H, W]``, ``tokens [T, C]`` -> masks ``[N, T, H, W]``."""
    n, c, h, w = feature.shape
    return torch.sigmoid(tokens @ feature.reshape(n, c, h * w)).reshape(n, -1, h, w)


def dice_coefficient(masks: Tensor) -> Tensor:
    """The reference's ``dice_coeff``: mean Dice between different masks of the same image,
    ``[N, T, P]`` -> scalar (low when the T masks cover different positions)."""
    pred, target = masks[:, None], masks[:, :, None]
    t = masks.shape[1]
    off_diagonal = masks.new_ones(masks.shape[0], t, t)
    off_diagonal[:, torch.arange(t), torch.arange(t)] = 0
    overlap = (pred * target).sum(-1)
    dice = 2 * overlap / ((pred * pred).sum(-1) + 1e-12 + (target * target).sum(-1) + 1e-12)
    return (dice * off_diagonal).sum() / off_diagonal.sum()


def prompt_reconstruction(feature: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """The prompt stage's forward (the reference's ``MaskModule.forward_train``).

    ``feature [N, C, H, W]``, ``tokens [4, T, C]`` -> the feature rebuilt from its token-masked
    DWT bands, ``[N, C, 2·H_1, 2·W_1]`` (crop to H, W for odd sizes), and the Dice diversity loss
    summed over the four bands. Each band is multiplied by the sum of its T masks (the same as the
    reference's per-token product summed over tokens).
    """
    low, highs = haar_dwt(feature, DWT_LEVELS)
    mask_low = token_masks(low, tokens[0])
    out_low = low * mask_low.sum(dim=1, keepdim=True)
    out_highs, high_masks = [], []
    for level, high in enumerate(highs, start=1):
        masks = token_masks(high.sum(dim=2), tokens[level])
        out_highs.append(high * masks.sum(dim=1)[:, None, None])
        high_masks.append(masks)
    dice = dice_coefficient(mask_low.flatten(2))
    for masks in reversed(high_masks):  # the reference's order: low, then levels 3, 2, 1
        dice = dice + dice_coefficient(masks.flatten(2))
    return haar_idwt(out_low, out_highs), dice


class FreeKDLoss(nn.Module):
    """FreeKD's frequency loss and its companion FPN MSE on one level (``channels`` = C_t).

    With the 3-level Haar DWT ``D`` (zero mode) of S' and T, for each high-frequency level j
    (bands ``D_j [N, C, 3, H_j, W_j]``): prompt masks ``M_j = σ(P_j · Σ_o D_j(T)_o) [N, T, H_j, W_j]``
    from the mask tokens ``P_j [T, C]`` (``mask_token[j]``; ``mask_token[0]``, the low band's,
    is unused by the loss, as in the reference);
    ``L_freq = Σ_j mean_{n,t,c,o,h,w} |M_j ⊙ D_j(S') − M_j ⊙ D_j(T)|`` and ``L_mse = mean((S' − T)²)``.
    Since ``M_j > 0`` the mean is computed as ``Σ M_j · Σ_{c,o}|D_j(S') − D_j(T)| / (N·T·C·3·H_j·W_j)``,
    without the ``[N, T, C, 3, H_j, W_j]`` tensor. Terms: ``freekd = α L_freq``,
    ``freekd_mse = mse_weight · L_mse``.
    """

    def __init__(self, channels: int, num_tokens: int, alpha: float, mse_weight: float):
        super().__init__()
        self.alpha, self.mse_weight = alpha, mse_weight
        self.register_buffer("mask_token", initial_tokens(channels, num_tokens))

    def load_tokens(self, tokens: Tensor) -> None:
        """Set the frozen prompts ``[4, T, C]`` (e.g. the reference's ``mask_modules.i.mask_token``)."""
        if tokens.shape != self.mask_token.shape:
            raise ValueError(f"expected mask tokens of shape {tuple(self.mask_token.shape)}, got {tuple(tokens.shape)}")
        self.mask_token.copy_(tokens)

    def prompt_masks(self, teacher_highs: Tensor, level: int) -> Tensor:
        """``[N, C, 3, H, W]`` teacher bands of DWT level ``level`` (1..3) -> masks ``[N, T, H, W]``."""
        return token_masks(teacher_highs.sum(dim=2), self.mask_token[level])

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
        return {"freekd": self.alpha * freq, "freekd_mse": self.mse_weight * mse}


class TeacherProbe(Protocol):
    """The frozen teacher as the prompt stage sees it (built by ``raykd/train/preparation.py``)."""

    channels: int

    def features(self, batch: Any) -> tuple[Any, OrderedDict[str, Tensor]]:
        """One data batch -> (the transformed batch, its FPN features ``{level: [N, C, H, W]}``, no grad)."""
        ...

    def detection_loss(self, state: Any, features: OrderedDict[str, Tensor]) -> Tensor:
        """The teacher's head and detection losses on ``features``, summed (a scalar with grad)."""
        ...


def train_prompt_tokens(probe: TeacherProbe, batches: Iterable[Any], steps: int, num_tokens: int, lr: float,
                        dice_weight: float, log: Callable[[str], None]) -> dict[str, Tensor]:
    """The prompt stage (A RECONSTRUCTION: the reference repository ships the stage's forward,
    :func:`prompt_reconstruction`, and its trained result, not the loop): every FPN level of the
    teacher is rebuilt through its tokens, the teacher's own head computes its detection losses on
    the rebuilt features, and Adam (``lr``) trains the tokens only on
    ``detection loss + dice_weight · Σ Dice`` for ``steps`` of ``batches`` (which repeats as needed).
    Returns ``{teacher level: [4, T, C]}`` on the CPU.
    """
    tokens: dict[str, Tensor] = {}
    optimizer = None
    for step, batch in enumerate(islice(batches, steps), start=1):
        state, features = probe.features(batch)
        if optimizer is None:  # one token set per teacher level, drawn as the reference under a fixed seed
            first = next(iter(features.values()))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(PROMPT_SEED)
                tokens = {level: initial_tokens(probe.channels, num_tokens).to(first.device).requires_grad_()
                          for level in features}
            optimizer = torch.optim.Adam(tokens.values(), lr=lr)
        rebuilt: OrderedDict[str, Tensor] = OrderedDict()
        dice = next(iter(features.values())).new_zeros(())
        for level, feature in features.items():
            out, level_dice = prompt_reconstruction(feature, tokens[level])
            rebuilt[level] = out[..., : feature.shape[-2], : feature.shape[-1]]
            dice = dice + level_dice
        detection = probe.detection_loss(state, rebuilt)
        grads = torch.autograd.grad(detection + dice_weight * dice, list(tokens.values()))
        for token, grad in zip(tokens.values(), grads):
            token.grad = grad
        optimizer.step()
        if step == 1 or step == steps or step % 100 == 0:
            log(f"freekd prompts: step {step}/{steps}, detection loss {detection.item():.4f}, "
                f"dice {dice.item():.4f}")
    return {level: token.detach().cpu() for level, token in tokens.items()}
