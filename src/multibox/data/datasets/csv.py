"""CSV boxes: a header row, then one row per box (``image_path,xmin,ymin,xmax,ymax,label``).

This is the deepforest and Udacity style. Columns are found by header name, case-insensitively, so their
order does not matter and extra columns are ignored:

* image: ``image_path``, ``filename``, ``file_name``, ``image``, ``image_name``, ``frame`` or ``path``;
* box: ``xmin``, ``ymin``, ``xmax``, ``ymax`` — 0-based pixel xyxy, used as they are (no 1-based shift);
* class: ``label``, ``class``, ``class_name`` or ``category`` — a class *name*;
* optional ``width`` and ``height`` (the annotated image size, compared with the image).

Several rows of one image make several boxes; a row with the image and empty coordinates and label is an
image without boxes. Image paths are relative to ``image_dir`` (default: the CSV's folder). CSV cannot hold
the difficult or iscrowd flags (the writer counts what it loses).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from ...fileio import atomic_write_with
from .common import (
    AnnotatedImageDataset,
    AnnotationError,
    ClassSpec,
    ImageRecord,
    LinkMode,
    RawImage,
    RawObject,
    WriteReport,
    format_number,
    output_names,
    parse_number,
    pick_file,
    place_image,
)
from .registry import register_format

__all__ = ["CSVDataset", "write_csv", "CSV_HEADER", "open_csv", "detect_csv", "write_csv_dataset"]

CSV_HEADER = ("image_path", "xmin", "ymin", "xmax", "ymax", "label")
_ALIASES = {
    "image": ("image_path", "filename", "file_name", "image", "image_name", "frame", "path"),
    "xmin": ("xmin",), "ymin": ("ymin",), "xmax": ("xmax",), "ymax": ("ymax",),
    "label": ("label", "class", "class_name", "category"),
}


def _columns(path: Path, header: list[str]) -> dict[str, int]:
    lower = [h.strip().lower() for h in header]
    cols: dict[str, int] = {}
    for key, names in _ALIASES.items():
        idx = next((lower.index(n) for n in names if n in lower), None)
        if idx is None:
            raise AnnotationError(path, f"header {header} has no {key!r} column (accepted names: {', '.join(names)})",
                                  kind="bad_header")
        cols[key] = idx
    for key in ("width", "height"):
        if key in lower:
            cols[key] = lower.index(key)
    return cols


class CSVDataset(AnnotatedImageDataset):
    """Boxes from a CSV file (see the module doc). ``classes`` defaults to ``"infer"`` (the sorted names found);
    give a list or class-list file to fix the label order. Image ids are the image paths without extension."""

    format = "csv"

    def __init__(self, csv_file: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                 classes: ClassSpec = "infer", **options: Any) -> None:
        super().__init__(**options)
        self.csv_file = Path(csv_file)
        if not self.csv_file.is_file():
            raise FileNotFoundError(f"{self.csv_file}: no such CSV file")
        self.image_dir = Path(image_dir) if image_dir is not None else self.csv_file.parent
        self._build(self._scan(), classes, desc="CSV")

    def _scan(self) -> Iterator[RawImage]:
        p = self.csv_file
        images: dict[str, RawImage] = {}
        try:
            with open(p, encoding="utf-8-sig", newline="") as f:
                rows = list(csv.reader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            raise AnnotationError(p, f"cannot read as CSV ({e})", kind="bad_file") from None
        if not rows:
            raise AnnotationError(p, "empty file (a header row is required)", kind="bad_header")
        cols = _columns(p, rows[0])
        for line, row in enumerate(rows[1:], start=2):
            if not any(c.strip() for c in row):
                continue
            try:
                self._row(p, line, row, cols, images)
            except AnnotationError as e:
                self._report.error(e)
                self.stats.boxes_dropped_invalid += 1
        yield from images.values()

    def _row(self, p: Path, line: int, row: list[str], cols: dict[str, int], images: dict[str, RawImage]) -> None:
        def cell(key: str) -> str:
            i = cols[key]
            return row[i].strip() if i < len(row) else ""

        name = cell("label") or None
        image = cell("image")
        if not image:
            raise AnnotationError(p, "empty image path", index=line, name=name, what="row", kind="missing_field")
        raw = images.get(image)
        if raw is None:
            size = None
            if "width" in cols and "height" in cols and cell("width") and cell("height"):
                w = parse_number(cell("width"), p, "width", index=line, name=name, what="row")
                h = parse_number(cell("height"), p, "height", index=line, name=name, what="row")
                size = (int(round(h)), int(round(w))) if w > 0 and h > 0 else None
            image_id = PurePosixPath(image.replace("\\", "/")).with_suffix("").as_posix()
            raw = images[image] = RawImage(path=self.image_dir / image, image_id=image_id, source=p, objects=[],
                                           annotated_size=size, what="row", root=self.image_dir, named=image)
        coords = [cell(k) for k in ("xmin", "ymin", "xmax", "ymax")]
        if not any(coords) and name is None:
            return  # an image without boxes
        if name is None:
            raise AnnotationError(p, "missing label", index=line, what="row", kind="missing_field")
        x1, y1, x2, y2 = (parse_number(v, p, k, index=line, name=name, what="row")
                          for v, k in zip(coords, ("xmin", "ymin", "xmax", "ymax"), strict=True))
        raw.objects.append(RawObject(name=name, box=(x1, y1, x2, y2), index=line))


def write_csv(records: Sequence[ImageRecord], class_names: Sequence[str], dst: str | os.PathLike,
              split: str | None = None, link: LinkMode = "copy", progress: bool = False) -> WriteReport:
    """Write ``dst/images/`` and ``dst/annotations.csv`` (``dst/<split>.csv`` with a split) with the header
    ``image_path,xmin,ymin,xmax,ymax,label`` (paths relative to ``dst``), plus ``dst/classes.txt``. An image
    without boxes gets one row with empty coordinates. Difficult and crowd boxes are written as ordinary boxes
    and counted in ``report.lost``."""
    root = Path(dst)
    report = WriteReport(format="csv", root=root)
    names, report.renamed = output_names(records)
    rows: list[list[str]] = [list(CSV_HEADER)]
    for rec, name in tqdm(list(zip(records, names, strict=True)), desc="writing CSV", disable=not progress,
                          leave=False):
        t = rec.target
        report.files.append(place_image(rec.path, root / "images" / name, link))
        rel = f"images/{name}"
        if not len(t):
            rows.append([rel, "", "", "", "", ""])
        for box, label in zip(t.boxes.tolist(), t.labels.tolist(), strict=True):
            rows.append([rel, *(format_number(v) for v in box), class_names[label]])
        report.lost["difficult"] += int(t.difficult.sum())
        report.lost["iscrowd"] += int(t.iscrowd.sum())
        report.images += 1
        report.boxes += len(t)
    report.lost = +report.lost

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)

    report.files.append(atomic_write_with(root / f"{split or 'annotations'}.csv", write))
    report.files.append(atomic_write_with(root / "classes.txt", lambda tmp: tmp.write_text(
        "".join(f"{n}\n" for n in class_names[1:]), encoding="utf-8")))
    return report


def open_csv(paths: Sequence[Path], split: str | None = None, classes: ClassSpec = None,
             images: str | os.PathLike | None = None, **options: Any) -> CSVDataset:
    """Registry opener: a CSV file, or a folder with ``<split>.csv``, ``<split>/annotations.csv`` (with a split),
    ``annotations.csv`` or a single ``*.csv``. ``classes=None``: the ``classes.txt`` beside the CSV when there is
    one, else the sorted names found."""
    p = paths[0]
    if p.is_dir():
        names = [f"{split}.csv", f"{split}/annotations.csv"] if split else ["annotations.csv"]
        p = pick_file(p, [p / n for n in names], "CSV annotation file", "*.csv")
    if classes is None:
        classes = p.parent / "classes.txt" if (p.parent / "classes.txt").is_file() else "infer"
    return CSVDataset(p, image_dir=images, classes=classes, **options)


def detect_csv(path: Path) -> int:
    """A ``*.csv`` file (50) or a folder holding one or more ``*.csv`` (60)."""
    if path.is_file():
        return 50 if path.suffix.lower() == ".csv" else 0
    return 60 if path.is_dir() and any(path.glob("*.csv")) else 0


def write_csv_dataset(dataset: Any, dst: str | os.PathLike, split: str | None = None, link: LinkMode = "copy",
                      progress: bool = False) -> WriteReport:
    """Registry writer: :func:`write_csv` of ``dataset.records``."""
    return write_csv(dataset.records, dataset.class_names, dst, split=split, link=link, progress=progress)


register_format("csv", open=open_csv, write=write_csv_dataset, detect=detect_csv,
                description="CSV boxes: a header, then image_path,xmin,ymin,xmax,ymax,label rows (pixel xyxy)")
