"""``multibox data synth OUT --images N``: write the synthetic shapes dataset in Pascal VOC layout."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` sub-command to ``multibox data``."""
    p = subparsers.add_parser(
        "synth", help="write a synthetic shapes detection dataset (VOC layout)",
        description="Render N images of shapes (circle, square, triangle, star, ring, cross) with distractors, "
                    "occlusion and textured backgrounds, and write them in Pascal VOC layout: Annotations/*.xml, "
                    "JPEGImages/*.jpg, ImageSets/Main/{train,trainval,test}.txt, classes.txt, synth.json. The "
                    "same seed gives byte-identical files.")
    p.add_argument("out", help="output folder")
    p.add_argument("--images", type=int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=300, help="long image side in pixels (default 300)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of images in test.txt (default 0.2)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--workers", type=int, default=1, help="rendering processes (default 1; same output)")
    p.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the dataset; returns the exit code."""
    from ..synth import write_synthetic_voc

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise ValueError(f"{out} is not empty (use --force to write into it)")
    t0 = time.perf_counter()
    s = write_synthetic_voc(out, args.images, seed=args.seed, size=args.size, test_fraction=args.test_fraction,
                            quality=args.quality, workers=args.workers, progress=not args.no_progress)
    dt = time.perf_counter() - t0
    total = sum(s.class_counts.values())
    print(f"wrote {s.num_images} images ({len(s.train_ids)} train, {len(s.test_ids)} test) with {total} objects "
          f"({s.difficult} difficult) to {out} in {dt:.1f} s")
    print("objects per class: " + ", ".join(f"{k} {v}" for k, v in s.class_counts.items()))
    return 0
