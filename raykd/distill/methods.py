"""The method registry: everything raykd knows about each distillation method, in one entry.

Every per-method table is derived from :data:`REGISTRY`: the ``distill.method`` choices and
default weights (:mod:`raykd.distill.config`), the loss builder, the loss terms and whether the
distiller taps logits (:mod:`raykd.distill.distiller`), the named search points
(``<method>_defaults``, :mod:`raykd.search.space`), the settings a picture's caption shows
(:mod:`raykd.visualize.panels`), the teacher-logit check (:mod:`raykd.train.setup`) and the
preparation stage the trainer runs before distillation (:mod:`raykd.train.preparation`).

Adding a method is one loss module (``raykd/distill/<name>.py``, a ``nn.Module`` whose forward
takes a :class:`~raykd.distill.inputs.LevelInputs` and returns ``{term: scalar}``) and one
:class:`Method` entry here (docs/architecture.md shows an example). The builders import their
loss module when called, so reading a configuration does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn

    from raykd.distill.config import DistillConfig
    from raykd.distill.freekd import TeacherProbe
    from raykd.distill.masks import MaskSettings

Builder = Callable[["DistillConfig", int, int], "nn.Module"]
"""``(config, teacher channels C_t, classes K incl. background) -> one level's loss module``."""

REFERENCE = "reference"
RECONSTRUCTION = "reconstruction"
"""Provenance: exact to the reference code, or reconstructed from the paper's abstract (docs/METHODS.md)."""

MASK_KEYS = ("mask_ratio", "channel_mask_ratio", "tau", "mask_rule", "polarity", "attention_source")
"""The settings of :class:`~raykd.distill.masks.MaskSettings` (the dual-mask methods read them all)."""


@dataclass(frozen=True)
class Preparation:
    """A stage run once per teacher and data set before distillation, cached by the trainer
    (``raykd/train/preparation.py``) under ``cache_dir/<name>/<key>/``.

    ``needed(cfg)``: whether this configuration runs it; ``settings(cfg)``: the values that key
    its cache (with the teacher's weights and the data); ``train(probe, batches, cfg, log)``: the
    state ``{teacher level: tensor}``; ``load(distiller, pairs, state)``: hand it to the losses
    (``pairs``: distilled level -> teacher level).
    """

    name: str
    needed: Callable[[DistillConfig], bool]
    settings: Callable[[DistillConfig], tuple[Any, ...]]
    train: Callable[[TeacherProbe, Iterable[Any], DistillConfig, Callable[[str], None]], dict[str, Tensor]]
    load: Callable[[nn.Module, Mapping[str, str], Mapping[str, Tensor]], None]


def _never(cfg: DistillConfig) -> bool:
    return False


@dataclass(frozen=True)
class Method:
    """One distillation method.

    ``build``: its loss module per level (None: ``none``, no distiller); ``defaults``: the
    published loss weights (docs/METHODS.md); ``terms``: the loss terms its module returns;
    ``logit_terms``: those of ``terms`` that read dense-head logits (left out without them);
    ``keys``: the ``distill.*`` settings it reads; ``reads_logits(cfg)``: whether it compares the
    teacher's class logits; ``point``: its named search point ``<name>_defaults`` beyond
    ``distill.method``; ``provenance``: :data:`REFERENCE` or :data:`RECONSTRUCTION`, and
    ``source``, the code or paper it follows.
    """

    name: str
    build: Builder | None
    defaults: Mapping[str, float]
    terms: tuple[str, ...]
    keys: tuple[str, ...]
    provenance: str
    source: str
    point: Mapping[str, Any] = field(default_factory=dict)
    logit_terms: tuple[str, ...] = ()
    reads_logits: Callable[[DistillConfig], bool] = _never
    prepare: Preparation | None = None


def _masks(cfg: DistillConfig) -> MaskSettings:
    from raykd.distill.masks import MaskSettings

    return MaskSettings(rule=cfg.mask_rule, polarity=cfg.polarity, source=cfg.attention_source,
                        spatial_ratio=cfg.mask_ratio, channel_ratio=cfg.channel_mask_ratio, tau=cfg.tau)


