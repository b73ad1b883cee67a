"""What evaluation reads and writes: ground truth, and detections in the two results formats.

**Ground truth** (:class:`GroundTruth`, from :func:`load_ground_truth`): a VOC root (or any dataset path that
:func:`multibox.data.datasets.open_dataset` reads) with a split, or a COCO instances JSON. Image ids are
strings: VOC file stems, COCO's numeric ids written as text. Labels are ``1..C-1`` in ``class_names`` order;
for a COCO file the categories sorted by id give labels ``1, 2, ...`` (as :class:`~multibox.data.datasets.
COCODataset` does) and ``category_ids`` maps labels back to COCO ids.

**Detections** (:class:`DetectionTable`: one row per detection, boxes xyxy in 0-based continuous pixels of the
original image) come from and go to:

* the VOC devkit's comp4 text files ``comp4_det_<split>_<class>.txt``, one per class, lines
  ``image_id score xmin ymin xmax ymax`` in the devkit's 1-based coordinates: ``xmin``/``ymin`` lose 1 on
  reading and gain 1 on writing, ``xmax``/``ymax`` are kept (docs/design.md, "Boxes");
* COCO results JSON: a list of ``{"image_id", "category_id" or "category_name", "bbox": [x, y, w, h],
  "score"}`` in COCO's 0-based continuous pixels: ``x1 = x``, ``x2 = x + w`` (a devkit box ``[xmin, xmax]`` is
  ``x = xmin - 1``, ``w = xmax - xmin + 1``). For VOC (and other non-COCO) ground truth, ``image_id`` is the
  image id string and ``category_id`` the label (1..C-1); for COCO ground truth both are COCO's own ids.
  ``category_name``, when present, decides the class. Records grouped per image as
  :meth:`multibox.detections.Detections.to_dict` writes them (``{"image_id", "detections": [...]}``) are read
  too, and so is ``multibox detect``'s ``detections.json`` (``{"images": [{"id", "file_name", "source"}],
  "annotations": [...]}``): its images are numbered 1..N in the order detect saw them, so they are matched to the
  ground truth by **file stem** (``file_name``, else ``source``) against the image ids (for COCO ground truth,
  against the stems of its images' ``file_name``), never by number.

Bad input raises :class:`DetectionsFileError` (a ``ValueError``) naming the file and the line or record.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.types import Target
from ..fileio import atomic_write_bytes

if TYPE_CHECKING:
    from ..detections import Detections

__all__ = [
    "GroundTruth", "DetectionTable", "DetectionsFileError", "load_ground_truth", "read_coco_ground_truth",
    "coco_ground_truth",
    "read_detections", "read_comp4", "read_coco_results", "write_comp4", "write_coco_results", "coco_results",
    "comp4_file_name", "load_json",
]


class DetectionsFileError(ValueError):
    """A malformed detections or ground-truth file; the message names the file (and line or record)."""

    def __init__(self, path: str | os.PathLike, message: str, *, line: int | None = None,
                 record: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.record = record
        where = self.path
        if line is not None:
            where += f": line {line}"
        if record is not None:
            where += f": record {record}"
        super().__init__(f"{where}: {message}")


# ----------------------------------------------------------------------------------------------- ground truth


@dataclass
class GroundTruth:
    """The ground truth of an evaluation: one :class:`~multibox.data.types.Target` per image.

    Attributes:
        targets: boxes xyxy 0-based continuous pixels, labels 1..C-1, ``difficult`` / ``iscrowd`` flags.
        class_names: ``C`` names, ``"background"`` first.
        source: where it was read from (for messages).
        coco: the COCO file's dict as read (COCO ground truth only; the COCO metric uses it unchanged).
        category_ids: ``C`` COCO category ids, ``category_ids[label]`` (COCO ground truth only).
        coco_image_ids: COCO's id of each target (COCO ground truth only).
    """

    targets: list[Target]
    class_names: list[str]
    source: str = "<memory>"
    coco: dict[str, Any] | None = None
    category_ids: list[int] | None = None
    coco_image_ids: list[Any] | None = None
    _index: dict[str, int] | None = field(default=None, init=False, repr=False)
    _file_index: dict[str, int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.class_names = [str(n) for n in self.class_names]
        self.targets = list(self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def image_ids(self) -> list[str]:
        """The image ids, in order."""
        return [str(t.image_id) for t in self.targets]

    @property
    def is_coco(self) -> bool:
        """True when read from a COCO file (results then use COCO's image and category ids)."""
        return self.coco is not None

    def index_of(self, image_id: object) -> int | None:
        """Position of ``image_id`` (compared as text), or ``None``. Raises ValueError when two images share
        an id (detections could not be matched to images)."""
        if self._index is None:
            index: dict[str, int] = {}
            for i, t in enumerate(self.targets):
                key = str(t.image_id)
                if key in index:
                    raise ValueError(f"{self.source}: image id {key!r} appears twice in the ground truth; image "
                                     "ids must be unique to match detections to images")
                index[key] = i
            self._index = index
        return self._index.get(str(image_id))

    def index_of_file(self, file_name: str) -> int | None:
        """Position of the image whose file is ``file_name`` (a name or path): its stem (or the name without
        suffix) compared with the image ids, and for COCO ground truth with the stems of the ``file_name`` of
        its images; ``None`` when no image matches."""
        name = Path(str(file_name).replace("\\", "/"))
        for key in (name.stem, str(name.with_suffix("")), name.name):
            k = self.index_of(key)
            if k is not None:
                return k
        if self.coco is not None:
            if self._file_index is None:
                index: dict[str, int] = {}
                pos = {cid: i for i, cid in enumerate(self.coco_image_ids or [])}
                for im in self.coco.get("images", []):
                    if isinstance(im, dict) and isinstance(im.get("file_name"), str) and im.get("id") in pos:
                        index.setdefault(Path(im["file_name"]).stem, pos[im["id"]])
                self._file_index = index
            return self._file_index.get(name.stem)
        return None

    def label_of_name(self) -> dict[str, int]:
        """Class name -> label (1..C-1)."""
        return {n: k for k, n in enumerate(self.class_names) if k > 0}

    def result_image_id(self, index: int) -> Any:
        """The ``image_id`` that a results record of image ``index`` carries (COCO id or image id string)."""
        return self.coco_image_ids[index] if self.coco_image_ids is not None else str(self.targets[index].image_id)

    def result_category_id(self, label: int) -> int:
        """The ``category_id`` that a results record of ``label`` carries (COCO id, else the label)."""
        return int(self.category_ids[label]) if self.category_ids is not None else int(label)

    def coco_dict(self, difficult_as_crowd: bool = True) -> dict[str, Any]:
        """The COCO ground-truth dict: the file's own for COCO, else built by
        :func:`coco_ground_truth` (image ids ``1..N``, category id = label)."""
        if self.coco is not None:
            return self.coco

        return coco_ground_truth(self.targets, self.class_names, difficult_as_crowd=difficult_as_crowd)

    def coco_ids(self) -> tuple[list[Any], list[int]]:
        """``(image ids, category ids)`` of :meth:`coco_dict`: per target and per label (index 0 unused)."""
        if self.coco is not None:
            assert self.coco_image_ids is not None and self.category_ids is not None
            return list(self.coco_image_ids), list(self.category_ids)
        return list(range(1, len(self.targets) + 1)), list(range(len(self.class_names)))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All boxes flattened: ``image [G]`` int64, ``label [G]`` int64, ``boxes [G, 4]`` float64 xyxy, ``ignore
        [G]`` bool (difficult or crowd: what VOC evaluation ignores)."""
        counts = [len(t) for t in self.targets]
        image = np.repeat(np.arange(len(self.targets), dtype=np.int64), counts)
        if not image.size:
            return image, np.zeros(0, np.int64), np.zeros((0, 4), np.float64), np.zeros(0, bool)
        label = np.concatenate([t.labels for t in self.targets]).astype(np.int64)
        boxes = np.concatenate([t.boxes for t in self.targets]).astype(np.float64)
        ignore = np.concatenate([t.difficult | t.iscrowd for t in self.targets]).astype(bool)
        return image, label, boxes, ignore


def load_ground_truth(path: str | os.PathLike, split: str | None = "test", classes: Any = None) -> GroundTruth:
    """Ground truth from a COCO instances JSON (``*.json``) or a dataset path (a VOC root with ``split``, or any
    format :func:`~multibox.data.datasets.open_dataset` reads; a COCO folder is read as its JSON file).

    VOC roots are read with image sizes from the annotations (images need not be present) and the usual
    validation (boxes clipped to the image; ``classes``: ``None`` = ``classes.txt`` beside the data, else the
    sorted names found; ``"voc"``, a file or a list of names).
    """
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".json":
        return read_coco_ground_truth(p)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such ground-truth file or folder")
    from ..data.datasets import open_dataset  # heavy (PIL, every dataset reader): only a dataset path needs it

    ds = open_dataset(p, split=split, classes=classes, image_sizes="annotation")
    if getattr(ds, "format", None) == "coco":
        return read_coco_ground_truth(ds.annotation_file)
    return GroundTruth(targets=[r.target for r in ds.records], class_names=list(ds.class_names), source=str(p))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def load_json(path: str | os.PathLike) -> Any:  # noqa: ANN401 (any JSON value)
    """The JSON value in ``path``; :class:`DetectionsFileError` naming the file for invalid or too deeply nested
    JSON (Python's parser recurses per nesting level: a file of ``[[[[...`` would otherwise overflow it)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DetectionsFileError(p, f"not valid JSON ({e})") from None
    except RecursionError:
        raise DetectionsFileError(p, "JSON nested too deeply to read (results and ground truth are a few levels "
                                     "deep)") from None


def coco_ground_truth(targets: Sequence[Target], class_names: Sequence[str], *,
                      difficult_as_crowd: bool = True) -> dict[str, Any]:
    """A COCO ground-truth dict (``images``, ``annotations``, ``categories``) for ``targets``.

    Image ``i`` of ``targets`` gets id ``i + 1`` (``file_name`` is its ``image_id``); label ``k`` is category
    ``k`` named ``class_names[k]``; boxes (xyxy pixels) become ``[x, y, w, h]`` with ``area = w * h``;
    ``iscrowd`` is the target's iscrowd, or'ed with difficult when ``difficult_as_crowd``.
    """
    images, annotations = [], []
    for i, t in enumerate(targets):
        h, w = (int(v) for v in t.orig_size)
        images.append({"id": i + 1, "file_name": str(t.image_id), "height": h, "width": w})
        crowd = t.iscrowd | t.difficult if difficult_as_crowd else t.iscrowd
        for (x1, y1, x2, y2), label, c in zip(t.boxes.astype(np.float64).tolist(), t.labels.tolist(),
                                              crowd.tolist(), strict=True):
            bw, bh = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label),
                                "bbox": [x1, y1, bw, bh], "area": bw * bh, "iscrowd": int(c)})
    categories = [{"id": k, "name": str(n), "supercategory": ""} for k, n in enumerate(class_names) if k > 0]
    return {"images": images, "annotations": annotations, "categories": categories}


