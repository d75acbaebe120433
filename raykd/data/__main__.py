"""``python -m raykd.data``: write the synthetic set, check a COCO, VOC or YOLO set before training on it,
convert a VOC or YOLO split to a COCO file, or score a detections file."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raykd.console import add_verbosity_args, progress_bars, quiet_libraries
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
        help="check a data set (COCO, Pascal VOC or YOLO) and its images",
        description=(
            "Check a data split and its image folder: a COCO annotation file (ANNOTATIONS.json --images DIR), "
            "a Pascal VOC split (--format voc --root DIR --split NAME) or a YOLO split (--format yolo --yaml FILE "
            "--split NAME). VOC and YOLO splits are first read into the COCO form (the first problem in an XML "
            "or label file stops the check, naming the file and object or line). Then: missing keys, duplicate "
            "ids, unknown categories or images, an empty image list, boxes of negative width or height, missing "
            "or unreadable image files (each one is opened and decoded), sizes that differ from the file, "
            "boxes outside the image and degenerate (zero-size) boxes; with --masks, every annotation's "
            "segmentation. Prints a "
            "report; exits 0 when the set is usable (boxes outside the image are clipped and degenerate "
            "ones dropped by the loader) and 2 when it is not."
        ),
    )
    check.add_argument("annotations", metavar="ANNOTATIONS.json", type=Path, nargs="?",
                       help="COCO annotation file (--format coco)")
    check.add_argument(
        "--images", type=Path, metavar="DIR", help="folder the images' file_name entries are relative to (--format coco)"
    )
    check.add_argument("--masks", action="store_true",
                       help="also check every annotation's segmentation (polygons or RLE of its image's size), "
                            "as a Mask R-CNN needs (--format coco; VOC and YOLO have no instance masks)")
    _split_flags(check, "coco")
    check.set_defaults(subparser=check)

    convert = commands.add_parser(
        "convert",
        help="write a Pascal VOC or YOLO split as a COCO annotation file",
        description=(
            "Read a Pascal VOC split (--format voc --root DIR --split NAME) or a YOLO split (--format yolo "
            "--yaml FILE --split NAME) as raykd trains on it and write it as one COCO annotation file. Its "
            "file_name entries are relative to the image folder printed at the end. Nothing is written when "
            "the split has a problem."
        ),
    )
    _split_flags(convert, None)
    convert.set_defaults(subparser=convert)
    convert.add_argument("--out", required=True, type=Path, metavar="FILE.json", help="COCO file to write")

    evaluate = commands.add_parser(
        "evaluate",
        help="score a COCO detections file with the evaluator raykd trains with",
        description=(
            "Score a detections file (COCO results format: a JSON list of {image_id, category_id, score, bbox "
            "[x, y, width, height]}; for --iou-type segm a segmentation RLE) on every image of a COCO annotation "
            "file, and print one JSON object: bbox_mAP, AP50, AP75, AP_S, AP_M, AP_L (the tables' names; segm_* "
            "for masks) and the six recalls AR1, AR10, AR100, AR_S, AR_M, AR_L; -1 where the annotations have no "
            "such objects. Exits 2 with one line naming the file and entry when an input is wrong."
        ),
    )
    evaluate.add_argument("--annotations", required=True, type=Path, metavar="GT.json", help="COCO annotation file")
    evaluate.add_argument("--detections", required=True, type=Path, metavar="DETS.json", help="COCO results file")
    evaluate.add_argument("--iou-type", choices=("bbox", "segm"), default="bbox",
                          help="boxes or instance masks (default: bbox)")
    evaluate.add_argument("--evaluator", choices=("faster_coco_eval", "pycocotools"), default=None,
                          help="faster_coco_eval (default when installed; the same numbers, faster) or pycocotools")
    for sub in commands.choices.values():
        add_verbosity_args(sub)
    return parser


def _split_flags(parser: argparse.ArgumentParser, default_format: str | None) -> None:
    parser.add_argument("--format", choices=FORMATS, default=default_format, required=default_format is None,
                        help=f"the split's format{f' (default: {default_format})' if default_format else ''}")
    parser.add_argument("--root", type=Path, metavar="DIR",
                        help="VOC: the folder holding Annotations/, JPEGImages/, ImageSets/Main/")
    parser.add_argument("--yaml", type=Path, metavar="FILE", help="YOLO: the data.yaml file (path, train, val, names)")
    parser.add_argument("--split", metavar="NAME", help="VOC: ImageSets/Main/NAME.txt; YOLO: the YAML key (train, val)")
    parser.add_argument("--classes", metavar="A,B,...",
                        help="VOC: class names in label order (default: every name in the XML files, sorted)")


FORMATS = ("coco", "voc", "yolo")
_FLAGS = {"coco": ("annotations", "images"), "voc": ("root", "split", "classes"), "yolo": ("yaml", "split")}
_REQUIRED = {"coco": ("annotations", "images"), "voc": ("root", "split"), "yolo": ("yaml", "split")}


def _flag(name: str) -> str:
    return "ANNOTATIONS.json" if name == "annotations" else f"--{name}"


def split_from_flags(args: argparse.Namespace) -> Any:
    """The split the flags describe, as the config's ``data.train`` would hold it."""
    from pydantic import ValidationError

    from raykd.config import CocoSplit, VocSplit, YoloSplit, validation_message

    fmt = args.format
    for name in ("annotations", "images", "root", "yaml", "split", "classes"):
        given = getattr(args, name, None) is not None
        if given and name not in _FLAGS[fmt]:
            args.subparser.error(f"argument {_flag(name)}: not allowed with --format {fmt} (it takes "
                                 f"{', '.join(map(_flag, _FLAGS[fmt]))})")
        if not given and name in _REQUIRED[fmt]:
            args.subparser.error(f"the following arguments are required: {_flag(name)} (with --format {fmt})")
    values = {name: getattr(args, name) for name in _FLAGS[fmt] if getattr(args, name, None) is not None}
    values = {name: str(value) for name, value in values.items()}
    if "classes" in values:
        values["classes"] = [name.strip() for name in values["classes"].split(",")]
    model = {"coco": CocoSplit, "voc": VocSplit, "yolo": YoloSplit}[fmt]
    try:
        return model.model_validate({"format": fmt, **values})
    except ValidationError as err:
        key, message = validation_message(err)
        raise UserError(message, key=_flag(key.split(".")[0].split("[")[0])) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_libraries(args)
    if args.command == "synth":
        return _synth(args)
    if args.command == "convert":
        return _convert(args)
    if args.command == "evaluate":
        return _evaluate(args)
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
    from raykd.data.check import check_coco, check_parsed

    split = split_from_flags(args)
    if args.masks and split.format != "coco":
        raise UserError(f"{split.format.upper()} splits have no instance masks; --masks checks COCO files",
                        key="--masks")
    if split.format == "coco":
        report = check_coco(split.annotations, split.images, progress=progress_bars(args), masks=args.masks)
    else:
        from raykd.data.cocofile import parse_coco
        from raykd.data.converted import source, to_json

        converted = source(split)
        named = Path(split.root) / "ImageSets" / "Main" / f"{split.split}.txt" if split.format == "voc" else Path(split.yaml)
        coco = parse_coco(to_json(converted.read()), named)
        report = check_parsed(coco, converted.images, progress=progress_bars(args))
    print(report.format())
    if not report.usable:
        raise UserError(f"{report.summary()}; first: {report.first_fatal()}", file=report.annotations_file)
    print(report.summary())
    return 0


