"""Pretrained weights: torchvision enums through its weights API, or files.

A weights value is either a torchvision enum ``"Class.MEMBER"`` (``get_weight``), read from
the torch hub cache under ``TORCH_HOME`` by ``weights.get_state_dict`` (downloaded only when
missing and online), or a file: a raykd checkpoint (``{"model": state_dict, "categories": ...}``)
or a torchvision-format state dict. Files are read with ``weights_only=True``.
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from raykd.config import WEIGHTS_ENUM
from raykd.errors import UserError

CLASS_LAYERS = (
    "head.classification_head.cls_logits.",
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
)
"""State-dict prefixes of the layers whose shape depends on the number of classes."""


@dataclass
class Pretrained:
    """Weights read from an enum or a file.

    state_dict: name -> tensor as stored (a detector's, or a classification backbone's);
    categories: label -> class name (index 0 background; COCO's 91 include 'N/A' slots), or
        None when the source does not say; source: the config value it came from.
    """

    state_dict: dict[str, Tensor]
    categories: list[str] | None
    source: str


def is_enum(spec: str) -> bool:
    return bool(WEIGHTS_ENUM.match(spec)) and not Path(spec).is_file()


def cache_file(weights) -> Path:
    """Where ``torch.hub`` keeps (or would download) the file of a torchvision weights enum."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def read_enum(name: str, key: str) -> Pretrained:
    """A torchvision weights enum's state dict and ``meta["categories"]``, from the hub cache."""
    from torchvision.models import get_weight

    try:
        weights = get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise UserError(f"unknown torchvision weights {name!r} (expected 'Class.MEMBER', e.g. "
                        "'ResNet18_Weights.IMAGENET1K_V1')", key=key) from None
    expected = cache_file(weights)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = weights.get_state_dict(progress=False, check_hash=True, map_location="cpu", weights_only=True)
    except Exception as err:
        if not expected.is_file():
            raise UserError(f"{name} is not in the torch hub cache and could not be downloaded "
                            f"({type(err).__name__}); expected the file {expected}", key=key) from None
        raise UserError(f"cannot read the cached weights {expected} ({type(err).__name__})", key=key) from None
    categories = weights.meta.get("categories")
    return Pretrained(dict(state), list(categories) if categories else None, name)


def read_file(path: str | Path, key: str) -> Pretrained:
    """A raykd checkpoint (``{"model": ..., "categories": ...}``) or a bare state dict."""
    path = Path(path)
    if not path.is_file():
        raise UserError("checkpoint file not found", file=path, key=key)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on the pickle protocol: the error says enough
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # not tensors and containers: Python objects, or garbage
        raise UserError(f"cannot read checkpoint: expected a PyTorch file of tensors, the weights-only loader "
                        f"refused it without running anything ({_unpickler_reason(err)})", file=path, key=key) from None
    except Exception as err:  # corrupt or not a torch file
        first = (str(err).splitlines() or [""])[0].split(". ")[0][:160]
        if not path.read_bytes()[:2] == b"PK":  # not torch's zip format: garbage the unpickler choked on
            raise UserError(f"cannot read checkpoint: expected a PyTorch file of tensors ({type(err).__name__}: "
                            f"{first})", file=path, key=key) from None
        raise UserError(f"cannot read checkpoint ({type(err).__name__}: {first})", file=path, key=key) from None
    categories = None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        categories = state.get("categories")
        state = state["model"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"expected a state dict or {{'model': state dict}}, got a {type(state).__name__}",
                        file=path, key=key)
    return Pretrained(state, list(categories) if categories else None, str(path))


def read_pretrained(spec: str, key: str) -> Pretrained:
    """The weights a config value names: an enum ``Class.MEMBER`` or a file path."""
    return read_enum(spec, key) if is_enum(spec) else read_file(spec, key)


def _unpickler_reason(err: Exception) -> str:
    """The useful line of torch's weights-only error (after ``WeightsUnpickler error:``), shortened."""
    _, found, rest = str(err).partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (rest if found else str(err)).splitlines() if line.strip()]
    return lines[0].split(". ")[0][:160] if lines else type(err).__name__


def load_state_into(module: nn.Module, state: dict[str, Tensor], *, file=None, key: str,
                    skip: tuple[str, ...] = ()) -> None:
    """``module.load_state_dict(state)``, strict except: keys under ``skip`` prefixes stay as
    initialised, and BatchNorm's ``num_batches_tracked`` may be absent (FrozenBatchNorm2d
    files have none). A mismatch is a one-line :class:`UserError` naming ``file`` and ``key``."""
    own = module.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(skip)}
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.startswith(skip) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    for problem, names in (("shape differs", wrong), ("missing", missing), ("unexpected", unexpected)):
        if names:
            first = names[0] + (f" {tuple(state[names[0]].shape)} vs {tuple(own[names[0]].shape)}"
                                if problem == "shape differs" else "")
            raise UserError(f"checkpoint does not match the configured model ({problem}: {first}"
                            f"{f' and {len(names) - 1} more' if len(names) > 1 else ''})", file=file, key=key)
    module.load_state_dict(state, strict=False)


def class_layers_fit(model: nn.Module, state: dict[str, Tensor]) -> bool:
    """Whether every class-specific tensor of ``state`` has the model's shape."""
    own = model.state_dict()
    return all(own[k].shape == v.shape for k, v in state.items() if k.startswith(CLASS_LAYERS) and k in own)


def load_detector_weights(model: nn.Module, pretrained: Pretrained, *, keep_head: bool, key: str) -> None:
    """Whole-detector weights into ``model``; ``keep_head=False`` leaves the class-specific
    layers (:data:`CLASS_LAYERS`) as initialised."""
    load_state_into(model, pretrained.state_dict, file=pretrained.source, key=key,
                    skip=() if keep_head else CLASS_LAYERS)


def backbone_state(pretrained: Pretrained) -> dict[str, Tensor]:
    """The body's part of a classification or detection state dict, keyed as ``backbone.body``
    keys them: a ResNet's without ``fc.*``, a MobileNet's ``features.*`` without the prefix,
    a detector's ``backbone.body.*`` without the prefix."""
    state = pretrained.state_dict
    if any(k.startswith("backbone.body.") for k in state):
        return {k.removeprefix("backbone.body."): v for k, v in state.items() if k.startswith("backbone.body.")}
    if any(k.startswith("features.") for k in state):
        return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def load_backbone_weights(model: nn.Module, pretrained: Pretrained, *, key: str) -> None:
    """Classification (or detector) backbone weights into ``model.backbone.body``."""
    load_state_into(model.backbone.body, backbone_state(pretrained), file=pretrained.source, key=key)


WEIGHT_KEYS = ("weights", "backbone_weights")


def check_weights(cfg) -> None:
    """Read every pretrained weights value of an experiment once (downloading an enum's file
    into the torch hub cache when online), so a missing or unreadable one is a one-line
    :class:`UserError` before anything is written or started."""
    for role in ("student", "teacher"):
        model = getattr(cfg, role)
        for name in WEIGHT_KEYS if model is not None else ():
            if getattr(model, name):
                read_pretrained(getattr(model, name), f"{role}.{name}")
