"""SSD training augmentation: the published Caffe recipe (Liu et al. 2016, ``ssd_pascal.py``), fast.

Every op works on one sample and takes the random generator explicitly::

    image, target = op(image, target, rng)   # rng: np.random.Generator

``image`` is an ``[H, W, 3]`` uint8 RGB array and ``target`` a :class:`~multibox.data.types.Target` with
absolute-pixel **xyxy** float32 boxes (see ``types.py``). The last two ops of a pipeline, :class:`Resize` and
:class:`Normalize`, turn the image into a ``[3, H, W]`` float32 tensor; after them the target's boxes are xyxy
**pixels of the resized image** (:func:`multibox.data.collate.collate_detection` divides them by the image size to
get the normalized xyxy that matching wants). ``Target.orig_size`` keeps the size of the decoded image.

The Caffe SSD recipe (``ssd_pascal.py`` with ``DataTransformer`` / ``AnnotatedDataLayer``), in order:

1. :class:`PhotometricDistort`: brightness ``+U(-32, 32)`` (p 0.5); then with p 0.5 either *order A*
   contrast ``x * U(0.5, 1.5)`` (p 0.5), saturation ``S * U(0.5, 1.5)`` (p 0.5), hue ``H + U(-18, 18)`` degrees
   (p 0.5); or *order B* saturation, hue, then contrast. A random channel permutation follows with probability
   ``channel_swap_prob`` (0 in the recipe, so off by default). Pixel values are clipped to ``[0, 255]`` after each
   step. Caffe's contrast is a plain scale ``alpha * x`` (not a blend with the mean as in torchvision).
2. :class:`Expand` (zoom out), p 0.5: ratio ``r = U(1, 4)``, canvas ``int(h r) x int(w r)`` filled with the mean
   pixel, image placed at ``floor(U(0, H - h)), floor(U(0, W - w))``, boxes shifted.
3. :class:`RandomSampleCrop` (Caffe's ``batch_sampler``): candidates are the whole image plus, for each of the six
   samplers, the first of up to 50 random crops that meets its constraint; one candidate is picked uniformly.
   Samplers: scale ``U(0.3, 1)`` (side length, as a fraction of the image side), aspect ratio ``U(0.5, 2)``
   clamped to ``[scale^2, 1/scale^2]`` so the crop fits, random offset; constraint: Jaccard of the crop with *at
   least one* ground-truth box ``>= 0.1, 0.3, 0.5, 0.7, 0.9`` (five samplers), and Caffe's sixth sampler with
   only ``max_jaccard 1.0`` (met by any crop when the image has a box). An image without boxes meets no
   constraint, so only the whole image remains: it is never cropped. Boxes whose centre lies in the crop
   (borders included) are kept, clipped to the crop and shifted; a crop may keep no box (as in Caffe).
4. :class:`RandomHorizontalFlip`, p 0.5.
5. :class:`Resize` to the model size, bilinear on float pixels without antialiasing (``align_corners=False``),
   the same as :class:`~multibox.data.transforms.EvalTransform`, then :class:`Normalize` with the model's
   :class:`~multibox.models.spec.InputSpec`.

Options for new sites and overhead imagery (not in the SSD recipes; :func:`train_transform`, config ``data.aug.*``),
off by default, and then neither drawn nor applied, so the recipes above stay bit-identical:

* :class:`ScaleJitter` after the crop: a window ``1/s`` times the crop's size, ``s`` log-uniform in a range;
* :class:`RandomVerticalFlip` after the left-right flip, then :class:`RandomRot90` (1-3 quarter turns
  counter-clockwise, :func:`rot90_target`: ``(x, y) -> (y, W - x)`` per turn);
* colour strength: :func:`photometric_of_strength` scales every range of :class:`PhotometricDistort`.

Documented differences from Caffe (all deliberate):

* hue: Caffe adds ``U(-18, 18)`` to OpenCV's 8-bit hue, whose unit is 2 degrees, and saturates it instead of
  wrapping; here hue moves by ``U(-18, 18)`` **degrees** and wraps (as ssd.pytorch does).
* precision: the colour ops run on float32 and are not rounded to uint8 between steps (Caffe rounds after each).
* crop: the normalized crop is first snapped to whole pixels (``x0 = floor(xmin W)``, width ``int(w W)``, at least
  one pixel) and the Jaccard constraint is tested on that pixel rectangle, so the kept crop meets it exactly.
* resize: bilinear only (Caffe draws one of five OpenCV interpolations per image).

Speed. :class:`SSDTrainTransform` (what :func:`ssd_train_transform` returns) draws exactly the random numbers that
``Compose([PhotometricDistort, Expand, RandomSampleCrop, RandomHorizontalFlip, Resize, Normalize])`` draws, in the
same order, and returns the same result up to float rounding (the unfused ops round the distorted pixels and the
canvas fill to uint8, so they differ by at most 0.5 before normalization), but never builds the expanded canvas nor
the crop:

* the colour ops are per-pixel maps, and the recipe applies them *before* expand, so the mean-filled canvas is
  never distorted. They are therefore applied only to the part of the **original** image that lies inside the
  final crop (everything else is discarded by the crop): the same pixels get the same values, so the output
  distribution is exactly the recipe's. They are *not* moved after the resize: clipping and the HSV maps are
  non-linear, so distorting the bilinear mix of pixels is not the same as mixing distorted pixels.
* expand + crop + flip + resize are fused into one bilinear resampling (``grid_sample`` at the exact coordinates
  torch's resize uses) of that region minus the fill value, with zero padding, plus the fill value: taps that
  fall on the canvas read the fill. The flip only mirrors the sampling coordinates.

Measured on one CPU thread (500x375 photo, 300x300 output, two runs on a loaded 2-core machine): 330-520 images/s
fused, 5.3-5.5x torchvision ``transforms.v2``'s SSD recipe (60-93/s) and about 3-4x the unfused ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .transforms import preprocess, resize_pixels
from .types import Target

__all__ = [
    "Compose",
    "PhotometricDistort",
    "PhotometricParams",
    "Expand",
    "ExpandParams",
    "CropSampler",
    "CAFFE_SSD_SAMPLERS",
    "RandomSampleCrop",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "RandomRot90",
    "ScaleJitter",
    "ScaleWindow",
    "Resize",
    "Normalize",
    "SSDTrainTransform",
    "ssd_train_transform",
    "ssdlite_train_transform",
    "train_transform",
    "TRAIN_RECIPES",
    "photometric_of_strength",
    "ssd_eval_transform",
    "EvalSampleTransform",
    "spec_mean_rgb",
    "crop_target",
    "shift_target",
    "hflip_target",
    "vflip_target",
    "rot90_target",
    "resize_target",
    "adjust_hsv",
]

#: One op: ``(image, target, rng) -> (image, target)``.
SampleOp = Callable[[Any, Target, np.random.Generator], tuple[Any, Target]]


class Compose:
    """Apply ``ops`` in order, passing the same generator to each: ``(image, target, rng) -> (image, target)``."""

    def __init__(self, ops: Sequence[SampleOp]) -> None:
        self.ops = list(ops)

    def __call__(self, image: Any, target: Target, rng: np.random.Generator) -> tuple[Any, Target]:
        for op in self.ops:
            image, target = op(image, target, rng)
        return image, target

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(op) for op in self.ops)
        return f"Compose([\n  {inner}\n])"


def spec_mean_rgb(spec: Any) -> tuple[float, float, float]:
    """A spec's mean pixel in **RGB** order on the 0-255 scale (``InputSpec.mean`` is in ``channel_order``)."""
    mean = tuple(float(v) for v in spec.mean)
    return mean[::-1] if str(getattr(spec, "channel_order", "RGB")).upper() == "BGR" else mean  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- target geometry


