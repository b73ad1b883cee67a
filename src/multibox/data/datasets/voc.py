"""Pascal VOC: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.

Coordinates in VOC XML are 1-based pixel indices with ``xmax``/``ymax`` inclusive, so a box covering the
whole ``W x H`` image reads ``1 1 W H``. On load ``xmin``/``ymin`` lose 1 and ``xmax``/``ymax`` are kept, which
gives 0-based continuous xyxy (``0 0 W H``); the writer adds the 1 back.

XML is parsed with defusedxml: a DTD, entity declarations or external references are refused (an
``unsafe_xml`` error naming the file). Per object: ``<name>`` and ``<bndbox>`` with ``xmin ymin xmax ymax`` are
required; ``<difficult>`` (default 0) is kept; ``<iscrowd>`` (not VOC, written by this module for boxes that
came from COCO crowd annotations) is read when present. The image is ``JPEGImages/<filename>`` or, when that
file is absent, ``JPEGImages/<xml stem>.<jpg|png|...>``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import defusedxml
import defusedxml.ElementTree as DET
import numpy as np
from tqdm.auto import tqdm

from ...fileio import atomic_write_bytes
from .common import (
    IMAGE_EXTENSIONS,
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
    parse_flag,
    parse_number,
    place_image,
)
from .registry import register_format

__all__ = ["VOCDataset", "parse_voc_xml", "write_voc", "voc_xml", "open_voc", "detect_voc", "write_voc_dataset"]


def _parse_xml(path: Path) -> ET.Element:
    try:
        with open(path, "rb") as f:
            tree = DET.parse(f, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as e:
        raise AnnotationError(path, f"unsafe XML rejected: DTDs, entity declarations and external references are "
                              f"not allowed in annotations ({type(e).__name__}: {e})", kind="unsafe_xml") from None
    except ET.ParseError as e:
        raise AnnotationError(path, f"not well-formed XML ({e})", kind="bad_xml") from None
    root = tree.getroot()
    if root.tag != "annotation":
        raise AnnotationError(path, f"root element is <{root.tag}>, expected <annotation>", kind="bad_xml")
    return root


def parse_voc_xml(path: str | os.PathLike, on_error: Any = None) -> tuple[str | None, tuple[int, int] | None,
                                                                           list[RawObject]]:
    """Read one VOC XML file: ``(filename or None, (height, width) or None, objects)``.

    Boxes are converted to 0-based xyxy (``xmin - 1``, ``ymin - 1``, ``xmax``, ``ymax``). A file-level problem
    raises :class:`AnnotationError`; an object-level one calls ``on_error(err)`` and skips the object when
    ``on_error`` is given (lenient scanning), else raises.
    """
    p = Path(path)
    root = _parse_xml(p)
    filename = (root.findtext("filename") or "").strip() or None
    size = None
    size_el = root.find("size")
    if size_el is not None:
        w = parse_number(size_el.findtext("width"), p, "<size>/<width>")
        h = parse_number(size_el.findtext("height"), p, "<size>/<height>")
        if w > 0 and h > 0:  # 0 (seen in some exports) means "not filled in"
            size = (int(round(h)), int(round(w)))
    objects = []
    for i, obj in enumerate(root.iter("object")):
        try:
            objects.append(_parse_object(p, i, obj))
        except AnnotationError as e:
            if on_error is None:
                raise
            on_error(e)
    return filename, size, objects


def _parse_object(p: Path, i: int, obj: ET.Element) -> RawObject:
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise AnnotationError(p, "missing <name>", index=i, kind="missing_field")
    bb = obj.find("bndbox")
    if bb is None:
        raise AnnotationError(p, "missing <bndbox>", index=i, name=name, kind="missing_field")
    xmin, ymin, xmax, ymax = (parse_number(bb.findtext(t), p, f"<bndbox>/<{t}>", index=i, name=name)
                              for t in ("xmin", "ymin", "xmax", "ymax"))
    difficult = parse_flag(obj.findtext("difficult"), p, "<difficult>", index=i, name=name)
    iscrowd = parse_flag(obj.findtext("iscrowd"), p, "<iscrowd>", index=i, name=name)
    return RawObject(name=name, box=(xmin - 1.0, ymin - 1.0, xmax, ymax), index=i, difficult=difficult,
                     iscrowd=iscrowd)


def _find_image(images: Path, filename: str | None, stem: str) -> Path:
    if filename:
        direct = images / filename
        if direct.is_file():
            return direct
    for base in dict.fromkeys([stem, Path(filename).stem if filename else stem]):
        for ext in IMAGE_EXTENSIONS:
            for e in (ext, ext.upper()):
                cand = images / f"{base}{e}"
                if cand.is_file():
                    return cand
    return images / (filename or f"{stem}.jpg")


class VOCDataset(AnnotatedImageDataset):
    """Pascal VOC detection data from one root or several combined (the usual "07+12").

    ``VOCDataset([voc2007, voc2012], split="trainval")`` reads ``<root>/ImageSets/Main/trainval.txt`` of each
    root in turn; ``split=None`` takes every ``Annotations/*.xml`` (sorted). ``classes``: ``None`` -> the 20
    VOC classes, ``"infer"`` -> the sorted names found, a list of names, or a class-list file. Image ids are
    the XML file stems. See :class:`~multibox.data.datasets.common.AnnotatedImageDataset` for the shared
    options (``strict``, ``unknown_classes``, ``drop_difficult``, ...).
    """

    format = "voc"

    def __init__(self, roots: str | os.PathLike | Sequence[str | os.PathLike], split: str | None = "trainval",
                 classes: ClassSpec = None, **options: Any) -> None:
        super().__init__(**options)
        self.roots = [Path(roots)] if isinstance(roots, str | os.PathLike) else [Path(r) for r in roots]
        self.split = split
        xml_files: list[tuple[Path, Path]] = []  # (root, xml path)
        for root in self.roots:
            ann = root / "Annotations"
            if not ann.is_dir():
                raise FileNotFoundError(f"{root}: not a VOC root (no Annotations/ folder)")
            if split is None:
                xml_files += [(root, p) for p in sorted(ann.glob("*.xml"))]
                continue
            split_file = root / "ImageSets" / "Main" / f"{split}.txt"
            if not split_file.is_file():
                main = root / "ImageSets" / "Main"
                have = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem) if main.is_dir() else []
                raise FileNotFoundError(f"{split_file}: no such split file (splits here: {have or 'none'}; "
                                        "split=None reads every annotation)")
            with open(split_file, encoding="utf-8") as f:
                ids = [line.split()[0] for line in f if line.strip()]
            xml_files += [(root, ann / f"{i}.xml") for i in ids]
        self._build(self._scan(xml_files), classes, total=len(xml_files), desc="VOC")

    def _scan(self, xml_files: list[tuple[Path, Path]]) -> Iterator[RawImage]:
        for root, xml in xml_files:
            try:
                if not xml.is_file():
                    raise AnnotationError(xml, "annotation file listed in the split is missing", kind="missing_file")
                filename, size, objects = parse_voc_xml(xml, on_error=None if self.strict else self._on_error)
            except AnnotationError as e:
                self._report.error(e)
                self.stats.images_skipped += 1
                continue
            image = _find_image(root / "JPEGImages", filename, xml.stem)
            yield RawImage(path=image, image_id=xml.stem, source=xml, objects=objects, annotated_size=size,
                           root=root / "JPEGImages", named=filename)

    def _on_error(self, e: AnnotationError) -> None:
        self._report.error(e)
        self.stats.boxes_dropped_invalid += 1


def voc_xml(filename: str, size: tuple[int, int], boxes: np.ndarray, names: Sequence[str],
            difficult: np.ndarray, iscrowd: np.ndarray, folder: str = "JPEGImages") -> bytes:
    """One VOC annotation as UTF-8 XML bytes; ``boxes`` are 0-based xyxy pixels (written 1-based)."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = folder
    ET.SubElement(ann, "filename").text = filename
    sz = ET.SubElement(ann, "size")
    ET.SubElement(sz, "width").text = str(size[1])
    ET.SubElement(sz, "height").text = str(size[0])
    ET.SubElement(sz, "depth").text = "3"
    ET.SubElement(ann, "segmented").text = "0"
    for (x1, y1, x2, y2), name, d, c in zip(boxes.tolist(), names, difficult.tolist(), iscrowd.tolist(),
                                             strict=True):
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "1" if d else "0"
        if c:
            ET.SubElement(obj, "iscrowd").text = "1"
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (x1 + 1.0, y1 + 1.0, x2, y2), strict=True):
            ET.SubElement(bb, tag).text = format_number(v)
    ET.indent(ann)
    return ET.tostring(ann, encoding="utf-8", xml_declaration=False) + b"\n"


def write_voc(records: Sequence[ImageRecord], class_names: Sequence[str], dst: str | os.PathLike,
              split: str | None = None, link: LinkMode = "copy", progress: bool = False) -> WriteReport:
    """Write a VOC root at ``dst``: ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<split or all>.txt``
    and ``classes.txt`` (the class order, one per line, background excluded). Every file is written
    atomically; images are copied or linked as ``link`` says. Image ids are the file stems with whitespace runs
    replaced by ``_`` (kept unique), so that the split file reads back. VOC holds ``difficult`` natively and
    ``iscrowd`` as an extra ``<iscrowd>1</iscrowd>`` tag, so nothing is lost."""
    root = Path(dst)
    report = WriteReport(format="voc", root=root)
    names, report.renamed = output_names(records, safe_stems=True)  # ids without whitespace: split files
    ids = []
    for rec, name in tqdm(list(zip(records, names, strict=True)), desc="writing VOC", disable=not progress,
                          leave=False):
        t = rec.target
        stem = Path(name).stem
        img_dst = place_image(rec.path, root / "JPEGImages" / name, link)
        xml = voc_xml(name, t.orig_size, t.boxes, [class_names[k] for k in t.labels], t.difficult, t.iscrowd)
        report.files += [img_dst, atomic_write_bytes(root / "Annotations" / f"{stem}.xml", xml)]
        ids.append(stem)
        report.images += 1
        report.boxes += len(t)
    report.files.append(atomic_write_bytes(root / "ImageSets" / "Main" / f"{split or 'all'}.txt",
                                           "".join(f"{i}\n" for i in ids).encode()))
    report.files.append(atomic_write_bytes(root / "classes.txt", "".join(f"{n}\n" for n in class_names[1:]).encode()))
    return report


def open_voc(paths: Sequence[Path], split: str | None = None, classes: ClassSpec = None,
             images: str | os.PathLike | None = None, **options: Any) -> VOCDataset:
    """Registry opener: VOC roots (several combine); ``classes=None`` takes the ``classes.txt`` beside the first
    root when there is one, else the sorted names found. ``images`` is not used (VOC's are in JPEGImages/)."""
    if classes is None:
        classes = paths[0] / "classes.txt" if (paths[0] / "classes.txt").is_file() else "infer"
    return VOCDataset(list(paths), split=split, classes=classes, **options)


def detect_voc(path: Path) -> int:
    """A folder with ``Annotations/``: a VOC root (score 100)."""
    return 100 if path.is_dir() and (path / "Annotations").is_dir() else 0


def write_voc_dataset(dataset: Any, dst: str | os.PathLike, split: str | None = None, link: LinkMode = "copy",
                      progress: bool = False) -> WriteReport:
    """Registry writer: :func:`write_voc` of ``dataset.records``."""
    return write_voc(dataset.records, dataset.class_names, dst, split=split, link=link, progress=progress)


register_format("voc", open=open_voc, write=write_voc_dataset, detect=detect_voc, multi_root=True,
                description="Pascal VOC: Annotations/*.xml, JPEGImages/, ImageSets/Main/<split>.txt (several roots "
                            "combine)")
