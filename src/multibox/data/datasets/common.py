"""What every annotation format shares: validation of boxes and classes, problem reporting, the dataset base.

Loading a dataset has two phases. A format module *scans* its annotation files into :class:`RawImage` records
(numbers parsed and checked, names kept as strings). :class:`AnnotatedImageDataset` then *resolves* them:
the image size is read from the image header (EXIF orientation applied), class names become labels, and
every box is validated in this order:

1. non-numeric, NaN or infinite coordinates and missing fields -> error (raised when parsing);
2. a class name outside the class list -> error, or dropped and counted with ``unknown_classes="ignore"``;
3. an inverted box (``xmax < xmin`` or ``ymax < ymin``) -> error;
4. ``drop_difficult=True`` -> difficult boxes dropped and counted;
5. the box is clipped to ``[0, W] x [0, H]`` (counted when that changed it);
6. a box under 1 px wide or high after clipping is dropped (counted).

In strict mode (the default) an error raises :class:`AnnotationError` or
:class:`~multibox.data.image_io.ImageDecodeError` naming the file (and the object: index and class name).
In lenient mode (``strict=False``) it is recorded as a :class:`Problem` in :attr:`AnnotatedImageDataset.stats`
and the object (or the image, for file-level errors) is skipped and counted. Warnings (clipped or dropped
boxes, size mismatches, duplicate ids) are always recorded and never raise.
"""

from __future__ import annotations

import bisect
import math
import os
import secrets
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import yaml
from tqdm.auto import tqdm

from ...classes import VOC_CLASSES
from ...fileio import atomic_write_with
from ..image_io import MAX_IMAGE_PIXELS, ImageDecodeError, image_size, load_image
from ..types import Target

__all__ = [
    "AnnotationError", "Problem", "DatasetStats", "RawObject", "RawImage", "ImageRecord", "ClassSpec",
    "AnnotatedImageDataset", "ConcatDetectionDataset", "WriteReport", "IMAGE_EXTENSIONS", "MIN_BOX_SIZE",
    "parse_number", "parse_flag", "resolve_class_names", "read_class_list", "format_number", "place_image",
    "output_names", "pick_file", "path_inside",
]

#: Boxes narrower or lower than this (in pixels, after clipping) are dropped.
MIN_BOX_SIZE = 1.0
# a coordinate less than this many pixels outside the image is on its edge (rounding of written coordinates)
EDGE_TOLERANCE = 0.01
#: File extensions treated as images when a format lists a folder (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

ClassSpec = Sequence[str] | str | os.PathLike | None
LinkMode = Literal["copy", "hardlink", "symlink"]


class AnnotationError(ValueError):
    """A malformed annotation. The message names the file and, when known, the object (index and class).

    ``what`` says what the index counts: ``"object"`` (VOC), ``"annotation"`` (COCO), ``"line"`` (YOLO),
    ``"row"`` (CSV).
    """

    def __init__(self, path: str | os.PathLike, message: str, *, index: int | None = None,
                 name: str | None = None, what: str = "object", kind: str = "annotation") -> None:
        self.path = str(path)
        self.index = index
        self.name = name
        self.what = what
        self.kind = kind
        self.detail = message
        where = self.path
        if index is not None:
            where += f": {what} {index}"
            if name:
                where += f" ({name!r})"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Problem:
    """One finding of a scan. ``severity`` is ``"error"`` or ``"warning"``; ``kind`` a short code such as
    ``unsafe_xml``, ``bad_number``, ``missing_field``, ``inverted_box``, ``unknown_class``, ``image_unreadable``,
    ``box_clipped``, ``box_degenerate``, ``size_mismatch``; ``message`` is complete (it names the file)."""

    severity: str
    kind: str
    path: str
    message: str
    index: int | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"severity": self.severity, "kind": self.kind, "path": self.path, "index": self.index,
                "name": self.name, "message": self.message}

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


