"""GPU execution checked on the CPU: host-device syncs in a training step, the autocast scope
(fp32 box coding, losses and boxes), train.amp's values, every parameter used in each method's
step (DDP without find_unused_parameters), learning-rate scaling and device-drawn masks."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

from raykd.config import ScheduleConfig, experiment_from_dict
from raykd.distill import METHODS, DistillConfig, build_distiller
from raykd.distill.inputs import LevelInputs
from raykd.distill.masks import random_spatial_mask
from raykd.models.precision import autocast_parts, conv_parts
from raykd.train import loop

pytestmark = pytest.mark.usefixtures("one_thread")
RAYKD = str(Path(loop.__file__).parents[2])
SYNCS = ("item", "__float__", "__bool__", "__int__", "nonzero", "tolist")


class SyncCounter:
    """Counts the Tensor calls that make the host wait for the device (``.item()``,
    ``float(t)``, ``bool(t)``, ``.nonzero()``, ``.tolist()``...) made from raykd's own code."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in SYNCS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))

    def _wrap(self, name, original):
        @functools.wraps(original)
        def counted(tensor, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(RAYKD):
                self.calls.append(f"{name} from {Path(caller).name}:{sys._getframe(1).f_lineno}")
            return original(tensor, *args, **kwargs)
        return counted


def _run(experiment_dict, **train):
    cfg = experiment_from_dict(experiment_dict(train={"epochs": 1, "steps_per_epoch": 3, "batch_size": 2, **train}))
    return loop._setup(cfg, None, log=lambda line: None)


@pytest.mark.parametrize("method", ["mgd", "samkd"])
def test_a_training_step_reads_nothing_back_but_every_log_every_steps(method, experiment_dict, tiny_teacher,
                                                                      monkeypatch, tmp_path):
    teacher = {**tiny_teacher, "fpn_channels": 32}
    cfg = experiment_from_dict(experiment_dict(
        teacher=teacher, distill={"method": method, "pyramid_scales": [1, 2], "mask_rule": "random"},
        train={"epochs": 1, "steps_per_epoch": 3, "batch_size": 2, "log_every": 100}))
    run = loop._setup(cfg, None, log=lambda line: None)
    counter = SyncCounter(monkeypatch)
    before_read = len(counter.calls)
    losses = loop.train_one_epoch(run, 1, progress=False)
    assert losses.steps == 3
    # the epoch's end: one finiteness check (bool) and one read of the sums (tolist), nothing per step
    assert sorted(c.split(" ")[0] for c in counter.calls[before_read:]) == ["__bool__", "tolist"], counter.calls


def test_non_finite_losses_are_still_caught(experiment_dict, monkeypatch):
    run = _run(experiment_dict, log_every=2)
    real = loop.train_step

    def poisoned(*args, **kwargs):
        total, step = real(*args, **kwargs)
        return total * float("nan"), step

    monkeypatch.setattr(loop, "train_step", poisoned)
    with pytest.raises(loop.NonFiniteLoss, match="epoch 1 \\(step 0"):
        loop.train_one_epoch(run, 1, progress=False)


@pytest.fixture
def fcos():
    torch.manual_seed(0)
    from raykd.config import ModelConfig
    from raykd.models import build_detector

    return build_detector(ModelConfig(arch="fcos", backbone="resnet18", fpn_channels=32), 4, 64)


def test_under_bf16_autocast_box_coding_losses_and_boxes_stay_fp32(fcos, monkeypatch):
    seen: dict[str, list[torch.dtype]] = {"decode": [], "head": []}
    decode = fcos.box_coder.decode
    stop = []

    def recording_decode(rel_codes, boxes):
        seen["decode"].append(rel_codes.dtype)
        if stop:
            raise StopIteration
        return decode(rel_codes, boxes)

    monkeypatch.setattr(fcos.box_coder, "decode", recording_decode)
    fcos.head.register_forward_hook(lambda m, a, out: seen["head"].append(out["cls_logits"].dtype))
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([1])}] * 2

    fcos.train()
    with autocast_parts(conv_parts(fcos), "cpu", torch.bfloat16):
        losses = fcos(images, targets)
    assert all(v.dtype == torch.float32 for v in losses.values())
    assert seen["head"] == [torch.bfloat16]  # the convolutions did run in bf16

    fcos.eval()
    heads: list = []
    handle = fcos.head.register_forward_hook(lambda m, a, out: heads.append(out))
    with torch.no_grad(), autocast_parts(conv_parts(fcos), "cpu", torch.bfloat16):
        boxes = fcos(images)
    handle.remove()
    assert seen["decode"] and set(seen["decode"]) == {torch.float32}
    assert all(d["boxes"].dtype == torch.float32 and d["scores"].dtype == torch.float32 for d in boxes)

    # the same head outputs decoded again in plain fp32 give the same boxes
    with torch.no_grad():
        batch, _ = fcos.transform(images)
        feats = list(fcos.backbone(batch.tensors).values())
        anchors = fcos.anchor_generator(batch, feats)
        split = [f.shape[-2] * f.shape[-1] for f in feats]
        per_level = {k: list(v.float().split(split, dim=1)) for k, v in heads[0].items()}  # as the scope returns them
        again = fcos.postprocess_detections(per_level, [list(a.split(split)) for a in anchors], batch.image_sizes)
    for ours, ref in zip(boxes, fcos.transform.postprocess(again, batch.image_sizes, [(64, 64), (48, 64)])):
        assert torch.equal(ours["boxes"], ref["boxes"])

    # what the scope prevents: the whole model under autocast decodes bf16 deltas
    seen["decode"].clear()
    stop.append(True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(StopIteration):
        fcos(images)
    assert seen["decode"] == [torch.bfloat16]


@pytest.mark.parametrize("value, mode", [(True, "bf16"), (False, "off"), ("fp16", "fp16"), ("off", "off")])
def test_train_amp_values_and_the_old_boolean(value, mode):
    assert ScheduleConfig(amp=value).amp == mode


def test_train_amp_refuses_other_values():
    with pytest.raises(ValueError, match="bf16"):
        ScheduleConfig(amp="fp8")


def _tiny_step(method: str) -> loop.DistillStep:
    from raykd.config import ModelConfig
    from raykd.models import build_detector

    torch.manual_seed(0)
    student = build_detector(ModelConfig(arch="fcos", backbone="resnet18", fpn_channels=32), 4, 64)
    teacher = build_detector(ModelConfig(arch="fcos", backbone="resnet18", fpn_channels=64), 4, 64).eval()
    teacher.requires_grad_(False)
    distiller = build_distiller(DistillConfig(method=method), 32, 64, ["0", "1", "2", "p6", "p7"], 4)
    return loop.DistillStep(student, distiller, teacher if distiller is not None else None)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_step_uses_every_trained_parameter(method):
    """What lets DDP run without find_unused_parameters."""
    module = _tiny_step(method)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([1])}] * 2
    total, _ = module(images, targets)
    total.backward()
    unused = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused


