"""Pretrained weights through torchvision's weights API (offline, a temporary TORCH_HOME),
state-dict compatibility with torchvision's builders, frozen norms and stages, label spaces."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torchvision.models import ResNet18_Weights, resnet18
from torchvision.models import detection as tvd
from torchvision.ops.misc import FrozenBatchNorm2d

from raykd.config import ModelConfig
from raykd.errors import UserError
from raykd.models import build_detector
from raykd.models.builders import build_pretrained
from raykd.models.labels import data_space, matched_space
from raykd.models.weights import CLASS_LAYERS, cache_file
from raykd.train.evaluate import to_coco_results

COCO = tvd.FCOS_ResNet50_FPN_Weights.COCO_V1

TORCHVISION_BUILDERS = {
    "fcos": tvd.fcos_resnet50_fpn, "retinanet": tvd.retinanet_resnet50_fpn,
    "retinanet_v2": tvd.retinanet_resnet50_fpn_v2, "faster_rcnn": tvd.fasterrcnn_resnet50_fpn,
    "faster_rcnn_v2": tvd.fasterrcnn_resnet50_fpn_v2, "mask_rcnn": tvd.maskrcnn_resnet50_fpn,
    "mask_rcnn_v2": tvd.maskrcnn_resnet50_fpn_v2,
}


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache; any download attempt fails as it would offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch_home"


def _cache(weights, state: dict) -> dict:
    """Put ``state`` where torch hub looks for ``weights``' file."""
    path = cache_file(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def _random_state(module: torch.nn.Module) -> dict:
    """The module's state dict with every float tensor filled with fresh random values."""
    return {k: (torch.randn_like(v) if v.is_floating_point() else v.clone()) for k, v in module.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(TORCHVISION_BUILDERS))
def test_every_arch_is_state_dict_compatible_with_torchvisions_builder(arch):
    ours = build_detector(ModelConfig(arch=arch, backbone="resnet50"), 5, 64)
    theirs = TORCHVISION_BUILDERS[arch](weights=None, weights_backbone=None, num_classes=5)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(ours.state_dict())  # strict, both ways
    ours.load_state_dict(theirs.state_dict())


def test_backbone_enum_loads_from_the_hub_cache(torch_home):
    stored = _cache(ResNet18_Weights.IMAGENET1K_V1, _random_state(resnet18()))
    cfg = ModelConfig(arch="fcos", backbone="resnet18", fpn_channels=32, backbone_weights="ResNet18_Weights.IMAGENET1K_V1")
    model, space, kept = build_pretrained(cfg, ["a", "b"], [1, 2], 64, key="student")
    body = model.backbone.body.state_dict()
    assert all(torch.equal(body[k], v) for k, v in stored.items() if not k.startswith("fc.") and k in body)
    assert sum(1 for k in body if not k.endswith("num_batches_tracked")) == \
        sum(1 for k in stored if not k.startswith("fc.") and not k.endswith("num_batches_tracked"))
    assert space.num_classes == 3 and kept
    # torchvision's rule for pretrained backbones: frozen BN, 3 trainable stages
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert not model.backbone.body.layer1[0].conv1.weight.requires_grad
    assert model.backbone.body.layer2[0].conv1.weight.requires_grad


def test_detector_enum_keeps_the_coco_head_when_the_names_match(torch_home):
    reference = tvd.fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    stored = _cache(COCO, _random_state(reference))
    cfg = ModelConfig(arch="fcos", backbone="resnet50", weights="FCOS_ResNet50_FPN_Weights.COCO_V1")
    lines = []
    model, space, kept = build_pretrained(cfg, ["car", "person"], [7, 9], 64, key="teacher", log=lines.append)
    assert kept and not lines and space.num_classes == 91
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in stored.items() if k in own)
    assert isinstance(model.backbone.body.layer3[0].bn1, FrozenBatchNorm2d)
    # other classes: only the class-specific layers are re-initialised, and one line says so
    model, space, kept = build_pretrained(cfg, ["circle", "square"], [1, 2], 64, key="teacher", log=lines.append)
    assert not kept and space.num_classes == 3 and len(lines) == 1 and "re-initialised" in lines[0]
    own = model.state_dict()
    for name, value in stored.items():
        if name.startswith(CLASS_LAYERS):
            assert own[name].shape != value.shape
        elif name in own:
            assert torch.equal(own[name], value), name


