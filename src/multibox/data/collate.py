"""Batching of transformed detection samples into padded tensors (docs/design.md: ground truth padded to ``[B, G]``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .types import Target

__all__ = ["collate_detection"]


def _image_tensor(image: Any) -> Tensor:
    t = image if isinstance(image, Tensor) else torch.as_tensor(np.asarray(image))
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"collate_detection expects transformed [3, H, W] images, got shape {tuple(t.shape)}; "
                         "apply a train or eval transform (which resizes and normalizes) first")
    return t.float()


def collate_detection(batch: Sequence[tuple[Any, Target]]) -> dict[str, Any]:
    """Stack transformed samples ``(image [3, H, W] float32, Target with xyxy pixel boxes of that image)``.

    All images must have the same size (the transforms resize to the model's input size). Returns a dict:

    * ``images``: ``[B, 3, H, W]`` float32;
    * ``boxes``: ``[B, G, 4]`` float32 **normalized** xyxy (pixel boxes divided by ``(W, H, W, H)``), zeros in
      padding; ``G`` is the largest box count in the batch and may be 0;
    * ``labels``: ``[B, G]`` int64, ``>= 1`` object classes, ``-1`` for ``iscrowd`` boxes (matched but ignored by
      the loss), ``0`` in padding;
    * ``valid``: ``[B, G]`` bool, ``True`` for real boxes (crowd boxes included), ``False`` for padding;
    * ``difficult``: ``[B, G]`` bool (VOC ``difficult``), ``False`` in padding;
    * ``image_ids``: ``list[str]``; ``orig_sizes``: ``list[tuple[int, int]]`` ``(h, w)`` of the decoded images.
    """
    if len(batch) == 0:
        raise ValueError("collate_detection got an empty batch")
    images = [_image_tensor(img) for img, _ in batch]
    size = tuple(images[0].shape[1:])
    for img, (_, tgt) in zip(images, batch, strict=True):
        if tuple(img.shape[1:]) != size:
            raise ValueError(f"images in a batch must have one size: {size} vs {tuple(img.shape[1:])} "
                             f"(image {tgt.image_id})")
    h, w = size
    targets = [t for _, t in batch]
    b = len(batch)
    g = max(len(t) for t in targets)
    boxes = np.zeros((b, g, 4), dtype=np.float32)
    labels = np.zeros((b, g), dtype=np.int64)
    valid = np.zeros((b, g), dtype=bool)
    difficult = np.zeros((b, g), dtype=bool)
    scale = np.array([w, h, w, h], dtype=np.float32)
    for i, t in enumerate(targets):
        n = len(t)
        if n == 0:
            continue
        boxes[i, :n] = t.boxes / scale
        lab = t.labels.astype(np.int64, copy=True)
        if t.iscrowd.size:
            lab[t.iscrowd] = -1
        labels[i, :n] = lab
        valid[i, :n] = True
        difficult[i, :n] = t.difficult
    return {
        "images": torch.stack(images),
        "boxes": torch.from_numpy(boxes),
        "labels": torch.from_numpy(labels),
        "valid": torch.from_numpy(valid),
        "difficult": torch.from_numpy(difficult),
        "image_ids": [t.image_id for t in targets],
        "orig_sizes": [tuple(int(v) for v in t.orig_size) for t in targets],
    }
