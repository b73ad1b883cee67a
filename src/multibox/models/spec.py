"""The declared input contract of a model: size, channel order, mean and std.

Pre-processing is never done inside ``SSD.forward`` (docs/design.md, "Tensors"); a model declares it here and transforms
apply it with :meth:`InputSpec.normalize`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["InputSpec", "VGG_INPUT_SPEC"]

_CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class InputSpec:
    """What the network expects as ``images [B, 3, H, W]``.

    * ``image_size``: ``(height, width)`` in pixels that the images are resized to (done by transforms);
    * ``channel_order``: ``"RGB"`` or ``"BGR"``, the order of the three input channels;
    * ``mean`` / ``std``: per channel, **in ``channel_order``**, on the 0-255 pixel scale; the network input is
      ``(pixel - mean) / std``.

    The default is the VGG SSD convention: RGB input with Caffe's BGR mean ``(104, 117, 123)`` written in RGB
    order, std 1.
    """

    image_size: tuple[int, int] = (300, 300)
    channel_order: str = "RGB"
    mean: tuple[float, float, float] = (123.0, 117.0, 104.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.image_size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"image_size must be a positive (height, width), got {self.image_size}")
        order = str(self.channel_order).upper()
        if order not in _CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {_CHANNEL_ORDERS}, got {self.channel_order!r}")
        mean = tuple(float(v) for v in self.mean)
        std = tuple(float(v) for v in self.std)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values, got mean={self.mean} std={self.std}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {self.std}")
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "channel_order", order)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def normalize(self, images: Tensor) -> Tensor:
        """Network input from RGB pixels on the 0-255 scale (no resize).

        ``images`` is ``[..., 3, H, W]`` RGB, uint8 or float in [0, 255]. Returns a float tensor of the same
        shape (float32 for integer input, else the input dtype) in ``channel_order``, ``(x - mean) / std``.
        """
        if images.dim() < 3 or images.shape[-3] != 3:
            raise ValueError(f"expected images [..., 3, H, W], got shape {tuple(images.shape)}")
        x = images if images.is_floating_point() else images.to(torch.float32)
        if self.channel_order == "BGR":
            x = x.flip(-3)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    def denormalize(self, inputs: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`: RGB float pixels on the 0-255 scale from network inputs ``[..., 3, H, W]``."""
        mean = torch.tensor(self.mean, dtype=inputs.dtype, device=inputs.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=inputs.dtype, device=inputs.device).view(3, 1, 1)
        x = inputs * std + mean
        return x.flip(-3) if self.channel_order == "BGR" else x

    def with_image_size(self, image_size: Sequence[int]) -> InputSpec:
        """The same spec for another ``(height, width)``."""
        return InputSpec((int(image_size[0]), int(image_size[1])), self.channel_order, self.mean, self.std)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists), for checkpoints and YAML."""
        return {
            "image_size": list(self.image_size),
            "channel_order": self.channel_order,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            image_size=tuple(data["image_size"]),
            channel_order=data.get("channel_order", "RGB"),
            mean=tuple(data.get("mean", (123.0, 117.0, 104.0))),
            std=tuple(data.get("std", (1.0, 1.0, 1.0))),
        )


#: VGG SSD (Caffe weights): RGB, mean (123, 117, 104) = Caffe's BGR mean (104, 117, 123) in RGB order, std 1.
VGG_INPUT_SPEC = InputSpec()
