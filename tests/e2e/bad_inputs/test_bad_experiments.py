"""Bad experiment files (and teacher checkpoints) given to ``python -m raykd.train``: refused before
any output is written, any teacher trained or Ray started."""

from __future__ import annotations

import pickle
import random

import pytest
import torch

MGD = {"method": "mgd"}

# (id, experiment sections, key named, words of what was expected)
CASES = [
    ("unknown-student-arch", {"student": {"arch": "yolo"}}, "student.arch",
     "Input should be 'fcos', 'retinanet', 'retinanet_v2', 'faster_rcnn', 'faster_rcnn_v2', 'mask_rcnn' or "
     "'mask_rcnn_v2' (got 'yolo')"),
    ("unknown-backbone", {"student": {"backbone": "resnet9"}}, "student.backbone",
     "Input should be 'resnet18', 'resnet34'"),
    ("fcos-fpn-not-multiple-of-32", {"student": {"fpn_channels": 48}}, "student",
     "fpn_channels must be a multiple of 32, got 48"),
    ("negative-epochs", {"train": {"epochs": -1}}, "train.epochs", "greater than or equal to 1 (got -1)"),
    ("lr-as-a-word", {"train": {"lr": "fast"}}, "train.lr", "valid number, unable to parse string as a number"),
    ("unknown-key", {"train": {"epoch": 3}}, "train.epoch", "unknown key"),
    ("unknown-optimizer", {"train": {"optimizer": "lion"}}, "train.optimizer", "Input should be 'sgd' or 'adamw'"),
    ("mask-ratio-above-one", {"distill": {"method": "mgd", "mask_ratio": 1.5}}, "distill.mask_ratio",
     "less than or equal to 1 (got 1.5)"),
    ("distillation-without-teacher", {"distill": MGD, "teacher": None}, "(top level)",
     "distill.method 'mgd' needs a teacher block"),
    ("synthetic-images-too-small", {"data": {"train": None, "val": None,
                                             "synthetic": {"out_dir": "syn", "image_size": 48}}},
     "data.synthetic.image_size", "greater than or equal to 64 (got 48)"),
    ("loss-ratio-beside-alpha", {"distill": {**MGD, "loss_ratio": 0.5, "alpha": 1e-6}}, "distill",
     "distill.loss_ratio sets the loss weights: give it or distill.alpha, not both"),
    ("loss-ratio-zero", {"distill": {**MGD, "loss_ratio": 0}}, "distill.loss_ratio", "greater than 0"),
    ("teacher-without-checkpoint-or-train", {"distill": MGD, "teacher": {"arch": "fcos", "fpn_channels": 64}},
     "teacher", "expected teacher.checkpoint, teacher.weights or a teacher.train block"),
]


@pytest.mark.parametrize(("sections", "key", "what"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_experiment_file(bench, sections, key, what):
    experiment = bench.experiment(**sections)
    bench.check_refused("train", [experiment], where=[str(experiment), key], what=what)


def test_experiment_without_data_section(bench):
    experiment = bench.experiment(drop=("data",))
    bench.check_refused("train", [experiment], where=[str(experiment), "data"], what="required key is missing")


def test_experiment_file_missing(bench):
    bench.check_refused("train", [bench.root / "nope.yaml"], where=["nope.yaml"], what="file not found")


def test_experiment_with_python_tag_runs_nothing(bench):
    marker = bench.root / "MARKER"
    experiment = bench.root / "evil.yaml"
    experiment.write_text(f"data: !!python/object/apply:os.system ['touch {marker}']\n")
    bench.check_refused("train", [experiment], where=[str(experiment)], what="not valid YAML at line 1")
    assert not marker.exists()


@pytest.mark.parametrize(("split", "key", "what"), [
    pytest.param("annotations", "data.train.annotations", "annotation file not found", id="annotations-file-missing"),
    pytest.param("images", "data.train.images", "image folder not found", id="images-folder-missing"),
])
def test_data_paths_missing(bench, tiny_data, split, key, what):
    train = {"annotations": str(tiny_data / "annotations/train.json"), "images": str(tiny_data / "images/train")}
    train[split] = "missing_" + split  # relative: resolved against the experiment's folder
    experiment = bench.experiment(data={"train": train})
    bench.check_refused("train", [experiment], where=[str(bench.root / train[split]), key], what=what)


# ---- teacher checkpoints: read with weights_only=True, refused before anything starts ----


class Payload:
    """Unpickling this runs ``open(path, "w")``: creates ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _truncated_checkpoint(path):
    torch.save({"model": {"w": torch.zeros(64)}}, path)
    path.write_bytes(path.read_bytes()[:300])


def _mismatched_checkpoint(path):
    torch.save({"model": {"backbone.body.conv1.weight": torch.zeros(3, 3)}, "metrics": {}}, path)


@pytest.mark.parametrize(("write", "what"), [
    pytest.param(None, "teacher checkpoint not found and no teacher.train block to train one",
                 id="teacher-checkpoint-missing"),
    *(pytest.param(lambda p, seed=seed: p.write_bytes(random.Random(seed).randbytes(64) + b"garbage"),
                   "cannot read checkpoint: expected a PyTorch file of tensors",
                   id=f"teacher-checkpoint-random-bytes-{seed}") for seed in range(3)),
    pytest.param(_truncated_checkpoint, "cannot read checkpoint (RuntimeError: PytorchStreamReader failed",
                 id="teacher-checkpoint-truncated"),
    pytest.param(lambda p: torch.save([1, 2, 3], p), "expected a state dict or {'model': state dict}, got a list",
                 id="teacher-checkpoint-not-a-state-dict"),
    pytest.param(_mismatched_checkpoint, "checkpoint does not match the configured model",
                 id="teacher-checkpoint-of-another-model"),
])
def test_bad_teacher_checkpoint(bench, write, what):
    if write is not None:
        write(bench.teacher)
    experiment = bench.experiment(distill=MGD)
    bench.check_refused("train", [experiment], where=[str(bench.teacher), "teacher.checkpoint"], what=what)


def test_teacher_checkpoint_with_code_is_refused_unrun(bench):
    # The payload is real: an unrestricted unpickler creates its marker file ...
    proof = bench.root.parent / f"{bench.root.name}-proof"
    pickle.loads(pickle.dumps({"model": Payload(proof)}, protocol=2))
    assert proof.exists()
    proof.unlink()
    # ... and the same object in the teacher checkpoint is refused without running it.
    marker = bench.root / "MARKER"
    torch.save({"model": Payload(marker)}, bench.teacher)
    experiment = bench.experiment(distill=MGD)
    bench.check_refused("train", [experiment], where=[str(bench.teacher), "teacher.checkpoint"],
                  what="refused it without running anything (Unsupported global: GLOBAL io.open")
    assert not marker.exists()


def test_search_refuses_a_teacher_checkpoint_with_code(bench):
    marker = bench.root / "MARKER"
    torch.save({"model": Payload(marker)}, bench.teacher)
    space = bench.space()
    bench.check_refused("search", [space, "--storage", bench.storage], where=[str(bench.teacher), "teacher.checkpoint"],
                  what="refused it without running anything (Unsupported global: GLOBAL io.open")
    assert not marker.exists()
