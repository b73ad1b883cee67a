"""``multibox data pack SRC OUT``: pack a dataset into WebDataset-compatible tar shards."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ...commands.options import (
    add_json_option,
    add_overwrite_option,
    add_progress_options,
    check_output_dir,
    check_output_file,
    is_quiet,
    positive_int,
    show_progress,
    write_json_output,
)
from . import format_argument
from .convert import check_outside_source

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    # heavy: the dataset modules (numpy, PIL) and shards (torch) load only when packing; keeps
    # 'multibox --help' (which imports this module to build the parser) at ~0.1 s
    from ..datasets import open_dataset
    from ..shards import pack_dataset, parse_size

    max_bytes = parse_size(args.max_bytes) if args.max_bytes not in (None, "", "0") else None
    if args.shard_size is None and max_bytes is None:
        raise ValueError("give --shard-size and/or --max-bytes")
    out = Path(args.out)
    check_output_dir(out, "OUT", create=False)
    if args.json:
        check_output_file(args.json, "--json")
    dataset = open_dataset(args.src, format=args.format, split=args.split, progress=show_progress(args),
                           allow_outside_root=args.allow_outside_root)
    check_outside_source(out, dataset, "OUT")
    meta = {"source": {"path": str(args.src), "format": args.format or getattr(dataset, "format", None),
                       "split": args.split}}
    try:
        summary = pack_dataset(dataset, out, prefix=args.prefix, max_samples=args.shard_size,
                               max_bytes=max_bytes, overwrite=args.overwrite, progress=show_progress(args),
                               check_images=not args.no_check_images, verify_originals=args.verify_originals,
                               meta=meta)
    except FileExistsError as e:
        print(f"multibox data pack: error: {e} (use --overwrite)", file=sys.stderr)
        return 2
    if args.json:
        write_json_output(args.json, summary.to_dict())
    if not is_quiet(args) and args.json != "-":
        print(json.dumps(summary.to_dict(), indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pack`` to the ``multibox data`` sub-commands."""
    p = subparsers.add_parser(
        "pack", help="pack a dataset into tar shards (WebDataset-compatible) for fast, streamable reading",
        description="Pack a dataset (any readable format of `multibox data formats`) into tar shards "
                    "OUT/<prefix>-000000.tar, ... with, per sample, <key>.<ext> (the original image file when "
                    "there is one, else a lossless PNG) and <key>.json (boxes xyxy pixels, labels, difficult, "
                    "iscrowd, image_id, orig_size), then OUT/dataset.json (class names, shards, sample counts, "
                    "sha256, the source and split). Shards are renamed into place only when all are complete. "
                    "OUT may be neither SRC nor inside it. Train on it with data.train=shards:OUT (or just OUT: "
                    "the dataset.json is recognized); read it with multibox.data.shards.ShardDataset (random "
                    "access) or ShardIterableDataset (streaming, local or fsspec URLs). Prints a JSON summary.")
    p.add_argument("src", help="dataset root (or annotation file) to pack")
    p.add_argument("out", help="output folder for the shards and dataset.json")
    p.add_argument("--format", type=format_argument(), metavar="FORMAT", default=None,
                   help="dataset format (default: detect; see `multibox data formats`)")
    p.add_argument("--split", default=None, help="split to pack, e.g. trainval, val2017 (format-specific)")
    p.add_argument("--shard-size", type=positive_int, default=None, metavar="N", help="at most N samples per shard")
    p.add_argument("--max-bytes", default="1G", metavar="M",
                   help="at most about M bytes per shard, e.g. 500M, 1G (default 1G; 0 or '' for no limit)")
    p.add_argument("--prefix", default="shard", help="shard file name prefix (default: shard)")
    add_overwrite_option(p, "an existing pack in OUT")
    p.add_argument("--no-check-images", action="store_true",
                   help="copy the image files without decoding them (much faster; unreadable images then fail "
                        "when read back, not here)")
    p.add_argument("--verify-originals", action="store_true",
                   help="decode each original image again and compare pixels before keeping its bytes (slower)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="read image paths that leave the dataset folder ('../x.jpg', absolute paths)")
    add_json_option(p, "the summary")
    add_progress_options(p)
    p.set_defaults(func=_run)