def crop_target(target: Target, rect: tuple[int, int, int, int]) -> Target:
    """Boxes for the crop ``rect = (x0, y0, x1, y1)`` (pixels): keep those whose centre lies in the crop (borders
    included), clip them to it and shift them to its origin. Flags and labels follow their boxes."""
    x0, y0, x1, y1 = rect
    b = target.boxes
    cx = (b[:, 0] + b[:, 2]) * 0.5
    cy = (b[:, 1] + b[:, 3]) * 0.5
    keep = (cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)
    out = target.select(keep)
    nb = out.boxes
    nb = np.stack([
        np.clip(nb[:, 0], x0, x1) - x0,
        np.clip(nb[:, 1], y0, y1) - y0,
        np.clip(nb[:, 2], x0, x1) - x0,
        np.clip(nb[:, 3], y0, y1) - y0,
    ], axis=1).astype(np.float32).reshape(-1, 4)
    return replace(out, boxes=nb)


def shift_target(target: Target, dx: float, dy: float) -> Target:
    """Boxes moved by ``(dx, dy)`` pixels."""
    return replace(target, boxes=target.boxes + np.array([dx, dy, dx, dy], dtype=np.float32))


def hflip_target(target: Target, width: int) -> Target:
    """Boxes of the image mirrored left-right: ``x -> width - x`` (pixel edges), so ``[x0, x1] -> [W - x1, W - x0]``."""
    b = target.boxes
    nb = np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1).astype(np.float32).reshape(-1, 4)
    return replace(target, boxes=nb)


def vflip_target(target: Target, height: int) -> Target:
    """Boxes of the image mirrored top-bottom: ``[y0, y1] -> [H - y1, H - y0]``."""
    b = target.boxes
    nb = np.stack([b[:, 0], height - b[:, 3], b[:, 2], height - b[:, 1]], axis=1).astype(np.float32).reshape(-1, 4)
    return replace(target, boxes=nb)


def rot90_target(target: Target, height: int, width: int, k: int) -> Target:
    """Boxes of a ``height x width`` image turned ``k`` quarter turns **counter-clockwise** (as ``np.rot90``).

    One quarter turn maps the point ``(x, y)`` to ``(y, W - x)`` on the ``W x H`` result, so a box
    ``(x0, y0, x1, y1)`` becomes ``(y0, W - x1, y1, W - x0)``; ``k`` is taken mod 4.
    """
    b = target.boxes.reshape(-1, 4).astype(np.float32)
    h, w = height, width
    for _ in range(k % 4):
        b = np.stack([b[:, 1], w - b[:, 2], b[:, 3], w - b[:, 0]], axis=1).astype(np.float32).reshape(-1, 4)
        h, w = w, h
    return replace(target, boxes=b)


def resize_target(target: Target, in_size: tuple[int, int], out_size: tuple[int, int]) -> Target:
    """Boxes of an ``in_size = (h, w)`` image resized to ``out_size = (h, w)``."""
    sy = out_size[0] / in_size[0]
    sx = out_size[1] / in_size[1]
    return replace(target, boxes=target.boxes * np.array([sx, sy, sx, sy], dtype=np.float32))


# ----------------------------------------------------------------------------------------------- photometric


def adjust_hsv(x: np.ndarray, saturation: float = 1.0, hue_degrees: float = 0.0) -> np.ndarray:
    """Scale HSV saturation and rotate hue of planar float pixels, in place.

    ``x``: ``[3, ...]`` float32 RGB in ``[0, 255]`` (channels first). Equivalent to RGB -> HSV,
    ``S = min(S * saturation, 1)``, ``H = (H + hue_degrees) mod 360``, HSV -> RGB (V unchanged), computed without
    building the HSV image: with ``V = max``, chroma ``C = V - min``, the new chroma is ``min(C * saturation, V)``.
    Returns ``x``.
    """
    r, g, b = x[0], x[1], x[2]
    v = np.maximum(np.maximum(r, g), b)
    c = v - np.minimum(np.minimum(r, g), b)
    c_new = np.minimum(c * np.float32(saturation), v)
    if hue_degrees == 0.0:
        # Saturation only: every channel moves towards / away from V by the same factor c_new / c.
        k = np.divide(c_new, c, out=np.zeros_like(c), where=c > 0)
        x -= v
        x *= k
        x += v
        return x
    inv_c = np.divide(np.float32(1.0), c, out=np.zeros_like(c), where=c > 0)
    # Hue in sixths of a turn: [0, 6) for max = R (negative part wraps below), [1, 3] for G, [3, 5] for B.
    h = np.where(v == r, (g - b) * inv_c, np.where(v == g, (b - r) * inv_c + np.float32(2.0),
                                                    (r - g) * inv_c + np.float32(4.0)))
    # The shift taken in [-6, 0) (same angle mod 360) keeps H in [-7, 5), so |H + n - 2| < 8 below.
    h += np.float32((hue_degrees / 60.0) % 6.0 - 6.0)
    # HSV -> RGB: channel = V - C * clip(2 - d, 0, 1), d = circular distance (period 6) between H + n and 2, with
    # n = 5 (R), 3 (G), 1 (B); for |H + n - 2| <= 9 that distance is min(|H + n - 2|, ||H + n - 2| - 6|).
    for ch, n in ((0, 3.0), (1, 1.0), (2, -1.0)):
        d = h + np.float32(n)
        np.abs(d, out=d)
        e = d - np.float32(6.0)
        np.abs(e, out=e)
        np.minimum(d, e, out=d)
        np.subtract(np.float32(2.0), d, out=d)
        np.clip(d, 0.0, 1.0, out=d)
        d *= c_new
        np.subtract(v, d, out=x[ch])
    return x