@dataclass
class DatasetStats:
    """Counts of what loading kept, changed and dropped, plus every :class:`Problem` found."""

    images: int = 0
    images_skipped: int = 0
    boxes: int = 0
    boxes_clipped: int = 0
    boxes_dropped_degenerate: int = 0
    boxes_dropped_invalid: int = 0
    boxes_dropped_unknown_class: int = 0
    boxes_dropped_difficult: int = 0
    unknown_classes: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        """The problems of severity ``error``."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """The problems of severity ``warning``."""
        return [p for p in self.problems if p.severity == "warning"]

    def counts(self) -> dict[str, int]:
        """The integer counters as a dict (name -> count)."""
        return {k: int(getattr(self, k)) for k in (
            "images", "images_skipped", "boxes", "boxes_clipped", "boxes_dropped_degenerate",
            "boxes_dropped_invalid", "boxes_dropped_unknown_class", "boxes_dropped_difficult")}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: counters, unknown class names with counts, errors/warnings totals."""
        return {**self.counts(), "unknown_classes": dict(self.unknown_classes), "errors": len(self.errors),
                "warnings": len(self.warnings)}

    def merged(self, other: DatasetStats) -> DatasetStats:
        """A new object with both objects' counts and problems."""
        out = DatasetStats(**{k: a + b for (k, a), b in zip(self.counts().items(), other.counts().values(),
                                                             strict=True)})
        out.unknown_classes = self.unknown_classes + other.unknown_classes
        out.problems = [*self.problems, *other.problems]
        return out

    def summary(self) -> str:
        """One line, e.g. ``"12 images (0 skipped), 40 boxes; 3 clipped, 1 dropped (degenerate 1) ..."``."""
        c = self.counts()
        dropped = sum(v for k, v in c.items() if k.startswith("boxes_dropped"))
        parts = [f"{c['images']} images ({c['images_skipped']} skipped)", f"{c['boxes']} boxes",
                 f"{c['boxes_clipped']} clipped", f"{dropped} dropped ("
                 f"degenerate {c['boxes_dropped_degenerate']}, invalid {c['boxes_dropped_invalid']}, "
                 f"unknown class {c['boxes_dropped_unknown_class']}, difficult {c['boxes_dropped_difficult']})",
                 f"{len(self.errors)} errors, {len(self.warnings)} warnings"]
        return "; ".join(parts)


@dataclass
class RawObject:
    """One box as a format file states it, before class resolution and clipping.

    ``box`` is xyxy in 0-based pixels, or normalized to ``[0, 1]`` when the image's ``normalized`` is set
    (YOLO). ``index`` is what error messages count (object, annotation, line or row number).
    """

    name: str
    box: tuple[float, float, float, float]
    index: int
    difficult: bool = False
    iscrowd: bool = False


@dataclass
class RawImage:
    """One image as scanned: where it is, its id, its objects and the size the annotation states, if any."""

    path: Path
    image_id: str
    source: Path
    objects: list[RawObject]
    annotated_size: tuple[int, int] | None = None
    normalized: bool = False
    what: str = "object"
    #: The folder the image must stay inside (the dataset's image folder); None: not checked.
    root: Path | None = None
    #: The image path as the annotation wrote it (for messages).
    named: str | None = None


@dataclass
class ImageRecord:
    """One resolved image: its file, the annotation file it came from, and its validated :class:`Target`."""

    path: Path
    source: Path
    target: Target

    @property
    def image_id(self) -> str:
        """The target's image id."""
        return self.target.image_id

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the upright image."""
        return self.target.orig_size


@dataclass
class WriteReport:
    """What a writer produced: counts, and the flags the target format cannot hold (name -> boxes)."""

    format: str
    root: Path
    images: int = 0
    boxes: int = 0
    files: list[Path] = field(default_factory=list)
    lost: Counter = field(default_factory=Counter)
    renamed: int = 0

    def warnings(self) -> list[str]:
        """Human-readable lines for every lost flag."""
        out = []
        for flag, n in sorted(self.lost.items()):
            out.append(f"{self.format} cannot hold the {flag} flag: {n} {flag} boxes were written as ordinary "
                       "boxes")
        if self.renamed:
            out.append(f"{self.renamed} images had clashing file names and were renamed (suffix _1, _2, ...)")
        return out


# ----------------------------------------------------------------------------------------------- parsing


def parse_number(value: object, path: str | os.PathLike, field_name: str, *, index: int | None = None,
                 name: str | None = None, what: str = "object") -> float:
    """``value`` (str or number) as a finite float, else :class:`AnnotationError` naming file, object, field.

    ``None`` means the field is missing (kind ``missing_field``); NaN, infinities, booleans and text that is
    not a number are ``bad_number`` errors.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise AnnotationError(path, f"missing {field_name}", index=index, name=name, what=what,
                              kind="missing_field")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise AnnotationError(path, f"{field_name} is {value!r}, not a number", index=index, name=name,
                              what=what, kind="bad_number")
    try:
        v = float(value.strip()) if isinstance(value, str) else float(value)
    except (ValueError, OverflowError):
        raise AnnotationError(path, f"{field_name} is {value!r}, not a number", index=index, name=name,
                              what=what, kind="bad_number") from None
    if not math.isfinite(v):
        raise AnnotationError(path, f"{field_name} is {value!r}, not a finite number", index=index, name=name,
                              what=what, kind="bad_number")
    return v


