"""``multibox data convert SRC DST --to FORMAT``: convert a detection dataset between the registered formats."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ...commands.options import add_overwrite_option, add_progress_options, check_output_dir, is_quiet, show_progress
from . import format_argument

__all__ = ["register", "run", "parse_classes", "check_outside_source", "drop_unreadable_images"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` parser."""
    p = subparsers.add_parser(
        "convert", help="convert a detection dataset between formats (VOC, COCO, YOLO, CSV, ...)",
        description="Read SRC (validated: boxes clipped to the image, degenerate ones dropped, all counted; every "
                    "image decoded once, cheaply, so that a truncated file fails here, naming it), write it to the "
                    "new folder DST in another format with images copied or linked. Class names, difficult and "
                    "iscrowd flags are kept where the target can hold them (VOC and COCO hold both; YOLO and CSV "
                    "hold neither: those boxes are written as ordinary boxes, with a warning and a count). Image "
                    "paths in the annotations must stay inside the dataset (--allow-outside-root to read them "
                    "anyway). SRC is only read; DST may be neither SRC nor inside it; every output file is "
                    "written atomically. `multibox data formats` lists the formats.")
    p.add_argument("src", metavar="SRC", help="dataset: VOC root (several joined with ':'), COCO JSON or folder, "
                                              "YOLO root, CSV file or folder, ...")
    p.add_argument("dst", metavar="DST", help="output folder (new or empty; never SRC nor inside it)")
    p.add_argument("--from", dest="src_format", type=format_argument(), metavar="FORMAT",
                   help="format of SRC (default: guessed; see `multibox data formats`)")
    p.add_argument("--to", dest="dst_format", type=format_argument(writable=True), metavar="FORMAT", required=True,
                   help="format to write: voc, coco, yolo, csv (or another writable registered format)")
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
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out (and report) images that do not decode fully, e.g. truncated files, instead of "
                        "failing (--lenient implies it)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="read image paths that leave the dataset folder ('../x.jpg', absolute paths) instead of "
                        "failing")
    add_overwrite_option(p, "files in a DST folder that is not empty")
    add_progress_options(p)
    p.set_defaults(func=run)


def parse_classes(value: str | None) -> object:
    """``--classes`` as ``open_dataset`` takes it: None, ``"voc"``, ``"infer"``, a file path or a name list."""
    if value is None or value in ("voc", "infer") or Path(value).is_file():
        return value
    return [n.strip() for n in value.split(",") if n.strip()]


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_outside_source(dst: str | Path, dataset: Any, option: str = "DST") -> None:
    """Refuse an output folder that is a folder of ``dataset``, lies inside one, or holds one: writing there
    would change the source (e.g. ``data pack SRC SRC/packed``). ValueError naming both folders."""
    # heavy: the dataset modules (numpy, PIL), image_io and tqdm load only when converting; keeps
    # 'multibox --help' (which imports this module to build the parser) at ~0.1 s
    from ..datasets import dataset_roots

    out = Path(dst).resolve()
    index = getattr(dataset, "index", None)
    roots = [Path(index.base)] if index is not None and getattr(index, "is_local", False) else dataset_roots(dataset)
    for root in roots:
        r = Path(root).resolve()
        if _inside(out, r) or _inside(r, out):
            raise ValueError(f"{option} {out} overlaps the source folder {r}: choose a folder outside the dataset")


class _Kept:
    """The records and class names a writer needs (a dataset minus the images left out)."""

    def __init__(self, records: list[Any], class_names: list[str]) -> None:
        self.records = records
        self.class_names = class_names


def drop_unreadable_images(dataset: Any, skip: bool, progress: bool = False) -> tuple[Any, list[str]]:
    """Decode every image of ``dataset.records`` cheaply (:func:`~multibox.data.image_io.check_image_complete`).

    An image that does not decode fully raises :class:`~multibox.data.image_io.ImageDecodeError` naming the file,
    or, with ``skip``, is left out: returns ``(dataset or a reduced copy, messages of the images left out)``."""
    from tqdm.auto import tqdm

    from ..image_io import MAX_IMAGE_PIXELS, ImageDecodeError, check_image_complete

    kept, bad = [], []
    for rec in tqdm(dataset.records, desc="checking images", unit="img", disable=not progress, leave=False):
        try:
            check_image_complete(rec.path, getattr(dataset, "max_pixels", MAX_IMAGE_PIXELS))
        except ImageDecodeError as e:
            if not skip:
                raise ImageDecodeError(f"{e} (pass --skip-bad-images to leave it out)") from None
            bad.append(str(e))
            continue
        kept.append(rec)
    return (dataset if not bad else _Kept(kept, list(dataset.class_names))), bad


def run(args: argparse.Namespace) -> int:
    """Convert; print a summary and the warnings. Returns 0, or raises (the CLI prints the error)."""
    from ..datasets import open_dataset, write_dataset

    dst = Path(args.dst)
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"DST {dst}: exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not args.overwrite:
        raise ValueError(f"DST {dst} exists and is not empty (pass --overwrite to write into it)")
    check_output_dir(dst, "DST", create=False)
    progress = show_progress(args)
    ds = open_dataset(args.src, format=args.src_format, split=args.split, classes=parse_classes(args.classes),
                      images=args.images, strict=not args.lenient,
                      unknown_classes="ignore" if args.ignore_unknown else "error",
                      drop_difficult=args.drop_difficult, progress=progress,
                      allow_outside_root=args.allow_outside_root)
    if not hasattr(ds, "records"):
        raise ValueError(f"{args.src}: {ds.__class__.__name__} cannot be converted (it has no annotation records)")
    check_outside_source(dst, ds)
    ds_out, skipped = drop_unreadable_images(ds, skip=args.skip_bad_images or args.lenient, progress=progress)
    dst = check_output_dir(dst, "DST")
    if not is_quiet(args):
        print(f"read {ds.format} {args.src}: {ds.stats.summary()}")
    report = write_dataset(ds_out, dst, args.dst_format, split=args.split, link=args.link, progress=progress)
    if not is_quiet(args):
        print(f"wrote {args.dst_format} {dst}: {report.images} images, {report.boxes} boxes, "
              f"{len(ds.class_names) - 1} classes ({', '.join(ds.class_names[1:11])}"
              f"{', ...' if len(ds.class_names) > 11 else ''})")
    for w in report.warnings():
        print(f"warning: {w}", file=sys.stderr)
    for m in skipped:
        print(f"warning: left out: {m}", file=sys.stderr)
    for p in ds.stats.problems[:20]:
        print(p, file=sys.stderr)
    if len(ds.stats.problems) > 20:
        print(f"... and {len(ds.stats.problems) - 20} more problems (run `multibox data check`)", file=sys.stderr)
    return 0