@dataclass(frozen=True)
class PhotometricParams:
    """One draw of :class:`PhotometricDistort`; ``None`` means the step is skipped.

    ``brightness`` is added, ``contrast`` multiplies, ``saturation`` scales S, ``hue`` is in degrees and
    ``channel_perm`` reorders RGB. ``contrast_first`` is Caffe's order A (contrast before the HSV steps).
    """

    contrast_first: bool
    brightness: float | None
    contrast: float | None
    saturation: float | None
    hue: float | None
    channel_perm: tuple[int, int, int] | None

    @property
    def identity(self) -> bool:
        """True when no step changes the pixels."""
        return all(v is None for v in (self.brightness, self.contrast, self.saturation, self.hue, self.channel_perm))


_PERMS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


class PhotometricDistort:
    """Caffe SSD's ``DistortImage`` (see the module docstring for the recipe and its defaults).

    Draws exactly 11 uniforms per call, so later ops see the same generator state whatever was applied.
    ``__call__`` works on uint8 ``[H, W, 3]`` and rounds back to uint8; :meth:`apply` works on planar float32.
    """

    def __init__(self, brightness_prob: float = 0.5, brightness_delta: float = 32.0,
                 contrast_prob: float = 0.5, contrast_range: tuple[float, float] = (0.5, 1.5),
                 saturation_prob: float = 0.5, saturation_range: tuple[float, float] = (0.5, 1.5),
                 hue_prob: float = 0.5, hue_delta: float = 18.0, channel_swap_prob: float = 0.0,
                 order_prob: float = 0.5) -> None:
        if contrast_range[0] < 0 or saturation_range[0] < 0:
            raise ValueError("contrast and saturation factors must be >= 0")
        self.brightness_prob = float(brightness_prob)
        self.brightness_delta = float(brightness_delta)
        self.contrast_prob = float(contrast_prob)
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_prob = float(saturation_prob)
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_prob = float(hue_prob)
        self.hue_delta = float(hue_delta)
        self.channel_swap_prob = float(channel_swap_prob)
        self.order_prob = float(order_prob)

    def __repr__(self) -> str:
        return (f"PhotometricDistort(brightness={self.brightness_prob}:+-{self.brightness_delta}, "
                f"contrast={self.contrast_prob}:{self.contrast_range}, saturation={self.saturation_prob}:"
                f"{self.saturation_range}, hue={self.hue_prob}:+-{self.hue_delta}deg, "
                f"channel_swap={self.channel_swap_prob})")

    def sample(self, rng: np.random.Generator) -> PhotometricParams:
        """Draw one set of parameters (11 uniforms)."""
        u = rng.random(11)
        lo, hi = self.contrast_range
        slo, shi = self.saturation_range
        return PhotometricParams(
            contrast_first=bool(u[0] < self.order_prob),
            brightness=float((2 * u[2] - 1) * self.brightness_delta) if u[1] < self.brightness_prob else None,
            contrast=float(lo + u[4] * (hi - lo)) if u[3] < self.contrast_prob else None,
            saturation=float(slo + u[6] * (shi - slo)) if u[5] < self.saturation_prob else None,
            hue=float((2 * u[8] - 1) * self.hue_delta) if u[7] < self.hue_prob else None,
            channel_perm=_PERMS[min(int(u[10] * 6), 5)] if u[9] < self.channel_swap_prob else None,
        )

    @staticmethod
    def apply(x: np.ndarray, p: PhotometricParams) -> np.ndarray:
        """Distort planar float32 RGB pixels ``[3, ...]`` in ``[0, 255]`` (in place where possible); returns them.

        Formula: ``x = clip(x + brightness)``; order A: ``x = clip(x * contrast)``, HSV(saturation, hue);
        order B: HSV(saturation, hue), ``x = clip(x * contrast)``; then the channel permutation.
        """
        if p.brightness is not None:
            x += np.float32(p.brightness)
            np.clip(x, 0.0, 255.0, out=x)

        if p.contrast_first and p.contrast is not None:
            x *= np.float32(p.contrast)
            np.clip(x, 0.0, 255.0, out=x)
        if p.saturation is not None or p.hue is not None:
            adjust_hsv(x, 1.0 if p.saturation is None else p.saturation, 0.0 if p.hue is None else p.hue)
        if not p.contrast_first and p.contrast is not None:
            x *= np.float32(p.contrast)
            np.clip(x, 0.0, 255.0, out=x)
        if p.channel_perm is not None:
            x = x[list(p.channel_perm)]
        return x

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        p = self.sample(rng)
        if p.identity:
            return image, target
        x = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
        x = self.apply(x, p)
        out = np.rint(x, out=x).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(out.transpose(1, 2, 0)), target


# ----------------------------------------------------------------------------------------------- expand


@dataclass(frozen=True)
class ExpandParams:
    """Canvas ``(height, width)`` and where the image's top-left corner lands on it."""

    height: int
    width: int
    top: int
    left: int


