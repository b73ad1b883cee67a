"""YOLO txt labels: one ``.txt`` per image, one ``class cx cy w h`` line per box, normalized to ``[0, 1]``.

The class in the file is 0-based and indexes the class-names file (``classes.txt``, ``obj.names`` one name per
line, or a ``data.yaml`` with ``names``); the label is ``class + 1`` (0 is background). Layouts found:

* ``root/images/<split>/x.jpg`` + ``root/labels/<split>/x.txt`` (Ultralytics), ``<split>`` optional;
* ``root/<split>/images/x.jpg`` + ``root/<split>/labels/x.txt`` (Roboflow exports);
* ``root/x.jpg`` + ``root/x.txt`` side by side (darknet).

An image without a label file has no boxes (a warning is recorded); an empty label file is an image without
boxes. YOLO cannot hold the difficult or iscrowd flags: the writer writes such boxes as ordinary ones and
counts them in :class:`~multibox.data.datasets.common.WriteReport`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from ...fileio import atomic_write_bytes
from .common import (
    AnnotatedImageDataset,
    AnnotationError,
    ClassSpec,
    ImageRecord,
    LinkMode,
    RawImage,
    RawObject,
    WriteReport,
    iter_images,
    output_names,
    parse_number,
    place_image,
    read_class_list,
)
from .registry import register_format

__all__ = ["YOLODataset", "write_yolo", "NAMES_FILES", "open_yolo", "detect_yolo", "write_yolo_dataset"]

#: Class-name files looked for in the root (first found wins).
NAMES_FILES = ("classes.txt", "obj.names", "classes.names", "data.yaml", "dataset.yaml")
# Normalized values beyond this mean pixel coordinates were written by mistake.
_NORMALIZED_SLACK = 1.5


def _layout(root: Path, split: str | None) -> tuple[Path, bool]:
    """(images folder, whether labels live in a parallel ``labels`` folder)."""
    if split:
        for images in (root / "images" / split, root / split / "images"):
            if images.is_dir():
                return images, True
        raise FileNotFoundError(f"{root}: no images/{split}/ or {split}/images/ folder for split {split!r}")
    if (root / "images").is_dir():
        return root / "images", True
    return root, False


def _label_path(image: Path, images_dir: Path, parallel: bool) -> Path:
    if not parallel:
        return image.with_suffix(".txt")
    rel = image.relative_to(images_dir).with_suffix(".txt")
    return images_dir.parent / "labels" / rel if images_dir.name == "images" else \
        images_dir.parent.parent / "labels" / images_dir.name / rel


class YOLODataset(AnnotatedImageDataset):
    """A YOLO-format dataset under ``root`` (see the module doc for the layouts).

    ``names_file`` defaults to the first of :data:`NAMES_FILES` found in ``root`` (or the split folder).
    ``classes``: ``None`` -> the names file's order; a list or file maps the names to other labels.
    Image ids are the image paths relative to the images folder, without extension.
    """

    format = "yolo"

    def __init__(self, root: str | os.PathLike, split: str | None = None, classes: ClassSpec = None, *,
                 names_file: str | os.PathLike | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such YOLO dataset folder")
        self.split = split
        self.images_dir, parallel = _layout(self.root, split)
        if names_file is None:
            for folder in dict.fromkeys([self.root, self.images_dir.parent, self.images_dir]):
                found = [folder / n for n in NAMES_FILES if (folder / n).is_file()]
                if found:
                    names_file = found[0]
                    break
            else:
                raise FileNotFoundError(f"{self.root}: no class-names file ({', '.join(NAMES_FILES)}); pass "
                                        "names_file=")
        self.names_file = Path(names_file)
        self.names = read_class_list(self.names_file)
        images = list(iter_images(self.images_dir))
        self._build(self._scan(images, parallel), classes, default_classes=self.names, total=len(images),
                    desc="YOLO")

    def _scan(self, images: list[Path], parallel: bool) -> Iterator[RawImage]:
        for image in images:
            label_file = _label_path(image, self.images_dir, parallel)
            image_id = image.relative_to(self.images_dir).with_suffix("").as_posix()
            objects: list[RawObject] = []
            if not label_file.is_file():
                self._report.warn("missing_label_file", image, f"{image}: no label file {label_file} (read as an "
                                  "image without boxes)")
            else:
                try:
                    objects = self._parse(label_file)
                except AnnotationError as e:
                    self._report.error(e)
                    self.stats.images_skipped += 1
                    continue
            yield RawImage(path=image, image_id=image_id, source=label_file, objects=objects, normalized=True,
                           what="line")

    def _parse(self, path: Path) -> list[RawObject]:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except UnicodeDecodeError as e:
            raise AnnotationError(path, f"not a UTF-8 text file ({e})", kind="bad_file") from None
        out = []
        for n, line in enumerate(lines, start=1):
            try:
                obj = self._parse_line(path, n, line)
            except AnnotationError as e:
                if self.strict:
                    raise
                self._report.error(e)
                self.stats.boxes_dropped_invalid += 1
                continue
            if obj is not None:
                out.append(obj)
        return out

    def _parse_line(self, path: Path, n: int, line: str) -> RawObject | None:
        parts = line.split()
        if not parts:
            return None
        cls = parts[0]
        name = None
        if cls.isdigit():
            k = int(cls)
            name = self.names[k] if k < len(self.names) else f"<class {k}>"
        if len(parts) != 5:
            raise AnnotationError(path, f"expected 5 values 'class cx cy w h', got {len(parts)}: {line.strip()!r}",
                                  index=n, name=name, what="line", kind="bad_line")
        if name is None:
            raise AnnotationError(path, f"class {cls!r} is not a non-negative integer", index=n, what="line",
                                  kind="bad_number")
        cx, cy, w, h = (parse_number(v, path, f, index=n, name=name, what="line")
                        for v, f in zip(parts[1:], ("cx", "cy", "w", "h"), strict=True))
        if w < 0 or h < 0:
            raise AnnotationError(path, f"negative box size w={w:g} h={h:g}", index=n, name=name, what="line",
                                  kind="inverted_box")
        if max(abs(cx), abs(cy), w, h) > _NORMALIZED_SLACK:
            raise AnnotationError(path, f"values ({cx:g}, {cy:g}, {w:g}, {h:g}) are not normalized to [0, 1] "
                                  "(pixel coordinates?)", index=n, name=name, what="line", kind="bad_number")
        return RawObject(name=name, box=(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), index=n)


def write_yolo(records: Sequence[ImageRecord], class_names: Sequence[str], dst: str | os.PathLike,
               split: str | None = None, link: LinkMode = "copy", progress: bool = False) -> WriteReport:
    """Write ``dst/images[/<split>]/``, ``dst/labels[/<split>]/`` (``class cx cy w h``, 10 significant
    digits), ``dst/classes.txt`` and an Ultralytics ``dst/data.yaml``. Difficult and crowd boxes are written as
    ordinary boxes and counted in ``report.lost``."""
    root = Path(dst)
    report = WriteReport(format="yolo", root=root)
    names, report.renamed = output_names(records)
    sub = Path(split) if split else Path()
    for rec, name in tqdm(list(zip(records, names, strict=True)), desc="writing YOLO", disable=not progress,
                          leave=False):
        t = rec.target
        h, w = t.orig_size
        report.files.append(place_image(rec.path, root / "images" / sub / name, link))
        lines = []
        for (x1, y1, x2, y2), label in zip(t.boxes.tolist(), t.labels.tolist(), strict=True):
            vals = ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
            lines.append(f"{label - 1} " + " ".join(f"{v:.10g}" for v in vals) + "\n")
        report.files.append(atomic_write_bytes(root / "labels" / sub / f"{Path(name).stem}.txt",
                                               "".join(lines).encode()))
        report.lost["difficult"] += int(t.difficult.sum())
        report.lost["iscrowd"] += int(t.iscrowd.sum())
        report.images += 1
        report.boxes += len(t)
    report.lost = +report.lost  # drop zero counts
    report.files.append(atomic_write_bytes(root / "classes.txt", "".join(f"{n}\n" for n in class_names[1:]).encode()))
    images = (Path("images") / sub).as_posix()
    data = {"path": ".", "train": images, "val": images, "names": dict(enumerate(class_names[1:]))}
    report.files.append(atomic_write_bytes(root / "data.yaml", yaml.safe_dump(data, sort_keys=False).encode()))
    return report


def open_yolo(paths: Sequence[Path], split: str | None = None, classes: ClassSpec = None,
              images: str | os.PathLike | None = None, **options: Any) -> YOLODataset:
    """Registry opener: the YOLO root folder (``images`` is not used: the layout says where images are)."""
    return YOLODataset(paths[0], split=split, classes=classes, **options)


def detect_yolo(path: Path) -> int:
    """A folder with ``labels/`` or a names file other than ``classes.txt`` (90); with only ``classes.txt`` (10,
    so that a CSV folder with its ``classes.txt`` stays CSV)."""
    if not path.is_dir():
        return 0
    if (path / "labels").is_dir() or any((path / n).is_file() for n in NAMES_FILES if n != "classes.txt"):
        return 90
    return 10 if (path / "classes.txt").is_file() else 0


def write_yolo_dataset(dataset: Any, dst: str | os.PathLike, split: str | None = None, link: LinkMode = "copy",
                       progress: bool = False) -> WriteReport:
    """Registry writer: :func:`write_yolo` of ``dataset.records``."""
    return write_yolo(dataset.records, dataset.class_names, dst, split=split, link=link, progress=progress)


register_format("yolo", open=open_yolo, write=write_yolo_dataset, detect=detect_yolo,
                description="YOLO txt labels (class cx cy w h, normalized) with classes.txt / obj.names / data.yaml")
