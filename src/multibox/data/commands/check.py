"""``multibox data check DATASET``: scan a dataset, report statistics and every problem, draw a montage."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from ...commands.options import (
    add_json_option,
    add_progress_options,
    check_output_dir,
    check_output_file,
    is_quiet,
    non_negative_int,
    show_progress,
)
from ...fileio import atomic_write_bytes, atomic_write_with
from . import format_argument
from .convert import parse_classes

__all__ = ["register", "run", "dataset_report", "draw_montage"]

_QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
_SHOWN_PROBLEMS = 30


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``check`` parser."""
    p = subparsers.add_parser(
        "check", help="validate a dataset: class counts, box sizes, every problem, a montage",
        description="Scan DATASET without stopping at the first problem: every image is decoded and every box "
                    "validated. Prints images and boxes per class, the distribution of box sizes (sqrt of the "
                    "area, in pixels and relative to the image) and aspect ratios, and every problem with its "
                    "file and object. With --out, writes report.json and montage.png (a few images with their "
                    "boxes). Exits 1 when errors were found, 0 otherwise (warnings such as clipped boxes do not "
                    "fail).")
    p.add_argument("dataset", metavar="DATASET", help="VOC root (several joined with ':'), COCO JSON or folder, "
                                                      "YOLO root, CSV file or folder")
    p.add_argument("--format", type=format_argument(), metavar="FORMAT",
                   help="dataset format (default: guessed; see `multibox data formats`)")
    p.add_argument("--split", help="split to check (VOC ImageSets/Main/<split>.txt, COCO instances_<split>.json, "
                                   "YOLO images/<split>, <split>.csv)")
    p.add_argument("--classes", help="class list: a file, comma-separated names, 'voc' or 'infer' (default: the "
                                     "format's own list / classes.txt / the names found)")
    p.add_argument("--images", help="image folder of a COCO or CSV dataset")
    p.add_argument("--out", help="folder for report.json and montage.png")
    p.add_argument("--montage", type=non_negative_int, default=8, metavar="N", help="images in the montage (default 8)")
    p.add_argument("--no-decode", action="store_true",
                   help="read image headers only (faster; truncated files go unnoticed)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="read image paths that leave the dataset folder ('../x.jpg', absolute paths) instead of "
                        "reporting them as errors")
    add_json_option(p, "the report")
    add_progress_options(p)
    p.set_defaults(func=run)


def _quantiles(values: Any) -> dict[str, float]:
    # heavy: numpy, PIL, matplotlib and the dataset modules are imported inside the functions that use them, so
    # that 'multibox --help' (which imports this module to build the parser) stays at ~0.1 s
    import numpy as np

    if len(values) == 0:
        return {}
    q = np.quantile(np.asarray(values, dtype=np.float64), _QUANTILES)
    return {f"q{int(k * 100):02d}": round(float(v), 4) for k, v in zip(_QUANTILES, q, strict=True)}


def dataset_report(ds: Any) -> dict[str, Any]:
    """Statistics of a loaded dataset as a JSON-ready dict (classes, boxes, sizes, problems)."""
    import numpy as np

    names = ds.class_names
    per_class = {n: {"images": 0, "boxes": 0, "difficult": 0, "iscrowd": 0} for n in names[1:]}
    sqrt_area, rel, aspect, heights, widths = [], [], [], [], []
    empty = 0
    for rec in ds.records:
        t = rec.target
        h, w = t.orig_size
        heights.append(h)
        widths.append(w)
        if not len(t):
            empty += 1
        for k in np.unique(t.labels).tolist():
            per_class[names[k]]["images"] += 1
        for k, d, c in zip(t.labels.tolist(), t.difficult.tolist(), t.iscrowd.tolist(), strict=True):
            e = per_class[names[k]]
            e["boxes"] += 1
            e["difficult"] += int(d)
            e["iscrowd"] += int(c)
        bw, bh = t.boxes[:, 2] - t.boxes[:, 0], t.boxes[:, 3] - t.boxes[:, 1]
        sqrt_area += np.sqrt(bw * bh).tolist()
        rel += (np.sqrt(bw * bh) / np.sqrt(h * w)).tolist()
        aspect += (bw / bh).tolist()
    stats = ds.stats
    return {
        "format": getattr(ds, "format", None),
        "class_names": list(names),
        "images": len(ds.records),
        "images_without_boxes": empty,
        "boxes": int(sum(e["boxes"] for e in per_class.values())),
        "per_class": per_class,
        "box_sqrt_area_px": _quantiles(sqrt_area),
        "box_sqrt_area_relative": _quantiles(rel),
        "box_aspect_ratio_w_over_h": _quantiles(aspect),
        "image_height_px": _quantiles(heights),
        "image_width_px": _quantiles(widths),
        "stats": stats.to_dict(),
        "errors": len(stats.errors),
        "warnings": len(stats.warnings),
        "ok": not stats.errors,
        "problems": [p.to_dict() for p in stats.problems],
    }