def parse_flag(value: object, path: str | os.PathLike, field_name: str, *, index: int | None = None,
               name: str | None = None, what: str = "object") -> bool:
    """A 0/1 flag (``None`` or empty -> False; ``"1"``, ``1``, ``true`` -> True) or :class:`AnnotationError`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    v = parse_number(value, path, field_name, index=index, name=name, what=what)
    if v not in (0.0, 1.0):
        raise AnnotationError(path, f"{field_name} is {value!r}, expected 0 or 1", index=index, name=name,
                              what=what, kind="bad_number")
    return v == 1.0


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Class names from a file: one name per line (``.txt``, ``.names``), or a YOLO ``data.yaml`` whose
    ``names`` is a list or an ``{index: name}`` dict. Blank lines are skipped; ``background`` is not added."""
    p = Path(path)
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            with open(p, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
            detail = str(e).replace("\n", " ") if not isinstance(e, RecursionError) else "nested too deeply"
            raise ValueError(f"{p}: not a readable YAML file ({detail})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a mapping with a 'names' list or dict, got {type(data).__name__}")
        names = data.get("names")
        if isinstance(names, dict):
            try:
                keys = sorted(int(k) for k in names if not isinstance(k, bool))
                if len(keys) != len(names):
                    raise ValueError
            except (TypeError, ValueError):
                raise ValueError(f"{p}: 'names' keys must be class indices") from None
            if keys != list(range(len(keys))):
                raise ValueError(f"{p}: 'names' indices must be 0..{len(keys) - 1}, got {keys}")
            names = [names[k] if k in names else names.get(str(k)) for k in keys]
        if not isinstance(names, list) or not all(isinstance(n, str | int) and not isinstance(n, bool)
                                                  for n in names):
            raise ValueError(f"{p}: 'names' must be a list or an {{index: name}} dict of class names, got "
                             f"{type(names).__name__ if not isinstance(names, list) else names!r}"[:300])
        nc = data.get("nc")
        if nc is not None:
            if isinstance(nc, bool) or not isinstance(nc, int):
                raise ValueError(f"{p}: 'nc' is {nc!r}, not a class count"[:300])
            if nc != len(names):
                raise ValueError(f"{p}: 'nc' is {nc} but 'names' has {len(names)} class(es)")
        return [str(n) for n in names]
    with open(p, encoding="utf-8-sig") as f:
        return [line.strip() for line in f if line.strip()]


def resolve_class_names(classes: ClassSpec, found: Iterable[str] = (), default: Sequence[str] | None = None
                        ) -> list[str]:
    """The class list with ``"background"`` first.

    ``classes``: ``None`` -> ``default`` (or the 20 VOC classes); ``"voc"`` -> VOC; ``"infer"`` -> the sorted
    names in ``found``; a path to an existing file -> :func:`read_class_list`; a sequence of names. Duplicate
    or empty names are an error.
    """
    if classes is None:
        names = list(default) if default is not None else list(VOC_CLASSES)
    elif isinstance(classes, str) and classes == "voc":
        names = list(VOC_CLASSES)
    elif isinstance(classes, str) and classes == "infer":
        names = sorted(set(found))
    elif isinstance(classes, os.PathLike) or (isinstance(classes, str) and Path(classes).is_file()):
        names = read_class_list(classes)
    elif isinstance(classes, str):
        raise ValueError(f"classes: {classes!r} is neither 'voc', 'infer', a class-list file nor a list of names")
    else:
        names = [str(n) for n in classes]
    if names and names[0] == "background":
        names = names[1:]
    dup = [n for n, k in Counter(names).items() if k > 1]
    if dup:
        raise ValueError(f"duplicate class names: {dup}")
    if any(not n.strip() for n in names):
        raise ValueError("empty class name in the class list")
    if "background" in names:
        raise ValueError("'background' is reserved for label 0 and must come first")
    return ["background", *names]


# ----------------------------------------------------------------------------------------------- dataset


class _Reporter:
    """Raises errors in strict mode, records them (and every warning) in ``stats`` otherwise."""

    def __init__(self, stats: DatasetStats, strict: bool) -> None:
        self.stats = stats
        self.strict = strict

    def error(self, exc: AnnotationError | ImageDecodeError | ValueError, kind: str | None = None,
              path: str | os.PathLike | None = None) -> None:
        if self.strict:
            raise exc
        if isinstance(exc, AnnotationError):
            self.stats.problems.append(Problem("error", kind or exc.kind, exc.path, str(exc), exc.index, exc.name))
        else:
            self.stats.problems.append(Problem("error", kind or "error", str(path or ""), str(exc)))

    def warn(self, kind: str, path: str | os.PathLike, message: str, index: int | None = None,
             name: str | None = None) -> None:
        self.stats.problems.append(Problem("warning", kind, str(path), message, index, name))


class AnnotatedImageDataset:
    """Base of the format datasets: ``ds[i] -> (image [H, W, 3] uint8 RGB, Target)``.

    Subclasses scan their files into :class:`RawImage` and call :meth:`_build`. Afterwards:

    * ``class_names``: ``["background", ...]``; label ``k`` is ``class_names[k]``;
    * ``records``: one :class:`ImageRecord` per image (path, annotation file, validated target), no pixels;
    * ``stats``: :class:`DatasetStats` (clipped / dropped counts and every problem).

    Options shared by every format (keyword-only in the subclasses):

    * ``strict`` (default True): errors raise; False records them in ``stats`` and skips the object/image;
    * ``unknown_classes``: ``"error"`` (default) or ``"ignore"`` (drop those boxes, count them by name);
    * ``drop_difficult``: drop boxes flagged difficult (counted);
    * ``verify_images``: decode every image while scanning (slow; finds truncated files up front);
    * ``image_sizes``: ``"header"`` (read each image header: safe, default) or ``"annotation"`` (trust the
      size an annotation states when it states one: faster for huge datasets);
    * ``progress``: show a tqdm bar while scanning; ``max_pixels``: the decompression-bomb limit;
    * ``allow_outside_root`` (default False): an image path in an annotation that leaves the dataset's image
      folder (``../../secret.jpg``, ``/etc/x.jpg``) is an error naming the annotation file and the path
      (kind ``path_outside_root``); True reads such files. The check is on the path as written (symbolic links
      inside the dataset, e.g. from ``data convert --link symlink``, are followed as usual).

    Images are decoded lazily in ``__getitem__``. In lenient mode an image that fails to decode there is
    recorded, counted in ``stats.images_skipped`` and replaced by the next readable one (in DataLoader worker
    processes those counts stay in the worker).
    """

    format: ClassVar[str] = "?"

    def __init__(self, *, strict: bool = True, unknown_classes: Literal["error", "ignore"] = "error",
                 drop_difficult: bool = False, verify_images: bool = False,
                 image_sizes: Literal["header", "annotation"] = "header", progress: bool = False,
                 max_pixels: int = MAX_IMAGE_PIXELS, allow_outside_root: bool = False) -> None:
        if unknown_classes not in ("error", "ignore"):
            raise ValueError(f"unknown_classes must be 'error' or 'ignore', got {unknown_classes!r}")
        if image_sizes not in ("header", "annotation"):
            raise ValueError(f"image_sizes must be 'header' or 'annotation', got {image_sizes!r}")
        self.strict = strict
        self.unknown_classes = unknown_classes
        self.drop_difficult = drop_difficult
        self.verify_images = verify_images
        self.image_sizes = image_sizes
        self.progress = progress
        self.max_pixels = max_pixels
        self.allow_outside_root = allow_outside_root
        self.stats = DatasetStats()
        self._report = _Reporter(self.stats, strict)
        self.records: list[ImageRecord] = []
        self.class_names: list[str] = []
        self._bad: set[int] = set()

    # -- building ------------------------------------------------------------------------------------------
    def _build(self, raw: Iterable[RawImage], classes: ClassSpec, default_classes: Sequence[str] | None = None,
               total: int | None = None, desc: str = "scanning") -> None:
        scanned = list(tqdm(raw, total=total, desc=f"{desc} annotations", disable=not self.progress,
                            unit="file", leave=False))
        found = (o.name for r in scanned for o in r.objects)
        self.class_names = resolve_class_names(classes, found, default_classes)
        index = {n: k for k, n in enumerate(self.class_names) if k > 0}
        seen: dict[str, Path] = {}
        for raw_image in tqdm(scanned, desc=f"{desc} images", disable=not self.progress, unit="img", leave=False):
            rec = self._resolve(raw_image, index)
            if rec is None:
                continue
            if rec.image_id in seen:
                self._report.warn("duplicate_id", rec.source, f"{rec.source}: image id {rec.image_id!r} also "
                                  f"used by {seen[rec.image_id]}")
            seen.setdefault(rec.image_id, rec.source)
            self.records.append(rec)
        self.stats.images = len(self.records)
        self.stats.boxes = sum(len(r.target) for r in self.records)

    def _image_size(self, raw: RawImage) -> tuple[int, int] | None:
        if raw.root is not None and not self.allow_outside_root and not path_inside(raw.path, raw.root):
            self._report.error(AnnotationError(
                raw.source, f"image path {raw.named or str(raw.path)!r} leaves the dataset's image folder "
                f"{raw.root} (refused; allow it explicitly to read files outside the dataset)",
                kind="path_outside_root"))
            self.stats.images_skipped += 1
            return None
        try:
            if self.verify_images:
                h, w = load_image(raw.path, self.max_pixels).shape[:2]
            elif self.image_sizes == "annotation" and raw.annotated_size:
                h, w = raw.annotated_size
            else:
                h, w = image_size(raw.path, self.max_pixels)
        except ImageDecodeError as e:
            self._report.error(e, "image_unreadable", raw.path)
            self.stats.images_skipped += 1
            return None
        if raw.annotated_size and raw.annotated_size != (h, w):
            ah, aw = raw.annotated_size
            hint = (" (the annotation matches the image before its EXIF rotation: annotations must be made on the "
                    "upright image)") if (ah, aw) == (w, h) else ""
            self._report.warn("size_mismatch", raw.source, f"{raw.source}: annotation says {aw}x{ah} (WxH) but "
                              f"image {raw.path.name} is {w}x{h}; boxes are clipped to the image{hint}")
        return h, w

    def _resolve(self, raw: RawImage, index: dict[str, int]) -> ImageRecord | None:
        size = self._image_size(raw)
        if size is None:
            return None
        h, w = size
        st, rep = self.stats, self._report
        boxes, labels, difficult, iscrowd = [], [], [], []
        for o in raw.objects:
            label = index.get(o.name)
            if label is None:
                if self.unknown_classes == "ignore":
                    st.unknown_classes[o.name] += 1
                    st.boxes_dropped_unknown_class += 1
                    continue
                known = ", ".join(self.class_names[1:21]) + (", ..." if len(self.class_names) > 21 else "")
                rep.error(AnnotationError(raw.source, f"unknown class {o.name!r} (classes: {known}; pass a class "
                                          "list or ignore unknown classes)", index=o.index, name=o.name,
                                          what=raw.what, kind="unknown_class"))
                st.unknown_classes[o.name] += 1
                st.boxes_dropped_unknown_class += 1
                continue
            x1, y1, x2, y2 = o.box
            if raw.normalized:
                x1, x2, y1, y2 = x1 * w, x2 * w, y1 * h, y2 * h
            if x2 < x1 or y2 < y1:
                rep.error(AnnotationError(raw.source, f"inverted box (xmin, ymin, xmax, ymax) = "
                                          f"({x1:g}, {y1:g}, {x2:g}, {y2:g}) in 0-based pixels", index=o.index,
                                          name=o.name, what=raw.what, kind="inverted_box"))
                st.boxes_dropped_invalid += 1
                continue
            if self.drop_difficult and o.difficult:
                st.boxes_dropped_difficult += 1
                continue
            # within EDGE_TOLERANCE of an edge is the edge (rounding of written coordinates, e.g. 6-decimal YOLO
            # labels of a box touching the border), not a box outside the image
            x1, y1, x2, y2 = (_snap(x1, w), _snap(y1, h), _snap(x2, w), _snap(y2, h))
            cx1, cy1 = min(max(x1, 0.0), w), min(max(y1, 0.0), h)
            cx2, cy2 = min(max(x2, 0.0), w), min(max(y2, 0.0), h)
            if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
                st.boxes_clipped += 1
                rep.warn("box_clipped", raw.source, f"{raw.source}: {raw.what} {o.index} ({o.name!r}): box "
                         f"({x1:g}, {y1:g}, {x2:g}, {y2:g}) clipped to the {w}x{h} image", o.index, o.name)
            if cx2 - cx1 < MIN_BOX_SIZE or cy2 - cy1 < MIN_BOX_SIZE:
                st.boxes_dropped_degenerate += 1
                rep.warn("box_degenerate", raw.source, f"{raw.source}: {raw.what} {o.index} ({o.name!r}): box "
                         f"({cx1:g}, {cy1:g}, {cx2:g}, {cy2:g}) is under {MIN_BOX_SIZE:g} px wide or high "
                         "(after clipping): dropped", o.index, o.name)
                continue
            boxes.append((cx1, cy1, cx2, cy2))
            labels.append(label)
            difficult.append(o.difficult)
            iscrowd.append(o.iscrowd)
        target = Target(boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                        labels=np.asarray(labels, dtype=np.int64), image_id=raw.image_id, orig_size=(h, w),
                        difficult=np.asarray(difficult, dtype=bool), iscrowd=np.asarray(iscrowd, dtype=bool))
        return ImageRecord(path=raw.path, source=raw.source, target=target)

    # -- access --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def target(self, index: int) -> Target:
        """The target of image ``index`` (a copy), without decoding the image."""
        t = self.records[index].target
        return replace(t, boxes=t.boxes.copy(), labels=t.labels.copy(), difficult=t.difficult.copy(),
                       iscrowd=t.iscrowd.copy())

    def __getitem__(self, index: int) -> tuple[np.ndarray, Target]:
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        for k in range(n):
            i = (index + k) % n
            if i in self._bad:
                continue
            rec = self.records[i]
            try:
                image = load_image(rec.path, self.max_pixels)
                if image.shape[:2] != rec.size:
                    raise ImageDecodeError(f"{rec.path}: decoded size {image.shape[1]}x{image.shape[0]} differs "
                                           f"from the header's {rec.size[1]}x{rec.size[0]}")
            except ImageDecodeError as e:
                if self.strict:
                    raise
                self._bad.add(i)
                self.stats.images_skipped += 1
                self._report.error(e, "image_unreadable", rec.path)
                continue
            return image, self.target(i)
        raise ImageDecodeError(f"no readable image left in this {self.format} dataset ({n} images)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {len(self.class_names) - 1} classes)"


class ConcatDetectionDataset:
    """Several datasets with the same class list as one (e.g. VOC07 trainval + VOC12 trainval).

    ``records`` and ``stats`` are the concatenation of the parts'; ``class_names`` must be equal.
    """

    def __init__(self, datasets: Sequence[AnnotatedImageDataset | ConcatDetectionDataset]) -> None:
        if not datasets:
            raise ValueError("ConcatDetectionDataset needs at least one dataset")
        names = datasets[0].class_names
        for d in datasets[1:]:
            if d.class_names != names:
                raise ValueError(f"class lists differ: {names} vs {d.class_names}")
        self.datasets = list(datasets)
        self.class_names = list(names)
        self._ends = np.cumsum([len(d) for d in self.datasets]).tolist()

    @property
    def records(self) -> list[ImageRecord]:
        """All parts' records, in order."""
        return [r for d in self.datasets for r in d.records]

    @property
    def stats(self) -> DatasetStats:
        """The parts' stats merged (a new object)."""
        out = DatasetStats()
        for d in self.datasets:
            out = out.merged(d.stats)
        return out

    def __len__(self) -> int:
        return int(self._ends[-1]) if self._ends else 0

    def _locate(self, index: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        part = bisect.bisect_right(self._ends, index)
        return part, index - (self._ends[part - 1] if part else 0)

    def target(self, index: int) -> Target:
        """The target of image ``index`` without decoding it."""
        part, i = self._locate(index)
        return self.datasets[part].target(i)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Target]:
        part, i = self._locate(index)
        return self.datasets[part][i]


# ----------------------------------------------------------------------------------------------- writing


def format_number(v: float) -> str:
    """A coordinate as short text exact to 1e-4: ``203.0 -> "203"``, ``12.25 -> "12.25"``."""
    s = f"{float(v):.4f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def output_names(records: Sequence[ImageRecord], safe_stems: bool = False) -> tuple[list[str], int]:
    """Unique output file names (the images' base names; clashes get ``_1``, ``_2``...) and the clash count.

    ``safe_stems`` replaces each run of whitespace in a stem by ``_`` first (VOC split files are
    whitespace-separated, so an id with a space could not be read back); uniqueness is kept after that."""
    used: set[str] = set()
    out, renamed = [], 0
    for r in records:
        stem, suffix = r.path.stem, r.path.suffix
        if safe_stems:
            stem = "_".join(stem.split()) or "image"
        name = f"{stem}{suffix}"
        if name.lower() in used:
            k = 1
            while f"{stem}_{k}{suffix}".lower() in used:
                k += 1
            name = f"{stem}_{k}{suffix}"
            renamed += 1
        used.add(name.lower())
        out.append(name)
    return out, renamed


def place_image(src: Path, dst: Path, link: LinkMode = "copy") -> Path:
    """Put image ``src`` at ``dst`` by copy (atomic), hard link or symbolic link (to the absolute path).

    The source is only read (opened read-only for a copy; a link never opens it). An existing ``dst`` is
    replaced atomically.
    """
    if link == "copy":
        return atomic_write_with(dst, lambda tmp: shutil.copyfile(src, tmp))
    if link not in ("hardlink", "symlink"):
        raise ValueError(f"link must be 'copy', 'hardlink' or 'symlink', got {link!r}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.{secrets.token_hex(8)}.tmp"
    try:
        if link == "hardlink":
            os.link(src, tmp)
        else:
            os.symlink(Path(src).resolve(), tmp)
        os.replace(tmp, dst)
    except BaseException:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        raise
    return dst


def iter_images(folder: Path) -> Iterator[Path]:
    """Image files under ``folder`` (recursive), sorted, by extension (see :data:`IMAGE_EXTENSIONS`)."""
    yield from sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def pick_file(folder: Path, candidates: Sequence[Path], what: str, pattern: str) -> Path:
    """The first existing file of ``candidates``, else the only ``pattern`` match in ``folder``;
    FileNotFoundError naming what was tried otherwise."""
    for c in candidates:
        if c.is_file():
            return c
    found = sorted(folder.glob(pattern))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(f"{folder}: cannot find the {what} (tried {', '.join(str(c.name) for c in candidates)}"
                            f"{'; several ' + pattern + ' files, name one' if found else ''})")


def _snap(v: float, side: float) -> float:
    """``v`` moved onto the edge ``0`` or ``side`` when it lies outside by less than :data:`EDGE_TOLERANCE`."""
    if -EDGE_TOLERANCE < v < 0.0:
        return 0.0
    if side < v < side + EDGE_TOLERANCE:
        return float(side)
    return v


def path_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path`` lies inside ``root`` by its written form: both are taken as they would be opened (a
    relative one from the working folder; ``path`` is the image path to open, e.g. ``root / file_name``), ``..``
    components are resolved lexically and the result must start with the root. Symbolic links are not followed."""
    base = os.path.normpath(os.path.abspath(root))
    p = os.path.normpath(os.path.abspath(path))
    return p == base or p.startswith(base.rstrip(os.sep) + os.sep)
