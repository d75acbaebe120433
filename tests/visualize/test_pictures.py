"""``python -m raykd.visualize``: the pictures show the tensors the losses used, for every method
and detector family; bad flags are one-line errors."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from raykd.config import ModelConfig, load_experiment
from raykd.distill import METHODS, flat_terms
from raykd.distill.fgd import box_masks
from raykd.errors import run_cli
from raykd.models import build_detector
from raykd.models.taps import forward_taps
from raykd.visualize.__main__ import PROG, main
from raykd.visualize.collect import collect
from raykd.visualize.draw import figure
from raykd.visualize.render import prepare

# FCOS heads use GroupNorm(32): with one image, 32 channels would leave one value per group on 1×1 maps.
STUDENT_FPN, TEACHER_FPN = 64, 96


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teachers(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """An untrained teacher checkpoint per detector family (weights are irrelevant to what is tested)."""
    classes = len(json.loads((tiny_data / "annotations/val.json").read_text())["categories"]) + 1
    folder = tmp_path_factory.mktemp("teachers")
    out = {}
    for arch in ("fcos", "retinanet", "faster_rcnn"):
        torch.manual_seed(0)
        model = build_detector(ModelConfig(arch=arch, backbone="resnet18", fpn_channels=TEACHER_FPN), classes, 64)
        out[arch] = folder / f"{arch}.pt"
        torch.save({"model": model.state_dict(), "metrics": {}}, out[arch])
    return out


@pytest.fixture
def experiment(write_experiment, teachers):
    def write(arch: str = "fcos", **distill) -> Path:
        return write_experiment(
            student={"arch": arch, "backbone": "resnet18", "fpn_channels": STUDENT_FPN},
            teacher={"arch": arch, "backbone": "resnet18", "fpn_channels": TEACHER_FPN,
                     "checkpoint": str(teachers[arch])},
            distill={"levels": ["0", "1"], **distill})
    return write


def _view(path: Path, seed: int = 3, student=None):
    """(config, dataset, models, view of the first val image with masks drawn after ``seed``)."""
    cfg = load_experiment(path)
    dataset, models = prepare(cfg, path, "val", student)
    return cfg, dataset, models, collect(models, *dataset[0], seed=seed)


def _drawn(fig, label: str) -> np.ndarray:
    """The array drawn in the axes labelled ``label``."""
    axes = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(axes) == 1, (label, sorted(ax.get_label() for ax in fig.axes))
    return np.asarray(axes[0].images[0].get_array())


def _level(view, name):
    return next(level for level in view.levels if level.level == name)


def test_mgd_picture_shows_the_mask_the_loss_used(experiment):
    cfg, _, models, view = _view(experiment(method="mgd", alpha=1e-3, mask_ratio=0.5))
    fig = figure(view, cfg.distill, "test")
    for name in ("0", "1"):
        level = _level(view, name)
        mask = level.notes["mask_spatial"]  # [1, H, W]
        np.testing.assert_array_equal(_drawn(fig, f"{name}/mask_spatial"), mask[0].numpy())
        assert 0 < mask.mean() < 1
        # The loss of this forward pass, recomputed from the recorded mask: the same number.
        loss = models.distiller.losses[name]
        student, teacher = level.student[None], level.teacher[None]
        with torch.no_grad():
            expected = cfg.distill.alpha * (loss.generation(student * mask[None]) - teacher).pow(2).sum()
        assert view.losses[f"mgd_{name}"] == pytest.approx(float(expected), rel=1e-5)
        np.testing.assert_allclose(_drawn(fig, f"{name}/norm_reconstruction"),
                                   level.notes["reconstruction"].norm(dim=0).numpy(), rtol=1e-6)


def _training_losses(models, image, target, seed: int) -> dict[str, float]:
    """The distiller's terms as the trainer computes them (no recorder) after ``seed``."""
    with torch.no_grad():
        taps = forward_taps(models.student, models.teacher, [image], [target],
                            with_logits=models.distiller.needs_logits)
        torch.manual_seed(seed)
        terms = flat_terms(models.distiller(taps.student_feats, taps.teacher_feats, taps.student_logits,
                                 taps.teacher_logits, taps.boxes, taps.image_sizes))
    return {name: float(value) for name, value in terms.items()}