def _feature_mse(cfg: DistillConfig, channels: int, classes: int) -> nn.Module:
    from raykd.distill.feature_mse import FeatureMSELoss

    return FeatureMSELoss(cfg.require("weight"))


def _mgd(cfg: DistillConfig, channels: int, classes: int) -> nn.Module:
    from raykd.distill.mgd import MGDLoss

    return MGDLoss(channels, cfg.require("alpha"), cfg.mask_ratio)


def _fgd(cfg: DistillConfig, channels: int, classes: int) -> nn.Module:
    from raykd.distill.fgd import FGDLoss

    return FGDLoss(channels, cfg.require("alpha"), cfg.require("beta"), cfg.require("gamma"),
                   cfg.require("lambda_gl"), cfg.tau)


def _cwd(cfg: DistillConfig, channels: int, classes: int) -> nn.Module:
    from raykd.distill.cwd import CWDLoss

    return CWDLoss(cfg.require("weight"), cfg.cwd_tau)


def _pkd(cfg: DistillConfig, channels: int, classes: int) -> nn.Module:
    from raykd.distill.pkd import PKDLoss

    return PKDLoss(cfg.require("weight"))


def _dmkd(cfg: DistillConfig, channels: int, classes: int) -> nn.Module:
    from raykd.distill.dmkd import DMKDLoss

    return DMKDLoss(channels, cfg.require("alpha"), _masks(cfg), cfg.branches, cfg.fusion)


def _samkd(cfg: DistillConfig, channels: int, classes: int) -> nn.Module:
    from raykd.distill.samkd import SAMKDLoss

    return SAMKDLoss(channels, alpha=cfg.require("alpha"), masks=_masks(cfg), branches=cfg.branches,
                     fusion=cfg.fusion, scales=cfg.pyramid_scales, pyramid_mode=cfg.pyramid_mode,
                     share_generators=cfg.share_generators, sld_weight=cfg.require("beta") if cfg.sld else None,
                     num_classes=classes, sld_weighting=cfg.sld_weighting, sld_ratio=cfg.sld_ratio,
                     sld_tau=cfg.sld_tau, sld_discrepancy=cfg.sld_discrepancy, temperature=cfg.T_kd)


def _amd(cfg: DistillConfig, channels: int, classes: int) -> nn.Module:
    from raykd.distill.amd import AMDLoss

    return AMDLoss(channels, cfg.require("alpha"), _masks(cfg), cfg.channel_adapter)


def _freekd(cfg: DistillConfig, channels: int, classes: int) -> nn.Module:
    from raykd.distill.freekd import FreeKDLoss

    return FreeKDLoss(channels, cfg.freekd_tokens, cfg.require("alpha"), cfg.freekd_mse_weight)


def _dfmsd(cfg: DistillConfig, channels: int, classes: int) -> nn.Module:
    from raykd.distill.dfmsd import DFMSDLoss

    return DFMSDLoss(channels, cfg.require("alpha"), _masks(cfg), cfg.branches, cfg.fusion, cfg.dfmsd_alignment,
                     cfg.dfmsd_enhancement, cfg.dfmsd_boost, cfg.dfmsd_adaptation)


def _train_freekd_prompts(probe: TeacherProbe, batches: Iterable[Any], cfg: DistillConfig,
                          log: Callable[[str], None]) -> dict[str, Tensor]:
    from raykd.distill.freekd import train_prompt_tokens

    return train_prompt_tokens(probe, batches, cfg.freekd_prompt_steps, cfg.freekd_tokens, cfg.freekd_prompt_lr,
                               cfg.freekd_prompt_dice, log)


def _load_freekd_prompts(distiller: nn.Module, pairs: Mapping[str, str], state: Mapping[str, Tensor]) -> None:
    for level, teacher_level in pairs.items():
        distiller.losses[level].load_tokens(state[teacher_level])


