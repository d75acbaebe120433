"""Builders for torchvision detectors with a chosen backbone, state-dict compatible with
torchvision's own builders (``fcos_resnet50_fpn``, ``fasterrcnn_resnet50_fpn_v2``, ...).

Models are built at random weights; pretrained weights are applied afterwards by
:mod:`raykd.models.weights` (torch hub cache or files, never downloaded here).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet34, resnet50, resnet101
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from raykd.config import ModelConfig
from raykd.models.labels import LabelSpace, data_space, matched_space
from raykd.models.weights import class_layers_fit, load_backbone_weights, load_detector_weights, read_pretrained

_RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101}
TWO_STAGE = ("faster_rcnn", "faster_rcnn_v2", "mask_rcnn", "mask_rcnn_v2")
"""Archs with an RPN and RoI heads: FPN levels P2-P6 (keys '0'..'3', 'pool') on ResNets."""

# Score threshold for evaluation: low, as COCO mAP integrates over the whole PR curve.
EVAL_SCORE_THRESH = 0.05


def _norm_layer(cfg: ModelConfig) -> type[nn.Module]:
    """The backbone body's norm: FrozenBatchNorm2d, or BatchNorm2d (``sync_bn`` converts it later)."""
    return FrozenBatchNorm2d if cfg.norm_layer == "frozen_bn" else nn.BatchNorm2d


def _freeze(body: nn.Module, trainable: list[str]) -> None:
    for pname, param in body.named_parameters():
        if not any(pname.startswith(layer) for layer in trainable):
            param.requires_grad_(False)


def _resnet_body(cfg: ModelConfig, returned: list[int]) -> tuple[nn.Module, dict[str, str], list[int]]:
    """torchvision's ``_resnet_fpn_extractor`` rule: stages ``layer4..conv1`` (and bn1 with 5) train."""
    body = _RESNETS[cfg.backbone](weights=None, norm_layer=_norm_layer(cfg))
    layers = cfg.trainable_stages
    _freeze(body, ["layer4", "layer3", "layer2", "layer1", "conv1", "bn1"][: layers + (layers == 5)])
    width = body.inplanes // 8  # channels of layer1's output for basic blocks, /4 of bottleneck
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned)}
    return body, return_layers, [width * 2 ** (k - 1) for k in returned]


def _mobilenet_body(cfg: ModelConfig) -> tuple[nn.Module, dict[str, str], list[int]]:
    frozen = partial(FrozenBatchNorm2d, eps=0.001) if cfg.norm_layer == "frozen_bn" else None  # None: its own BN
    features = mobilenet_v3_large(weights=None, norm_layer=frozen).features
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    layers = cfg.trainable_stages
    freeze_before = len(features) if layers == 0 else stages[max(len(stages) - layers, 0)]
    for block in features[:freeze_before]:
        for param in block.parameters():
            param.requires_grad_(False)
    # The last two stage indices share stride 32; the outputs at strides 8, 16, 32 are these.
    picked = [stages[-4], stages[-3], stages[-1]]
    return_layers = {str(idx): str(level) for level, idx in enumerate(picked)}
    in_channels = [features[idx].out_channels for idx in picked]
    return features, return_layers, in_channels


def build_backbone(cfg: ModelConfig) -> BackboneWithFPN:
    """Backbone + FPN with ``cfg.fpn_channels`` outputs, as torchvision builds it for ``cfg.arch``.

    One-stage heads get P3-P7 (keys ``'0','1','2','p6','p7'``, strides 8-128; ``retinanet_v2``
    computes P6 from C5 as torchvision does); two-stage ones get P2-P5 + ``'pool'`` (keys
    ``'0'..'3','pool'``, strides 4-64; v2 FPNs use BatchNorm). MobileNet gives strides from 8.
    """
    two_stage = cfg.arch in TWO_STAGE
    if cfg.backbone == "mobilenet_v3_large":
        body, return_layers, in_channels = _mobilenet_body(cfg)
    else:
        body, return_layers, in_channels = _resnet_body(cfg, [1, 2, 3, 4] if two_stage else [2, 3, 4])
    c = cfg.fpn_channels
    if two_stage:
        extra = LastLevelMaxPool()
    else:
        extra = LastLevelP6P7(in_channels[-1] if cfg.arch == "retinanet_v2" else c, c)
    fpn_norm = nn.BatchNorm2d if cfg.arch in ("faster_rcnn_v2", "mask_rcnn_v2") else None
    return BackboneWithFPN(body, return_layers, in_channels, c, extra_blocks=extra, norm_layer=fpn_norm)