class Expand:
    """Zoom out (Caffe ``ExpandImage``): with probability ``prob`` put the image on a canvas ``U(1, max_ratio)``
    times larger filled with ``fill`` (RGB, 0-255; the model's mean pixel), at a random integer offset."""

    def __init__(self, fill: Sequence[float], prob: float = 0.5, max_ratio: float = 4.0) -> None:
        if max_ratio < 1:
            raise ValueError(f"max_ratio must be >= 1, got {max_ratio}")
        self.fill = tuple(float(v) for v in fill)
        if len(self.fill) != 3:
            raise ValueError(f"fill needs 3 values (RGB), got {fill}")
        self.prob = float(prob)
        self.max_ratio = float(max_ratio)

    def __repr__(self) -> str:
        return f"Expand(prob={self.prob}, max_ratio={self.max_ratio}, fill={self.fill})"

    def sample(self, rng: np.random.Generator, height: int, width: int) -> ExpandParams | None:
        """Draw one expansion (4 uniforms) for an image of ``height x width``; ``None`` when not applied."""
        u = rng.random(4)
        if u[0] >= self.prob:
            return None
        ratio = 1.0 + u[1] * (self.max_ratio - 1.0)
        ch, cw = int(height * ratio), int(width * ratio)
        return ExpandParams(ch, cw, int(math.floor(u[2] * (ch - height))), int(math.floor(u[3] * (cw - width))))

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        h, w = image.shape[:2]
        p = self.sample(rng, h, w)
        if p is None:
            return image, target
        canvas = np.empty((p.height, p.width, 3), dtype=np.uint8)
        canvas[:] = np.asarray(np.rint(self.fill), dtype=np.uint8)
        canvas[p.top:p.top + h, p.left:p.left + w] = image
        return canvas, shift_target(target, p.left, p.top)


# ----------------------------------------------------------------------------------------------- crop


@dataclass(frozen=True)
class CropSampler:
    """One Caffe ``BatchSampler``: random crops of side ``scale`` in ``[min_scale, max_scale]`` (fraction of the
    image side), normalized aspect ratio in ``[min_aspect_ratio, max_aspect_ratio]`` clamped to
    ``[scale^2, 1 / scale^2]`` (so the crop fits); up to ``max_trials`` tries, the first crop meeting the
    constraint is kept (``max_sample = 1``). The constraint holds when the Jaccard overlap with at least one box
    is ``>= min_jaccard`` and ``<= max_jaccard`` (each bound optional). Without bounds every crop is kept."""

    min_scale: float = 0.3
    max_scale: float = 1.0
    min_aspect_ratio: float = 0.5
    max_aspect_ratio: float = 2.0
    min_jaccard: float | None = None
    max_jaccard: float | None = None
    max_trials: int = 50

    def __post_init__(self) -> None:
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ValueError(f"need 0 < min_scale <= max_scale <= 1, got {self.min_scale}, {self.max_scale}")
        if not 0 < self.min_aspect_ratio <= self.max_aspect_ratio:
            raise ValueError("need 0 < min_aspect_ratio <= max_aspect_ratio")
        if self.max_trials < 1:
            raise ValueError("max_trials must be >= 1")


#: ``ssd_pascal.py``'s batch samplers after the whole-image one: min Jaccard 0.1 ... 0.9, then max Jaccard 1.0.
CAFFE_SSD_SAMPLERS: tuple[CropSampler, ...] = (
    *(CropSampler(min_jaccard=j) for j in (0.1, 0.3, 0.5, 0.7, 0.9)),
    CropSampler(max_jaccard=1.0),
)


