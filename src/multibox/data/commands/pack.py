"""``multibox data pack SRC OUT``: pack a dataset into WebDataset-compatible tar shards."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["register"]

FORMATS = ["voc", "coco", "yolo", "csv"]


def _run(args: argparse.Namespace) -> int:
    from ...fileio import atomic_write_bytes
    from ..shards import pack_dataset, parse_size

    max_bytes = parse_size(args.max_bytes) if args.max_bytes not in (None, "", "0") else None
    if args.shard_size is None and max_bytes is None:
        raise ValueError("give --shard-size and/or --max-bytes")
    dataset = _open_source(args.src, args.format, args.split)
    meta = {"source": {"path": str(args.src), "format": args.format, "split": args.split}}
    try:
        summary = pack_dataset(dataset, Path(args.out), prefix=args.prefix, max_samples=args.shard_size,
                               max_bytes=max_bytes, overwrite=args.overwrite, progress=not args.no_progress,
                               check_images=not args.no_check_images, verify_originals=args.verify_originals,
                               meta=meta)
    except FileExistsError as e:
        print(f"multibox data pack: error: {e} (use --overwrite)", file=sys.stderr)
        return 2
    text = json.dumps(summary.to_dict(), indent=2)
    print(text)
    if args.json:
        atomic_write_bytes(Path(args.json), (text + "\n").encode())
    return 0


def _open_source(src: str, fmt: str | None, split: str | None) -> object:
    """Build the source dataset through ``multibox.data.datasets.open_dataset``."""
    try:
        from .. import datasets
    except ImportError as e:  # pragma: no cover - depends on the datasets package being present
        raise ValueError(f"cannot load datasets: multibox.data.datasets is unavailable ({e})") from e
    open_dataset = getattr(datasets, "open_dataset", None)
    if open_dataset is None:  # pragma: no cover
        raise ValueError("multibox.data.datasets has no open_dataset(); cannot build the source dataset")
    return open_dataset(src, format=fmt, split=split)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pack`` to the ``multibox data`` sub-commands."""
    p = subparsers.add_parser(
        "pack", help="pack a dataset into tar shards (WebDataset-compatible) for fast, streamable reading",
        description="Pack a VOC/COCO/YOLO/CSV dataset into tar shards OUT/<prefix>-000000.tar, ... with, per "
                    "sample, <key>.<ext> (the original image file when there is one, else a lossless PNG) and "
                    "<key>.json (boxes xyxy pixels, labels, difficult, iscrowd, image_id, orig_size), then "
                    "OUT/dataset.json (class names, shards, sample counts, sha256). Shards are renamed into "
                    "place only when all are complete. Read them with multibox.data.shards.ShardDataset "
                    "(random access) or ShardIterableDataset (streaming, local or fsspec URLs). Prints a JSON "
                    "summary.")
    p.add_argument("src", help="dataset root (or annotation file) to pack")
    p.add_argument("out", help="output folder for the shards and dataset.json")
    p.add_argument("--format", choices=FORMATS, default=None, help="dataset format (default: detect)")
    p.add_argument("--split", default=None, help="split to pack, e.g. trainval, val2017 (format-specific)")
    p.add_argument("--shard-size", type=int, default=None, metavar="N", help="at most N samples per shard")
    p.add_argument("--max-bytes", default="1G", metavar="M",
                   help="at most about M bytes per shard, e.g. 500M, 1G (default 1G; 0 or '' for no limit)")
    p.add_argument("--prefix", default="shard", help="shard file name prefix (default: shard)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing pack in OUT")
    p.add_argument("--no-check-images", action="store_true",
                   help="copy the image files without decoding them (much faster; unreadable images then fail "
                        "when read back, not here)")
    p.add_argument("--verify-originals", action="store_true",
                   help="decode each original image again and compare pixels before keeping its bytes (slower)")
    p.add_argument("--json", metavar="FILE", help="also write the summary to FILE")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
