"""data.min_size / data.max_size: torchvision's detection resize, done once by the data pipeline."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from raykd.config import DataConfig, ModelConfig
from raykd.data.transforms import detection_transforms
from raykd.models import build_detector


@pytest.mark.parametrize("height, width", [(300, 500), (100, 500), (500, 90)])
def test_min_size_resize_matches_torchvisions_transform_and_the_model_keeps_it(height, width):
    image = Image.new("RGB", (width, height))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[10.0, 10.0, 50.0, 60.0]]), format="XYXY",
                                     canvas_size=(height, width))
    ours, target = detection_transforms(200, train=False, min_size=100)(image, {"boxes": boxes})
    reference = GeneralizedRCNNTransform(100, 200, [0.0] * 3, [1.0] * 3)
    expected, _ = reference(torch.rand(1, 3, height, width).unbind(0))
    assert tuple(ours.shape[-2:]) == expected.image_sizes[0]
    scale = torch.tensor([ours.shape[-1] / width, ours.shape[-2] / height] * 2)
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), boxes.as_subclass(torch.Tensor) * scale)
    model = build_detector(ModelConfig(arch="fcos", backbone="resnet18", fpn_channels=32), 3, 200, min_size=100)
    batch, _ = model.transform([ours.float()])
    assert batch.image_sizes[0] == tuple(ours.shape[-2:])  # not resized a second time


def test_max_size_is_the_image_size_shorthand():
    data = DataConfig(synthetic={"out_dir": "x"}, min_size=800, max_size=1333)
    assert data.image_size == 1333 and DataConfig.model_validate(data.model_dump()).image_size == 1333
    with pytest.raises(ValueError, match="must be below"):
        DataConfig(synthetic={"out_dir": "x"}, min_size=800)  # image_size 160 caps the longer side
    with pytest.raises(ValueError, match="give one"):
        DataConfig(synthetic={"out_dir": "x"}, image_size=640, max_size=1333)