@pytest.mark.parametrize("method", ["mgd", "dmkd", "samkd"])
def test_masks_follow_the_seed_and_recording_changes_no_draw(experiment, method):
    cfg, dataset, models, first = _view(experiment(method=method, alpha=1e-3, mask_rule="random"), seed=3)
    again = collect(models, *dataset[0], seed=3)
    other = collect(models, *dataset[0], seed=4)
    key = "g1/mask_spatial" if method == "samkd" else "mask_spatial"
    masks = [v.levels[0].notes[key] for v in (first, again, other)]
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])
    assert _training_losses(models, *dataset[0], seed=3) == pytest.approx(first.losses, rel=1e-6)


def test_dmkd_and_samkd_losses_equal_their_recorded_masks_and_reconstructions(experiment):
    for method, term in (("dmkd", "dmkd"), ("samkd", "sfd")):
        cfg, _, models, view = _view(experiment(method=method, alpha=1e-3, pyramid_scales=[1, 2], sld=False))
        fig = figure(view, cfg.distill, "test")
        for level in view.levels:
            module = models.distiller.losses[level.level]
            student, teacher = level.student[None], level.teacher[None]
            grids = [""] if method == "dmkd" else ["g1/", "g2/"]
            per_grid = []
            for i, scope in enumerate(grids):
                keep_s, keep_c = (level.notes[f"{scope}mask_{kind}"][None] for kind in ("spatial", "channel"))
                recon = module.reconstruction if method == "dmkd" else module.reconstructions[i]
                with torch.no_grad():
                    per_grid.append(recon(student, teacher, keep_s, keep_c))
                np.testing.assert_array_equal(_drawn(fig, f"{level.level}/{scope}mask_spatial"), keep_s[0, 0].numpy())
            expected = cfg.distill.alpha * torch.stack(per_grid).mean()
            assert view.losses[f"{term}_{level.level}"] == pytest.approx(float(expected), rel=1e-5)
            strip = _drawn(fig, f"{level.level}/mask_channel")  # one row per cell of every grid
            assert strip.shape == (sum(int(g[1:-1] or 1) ** 2 for g in grids), TEACHER_FPN)
            np.testing.assert_array_equal(strip[0], level.notes[f"{grids[0]}mask_channel"][:, 0, 0].numpy())


def test_fgd_picture_shows_its_box_masks(experiment):
    cfg, _, models, view = _view(experiment(method="fgd"))
    fig = figure(view, cfg.distill, "test")
    for level in view.levels:
        fg, bg = box_masks([view.boxes], [tuple(view.image.shape[-2:])], level.teacher[None])
        np.testing.assert_array_equal(_drawn(fig, f"{level.level}/mask_fg"), fg[0, 0].numpy())
        np.testing.assert_array_equal(_drawn(fig, f"{level.level}/mask_bg"), bg[0, 0].numpy())
        assert fg.sum() > 0


# Panels each method must show on a level (besides attention and feature norms); "none" has no
# align conv, so S' and T of different widths are not subtracted.
EXPECTED = {"mgd": ("mask_spatial", "norm_reconstruction", "error_reconstruction"),
            "fgd": ("mask_fg", "mask_bg"),
            "dmkd": ("mask_spatial", "mask_channel", "norm_reconstruction"),
            "amd": ("mask_spatial", "norm_reconstruction"),
            "samkd": ("g1/mask_spatial", "g2/mask_spatial", "g4/mask_spatial", "mask_channel",
                      "norm_g4/reconstruction", "region_weights"),
            "none": (), "feature_mse": ("error_student",), "cwd": ("error_student",),
            "pkd": ("error_student",)}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_renders(experiment, method):
    cfg, _, _, view = _view(experiment(method=method))
    fig = figure(view, cfg.distill, "test")
    labels = {ax.get_label() for ax in fig.axes}
    assert {"detections/ground_truth", "detections/teacher", "detections/student"} <= labels
    for level in ("0", "1"):
        expected = ("attention_spatial", "attention_channel", "norm_student", "norm_teacher",
                    *EXPECTED.get(method, ()))
        assert {f"{level}/{key}" for key in expected} <= labels, sorted(labels)
    for level in view.levels:  # whatever a method records (also one added later) is drawn
        for key in level.notes:
            name = key.rsplit("/", 1)[-1]
            if name in ("mask_spatial", "mask_fg", "mask_bg", "region_weights"):
                assert f"{level.level}/{key}" in labels, (key, sorted(labels))
            elif name.startswith("reconstruction"):
                assert {f"{level.level}/norm_{key}", f"{level.level}/error_{key}"} <= labels, (key, sorted(labels))


