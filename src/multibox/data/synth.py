"""A synthetic detection dataset of shapes on textured backgrounds, written in Pascal VOC layout.

Each image is rendered from ``np.random.default_rng([seed, index])`` alone, so the same seed gives byte-identical
files whatever the order or the number of worker processes. An image holds 0 to 8 objects of six classes
(:data:`SHAPE_CLASSES`: circle, square, triangle, star, ring, cross), each stretched (aspect 0.6-1.6), rotated,
sized from 5% to 55% of the short image side (log-uniform), coloured at random (about a third of them close to the
local background colour), shaded, and 0 to 3 **distractors** that are not in the class list (crescent, bar, blob).
Shapes are painted in random order, so later ones hide parts of earlier ones; the pixels each object still shows
give its box:

* box = the extent of the object's **visible** pixels (the VOC rule);
* an object showing less than 25% of its area is dropped (no box); one showing less than 50%, or whose visible
  box is under 6 pixels on a side, is marked ``difficult`` (VOC evaluation ignores it);
* :func:`render_image` also reports ``truncated`` (more than 5% of the shape outside the image), ``occluded``
  (other shapes hide more than 10% of it) and the visible fraction; the XML, written by
  :func:`multibox.data.datasets.voc.voc_xml`, keeps ``difficult`` (its ``truncated`` is always 0).

Backgrounds mix linear gradients, sine stripes, low-frequency blotches and checkerboards with pixel noise. Images
are ``size`` pixels on the long side and ``0.6 * size`` to ``size`` on the short side (landscape or portrait).

Layout written by :func:`write_synthetic_voc` (``multibox data synth OUT``)::

    OUT/Annotations/000000.xml        VOC XML, 1-based inclusive pixel coordinates
    OUT/JPEGImages/000000.jpg
    OUT/ImageSets/Main/train.txt      image ids, one per line (trainval.txt: the same list)
    OUT/ImageSets/Main/test.txt
    OUT/classes.txt                   object class names in label order (label 1 first; background not listed)
    OUT/synth.json                    generator settings and counts

Read it with :func:`open_synthetic_voc` (the VOC dataset with the class list from ``classes.txt``), or use
:class:`SyntheticShapes` for the same images in memory (not JPEG-compressed) without files.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..fileio import atomic_write_bytes
from .types import Target

__all__ = [
    "SHAPE_CLASSES",
    "DISTRACTOR_SHAPES",
    "CLASS_NAMES",
    "SynthObject",
    "render_image",
    "SyntheticShapes",
    "write_synthetic_voc",
    "read_class_names",
    "open_synthetic_voc",
    "SynthSummary",
]

#: Object classes, label ``k + 1`` for ``SHAPE_CLASSES[k]``.
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
#: Shapes drawn as clutter, never annotated.
DISTRACTOR_SHAPES: tuple[str, ...] = ("crescent", "bar", "blob")
#: ``class_names`` of the dataset: background first.
CLASS_NAMES: tuple[str, ...] = ("background", *SHAPE_CLASSES)

_MIN_VISIBLE = 0.25
_DIFFICULT_VISIBLE = 0.5
_DIFFICULT_SIDE = 6
_MAX_OBJECTS = 8
_MAX_DISTRACTORS = 3
_EMPTY_PROB = 0.03


@dataclass(frozen=True)
class SynthObject:
    """One annotated object: class name, box ``(x0, y0, x1, y1)`` as 0-based pixel edges (the visible pixels are
    columns ``x0 .. x1 - 1``), flags and the visible fraction of its area."""

    name: str
    box: tuple[int, int, int, int]
    difficult: bool
    truncated: bool
    occluded: bool
    visible: float


# ----------------------------------------------------------------------------------------------- shapes


def _circle(n: int = 48) -> np.ndarray:
    a = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _outline(name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Unit-size outline ``[K, 2]`` (roughly within [-1, 1]) and an optional hole outline."""
    if name == "circle":
        return _circle(), None
    if name == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * 0.8, None
    if name == "triangle":
        a = np.deg2rad(np.array([90.0, 210.0, 330.0]) + rng.uniform(-12, 12, 3))
        return np.stack([np.cos(a), np.sin(a)], axis=1), None
    if name == "star":
        inner = rng.uniform(0.38, 0.5)
        a = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(a), r * np.sin(a)], axis=1), None
    if name == "ring":
        return _circle(), _circle() * rng.uniform(0.45, 0.7)
    if name == "cross":
        t = rng.uniform(0.22, 0.38)
        pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t),
               (-t, -t)]
        return np.array(pts, dtype=np.float64), None
    if name == "crescent":
        return _circle(), _circle() * rng.uniform(0.8, 0.95) + np.array([rng.uniform(0.35, 0.6), 0.0])
    if name == "bar":
        half = 1.0 / rng.uniform(5.0, 9.0)
        return np.array([[-1, -half], [1, -half], [1, half], [-1, half]], dtype=np.float64), None
    if name == "blob":
        a = np.linspace(0.0, 2 * np.pi, 40, endpoint=False)
        r = np.ones_like(a)
        for k in (2, 3, 5):
            r += rng.uniform(0.05, 0.22) * np.sin(k * a + rng.uniform(0, 2 * np.pi))
        r /= r.max()
        return np.stack([r * np.cos(a), r * np.sin(a)], axis=1), None
    raise ValueError(f"unknown shape {name!r}")