def _convert(args: argparse.Namespace) -> int:
    from raykd.data.converted import source, to_json, write_json

    split = split_from_flags(args)
    if split.format == "coco":
        raise UserError("the split is COCO already; expected --format voc or yolo", key="--format")
    if args.out.is_dir():
        raise UserError("expected a file to write, got a folder", file=args.out, key="--out")
    converted = source(split)
    coco = converted.read()
    write_json(to_json(coco), args.out)
    crowd = sum(ann["iscrowd"] for ann in coco["annotations"])
    print(f"wrote {args.out}: {len(coco['images'])} images, {len(coco['annotations']) - crowd} boxes"
          f"{f' (+ {crowd} difficult, iscrowd=1)' if crowd else ''}, {len(coco['categories'])} classes "
          f"({', '.join(c['name'] for c in coco['categories'])})")
    print(f"  images folder (file_name entries are relative to it): {converted.images}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from raykd.config import default_evaluator
    from raykd.data.score_file import evaluate_file

    evaluator = args.evaluator or default_evaluator()
    start = time.perf_counter()
    metrics = evaluate_file(args.annotations, args.detections, args.iou_type, evaluator)
    print(json.dumps(metrics))
    print(f"{args.iou_type} evaluation with {evaluator} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main, prog=PROG)
