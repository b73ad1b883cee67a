"""Test-time augmentation: detect in mirrored, turned and shifted copies of an image and fuse the detections.

A view is a :class:`View` ``(mirror, turns, shift)``: the image shifted ``shift`` pixels of the network input to the
right and down (the first rows and columns repeated at the top-left edge, as many cut at the bottom-right), then
mirrored left-right when ``mirror``, then turned ``turns`` quarter turns counter-clockwise (``numpy.rot90``). The
named view sets:

* ``hflip``: the image and its left-right mirror (2 views; for photos with an up);
* ``flips``: identity, left-right mirror, half turn, top-bottom mirror (4 views);
* ``dihedral``: all 8 mirrors and quarter turns (overhead photos, which have no up);
* ``MODE+shift`` (``hflip+shift``, ``flips+shift``, ``dihedral+shift``): each view of ``MODE`` also shifted by
  :data:`TTA_SHIFTS` (2, 4 and 6 input pixels along the diagonal: quarter steps of a stride-8 feature map), 4x the
  views. A shift moves the image against the prior grid, so each copy places its boxes with different priors and
  the fused box averages more nearly independent estimates.

A shift is given in pixels of the network input, so that it means the same step of the prior grid at any image
size; :func:`shift_pixels` turns it into whole pixels of the image (``round(shift * W / input W)``, likewise for
the height). :meth:`multibox.detector.Detector.detect_arrays` with ``tta=`` runs the detector on every view, maps
each view's boxes back to the image (:func:`unview_boxes`, exact: a box of the view is the image of a box of the
original, moved back by the same whole pixels), and merges them per class with weighted box fusion
(:func:`fuse_detections`; Solovyev et al. 2019, "Weighted boxes fusion"): boxes are taken best first; a box joins
the first cluster whose fused box it overlaps with IoU above ``iou_threshold``, else it starts a cluster; a
cluster's box is the score-weighted mean of its boxes and its score the sum of its scores over
``max(views, boxes in the cluster)``, so an object that only some views found is down-weighted. Averaging the
views' boxes, not only choosing one of them (as NMS over the union does), is what makes the fused boxes better
placed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .detections import Detections

__all__ = ["View", "TTA_MODES", "TTA_SHIFTS", "FUSE_IOU_THRESHOLD", "tta_views", "image_hw", "shift_pixels",
           "view_image", "unview_boxes", "fuse_detections"]

#: IoU above which a box joins a fused cluster (the value of the weighted-box-fusion paper).
FUSE_IOU_THRESHOLD = 0.55

#: Shifts (pixels of the network input, right and down) of the ``+shift`` modes: quarter steps of a stride-8 map.
TTA_SHIFTS: tuple[int, ...] = (0, 2, 4, 6)


class View(NamedTuple):
    """One copy of the image: shifted ``shift`` network-input pixels right and down first, then mirrored
    left-right when ``mirror``, then turned ``turns`` quarter turns counter-clockwise. A plain
    ``(mirror, turns)`` pair is the unshifted view."""

    mirror: bool = False
    turns: int = 0
    shift: int = 0


_BASE_MODES: dict[str, tuple[View, ...]] = {
    "hflip": (View(False, 0), View(True, 0)),
    "flips": (View(False, 0), View(True, 0), View(False, 2), View(True, 2)),
    "dihedral": tuple(View(m, t) for m in (False, True) for t in range(4)),
}

TTA_MODES: dict[str, tuple[View, ...]] = {
    **_BASE_MODES,
    **{f"{name}+shift": tuple(View(v.mirror, v.turns, s) for s in TTA_SHIFTS for v in views)
       for name, views in _BASE_MODES.items()},
}


def tta_views(mode: str) -> tuple[View, ...]:
    """The views of a named TTA mode (:data:`TTA_MODES`); ``ValueError`` naming the known modes otherwise."""
    try:
        return TTA_MODES[mode]
    except (KeyError, TypeError):
        raise ValueError(f"unknown test-time augmentation {mode!r}; expected one of {sorted(TTA_MODES)}") from None


def _parts(view: tuple) -> tuple[bool, int, int]:
    """``(mirror, turns, shift)`` of a :class:`View` or a plain ``(mirror, turns)`` pair."""
    if len(view) == 2:
        return bool(view[0]), int(view[1]), 0
    if int(view[2]) < 0:
        raise ValueError(f"view {tuple(view)}: the shift is in pixels right and down, >= 0")
    return bool(view[0]), int(view[1]), int(view[2])


def image_hw(image: np.ndarray | Tensor) -> tuple[int, int]:
    """``(height, width)`` of an ``[H, W, C]`` array or a ``[C, H, W]`` tensor."""
    if isinstance(image, Tensor):
        return int(image.shape[-2]), int(image.shape[-1])
    return int(image.shape[0]), int(image.shape[1])


def shift_pixels(view: tuple, image_size: tuple[int, int],
                 input_size: tuple[float, float] | None = None) -> tuple[int, int]:
    """The whole-pixel shift ``(dx, dy)`` of ``view`` on an image of ``image_size`` ``(height, width)`` that the
    network sees resized to ``input_size`` ``(height, width)``: ``round(shift * W / input W)`` and
    ``round(shift * H / input H)``. ``input_size`` ``None``: the shift is taken in pixels of the image."""
    shift = _parts(view)[2]
    if not shift:
        return 0, 0
    h, w = image_size
    ih, iw = input_size if input_size is not None else image_size
    return round(shift * w / iw), round(shift * h / ih)


def _shift(image: np.ndarray | Tensor, dx: int, dy: int) -> np.ndarray | Tensor:
    """``image`` moved ``dx`` pixels right and ``dy`` down, the first column / row repeated into the gap."""
    if isinstance(image, Tensor):
        h, w = image.shape[-2:]
        rows = (torch.arange(h) - dy).clamp(min=0)
        cols = (torch.arange(w) - dx).clamp(min=0)
        return image[..., rows, :][..., cols]
    h, w = image.shape[:2]
    rows = np.clip(np.arange(h) - dy, 0, None)
    cols = np.clip(np.arange(w) - dx, 0, None)
    return np.ascontiguousarray(image[rows][:, cols])


def view_image(image: np.ndarray | Tensor, view: tuple,
               input_size: tuple[float, float] | None = None) -> np.ndarray | Tensor:
    """``image`` seen through ``view``: an ``[H, W, C]`` array or a ``[C, H, W]`` tensor, shifted right and down by
    :func:`shift_pixels` (``input_size``: the network input's ``(height, width)`` it will be resized to), mirrored
    left-right when ``view.mirror``, then turned ``view.turns`` quarter turns counter-clockwise. Arrays come back
    contiguous."""
    mirror, turns, _ = _parts(view)
    dx, dy = shift_pixels(view, image_hw(image), input_size)
    if dx or dy:
        image = _shift(image, dx, dy)
    if isinstance(image, Tensor):
        out = image.flip(-1) if mirror else image
        return torch.rot90(out, turns % 4, dims=(-2, -1)) if turns % 4 else out
    out = image[:, ::-1] if mirror else image
    return np.ascontiguousarray(np.rot90(out, turns % 4, axes=(0, 1)))


def unview_boxes(boxes: Tensor, view: tuple, image_size: tuple[int, int],
                 input_size: tuple[float, float] | None = None) -> Tensor:
    """Boxes ``[N, 4]`` xyxy in pixels of ``view_image(image, view, input_size)`` -> the same boxes in pixels of
    ``image``.

    ``image_size`` is the original image's ``(height, width)``. The map is exact (each box corner moves with the
    pixel grid: a quarter turn counter-clockwise of a ``w``-wide image sends ``(x, y)`` to ``(y, w - x)``; the shift
    moves it back by the same whole pixels). A box that a shifted view found in the repeated edge may reach
    below 0: callers clip."""
    h, w = image_size
    b = boxes.to(torch.float32)
    mirror, turns, _ = _parts(view)
    # height of the view being undone: a quarter turn sends (x, y) of an image of width W to (y, W - x), and W is
    # the turned image's height; undoing it sends a box (x0, y0, x1, y1) to (W - y1, x0, W - y0, x1)
    vh = w if turns % 2 else h
    for _ in range(turns % 4):
        x0, y0, x1, y1 = b.unbind(-1)
        b = torch.stack([vh - y1, x0, vh - y0, x1], dim=-1)
        vh = h + w - vh  # the image before that turn has the other side as its height
    if mirror:  # the mirror came after the shift, on an image of the original's size
        x0, y0, x1, y1 = b.unbind(-1)
        b = torch.stack([w - x1, y0, w - x0, y1], dim=-1)
    dx, dy = shift_pixels(view, image_size, input_size)
    if dx or dy:
        b = b - torch.tensor([dx, dy, dx, dy], dtype=b.dtype)
    return b


def _iou_one(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = (box[2] - box[0]) * (box[3] - box[1]) + (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(union - inter, 1e-12)


def fuse_detections(views: Sequence[Detections], *, iou_threshold: float = FUSE_IOU_THRESHOLD,
                    keep_top_k: int | None = None, conf: float | None = None, class_names: list[str] | None = None,
                    image_size: tuple[int, int] | None = None) -> Detections:
    """Weighted box fusion of the detections of ``len(views)`` views of one image (boxes already mapped back
    to the image, :func:`unview_boxes`), per class; see the module docstring.

    Returns fused boxes ``[N, 4]`` float32 xyxy (the score-weighted mean of each cluster's boxes), scores (sum of
    the cluster's scores / ``max(len(views), cluster size)``), labels, sorted by score, those with score
    ``>= conf`` (when given), at most ``keep_top_k``."""
    n_views = max(len(views), 1)
    names = class_names if class_names is not None else next((d.class_names for d in views), None)
    size = image_size if image_size is not None else next((d.image_size for d in views), None)
    boxes = np.concatenate([d.boxes.detach().cpu().numpy().reshape(-1, 4) for d in views] or [np.zeros((0, 4))])
    scores = np.concatenate([d.scores.detach().cpu().numpy().reshape(-1) for d in views] or [np.zeros(0)])
    labels = np.concatenate([d.labels.detach().cpu().numpy().reshape(-1) for d in views] or [np.zeros(0)])
    out_b: list[np.ndarray] = []
    out_s: list[float] = []
    out_l: list[int] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        fused: list[np.ndarray] = []
        members: list[list[int]] = []
        for k in idx:
            if fused:
                ious = _iou_one(boxes[k].astype(np.float64), np.asarray(fused))
                j = int(np.argmax(ious))
                if ious[j] > iou_threshold:
                    members[j].append(int(k))
                    w = scores[members[j]].astype(np.float64)
                    fused[j] = (boxes[members[j]].astype(np.float64) * w[:, None]).sum(0) / max(w.sum(), 1e-12)
                    continue
            members.append([int(k)])
            fused.append(boxes[k].astype(np.float64))
        for box, m in zip(fused, members, strict=True):
            out_b.append(box)
            out_s.append(float(scores[m].sum()) / max(n_views, len(m)))
            out_l.append(int(label))
    if not out_s:
        return Detections.empty(names, size)
    s = np.asarray(out_s, dtype=np.float32)
    order = np.argsort(-s, kind="stable")
    if conf is not None:
        order = order[s[order] >= conf]
    if keep_top_k is not None:
        order = order[:keep_top_k]
    return Detections(torch.from_numpy(np.asarray(out_b, dtype=np.float32).reshape(-1, 4)[order]),
                      torch.from_numpy(s[order]), torch.from_numpy(np.asarray(out_l, dtype=np.int64)[order]),
                      names, size)