@pytest.mark.parametrize("arch", ["fcos", "retinanet", "faster_rcnn"])
def test_every_detector_family_renders_a_png(experiment, arch, tmp_path):
    out = tmp_path / "pictures"
    code, stdout, stderr = _answer([str(experiment(arch, method="samkd", pyramid_scales=[1, 2])),
                                    "--out", str(out), "--images", "1"])
    assert code == 0, stderr
    files = sorted(out.iterdir())
    assert len(files) == 1 and [str(f) for f in files] == stdout.split()
    for file in files:
        assert file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _answer(argv: list[str]) -> tuple[int, str, str]:
    """``python -m raykd.visualize ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(lambda _argv: main(argv), PROG)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _refused(argv: list[str], *names: str) -> str:
    code, _, stderr = _answer(argv)
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr and "usage:" not in stderr, stderr
    for name in names:
        assert name in stderr, (name, stderr)
    return stderr


def test_bad_flags_are_one_line_errors(experiment, tmp_path):
    exp = str(experiment(method="mgd"))
    out = tmp_path / "pictures"
    _refused([exp, "--out", str(out), "--images", "0"], "--images", "positive")
    _refused([exp, "--out", str(out), "--images", "two"], "--images", "invalid int")
    _refused([exp, "--out", str(out), "--split", "test"], "--split", "'val'")
    _refused([exp], "--out")
    _refused([exp, "--out", str(out), "--colour"], "unrecognized arguments: --colour")
    _refused([str(tmp_path / "missing.yaml"), "--out", str(out)], "missing.yaml")
    _refused([exp, "--out", str(out), "--set", "distill.method=magic"], "distill.method")
    _refused([exp, "--out", str(out), "--set", "distill.levels=[9]"], "distill.levels", "'9'")
    _refused([exp, "--out", str(out), "--student", str(tmp_path / "no-run")], "--student", "no-run")
    (tmp_path / "empty-run").mkdir()
    _refused([exp, "--out", str(out), "--student", str(tmp_path / "empty-run")], "--student", "model_final.pt")
    (tmp_path / "file").write_text("x")
    _refused([exp, "--out", str(tmp_path / "file")], "--out", "expected a folder")
    assert not out.exists()


def test_missing_teacher_says_how_to_make_it(write_experiment, tmp_path):
    exp = write_experiment(teacher={"arch": "fcos", "backbone": "resnet18", "fpn_channels": TEACHER_FPN,
                                    "checkpoint": str(tmp_path / "teacher.pt"),
                                    "train": {"epochs": 1, "threads": 1}},
                           distill={"method": "mgd"})
    message = _refused([str(exp), "--out", str(tmp_path / "pictures")], "teacher.checkpoint", "teacher.pt")
    assert f"python -m raykd.train {exp} --set distill.method=mgd" in message
    assert not (tmp_path / "teacher.pt").exists() and not (tmp_path / "pictures").exists()


@pytest.mark.slow
def test_cli_process_refuses_a_bad_flag(experiment, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "raykd.visualize", str(experiment(method="mgd")), "--out",
                           str(tmp_path / "p"), "--images", "-1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--images" in proc.stderr, proc.stderr


def test_student_from_a_run_folder_brings_the_trained_distiller(experiment, tmp_path):
    path = experiment(method="dmkd", alpha=1e-3)
    cfg, dataset, models, _ = _view(path)
    with torch.no_grad():
        for param in models.distiller.parameters():
            param.fill_(0.01)
        for param in models.student.parameters():
            param.mul_(0.5)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": models.student.state_dict(), "distiller": models.distiller.state_dict(), "epoch": 1},
               run / "checkpoints" / "state.pt")
    torch.save({"model": models.student.state_dict(), "metrics": {}}, run / "model_final.pt")
    _, _, loaded, _ = _view(path, student=run)
    assert loaded.distiller_trained and loaded.student_source == str(run / "checkpoints" / "state.pt")
    for (name, value), saved in zip(loaded.distiller.state_dict().items(), models.distiller.state_dict().values()):
        torch.testing.assert_close(value, saved, rtol=0, atol=0, msg=name)
    for (name, value), saved in zip(loaded.student.state_dict().items(), models.student.state_dict().values()):
        torch.testing.assert_close(value, saved, rtol=0, atol=0, msg=name)
    _, _, student_only, _ = _view(path, student=run / "model_final.pt")
    assert not student_only.distiller_trained
    torch.save({"finished": True}, tmp_path / "marker.pt")
    _refused([str(path), "--out", str(tmp_path / "p"), "--student", str(tmp_path / "marker.pt")],
             "--student", "holds no weights")


@pytest.mark.slow
def test_analyze_report_shows_the_best_trials_pictures_when_its_checkpoint_holds_weights(experiment, tmp_path):
    from datetime import datetime, timezone

    import pyarrow as pa

    from raykd.analyze.__main__ import main as analyze
    from raykd.results import TableWriter, write_run_row

    exp = experiment(method="mgd", mask_ratio=0.4)
    space = tmp_path / "space.yaml"
    space.write_text(f"experiment: {exp.name}\nmetric: bbox_mAP\nmode: max\nsearch: {{num_samples: 2}}\n"
                     "space:\n  distill.method: {choice: [none, mgd]}\n")
    root = tmp_path / "results" / "demo"
    params = {"distill.method": pa.string(), "distill.mask_ratio": pa.float64()}
    writer = TableWriter(root / "tables", "demo", params, flush_every_s=3600)
    trials = {"best": ({"distill.method": "mgd", "distill.mask_ratio": 0.4}, 0.3),
              "base": ({"distill.method": "none"}, 0.1)}
    for trial, (config, value) in trials.items():
        writer.add_result(trial, config, {"epoch": 1, "epochs_total": 1, "bbox_mAP": value, "AP50": value,
                                          "AP75": value, "AP_S": value, "AP_M": value, "AP_L": -1.0,
                                          "time_total_s": 1.0, "num_workers": 1, "executor": "inline"})
        writer.end_trial(trial, config=config)
    writer.flush()
    write_run_row(root / "tables", {"experiment": "demo", "started_at": datetime.now(timezone.utc),
                                    "space_path": str(space), "space_text": space.read_text()})
    cfg = load_experiment(exp)
    (root / "teacher.json").write_text(json.dumps({"checkpoint": cfg.teacher.checkpoint, "bbox_mAP": 0.2}))
    _, _, models, _ = _view(exp)
    state = root / "trial_best" / "checkpoint_000000" / "state.pt"
    state.parent.mkdir(parents=True)
    torch.save({"model": models.student.state_dict(), "distiller": models.distiller.state_dict()}, state)

    out = tmp_path / "report"
    with contextlib.redirect_stdout(io.StringIO()):
        assert analyze([str(root), "--out", str(out), "--format", "md"]) == 0
    text = (out / "report.md").read_text()
    assert "## Distillation pictures" in text and f"Trial best from {state}" in text
    drawn = sorted((out / "plots").glob("distillation_*.png"))
    assert len(drawn) == 2 and all(f.read_bytes()[:4] == b"\x89PNG" for f in drawn)

    torch.save({"finished": True}, state)  # what a search leaves of an ended trial
    with contextlib.redirect_stdout(io.StringIO()):
        assert analyze([str(root), "--out", str(out), "--format", "md"]) == 0
    assert "No distillation pictures: trial best has no checkpoint with weights" in (out / "report.md").read_text()
