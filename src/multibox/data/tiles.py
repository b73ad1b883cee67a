"""Cut large annotated images (aerial photos) into fixed-size tiles with their boxes.

``TiledDataset(dataset, tile=400, overlap=0.25)`` is a detection dataset whose samples are the tiles of every image
of ``dataset``: tile origins on a regular grid with the given overlap, the last row/column flush with the image
border (images smaller than a tile give one tile of the image's size). A box belongs to a tile when at least
``min_visible`` of its area lies inside; it is clipped to the tile and shifted to the tile's origin (xyxy pixels of
the tile). Boxes cut more than that are marked ``difficult`` when ``keep_partial`` (so evaluation ignores them and
training can drop them) instead of being dropped.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from .types import DetectionDataset, Target

__all__ = ["tile_origins", "tile_target", "TiledDataset"]


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
    ``image_id`` of a tile is ``"<image id>@<x0>_<y0>"``. ``class_names`` is the wrapped dataset's.
    """

    def __init__(self, dataset: DetectionDataset, tile: int = 400, overlap: float = 0.25, min_visible: float = 0.5,
                 keep_partial: bool = False, min_boxes: int = 0) -> None:
        self.dataset = dataset
        self.tile = int(tile)
        self.overlap = float(overlap)
        self.min_visible = float(min_visible)
        self.keep_partial = bool(keep_partial)
        self.class_names = list(getattr(dataset, "class_names", []))
        self._cache: tuple[int, np.ndarray, Target] | None = None
        self.index: list[tuple[int, tuple[int, int, int, int]]] = []
        for i in range(len(dataset)):
            image, target = self._load(i)
            h, w = image.shape[:2]
            for y in tile_origins(h, self.tile, self.overlap):
                for x in tile_origins(w, self.tile, self.overlap):
                    rect = (x, y, min(x + self.tile, w), min(y + self.tile, h))
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
