"""COCO detection JSON: ``images``, ``annotations`` (``bbox`` = ``[x, y, w, h]`` pixels) and ``categories``.

Labels are contiguous after background in the order of the category ids (``categories`` sorted by id ->
labels 1, 2, ...), and ``class_names`` keeps the category names. ``iscrowd`` is kept in ``Target.iscrowd``.
The difficult flag, which COCO lacks, is read from an extra annotation field ``"difficult": 1`` (or
``"ignore": 1``) and written as ``"difficult"``, so it survives VOC -> COCO -> VOC. Segmentations, keypoints,
licenses and other fields are not carried.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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
    output_names,
    parse_flag,
    parse_number,
    pick_file,
    place_image,
)
from .registry import register_format

__all__ = ["COCODataset", "write_coco", "find_coco_image_dir", "open_coco", "detect_coco", "write_coco_dataset"]


def _load_json(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(path, f"not valid JSON ({e})", kind="bad_json") from None
    except RecursionError:
        raise AnnotationError(path, "JSON nested too deeply to be a COCO file", kind="bad_json") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise AnnotationError(path, "not a COCO detection file (no 'images' list)", kind="bad_json")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise AnnotationError(path, f"'{key}' must be a list", kind="bad_json")
    return data


def find_coco_image_dir(annotation_file: str | os.PathLike, first_file_name: str | None) -> Path:
    """Where the images of a COCO file are: the first of these folders holding ``first_file_name``:
    the JSON's folder, ``images/`` beside it, and for ``root/annotations/instances_<split>.json`` also
    ``root/<split>/``, ``root/images/<split>/``, ``root/images/`` and ``root/``. Defaults to the JSON's folder."""
    ann = Path(annotation_file)
    split = ann.stem.split("_", 1)[1] if ann.stem.startswith(("instances_", "image_info_")) else ann.stem
    root = ann.parent.parent
    candidates = [ann.parent, ann.parent / "images", ann.parent / split, root / split, root / "images" / split,
                  root / "images", root]
    if first_file_name:
        for c in candidates:
            if (c / first_file_name).is_file():
                return c
    return ann.parent


