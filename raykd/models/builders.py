"""Builders for torchvision detectors (FCOS, RetinaNet, Faster R-CNN) with a chosen backbone.

Nothing is downloaded: backbones start from random weights (``weights=None``) and trained
checkpoints load through :func:`load_weights` with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet34, resnet50, resnet101
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from raykd.config import ModelConfig
from raykd.errors import UserError

_RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101}

# Score threshold for evaluation: low, as COCO mAP integrates over the whole PR curve.
EVAL_SCORE_THRESH = 0.05


def _resnet_body(name: str, trainable_layers: int) -> tuple[nn.Module, dict[str, str], list[int]]:
    body = _RESNETS[name](weights=None, norm_layer=nn.BatchNorm2d)
    trainable = ["layer4", "layer3", "layer2", "layer1", "conv1", "bn1"][: trainable_layers + (trainable_layers == 5)]
    for pname, param in body.named_parameters():
        if not any(pname.startswith(layer) for layer in trainable):
            param.requires_grad_(False)
    width = body.inplanes // 8  # channels of layer1's output for basic blocks, /4 of bottleneck
    return_layers = {"layer2": "0", "layer3": "1", "layer4": "2"}
    in_channels = [width * 2, width * 4, width * 8]
    return body, return_layers, in_channels


def _mobilenet_body(trainable_layers: int) -> tuple[nn.Module, dict[str, str], list[int]]:
    features = mobilenet_v3_large(weights=None).features
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    freeze_before = len(features) if trainable_layers == 0 else stages[max(len(stages) - trainable_layers, 0)]
    for block in features[:freeze_before]:
        for param in block.parameters():
            param.requires_grad_(False)
    # The last two stage indices share stride 32; the outputs at strides 8, 16, 32 are these.
    picked = [stages[-4], stages[-3], stages[-1]]
    return_layers = {str(idx): str(level) for level, idx in enumerate(picked)}
    in_channels = [features[idx].out_channels for idx in picked]
    return features, return_layers, in_channels


def build_backbone(cfg: ModelConfig) -> BackboneWithFPN:
    """Backbone + FPN with ``cfg.fpn_channels`` outputs.

    One-stage heads get P3-P7 (keys ``'0','1','2','p6','p7'``, strides 8-128); Faster R-CNN
    gets P2-P5 + ``'pool'`` (keys ``'0'..'3','pool'``, strides 4-64).
    """
    two_stage = cfg.arch == "faster_rcnn"
    if cfg.backbone == "mobilenet_v3_large":
        body, return_layers, in_channels = _mobilenet_body(cfg.trainable_layers)
    else:
        body, return_layers, in_channels = _resnet_body(cfg.backbone, cfg.trainable_layers)
        if two_stage:
            width = in_channels[0] // 2
            return_layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
            in_channels = [width, width * 2, width * 4, width * 8]
    extra = LastLevelMaxPool() if two_stage else LastLevelP6P7(cfg.fpn_channels, cfg.fpn_channels)
    return BackboneWithFPN(body, return_layers, in_channels, cfg.fpn_channels, extra_blocks=extra)


def build_detector(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    """A torchvision detector for ``num_classes`` labels (label 0 is background).

    ``image_size`` is the longer side the data pipeline already resized to; the model's own
    transform keeps it (min_size = max_size = image_size) and only normalises and pads.
    """
    backbone = build_backbone(cfg)
    common = {"min_size": image_size, "max_size": image_size}
    if cfg.arch == "fcos":
        return FCOS(backbone, num_classes, score_thresh=EVAL_SCORE_THRESH, **common)
    if cfg.arch == "retinanet":
        return RetinaNet(backbone, num_classes, score_thresh=EVAL_SCORE_THRESH, **common)
    return FasterRCNN(backbone, num_classes, box_score_thresh=EVAL_SCORE_THRESH, **common)


def load_weights(model: nn.Module, path: str | Path, *, what: str = "checkpoint") -> None:
    """Load a raykd checkpoint (``{"model": state_dict, ...}``) or a bare state dict into ``model``.

    Read with ``weights_only=True``: a file holding other Python objects is refused, and
    nothing in it runs. Errors name ``path`` and the config key ``what``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("checkpoint file not found", file=path, key=what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on the pickle protocol: the error says enough
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # not tensors and containers: Python objects, or garbage
        reason = _unpickler_reason(err)
        raise UserError(f"cannot read checkpoint: expected a PyTorch file of tensors, the weights-only loader "
                        f"refused it without running anything ({reason})", file=path, key=what) from None
    except Exception as err:  # corrupt or not a torch file
        first = (str(err).splitlines() or [""])[0].split(". ")[0][:160]
        raise UserError(f"cannot read checkpoint ({type(err).__name__}: {first})", file=path, key=what) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise UserError(f"expected a state dict or {{'model': state dict}}, got a {type(state).__name__}",
                        file=path, key=what)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise UserError(f"checkpoint does not match the configured model ({first[:160]})", file=path, key=what) from None


def _unpickler_reason(err: Exception) -> str:
    """The useful line of torch's weights-only error (after ``WeightsUnpickler error:``), shortened."""
    _, found, rest = str(err).partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (rest if found else str(err)).splitlines() if line.strip()]
    return lines[0].split(". ")[0][:160] if lines else type(err).__name__
