"""torchvision detector builders and the taps that read FPN features and head logits."""

from raykd.models.builders import build_backbone, build_detector, load_weights
from raykd.models.inherit import inherit_neck_and_head
from raykd.models.taps import TapOutput, forward_taps

__all__ = ["build_backbone", "build_detector", "load_weights", "inherit_neck_and_head", "TapOutput", "forward_taps"]
