"""Mixed precision where it is safe: autocast around the convolutions of a detector, fp32 elsewhere.

``train.amp`` (``bf16`` | ``fp16`` | ``off``) runs a detector's backbone + FPN and its heads'
convolutions under ``torch.autocast``; every tensor they return is cast back to float32, so
torchvision's box coding (anchors + deltas at 800×1333 coordinates: bf16 steps of 2-8 px),
the detection losses, the post-processing (score thresholds, NMS) and the evaluated boxes run
in fp32. The scope is set with forward hooks for the duration of a ``with`` block only
(:func:`autocast_parts`), so the model, its ``state_dict`` and its copies are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet

AmpMode = Literal["bf16", "fp16", "off"]
_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(mode: AmpMode, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device``: None for ``off`` and on the CPU
    (``train.amp`` is for GPUs; tests force CPU autocast through :func:`autocast_parts`)."""
    return _DTYPES.get(mode) if device.type == "cuda" else None


def conv_parts(model: nn.Module) -> list[nn.Module]:
    """The parts of a torchvision detector that run under autocast: the backbone with its FPN,
    the dense head (FCOS, RetinaNet) or the RPN head and the RoI box (and mask) head and
    predictor (Faster / Mask R-CNN). Anchors, box coding, losses and post-processing are not in them."""
    parts = [model.backbone]
    if isinstance(model, (FCOS, RetinaNet)):
        parts.append(model.head)
    elif isinstance(model, FasterRCNN):
        heads = model.roi_heads
        parts += [model.rpn.head, heads.box_head, heads.box_predictor]
        parts += [m for m in (heads.mask_head, heads.mask_predictor) if m is not None]
    return parts


def _float32(value: Any) -> Any:
    """Floating tensors in ``value`` (through dicts, lists and tuples) cast to float32."""
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, dict):
        return type(value)((k, _float32(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_float32(v) for v in value)
    return value


@contextmanager
def autocast_parts(modules: Iterable[nn.Module], device_type: str, dtype: torch.dtype | None) -> Iterator[None]:
    """While the block runs, each of ``modules`` runs its forward under
    ``torch.autocast(device_type, dtype)`` and returns float32 tensors; code between them runs
    without autocast. ``dtype`` None: nothing changes."""
    if dtype is None:
        yield
        return
    handles = []
    for module in modules:
        entered: list[torch.autocast] = []

        def enter(_module, _args, entered=entered):
            context = torch.autocast(device_type, dtype=dtype)
            context.__enter__()
            entered.append(context)

        def leave(_module, _args, output, entered=entered):
            entered.pop().__exit__(None, None, None)
            return _float32(output)

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        for handle in handles:
            handle.remove()