def read_coco_ground_truth(path: str | os.PathLike) -> GroundTruth:
    """A COCO instances JSON as :class:`GroundTruth` (the dict is kept for pycocotools).

    Labels follow the categories sorted by id; ``iscrowd`` is kept, and ``difficult`` (or ``ignore``) fields,
    which multibox writes for VOC data, are read as ``difficult``. Boxes are taken as they are (no clipping).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such COCO ground-truth file")
    data = load_json(p)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations", []), list) or not isinstance(data.get("categories"), list):
        raise DetectionsFileError(p, "not a COCO ground-truth file (needs 'images', 'annotations' and "
                                     "'categories' lists)")
    cats: dict[int, str] = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or isinstance(c.get("id"), bool) \
                or not isinstance(c.get("name"), str):
            raise DetectionsFileError(p, "category needs an integer 'id' and a 'name'", record=i)
        if c["id"] in cats or c["name"] in cats.values():
            raise DetectionsFileError(p, f"duplicate category {c['id']} {c['name']!r}", record=i)
        cats[c["id"]] = c["name"]
    category_ids = [0, *sorted(cats)]
    label_of = {cid: k for k, cid in enumerate(category_ids) if k > 0}
    images: dict[Any, int] = {}
    sizes, coco_ids = [], []
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or isinstance(im["id"], dict | list):
            raise DetectionsFileError(p, "image entry needs an 'id'", record=i)
        if im["id"] in images:
            raise DetectionsFileError(p, f"duplicate image id {im['id']!r}", record=i)
        images[im["id"]] = len(coco_ids)
        coco_ids.append(im["id"])
        h, w = _number(im.get("height")), _number(im.get("width"))
        sizes.append((int(h or 0), int(w or 0)))
    per_image: list[list[tuple[tuple[float, ...], int, bool, bool]]] = [[] for _ in coco_ids]
    for i, a in enumerate(data.get("annotations", [])):
        if not isinstance(a, dict):
            raise DetectionsFileError(p, "annotation is not an object", record=i)
        if a.get("image_id") not in images:
            raise DetectionsFileError(p, f"annotation's image_id {a.get('image_id')!r} is not in 'images'",
                                      record=i)
        if a.get("category_id") not in label_of:
            raise DetectionsFileError(p, f"annotation's category_id {a.get('category_id')!r} is not in "
                                         "'categories'", record=i)
        bbox = a.get("bbox")
        nums = [_number(v) for v in bbox] if isinstance(bbox, list) and len(bbox) == 4 else [None]
        if any(v is None for v in nums):
            raise DetectionsFileError(p, f"'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}", record=i)
        x, y, w, h = nums  # type: ignore[misc]
        if w < 0 or h < 0:
            raise DetectionsFileError(p, f"negative bbox size {w:g}x{h:g}", record=i)
        difficult = bool(a.get("difficult", a.get("ignore", 0)))
        per_image[images[a["image_id"]]].append(((x, y, x + w, y + h), label_of[a["category_id"]],
                                                 difficult, bool(a.get("iscrowd", 0))))
    targets = []
    for cid, size, objs in zip(coco_ids, sizes, per_image, strict=True):
        targets.append(Target(
            boxes=np.asarray([o[0] for o in objs], dtype=np.float32).reshape(-1, 4),
            labels=np.asarray([o[1] for o in objs], dtype=np.int64), image_id=str(cid), orig_size=size,
            difficult=np.asarray([o[2] for o in objs], dtype=bool), iscrowd=np.asarray([o[3] for o in objs],
                                                                                        dtype=bool)))
    names = ["background", *(cats[c] for c in category_ids[1:])]
    return GroundTruth(targets=targets, class_names=names, source=str(p), coco=data, category_ids=category_ids,
                       coco_image_ids=coco_ids)


# ----------------------------------------------------------------------------------------------- detections


@dataclass
class DetectionTable:
    """The detections of a whole dataset as columns, one row per detection.

    * ``image``: ``[N]`` int64, index of the image in the ground truth (its ``targets`` order);
    * ``label``: ``[N]`` int64, 1..C-1; ``score``: ``[N]`` float64;
    * ``boxes``: ``[N, 4]`` float64 xyxy, 0-based continuous pixels of the original image;
    * ``xywh``: ``[N, 4]`` float64 COCO boxes exactly as read from a COCO results file (``None`` otherwise), so
      that COCO evaluation and re-writing see the file's numbers bit for bit.

    Row order is kept everywhere (it decides score ties, as in the devkit).
    """

    image: np.ndarray
    label: np.ndarray
    score: np.ndarray
    boxes: np.ndarray
    xywh: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.int64).reshape(-1)
        self.label = np.asarray(self.label, dtype=np.int64).reshape(-1)
        self.score = np.asarray(self.score, dtype=np.float64).reshape(-1)
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        n = self.image.shape[0]
        if not (self.label.shape[0] == self.score.shape[0] == self.boxes.shape[0] == n):
            raise ValueError(f"detection columns disagree: {n} images, {self.label.shape[0]} labels, "
                             f"{self.score.shape[0]} scores, {self.boxes.shape[0]} boxes")
        if self.xywh is not None:
            self.xywh = np.asarray(self.xywh, dtype=np.float64).reshape(-1, 4)
            if self.xywh.shape[0] != n:
                raise ValueError(f"xywh has {self.xywh.shape[0]} rows for {n} detections")
        if not np.isfinite(self.score).all() or not np.isfinite(self.boxes).all():
            raise ValueError("detection scores and boxes must be finite")

    def __len__(self) -> int:
        return int(self.image.shape[0])

    @classmethod
    def empty(cls) -> DetectionTable:
        """No detections."""
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)))

    @classmethod
    def concat(cls, tables: Sequence[DetectionTable]) -> DetectionTable:
        """Rows of all ``tables`` in order (``xywh`` kept only when every table has it)."""
        if not tables:
            return cls.empty()
        xywh = np.concatenate([t.xywh for t in tables]) if all(t.xywh is not None for t in tables) else None
        return cls(np.concatenate([t.image for t in tables]), np.concatenate([t.label for t in tables]),
                   np.concatenate([t.score for t in tables]), np.concatenate([t.boxes for t in tables]), xywh)

    def coco_boxes(self) -> np.ndarray:
        """``[N, 4]`` float64 COCO ``[x, y, w, h]`` (the file's own numbers when read from COCO JSON)."""
        if self.xywh is not None:
            return self.xywh
        b = self.boxes
        return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)

    @classmethod
    def from_detections(cls, detections: Sequence[Detections], sizes: Sequence[tuple[int, int]] | None = None
                        ) -> DetectionTable:
        """Rows from one :class:`~multibox.detections.Detections` per image (image ``i`` = ``detections[i]``).

        Boxes must be pixels of the original image. A ``Detections`` without ``image_size`` holds normalized
        boxes by contract: they are scaled by ``sizes[i]`` (``(h, w)``); without ``sizes`` that is an error.
        A diverged model's non-finite output cannot be ranked or matched: detections with a non-finite score are
        left out, and a non-finite box becomes the empty box ``(0, 0, 0, 0)`` (a false positive).
        """
        import torch  # heavy: results files are read and scored with numpy alone, without torch

        images, labels, scores, boxes = [], [], [], []
        for i, d in enumerate(detections):
            b = d.boxes.detach().to("cpu", torch.float64).numpy()
            if d.image_size is None and len(d):
                if sizes is None or not all(sizes[i]):
                    raise ValueError(f"detections of image {i} are normalized (image_size is None) and no image "
                                     "size is known: evaluation needs boxes in pixels of the original image")
                if np.abs(b).max() > 1.5:
                    raise ValueError(f"detections of image {i} have image_size None, which means normalized "
                                     f"boxes, but hold coordinates up to {np.abs(b).max():g}: set image_size "
                                     "(height, width) for pixel boxes")
                h, w = sizes[i]
                b = b * np.array([w, h, w, h], dtype=np.float64)
            b = b.reshape(-1, 4)
            s = d.scores.detach().to("cpu", torch.float64).numpy()
            ok = np.isfinite(s)
            b = np.where(np.isfinite(b).all(axis=1, keepdims=True), b, 0.0)[ok]
            images.append(np.full(int(ok.sum()), i, dtype=np.int64))
            labels.append(d.labels.detach().cpu().numpy().astype(np.int64)[ok])
            scores.append(s[ok])
            boxes.append(b)
        if not images:
            return cls.empty()
        return cls(np.concatenate(images), np.concatenate(labels), np.concatenate(scores), np.concatenate(boxes))

    def to_detections(self, num_images: int, class_names: Sequence[str] | None = None,
                      sizes: Sequence[tuple[int, int]] | None = None) -> list[Detections]:
        """One :class:`~multibox.detections.Detections` per image (``num_images``), each sorted by score
        (descending, ties in row order); boxes float32 pixels, ``image_size`` from ``sizes`` when given."""
        import torch  # heavy: see from_detections

        from ..detections import Detections

        order = np.argsort(-self.score, kind="stable")
        order = order[np.argsort(self.image[order], kind="stable")]
        counts = np.bincount(self.image, minlength=num_images).tolist() if len(self) else [0] * num_images
        boxes = torch.from_numpy(self.boxes[order].astype(np.float32)).split(counts)
        scores = torch.from_numpy(self.score[order].astype(np.float32)).split(counts)
        labels = torch.from_numpy(self.label[order]).split(counts)
        names = list(class_names) if class_names is not None else None
        out = []
        for i in range(num_images):
            size = tuple(sizes[i]) if sizes is not None and all(sizes[i]) else None
            out.append(Detections(boxes[i], scores[i], labels[i], names, size))  # type: ignore[arg-type]
        return out


