"""Detection datasets in four formats, one sample format: ``(image [H, W, 3] uint8 RGB, Target)``.

* :class:`VOCDataset` (Pascal VOC XML, several roots combined), :class:`COCODataset` (COCO JSON),
  :class:`YOLODataset` (normalized txt + class names), :class:`CSVDataset` (``image_path,xmin,...,label``);
* :func:`open_dataset` finds the files of a dataset path in any format (what ``multibox data`` uses);
* :func:`write_dataset` writes any of them in any format (``multibox data convert``).

Every loader validates as :mod:`multibox.data.datasets.common` describes and exposes ``stats``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .coco import COCODataset, write_coco
from .common import (
    AnnotatedImageDataset,
    AnnotationError,
    ConcatDetectionDataset,
    DatasetStats,
    ImageRecord,
    LinkMode,
    Problem,
    WriteReport,
    read_class_list,
    resolve_class_names,
)
from .csv import CSVDataset, write_csv
from .voc import VOCDataset, write_voc
from .yolo import NAMES_FILES, YOLODataset, write_yolo

__all__ = [
    "VOCDataset", "COCODataset", "YOLODataset", "CSVDataset", "AnnotatedImageDataset", "ConcatDetectionDataset",
    "AnnotationError", "DatasetStats", "Problem", "ImageRecord", "WriteReport", "FORMATS", "detect_format",
    "open_dataset", "write_dataset", "dataset_roots", "read_class_list", "resolve_class_names",
]

FORMATS = ("voc", "coco", "yolo", "csv")
_WRITERS = {"voc": write_voc, "coco": write_coco, "yolo": write_yolo, "csv": write_csv}


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format of a dataset path: ``*.json`` -> coco, ``*.csv`` -> csv; a folder with
    ``Annotations/`` -> voc, with ``labels/``, ``obj.names`` or ``data.yaml`` -> yolo, with ``annotations/*.json``
    or one ``*.json`` -> coco, with a ``*.csv`` -> csv, else with ``classes.txt`` -> yolo (darknet layout).
    Raises ValueError when it cannot tell."""
    p = Path(path)
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in (".json", ".csv"):
            return suffix[1:]
        raise ValueError(f"{p}: cannot tell the dataset format from the file name; pass --format")
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such dataset file or folder")
    if (p / "Annotations").is_dir():
        return "voc"
    if (p / "labels").is_dir() or any((p / n).is_file() for n in NAMES_FILES if n != "classes.txt"):
        return "yolo"
    if (p / "annotations").is_dir() and any((p / "annotations").glob("*.json")):
        return "coco"
    if len(list(p.glob("*.json"))) == 1:
        return "coco"
    if len(list(p.glob("*.csv"))) >= 1:
        return "csv"
    if (p / "classes.txt").is_file():
        return "yolo"
    raise ValueError(f"{p}: cannot tell the dataset format (no Annotations/, labels/, *.json or *.csv); "
                     "pass --format")


def _pick(p: Path, candidates: list[Path], what: str, pattern: str) -> Path:
    for c in candidates:
        if c.is_file():
            return c
    found = sorted(p.glob(pattern))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(f"{p}: cannot find the {what} (tried {', '.join(str(c.name) for c in candidates)}"
                            f"{'; several ' + pattern + ' files, name one' if found else ''})")


def _classes(classes: Any, folder: Path) -> Any:
    if classes is None and (folder / "classes.txt").is_file():
        return folder / "classes.txt"
    return "infer" if classes is None else classes