def test_linear_lr_scaling_and_the_warning_without_it():
    lines: list[str] = []
    tcfg = ScheduleConfig(lr=0.01, batch_size=2, reference_batch=16)
    assert loop.scaled_schedule(tcfg, 4, lines.append).lr == pytest.approx(0.01 * 8 / 16)
    assert not lines
    off = tcfg.model_copy(update={"lr_scaling": "none"})
    assert loop.scaled_schedule(off, 4, lines.append).lr == 0.01
    assert len(lines) == 1 and "effective batch 8" in lines[0] and "reference_batch 16" in lines[0]
    assert loop.scaled_schedule(ScheduleConfig(lr=0.01, batch_size=2), 4, lines.append).lr == 0.01


def test_masks_from_a_device_generator_are_per_rank_and_reproducible():
    feat = torch.zeros(2, 8, 10, 12)
    draw = lambda seed: random_spatial_mask(feat, 0.5, torch.Generator("cpu").manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))
    torch.manual_seed(0)
    reference = random_spatial_mask(feat, 0.5)
    torch.manual_seed(0)
    assert torch.equal(reference, (torch.rand(2, 1, 10, 12) <= 0.5).float())


def test_distiller_passes_its_generator_to_the_losses():
    distiller = build_distiller(DistillConfig(method="mgd"), 8, 8, ["0"], 4)
    seen = []
    real = distiller.losses["0"].forward
    distiller.losses["0"].forward = lambda inputs: (seen.append(inputs.generator), real(inputs))[1]
    distiller.generator = torch.Generator().manual_seed(0)
    feats = {"0": torch.rand(1, 8, 4, 4)}
    distiller(feats, feats, None, None, [torch.zeros(0, 4)], [(16, 16)])
    assert seen == [distiller.generator]
    assert LevelInputs.__dataclass_fields__["generator"].default is None