FREEKD_PROMPTS = Preparation(
    name="freekd_prompts",
    needed=lambda cfg: cfg.freekd_prompt_steps > 0,
    settings=lambda cfg: (cfg.freekd_tokens, cfg.freekd_prompt_steps, cfg.freekd_prompt_lr, cfg.freekd_prompt_dice),
    train=_train_freekd_prompts,
    load=_load_freekd_prompts,
)

_MASKED = {"mask_ratio": 0.65}
_DUAL = ("alpha", *MASK_KEYS, "branches", "fusion")

REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("none", None, {}, (), (), REFERENCE, "no distillation: the baseline student"),
    Method("feature_mse", _feature_mse, {"weight": 1.0}, ("mse",), ("weight",), REFERENCE,
           "FitNet-style feature imitation (the plain control)"),
    Method("mgd", _mgd, {"alpha": 2e-5}, ("mgd",), ("alpha", "mask_ratio"), REFERENCE, "yzd-v/MGD",
           point=_MASKED),
    Method("fgd", _fgd, {"alpha": 1e-3, "beta": 5e-4, "gamma": 5e-4, "lambda_gl": 5e-6},
           ("fgd_fg", "fgd_bg", "fgd_at", "fgd_gl"), ("alpha", "beta", "gamma", "lambda_gl", "tau"), REFERENCE,
           "yzd-v/FGD"),
    Method("cwd", _cwd, {"weight": 10.0}, ("cwd",), ("weight", "cwd_tau"), REFERENCE, "open-mmlab/mmrazor"),
    Method("pkd", _pkd, {"weight": 6.0}, ("pkd",), ("weight",), REFERENCE, "open-mmlab/mmrazor"),
    Method("dmkd", _dmkd, {"alpha": 2e-5}, ("dmkd",), _DUAL, RECONSTRUCTION, "DMKD's abstract",
           point={**_MASKED, "channel_mask_ratio": 0.5, "polarity": "salient", "fusion": "learned",
                  "branches": "dual"}),
    Method("samkd", _samkd, {"alpha": 2e-5, "beta": 1.0}, ("sfd", "sld"),
           (*_DUAL, "pyramid_scales", "pyramid_mode", "share_generators", "sld", "beta", "sld_weighting",
            "sld_ratio", "sld_tau", "sld_discrepancy", "T_kd"),
           RECONSTRUCTION, "SAMKD's abstract", point={"pyramid_scales": [1, 2, 4], "sld": True},
           logit_terms=("sld",), reads_logits=lambda cfg: cfg.sld),
    Method("amd", _amd, {"alpha": 2e-5}, ("amd",), ("alpha", *MASK_KEYS, "channel_adapter"), RECONSTRUCTION,
           "AMD's abstract", point={**_MASKED, "mask_rule": "topk", "polarity": "salient", "channel_adapter": True}),
    Method("freekd", _freekd, {"alpha": 1.0}, ("freekd", "freekd_mse"),
           ("alpha", "freekd_tokens", "freekd_mse_weight", "freekd_prompt_steps", "freekd_prompt_lr",
            "freekd_prompt_dice"),
           REFERENCE, "Gumpest/FreeKD (its prompt-training loop: a reconstruction)", point={"freekd_tokens": 6},
           prepare=FREEKD_PROMPTS),
    Method("dfmsd", _dfmsd, {"alpha": 2e-5}, ("dfmsd",),
           (*_DUAL, "dfmsd_alignment", "dfmsd_enhancement", "dfmsd_boost", "dfmsd_adaptation"), RECONSTRUCTION,
           "DFMSD's abstract",
           point={**_MASKED, "channel_mask_ratio": 0.5, "branches": "dual", "dfmsd_alignment": "standardize",
                  "dfmsd_enhancement": "boxes", "dfmsd_boost": 1.0, "dfmsd_adaptation": "adapter"}),
)}

METHOD_NAMES: tuple[str, ...] = tuple(REGISTRY)
"""Every ``distill.method`` value, ``none`` first."""
