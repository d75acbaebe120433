"""The choices of the distillation settings (``distill.mask_rule``, ``distill.fusion``, ...), as
``Literal`` types: what the loss modules are typed with and :class:`~raykd.distill.config.DistillConfig`
validates. A leaf module, so the losses need not import the config that the registry
(raykd/distill/methods.py) builds them from."""

from __future__ import annotations

from typing import Literal

MaskRule = Literal["topk", "random", "attention_sampled"]
Polarity = Literal["salient", "background"]
AttentionSource = Literal["teacher", "student"]
Branches = Literal["spatial", "channel", "dual"]
FusionMode = Literal["learned", "mean", "gate", "sum_losses"]
PyramidMode = Literal["cells", "pooled"]
SLDWeighting = Literal["softmax", "mask"]
SLDDiscrepancy = Literal["feature", "logit"]
DFMSDAlignment = Literal["standardize", "none"]
DFMSDEnhancement = Literal["boxes", "none"]
DFMSDAdaptation = Literal["adapter", "none"]
