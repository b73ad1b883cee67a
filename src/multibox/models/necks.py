"""Necks: modules between the feature maps (backbone + extras) and the SSD head.

:class:`LiteFPN` is a light top-down feature pyramid (Lin et al. 2017, "Feature Pyramid Networks"; the TF Object
Detection API's SSD-FPN models put one in front of SSD heads): every map gets the coarser maps' semantics, which
helps the fine maps that see small objects. Map sizes are kept; every output has ``channels`` channels.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from .backbones.mobilenet import ConvBNReLU6, init_conv_bn

__all__ = ["LiteFPN", "NECKS", "build_neck"]


class LiteFPN(nn.Module):
    """Top-down pyramid over ``K`` maps, finest first.

    ``features[k] [B, in_channels[k], H_k, W_k]`` -> ``[B, channels, H_k, W_k]`` for each ``k``:

    * lateral ``l_k = 1x1 conv(features[k])`` (``channels`` outputs, with bias);
    * top-down ``t_{K-1} = l_{K-1}``, ``t_k = l_k + nearest_upsample(t_{k+1}, size (H_k, W_k))`` (the size is
      given, so odd map sizes of ``ceil`` halving line up);
    * output ``smooth_k(t_k)``: a 3x3 depthwise conv + BN + ReLU6, then a 1x1 conv + BN + ReLU6 (a
      depthwise-separable version of FPN's 3x3 smoothing, cheap enough for CPU).

    Attributes: ``in_channels``, ``out_channels`` (``[channels] * K``). Init: Kaiming-normal (fan_out) convs, zero
    biases, BatchNorm weight 1 / bias 0.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 128) -> None:
        super().__init__()
        if not in_channels:
            raise ValueError("LiteFPN needs at least one input map")
        if int(channels) < 1:
            raise ValueError(f"LiteFPN channels must be >= 1, got {channels}")
        self.in_channels = [int(c) for c in in_channels]
        c = int(channels)
        self.out_channels = [c] * len(self.in_channels)
        self.lateral = nn.ModuleList(nn.Conv2d(ch, c, 1) for ch in self.in_channels)
        self.smooth = nn.ModuleList(
            nn.Sequential(ConvBNReLU6(c, c, 3, groups=c), ConvBNReLU6(c, c, 1)) for _ in self.in_channels
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out) conv weights, zero biases, BatchNorm weight 1 / bias 0."""
        init_conv_bn(self)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """``[B, in_channels[k], H_k, W_k]`` per map -> ``[B, channels, H_k, W_k]`` per map."""
        if len(features) != len(self.lateral):
            raise ValueError(f"LiteFPN was built for {len(self.lateral)} maps, got {len(features)}")
        laterals = [conv(x) for conv, x in zip(self.lateral, features, strict=True)]
        top = laterals[-1]
        merged = [top]
        for lat in reversed(laterals[:-1]):
            top = lat + F.interpolate(top, size=(int(lat.shape[-2]), int(lat.shape[-1])), mode="nearest")
            merged.append(top)
        merged.reverse()
        return [smooth(x) for smooth, x in zip(self.smooth, merged, strict=True)]


#: Neck names a model config may give (``model.kwargs.neck``).
NECKS: tuple[str, ...] = ("fpn",)


def build_neck(name: str | None, in_channels: Sequence[int], channels: int = 128) -> nn.Module | None:
    """The neck called ``name`` (``None`` or ``"none"``: no neck) over maps of ``in_channels``."""
    if name is None or name == "none":
        return None
    if name == "fpn":
        return LiteFPN(in_channels, channels)
    raise ValueError(f"unknown neck {name!r}: expected one of none, {', '.join(NECKS)}")
