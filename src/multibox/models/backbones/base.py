"""What an SSD backbone is."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Backbone"]


class Backbone(nn.Module):
    """Base of SSD backbones: ``images [B, 3, H, W] -> [feature maps]``.

    Subclasses set ``out_channels`` (channels of each returned map) and ``strides`` (nominal reduction of each
    map w.r.t. the input; with ceil-mode pooling the real size is ``ceil(H / stride)``). Consumers derive
    every channel count from ``out_channels``: nothing declares it a second time.
    """

    out_channels: list[int]
    strides: list[int]

    def forward(self, images: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError
