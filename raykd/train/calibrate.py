"""``distill.loss_ratio``: the distillation loss weight set relative to the detection loss.

A raw loss weight (MGD's α: 2e-5 in the paper's RetinaNet recipe, 2e-6 on the shapes task)
does not transfer between detectors and data sets; a ratio does (FGD's author: scale the
distillation loss to 0.1-2 × the detection loss). Before the first optimiser step, the
student, distiller and teacher run forward (no gradient, no update; the RNG states and the
modules' buffers restored afterwards) on the first ``distill.calibration_steps`` batches at the
method's default weights; the multiplier

    scale = loss_ratio × mean(detection loss) / mean(distillation loss at the default weights)

then multiplies every distillation term, so a multi-term method keeps the proportions its
default weights give its terms, and the resolved weights are ``scale × default``. Under DDP
the sums are all-reduced before dividing, so every rank holds the same scale. The scale is kept
in the checkpoint (``kd_scale``): a resumed run does not calibrate again.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from raykd.distill.config import DEFAULT_WEIGHTS, DistillConfig

STATE_KEY = "kd_scale"
"""The checkpoint key of the calibrated multiplier."""


@dataclass(frozen=True)
class Calibration:
    """What the calibration measured: mean losses per batch (averaged over every rank's batches)."""

    ratio: float
    det: float  # mean detection loss
    kd: float  # mean distillation loss at the method's default weights
    steps: int  # batches per rank

    @property
    def scale(self) -> float:
        """The multiplier of the distillation loss that makes it ``ratio`` × the detection loss."""
        return self.ratio * self.det / self.kd


def resolved_weights(cfg: DistillConfig, scale: float) -> dict[str, float]:
    """The method's loss weights under ``scale`` (``scale`` × its defaults)."""
    return {key: scale * value for key, value in DEFAULT_WEIGHTS[cfg.method].items()}


def measure(step_module: nn.Module, batches, steps: int, ratio: float,
            prepare: Callable[[Any], tuple[list, list]]) -> Calibration:
    """Mean detection and distillation losses of ``step_module`` (a ``DistillStep`` returning
    ``(total, StepLosses)``) over the first ``steps`` of ``batches``, without changing it.

    ``prepare(batch) -> (images, targets)`` moves a loader batch to the device. Gradients are
    off; the modules' state (BatchNorm statistics, buffers) and the torch/numpy/python RNG
    states are restored after, so training starts as it would have without calibrating.
    """
    saved = copy.deepcopy(step_module.state_dict())
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
           torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
    det_sum = kd_sum = 0.0
    count = 0
    device = next(step_module.parameters()).device
    try:
        with torch.no_grad():
            for batch in batches:
                if count >= steps:
                    break
                images, targets = prepare(batch)
                _, losses = step_module(images, targets)
                det_sum += float(sum(v.detach() for v in losses.det.values()))
                kd_sum += float(sum(v.detach() for terms in losses.kd.values() for v in terms.values()))
                count += 1
    finally:
        step_module.load_state_dict(saved)
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        if rng[3]:
            torch.cuda.set_rng_state_all(rng[3])
    totals = torch.tensor([det_sum, kd_sum, float(count)], dtype=torch.float64, device=device)
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.all_reduce(totals)  # the same sums, so the same scale, on every rank
    det, kd, n = (float(v) for v in totals.cpu())
    if n == 0 or kd <= 0 or det <= 0:
        raise ValueError(f"cannot calibrate distill.loss_ratio: detection loss {det / max(n, 1):.4g}, "
                         f"distillation loss {kd / max(n, 1):.4g} over {int(n)} batches")
    return Calibration(ratio, det / n, kd / n, count)


def calibrated_scale(cfg: DistillConfig, step_module: nn.Module, batches, prepare, resume_state: dict | None,
                     log: Callable[[str], None]) -> float | None:
    """The distillation multiplier of a run: None without ``distill.loss_ratio``; the
    checkpoint's when resuming; else measured (:func:`measure`) and logged."""
    if cfg.loss_ratio is None or cfg.method == "none":
        return None
    if resume_state is not None and resume_state.get(STATE_KEY) is not None:
        scale = float(resume_state[STATE_KEY])
        log(f"distill.loss_ratio {cfg.loss_ratio:g}: weight scale {scale:.4g} from the checkpoint (not recalibrated)")
        return scale
    found = measure(step_module, batches, cfg.calibration_steps, cfg.loss_ratio, prepare)
    weights = ", ".join(f"{k} {v:.4g}" for k, v in resolved_weights(cfg, found.scale).items())
    log(f"distill.loss_ratio {cfg.loss_ratio:g}: over {found.steps} batches, detection loss {found.det:.4g}, "
        f"distillation loss {found.kd:.4g} at the default weights: scale {found.scale:.4g} ({weights})")
    return found.scale