def test_file_weights_raykd_checkpoint_and_torchvision_state_dict(tmp_path):
    cfg = ModelConfig(arch="retinanet", backbone="resnet18", fpn_channels=32)
    source = build_detector(cfg, 3, 64)
    state = _random_state(source)
    torch.save({"model": state, "metrics": {}, "categories": ["__background__", "a", "b"]}, tmp_path / "raykd.pt")
    torch.save(state, tmp_path / "plain.pth")
    for name in ("raykd.pt", "plain.pth"):
        with_weights = cfg.model_copy(update={"weights": str(tmp_path / name)})
        model, space, kept = build_pretrained(with_weights, ["a", "b"], [4, 5], 64, key="student")
        assert kept and space.num_classes == 3
        own = model.state_dict()  # frozen BN (pretrained weights): no num_batches_tracked
        assert all(torch.equal(own[k], v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
        assert with_weights.norm_layer == "frozen_bn" and with_weights.trainable_stages == 3


def test_missing_weights_offline_name_the_expected_cache_file(torch_home):
    cfg = ModelConfig(arch="fcos", backbone="resnet18", fpn_channels=32, backbone_weights="ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(UserError) as err:
        build_pretrained(cfg, ["a"], [1], 64, key="student")
    assert str(cache_file(ResNet18_Weights.IMAGENET1K_V1)) in str(err.value)
    assert err.value.key == "student.backbone_weights" and "\n" not in str(err.value)
    with pytest.raises(UserError, match="unknown torchvision weights"):
        build_pretrained(cfg.model_copy(update={"backbone_weights": "ResNet18_Weights.NOPE"}), ["a"], [1], 64,
                         key="student")


def test_frozen_bn_and_frozen_stages_stay_bit_identical_after_a_step(torch_home):
    _cache(ResNet18_Weights.IMAGENET1K_V1, _random_state(resnet18()))
    cfg = ModelConfig(arch="fcos", backbone="resnet18", fpn_channels=32, backbone_weights="ResNet18_Weights.IMAGENET1K_V1")
    model, _, _ = build_pretrained(cfg, ["a", "b"], [1, 2], 64, key="student")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])}] * 2
    sum(model(images, targets).values()).backward()
    optimizer.step()
    after = model.state_dict()
    frozen_bn = {f"{name}.{buf}" for name, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)
                 for buf in ("weight", "bias", "running_mean", "running_var")}
    assert len(frozen_bn) > 40
    frozen = frozen_bn | {k for k in before if k.startswith(("backbone.body.conv1.", "backbone.body.layer1."))}
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["backbone.body.layer4.1.conv2.weight"], after["backbone.body.layer4.1.conv2.weight"])


def test_coco_label_map_round_trips():
    categories = COCO.meta["categories"]
    names, cat_ids = ["car", "dog", "person"], [5, 11, 20]  # the data set's own ids, not COCO's
    space = matched_space(categories, names, cat_ids)
    assert space.kept and space.num_classes == 91
    model_labels = space.model_labels(torch.tensor([1, 2, 3, 0]))
    assert [categories[i] for i in model_labels[:3].tolist()] == names and model_labels[3] == 0
    outputs = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4), "scores": torch.tensor([0.9, 0.8, 0.7, 0.6]),
                "labels": torch.cat([model_labels[:3], torch.tensor([categories.index("zebra")])])}]
    targets = [{"image_id": 1, "orig_size": torch.tensor([20, 20])}]
    results = to_coco_results(outputs, targets, [(10, 10)], space.label_to_cat_id)
    assert [r["category_id"] for r in results] == cat_ids  # zebra, absent from the data set, dropped
    assert matched_space(categories, ["car", "circle"], [1, 2]) is None
    assert data_space(["a"], [3]).identity


def test_mask_rcnn_is_taken_as_a_student_and_as_a_teacher():
    from raykd.config import StudentConfig, TeacherConfig

    assert StudentConfig(arch="mask_rcnn_v2").arch == "mask_rcnn_v2"  # trains on instance masks (tests/models/test_mask_rcnn.py)
    assert TeacherConfig(arch="mask_rcnn", backbone="resnet50", weights="MaskRCNN_ResNet50_FPN_Weights.COCO_V1").weights
    assert TeacherConfig(arch="mask_rcnn", train={"epochs": 1}).train.epochs == 1


