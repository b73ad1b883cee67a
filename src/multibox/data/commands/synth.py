"""``multibox data synth OUT --num-images N``: write the synthetic shapes dataset in Pascal VOC layout."""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from ...commands.options import (
    add_overwrite_option,
    add_progress_options,
    check_output_dir,
    is_quiet,
    positive_int,
    show_progress,
)

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` sub-command to ``multibox data``."""
    p = subparsers.add_parser(
        "synth", help="write a synthetic shapes detection dataset (VOC layout)",
        description="Render N images of shapes (circle, square, triangle, star, ring, cross) with distractors, "
                    "occlusion and textured backgrounds, and write them in Pascal VOC layout: Annotations/*.xml, "
                    "JPEGImages/*.jpg, ImageSets/Main/{train,trainval,test}.txt, classes.txt, synth.json. The "
                    "same seed gives byte-identical files. A new (or empty) OUT is written as OUT.tmp-<pid> and "
                    "renamed when complete; the rendering workers die with this command, and the temporary "
                    "folders of killed runs are removed by the next run.")
    p.add_argument("out", help="output folder")
    p.add_argument("--num-images", type=positive_int, required=True, metavar="N", help="number of images")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=None,
                   help="image size in pixels (default: the profile's, 300 for hard, 128 for easy)")
    p.add_argument("--profile", choices=("hard", "easy"), default="hard", help="rendering profile (default hard)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of images in test.txt (default 0.2)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--workers", type=positive_int, default=1, help="rendering processes (default 1; same output)")
    add_overwrite_option(p, "files in an OUT folder that is not empty")
    add_progress_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the dataset; returns the exit code."""
    # heavy: multibox.data.synth imports numpy, PIL and the datasets; keeps 'multibox --help' at ~0.1 s
    from ..synth import remove_stale_temp_dirs, temp_dir_for, write_synthetic_voc

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT {out} exists and is not a folder")
    if args.num_images < 0:
        raise ValueError(f"--num-images must be >= 0, got {args.num_images}")
    non_empty = out.is_dir() and any(out.iterdir())
    if non_empty and not args.overwrite:
        raise ValueError(f"OUT {out} is not empty (use --overwrite to write into it)")
    check_output_dir(out, "OUT", create=False)
    remove_stale_temp_dirs(out)
    # A new or empty folder is written under a temporary name and renamed when complete: a killed run leaves no
    # half-written dataset under OUT. --overwrite into a non-empty folder writes there (each file atomically).
    target = out if non_empty else temp_dir_for(out)
    t0 = time.perf_counter()
    try:
        s = write_synthetic_voc(target, args.num_images, seed=args.seed, size=args.size,
                                test_fraction=args.test_fraction, quality=args.quality, workers=args.workers,
                                progress=show_progress(args), profile=args.profile)
        if target != out:
            if out.is_dir():
                out.rmdir()  # empty, checked above
            os.replace(target, out)
    except BaseException:
        if target != out:
            shutil.rmtree(target, ignore_errors=True)
        raise
    dt = time.perf_counter() - t0
    if not is_quiet(args):
        total = sum(s.class_counts.values())
        print(f"wrote {s.num_images} images ({len(s.train_ids)} train, {len(s.test_ids)} test) with {total} "
              f"objects ({s.difficult} difficult) to {out} in {dt:.1f} s")
        print("objects per class: " + ", ".join(f"{k} {v}" for k, v in s.class_counts.items()))
    return 0