def _place(points: np.ndarray, cx: float, cy: float, half: float, aspect: float, angle: float) -> np.ndarray:
    sx, sy = half * math.sqrt(aspect), half / math.sqrt(aspect)
    c, s = math.cos(angle), math.sin(angle)
    x, y = points[:, 0] * sx, points[:, 1] * sy
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _mask(outer: np.ndarray, hole: np.ndarray | None) -> tuple[np.ndarray, int, int]:
    """Rasterize a polygon (minus an optional hole) in its own bounding box: ``(mask, x0, y0)``."""
    x0 = int(math.floor(outer[:, 0].min()))
    y0 = int(math.floor(outer[:, 1].min()))
    x1 = int(math.ceil(outer[:, 0].max())) + 1
    y1 = int(math.ceil(outer[:, 1].max())) + 1
    canvas = Image.new("L", (max(x1 - x0, 1), max(y1 - y0, 1)), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([(float(x - x0), float(y - y0)) for x, y in outer], fill=255)
    if hole is not None:
        draw.polygon([(float(x - x0), float(y - y0)) for x, y in hole], fill=0)
    return np.asarray(canvas) > 0, x0, y0


# ----------------------------------------------------------------------------------------------- backgrounds


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """One ``[h, w]`` float32 texture in [0, 1]."""
    kind = int(rng.integers(4))
    yy = (np.arange(h, dtype=np.float32) / max(h, w))[:, None]
    xx = (np.arange(w, dtype=np.float32) / max(h, w))[None, :]
    a = rng.uniform(0, 2 * np.pi)
    proj = xx * np.float32(math.cos(a)) + yy * np.float32(math.sin(a))
    if kind == 0:  # linear gradient
        t = proj - proj.min()
        return t / max(float(t.max()), 1e-6)
    if kind == 1:  # sine stripes, sometimes hard-edged
        t = 0.5 + 0.5 * np.sin(np.float32(2 * np.pi * rng.uniform(2, 14)) * proj + np.float32(rng.uniform(0, 6.3)))
        return (t > 0.5).astype(np.float32) if rng.random() < 0.3 else t.astype(np.float32)
    if kind == 2:  # low-frequency blotches
        gh, gw = int(rng.integers(3, 12)), int(rng.integers(3, 12))
        small = Image.fromarray(rng.random((gh, gw), dtype=np.float32), mode="F")
        return np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32).clip(0, 1)
    n = float(rng.uniform(3, 12))  # checkerboard, rotated
    b = -xx * np.float32(math.sin(a)) + yy * np.float32(math.cos(a))
    return ((np.floor(proj * n) + np.floor(b * n)) % 2).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = _texture(rng, h, w)
    img = c1.astype(np.float32) + t[..., None] * (c2 - c1).astype(np.float32)
    if rng.random() < 0.5:
        c3 = rng.uniform(0, 255, 3).astype(np.float32)
        alpha = np.float32(rng.uniform(0.15, 0.4))
        img += alpha * (_texture(rng, h, w)[..., None] * c3 - img * np.float32(0.5))
    return img


# ----------------------------------------------------------------------------------------------- rendering