def _iou_rects_boxes(rects: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``[T, N]`` Jaccard overlap of crop rectangles ``[T, 4]`` with boxes ``[N, 4]`` (xyxy).

    Our own rather than ``torchvision.ops.box_iou``: it works on the NumPy arrays the sampler draws (a few
    candidates per image, no tensor round trip) and gives 0, not NaN, where a rectangle and a box both have zero
    area (tests/test_augment.py::test_crop_iou_of_a_degenerate_box_is_zero,
    tests/test_registries.py::test_torchvision_box_iou_differs_on_degenerate_boxes)."""
    ix0 = np.maximum(rects[:, None, 0], boxes[None, :, 0])
    iy0 = np.maximum(rects[:, None, 1], boxes[None, :, 1])
    ix1 = np.minimum(rects[:, None, 2], boxes[None, :, 2])
    iy1 = np.minimum(rects[:, None, 3], boxes[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_r = (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])
    area_b = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area_r[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


class RandomSampleCrop:
    """Caffe SSD's ``batch_sampler`` random crop (see the module docstring).

    ``samplers`` default to :data:`CAFFE_SSD_SAMPLERS`; the whole image is always a candidate too, and one
    candidate is picked uniformly. Draws ``4 * len(samplers) * max(max_trials) + 1`` uniforms per call, all
    samplers' trials at once (the first satisfying trial of each sampler is the one Caffe's loop would keep).
    """

    def __init__(self, samplers: Sequence[CropSampler] = CAFFE_SSD_SAMPLERS) -> None:
        self.samplers = tuple(samplers)
        if not self.samplers:
            raise ValueError("need at least one sampler")
        col = lambda f: np.array([f(sm) for sm in self.samplers], dtype=np.float64)[:, None]  # noqa: E731
        self._scale = (col(lambda sm: sm.min_scale), col(lambda sm: sm.max_scale - sm.min_scale))
        self._ar = (col(lambda sm: sm.min_aspect_ratio), col(lambda sm: sm.max_aspect_ratio - sm.min_aspect_ratio))
        self._min_j = col(lambda sm: -np.inf if sm.min_jaccard is None else sm.min_jaccard)
        self._max_j = col(lambda sm: np.inf if sm.max_jaccard is None else sm.max_jaccard)
        self._bounded = np.array([sm.min_jaccard is not None or sm.max_jaccard is not None for sm in self.samplers])
        self._trials = max(sm.max_trials for sm in self.samplers)
        self._trial_ok = np.arange(self._trials)[None, :] < col(lambda sm: sm.max_trials)

    def __repr__(self) -> str:
        return f"RandomSampleCrop({len(self.samplers)} samplers + whole image)"

    def sample(self, rng: np.random.Generator, height: int, width: int,
               boxes: np.ndarray) -> tuple[int, int, int, int] | None:
        """Pick a crop ``(x0, y0, x1, y1)`` in pixels of a ``height x width`` image with ``boxes`` (xyxy pixels),
        or ``None`` for the whole image."""
        n_s, n_t = len(self.samplers), self._trials
        u = rng.random(4 * n_s * n_t + 1)
        uu = u[:-1].reshape(4, n_s, n_t)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scale = self._scale[0] + uu[0] * self._scale[1]  # [S, T]
        ar = np.clip(self._ar[0] + uu[1] * self._ar[1], scale ** 2, 1.0 / scale ** 2)
        sq = np.sqrt(ar)
        bw, bh = np.minimum(scale * sq, 1.0), np.minimum(scale / sq, 1.0)  # <= 1 already, up to rounding
        x0 = np.floor(uu[2] * (1.0 - bw) * width)
        y0 = np.floor(uu[3] * (1.0 - bh) * height)
        x1 = np.minimum(x0 + np.maximum(np.floor(bw * width), 1.0), width)
        y1 = np.minimum(y0 + np.maximum(np.floor(bh * height), 1.0), height)
        if boxes.shape[0]:
            rects = np.stack([x0, y0, x1, y1], axis=-1).reshape(-1, 4)
            iou = _iou_rects_boxes(rects, boxes).reshape(n_s, n_t, -1)
            ok = ((iou >= self._min_j[..., None]) & (iou <= self._max_j[..., None])).any(axis=-1)
            hit = np.where(self._bounded[:, None], ok, True) & self._trial_ok
        else:  # no box meets any constraint: only unconstrained samplers can produce a crop
            hit = ~self._bounded[:, None] & self._trial_ok
        found = np.flatnonzero(hit.any(axis=1))
        pick = min(int(u[-1] * (found.size + 1)), found.size)
        if pick == 0:
            return None
        si = int(found[pick - 1])
        ti = int(np.argmax(hit[si]))
        return int(x0[si, ti]), int(y0[si, ti]), int(x1[si, ti]), int(y1[si, ti])

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        h, w = image.shape[:2]
        rect = self.sample(rng, h, w, target.boxes)
        if rect is None:
            return image, target
        x0, y0, x1, y1 = rect
        return image[y0:y1, x0:x1], crop_target(target, rect)


# ----------------------------------------------------------------------------------------------- flip / resize


class RandomHorizontalFlip:
    """Mirror left-right with probability ``prob`` (1 uniform per call); boxes ``[x0, x1] -> [W - x1, W - x0]``."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = float(prob)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(prob={self.prob})"

    def sample(self, rng: np.random.Generator) -> bool:
        """Whether to flip (1 uniform)."""
        return bool(rng.random() < self.prob)

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        if not self.sample(rng):
            return image, target
        return image[:, ::-1], hflip_target(target, image.shape[1])


class RandomVerticalFlip:
    """Mirror top-bottom with probability ``prob`` (1 uniform per call); boxes ``[y0, y1] -> [H - y1, H - y0]``.

    Not in the SSD recipes: for overhead imagery, which has no up (``data.aug.vflip``)."""

    def __init__(self, prob: float = 0.5) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"vertical flip probability must be in [0, 1], got {prob}")
        self.prob = float(prob)

    def __repr__(self) -> str:
        return f"RandomVerticalFlip(prob={self.prob})"

    def sample(self, rng: np.random.Generator) -> bool:
        """Whether to flip (1 uniform)."""
        return bool(rng.random() < self.prob)

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        if not self.sample(rng):
            return image, target
        return image[::-1], vflip_target(target, image.shape[0])


class RandomRot90:
    """With probability ``prob``, turn the image ``k`` quarter turns counter-clockwise, ``k`` uniform in
    ``{1, 2, 3}`` (2 uniforms per call); boxes by :func:`rot90_target`. ``prob = 0.75`` makes the four
    orientations equally likely. A ``H x W`` image becomes ``W x H`` for odd ``k``. For overhead imagery
    (``data.aug.rot90``)."""

    def __init__(self, prob: float = 0.75) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"rotation probability must be in [0, 1], got {prob}")
        self.prob = float(prob)

    def __repr__(self) -> str:
        return f"RandomRot90(prob={self.prob})"

    def sample(self, rng: np.random.Generator) -> int:
        """The number of quarter turns, 0 when not applied (2 uniforms)."""
        u = rng.random(2)
        return 1 + min(int(u[1] * 3), 2) if u[0] < self.prob else 0

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        k = self.sample(rng)
        if k == 0:
            return image, target
        h, w = image.shape[:2]
        return np.rot90(image, k, axes=(0, 1)), rot90_target(target, h, w, k)


@dataclass(frozen=True)
class ScaleWindow:
    """One draw of :class:`ScaleJitter`: the window ``(x0, y0, x1, y1)`` in pixels of the input image (it may
    reach outside it; those pixels are the fill) and the zoom factor it was made for."""

    rect: tuple[int, int, int, int]
    scale: float