def test_teacher_cache_keys_written_before_the_gpu_keys_stay_valid():
    from raykd.train.teacher import _schedule_key

    new_keys = {"log_every", "lr_scaling", "reference_batch", "compile", "channels_last", "evaluator"}
    before = {k: v for k, v in ScheduleConfig(amp="bf16").model_dump().items()
              if k not in new_keys | {"output_dir", "device", "threads"}} | {"amp": True}
    assert _schedule_key(ScheduleConfig(amp=True, log_every=5, compile=True)) == before
    assert _schedule_key(ScheduleConfig(reference_batch=16))["reference_batch"] == 16


def test_channels_last_trains(experiment_dict):
    run = _run(experiment_dict, channels_last=True)
    conv = run.student.backbone.body.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert loop.train_one_epoch(run, 1, progress=False).steps == 3


def test_compile_covers_the_student_convolutions_and_each_loss(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    module = _tiny_step("mgd")
    loop.compile_parts(module.student, module.distiller)
    expected = conv_parts(module.student) + list(module.distiller.losses.values())
    assert len(compiled) == len(expected) and all(a is b for a, b in zip(compiled, expected))
    assert set(module.student.state_dict()) == set(_tiny_step("mgd").student.state_dict())


@pytest.mark.parametrize("cpus, gpus, workers", [(4, 1, 3), (4, 0.25, 3), (1, 1, 0), (16, 1, 8), (4, 0, 0)])
def test_loader_workers_default_from_the_trial_resources(cpus, gpus, workers):
    from raykd.search.trainable import trial_overrides

    found = trial_overrides({}, {"data": {}}, threads=None, cpus_per_worker=cpus, gpus_per_worker=gpus)
    assert found["data.num_workers"] == workers
    kept = trial_overrides({}, {"data": {"num_workers": 2}}, threads=None, cpus_per_worker=cpus, gpus_per_worker=gpus)
    assert "data.num_workers" not in kept


def test_training_images_reach_the_device_as_uint8_and_become_the_same_floats(tiny_data):
    from raykd.config import DataConfig
    from raykd.data import CocoDetection
    from raykd.data.transforms import device_image
    from raykd.train.setup import build_datasets

    cfg = DataConfig(train={"annotations": str(tiny_data / "annotations/train.json"),
                            "images": str(tiny_data / "images/train")},
                     val={"annotations": str(tiny_data / "annotations/val.json"), "images": str(tiny_data / "images/val")},
                     image_size=64)
    train, _ = build_datasets(cfg, tiny_data / "cache")
    floats = CocoDetection(tiny_data / "annotations/train.json", tiny_data / "images/train", 64, train=False)
    train.transforms = floats.transforms.__class__([t for t in floats.transforms.transforms[:-1]])  # no flip
    image, _ = train[0]
    assert image.dtype == torch.uint8
    assert torch.equal(device_image(image, torch.device("cpu")), floats[0][0])


def test_loader_workers_flip_differently_per_rank_in_the_same_order():
    from raykd.data.loader import build_loader

    data = list(range(8))
    loaders = [build_loader(data, 2, shuffle=True, num_workers=0, seed=3, rank=r) for r in (0, 1)]
    assert loaders[0].generator.initial_seed() != loaders[1].generator.initial_seed()  # the workers' flips
    assert loaders[0].sampler.generator.initial_seed() == loaders[1].sampler.generator.initial_seed()  # the order
    assert build_loader(data, 2, shuffle=True, num_workers=0, seed=3).generator.initial_seed() == \
        loaders[0].generator.initial_seed()  # rank 0 as before
