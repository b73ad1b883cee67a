"""A synthetic detection dataset of shapes, written in Pascal VOC layout, in two profiles (``hard`` and ``easy``).

Each image is rendered from ``(seed, index)`` alone (a ``np.random.default_rng`` seeded by them), so the same seed
gives byte-identical files whatever the order or the number of worker processes. Both profiles draw objects of the
same six classes (:data:`SHAPE_CLASSES`: circle, square, triangle, star, ring, cross), stretched, rotated and shaded,
and give each object the box of its **visible** pixels (the VOC rule). :data:`PROFILES` holds the declared numbers
of each profile (:class:`SynthProfile`).

``hard`` (the default; its output is what this module has always written): images are ``size`` (default 300)
pixels on the long side and ``0.6 * size`` to ``size`` on the short side (landscape or portrait). An image holds
0 to 8 objects, each stretched (aspect 0.6-1.6), rotated, sized from 5% to 55% of the short image side
(log-uniform), coloured at random (about a third of them close to the local background colour), shaded, and 0 to
3 **distractors** that are not in the class list (crescent, bar, blob). Shapes are painted in random order, so
later ones hide parts of earlier ones, and may run off the image:

* an object showing less than 25% of its area is dropped (no box); one showing less than 50%, or whose visible
  box is under 6 pixels on a side, is marked ``difficult`` (VOC evaluation ignores it);
* :func:`render_image` also reports ``truncated`` (more than 5% of the shape outside the image), ``occluded``
  (other shapes hide more than 10% of it) and the visible fraction; the XML, written by
  :func:`multibox.data.datasets.voc.voc_xml`, keeps ``difficult`` (its ``truncated`` is always 0).

Its backgrounds mix linear gradients, sine stripes, low-frequency blotches and checkerboards with pixel noise.

``easy`` (for demos and quick trainings): square ``size x size`` images (default 128), 1 to 6 objects (2 to 6
attempted; one that finds no free place in 40 tries is left out), no distractors, every object wholly inside the
image with a box whose long side is 15% to 60% of the image side (log-uniform), stretched (aspect 0.7-1.4) and
rotated. Object colours are far from the background (RGB distance >= 160), the background is one flat colour or
a gentle two-colour gradient with light noise. Occlusion is slight: boxes overlap by at most 25% of the smaller
one, a new shape may hide at most 10% of an earlier one and never change its box, so no object is ``difficult``,
``truncated`` or ``occluded``.

Layout written by :func:`write_synthetic_voc` (``multibox data synth OUT [--profile easy]``)::

    OUT/Annotations/000000.xml        VOC XML, 1-based inclusive pixel coordinates
    OUT/JPEGImages/000000.jpg
    OUT/ImageSets/Main/train.txt      image ids, one per line (trainval.txt: the same list)
    OUT/ImageSets/Main/test.txt
    OUT/classes.txt                   object class names in label order (label 1 first; background not listed)
    OUT/synth.json                    generator settings (profile included) and counts

Read it with :func:`open_synthetic_voc` (the VOC dataset with the class list from ``classes.txt``), or use
:class:`SyntheticShapes` for the same images in memory (not JPEG-compressed) without files.
"""

from __future__ import annotations

import ctypes
import io
import json
import math
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..fileio import atomic_write_bytes
from ..limits import max_input_side
from .datasets.voc import VOCDataset, voc_xml
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
    "SynthProfile",
    "PROFILES",
    "pid_alive",
    "temp_dir_for",
    "remove_stale_temp_dirs",
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
class SynthProfile:
    """The declared numbers of one dataset profile (see the module docstring).

    * ``size``: default image size in pixels (``hard``: the long side; ``easy``: the side of a square image);
    * ``object_range``: ``(min, max)`` object size as a fraction of the short image side (``hard``: the shape's
      nominal diameter before stretching, so boxes may be a little off and occlusion or the image edge can cut
      them; ``easy``: the long side of the object's box, exact up to one pixel of rasterization);
    * ``max_objects``: most objects drawn in one image; ``distractors``: the unannotated clutter shapes used.
    """

    name: str
    size: int
    object_range: tuple[float, float]
    max_objects: int
    distractors: tuple[str, ...]


#: The profiles by name; ``"hard"`` is the default.
PROFILES: dict[str, SynthProfile] = {
    "hard": SynthProfile("hard", 300, (0.05, 0.55), _MAX_OBJECTS, DISTRACTOR_SHAPES),
    "easy": SynthProfile("easy", 128, (0.15, 0.60), 6, ()),
}