class ScaleJitter:
    """Zoom by a factor ``s`` drawn log-uniformly from ``scale_range = (lo, hi)`` (3 uniforms per call), keeping
    the output size: the image is viewed through a window of ``round(H / s) x round(W / s)`` pixels (at least 1)
    at a random integer offset, so ``s > 1`` zooms in (a crop; objects grow) and ``s < 1`` zooms out (the image on
    a canvas filled with ``fill``, RGB 0-255; objects shrink). Offsets: ``floor(u (H - h_win))`` on each axis,
    which places a larger window so that it covers the whole image. Boxes as :func:`crop_target` on the window
    (centre inside kept, clipped, shifted). Runs after the recipe's crop (``data.aug.scale_jitter``)."""

    def __init__(self, scale_range: Sequence[float], fill: Sequence[float] = (0.0, 0.0, 0.0)) -> None:
        lo, hi = (float(v) for v in scale_range)
        if not 0.0 < lo <= hi:
            raise ValueError(f"scale jitter range must be 0 < lo <= hi, got {tuple(scale_range)}")
        self.scale_range = (lo, hi)
        self.fill = tuple(float(v) for v in fill)
        if len(self.fill) != 3:
            raise ValueError(f"fill needs 3 values (RGB), got {fill}")

    def __repr__(self) -> str:
        return f"ScaleJitter(scale_range={self.scale_range}, fill={self.fill})"

    def sample(self, rng: np.random.Generator, height: int, width: int) -> ScaleWindow:
        """Draw the window (3 uniforms) for an image of ``height x width``."""
        u = rng.random(3)
        lo, hi = self.scale_range
        s = float(math.exp(math.log(lo) + u[0] * (math.log(hi) - math.log(lo))))
        wh, ww = max(1, round(height / s)), max(1, round(width / s))
        y0 = int(math.floor(u[1] * (height - wh)))
        x0 = int(math.floor(u[2] * (width - ww)))
        return ScaleWindow((x0, y0, x0 + ww, y0 + wh), s)

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        h, w = image.shape[:2]
        win = self.sample(rng, h, w)
        x0, y0, x1, y1 = win.rect
        out = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
        out[:] = np.asarray(np.rint(self.fill), dtype=np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
        return out, crop_target(target, win.rect)


def _as_float_chw(image: np.ndarray | Tensor) -> Tensor:
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an [H, W, 3] image, got shape {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] tensor, got shape {tuple(image.shape)}")
    return image if image.is_floating_point() else image.float()


class Resize:
    """Resize to ``size = (height, width)``: ``[H, W, 3]`` uint8 array (or ``[3, H, W]`` tensor) ->
    ``[3, h, w]`` float32 tensor of RGB pixels on the 0-255 scale (bilinear, no antialias, not rounded: the same
    as :class:`~multibox.data.transforms.EvalTransform`). Boxes are scaled to the new size. No randomness."""

    def __init__(self, size: Sequence[int]) -> None:
        self.size = (int(size[0]), int(size[1]))

    def __repr__(self) -> str:
        return f"Resize({self.size})"

    def __call__(self, image: np.ndarray | Tensor, target: Target,
                 rng: np.random.Generator | None = None) -> tuple[Tensor, Target]:
        x = _as_float_chw(image)
        in_size = (int(x.shape[1]), int(x.shape[2]))
        return resize_pixels(x, self.size), resize_target(target, in_size, self.size)


class Normalize:
    """``spec.normalize``: RGB pixels ``[3, H, W]`` (0-255) -> network input in the spec's channel order."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def __repr__(self) -> str:
        return f"Normalize(mean={self.spec.mean}, std={self.spec.std}, order={self.spec.channel_order})"

    def __call__(self, image: np.ndarray | Tensor, target: Target,
                 rng: np.random.Generator | None = None) -> tuple[Tensor, Target]:
        return self.spec.normalize(_as_float_chw(image)), target


# ----------------------------------------------------------------------------------------------- fused pipeline


def _sample_coords(out_len: int, crop_len: int, offset: int, region_len: int, flip: bool) -> Tensor:
    """``grid_sample`` coordinates (``align_corners=False``) along one axis that reproduce torch's bilinear resize
    (``align_corners=False``, no antialias) of a ``crop_len`` axis to ``out_len``, read from a region of
    ``region_len`` pixels starting ``offset`` pixels into the crop (taps outside the region read 0).

    Torch's resize samples crop coordinate ``(i + 0.5) * crop_len / out_len - 0.5`` and replicates the crop's edge
    pixels; clamping the coordinate to ``[0, crop_len - 1]`` does the same. ``flip`` mirrors the output.
    """
    src = (np.arange(out_len, dtype=np.float64) + 0.5) * (crop_len / out_len) - 0.5
    src = np.clip(src, 0.0, crop_len - 1.0)
    if flip:
        src = src[::-1]
    return torch.from_numpy(((2.0 * (src - offset) + 1.0) / region_len - 1.0).astype(np.float32))


class SSDTrainTransform:
    """The whole SSD training pipeline as one op: ``(uint8 [H, W, 3], Target, rng) -> (float32 [3, h, w], Target)``.

    Same draws and (up to float rounding) same output as :meth:`as_compose`, i.e.
    ``Compose([photometric, expand, crop, scale_jitter, RandomHorizontalFlip(flip_prob),
    RandomVerticalFlip(vflip_prob), RandomRot90(rot90_prob), Resize, Normalize])`` with ``None`` parts (and the
    overhead options at probability 0) left out, but fused (see the module docstring): the colour ops touch only
    the part of the original image that ends up in the crop, and expand/crop/scale/flip/resize are one separable
    bilinear resampling (vertical flips and quarter turns move the stored region's pixels first). Boxes come out
    as xyxy pixels of the ``spec.image_size`` image.
    """

    def __init__(self, spec: Any, photometric: PhotometricDistort | None = None, expand: Expand | None = None,
                 crop: RandomSampleCrop | None = None, flip_prob: float = 0.5, *,
                 scale_jitter: ScaleJitter | None = None, vflip_prob: float = 0.0, rot90_prob: float = 0.0) -> None:
        self.spec = spec
        self.size = (int(spec.image_size[0]), int(spec.image_size[1]))
        self.photometric = photometric
        self.expand = expand
        self.crop = crop
        self.flip = RandomHorizontalFlip(flip_prob)
        # The overhead options: absent (no draw at all) when off, so the recipes stay bit-identical.
        self.scale_jitter = scale_jitter
        self.vflip = RandomVerticalFlip(vflip_prob) if vflip_prob > 0 else None
        self.rot90 = RandomRot90(rot90_prob) if rot90_prob > 0 else None
        if expand is not None and scale_jitter is not None and expand.fill != scale_jitter.fill:
            raise ValueError(f"expand and scale jitter must fill with the same colour, got {expand.fill} and "
                             f"{scale_jitter.fill}")

    def __repr__(self) -> str:
        return f"SSDTrainTransform(fused {self.as_compose()!r})"

    def as_compose(self) -> Compose:
        """The same pipeline as separate (slower) ops, for reference and tests."""
        ops: list[SampleOp] = [op for op in (self.photometric, self.expand, self.crop, self.scale_jitter)
                               if op is not None]
        extra: list[SampleOp] = [op for op in (self.vflip, self.rot90) if op is not None]
        return Compose([*ops, self.flip, *extra, Resize(self.size), Normalize(self.spec)])

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[Tensor, Target]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an [H, W, 3] uint8 image, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        # 1. Draw everything, in the order of the unfused pipeline.
        photo = self.photometric.sample(rng) if self.photometric is not None else None
        exp = self.expand.sample(rng, h, w) if self.expand is not None else None
        if exp is None:
            ch, cw, top, left = h, w, 0, 0
        else:
            ch, cw, top, left = exp.height, exp.width, exp.top, exp.left
            target = shift_target(target, left, top)
        rect = self.crop.sample(rng, ch, cw, target.boxes) if self.crop is not None else None
        if rect is None:
            rect = (0, 0, cw, ch)
        else:
            target = crop_target(target, rect)
        # Pixels come from the image inside ``valid`` (canvas coordinates); the rest of ``rect`` is the fill.
        valid = (max(rect[0], left), max(rect[1], top), min(rect[2], left + w), min(rect[3], top + h))
        if self.scale_jitter is not None:  # the window, drawn on the crop, becomes the crop (canvas coordinates)
            win = self.scale_jitter.sample(rng, rect[3] - rect[1], rect[2] - rect[0]).rect
            target = crop_target(target, win)
            rect = (rect[0] + win[0], rect[1] + win[1], rect[0] + win[2], rect[1] + win[3])
        flip = self.flip.sample(rng)
        vflip = self.vflip.sample(rng) if self.vflip is not None else False
        turns = self.rot90.sample(rng) if self.rot90 is not None else 0
        # 2. Boxes.
        x0, y0, x1, y1 = rect
        crop_h, crop_w = y1 - y0, x1 - x0
        if flip:
            target = hflip_target(target, crop_w)
        if vflip:
            target = vflip_target(target, crop_h)
        out_h, out_w = (crop_w, crop_h) if turns % 2 else (crop_h, crop_w)
        if turns:
            target = rot90_target(target, crop_h, crop_w, turns)
        target = resize_target(target, (out_h, out_w), self.size)
        # 3. Pixels: the part of the original image inside the crop, in canvas coordinates [ry0, ry1) x [rx0, rx1).
        rx0, ry0 = max(x0, valid[0]), max(y0, valid[1])
        rx1, ry1 = min(x1, valid[2]), min(y1, valid[3])
        fill = np.asarray(self.expand.fill if self.expand is not None else
                          self.scale_jitter.fill if self.scale_jitter is not None else (0.0, 0.0, 0.0),
                          dtype=np.float32)
        if rx1 <= rx0 or ry1 <= ry0:  # the crop holds only canvas
            out = np.broadcast_to(fill[:, None, None], (3, *self.size)).copy()
            return self.spec.normalize(torch.from_numpy(out)), target
        region = image[ry0 - top:ry1 - top, rx0 - left:rx1 - left]
        x = np.ascontiguousarray(region.transpose(2, 0, 1), dtype=np.float32)  # planar [3, rh, rw]
        if photo is not None and not photo.identity:
            x = PhotometricDistort.apply(x, photo)
        full = (rx0, ry0, rx1, ry1) == (x0, y0, x1, y1)
        if not full:
            x -= fill[:, None, None]  # canvas pixels are 0 in this offset space (grid_sample's zero padding)
        # The region sits at (off_y, off_x) in the crop_h x crop_w crop; the flip is done by the sampling
        # coordinates, unless vertical flips or rotations are on: then all three move the region's pixels.
        off_y, off_x = ry0 - y0, rx0 - x0
        if vflip or turns:
            x, (off_y, off_x) = _dihedral_region(x, (off_y, off_x), (crop_h, crop_w), flip, vflip, turns)
            flip = False
        t = torch.from_numpy(x)
        if full and not flip and (out_h, out_w) == self.size:
            out = t
        else:
            oh, ow = self.size
            gy = _sample_coords(oh, out_h, off_y, x.shape[1], False)
            gx = _sample_coords(ow, out_w, off_x, x.shape[2], flip)
            grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)[None]
            out = F.grid_sample(t[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        if not full:
            out += torch.from_numpy(fill)[:, None, None]
        return self.spec.normalize(out), target


def _dihedral_region(x: np.ndarray, offset: tuple[int, int], crop_size: tuple[int, int], hflip: bool,
                     vflip: bool, turns: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Mirror (left-right, then top-bottom) and turn ``turns`` quarter turns counter-clockwise a crop of
    ``crop_size = (H, W)`` pixels of which only the region ``x`` (planar ``[3, rh, rw]``) at ``offset = (oy, ox)``
    is stored. Returns the moved region (contiguous) and its offset in the moved crop (``W x H`` for odd turns).

    A quarter turn sends pixel ``(r, c)`` to ``(W - 1 - c, r)``, so the region's rows start at ``W - ox - rw`` and
    its columns at ``oy``."""
    (oy, ox), (ch, cw) = offset, crop_size
    if hflip:
        x, ox = x[:, :, ::-1], cw - ox - x.shape[2]
    if vflip:
        x, oy = x[:, ::-1], ch - oy - x.shape[1]
    for _ in range(turns % 4):
        oy, ox = cw - ox - x.shape[2], oy
        ch, cw = cw, ch
        x = np.rot90(x, 1, axes=(1, 2))
    # A fresh array, not np.ascontiguousarray: numpy counts a view with a negative stride on a length-1 axis
    # (a one-row region turned twice) as contiguous and keeps it, and torch.from_numpy refuses negative strides.
    out = np.empty(x.shape, dtype=x.dtype)
    out[...] = x
    return out, (oy, ox)


# ----------------------------------------------------------------------------------------------- factories


def ssd_train_transform(spec: Any, mean_fill: Sequence[float] | None = None) -> SSDTrainTransform:
    """The SSD (VGG, Caffe ``ssd_pascal.py``) training recipe for a model's ``InputSpec``: photometric distortion,
    expand (p 0.5, up to 4x, canvas filled with ``mean_fill`` RGB, default the spec's mean pixel), the Caffe batch
    sampler crop, flip (p 0.5), bilinear resize to ``spec.image_size`` and ``spec.normalize``.

    Returns an op ``(uint8 [H, W, 3], Target, rng) -> (float32 [3, h, w], Target with xyxy pixel boxes of the
    resized image)``.
    """
    fill = spec_mean_rgb(spec) if mean_fill is None else tuple(float(v) for v in mean_fill)
    return SSDTrainTransform(spec, photometric=PhotometricDistort(), expand=Expand(fill, prob=0.5, max_ratio=4.0),
                             crop=RandomSampleCrop(CAFFE_SSD_SAMPLERS), flip_prob=0.5)


def ssdlite_train_transform(spec: Any) -> SSDTrainTransform:
    """The lighter SSDLite recipe: Caffe batch-sampler crop and flip (p 0.5) only, no expand, no colour distortion.

    This is what the reference SSDLite trainings use (TensorFlow Object Detection API's
    ``ssdlite_mobilenet_v2_coco``: ``ssd_random_crop`` + ``random_horizontal_flip``; torchvision's ``"ssdlite"``
    preset: ``RandomIoUCrop`` + flip): small mobile models under-fit, and zoom-out makes objects smaller still, so
    the heavy VGG recipe hurts them. Output as :func:`ssd_train_transform`.
    """
    return SSDTrainTransform(spec, photometric=None, expand=None, crop=RandomSampleCrop(CAFFE_SSD_SAMPLERS),
                             flip_prob=0.5)


#: The training recipes :func:`train_transform` knows (``data.augment``).
TRAIN_RECIPES: tuple[str, ...] = ("ssd", "ssdlite", "none")


def photometric_of_strength(strength: float) -> PhotometricDistort | None:
    """Caffe's colour distortion with every range scaled by ``strength`` (``None`` for 0): brightness
    ``+-32 s``, contrast and saturation ``1 +- 0.5 s`` (the lower end clipped at 0), hue ``+-18 s`` degrees, each
    with probability 0.5 as in the recipe. ``strength = 1`` is the recipe's :class:`PhotometricDistort`."""
    if not 0.0 <= strength <= 2.0:
        raise ValueError(f"colour jitter strength must be in [0, 2], got {strength}")
    if strength == 0:
        return None
    lo, hi = max(0.0, 1.0 - 0.5 * strength), 1.0 + 0.5 * strength
    return PhotometricDistort(brightness_delta=32.0 * strength, contrast_range=(lo, hi), saturation_range=(lo, hi),
                              hue_delta=18.0 * strength)


def train_transform(spec: Any, recipe: str = "ssd", *, vflip: float = 0.0, rot90: float = 0.0,
                    scale_jitter: Sequence[float] | None = None, color: float | None = None,
                    mean_fill: Sequence[float] | None = None) -> Callable[..., Any]:
    """The training transform of ``recipe`` (``ssd``: :func:`ssd_train_transform`, ``ssdlite``:
    :func:`ssdlite_train_transform`, ``none``: :func:`ssd_eval_transform`) with the options for new sites and
    overhead imagery on top (the ``data.aug.*`` config keys):

    * ``vflip``: probability of a top-bottom mirror (after the recipe's left-right flip);
    * ``rot90``: probability of 1, 2 or 3 quarter turns counter-clockwise (0.75: all four orientations alike);
    * ``scale_jitter``: ``(lo, hi)`` zoom factors, drawn log-uniformly, applied after the recipe's crop
      (:class:`ScaleJitter`; zoom-out fills with ``mean_fill``, default the spec's mean pixel);
    * ``color``: strength of the colour distortion (:func:`photometric_of_strength`: 1 = the SSD recipe's,
      0 = none) replacing the recipe's own; ``None`` keeps the recipe's.

    With every option off the result is exactly the recipe's transform (same draws, same output). Returns an op
    ``(uint8 [H, W, 3], Target, rng) -> (float32 [3, h, w], Target with xyxy pixel boxes of the resized image)``.
    """
    if recipe not in TRAIN_RECIPES:
        raise ValueError(f"unknown augmentation recipe {recipe!r}; expected one of {', '.join(TRAIN_RECIPES)}")
    base: SSDTrainTransform | None
    if recipe == "ssd":
        base = ssd_train_transform(spec, mean_fill)
    elif recipe == "ssdlite":
        base = ssdlite_train_transform(spec)
    else:
        base = None
    if not vflip and not rot90 and scale_jitter is None and color is None:
        return base if base is not None else ssd_eval_transform(spec)
    if base is None:  # "none" plus options: only the options (no left-right flip, no crop)
        base = SSDTrainTransform(spec, flip_prob=0.0)
    fill = spec_mean_rgb(spec) if mean_fill is None else tuple(float(v) for v in mean_fill)
    return SSDTrainTransform(
        spec, photometric=base.photometric if color is None else photometric_of_strength(float(color)),
        expand=base.expand, crop=base.crop, flip_prob=base.flip.prob,
        scale_jitter=None if scale_jitter is None else ScaleJitter(scale_jitter, fill),
        vflip_prob=float(vflip), rot90_prob=float(rot90))


class EvalSampleTransform:
    """Per-sample evaluation transform: :func:`~multibox.data.transforms.preprocess` of one image (the same
    resize and normalization as the :class:`~multibox.detector.Detector`) -> ``[3, h, w]`` network input; boxes
    become xyxy pixels of the resized image. Takes (and ignores) an ``rng`` like the training ops."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.size = (int(spec.image_size[0]), int(spec.image_size[1]))

    def __repr__(self) -> str:
        return f"EvalSampleTransform(size={self.size}, order={self.spec.channel_order})"

    def __call__(self, image: np.ndarray | Tensor, target: Target,
                 rng: np.random.Generator | None = None) -> tuple[Tensor, Target]:
        x, sizes = preprocess([image], self.spec)
        return x[0], resize_target(target, sizes[0], self.size)


def ssd_eval_transform(spec: Any) -> EvalSampleTransform:
    """Per-sample evaluation counterpart of the training transforms (:class:`EvalSampleTransform`): resize to
    ``spec.image_size`` and normalize exactly as :func:`~multibox.data.transforms.preprocess`; boxes become xyxy
    pixels of the resized image. Takes (and ignores) an ``rng`` like the training ops."""
    return EvalSampleTransform(spec)