class COCODataset(AnnotatedImageDataset):
    """A COCO-format detection file. ``image_dir`` defaults to :func:`find_coco_image_dir`.

    ``classes``: ``None`` -> the category names sorted by category id; or a list / class-list file mapping
    category *names* to labels (categories absent from it are unknown classes). Image ids are the COCO ids as
    strings. Shared options as in :class:`~multibox.data.datasets.common.AnnotatedImageDataset`.
    """

    format = "coco"

    def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                 classes: ClassSpec = None, **options: Any) -> None:
        super().__init__(**options)
        self.annotation_file = Path(annotation_file)
        if not self.annotation_file.is_file():
            raise FileNotFoundError(f"{self.annotation_file}: no such COCO annotation file")
        data = _load_json(self.annotation_file)
        images = data["images"]
        first = images[0].get("file_name") if images and isinstance(images[0], dict) else None
        first = first if isinstance(first, str) else None  # a bad entry is reported when scanned
        self.image_dir = Path(image_dir) if image_dir is not None else find_coco_image_dir(self.annotation_file,
                                                                                           first)
        self.categories = self._categories(data.get("categories", []))
        default = [self.categories[k] for k in sorted(self.categories)]
        self._build(self._scan(data), classes, default_classes=default, total=len(images), desc="COCO")

    def _categories(self, cats: list) -> dict[int, str]:
        p = self.annotation_file
        out: dict[int, str] = {}
        for i, c in enumerate(cats):
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or isinstance(c.get("id"), bool) \
                    or not isinstance(c.get("name"), str) or not c["name"].strip():
                raise AnnotationError(p, "category needs an integer 'id' and a non-empty 'name'", index=i,
                                      what="category", kind="bad_category")
            if c["id"] in out:
                raise AnnotationError(p, f"duplicate category id {c['id']}", index=i, name=c["name"],
                                      what="category", kind="bad_category")
            if c["name"] in out.values():
                raise AnnotationError(p, f"duplicate category name {c['name']!r}", index=i, name=c["name"],
                                      what="category", kind="bad_category")
            out[c["id"]] = c["name"]
        return out

    def _scan(self, data: dict) -> Iterator[RawImage]:
        p = self.annotation_file
        images: dict[Any, RawImage] = {}
        for i, im in enumerate(data["images"]):
            if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
                raise AnnotationError(p, "image entry needs 'id' and 'file_name'", index=i, what="image",
                                      kind="missing_field")
            if not isinstance(im["file_name"], str) or not im["file_name"].strip():
                raise AnnotationError(p, f"'file_name' is {im['file_name']!r}, not a file name", index=i,
                                      what="image", kind="bad_field")
            if isinstance(im["id"], bool) or not isinstance(im["id"], int | str):
                raise AnnotationError(p, f"image 'id' is {im['id']!r}, not an integer or string", index=i,
                                      name=im["file_name"], what="image", kind="bad_field")
            if im["id"] in images:
                raise AnnotationError(p, f"duplicate image id {im['id']!r}", index=i, what="image",
                                      kind="duplicate_id")
            size = None
            if im.get("width") is not None and im.get("height") is not None:
                w = parse_number(im["width"], p, "width", index=i, name=im["file_name"], what="image")
                h = parse_number(im["height"], p, "height", index=i, name=im["file_name"], what="image")
                if w < 0 or h < 0:
                    raise AnnotationError(p, f"image size {w:g} x {h:g} is negative", index=i,
                                          name=im["file_name"], what="image", kind="bad_number")
                size = (int(round(h)), int(round(w))) if w > 0 and h > 0 else None  # 0: not given (read the file)
            images[im["id"]] = RawImage(path=self.image_dir / im["file_name"], image_id=str(im["id"]), source=p,
                                        objects=[], annotated_size=size, what="annotation", root=self.image_dir,
                                        named=im["file_name"])
        seen_ids: dict[Any, int] = {}
        for i, ann in enumerate(data.get("annotations", [])):
            try:
                self._check_annotation_id(i, ann, seen_ids)
                image_id, obj = self._parse_annotation(i, ann, images)
            except AnnotationError as e:
                self._report.error(e)
                self.stats.boxes_dropped_invalid += 1
                continue
            images[image_id].objects.append(obj)
        yield from images.values()

    def _check_annotation_id(self, i: int, ann: Any, seen: dict[Any, int]) -> None:
        """Annotation ids (when present) must be integers or strings, and unique."""
        if not isinstance(ann, dict) or "id" not in ann:
            return
        aid = ann["id"]
        if isinstance(aid, bool) or not isinstance(aid, int | str):
            raise AnnotationError(self.annotation_file, f"annotation 'id' is {aid!r}, not an integer or string",
                                  index=i, what="annotation", kind="bad_field")
        if aid in seen:
            raise AnnotationError(self.annotation_file, f"duplicate annotation id {aid!r} (also annotation "
                                  f"{seen[aid]})", index=i, what="annotation", kind="duplicate_id")
        seen[aid] = i

    def _parse_annotation(self, i: int, ann: Any, images: dict[Any, RawImage]) -> tuple[Any, RawObject]:
        p = self.annotation_file
        if not isinstance(ann, dict):
            raise AnnotationError(p, "not an object", index=i, what="annotation", kind="bad_json")
        cid = ann.get("category_id")
        name = self.categories.get(cid) if isinstance(cid, int) else None
        label = name or f"category_id {cid!r}"
        image_id = ann.get("image_id")
        if isinstance(image_id, bool) or not isinstance(image_id, int | str | None) or image_id not in images:
            raise AnnotationError(p, f"image_id {ann.get('image_id')!r} is not in 'images'", index=i, name=label,
                                  what="annotation", kind="missing_image")
        bbox = ann.get("bbox")
        if bbox is None:
            raise AnnotationError(p, "missing 'bbox'", index=i, name=label, what="annotation", kind="missing_field")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise AnnotationError(p, f"'bbox' must be [x, y, width, height], got {bbox!r}", index=i, name=label,
                                  what="annotation", kind="bad_number")
        x, y, w, h = (parse_number(v, p, f"bbox[{k}]", index=i, name=label, what="annotation")
                      for k, v in enumerate(bbox))
        if w < 0 or h < 0:
            raise AnnotationError(p, f"negative bbox size {w:g}x{h:g}", index=i, name=label, what="annotation",
                                  kind="inverted_box")
        flags = dict(index=i, name=label, what="annotation")
        iscrowd = parse_flag(ann.get("iscrowd"), p, "iscrowd", **flags)
        difficult = parse_flag(ann.get("difficult", ann.get("ignore")), p, "difficult", **flags)
        return ann["image_id"], RawObject(name=label, box=(x, y, x + w, y + h), index=i, difficult=difficult,
                                          iscrowd=iscrowd)


