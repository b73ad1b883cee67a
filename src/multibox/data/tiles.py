"""Cut large annotated images (aerial photos) into fixed-size tiles with their boxes.

``TiledDataset(dataset, tile=400, overlap=0.25)`` is a detection dataset whose samples are the tiles of every image
of ``dataset``: tile origins on a regular grid with the given overlap, the last row/column flush with the image
border (images smaller than a tile give one tile of the image's size). ``region`` restricts the tiles to a
rectangle of each image (:func:`holdout_regions` splits a photo into a training part and a held-out strip, so that
tiles for choosing recipes never share pixels with training tiles). A box belongs to a tile when at least
``min_visible`` of its area lies inside; it is clipped to the tile and shifted to the tile's origin (xyxy pixels of
the tile). Boxes cut more than that are marked ``difficult`` when ``keep_partial`` (so evaluation ignores them and
training can drop them) instead of being dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from .types import DetectionDataset, Target

__all__ = ["tile_origins", "tile_rects", "tile_target", "holdout_regions", "TiledDataset", "Rect", "RegionFn"]

#: A pixel rectangle ``(x0, y0, x1, y1)`` (x1, y1 exclusive).
Rect = tuple[int, int, int, int]
#: Maps an image's ``(height, width)`` to the rectangle to tile (``None``: nothing of this image).
RegionFn = Callable[[int, int], "Rect | None"]


def tile_origins(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``[0, length)`` with at least ``overlap`` (fraction)
    between neighbours; the last tile ends at ``length``. ``length <= tile`` gives ``[0]``."""
    if tile <= 0 or not 0.0 <= overlap < 1.0:
        raise ValueError(f"need tile > 0 and 0 <= overlap < 1, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [0]
    stride = tile * (1.0 - overlap)
    n = math.ceil((length - tile) / stride) + 1
    return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


def tile_rects(height: int, width: int, tile: int, overlap: float, region: Rect | None = None) -> list[Rect]:
    """Tiles ``(x0, y0, x1, y1)`` covering ``region`` (default the whole ``height`` x ``width`` image), row by row:
    :func:`tile_origins` along each side of the region, shifted to its corner; tiles never leave the region."""
    rx0, ry0, rx1, ry1 = region if region is not None else (0, 0, width, height)
    if not (0 <= rx0 < rx1 <= width and 0 <= ry0 < ry1 <= height):
        raise ValueError(f"region {region} is empty or outside the {width}x{height} image")
    return [(rx0 + x, ry0 + y, min(rx0 + x + tile, rx1), min(ry0 + y + tile, ry1))
            for y in tile_origins(ry1 - ry0, tile, overlap) for x in tile_origins(rx1 - rx0, tile, overlap)]


def holdout_regions(fraction: float) -> tuple[RegionFn, RegionFn]:
    """``(train, holdout)`` region functions that cut every image in two horizontal parts: the held-out strip is
    the bottom ``round(fraction * height)`` rows, the training part the rows above it. ``fraction`` 0 holds out
    nothing (the holdout function returns ``None``); it must be below 1."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")

    def cut(height: int) -> int:
        return height - int(round(fraction * height))

    def train(height: int, width: int) -> Rect | None:
        return (0, 0, width, cut(height)) if cut(height) > 0 else None

    def holdout(height: int, width: int) -> Rect | None:
        return (0, cut(height), width, height) if cut(height) < height else None

    return train, holdout


def tile_target(target: Target, rect: tuple[int, int, int, int], min_visible: float = 0.5,
                keep_partial: bool = False) -> Target:
    """Boxes of ``target`` inside ``rect = (x0, y0, x1, y1)``, clipped and shifted to the tile (see module doc)."""
    x0, y0, x1, y1 = rect
    b = target.boxes
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    cb = np.stack([np.clip(b[:, 0], x0, x1), np.clip(b[:, 1], y0, y1), np.clip(b[:, 2], x0, x1),
                   np.clip(b[:, 3], y0, y1)], axis=1).reshape(-1, 4)
    inside = np.clip(cb[:, 2] - cb[:, 0], 0, None) * np.clip(cb[:, 3] - cb[:, 1], 0, None)
    frac = np.where(area > 0, inside / np.maximum(area, 1e-12), 0.0)
    visible = frac >= min_visible
    keep = visible | ((inside > 0) & keep_partial)
    out = target.select(keep)
    boxes = (cb[keep] - np.array([x0, y0, x0, y0], dtype=np.float32)).astype(np.float32)
    difficult = out.difficult | ~visible[keep]
    return replace(out, boxes=boxes, difficult=difficult, orig_size=(y1 - y0, x1 - x0))


class TiledDataset:
    """The tiles of every image of ``dataset`` as a detection dataset (``image [h, w, 3]`` uint8 RGB, Target).

    Image sizes are read once (the whole image is decoded per tile access; wrap in a cache for big images).
    ``image_id`` of a tile is ``"<image id>@<x0>_<y0>"``. ``class_names`` is the wrapped dataset's. ``region``
    (see :data:`RegionFn`, e.g. one of :func:`holdout_regions`) restricts the tiles of each image to a rectangle.
    """

    def __init__(self, dataset: DetectionDataset, tile: int = 400, overlap: float = 0.25, min_visible: float = 0.5,
                 keep_partial: bool = False, min_boxes: int = 0, region: RegionFn | None = None) -> None:
        self.dataset = dataset
        self.tile = int(tile)
        self.overlap = float(overlap)
        self.min_visible = float(min_visible)
        self.keep_partial = bool(keep_partial)
        self.class_names = list(getattr(dataset, "class_names", []))
        self._cache: tuple[int, np.ndarray, Target] | None = None
        self.index: list[tuple[int, Rect]] = []
        for i in range(len(dataset)):
            image, target = self._load(i)
            h, w = image.shape[:2]
            area = region(h, w) if region is not None else (0, 0, w, h)
            if area is None:
                continue
            for rect in tile_rects(h, w, self.tile, self.overlap, area):
                if min_boxes and len(tile_target(target, rect, self.min_visible)) < min_boxes:
                    continue
                self.index.append((i, rect))

    def _load(self, i: int) -> tuple[np.ndarray, Target]:
        if self._cache is None or self._cache[0] != i:
            image, target = self.dataset[i]
            self._cache = (i, image, target)
        return self._cache[1], self._cache[2]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Target]:
        i, (x0, y0, x1, y1) = self.index[index]
        image, target = self._load(i)
        out = tile_target(target, (x0, y0, x1, y1), self.min_visible, self.keep_partial)
        out = replace(out, image_id=f"{target.image_id}@{x0}_{y0}")
        return np.ascontiguousarray(image[y0:y1, x0:x1]), out

    def __repr__(self) -> str:
        return f"TiledDataset({len(self)} tiles of {self.tile}px, overlap {self.overlap})"

    def describe(self) -> dict[str, Any]:
        """Counts for reports: tiles, boxes."""
        boxes = sum(len(self[i][1]) for i in range(len(self)))
        return {"tiles": len(self), "tile": self.tile, "overlap": self.overlap, "boxes": boxes}