_EASY_MIN_OBJECTS = 2  # objects attempted per easy image: uniform in [_EASY_MIN_OBJECTS, max_objects]
_EASY_TRIES = 40  # placements tried per easy object before it is left out
_EASY_BOX_OVERLAP = 0.25  # most a box may overlap another, as a fraction of the smaller box's area
_EASY_HIDDEN = 0.10  # most of an earlier shape's area a later one may hide
_EASY_MIN_COLOUR_DISTANCE = 160.0  # RGB distance between an object's colour and the background's
_EASY_TAG = 0xEA5  # third seed word of the easy profile's generator


def _profile(profile: str) -> SynthProfile:
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown synthetic profile {profile!r}; choose one of {', '.join(PROFILES)}") from None


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


def _image_side(size: int) -> int:
    """``size`` (the longest image side in pixels) checked: at least 32, at most the input-side bound of
    :mod:`multibox.limits` (an image of 100000 px would need tens of gigabytes before anything is written)."""
    size = int(size)
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    if size > max_input_side():
        raise ValueError(f"size {size}: exceeds {max_input_side()} pixels per side "
                         "(MULTIBOX_MAX_INPUT_SIDE raises the bound)")
    return size


def render_image(seed: int, index: int, size: int | None = None,
                 profile: str = "hard") -> tuple[np.ndarray, list[SynthObject]]:
    """Render image ``index`` of the dataset with ``seed`` and ``profile``: ``([H, W, 3] uint8 RGB, objects)``.

    Deterministic in ``(seed, index, size, profile)``. ``size`` (default: the profile's, 300 for ``hard``, 128
    for ``easy``) is ``max(H, W)``; ``easy`` images are square. Objects carry 0-based pixel-edge boxes
    ``(x0, y0, x1, y1)`` inside the image.
    """
    spec = _profile(profile)
    size = _image_side(spec.size if size is None else size)
    if spec.name == "easy":
        return _render_easy(seed, index, size)
    return _render_hard(seed, index, size)


def _render_hard(seed: int, index: int, size: int) -> tuple[np.ndarray, list[SynthObject]]:
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