def draw_montage(ds: Any, out: Path, count: int = 8) -> Path | None:
    """Save a grid of up to ``count`` images (spread over the dataset, those with boxes first) with their
    boxes and class names drawn, as PNG at ``out``. Returns None when no image can be shown."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from ..image_io import MAX_IMAGE_PIXELS, ImageDecodeError, load_image

    records = ds.records
    with_boxes = [i for i, r in enumerate(records) if len(r.target)]
    pool = with_boxes if len(with_boxes) >= count else list(range(len(records)))
    if not pool or count <= 0:
        return None
    step = len(pool) / min(count, len(pool))
    picks = [pool[int(k * step)] for k in range(min(count, len(pool)))]
    shown = []
    for i in picks:
        try:
            shown.append((load_image(records[i].path, getattr(ds, "max_pixels", MAX_IMAGE_PIXELS)), records[i].target))
        except ImageDecodeError:
            continue
    if not shown:
        return None
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig = plt.figure(figsize=(4 * cols, 4 * rows), dpi=100)
    colors = plt.get_cmap("tab20")
    for k, (image, t) in enumerate(shown):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(image)
        ax.axis("off")
        ax.set_title(f"{t.image_id} ({len(t)} boxes)", fontsize=8)
        for (x1, y1, x2, y2), label, d in zip(t.boxes.tolist(), t.labels.tolist(), t.difficult.tolist(),
                                              strict=True):
            c = colors(label % 20)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1, color=c, ls="--" if d else "-"))
            if len(t) <= 30:
                ax.text(x1, y1, ds.class_names[label], fontsize=6, color="white", va="bottom",
                        bbox={"facecolor": c, "alpha": 0.7, "pad": 1, "lw": 0})
    present = sorted({int(k) for _, t in shown for k in t.labels.tolist()})[:20]
    if present:
        handles = [Rectangle((0, 0), 1, 1, fill=False, color=colors(k % 20), label=ds.class_names[k]) for k in present]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05 if present else 0, 1, 1))
    atomic_write_with(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out


def _print_report(rep: dict[str, Any], problems: list[Any], stats: bool = True) -> None:
    """Statistics on standard output (unless not ``stats``), problems on standard error."""
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity != "error"]
    if stats:
        print(f"{rep['format']}: {rep['images']} images ({rep['images_without_boxes']} without boxes, "
              f"{rep['stats']['images_skipped']} unreadable/skipped), {rep['boxes']} boxes, "
              f"{len(rep['class_names']) - 1} classes")
        print(f"{'class':<24} {'images':>7} {'boxes':>7} {'difficult':>9} {'iscrowd':>7}")
        for name, e in rep["per_class"].items():
            print(f"{name:<24} {e['images']:>7} {e['boxes']:>7} {e['difficult']:>9} {e['iscrowd']:>7}")
        for key, title in (("box_sqrt_area_px", "sqrt(box area) px"),
                           ("box_sqrt_area_relative", "sqrt(area) / image"),
                           ("box_aspect_ratio_w_over_h", "aspect w/h")):
            q = rep[key]
            if q:
                print(f"{title:<20} " + "  ".join(f"{k}={v:g}" for k, v in q.items()))
        s = rep["stats"]
        print(f"boxes clipped {s['boxes_clipped']}, dropped: degenerate {s['boxes_dropped_degenerate']}, invalid "
              f"{s['boxes_dropped_invalid']}, unknown class {s['boxes_dropped_unknown_class']}"
              + (f" {s['unknown_classes']}" if s["unknown_classes"] else ""))
    for p in (errors + warnings)[:_SHOWN_PROBLEMS]:
        print(p, file=sys.stderr)
    if len(problems) > _SHOWN_PROBLEMS:
        print(f"... and {len(problems) - _SHOWN_PROBLEMS} more (all in report.json with --out or --json)",
              file=sys.stderr)
    if stats:
        print(f"{len(errors)} errors, {len(warnings)} warnings: {'FAILED' if errors else 'OK'}")


def run(args: argparse.Namespace) -> int:
    """Check; return 1 when errors were found, else 0."""
    from ..datasets import open_dataset

    if args.out:
        check_output_dir(args.out)
    if args.json:
        check_output_file(args.json, "--json")
    ds = open_dataset(args.dataset, format=args.format, split=args.split, classes=parse_classes(args.classes),
                      images=args.images, strict=False, verify_images=not args.no_decode,
                      progress=show_progress(args), allow_outside_root=args.allow_outside_root)
    if not hasattr(ds, "records"):
        raise ValueError(f"{args.dataset}: {type(ds).__name__} cannot be checked here (no annotation records); "
                         "check the source before packing it")
    rep = dataset_report(ds)
    rep["dataset"] = str(args.dataset)
    rep["split"] = args.split
    text = json.dumps(rep, indent=2) + "\n"
    _print_report(rep, ds.stats.problems, stats=not is_quiet(args) and args.json != "-")
    if args.json == "-":
        sys.stdout.write(text)
    if args.json and args.json != "-":
        atomic_write_bytes(Path(args.json), text.encode())
    if args.out:
        out = Path(args.out)
        atomic_write_bytes(out / "report.json", text.encode())
        montage = draw_montage(ds, out / "montage.png", args.montage)
        if not is_quiet(args) and args.json != "-":
            print(f"wrote {out / 'report.json'}" + (f" and {montage}" if montage else ""))
    return 1 if ds.stats.errors else 0