@pytest.mark.parametrize("value, words", [("nope.pt", "checkpoint file not found"),
                                          ("ResNet18_Weights.NOPE", "unknown torchvision weights")])
def test_train_refuses_bad_weights_before_writing_anything(write_experiment, tmp_path, value, words):
    import subprocess
    import sys

    path = write_experiment(student={"backbone_weights": value})
    proc = subprocess.run([sys.executable, "-m", "raykd.train", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "student.backbone_weights" in proc.stderr and words in proc.stderr
    assert not (tmp_path / "run").exists()


def test_teacher_whose_head_does_not_fit_is_refused_for_logit_methods_only(write_experiment, tmp_path):
    from raykd.config import load_experiment
    from raykd.train.setup import build_pair

    model = ModelConfig(arch="fcos", backbone="resnet18", fpn_channels=32)
    other = ["__background__", "cat", "dog", "cow", "pig"]  # not the synthetic set's shapes
    torch.save({"model": build_detector(model, len(other), 64).state_dict(), "categories": other},
               tmp_path / "other.pt")
    teacher = {**model.model_dump(), "weights": str(tmp_path / "other.pt")}
    names, cat_ids = ["circle", "square"], [1, 3]
    cfg = load_experiment(write_experiment(teacher=teacher, distill={"method": "samkd"}))
    with pytest.raises(UserError, match="add a teacher.train block") as err:
        build_pair(cfg, names, cat_ids, None, with_teacher=True, log=lambda line: None)
    assert err.value.key == "teacher.train"
    lines = []
    cfg = load_experiment(write_experiment(teacher=teacher, distill={"method": "mgd"}))  # features only
    pair = build_pair(cfg, names, cat_ids, None, with_teacher=True, log=lines.append)
    assert pair.teacher_space.num_classes == pair.space.num_classes == 3 and len(lines) == 1
    cfg = load_experiment(write_experiment(teacher={**teacher, "train": {"epochs": 1}}, distill={"method": "samkd"}))
    assert build_pair(cfg, names, cat_ids, None, with_teacher=True, log=lambda line: None).teacher is not None


def test_training_in_a_kept_pretrained_numbering_maps_labels_both_ways(write_experiment, tmp_path, tiny_data,
                                                                     monkeypatch):
    import json

    import raykd.train.loop as loop
    from raykd.config import load_experiment
    from raykd.train.loop import fit

    files = sorted(json.loads((tiny_data / "annotations/train.json").read_text())["categories"], key=lambda c: c["id"])
    names, cat_ids = [c["name"] for c in files], [c["id"] for c in files]
    seen_labels, to_cat = set(), {}

    def forward_taps(student, teacher, images, targets, **kwargs):
        seen_labels.update(int(label) for t in targets for label in t["labels"])
        return original_taps(student, teacher, images, targets, **kwargs)

    def predict(model, loader, device, label_to_cat_id, **kwargs):
        to_cat.update({label: label_to_cat_id(label) for label in range(len(categories))})
        return original_predict(model, loader, device, label_to_cat_id, **kwargs)

    original_taps, original_predict = loop.forward_taps, loop.predict
    monkeypatch.setattr(loop, "forward_taps", forward_taps)
    monkeypatch.setattr(loop, "predict", predict)
    categories = ["__background__", "N/A", *reversed(names), "zebra"]  # another order, a gap, an extra class
    model = ModelConfig(arch="fcos", backbone="resnet18", fpn_channels=32)
    torch.save({"model": build_detector(model, len(categories), 64).state_dict(), "categories": categories},
               tmp_path / "pretrained.pt")
    cfg = load_experiment(write_experiment(student={"weights": str(tmp_path / "pretrained.pt")},
                                           train={"epochs": 1, "steps_per_epoch": 2}))
    states = []
    metrics = fit(cfg, on_epoch_end=lambda m, make_state: states.append(make_state()), progress=False,
                  log=lambda line: None)
    assert states[0]["categories"] == categories  # the head kept its numbering
    assert seen_labels and seen_labels <= {categories.index(name) for name in names}  # targets mapped in
    assert [to_cat[categories.index(name)] for name in names] == cat_ids  # predictions mapped out
    assert to_cat[categories.index("zebra")] is None and to_cat[1] is None
    assert 0.0 <= metrics.score("bbox_mAP") <= 1.0
