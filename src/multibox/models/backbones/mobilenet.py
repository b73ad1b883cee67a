"""MobileNetV2 (Sandler et al. 2018) as an SSD / SSDLite backbone, and MobileNetV1 (Howard et al. 2017) as the
backbone of the TF Object Detection API's ``ssd_mobilenet_v1`` (:class:`MobileNetV1Backbone`).

The module tree mirrors torchvision's ``mobilenet_v2().features`` index for index, so an ImageNet state dict
(keys ``features.N...``) loads without renaming:

* ``features.0``: 3x3 stride-2 conv (32 channels) + BN + ReLU6 (``0`` conv, ``1`` BN);
* ``features.1 .. features.17``: inverted residual blocks; block ``i`` has ``conv`` = ``[1x1 expand conv + BN +
  ReLU6] (absent when the expansion factor is 1), 3x3 depthwise conv + BN + ReLU6, 1x1 linear projection conv,
  BN``, and adds its input when stride is 1 and channels are unchanged;
* ``features.18``: 1x1 conv to 1280 channels + BN + ReLU6.

For SSD the backbone returns two maps, as the SSDLite paper and the TF Object Detection API do: the output of
the 1x1 expansion (+ BN + ReLU6) of ``features.14`` (the first stride-2 block of the 160-channel stage; 576
channels at stride 16 for ``width_mult=1``) and the final 1280-channel map at stride 32.

``tf_same_padding=True`` makes every stride-2 convolution pad like TensorFlow's ``"SAME"`` (the extra pixel, if
any, at the bottom / right) instead of PyTorch's symmetric padding; stride-1 convolutions with odd kernels pad
the same either way. Use it for weights trained in TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .base import Backbone, copy_matching_state_dict, load_state_dict_file
from .registry import register_backbone

__all__ = [
    "MobileNetV2Backbone",
    "InvertedResidual",
    "ConvBNReLU6",
    "Conv2dSame",
    "make_divisible",
    "same_padding",
    "load_state_dict_file",
    "MOBILENET_V2_SETTINGS",
    "EXPANSION_FEATURE_INDEX",
    "STRIDE8_FEATURE_INDEX",
    "MobileNetV1Backbone",
    "DepthwiseSeparableConv",
    "MOBILENET_V1_LAYERS",
    "MOBILENET_V1_FEATURE_INDICES",
    "mobilenet_v1_channels",
]

#: ``(expansion t, channels c, repeats n, first stride s)`` of each inverted-residual stage (paper, Table 2).
MOBILENET_V2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

#: Index in ``features`` of the block whose expansion output is the stride-16 SSD map (TF: ``layer_15``).
EXPANSION_FEATURE_INDEX = 14

#: Index in ``features`` of the block whose expansion output is the optional stride-8 map (``stride8=True``): the
#: first, stride-2 block of the 64-channel stage, whose 1x1 expansion still runs at stride 8 (TF: ``layer_8``).
STRIDE8_FEATURE_INDEX = 7


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` (at least ``divisor``), never going more
    than 10% below ``value`` (the rule of the reference MobileNet implementations)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def init_conv_bn(module: nn.Module) -> None:
    """Initialize every ``Conv2d`` of ``module`` with Kaiming-normal (fan_out) weights and zero biases, and every
    ``BatchNorm2d`` with weight 1 and bias 0 (the reference MobileNet initialization)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def same_padding(size: int, kernel_size: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow ``"SAME"`` padding ``(before, after)`` of one spatial dimension of length ``size``.

    Output length is ``ceil(size / stride)``; the total padding is split with the extra pixel after.
    """
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` padding like TensorFlow's ``"SAME"``: ``x [B, C, H, W] -> [B, C', ceil(H/s), ceil(W/s)]``.

    The padding is computed from the input size at every call (zeros, extra pixel at the bottom / right); the
    module's own ``padding`` is 0. Parameter names are those of ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, dilation=dilation,
                         groups=groups, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = same_padding(int(x.shape[-2]), self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_padding(int(x.shape[-1]), self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return self._conv_forward(x, self.weight, self.bias)


class ConvBNReLU6(nn.Sequential):
    """``conv (no bias) -> BatchNorm2d -> ReLU6`` as children ``0``, ``1``, ``2`` (torchvision's key layout).

    ``x [B, in_channels, H, W] -> [B, out_channels, H', W']``. The conv pads ``(kernel_size - 1) // 2`` on
    every side, or TF ``"SAME"`` (:class:`Conv2dSame`) when ``tf_same_padding`` and ``stride > 1``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        *,
        tf_same_padding: bool = False,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        conv: nn.Conv2d
        if tf_same_padding and stride > 1:
            conv = Conv2dSame(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=False)
        else:
            conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                             padding=(kernel_size - 1) // 2, groups=groups, bias=False)
        super().__init__(conv, nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum), nn.ReLU6(inplace=True))
        self.out_channels = int(out_channels)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: ``x [B, in, H, W] -> [B, out, H/stride, W/stride]``.

    ``conv`` = ``[ConvBNReLU6 1x1 expand] + ConvBNReLU6 3x3 depthwise (stride) + Conv2d 1x1 + BatchNorm2d``;
    the input is added when ``stride == 1`` and ``in == out`` (``use_residual``). ``expanded_channels`` is the
    width of the depthwise stage, ``round(in * expand_ratio)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: int,
        *,
        tf_same_padding: bool = False,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, 1, **bn))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden, tf_same_padding=tf_same_padding, **bn),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
        ]
        self.conv = nn.Sequential(*layers)
        self.has_expansion = expand_ratio != 1
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expanded_channels = hidden
        self.out_channels = int(out_channels)
        self.stride = int(stride)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return x + y if self.use_residual else y

    def forward_with_expansion(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x -> (expansion [B, expanded_channels, H, W], output [B, out, H', W'])``: the block's output and
        the ReLU6 output of its 1x1 expansion (the map TF's detection API calls ``expansion_output``)."""
        if not self.has_expansion:
            raise ValueError("this block has no 1x1 expansion (expand_ratio 1)")
        expansion = self.conv[0](x)
        y = expansion
        for layer in self.conv[1:]:
            y = layer(y)
        return expansion, (x + y if self.use_residual else y)


@register_backbone("mobilenet_v2", "MobileNetV2 (expansion of block 14 and the last 1x1 conv): SSDLite, TF OD API")
class MobileNetV2Backbone(Backbone):
    """MobileNetV2 features for SSD: ``images [B, 3, H, W] -> [c4 [B, 576, H/16, W/16], c5 [B, 1280, H/32, W/32]]``.

    Sizes are ``ceil(H / stride)`` (five stride-2 convs, each ``ceil``). ``c4`` is the expansion output of
    ``features.14`` (``round(6 * make_divisible(96 * width_mult))`` channels), ``c5`` the output of
    ``features.18`` (``make_divisible(1280 * max(1, width_mult))`` channels): see ``out_channels``, ``strides``.

    Args:
        width_mult: channel multiplier of every layer (channels rounded to multiples of 8).
        tf_same_padding: pad stride-2 convolutions like TensorFlow ``"SAME"`` (see the module docstring).
        bn_eps, bn_momentum: of every BatchNorm (torchvision: 1e-5, 0.1; TF detection API SSD configs: 1e-3,
            0.03).
        last_channels: width of ``features.18`` instead of ``make_divisible(1280 * max(1, width_mult))`` (TF
            graphs built with ``depth_multiplier < 1`` scale it too).
        stride8: also return, first, the stride-8 expansion output of ``features.7`` (``round(6 *
            make_divisible(32 * width_mult))`` channels, 192 at ``width_mult=1``), for small objects: maps
            ``[c3 (stride 8), c4, c5]``. The parameters (and so the ImageNet weights) are the same.

    Without pretrained weights: Kaiming-normal (fan_out) convolutions, BatchNorm weight 1 / bias 0 (as
    torchvision). ImageNet weights: :meth:`load_pretrained` / :meth:`load_pretrained_file`.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        tf_same_padding: bool = False,
        *,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        last_channels: int | None = None,
        stride8: bool = False,
    ) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        self.width_mult = float(width_mult)
        self.tf_same_padding = bool(tf_same_padding)
        opts: dict[str, Any] = {"tf_same_padding": self.tf_same_padding, "bn_eps": bn_eps, "bn_momentum": bn_momentum}
        in_ch = make_divisible(32 * width_mult)
        last_ch = make_divisible(1280 * max(1.0, width_mult)) if last_channels is None else int(last_channels)
        layers: list[nn.Module] = [ConvBNReLU6(3, in_ch, 3, 2, **opts)]
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            out_ch = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t, **opts))
                in_ch = out_ch
        layers.append(ConvBNReLU6(in_ch, last_ch, 1, **opts))
        self.features = nn.Sequential(*layers)
        split = self.features[EXPANSION_FEATURE_INDEX]
        assert isinstance(split, InvertedResidual) and split.has_expansion and not split.use_residual
        self.out_channels = [split.expanded_channels, last_ch]
        self.strides = [16, 32]
        self.stride8 = bool(stride8)
        self.taps = [EXPANSION_FEATURE_INDEX]
        if self.stride8:
            low = self.features[STRIDE8_FEATURE_INDEX]
            assert isinstance(low, InvertedResidual) and low.has_expansion and low.stride == 2
            self.out_channels.insert(0, low.expanded_channels)
            self.strides.insert(0, 8)
            self.taps.insert(0, STRIDE8_FEATURE_INDEX)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out) conv weights, zero conv biases, BatchNorm weight 1 and bias 0."""
        init_conv_bn(self)

    def forward(self, images: Tensor) -> list[Tensor]:
        """``images [B, 3, H, W]`` (normalized) -> ``[c4 (stride 16), c5 (stride 32)]``, with ``c3 (stride 8)``
        first when ``stride8``."""
        x = images
        maps: list[Tensor] = []
        for i, layer in enumerate(self.features):
            if i in self.taps:
                tap, x = layer.forward_with_expansion(x)
                maps.append(tap)
            else:
                x = layer(x)
        maps.append(x)
        return maps

    # ------------------------------------------------------------------------------------ ImageNet weights
    def load_pretrained(self, state_dict: Mapping[str, Tensor]) -> dict[str, list[str]]:
        """Load a torchvision ``mobilenet_v2`` ImageNet state dict (keys ``features.N...``, optionally prefixed
        ``module.``) into this backbone; ``classifier.*`` and any other key this backbone lacks are skipped.

        Returns ``{"loaded": [keys], "skipped": [keys]}`` (keys as given). Raises ``ValueError`` naming the keys
        when a shape differs (e.g. another ``width_mult``), a value is not a tensor, or a backbone parameter or
        buffer is absent from ``state_dict`` (``num_batches_tracked`` may be absent). Nothing is loaded then.
        """
        return copy_matching_state_dict(self, state_dict, f"MobileNetV2Backbone(width_mult={self.width_mult:g})",
                                        "expected a torchvision mobilenet_v2 state dict (keys 'features.N...')")

    def load_pretrained_file(self, path: str | os.PathLike) -> dict[str, list[str]]:
        """:meth:`load_pretrained` from a ``.pth`` file (read with ``torch.load(weights_only=True)``); errors
        name the file."""
        state_dict = load_state_dict_file(path)
        try:
            return self.load_pretrained(state_dict)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err


# ------------------------------------------------------------------------------------------------ MobileNetV1
#: MobileNetV1 layers ``(stride, output channels)`` at depth multiplier 1: ``Conv2d_0`` is a full 3x3 conv, the
#: others (``Conv2d_1`` .. ``Conv2d_13``) 3x3 depthwise + 1x1 pointwise convolutions (paper, Table 1).
MOBILENET_V1_LAYERS: tuple[tuple[int, int], ...] = (
    (2, 32), (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
    (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024),
)

#: Layers whose outputs feed SSD (TF: ``Conv2d_11_pointwise`` at stride 16, ``Conv2d_13_pointwise`` at stride 32).
MOBILENET_V1_FEATURE_INDICES: tuple[int, int] = (11, 13)


def mobilenet_v1_channels(depth_multiplier: float = 1.0, min_depth: int = 8) -> list[int]:
    """Output channels of the 14 MobileNetV1 layers: ``max(int(c * depth_multiplier), min_depth)`` (the rule of
    TF-slim's ``mobilenet_v1_base``; the detection API's SSD feature extractor passes ``min_depth=16``)."""
    if not depth_multiplier > 0:
        raise ValueError(f"depth_multiplier must be positive, got {depth_multiplier}")
    return [max(int(c * depth_multiplier), int(min_depth)) for _, c in MOBILENET_V1_LAYERS]


class DepthwiseSeparableConv(nn.Sequential):
    """MobileNetV1 block ``x [B, in, H, W] -> [B, out, ceil(H/stride), ceil(W/stride)]``: children ``depthwise``
    (3x3 depthwise :class:`ConvBNReLU6`, ``stride``) and ``pointwise`` (1x1 :class:`ConvBNReLU6`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        tf_same_padding: bool = False,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        super().__init__()
        self.add_module("depthwise", ConvBNReLU6(in_channels, in_channels, 3, stride, groups=in_channels,
                                                 tf_same_padding=tf_same_padding, **bn))
        self.add_module("pointwise", ConvBNReLU6(in_channels, out_channels, 1, **bn))
        self.out_channels = int(out_channels)
        self.stride = int(stride)


@register_backbone("mobilenet_v1", "MobileNetV1 (Conv2d_11 and Conv2d_13 pointwise): TF OD API ssd_mobilenet_v1")
class MobileNetV1Backbone(Backbone):
    """MobileNetV1 features for SSD: ``images [B, 3, H, W] -> [c4 [B, C11, H/16, W/16], c5 [B, C13, H/32, W/32]]``.

    ``features.0`` is ``Conv2d_0`` (3x3 stride-2 :class:`ConvBNReLU6`), ``features.k`` (k = 1..13) the
    :class:`DepthwiseSeparableConv` ``Conv2d_k_depthwise`` + ``Conv2d_k_pointwise``. The maps returned are the
    outputs of ``features.11`` and ``features.13`` (TF ``Conv2d_11_pointwise``, ``Conv2d_13_pointwise``); sizes are
    ``ceil(H / stride)``.

    Args:
        depth_multiplier, min_depth: channels ``max(int(c * depth_multiplier), min_depth)``
            (:func:`mobilenet_v1_channels`), unless ``channels`` gives all 14 explicitly (as an importer reads them
            from weight shapes).
        tf_same_padding: pad stride-2 convolutions like TensorFlow ``"SAME"``.
        bn_eps, bn_momentum: of every BatchNorm (TF detection API configs: 1e-3, 0.03).

    No ImageNet loader: weights come from a converted detector (:mod:`multibox.interop.tensorflow`) or training.
    """

    def __init__(
        self,
        depth_multiplier: float = 1.0,
        min_depth: int = 8,
        tf_same_padding: bool = False,
        *,
        channels: Sequence[int] | None = None,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if channels is None:
            channels = mobilenet_v1_channels(depth_multiplier, min_depth)
        channels = [int(c) for c in channels]
        if len(channels) != len(MOBILENET_V1_LAYERS) or min(channels) < 1:
            raise ValueError(f"channels must be {len(MOBILENET_V1_LAYERS)} positive counts, got {channels}")
        self.depth_multiplier = float(depth_multiplier)
        self.tf_same_padding = bool(tf_same_padding)
        self.channels = channels
        opts: dict[str, Any] = {"tf_same_padding": self.tf_same_padding, "bn_eps": bn_eps, "bn_momentum": bn_momentum}
        layers: list[nn.Module] = [ConvBNReLU6(3, channels[0], 3, MOBILENET_V1_LAYERS[0][0], **opts)]
        for k in range(1, len(MOBILENET_V1_LAYERS)):
            layers.append(DepthwiseSeparableConv(channels[k - 1], channels[k], MOBILENET_V1_LAYERS[k][0], **opts))
        self.features = nn.Sequential(*layers)
        self.out_channels = [channels[i] for i in MOBILENET_V1_FEATURE_INDICES]
        self.strides = [16, 32]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out) conv weights, zero conv biases, BatchNorm weight 1 and bias 0."""
        init_conv_bn(self)

    def forward(self, images: Tensor) -> list[Tensor]:
        """``images [B, 3, H, W]`` (normalized) -> ``[features.11 output (stride 16), features.13 output
        (stride 32)]``."""
        outs: list[Tensor] = []
        x = images
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in MOBILENET_V1_FEATURE_INDICES:
                outs.append(x)
        return outs
