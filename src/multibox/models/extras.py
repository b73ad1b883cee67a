"""SSD's extra feature layers: pairs of ``1x1`` channel reduction and ``kxk`` (usually stride-2) convolutions.

Each block takes the previous map (the first block takes the backbone's last map), applies
``ReLU(conv1x1(mid_channels))`` then ``ReLU(convkxk(out_channels, stride, padding))`` and yields one more
feature map. Input channels derive from the previous block / backbone, so a spec only states what is new.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import xavier_init_

__all__ = ["ExtraLayerSpec", "ExtraBlock", "Extras", "SSD300_EXTRAS", "SSD512_EXTRAS"]


@dataclass(frozen=True)
class ExtraLayerSpec:
    """One extra block: ``1x1 -> mid_channels``, then ``kernel_size`` conv ``-> out_channels``.

    ``name`` names the block's module (default ``conv{8 + index}``, the paper's numbering after VGG's fc7).
    """

    mid_channels: int
    out_channels: int
    kernel_size: int = 3
    stride: int = 2
    padding: int = 1
    name: str | None = None


#: SSD300 (VGG16): 19x19 fc7 -> 10, 5, 3, 1.
SSD300_EXTRAS: tuple[ExtraLayerSpec, ...] = (
    ExtraLayerSpec(256, 512, 3, 2, 1, "conv8"),
    ExtraLayerSpec(128, 256, 3, 2, 1, "conv9"),
    ExtraLayerSpec(128, 256, 3, 1, 0, "conv10"),
    ExtraLayerSpec(128, 256, 3, 1, 0, "conv11"),
)

#: SSD512 (VGG16): 32x32 fc7 -> 16, 8, 4, 2, 1 (the last block is 4x4 stride 1 pad 1).
SSD512_EXTRAS: tuple[ExtraLayerSpec, ...] = (
    ExtraLayerSpec(256, 512, 3, 2, 1, "conv8"),
    ExtraLayerSpec(128, 256, 3, 2, 1, "conv9"),
    ExtraLayerSpec(128, 256, 3, 2, 1, "conv10"),
    ExtraLayerSpec(128, 256, 3, 2, 1, "conv11"),
    ExtraLayerSpec(128, 256, 4, 1, 1, "conv12"),
)


class ExtraBlock(nn.Module):
    """``x [B, in, H, W] -> ReLU(expand(ReLU(reduce(x)))) [B, out, H', W']``."""

    def __init__(self, in_channels: int, spec: ExtraLayerSpec) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, spec.mid_channels, kernel_size=1)
        self.expand = nn.Conv2d(
            spec.mid_channels, spec.out_channels, kernel_size=spec.kernel_size, stride=spec.stride,
            padding=spec.padding,
        )
        self.out_channels = spec.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.expand(F.relu(self.reduce(x), inplace=True)), inplace=True)


class Extras(nn.Module):
    """A chain of :class:`ExtraBlock` built from specs; ``x [B, in_channels, H, W] -> [one map per block]``.

    ``out_channels`` lists the channels of the returned maps. Weights are Xavier-uniform with zero biases
    (Caffe SSD's ``xavier`` filler).
    """

    def __init__(self, in_channels: int, specs: Sequence[ExtraLayerSpec], first_index: int = 8) -> None:
        super().__init__()
        if not specs:
            raise ValueError("Extras needs at least one ExtraLayerSpec (pass extras=None to SSD for none)")
        self.in_channels = int(in_channels)
        self.specs = tuple(specs)
        self.out_channels: list[int] = []
        ch = self.in_channels
        for i, spec in enumerate(self.specs):
            name = spec.name or f"conv{first_index + i}"
            if hasattr(self, name):
                raise ValueError(f"duplicate extra block name {name!r}")
            self.add_module(name, ExtraBlock(ch, spec))
            ch = spec.out_channels
            self.out_channels.append(ch)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, zero biases."""
        xavier_init_(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x [B, in_channels, H, W]`` -> ``[B, out_channels[i], H_i, W_i]`` for each block."""
        outs: list[Tensor] = []
        for block in self.children():
            x = block(x)
            outs.append(x)
        return outs
