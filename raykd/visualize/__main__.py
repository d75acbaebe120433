"""``python -m raykd.visualize EXPERIMENT.yaml --out DIR``: one picture of the distillation per image."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from raykd.config import load_experiment, parse_overrides
from raykd.console import add_verbosity_args, quiet_libraries
from raykd.errors import ArgumentParser, UserError, run_cli

PROG = "python -m raykd.visualize"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Draw, for the first N images of a split, one PNG each: the image with its ground truth, "
                    "the teacher's and the student's detections, and per distilled FPN level the teacher's "
                    "spatial attention, the spatial masks the method draws (MGD random, DMKD top-k, SAMKD per "
                    "cell at each pyramid scale, FGD foreground/background), channel attention and masks as "
                    "strips, the norms of the student feature, the reconstruction and the teacher feature, "
                    "the reconstruction error and SAMKD's SLD region weights. Everything is recorded from the "
                    "training code's own forward pass (masks drawn with seed train.seed + image index). "
                    "Needs the teacher's checkpoint; nothing is trained.",
        epilog="examples:\n"
               f"  {PROG} experiments/shapes_student.yaml --out pictures --set distill.method=samkd\n"
               f"  {PROG} experiments/shapes_student.yaml --out pictures --set distill.method=mgd "
               "--student runs/shapes_student",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", help="experiment YAML file (see experiments/)")
    parser.add_argument("--out", required=True, help="folder for the PNG files (created)")
    parser.add_argument("--images", type=int, default=4, metavar="N", help="how many images (default 4)")
    parser.add_argument("--split", choices=("val", "train"), default="val", help="which data split (default val)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                        help="override a dotted experiment key, e.g. --set distill.method=dmkd (repeatable)")
    parser.add_argument("--student", metavar="RUN_DIR_OR_CHECKPOINT",
                        help="a trained student: a run folder (its newest training state, else model_best.pt or "
                             "model_final.pt) or a checkpoint file (default: the untrained student of train.seed)")
    add_verbosity_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(args)
    if args.images < 1:
        raise UserError(f"expected a positive number of images, got {args.images}", key="--images")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError("expected a folder, found a file", file=out, key="--out")
    cfg = load_experiment(args.experiment, parse_overrides(args.overrides))
    from raykd.visualize.render import pictures, prepare

    dataset, models = prepare(cfg, args.experiment, args.split, args.student)
    rendered = pictures(cfg, dataset, models, args.images, args.split)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for picture in rendered:
            path = out / f"{cfg.distill.method}-{args.split}-{picture.image_id}.png"
            path.write_bytes(picture.png)
            print(path)
    except OSError as err:
        raise UserError(f"cannot write the pictures: {err}", file=out, key="--out") from None
    if len(rendered) < args.images:
        print(f"note: the {args.split} split has {len(dataset)} images; drew {len(rendered)}")
    return 0


if __name__ == "__main__":
    run_cli(main, PROG)
