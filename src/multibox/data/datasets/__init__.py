"""Detection datasets in several formats, one sample format: ``(image [H, W, 3] uint8 RGB, Target)``.

* :class:`VOCDataset` (Pascal VOC XML, several roots combined), :class:`COCODataset` (COCO JSON),
  :class:`YOLODataset` (normalized txt + class names), :class:`CSVDataset` (``image_path,xmin,...,label``),
  and packed shards (``multibox data pack``, read by :class:`~multibox.data.shards.ShardDataset`);
* the formats live in one registry (:mod:`.registry`: :func:`register_format`, :func:`list_formats`), each
  registering itself in its own module; everything below reads it;
* :func:`open_dataset` finds the files of a dataset path in any format (what ``multibox data`` and the trainer
  use); :func:`write_dataset` writes any writable format (``multibox data convert``).

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
from .registry import (
    DatasetFormat,
    detect_scores,
    format_names,
    get_format,
    list_formats,
    register_format,
    unregister_format,
)
from .shards import open_shards
from .voc import VOCDataset, write_voc
from .yolo import YOLODataset, write_yolo

__all__ = [
    "VOCDataset", "COCODataset", "YOLODataset", "CSVDataset", "AnnotatedImageDataset", "ConcatDetectionDataset",
    "AnnotationError", "DatasetStats", "Problem", "ImageRecord", "WriteReport", "detect_format",
    "open_dataset", "write_dataset", "dataset_roots", "read_class_list", "resolve_class_names",
    "DatasetFormat", "register_format", "unregister_format", "get_format", "list_formats", "format_names",
    "split_format_prefix", "write_coco", "write_csv", "write_voc", "write_yolo", "open_shards",
]

def detect_format(path: str | os.PathLike) -> str:
    """The registered format whose detector is surest that ``path`` is one of its datasets (see each format's
    ``detect_*``: a folder with ``Annotations/`` -> voc, a shard ``dataset.json`` -> shards, ``labels/`` or
    ``obj.names``/``data.yaml`` -> yolo, ``annotations/*.json`` or one ``*.json`` -> coco, ``*.csv`` -> csv,
    only ``classes.txt`` -> yolo). Raises FileNotFoundError for a missing path, ValueError when no format
    claims it."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such dataset file or folder")
    scores = detect_scores(p)
    if not scores:
        what = "file name" if p.is_file() else "folder (no Annotations/, labels/, dataset.json, *.json or *.csv)"
        raise ValueError(f"{p}: cannot tell the dataset format from the {what}; pass --format (one of "
                         f"{', '.join(format_names())})")
    return scores[0][1]


def split_format_prefix(path: str | os.PathLike) -> tuple[str | None, str]:
    """``"shards:/data/voc"`` -> ``("shards", "/data/voc")``: a registered format name before the first ``:``
    names the format (as ``data.train: shards:DIR`` does); other strings come back as ``(None, path)``."""
    text = os.fspath(path)
    head, sep, rest = text.partition(":")
    if sep and rest and head in format_names():
        return head, rest
    return None, text


def open_dataset(path: str | os.PathLike | list[str | os.PathLike], format: str | None = None,
                 split: str | None = None, classes: Any = None, images: str | os.PathLike | None = None,
                 **options: Any) -> Any:
    """Open a dataset path the way ``multibox data`` and the trainer do, through the format registry.

    ``path``: a dataset file or folder; ``"FORMAT:PATH"`` names the format (``"shards:runs/packed"``); VOC
    takes several roots as a list or joined by ``os.pathsep``. ``format=None`` detects it
    (:func:`detect_format`). What each format accepts:

    * voc: a root or several; ``split=None`` reads every annotation;
    * coco: a JSON file, or a folder with ``annotations/instances_<split>.json``, ``<split>.json``,
      ``annotations.json`` or a single ``*.json``; images found by :func:`~.coco.find_coco_image_dir`;
    * yolo: the root folder; csv: a CSV file, or a folder with ``<split>.csv``, ``annotations.csv`` or one CSV;
    * shards: a folder written by ``multibox data pack`` (or its ``dataset.json``).

    ``classes`` ``None`` means: COCO's categories, YOLO's names file, the packed list, and for VOC and CSV the
    ``classes.txt`` beside the data when there is one, else the sorted names found ("infer"; pass ``"voc"`` to
    insist on the 20 VOC classes). ``images`` overrides the image folder (COCO, CSV). ``options`` go to the
    dataset class. Every dataset yields ``(image [H, W, 3] uint8 RGB, Target)`` (boxes xyxy pixels).
    """
    if isinstance(path, list | tuple):
        paths = [Path(x) for x in path]
    else:
        prefixed, text = split_format_prefix(path)
        if prefixed is not None:
            if format is not None and format != prefixed:
                raise ValueError(f"{path}: names format {prefixed!r} but format {format!r} was asked for")
            format = prefixed
        paths = [Path(x) for x in text.split(os.pathsep) if x] or [Path(text)]
    fmt = get_format(format or detect_format(paths[0]))
    if len(paths) > 1 and not fmt.multi_root:
        raise ValueError(f"only VOC combines several roots; got {len(paths)} paths for {fmt.name}")
    return fmt.open(paths, split=split, classes=classes, images=images, **options)


def dataset_roots(dataset: Any) -> list[Path]:
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
    out += list(dict.fromkeys(r.path.parent for r in getattr(dataset, "records", [])))
    return list(dict.fromkeys(out))


def write_dataset(dataset: AnnotatedImageDataset | ConcatDetectionDataset, dst: str | os.PathLike, format: str,
                  split: str | None = None, link: LinkMode = "copy", progress: bool = False) -> WriteReport:
    """Write ``dataset`` (its validated records, images copied or linked) to ``dst`` in ``format`` (a registered
    format with a writer).

    Layouts: voc ``Annotations/ JPEGImages/ ImageSets/Main/<split|all>.txt``; coco ``images/`` +
    ``annotations.json`` (``annotations/instances_<split>.json``); yolo ``images/[split] labels/[split]
    classes.txt data.yaml``; csv ``images/`` + ``annotations.csv`` (``<split>.csv``). All write ``classes.txt``
    or the format's own class list. Output files are written atomically; the source is only read.
    """
    fmt = get_format(format)
    if fmt.write is None:
        raise ValueError(f"format {format!r} cannot be written here (writable: {', '.join(format_names(True))})")
    return fmt.write(dataset, dst, split=split, link=link, progress=progress)
