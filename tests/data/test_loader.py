"""build_loader and collate_detection: batches, seeded order, workers, distributed sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DistributedSampler

from raykd.data import CocoDetection, build_loader, collate_detection
from raykd.errors import UserError


def tiny_set(root: Path, count: int = 8, missing: int | None = None) -> CocoDetection:
    """``count`` 32x24 images, image i holding i % 3 boxes (some none); image ``missing`` absent on disk."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(count):
        if i != missing:
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
        images.append({"id": 100 + i, "file_name": f"{i}.png", "width": 32, "height": 24})
        for k in range(i % 3):
            box = {"id": len(annotations) + 1, "image_id": 100 + i, "category_id": 4, "bbox": [k, 2, 10, 8]}
            annotations.append(box)
    path = root / "set.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 4, "name": "x"}]}))
    return CocoDetection(path, root, image_size=32, train=True)


def epoch_ids(loader) -> list[int]:
    return [target["image_id"] for _, targets in loader for target in targets]


def test_collate_keeps_images_and_targets_as_lists() -> None:
    a = (torch.zeros(3, 4, 5), {"boxes": torch.zeros(0, 4), "image_id": 1})
    b = (torch.ones(3, 6, 2), {"boxes": torch.ones(2, 4), "image_id": 2})
    images, targets = collate_detection([a, b])
    assert isinstance(images, list) and images[0] is a[0] and images[1] is b[0]
    assert isinstance(targets, list) and targets[0] is a[1] and targets[1] is b[1]


def test_loader_with_two_workers_batches_every_image_once_in_seeded_order(tmp_path: Path) -> None:
    ds = tiny_set(tmp_path)
    loader = build_loader(ds, batch_size=3, shuffle=True, num_workers=2, seed=7)
    assert loader.persistent_workers and loader.num_workers == 2
    batches = list(loader)
    assert [len(images) for images, _ in batches] == [3, 3, 2]
    for images, targets in batches:
        assert all(image.shape == (3, 24, 32) for image in images)
        assert all(t["boxes"].shape[1] == 4 and len(t["boxes"]) == (t["image_id"] - 100) % 3 for t in targets)
    first = [t["image_id"] for _, targets in batches for t in targets]
    assert sorted(first) == list(range(100, 108))
    second = epoch_ids(loader)  # persistent workers, next epoch: a new order
    assert sorted(second) == sorted(first) and second != first
    again = build_loader(ds, batch_size=3, shuffle=True, num_workers=0, seed=7)
    # The order of each epoch depends on the seed only, not on the number of workers.
    assert epoch_ids(again) == first and epoch_ids(again) == second
    other = build_loader(ds, batch_size=3, shuffle=True, num_workers=0, seed=8)
    assert epoch_ids(other) != first


def test_loader_without_shuffle_and_drop_last(tmp_path: Path) -> None:
    loader = build_loader(tiny_set(tmp_path), batch_size=3, shuffle=False, num_workers=0, seed=0, drop_last=True)
    assert not loader.persistent_workers
    assert epoch_ids(loader) == list(range(100, 106))


def test_flips_in_workers_are_fixed_by_the_seed(tmp_path: Path) -> None:
    ds = tiny_set(tmp_path)

    def boxes(seed: int) -> list:
        loader = build_loader(ds, batch_size=4, shuffle=False, num_workers=1, seed=seed)
        return [t["boxes"].tolist() for _, targets in loader for t in targets]

    assert boxes(3) == boxes(3)
    assert any(boxes(3) != boxes(s) for s in (4, 5, 6))


def test_worker_user_error_reaches_the_main_process_as_one_line(tmp_path: Path) -> None:
    loader = build_loader(tiny_set(tmp_path, missing=5), batch_size=2, shuffle=False, num_workers=1, seed=0)
    with pytest.raises(UserError) as caught:
        list(loader)
    text = str(caught.value)
    assert "\n" not in text and "Traceback" not in text
    assert text == f"{tmp_path / '5.png'}: images[5].file_name: image file not found"


def test_distributed_sampler_splits_by_rank_and_reshuffles_per_epoch(tmp_path: Path) -> None:
    ds = tiny_set(tmp_path)
    with pytest.raises(RuntimeError, match="process group"):
        build_loader(ds, batch_size=2, shuffle=True, num_workers=0, seed=0, distributed=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loader = build_loader(ds, batch_size=2, shuffle=True, num_workers=0, seed=1, distributed=True)
        assert isinstance(loader.sampler, DistributedSampler)
        assert loader.sampler.num_replicas == 1 and loader.sampler.rank == 0 and loader.sampler.seed == 1
        loader.sampler.set_epoch(0)
        epoch0 = epoch_ids(loader)
        assert epoch_ids(loader) == epoch0
        loader.sampler.set_epoch(1)
        epoch1 = epoch_ids(loader)
        assert sorted(epoch0) == sorted(epoch1) == list(range(100, 108)) and epoch0 != epoch1
    finally:
        dist.destroy_process_group()


def test_a_torchvision_detector_takes_the_batches_without_resizing_again(tmp_path: Path) -> None:
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    rng = np.random.default_rng(0)
    for name, (width, height) in {"wide.png": (90, 50), "tall.png": (30, 72)}.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(tmp_path / name)
    images = [
        {"id": 1, "file_name": "wide.png", "width": 90, "height": 50},
        {"id": 2, "file_name": "tall.png", "width": 30, "height": 72},
    ]
    annotations = [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [10, 10, 30, 20]}]  # image 2 has none
    path = tmp_path / "set.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 9, "name": "x"}]}))
    ds = CocoDetection(path, tmp_path, image_size=64, train=True)
    batch_images, batch_targets = next(iter(build_loader(ds, batch_size=2, shuffle=False, num_workers=0, seed=0)))

    backbone = resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=None,
        trainable_layers=5,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    torch.manual_seed(0)
    model = FCOS(backbone, num_classes=ds.num_classes, min_size=64, max_size=64)
    transformed, _ = model.transform(batch_images, batch_targets)
    assert transformed.image_sizes == [(35, 64), (64, 26)] == [tuple(image.shape[1:]) for image in batch_images]
    losses = model(batch_images, batch_targets)
    assert all(torch.isfinite(loss) for loss in losses.values())