def render_image(seed: int, index: int, size: int = 300) -> tuple[np.ndarray, list[SynthObject]]:
    """Render image ``index`` of the dataset with ``seed``: ``([H, W, 3] uint8 RGB, objects)``.

    Deterministic in ``(seed, index, size)``; ``max(H, W) == size``. Objects carry 0-based pixel-edge boxes.
    """
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    rng = np.random.default_rng([int(seed), int(index)])
    short = int(round(size * rng.uniform(0.6, 1.0)))
    h, w = (short, size) if rng.random() < 0.6 else (size, short)
    img = _background(rng, h, w)
    owner = np.full((h, w), -1, dtype=np.int16)

    n_obj = 0 if rng.random() < _EMPTY_PROB else int(rng.integers(1, _MAX_OBJECTS + 1))
    n_dis = int(rng.integers(0, _MAX_DISTRACTORS + 1))
    kinds = [SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))] for _ in range(n_obj)]
    kinds += [DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))] for _ in range(n_dis)]
    is_obj = [True] * n_obj + [False] * n_dis
    order = rng.permutation(len(kinds))

    placed: list[tuple[str, int, np.ndarray, int, int, int]] = []  # name, owner id, mask, x0, y0, full area
    for j in order:
        name = kinds[j]
        outer, hole = _outline(name, rng)
        half = 0.5 * min(h, w) * math.exp(rng.uniform(math.log(0.05), math.log(0.55)))
        aspect = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
        angle = rng.uniform(0, 2 * math.pi)
        cx, cy = rng.uniform(0.05 * w, 0.95 * w), rng.uniform(0.05 * h, 0.95 * h)
        outer = _place(outer, cx, cy, half, aspect, angle)
        hole = None if hole is None else _place(hole, cx, cy, half, aspect, angle)
        mask, mx0, my0 = _mask(outer, hole)
        # Colour: random, or close to the background under the shape (low contrast).
        if rng.random() < 0.33:
            yc, xc = int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))
            base = img[yc, xc] + rng.choice([-1.0, 1.0], 3) * rng.uniform(35, 65, 3)
        else:
            base = rng.uniform(0, 255, 3)
        shade_dir = rng.uniform(-1, 1, 2) * rng.uniform(0, 40)
        # Paint the part inside the image.
        ix0, iy0 = max(mx0, 0), max(my0, 0)
        ix1, iy1 = min(mx0 + mask.shape[1], w), min(my0 + mask.shape[0], h)
        full_area = int(mask.sum())
        if full_area == 0:
            continue
        if ix1 > ix0 and iy1 > iy0:
            m = mask[iy0 - my0:iy1 - my0, ix0 - mx0:ix1 - mx0]
            gy, gx = np.nonzero(m)
            span = max(half, 1.0)
            shade = ((gx + ix0 - cx) * shade_dir[0] + (gy + iy0 - cy) * shade_dir[1]) / span
            img[gy + iy0, gx + ix0] = (base[None, :] + shade[:, None]).astype(np.float32)
            owner[gy + iy0, gx + ix0] = j if is_obj[j] else -2
        placed.append((name, int(j), mask, mx0, my0, full_area))

    noise = rng.uniform(2.0, 14.0)
    img += rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(noise)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    objects: list[SynthObject] = []
    for name, j, mask, mx0, my0, full_area in placed:
        if not is_obj[j]:
            continue
        ix0, iy0 = max(mx0, 0), max(my0, 0)
        ix1, iy1 = min(mx0 + mask.shape[1], w), min(my0 + mask.shape[0], h)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        in_image = int(mask[iy0 - my0:iy1 - my0, ix0 - mx0:ix1 - mx0].sum())
        vis = owner[iy0:iy1, ix0:ix1] == j
        n_vis = int(vis.sum())
        visible = n_vis / full_area
        if visible < _MIN_VISIBLE or n_vis == 0:
            continue
        cols = np.flatnonzero(vis.any(axis=0))
        rows = np.flatnonzero(vis.any(axis=1))
        box = (ix0 + int(cols[0]), iy0 + int(rows[0]), ix0 + int(cols[-1]) + 1, iy0 + int(rows[-1]) + 1)
        side = min(box[2] - box[0], box[3] - box[1])
        objects.append(SynthObject(
            name=name, box=box,
            difficult=visible < _DIFFICULT_VISIBLE or side < _DIFFICULT_SIDE,
            truncated=in_image < 0.95 * full_area,
            occluded=n_vis < 0.9 * in_image,
            visible=round(visible, 4),
        ))
    return image, objects


def _to_target(objects: Sequence[SynthObject], image_id: str, size: tuple[int, int]) -> Target:
    return Target(
        boxes=np.array([o.box for o in objects], dtype=np.float32).reshape(-1, 4),
        labels=np.array([CLASS_NAMES.index(o.name) for o in objects], dtype=np.int64),
        image_id=image_id,
        orig_size=size,
        difficult=np.array([o.difficult for o in objects], dtype=bool),
    )


class SyntheticShapes:
    """The synthetic images in memory (a :class:`~multibox.data.types.DetectionDataset`), rendered on demand.

    ``ds[i]`` is image ``i`` of :func:`write_synthetic_voc` with the same ``seed`` and ``size`` before JPEG
    compression; boxes are float32 xyxy pixels, labels ``1..6`` (:data:`CLASS_NAMES`), image ids ``"%06d"``.
    """

    class_names: list[str] = list(CLASS_NAMES)

    def __init__(self, num_images: int, seed: int = 0, size: int = 300) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.size = int(size)
        self.class_names = list(CLASS_NAMES)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[np.ndarray, Target]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        image, objects = render_image(self.seed, index, self.size)
        return image, _to_target(objects, f"{index:06d}", image.shape[:2])


# ----------------------------------------------------------------------------------------------- VOC output


