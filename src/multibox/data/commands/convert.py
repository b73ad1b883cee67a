"""``multibox data convert SRC DST --from voc|coco|yolo|csv --to voc|coco|yolo|csv``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register", "run"]

_FORMATS = ("voc", "coco", "yolo", "csv")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` parser."""
    p = subparsers.add_parser(
        "convert", help="convert a detection dataset between VOC, COCO, YOLO and CSV",
        description="Read SRC (validated: boxes clipped to the image, degenerate ones dropped, all counted), "
                    "write it to the new folder DST in another format with images copied or linked. Class "
                    "names, difficult and iscrowd flags are kept where the target can hold them (VOC and COCO "
                    "hold both; YOLO and CSV hold neither: those boxes are written as ordinary boxes, with a "
                    "warning and a count). SRC is only read; every output file is written atomically.")
    p.add_argument("src", metavar="SRC", help="dataset: VOC root (several joined with ':'), COCO JSON or folder, "
                                              "YOLO root, CSV file or folder")
    p.add_argument("dst", metavar="DST", help="output folder (new or empty; never inside SRC)")
    p.add_argument("--from", dest="src_format", choices=_FORMATS, help="format of SRC (default: guessed)")
    p.add_argument("--to", dest="dst_format", choices=_FORMATS, required=True, help="format to write")
    p.add_argument("--split", help="split to read (VOC ImageSets/Main/<split>.txt, COCO instances_<split>.json, "
                                   "YOLO images/<split>, <split>.csv) and to name the output split")
    p.add_argument("--classes", help="class list: a file (one name per line), comma-separated names, 'voc' or "
                                     "'infer' (default: the format's own list / classes.txt / the names found)")
    p.add_argument("--images", help="image folder of a COCO or CSV source (default: found beside the annotations)")
    p.add_argument("--link", choices=("copy", "hardlink", "symlink"), default="copy",
                   help="how images reach DST (default copy)")
    p.add_argument("--drop-difficult", action="store_true", help="leave out boxes flagged difficult")
    p.add_argument("--ignore-unknown", action="store_true",
                   help="drop boxes whose class is not in the class list (counted) instead of failing")
    p.add_argument("--lenient", action="store_true",
                   help="skip (and count) unreadable images and malformed objects instead of failing")
    p.add_argument("--force", action="store_true", help="write into a DST folder that is not empty")
    p.set_defaults(func=run)


def parse_classes(value: str | None) -> object:
    """``--classes`` as ``open_dataset`` takes it: None, ``"voc"``, ``"infer"``, a file path or a name list."""
    if value is None or value in ("voc", "infer") or Path(value).is_file():
        return value
    return [n.strip() for n in value.split(",") if n.strip()]


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def run(args: argparse.Namespace) -> int:
    """Convert; print a summary and the warnings. Returns 0, or raises (the CLI prints the error)."""
    from ..datasets import dataset_roots, open_dataset, write_dataset

    dst = Path(args.dst).resolve()
    ds = open_dataset(args.src, format=args.src_format, split=args.split, classes=parse_classes(args.classes),
                      images=args.images, strict=not args.lenient,
                      unknown_classes="ignore" if args.ignore_unknown else "error",
                      drop_difficult=args.drop_difficult, progress=True)
    for root in dataset_roots(ds):
        r = root.resolve()
        if _inside(dst, r) or _inside(r, dst):
            raise ValueError(f"DST {dst} overlaps the source folder {r}: choose a folder outside the dataset")
    if dst.exists() and any(dst.iterdir()) and not args.force:
        raise ValueError(f"DST {dst} exists and is not empty (pass --force to write into it)")
    src_format = ds.format
    print(f"read {src_format} {args.src}: {ds.stats.summary()}")
    report = write_dataset(ds, dst, args.dst_format, split=args.split, link=args.link, progress=True)
    print(f"wrote {args.dst_format} {dst}: {report.images} images, {report.boxes} boxes, "
          f"{len(ds.class_names) - 1} classes ({', '.join(ds.class_names[1:11])}"
          f"{', ...' if len(ds.class_names) > 11 else ''})")
    for w in report.warnings():
        print(f"warning: {w}", file=sys.stderr)
    for p in ds.stats.problems[:20]:
        print(p, file=sys.stderr)
    if len(ds.stats.problems) > 20:
        print(f"... and {len(ds.stats.problems) - 20} more problems (run `multibox data check`)", file=sys.stderr)
    return 0
