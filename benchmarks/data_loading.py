"""Throughput of the data stage: synthetic generation and the training loader at 160 px.

    python benchmarks/data_loading.py [--images 1000] [--workers 0 1 2] [--torch-threads T]
                                      [--out benchmarks/out/data_loading.json]

Generates a synthetic set (timed), then reads it with ``build_loader`` (training transforms:
resize + random flip, batch 4, shuffled) for each ``num_workers``: the first epoch includes
worker start-up, the next ones are steady state (persistent workers). Workers run torch with
one thread; with ``num_workers=0`` the main process's threads do the transforms (see
``--torch-threads``). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from raykd.data import CocoDetection, build_loader, generate_synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="training images to generate and read (default: 1000)")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per setting; the first is reported apart")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads of the main process")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/data_loading.json"))
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory(prefix="raykd-bench-") as tmp:
        val_images = max(args.images // 6, 1)
        start = time.perf_counter()
        paths = generate_synthetic(Path(tmp) / "synth", args.images, val_images, seed=0, image_size=args.image_size)
        generation_s = time.perf_counter() - start
        total = args.images + val_images
        generation = {"images": total, "seconds": generation_s, "images_per_s": total / generation_s}
        disk = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) / total

        dataset = CocoDetection(paths.train_annotations, paths.train_images, args.image_size, train=True)
        loading = []
        for workers in args.workers:
            loader = build_loader(dataset, args.batch_size, shuffle=True, num_workers=workers, seed=0)
            epochs = []
            for _ in range(args.epochs):
                start = time.perf_counter()
                count = sum(len(images) for images, _ in loader)
                epochs.append(time.perf_counter() - start)
            steady = epochs[1:] or epochs
            loading.append(
                {
                    "num_workers": workers,
                    "first_epoch_images_per_s": count / epochs[0],
                    "steady_images_per_s": count * len(steady) / sum(steady),
                    "epoch_seconds": epochs,
                }
            )
            del loader

    result = {
        "benchmark": "data_loading",
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "train_images": args.images,
        "generation": generation,
        "disk_bytes_per_image": disk,
        "loading": loading,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
    }
    print(
        f"synthetic generation: {total} images in {generation_s:.1f} s = {generation['images_per_s']:.0f} images/s, "
        f"{disk / 1024:.0f} KiB per image"
    )
    print(f"training loader, {args.image_size} px, batch {args.batch_size}, {args.images} images:")
    print("| num_workers | first epoch images/s | steady images/s |")
    print("|---|---|---|")
    for row in loading:
        print(f"| {row['num_workers']} | {row['first_epoch_images_per_s']:.0f} | {row['steady_images_per_s']:.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