def _write_one(args: tuple[Path, int, int, int, int]) -> tuple[list[str], list[bool]]:
    out, seed, index, size, quality = args
    image, objects = render_image(seed, index, size)
    image_id = f"{index:06d}"
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, optimize=False)
    atomic_write_bytes(out / "JPEGImages" / f"{image_id}.jpg", buf.getvalue())
    from .datasets.voc import voc_xml

    boxes = np.array([o.box for o in objects], dtype=np.float32).reshape(-1, 4)
    flags = np.array([o.difficult for o in objects], dtype=bool)
    xml = voc_xml(f"{image_id}.jpg", image.shape[:2], boxes, [o.name for o in objects], flags,
                  np.zeros(len(objects), dtype=bool))
    atomic_write_bytes(out / "Annotations" / f"{image_id}.xml", xml)
    return [o.name for o in objects], [o.difficult for o in objects]


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synthetic_voc` wrote."""

    root: Path
    num_images: int
    train_ids: list[str]
    test_ids: list[str]
    class_counts: dict[str, int]
    difficult: int


def write_synthetic_voc(out: str | os.PathLike, num_images: int, *, seed: int = 0, size: int = 300,
                        test_fraction: float = 0.2, quality: int = 90, workers: int = 1,
                        progress: bool = False) -> SynthSummary:
    """Write ``num_images`` synthetic images with VOC annotations under ``out`` (layout in the module docstring).

    ``round(num_images * test_fraction)`` images, chosen by ``seed``, go to ``test.txt``, the rest to ``train.txt``
    (and ``trainval.txt``). Every file is written atomically; the same arguments give byte-identical files.
    ``workers > 1`` renders in that many processes (same output).
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in [1, 100], got {quality}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    root = Path(out)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    jobs = [(root, int(seed), i, int(size), int(quality)) for i in range(num_images)]
    counts = dict.fromkeys(SHAPE_CLASSES, 0)
    n_difficult = 0
    from tqdm import tqdm

    bar = tqdm(total=num_images, desc="synth", unit="img", disable=not progress)
    try:
        if workers > 1 and num_images > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = pool.map(_write_one, jobs, chunksize=max(1, min(32, num_images // (4 * workers))))
                for names, diff in results:
                    for n in names:
                        counts[n] += 1
                    n_difficult += sum(diff)
                    bar.update(1)
        else:
            for job in jobs:
                names, diff = _write_one(job)
                for n in names:
                    counts[n] += 1
                n_difficult += sum(diff)
                bar.update(1)
    finally:
        bar.close()

    ids = [f"{i:06d}" for i in range(num_images)]
    n_test = int(round(num_images * test_fraction))
    perm = np.random.default_rng([int(seed), 0x7E57]).permutation(num_images)
    test_idx = set(int(i) for i in perm[:n_test])
    test_ids = [ids[i] for i in range(num_images) if i in test_idx]
    train_ids = [ids[i] for i in range(num_images) if i not in test_idx]
    main = root / "ImageSets" / "Main"
    listing = lambda xs: "".join(f"{x}\n" for x in xs).encode()  # noqa: E731
    atomic_write_bytes(main / "train.txt", listing(train_ids))
    atomic_write_bytes(main / "trainval.txt", listing(train_ids))
    atomic_write_bytes(main / "test.txt", listing(test_ids))
    atomic_write_bytes(root / "classes.txt", listing(SHAPE_CLASSES))
    meta = {
        "generator": "multibox data synth",
        "seed": int(seed), "size": int(size), "images": num_images, "test_fraction": test_fraction,
        "jpeg_quality": int(quality), "classes": list(SHAPE_CLASSES), "distractors": list(DISTRACTOR_SHAPES),
        "objects_per_class": counts, "difficult": n_difficult, "train": len(train_ids), "test": len(test_ids),
    }
    atomic_write_bytes(root / "synth.json", (json.dumps(meta, indent=2) + "\n").encode())
    return SynthSummary(root, num_images, train_ids, test_ids, counts, n_difficult)


def read_class_names(root: str | os.PathLike) -> list[str]:
    """``class_names`` (``"background"`` first) from ``root/classes.txt`` of a dataset written by
    :func:`write_synthetic_voc`."""
    names = [ln.strip() for ln in (Path(root) / "classes.txt").read_text().splitlines() if ln.strip()]
    return ["background", *names]


def open_synthetic_voc(root: str | os.PathLike, split: str | None = "train", **options: Any) -> Any:
    """The dataset written by :func:`write_synthetic_voc` as a
    :class:`~multibox.data.datasets.voc.VOCDataset` (``split`` ``"train"``, ``"trainval"``, ``"test"`` or ``None``
    for all) with ``class_names`` from ``classes.txt``; ``options`` go to ``VOCDataset``."""
    from .datasets.voc import VOCDataset

    return VOCDataset(root, split=split, classes=Path(root) / "classes.txt", **options)