def _easy_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """An RGB colour at least ``_EASY_MIN_COLOUR_DISTANCE`` from each of the ``[k, 3]`` background colours: random
    when one of 8 draws is, else black or white, whichever is farther (at least 221 from a mean colour)."""
    for _ in range(8):
        c = rng.uniform(0, 255, 3)
        if np.linalg.norm(background - c, axis=1).min() >= _EASY_MIN_COLOUR_DISTANCE:
            return c
    black, white = np.zeros(3), np.full(3, 255.0)
    far = lambda c: float(np.linalg.norm(background - c, axis=1).min())  # noqa: E731
    return black if far(black) >= far(white) else white


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel-edge box ``(x0, y0, x1, y1)`` of the true pixels of a 2-D mask, ``None`` when there are none."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _render_easy(seed: int, index: int, size: int) -> tuple[np.ndarray, list[SynthObject]]:
    """The ``easy`` profile (module docstring): a square ``size x size`` image and its objects."""
    spec = PROFILES["easy"]
    rng = np.random.default_rng([int(seed), int(index), _EASY_TAG])
    s = size
    # Background: one flat colour, or a gentle gradient to a second colour within +-30 per channel.
    c1 = rng.uniform(0, 255, 3)
    if rng.random() < 0.5:
        c2 = c1
        img = np.broadcast_to(c1.astype(np.float32), (s, s, 3)).copy()
    else:
        c2 = np.clip(c1 + rng.uniform(-30, 30, 3), 0, 255)
        a = rng.uniform(0, 2 * np.pi)
        grid = np.arange(s, dtype=np.float32) / np.float32(s)
        proj = grid[None, :] * np.float32(math.cos(a)) + grid[:, None] * np.float32(math.sin(a))
        t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
        img = c1.astype(np.float32) + t[..., None] * (c2 - c1).astype(np.float32)
    background = np.stack([c1, c2])
    owner = np.full((s, s), -1, dtype=np.int16)
    lo, hi = spec.object_range

    placed: list[tuple[str, tuple[int, int, int, int], int]] = []  # name, box, area (paint order = owner id)
    n_try = int(rng.integers(_EASY_MIN_OBJECTS, spec.max_objects + 1))
    for _ in range(n_try):
        name = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        outer, hole = _outline(name, rng)
        aspect = math.exp(rng.uniform(math.log(0.7), math.log(1.4)))
        angle = rng.uniform(0, 2 * math.pi)
        outer = _place(outer, 0.0, 0.0, 1.0, aspect, angle)
        hole = None if hole is None else _place(hole, 0.0, 0.0, 1.0, aspect, angle)
        long_side = s * math.exp(rng.uniform(math.log(lo), math.log(hi)))
        # Rasterizing the polygon adds about one pixel to its extent.
        lo_xy, hi_xy = outer.min(axis=0), outer.max(axis=0)
        scale = (long_side - 1.0) / float((hi_xy - lo_xy).max())
        outer = (outer - (lo_xy + hi_xy) / 2) * scale
        hole = None if hole is None else (hole - (lo_xy + hi_xy) / 2) * scale
        half_w, half_h = (hi_xy - lo_xy) * scale / 2
        base = _easy_colour(rng, background)
        shade_dir = rng.uniform(-1, 1, 2) * rng.uniform(0, 20)
        k = len(placed)
        for _ in range(_EASY_TRIES):
            cx = rng.uniform(half_w + 0.5, max(s - 1.5 - half_w, half_w + 0.5))
            cy = rng.uniform(half_h + 0.5, max(s - 1.5 - half_h, half_h + 0.5))
            mask, mx0, my0 = _mask(outer + (cx, cy), None if hole is None else hole + (cx, cy))
            tight = _tight_box(mask)
            if tight is None:
                break
            box = (mx0 + tight[0], my0 + tight[1], mx0 + tight[2], my0 + tight[3])
            if box[0] < 0 or box[1] < 0 or box[2] > s or box[3] > s:
                continue
            area = (box[2] - box[0]) * (box[3] - box[1])
            if any(_box_overlap(box, other) > _EASY_BOX_OVERLAP * min(area, _box_area(other))
                   for _, other, _ in placed):
                continue
            m = mask[tight[1]:tight[3], tight[0]:tight[2]]
            trial = owner.copy()
            gy, gx = np.nonzero(m)
            trial[gy + box[1], gx + box[0]] = k
            hidden = np.unique(owner[gy + box[1], gx + box[0]])
            ok = True
            for j in hidden[hidden >= 0]:
                _, jbox, jarea = placed[int(j)]
                vis = trial[jbox[1]:jbox[3], jbox[0]:jbox[2]] == j
                if vis.sum() < (1.0 - _EASY_HIDDEN) * jarea or _tight_box(vis) != (0, 0, jbox[2] - jbox[0],
                                                                                   jbox[3] - jbox[1]):
                    ok = False
                    break
            if not ok:
                continue
            shade = ((gx + box[0] - cx) * shade_dir[0] + (gy + box[1] - cy) * shade_dir[1]) / max(long_side / 2, 1.0)
            img[gy + box[1], gx + box[0]] = (base[None, :] + shade[:, None]).astype(np.float32)
            owner = trial
            placed.append((name, box, int(gy.size)))
            break

    noise = rng.uniform(2.0, 5.0)
    img += rng.standard_normal((s, s, 3), dtype=np.float32) * np.float32(noise)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    objects: list[SynthObject] = []
    for j, (name, box, area) in enumerate(placed):
        vis = owner[box[1]:box[3], box[0]:box[2]] == j
        n_vis = int(vis.sum())
        visible = n_vis / area
        side = min(box[2] - box[0], box[3] - box[1])
        objects.append(SynthObject(
            name=name, box=box,
            difficult=visible < _DIFFICULT_VISIBLE or side < _DIFFICULT_SIDE,
            truncated=False,
            occluded=n_vis < 0.9 * area,
            visible=round(visible, 4),
        ))
    return image, objects


def _box_area(b: tuple[int, int, int, int]) -> int:
    return (b[2] - b[0]) * (b[3] - b[1])


