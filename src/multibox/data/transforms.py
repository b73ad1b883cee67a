"""Evaluation-time transform: resize to the model's input size and normalize as its ``InputSpec`` says."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

__all__ = ["EvalTransform", "as_uint8_chw"]


def as_uint8_chw(image: np.ndarray | Tensor) -> Tensor:
    """``[H, W, 3]`` uint8 array or ``[3, H, W]`` uint8 tensor -> ``[3, H, W]`` uint8 tensor (RGB)."""
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


class EvalTransform:
    """Images of any size -> ``[B, 3, H, W]`` float32 network input, plus the original ``(h, w)`` sizes.

    ``spec`` is a model's ``InputSpec`` (image_size ``(h, w)``, channel order, mean/std on the 0-255 scale).
    Resizing is bilinear on float pixels without antialiasing (``align_corners=False``), exactly as torchvision's
    SSD transform, so the network sees the same input as torchvision's ``ssd300_vgg16`` up to float rounding;
    normalization then runs at the small size. Boxes map back with the returned original sizes.
    """

    def __init__(self, spec: object) -> None:
        self.spec = spec

    def __call__(self, images: Sequence[np.ndarray | Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        h, w = self.spec.image_size
        sizes: list[tuple[int, int]] = []
        batch = []
        for img in images:
            t = as_uint8_chw(img)
            sizes.append((int(t.shape[1]), int(t.shape[2])))
            batch.append(TF.resize(t.float(), [h, w], antialias=False))
        x = torch.stack(batch)
        return self.spec.normalize(x), sizes