# ----------------------------------------------------------------------------------------------- reading


def read_detections(path: str | os.PathLike, gt: GroundTruth, split: str | None = None) -> DetectionTable:
    """Detections from a COCO results JSON (``*.json``), a folder of comp4 files, or a glob / list of them."""
    text = str(path)
    p = Path(path)
    if p.suffix.lower() == ".json":
        return read_coco_results(p, gt)
    if p.is_dir() or glob.has_magic(text) or p.suffix.lower() == ".txt":
        return read_comp4(path, gt, split=split)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such detections file or folder")
    raise ValueError(f"{p}: cannot tell the detections format: give a COCO results *.json, a folder of "
                     "comp4_det_<split>_<class>.txt files or a glob of them")


def comp4_file_name(split: str, class_name: str, prefix: str = "comp4") -> str:
    """``comp4_det_<split>_<class>.txt``."""
    return f"{prefix}_det_{split}_{class_name}.txt"


def _comp4_pattern(class_names: Sequence[str]) -> re.Pattern[str]:
    names = sorted((n for n in class_names[1:]), key=len, reverse=True)
    alt = "|".join(re.escape(n) for n in names)
    return re.compile(rf"^(comp\d+)_det_(.+)_({alt})\.txt$")


def read_comp4(path: str | os.PathLike | Sequence[str | os.PathLike], gt: GroundTruth,
               split: str | None = None) -> DetectionTable:
    """Detections from the devkit's per-class files ``comp<N>_det_<split>_<class>.txt``.

    ``path``: a folder (its ``comp*_det_*.txt`` files; when they hold several splits, those of ``split``), a
    glob, one file, or a list of files. The class comes from the file name; each line is ``image_id score xmin
    ymin xmax ymax`` in 1-based devkit coordinates (``xmin``/``ymin`` lose 1 here). Blank lines are skipped.
    """
    if isinstance(path, list | tuple):
        files = [Path(f) for f in path]
        where = "the file list"
    else:
        p = Path(path)
        where = str(p)
        if p.is_dir():
            files = sorted(p.glob("comp*_det_*.txt"))
            if not files:
                raise FileNotFoundError(f"{p}: no comp4_det_<split>_<class>.txt files in this folder")
        elif glob.has_magic(str(path)):
            files = [Path(f) for f in sorted(glob.glob(str(path)))]
            if not files:
                raise FileNotFoundError(f"{path}: no files match this pattern")
        else:
            if not p.is_file():
                raise FileNotFoundError(f"{p}: no such detections file")
            files = [p]
    pattern = _comp4_pattern(gt.class_names)
    label_of = gt.label_of_name()
    parsed = []
    for f in files:
        m = pattern.match(f.name)
        if m is None:
            known = ", ".join(gt.class_names[1:21]) + (", ..." if len(gt.class_names) > 21 else "")
            raise DetectionsFileError(f, f"file name is not comp<N>_det_<split>_<class>.txt with a known class "
                                         f"(classes: {known})")
        parsed.append((f, m.group(2), label_of[m.group(3)]))
    splits = sorted({s for _, s, _ in parsed})
    if len(splits) > 1:
        if split not in splits:
            raise DetectionsFileError(where, f"detections of several splits ({', '.join(splits)}); name one with "
                                             "--split or a glob")
        parsed = [x for x in parsed if x[1] == split]
    seen: dict[int, Path] = {}
    tables = []
    for f, _, label in parsed:
        if label in seen:
            raise DetectionsFileError(f, f"a second file for class {gt.class_names[label]!r} (also {seen[label]})")
        seen[label] = f
        tables.append(_read_comp4_file(f, label, gt))
    return DetectionTable.concat(tables)