def write_coco(records: Sequence[ImageRecord], class_names: Sequence[str], dst: str | os.PathLike,
               split: str | None = None, link: LinkMode = "copy", progress: bool = False) -> WriteReport:
    """Write ``dst/images/`` and ``dst/annotations.json`` (``dst/annotations/instances_<split>.json`` with a
    split). Category ids are the labels (1..K) with the class names; ``bbox`` is xywh; every annotation has
    ``iscrowd``, ``difficult`` (extra field), ``area`` (box area) and an empty ``segmentation``. Image ids are
    kept when they are all integers, else numbered from 1."""
    root = Path(dst)
    report = WriteReport(format="coco", root=root)
    names, report.renamed = output_names(records)
    try:
        ids = [int(r.image_id) for r in records]
        if len(set(ids)) != len(ids):
            raise ValueError
    except ValueError:
        ids = list(range(1, len(records) + 1))
    images, annotations = [], []
    for rec, name, image_id in tqdm(list(zip(records, names, ids, strict=True)), desc="writing COCO",
                                    disable=not progress, leave=False):
        t = rec.target
        report.files.append(place_image(rec.path, root / "images" / name, link))
        images.append({"id": image_id, "file_name": name, "height": t.orig_size[0], "width": t.orig_size[1]})
        for (x1, y1, x2, y2), label, d, c in zip(t.boxes.tolist(), t.labels.tolist(), t.difficult.tolist(),
                                                 t.iscrowd.tolist(), strict=True):
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": [round(v, 4) for v in (x1, y1, w, h)], "area": round(w * h, 4),
                                "iscrowd": int(c), "difficult": int(d), "segmentation": []})
        report.images += 1
        report.boxes += len(t)
    data = {"info": {"description": "written by multibox data convert"}, "licenses": [], "images": images,
            "annotations": annotations,
            "categories": [{"id": k, "name": n, "supercategory": ""} for k, n in enumerate(class_names) if k > 0]}
    out = root / ("annotations.json" if split is None else f"annotations/instances_{split}.json")
    report.files.append(atomic_write_bytes(out, json.dumps(data).encode()))
    return report


def open_coco(paths: Sequence[Path], split: str | None = None, classes: ClassSpec = None,
              images: str | os.PathLike | None = None, **options: Any) -> COCODataset:
    """Registry opener: a COCO JSON file, or a folder with ``annotations/instances_<split>.json``,
    ``annotations/<split>.json``, ``<split>.json``, ``<split>/_annotations.coco.json`` (with a split) or
    ``annotations.json``, ``annotations/instances_default.json``, ``_annotations.coco.json`` or a single
    ``*.json``."""
    p = paths[0]
    if p.is_dir():
        names = [f"annotations/instances_{split}.json", f"annotations/{split}.json", f"{split}.json",
                 f"{split}/_annotations.coco.json"] if split else \
            ["annotations.json", "annotations/instances_default.json", "_annotations.coco.json"]
        single = "annotations/*.json" if (p / "annotations").is_dir() else "*.json"
        p = pick_file(p, [p / n for n in names], "COCO annotation file", single)
    return COCODataset(p, image_dir=images, classes=classes, **options)


def detect_coco(path: Path) -> int:
    """``*.json`` file (50); folder with ``annotations/*.json`` (80) or exactly one ``*.json`` (70)."""
    if path.is_file():
        return 50 if path.suffix.lower() == ".json" else 0
    if not path.is_dir():
        return 0
    if (path / "annotations").is_dir() and any((path / "annotations").glob("*.json")):
        return 80
    return 70 if len(list(path.glob("*.json"))) == 1 else 0


def write_coco_dataset(dataset: Any, dst: str | os.PathLike, split: str | None = None, link: LinkMode = "copy",
                       progress: bool = False) -> WriteReport:
    """Registry writer: :func:`write_coco` of ``dataset.records``."""
    return write_coco(dataset.records, dataset.class_names, dst, split=split, link=link, progress=progress)


register_format("coco", open=open_coco, write=write_coco_dataset, detect=detect_coco,
                description="COCO detection JSON (images, annotations with bbox [x, y, w, h], categories) and an "
                            "image folder")
