"""SSD's extra feature layers: pairs of ``1x1`` channel reduction and ``kxk`` (usually stride-2) convolutions.

Each block takes the previous map (the first block takes the backbone's last map), applies
``ReLU(conv1x1(mid_channels))`` then ``ReLU(convkxk(out_channels, stride, padding))`` and yields one more
feature map. Input channels derive from the previous block / backbone, so a spec only states what is new.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import xavier_init_

__all__ = ["ExtraLayerSpec", "ExtraBlock", "Extras", "BNExtras", "sized_extra_specs", "resized_extra_specs",
           "SSD300_EXTRAS", "SSD512_EXTRAS"]


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


def sized_extra_specs(in_size: int, count: int, channels: Sequence[int] = (512, 512, 256, 256, 256, 256)
                      ) -> list[ExtraLayerSpec]:
    """Specs of ``count`` extra blocks after a map of side ``in_size``, each halving it down to 1x1.

    Block ``i`` outputs ``channels[i]`` (the last entry repeats), with a ``1x1`` reduction to half of it. The
    spatial rule keeps SSD's map sizes: a side above 3 is halved by a 3x3 stride-2 pad-1 conv (``ceil(s / 2)``),
    a side of 3 or 2 becomes 1 by a ``3x3`` / ``2x2`` unpadded conv, a side of 1 stays 1 (1x1 conv). So a 10x10
    ResNet map gives 5, 3, 1 (SSD300: 8732 priors with ``ssd300-voc``), a 16x16 one 8, 4, 2, 1 (SSD512).
    """
    if count < 1 or in_size < 1:
        raise ValueError(f"need count >= 1 and a positive map side, got count={count}, in_size={in_size}")
    if not channels:
        raise ValueError("channels must list at least one output channel count")
    specs: list[ExtraLayerSpec] = []
    size = int(in_size)
    for i in range(count):
        out = int(channels[min(i, len(channels) - 1)])
        if size > 3:
            k, s, p, size = 3, 2, 1, (size + 1) // 2
        elif size > 1:
            k, s, p, size = size, 1, 0, 1
        else:
            k, s, p = 1, 1, 0
        specs.append(ExtraLayerSpec(max(out // 2, 1), out, k, s, p, f"extra{i + 1}"))
    return specs


def resized_extra_specs(specs: Sequence[ExtraLayerSpec], in_size: int) -> list[ExtraLayerSpec]:
    """``specs`` (their channels and names kept) with the kernel, stride and padding of
    :func:`sized_extra_specs` for a first input map of side ``in_size``: a model's own extras at another input
    size, where its unpadded last convolutions would shrink a map below 1x1 (SSD300's VGG extras at 128x128:
    fc7 8x8 -> 4, 2, 1, 1 instead of an error)."""
    sized = sized_extra_specs(in_size, len(specs))
    return [replace(spec, kernel_size=s.kernel_size, stride=s.stride, padding=s.padding)
            for spec, s in zip(specs, sized, strict=True)]


class BNExtras(nn.Module):
    """Extra blocks with BatchNorm (NVIDIA's SSD300-ResNet50 style): block ``i`` = ``1x1 conv (mid) + BN + ReLU``
    then ``kxk conv (out, stride, padding) + BN + ReLU``, convs without bias; ``x [B, in_channels, H, W] -> [one
    map per block]``. Built from :class:`ExtraLayerSpec`; Kaiming-normal (fan_out) init, BN weight 1 / bias 0."""

    def __init__(self, in_channels: int, specs: Sequence[ExtraLayerSpec]) -> None:
        super().__init__()
        if not specs:
            raise ValueError("BNExtras needs at least one ExtraLayerSpec (pass extras=None to SSD for none)")
        self.in_channels = int(in_channels)
        self.specs = tuple(specs)
        self.out_channels: list[int] = []
        self.blocks = nn.ModuleList()
        ch = self.in_channels
        for spec in self.specs:
            self.blocks.append(nn.Sequential(
                nn.Conv2d(ch, spec.mid_channels, 1, bias=False), nn.BatchNorm2d(spec.mid_channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(spec.mid_channels, spec.out_channels, spec.kernel_size, stride=spec.stride,
                          padding=spec.padding, bias=False),
                nn.BatchNorm2d(spec.out_channels), nn.ReLU(inplace=True),
            ))
            ch = spec.out_channels
            self.out_channels.append(ch)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x [B, in_channels, H, W]`` -> ``[B, out_channels[i], H_i, W_i]`` for each block."""
        outs: list[Tensor] = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs
