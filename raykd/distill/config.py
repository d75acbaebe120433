"""`DistillConfig`: one flat, validated model for every distillation method.

Flat on purpose: search spaces vary keys as ``distill.<key>``. Loss weights left at ``None``
mean "the method's published default" (see METHODS.md); :meth:`DistillConfig.resolved`
fills them in. Keys a method does not use are ignored by that method, so one search space
can mix methods.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from raykd.distill.methods import METHOD_NAMES, REGISTRY
from raykd.distill.options import (
    AttentionSource,
    Branches,
    DFMSDAdaptation,
    DFMSDAlignment,
    DFMSDEnhancement,
    FusionMode,
    MaskRule,
    Polarity,
    PyramidMode,
    SLDDiscrepancy,
    SLDWeighting,
)

Method = Literal[METHOD_NAMES]  # the registry's names (raykd/distill/methods.py)
METHODS: tuple[str, ...] = METHOD_NAMES


_WEIGHT_KEYS = ("alpha", "beta", "gamma", "lambda_gl", "weight")

# Published defaults (METHODS.md); SAMKD's beta has none and must be calibrated per task.
DEFAULT_WEIGHTS: dict[str, dict[str, float]] = {name: dict(m.defaults) for name, m in REGISTRY.items()}

LEVEL_NAME = re.compile(r"^[A-Za-z0-9_]+$")


class DistillConfig(BaseModel):
    """Which distillation method runs and with which parameters.

    ``levels``: FPN level names to distil (None: every level the model gives).
    Loss weights (``None`` = the method's default, see :data:`DEFAULT_WEIGHTS`):
    ``alpha`` (MGD/DMKD/SAMKD-SFD α, FGD foreground α), ``beta`` (FGD background β; SAMKD's
    SLD β, default 1.0, which is *not* published and must be calibrated so that L_SLD starts
    near the classification loss), ``gamma`` (FGD attention γ), ``lambda_gl`` (FGD global λ),
    ``weight`` (w of CWD, PKD and feature MSE). Weights are dimensionless multipliers.
    Masks: ``mask_ratio`` (λ of MGD, λ_s of DMKD/SAMKD), ``channel_mask_ratio`` (λ_c), ``tau``
    (attention temperature of FGD/DMKD/SAMKD; METHODS.md suggests 0.8 for FCOS), ``cwd_tau``.
    DMKD/SAMKD switches (reconstructions): ``mask_rule``, ``polarity``, ``attention_source``,
    ``branches``, ``fusion``. SAMKD: ``pyramid_scales`` (grids g), ``pyramid_mode``,
    ``share_generators``, ``sld`` and its ``sld_weighting``, ``sld_ratio`` (ρ), ``sld_tau``
    (τ_w), ``sld_discrepancy``, ``T_kd``. AMD (reconstruction; DMKD's mask switches apply):
    ``channel_adapter`` (the squeeze-and-excitation module on S'). FreeKD: ``alpha`` (frequency
    loss, default 1), ``freekd_mse_weight`` (companion FPN MSE, 5), ``freekd_tokens`` (prompts
    per band, 6 as its detection configs); its prompt stage (a reconstruction,
    ``raykd/train/preparation.py``): ``freekd_prompt_steps`` (0: none, tokens stay at their
    initialisation), ``freekd_prompt_lr`` (Adam), ``freekd_prompt_dice`` (weight of the Dice
    diversity loss). DFMSD (reconstruction; DMKD's mask switches apply):
    ``dfmsd_alignment``, ``dfmsd_enhancement`` with its ``dfmsd_boost`` κ, ``dfmsd_adaptation``.
    See METHODS.md for the equations. ``amp``: with ``train.amp`` on, the generation blocks run
    under its autocast (each loss is still reduced in fp32); no effect when ``train.amp`` is off.
    ``draw``: random masks drawn on the training device from a per-rank generator (``device``)
    or, as the reference code, from the global CPU generator and copied (``reference``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: Method = "none"
    levels: list[str] | None = Field(default=None, min_length=1)
    amp: bool = Field(default=True, description="generation blocks under train.amp's autocast (losses stay fp32)")
    draw: Literal["device", "reference"] = "device"

    alpha: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    beta: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    gamma: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    lambda_gl: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    weight: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    # distillation loss = loss_ratio x detection loss over the first calibration_steps batches
    # (raykd/train/calibrate.py): instead of the weights above, never with them
    loss_ratio: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    calibration_steps: int = Field(default=10, ge=1)

    mask_ratio: float = Field(default=0.65, ge=0.0, le=1.0)
    channel_mask_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    tau: float = Field(default=0.5, gt=0.0, allow_inf_nan=False)
    cwd_tau: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)

    mask_rule: MaskRule = "topk"
    polarity: Polarity = "salient"
    attention_source: AttentionSource = "teacher"
    branches: Branches = "dual"
    fusion: FusionMode = "learned"

    pyramid_scales: list[int] = Field(default_factory=lambda: [1, 2, 4], min_length=1)
    pyramid_mode: PyramidMode = "cells"
    share_generators: bool = False
    sld: bool = True
    sld_weighting: SLDWeighting = "softmax"
    sld_ratio: float = Field(default=0.5, gt=0.0, le=1.0)
    sld_tau: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    sld_discrepancy: SLDDiscrepancy = "feature"
    T_kd: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)

    channel_adapter: bool = True
    freekd_tokens: int = Field(default=6, ge=1)
    freekd_mse_weight: float = Field(default=5.0, ge=0.0, allow_inf_nan=False)
    freekd_prompt_steps: int = Field(default=0, ge=0)
    freekd_prompt_lr: float = Field(default=1e-3, gt=0.0, allow_inf_nan=False)
    freekd_prompt_dice: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)
    dfmsd_alignment: DFMSDAlignment = "standardize"
    dfmsd_enhancement: DFMSDEnhancement = "boxes"
    dfmsd_boost: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)
    dfmsd_adaptation: DFMSDAdaptation = "adapter"

    @model_validator(mode="after")
    def _ratio_or_weights(self) -> DistillConfig:
        given = [f"distill.{key}" for key in _WEIGHT_KEYS if getattr(self, key) is not None]
        if self.loss_ratio is not None and given:
            raise ValueError(f"distill.loss_ratio sets the loss weights: give it or {', '.join(given)}, not both")
        return self

    @field_validator("levels", mode="before")
    @classmethod
    def _parse_levels(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [str(item) for item in value]
        return value

    @field_validator("levels")
    @classmethod
    def _check_levels(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        bad = [name for name in value if not LEVEL_NAME.match(name)]
        if bad:
            raise ValueError(f"level names must use letters, digits and '_' only, got {bad}")
        if len(set(value)) != len(value):
            raise ValueError(f"levels must be unique, got {value}")
        return value

    @field_validator("pyramid_scales")
    @classmethod
    def _check_scales(cls, value: list[int]) -> list[int]:
        if any(g < 1 for g in value):
            raise ValueError(f"pyramid scales must be >= 1, got {value}")
        if len(set(value)) != len(value):
            raise ValueError(f"pyramid scales must be unique, got {value}")
        return value

    def resolved(self) -> DistillConfig:
        """A copy with every ``None`` weight the method uses replaced by its default."""
        defaults = DEFAULT_WEIGHTS[self.method]
        updates = {key: defaults[key] for key in _WEIGHT_KEYS if getattr(self, key) is None and key in defaults}
        return self.model_copy(update=updates)

    def require(self, key: str) -> float:
        """The concrete value of weight ``key`` for this method (explicit or default)."""
        value = getattr(self, key)
        if value is None:
            value = DEFAULT_WEIGHTS[self.method].get(key)
        if value is None:
            raise ValueError(f"method {self.method!r} has no weight {key!r}")
        return float(value)