_COMP4_LINE = "expected 6 fields 'image_id score xmin ymin xmax ymax'"


def _read_comp4_file(f: Path, label: int, gt: GroundTruth) -> DetectionTable:
    try:
        text = f.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DetectionsFileError(f, f"not UTF-8 text ({e})") from None
    rows = [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    for n, tok in rows:
        if len(tok) != 6:
            raise DetectionsFileError(f, f"{_COMP4_LINE}, got {len(tok)}: {' '.join(tok)!r}", line=n)
    try:
        nums = np.array([tok[1:] for _, tok in rows], dtype=np.float64).reshape(-1, 5)
    except ValueError:
        for n, tok in rows:
            for v in tok[1:]:
                try:
                    float(v)
                except ValueError:
                    raise DetectionsFileError(f, f"{v!r} is not a number ({_COMP4_LINE})", line=n) from None
        raise
    bad = np.flatnonzero(~np.isfinite(nums).all(axis=1))
    if bad.size:
        n = rows[int(bad[0])][0]
        raise DetectionsFileError(f, f"non-finite number in {' '.join(rows[int(bad[0])][1])!r}", line=n)
    index = [gt.index_of(tok[0]) for _, tok in rows]
    missing = [k for k, v in enumerate(index) if v is None]
    if missing:
        n, tok = rows[missing[0]]
        raise DetectionsFileError(f, f"image id {tok[0]!r} is not in the ground truth ({gt.source}; "
                                     f"{len(missing)} such lines)", line=n)
    boxes = nums[:, 1:].copy()
    boxes[:, :2] -= 1.0  # devkit 1-based xmin/ymin -> 0-based continuous
    return DetectionTable(np.asarray(index, dtype=np.int64), np.full(len(rows), label, dtype=np.int64),
                          nums[:, 0], boxes)


def read_coco_results(path: str | os.PathLike, gt: GroundTruth) -> DetectionTable:
    """Detections from a COCO results JSON (see the module docstring for the id mapping)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such detections file")
    data = load_json(p)
    image_of: dict[Any, int] | None = None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        if isinstance(data.get("images"), list) and any(isinstance(im, dict) and ("file_name" in im or "source" in im)
                                                        for im in data["images"]):
            image_of = _images_by_file(p, data["images"], gt)
        data = data["annotations"]
    if not isinstance(data, list):
        raise DetectionsFileError(p, "a COCO results file is a JSON list of {image_id, category_id or "
                                     "category_name, bbox, score} records")
    records: list[tuple[int, dict]] = []
    for i, r in enumerate(data):
        if isinstance(r, dict) and isinstance(r.get("detections"), list):  # Detections.to_dict() per image
            for d in r["detections"]:
                records.append((i, d if not isinstance(d, dict) or "image_id" in d
                                else {**d, "image_id": r.get("image_id")}))
        else:
            records.append((i, r))
    label_of = gt.label_of_name()
    if gt.category_ids is not None:
        label_of_id = {cid: k for k, cid in enumerate(gt.category_ids) if k > 0}
    else:
        label_of_id = {k: k for k in range(1, len(gt.class_names))}
    n = len(records)
    image = np.empty(n, np.int64)
    label = np.empty(n, np.int64)
    score = np.empty(n, np.float64)
    xywh = np.empty((n, 4), np.float64)
    for j, (i, r) in enumerate(records):
        if not isinstance(r, dict):
            raise DetectionsFileError(p, "not an object", record=i)
        if "image_id" not in r:
            raise DetectionsFileError(p, "missing 'image_id'", record=i)
        if image_of is not None:
            k = image_of.get(r["image_id"]) if isinstance(r["image_id"], str | int) else None
            if k is None:
                raise DetectionsFileError(p, f"image_id {r['image_id']!r} is not one of the file's 'images'",
                                          record=i)
        else:
            k = gt.index_of(r["image_id"]) if isinstance(r["image_id"], str | int) else None
        if k is None:
            hint = (" (VOC image ids are strings such as '000005')"
                    if isinstance(r["image_id"], int) and not gt.is_coco else "")
            raise DetectionsFileError(p, f"image_id {r['image_id']!r} is not in the ground truth ({gt.source})"
                                         f"{hint}", record=i)
        name = r.get("category_name")
        if name is not None:
            lab = label_of.get(name) if isinstance(name, str) else None
            if lab is None:
                known = ", ".join(gt.class_names[1:21]) + (", ..." if len(gt.class_names) > 21 else "")
                raise DetectionsFileError(p, f"unknown category_name {name!r} (classes: {known})", record=i)
        else:
            cid = r.get("category_id")
            lab = label_of_id.get(cid) if isinstance(cid, int) and not isinstance(cid, bool) else None
            if lab is None:
                what = "a COCO category id of the ground truth" if gt.is_coco else \
                    f"a label 1..{len(gt.class_names) - 1}"
                raise DetectionsFileError(p, f"category_id {cid!r} is not {what} (or give category_name)",
                                          record=i)
        bbox = r.get("bbox")
        nums = [_number(v) for v in bbox] if isinstance(bbox, list) and len(bbox) == 4 else [None]
        if any(v is None for v in nums):
            raise DetectionsFileError(p, f"'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}", record=i)
        if nums[2] < 0 or nums[3] < 0:  # type: ignore[operator]
            raise DetectionsFileError(p, f"negative bbox size {nums[2]:g}x{nums[3]:g}", record=i)
        s = _number(r.get("score"))
        if s is None:
            raise DetectionsFileError(p, f"'score' must be a finite number, got {r.get('score')!r}", record=i)
        image[j], label[j], score[j] = k, lab, s
        xywh[j] = nums
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return DetectionTable(image, label, score, boxes, xywh)


def _images_by_file(p: Path, images: list[Any], gt: GroundTruth) -> dict[Any, int]:
    """``multibox detect``'s ``images`` list -> {its image id: ground-truth position}, matched by file stem."""
    out: dict[Any, int] = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not isinstance(im.get("id"), str | int) or isinstance(im.get("id"), bool):
            raise DetectionsFileError(p, "an entry of 'images' needs an 'id' and a 'file_name'", record=i)
        names = [im[k] for k in ("file_name", "source") if isinstance(im.get(k), str) and im[k]]
        if not names:
            raise DetectionsFileError(p, f"image {im['id']!r} has no 'file_name' or 'source' to match it to the "
                                         "ground truth by", record=i)
        k = next((j for j in (gt.index_of_file(n) for n in names) if j is not None), None)
        if k is None:
            raise DetectionsFileError(p, f"image {names[0]!r} (id {im['id']!r}) matches no image of the ground truth "
                                         f"({gt.source}) by file stem", record=i)
        if im["id"] in out:
            raise DetectionsFileError(p, f"duplicate image id {im['id']!r} in 'images'", record=i)
        out[im["id"]] = k
    return out


# ----------------------------------------------------------------------------------------------- writing


def write_comp4(table: DetectionTable, gt: GroundTruth, folder: str | os.PathLike, split: str = "test",
                prefix: str = "comp4") -> list[Path]:
    """Write ``<folder>/<prefix>_det_<split>_<class>.txt`` for every class (empty files included), lines
    ``image_id score xmin ymin xmax ymax`` in devkit coordinates (``xmin + 1``, ``ymin + 1``), numbers as the
    shortest text that reads back to the same float64. Each file is written atomically."""
    out = Path(folder)
    ids = gt.image_ids
    order = np.argsort(table.label, kind="stable")
    labels = table.label[order]
    bounds = np.searchsorted(labels, np.arange(len(gt.class_names) + 1))
    written = []
    for k in range(1, len(gt.class_names)):
        rows = order[bounds[k]:bounds[k + 1]]
        b = table.boxes[rows].copy()
        b[:, :2] += 1.0
        lines = [f"{ids[i]} {s!r} {x1!r} {y1!r} {x2!r} {y2!r}\n" for i, s, (x1, y1, x2, y2) in
                 zip(table.image[rows].tolist(), table.score[rows].tolist(), b.tolist(), strict=True)]
        written.append(atomic_write_bytes(out / comp4_file_name(split, gt.class_names[k], prefix),
                                          "".join(lines).encode()))
    return written


def coco_results(table: DetectionTable, gt: GroundTruth, *, for_coco_dict: bool = False,
                 with_names: bool = True) -> list[dict[str, Any]]:
    """COCO results records of ``table``.

    Ids are those of :meth:`GroundTruth.coco_dict` when ``for_coco_dict`` (what pycocotools needs), else those a
    results file carries (:meth:`GroundTruth.result_image_id`, :meth:`GroundTruth.result_category_id`).
    ``with_names`` adds ``category_name``.
    """
    if for_coco_dict:
        image_ids, category_ids = gt.coco_ids()
        img = [image_ids[i] for i in range(len(gt))]
    else:
        img = [gt.result_image_id(i) for i in range(len(gt))]
        category_ids = [gt.result_category_id(k) if k else 0 for k in range(len(gt.class_names))]
    names = gt.class_names
    out = []
    for i, k, s, bb in zip(table.image.tolist(), table.label.tolist(), table.score.tolist(),
                           table.coco_boxes().tolist(), strict=True):
        rec = {"image_id": img[i], "category_id": category_ids[k], "bbox": bb, "score": s}
        if with_names:
            rec["category_name"] = names[k]
        out.append(rec)
    return out


def write_coco_results(table: DetectionTable, gt: GroundTruth, path: str | os.PathLike) -> Path:
    """Write ``table`` as a COCO results JSON (with ``category_name``) at ``path``, atomically."""
    return atomic_write_bytes(path, json.dumps(coco_results(table, gt)).encode())