def open_dataset(path: str | os.PathLike | list[str | os.PathLike], format: str | None = None,
                 split: str | None = None, classes: Any = None, images: str | os.PathLike | None = None,
                 **options: Any) -> AnnotatedImageDataset:
    """Open a dataset path the way ``multibox data`` does.

    * voc: a root, or a list of roots (several joined by ``os.pathsep`` in one string also work);
      ``split=None`` reads every annotation;
    * coco: a JSON file, or a folder with ``annotations/instances_<split>.json``, ``<split>.json``,
      ``annotations.json`` or a single ``*.json``; images found by :func:`~.coco.find_coco_image_dir`;
    * yolo: the root folder; csv: a CSV file, or a folder with ``<split>.csv``, ``annotations.csv`` or one CSV.

    ``classes`` ``None`` means: COCO's categories, YOLO's names file, and for VOC and CSV the ``classes.txt``
    beside the data when there is one, else the sorted names found ("infer"; pass ``"voc"`` to insist on the
    20 VOC classes). ``images`` overrides the image folder (COCO, CSV). ``options`` go to the dataset class.
    """
    if isinstance(path, list | tuple):
        paths = [Path(x) for x in path]
    else:
        paths = [Path(x) for x in str(path).split(os.pathsep) if x] or [Path(path)]
    fmt = format or detect_format(paths[0])
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if fmt != "voc" and len(paths) > 1:
        raise ValueError(f"only VOC combines several roots; got {len(paths)} paths for {fmt}")
    p = paths[0]
    if fmt == "voc":
        return VOCDataset(paths, split=split, classes=_classes(classes, p), **options)
    if fmt == "yolo":
        return YOLODataset(p, split=split, classes=classes, **options)
    if fmt == "coco":
        if p.is_dir():
            names = [f"annotations/instances_{split}.json", f"annotations/{split}.json", f"{split}.json",
                     f"{split}/_annotations.coco.json"] if split else \
                ["annotations.json", "annotations/instances_default.json", "_annotations.coco.json"]
            single = "annotations/*.json" if (p / "annotations").is_dir() else "*.json"
            p = _pick(p, [p / n for n in names], "COCO annotation file", single)
        return COCODataset(p, image_dir=images, classes=classes, **options)
    if p.is_dir():
        names = [f"{split}.csv", f"{split}/annotations.csv"] if split else ["annotations.csv"]
        p = _pick(p, [p / n for n in names], "CSV annotation file", "*.csv")
    return CSVDataset(p, image_dir=images, classes=_classes(classes, p.parent), **options)


def dataset_roots(dataset: AnnotatedImageDataset | ConcatDetectionDataset) -> list[Path]:
    """The folders a dataset reads from (its roots, annotation folder and image folders)."""
    if isinstance(dataset, ConcatDetectionDataset):
        return [r for d in dataset.datasets for r in dataset_roots(d)]
    out: list[Path] = []
    for attr in ("roots",):
        out += list(getattr(dataset, attr, []))
    for attr in ("root", "image_dir", "images_dir"):
        if getattr(dataset, attr, None) is not None:
            out.append(Path(getattr(dataset, attr)))
    for attr in ("annotation_file", "csv_file"):
        if getattr(dataset, attr, None) is not None:
            out.append(Path(getattr(dataset, attr)).parent)
    out += list(dict.fromkeys(r.path.parent for r in dataset.records))
    return list(dict.fromkeys(out))


def write_dataset(dataset: AnnotatedImageDataset | ConcatDetectionDataset, dst: str | os.PathLike, format: str,
                  split: str | None = None, link: LinkMode = "copy", progress: bool = False) -> WriteReport:
    """Write ``dataset`` (its validated records, images copied or linked) to ``dst`` in ``format``.

    Layouts: voc ``Annotations/ JPEGImages/ ImageSets/Main/<split|all>.txt``; coco ``images/`` +
    ``annotations.json`` (``annotations/instances_<split>.json``); yolo ``images/[split] labels/[split]
    classes.txt data.yaml``; csv ``images/`` + ``annotations.csv`` (``<split>.csv``). All write ``classes.txt``
    or the format's own class list. Output files are written atomically; the source is only read.
    """
    if format not in _WRITERS:
        raise ValueError(f"unknown format {format!r} (one of {', '.join(FORMATS)})")
    return _WRITERS[format](dataset.records, dataset.class_names, dst, split=split, link=link, progress=progress)