def _box_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """Intersection area of two pixel-edge boxes."""
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


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

    ``ds[i]`` is image ``i`` of :func:`write_synthetic_voc` with the same ``seed``, ``size`` and ``profile``
    before JPEG compression; boxes are float32 xyxy pixels, labels ``1..6`` (:data:`CLASS_NAMES`), image ids
    ``"%06d"``. ``size=None`` takes the profile's default (300 for ``hard``, 128 for ``easy``).
    """

    class_names: list[str] = list(CLASS_NAMES)

    def __init__(self, num_images: int, seed: int = 0, size: int | None = None, profile: str = "hard") -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        spec = _profile(profile)
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.profile = spec.name
        self.size = _image_side(spec.size if size is None else size)
        self.class_names = list(CLASS_NAMES)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[np.ndarray, Target]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        image, objects = render_image(self.seed, index, self.size, self.profile)
        return image, _to_target(objects, f"{index:06d}", image.shape[:2])


# ----------------------------------------------------------------------------------------------- VOC output


# The process that started the rendering workers (set in each worker by :func:`_worker_init`).
_PARENT_PID: int | None = None
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def _worker_init(parent: int) -> None:
    """Rendering worker start-up: die with the parent. On Linux the kernel sends SIGKILL to this worker when its
    parent dies (``prctl(PR_SET_PDEATHSIG)``, even after ``kill -9``); everywhere, each job first checks that the
    parent is still this process's parent (:func:`_check_parent`)."""
    global _PARENT_PID
    _PARENT_PID = parent
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the parent check below still applies
            pass
    _check_parent()


def _check_parent() -> None:
    """Exit at once when the process that started this worker is gone (re-parented to init or a reaper)."""
    if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
        os._exit(1)


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def temp_dir_for(final: str | os.PathLike, pid: int | None = None) -> Path:
    """The temporary folder ``<final>.tmp-<pid>`` a generator writes into before renaming it to ``final``."""
    f = Path(final)
    return f.with_name(f"{f.name}.tmp-{os.getpid() if pid is None else int(pid)}")


def remove_stale_temp_dirs(final: str | os.PathLike) -> list[Path]:
    """Remove the ``<final>.tmp-<pid>`` folders of processes that no longer exist (left by a killed run);
    returns what was removed. Folders of live processes (another run in progress) are kept."""
    f = Path(final)
    removed = []
    if not f.parent.is_dir():
        return removed
    for p in f.parent.glob(f"{f.name}.tmp-*"):
        suffix = p.name.rsplit(".tmp-", 1)[1]
        if not suffix.isdigit() or int(suffix) == os.getpid() or pid_alive(int(suffix)) or not p.is_dir():
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _write_one(args: tuple[Path, int, int, int, int, str]) -> tuple[list[str], list[bool]]:
    _check_parent()
    out, seed, index, size, quality, profile = args
    image, objects = render_image(seed, index, size, profile)
    image_id = f"{index:06d}"
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, optimize=False)
    atomic_write_bytes(out / "JPEGImages" / f"{image_id}.jpg", buf.getvalue())
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


def write_synthetic_voc(out: str | os.PathLike, num_images: int, *, seed: int = 0, size: int | None = None,
                        test_fraction: float = 0.2, quality: int = 90, workers: int = 1,
                        progress: bool = False, profile: str = "hard") -> SynthSummary:
    """Write ``num_images`` synthetic images with VOC annotations under ``out`` (layout in the module docstring).

    ``profile`` is ``"hard"`` (default) or ``"easy"`` (:data:`PROFILES`); ``size=None`` takes its default image
    size (300 or 128 pixels).

    ``round(num_images * test_fraction)`` images, chosen by ``seed``, go to ``test.txt``, the rest to ``train.txt``
    (and ``trainval.txt``). Every file is written atomically; the same arguments give byte-identical files.
    ``workers > 1`` renders in that many processes (same output); they die with the calling process, even when it
    is killed with SIGKILL. When ``out`` is a temporary folder ``<final>.tmp-<pid>`` (:func:`temp_dir_for`), the
    temporary folders of dead processes beside it are removed first (:func:`remove_stale_temp_dirs`).
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in [1, 100], got {quality}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    spec = _profile(profile)
    size = _image_side(spec.size if size is None else size)
    root = Path(out)
    base, sep, pid = root.name.rpartition(".tmp-")
    if sep and base and pid.isdigit():  # writing into a temporary folder: clear those of killed earlier runs
        remove_stale_temp_dirs(root.with_name(base))
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    jobs = [(root, int(seed), i, size, int(quality), spec.name) for i in range(num_images)]
    counts = dict.fromkeys(SHAPE_CLASSES, 0)
    n_difficult = 0
    bar = tqdm(total=num_images, desc="synth", unit="img", disable=not progress)
    try:
        if workers > 1 and num_images > 1:
            with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init,
                                     initargs=(os.getpid(),)) as pool:
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
        "generator": "multibox data synth", "profile": spec.name,
        "seed": int(seed), "size": size, "images": num_images, "test_fraction": test_fraction,
        "jpeg_quality": int(quality), "classes": list(SHAPE_CLASSES), "distractors": list(spec.distractors),
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
    return VOCDataset(root, split=split, classes=Path(root) / "classes.txt", **options)
