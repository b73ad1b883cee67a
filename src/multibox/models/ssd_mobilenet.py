"""SSD on MobileNetV1 / MobileNetV2 with plain convolutions, as the TF Object Detection API builds
``ssd_mobilenet_v1`` (and the non-lite ``ssd_mobilenet_v2``).

Network (``ssd300_mobilenetv1``): :class:`~multibox.models.backbones.mobilenet.MobileNetV1Backbone` (maps
``Conv2d_11_pointwise`` at stride 16 and ``Conv2d_13_pointwise`` at stride 32), then :class:`SSDConvExtras`: four
blocks ``1x1 conv (d/2) + BN + ReLU6 -> 3x3 stride-2 conv (d) + BN + ReLU6`` with layer depths ``d`` = 512, 256,
256, 128 times the depth multiplier (at least ``min_depth``; TF names them
``Conv2d_13_pointwise_1_Conv2d_<k>_1x1_<d/2>`` and ``Conv2d_13_pointwise_2_Conv2d_<k>_3x3_s2_<d>``), and the plain
:class:`~multibox.models.heads.SSDHead` (one conv per map for boxes and one for classes; TF's
``ConvolutionalBoxPredictor``, kernel 1 in the zoo config). Six maps: 19, 10, 5, 3, 2, 1 at 300x300. Priors of
TF's ``ssd_anchor_generator`` (:func:`~multibox.models.ssdlite.ssdlite_priors`, 1917 at 300x300); inputs in
[-1, 1] (RGB, mean 127.5, std 127.5). BatchNorms use TF's ``eps=1e-3, momentum=0.03``.

:func:`ssd_mobilenetv2_conv` is the same design on :class:`~multibox.models.backbones.mobilenet.MobileNetV2Backbone`
(the SSDLite backbone with plain-conv extras and head; TF ``layer_19_1_Conv2d_<k>_1x1_<d/2>`` /
``layer_19_2_Conv2d_<k>_3x3_s2_<d>``): the TF importer builds it, it is not a registered preset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..anchors import PriorConfig
from .backbones.mobilenet import ConvBNReLU6
from .backbones.registry import build_backbone
from .detector import SSD
from .heads import SSDHead
from .registry import register_model
from .spec import InputSpec
from .ssdlite import ChainedMaps, assemble_ssd, ssdlite_priors

__all__ = ["SSDConvExtras", "TF_SSD_EXTRA_DEPTHS", "tf_extra_blocks", "ssd300_mobilenetv1", "ssd_mobilenetv2_conv"]

#: Layer depths of the detection API's extra SSD feature maps (each a 1x1 conv of half of it, then a 3x3 s2 conv).
TF_SSD_EXTRA_DEPTHS: tuple[int, ...] = (512, 256, 256, 128)

_TF_BN: dict[str, Any] = {"bn_eps": 1e-3, "bn_momentum": 0.03}


def tf_extra_blocks(depth_multiplier: float = 1.0, min_depth: int = 16,
                    depths: Sequence[int] = TF_SSD_EXTRA_DEPTHS) -> list[tuple[int, int]]:
    """``(1x1 channels, 3x3 channels)`` of each extra block: ``max(int(d / 2 * m), min_depth)``,
    ``max(int(d * m), min_depth)`` (256/512, 128/256, 128/256, 64/128 at multiplier 1)."""
    return [(max(int(d // 2 * depth_multiplier), min_depth), max(int(d * depth_multiplier), min_depth))
            for d in depths]


class SSDConvExtras(ChainedMaps):
    """Extra SSD maps after the backbone's last map, TF detection API style.

    ``x [B, in_channels, H, W] -> [maps]``; block ``i`` = ``ConvBNReLU6 1x1 (blocks[i][0])`` then ``ConvBNReLU6 3x3
    stride 2 (blocks[i][1])``, map ``i`` of ``blocks[i][1]`` channels and size ``ceil(H_{i-1} / 2)``.
    ``tf_same_padding`` pads the stride-2 convs like TF ``"SAME"``.
    """

    def __init__(
        self,
        in_channels: int,
        blocks: Sequence[Sequence[int]] | None = None,
        *,
        tf_same_padding: bool = False,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.03,
    ) -> None:
        super().__init__()
        if blocks is None:
            blocks = tf_extra_blocks()
        if not blocks:
            raise ValueError("SSDConvExtras needs at least one block (pass extras=None to SSD for none)")
        bn: dict[str, Any] = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        self.in_channels = int(in_channels)
        self.block_channels = [(int(mid), int(out)) for mid, out in blocks]
        self.out_channels = [out for _, out in self.block_channels]
        self.blocks = nn.ModuleList()
        ch = self.in_channels
        for mid, out in self.block_channels:
            self.blocks.append(nn.Sequential(
                ConvBNReLU6(ch, mid, 1, **bn),
                ConvBNReLU6(mid, out, 3, 2, tf_same_padding=tf_same_padding, **bn),
            ))
            ch = out
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")


def _assemble(backbone: nn.Module, extras: SSDConvExtras, priors: PriorConfig, num_classes: int,
              class_names: Sequence[str] | None, input_spec: InputSpec | None, head_kernel_size: int) -> SSD:
    return assemble_ssd(backbone, extras, priors, num_classes, class_names, input_spec,
                        lambda channels, per_loc: SSDHead(channels, per_loc, num_classes,
                                                          kernel_size=int(head_kernel_size)))


@register_model("ssd300_mobilenetv1")
def ssd300_mobilenetv1(
    num_classes: int = 21,
    class_names: Sequence[str] | None = None,
    priors: PriorConfig | None = None,
    depth_multiplier: float = 1.0,
    min_depth: int = 16,
    tf_same_padding: bool = False,
    input_spec: InputSpec | None = None,
    head_kernel_size: int = 1,
    backbone_channels: Sequence[int] | None = None,
    extra_blocks: Sequence[Sequence[int]] | None = None,
) -> SSD:
    """SSD300 on MobileNetV1 (TF ``ssd_mobilenet_v1``): maps 19, 10, 5, 3, 2, 1; default priors
    :func:`~multibox.models.ssdlite.ssdlite_priors` at 300x300 (1917); head kernel 1 (TF's zoo config).

    ``backbone_channels`` (14 counts) and ``extra_blocks`` (``(1x1, 3x3)`` channels per block) override the
    channels derived from ``depth_multiplier`` / ``min_depth`` (an importer reads them from the weights).
    """
    backbone = build_backbone("mobilenet_v1", depth_multiplier=depth_multiplier, min_depth=min_depth,
                              tf_same_padding=tf_same_padding, channels=backbone_channels, **_TF_BN)
    if extra_blocks is None:
        extra_blocks = tf_extra_blocks(depth_multiplier, min_depth)
    extras = SSDConvExtras(backbone.out_channels[-1], extra_blocks, tf_same_padding=tf_same_padding, **_TF_BN)
    if priors is None:
        priors = ssdlite_priors((300, 300))
    return _assemble(backbone, extras, priors, num_classes, class_names, input_spec, head_kernel_size)


def ssd_mobilenetv2_conv(
    num_classes: int = 21,
    class_names: Sequence[str] | None = None,
    priors: PriorConfig | None = None,
    width_mult: float = 1.0,
    tf_same_padding: bool = False,
    input_spec: InputSpec | None = None,
    head_kernel_size: int = 3,
    extra_blocks: Sequence[Sequence[int]] | None = None,
    last_channels: int | None = None,
) -> SSD:
    """SSD on MobileNetV2 with plain-conv extras and head (TF ``ssd_mobilenet_v2``): the SSDLite backbone
    (``last_channels`` overrides the width of its final 1x1 conv), :class:`SSDConvExtras` and
    :class:`~multibox.models.heads.SSDHead`; default priors :func:`~multibox.models.ssdlite.ssdlite_priors` at
    300x300."""
    backbone = build_backbone("mobilenet_v2", width_mult=width_mult, tf_same_padding=tf_same_padding,
                              last_channels=last_channels)
    if extra_blocks is None:
        extra_blocks = tf_extra_blocks(1.0, 16)
    extras = SSDConvExtras(backbone.out_channels[-1], extra_blocks, tf_same_padding=tf_same_padding, **_TF_BN)
    if priors is None:
        priors = ssdlite_priors((300, 300))
    return _assemble(backbone, extras, priors, num_classes, class_names, input_spec, head_kernel_size)
