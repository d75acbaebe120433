"""``python -m raykd.data``: write the synthetic set, or check a COCO set before training on it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from raykd.errors import ArgumentParser, UserError, run_cli

PROG = "python -m raykd.data"


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="COCO-format detection data for raykd: generate the synthetic shapes set, or check a set.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser(
        "synth",
        help="write the synthetic shapes set (COCO format)",
        description=(
            "Write a synthetic COCO set of coloured shapes (rectangle, ellipse, triangle, cross, ...; "
            "category ids 1, 3, 7, 10, ... with gaps on purpose) on noisy backgrounds: "
            "OUT_DIR/images/{train,val}/*.png, OUT_DIR/annotations/{train,val}.json and OUT_DIR/synth.json. "
            "Same arguments, same bytes. Does nothing when OUT_DIR already holds the set made with the "
            "same arguments; replaces a synthetic set made with other ones."
        ),
    )
    synth.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="folder to write (created)")
    synth.add_argument("--images", type=int, default=3000, metavar="N", help="training images (default: 3000)")
    synth.add_argument(
        "--val-images", type=int, default=None, metavar="M", help="validation images (default: N // 6, at least 1)"
    )
    synth.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    synth.add_argument(
        "--image-size", type=int, default=160, metavar="P",
        help="square image side in pixels, at least 64 (default: 160)",
    )
    synth.add_argument("--num-classes", type=int, default=4, metavar="C", help="shape classes, 1 to 6 (default: 4)")

    check = commands.add_parser(
        "check",
        help="check a COCO annotation file and its images",
        description=(
            "Check a COCO annotation file and its image folder: missing keys, duplicate ids, unknown "
            "categories or images, an empty image list, boxes of negative width or height, missing or "
            "unreadable image files (each one is opened and decoded), sizes that differ from the file, "
            "boxes outside the image and degenerate (zero-size) boxes. Prints a "
            "report; exits 0 when the set is usable (boxes outside the image are clipped and degenerate "
            "ones dropped by the loader) and 2 when it is not."
        ),
    )
    check.add_argument("annotations", metavar="ANNOTATIONS.json", type=Path, help="COCO annotation file")
    check.add_argument(
        "--images", required=True, type=Path, metavar="DIR", help="folder the images' file_name entries are relative to"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "synth":
        return _synth(args)
    return _check(args)


def _synth(args: argparse.Namespace) -> int:
    from raykd.data.synthetic import ensure_synthetic

    val_images = args.val_images if args.val_images is not None else max(args.images // 6, 1)
    before = _identity(args.out_dir / "synth.json")
    start = time.perf_counter()
    try:
        paths = ensure_synthetic(args.out_dir, args.images, val_images, args.seed, args.image_size, args.num_classes)
    except UserError as err:
        if err.key in _SYNTH_FLAGS:  # name the flag the value came from
            raise UserError(err.message, file=err.file, key=_SYNTH_FLAGS[err.key]) from None
        raise
    elapsed = time.perf_counter() - start
    present = before is not None and before == _identity(args.out_dir / "synth.json")  # not replaced
    train = json.loads(paths.train_annotations.read_text())
    val = json.loads(paths.val_annotations.read_text())
    verb = "found (same parameters, kept)" if present else "wrote"
    print(
        f"{verb} {len(train['images'])} train + {len(val['images'])} val images of {args.image_size} px, "
        f"{len(train['annotations'])} + {len(val['annotations'])} boxes, {len(train['categories'])} classes "
        f"({', '.join(c['name'] for c in train['categories'])}) in {elapsed:.1f} s"
    )
    for name in ("train_annotations", "train_images", "val_annotations", "val_images"):
        print(f"  {name:<18} {getattr(paths, name)}")
    return 0


_SYNTH_FLAGS = {"train_images": "--images", "val_images": "--val-images", "seed": "--seed",
                "image_size": "--image-size", "num_classes": "--num-classes"}


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _check(args: argparse.Namespace) -> int:
    from raykd.data.check import check_coco

    report = check_coco(args.annotations, args.images, progress=sys.stderr.isatty())
    print(report.format())
    if not report.usable:
        raise UserError(f"{report.summary()}; first: {report.first_fatal()}", file=args.annotations)
    print(report.summary())
    return 0


if __name__ == "__main__":
    run_cli(main, prog=PROG)