def build_detector(cfg: ModelConfig, num_classes: int, image_size: int, min_size: int | None = None) -> nn.Module:
    """A torchvision detector for ``num_classes`` labels (label 0 is background), random weights.

    ``image_size`` (the longer side's cap) and ``min_size`` (the shorter side's target, None:
    the longer side is ``image_size``) are those the data pipeline already resized with; the
    model's own transform keeps the images as they are and only normalises and pads.
    ``norm: sync_bn`` turns every BatchNorm2d of the model into SyncBatchNorm.
    """
    backbone = build_backbone(cfg)
    c = cfg.fpn_channels
    common = {"min_size": min_size or image_size, "max_size": image_size}
    if cfg.arch == "fcos":
        model = FCOS(backbone, num_classes, score_thresh=EVAL_SCORE_THRESH, **common)
    elif cfg.arch == "retinanet":
        model = RetinaNet(backbone, num_classes, score_thresh=EVAL_SCORE_THRESH, **common)
    elif cfg.arch == "retinanet_v2":
        head = RetinaNetHead(c, 9, num_classes, norm_layer=partial(nn.GroupNorm, 32))
        head.regression_head._loss_type = "giou"
        model = RetinaNet(backbone, num_classes, head=head, score_thresh=EVAL_SCORE_THRESH, **common)
    elif cfg.arch in ("faster_rcnn", "mask_rcnn"):
        family = MaskRCNN if cfg.arch == "mask_rcnn" else FasterRCNN
        model = family(backbone, num_classes, box_score_thresh=EVAL_SCORE_THRESH, **common)
    else:  # the v2 heads: two-conv RPN head, 4 conv + 1 fc box head, BatchNorm
        v2 = {"rpn_head": RPNHead(c, 3, conv_depth=2),
              "box_head": FastRCNNConvFCHead((c, 7, 7), [256, 256, 256, 256], [1024], norm_layer=nn.BatchNorm2d)}
        if cfg.arch == "mask_rcnn_v2":
            v2["mask_head"] = MaskRCNNHeads(c, [256, 256, 256, 256], 1, norm_layer=nn.BatchNorm2d)
        family = MaskRCNN if cfg.arch == "mask_rcnn_v2" else FasterRCNN
        model = family(backbone, num_classes, box_score_thresh=EVAL_SCORE_THRESH, **v2, **common)
    if cfg.norm_layer == "sync_bn":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def build_pretrained(cfg: ModelConfig, names: list[str], cat_ids: list[int], image_size: int, *, key: str,
                     space: LabelSpace | None = None, min_size: int | None = None,
                     log=print) -> tuple[nn.Module, LabelSpace, bool]:
    """The detector of ``cfg`` with its ``weights`` and ``backbone_weights`` applied.

    names / cat_ids: the data set's class names and category ids (data label order); image_size,
    min_size: as for :func:`build_detector`;
    space: the numbering to use when the weights do not bring their own (default: the data
    set's). Returns (model, its label space, whether the whole-detector weights' head was
    kept; True without such weights). A head is kept when the weights' categories name every
    data set class, or (no categories stored) when its shapes fit; else its class-specific
    layers are re-initialised and ``log`` says so in one line.
    """
    space = space or data_space(names, cat_ids)
    pretrained = read_pretrained(cfg.weights, f"{key}.weights") if cfg.weights else None
    keep = True
    if pretrained is not None and pretrained.categories:
        matched = matched_space(pretrained.categories, names, cat_ids)
        keep = matched is not None
        space = matched or space
    model = build_detector(cfg, space.num_classes, image_size, min_size)
    if pretrained is not None:
        keep = keep and class_layers_fit(model, pretrained.state_dict)
        load_detector_weights(model, pretrained, keep_head=keep, key=f"{key}.weights")
        if not keep:
            log(f"{key}.weights: {pretrained.source} does not predict the data set's classes "
                f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): its class-specific layers are "
                f"re-initialised for {space.num_classes - 1} classes")
    if cfg.backbone_weights:
        load_backbone_weights(model, read_pretrained(cfg.backbone_weights, f"{key}.backbone_weights"),
                              key=f"{key}.backbone_weights")
    return model, space, keep


def load_weights(model: nn.Module, path: str | Path, *, what: str = "checkpoint") -> None:
    """Load a raykd checkpoint (``{"model": state_dict, ...}``) or a bare state dict into ``model``
    (strict, except BatchNorm's ``num_batches_tracked`` that FrozenBatchNorm2d does not keep).

    Read with ``weights_only=True``: a file holding other Python objects is refused, and
    nothing in it runs. Errors name ``path`` and the config key ``what``.
    """
    from raykd.models.weights import load_state_into, read_file

    load_state_into(model, read_file(path, what).state_dict, file=path, key=what)
