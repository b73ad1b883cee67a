"""Evaluation-time preprocessing: resize to the model's input size and normalize as its ``InputSpec`` says.

:func:`preprocess` is the one evaluation preprocessing of multibox: the :class:`~multibox.detector.Detector`
(``multibox detect``, ``multibox eval CHECKPOINT``, the trainer's evaluation), :class:`EvalTransform` and the
per-sample :func:`~multibox.data.augment.ssd_eval_transform` all call it (or its resize, :func:`resize_pixels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["EvalTransform", "as_uint8_chw", "preprocess", "resize_pixels"]


def as_uint8_chw(image: np.ndarray | Tensor) -> Tensor:
    """``[H, W, 3]`` uint8 array or ``[3, H, W]`` tensor -> ``[3, H, W]`` tensor (RGB; arrays are not copied
    unless read-only, tensors are returned as they are)."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an [H, W, 3] RGB array, got shape {image.shape}")
        arr = np.ascontiguousarray(image)
        if not arr.flags.writeable:
            arr = arr.copy()
        return torch.from_numpy(arr).permute(2, 0, 1)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] tensor, got shape {tuple(image.shape)}")
    return image


def resize_pixels(x: Tensor, size: Sequence[int]) -> Tensor:
    """Float pixels ``[..., 3, H, W]`` -> ``[..., 3, h, w]`` for ``size = (h, w)``: bilinear, ``align_corners=
    False``, no antialiasing (torchvision's SSD transform), not rounded; unchanged when the size already fits."""
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (h, w):
        return x
    if x.dim() == 3:
        return F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False, antialias=False)[0]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=False)


def preprocess(images: Sequence[np.ndarray | Tensor], spec: Any,  # noqa: ANN401
               device: str | torch.device = "cpu") -> tuple[Tensor, list[tuple[int, int]]]:
    """RGB images of any size -> ``([B, 3, h, w]`` float32 network input on ``device``, original ``(H, W)`` per
    image``)``.

    ``images``: ``[H, W, 3]`` uint8 arrays or ``[3, H, W]`` tensors of RGB pixels on the 0-255 scale (uint8, or
    float already scaled to 0-255; converting user input such as float images in [0, 1] is
    :func:`multibox.detector.to_rgb_array`'s job). ``spec``: an :class:`~multibox.models.spec.InputSpec`
    (``image_size`` ``(h, w)``, channel order, mean/std on the 0-255 scale). Each image is moved to ``device``,
    resized with :func:`resize_pixels`, and the batch normalized with ``spec.normalize`` at the small size.
    Boxes map back with the returned original sizes.
    """
    if len(images) == 0:
        raise ValueError("preprocess needs at least one image")
    batch, sizes = [], []
    for img in images:
        t = as_uint8_chw(img)
        sizes.append((int(t.shape[-2]), int(t.shape[-1])))
        batch.append(resize_pixels(t.to(device, non_blocking=True).to(torch.float32), spec.image_size))
    return spec.normalize(torch.stack(batch)), sizes


class EvalTransform:
    """Images of any size -> ``[B, 3, H, W]`` float32 network input, plus the original ``(h, w)`` sizes
    (:func:`preprocess` on the CPU).

    ``spec`` is a model's ``InputSpec`` (image_size ``(h, w)``, channel order, mean/std on the 0-255 scale).
    Resizing is bilinear on float pixels without antialiasing (``align_corners=False``), exactly as torchvision's
    SSD transform, so the network sees the same input as torchvision's ``ssd300_vgg16`` up to float rounding;
    normalization then runs at the small size. Boxes map back with the returned original sizes.
    """

    def __init__(self, spec: object) -> None:
        self.spec = spec

    def __call__(self, images: Sequence[np.ndarray | Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        return preprocess(images, self.spec)
