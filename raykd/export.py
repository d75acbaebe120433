"""``python -m raykd.export RUN_DIR --out student.pth``: a trained student as a plain state dict.

The file loads with ``load_state_dict`` (strict) into torchvision's own builder for the arch
(``fcos_resnet50_fpn``, ``fasterrcnn_resnet50_fpn_v2``, ... at ``weights=None``), or into the
same model built from torchvision parts for other backbones. Beside it, ``student.json`` holds
the class names (model label -> name, background first), the category ids, the builder and
the keyword arguments that reproduce raykd's evaluation transform.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from raykd.console import add_verbosity_args, quiet_libraries
from raykd.errors import ArgumentParser, UserError, run_cli

PROG = "python -m raykd.export"

BUILDERS = {
    "fcos": "fcos_resnet50_fpn", "retinanet": "retinanet_resnet50_fpn", "retinanet_v2": "retinanet_resnet50_fpn_v2",
    "faster_rcnn": "fasterrcnn_resnet50_fpn", "faster_rcnn_v2": "fasterrcnn_resnet50_fpn_v2",
    "mask_rcnn": "maskrcnn_resnet50_fpn", "mask_rcnn_v2": "maskrcnn_resnet50_fpn_v2",
}
"""torchvision.models.detection builder per arch (ResNet-50, FPN 256 only)."""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Write a trained student as a plain state dict that torchvision's builder for its arch loads "
                    "strictly, and a JSON file beside it with the class names and the builder's arguments.",
        epilog=f"example: {PROG} runs/shapes_student --out student.pth",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path,
                        help="a raykd.train output folder (config.yaml and model_best.pt or model_final.pt)")
    parser.add_argument("--out", type=Path, required=True, help="the state dict to write (e.g. student.pth)")
    parser.add_argument("--which", choices=("best", "final"), default="best",
                        help="model_best.pt (default; model_final.pt when there is none) or model_final.pt")
    add_verbosity_args(parser)
    return parser


def reference_model(cfg, num_classes: int):
    """torchvision's builder at ``weights=None`` (ResNet-50, FPN 256), else the same detector
    from torchvision parts with plain BatchNorm; returns (model, builder name or None)."""
    from torchvision.models import detection

    from raykd.models import build_detector

    name = BUILDERS[cfg.arch] if cfg.backbone == "resnet50" and cfg.fpn_channels == 256 else None
    if name is not None:
        return getattr(detection, name)(weights=None, weights_backbone=None, num_classes=num_classes), name
    plain = cfg.model_copy(update={"weights": None, "backbone_weights": None, "norm": "bn"})
    return build_detector(plain, num_classes, 64), None


def export(run_dir: Path, out: Path, which: str = "best") -> dict:
    """Write ``out`` (state dict) and ``out.with_suffix('.json')``; returns the JSON written."""
    import torch

    from raykd.config import experiment_from_dict
    from raykd.models.weights import read_file

    config = run_dir / "config.yaml"
    if not config.is_file():
        raise UserError("not a raykd.train output folder: config.yaml not found", file=config)
    try:
        raw = yaml.safe_load(config.read_text())
    except yaml.YAMLError:
        raise UserError("not valid YAML", file=config) from None
    cfg = experiment_from_dict(raw, file=config)
    candidates = ["model_best.pt", "model_final.pt"] if which == "best" else ["model_final.pt"]
    found = [run_dir / name for name in candidates if (run_dir / name).is_file()]
    if not found:
        raise UserError(f"no trained weights ({' or '.join(candidates)})", file=run_dir, key="--which")
    stored = read_file(found[0], "checkpoint")
    state = stored.state_dict
    categories = stored.categories
    if not categories:
        raise UserError("the checkpoint stores no class names (written before raykd kept them)", file=found[0])
    model, builder = reference_model(cfg.student, len(categories))
    own = model.state_dict()
    # FrozenBatchNorm2d keeps no batch counter; the builder's BatchNorm2d expects one.
    state = {**{k: torch.zeros_like(v) for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state},
             **state}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"the weights do not load into torchvision's model ({str(err).splitlines()[1].strip()[:160]})",
                        file=found[0]) from None
    side = cfg.data.image_size
    meta = {
        "arch": cfg.student.arch, "backbone": cfg.student.backbone, "fpn_channels": cfg.student.fpn_channels,
        "builder": f"torchvision.models.detection.{builder}" if builder else None,
        "kwargs": {"min_size": cfg.data.min_size or side, "max_size": side, **_score_kwarg(cfg.student.arch)},
        "categories": list(categories), "source": str(found[0]), "metrics": _metrics(found[0]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    torch.save({k: v.contiguous() for k, v in state.items()}, tmp)
    os.replace(tmp, out)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def _score_kwarg(arch: str) -> dict[str, float]:
    """raykd's evaluation score threshold under the builder's keyword for it."""
    from raykd.models.builders import EVAL_SCORE_THRESH, TWO_STAGE

    return {"box_score_thresh" if arch in TWO_STAGE else "score_thresh": EVAL_SCORE_THRESH}


def _metrics(path: Path) -> dict:
    from raykd.train.teacher import teacher_metrics

    metrics = teacher_metrics(path)
    return {k: metrics[k] for k in ("epoch", "bbox_mAP", "AP50") if k in metrics}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(args)
    meta = export(args.run_dir, args.out, args.which)
    target = meta["builder"] or f"raykd.models.build_detector ({meta['backbone']} has no torchvision builder)"
    print(f"wrote {args.out} ({len(meta['categories']) - 1} classes, epoch {meta['metrics'].get('epoch')}) "
          f"and {args.out.with_suffix('.json')}; loads strictly into {target}")
    return 0


if __name__ == "__main__":
    run_cli(main, PROG)
