"""SSD300 / SSD512 on ResNet v1 (18 .. 152) and v2 (pre-activation), and NVIDIA's SSD300-ResNet50.

* ``ssd300_resnet{18,34,50,101,152}``: maps ``layer2``, ``layer3``, ``layer4`` (38, 19, 10 at 300x300) plus three
  :class:`~multibox.models.extras.BNExtras` blocks (5, 3, 1); priors ``ssd300-voc`` (8732).
* ``ssd512_resnet{18,34,50,101,152}``: the same taps (64, 32, 16 at 512x512) plus four blocks (8, 4, 2, 1); priors
  ``ssd512-voc`` (24564).
* ``ssd300_resnet50_nvidia``: NVIDIA DeepLearningExamples' SSD300 v1.1: ResNet-50 up to ``layer3`` with a
  stride-1 first block (1024 channels at 38x38), then five extra blocks ``1x1 (256, 256, 128, 128, 128) + BN +
  ReLU -> 3x3 (512, 512, 256, 256, 256) + BN + ReLU`` (stride 2, 2, 2, then two unpadded stride-1 convs: 19, 10,
  5, 3, 1); 3x3 heads; priors ``ssd300-coco`` (NVIDIA's default boxes: sizes 21 .. 315, 8732).
* ``ssd300_resnetv2_50`` / ``ssd512_resnetv2_50``: the pre-activation ResNet (``depth`` 50, 101 or 152), maps as v1.
  No ImageNet weights of this layout are available offline.

Inputs use torchvision's ImageNet normalization (:data:`~multibox.models.ssdlite.IMAGENET_INPUT_SPEC`).
``pretrained_backbone`` (v1): a torchvision / timm ResNet state dict file, a folder holding one, or ``imagenet``
(torchvision's and timm's cache folders); see :func:`~multibox.models.assemble.load_backbone_pretrained`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..anchors import PriorConfig, get_prior_preset, scale_prior_config
from .assemble import backbone_map_sizes, load_backbone_pretrained, ssd_on_backbone, ssd_on_registered_backbone
from .backbones.registry import build_backbone
from .detector import SSD
from .extras import ExtraLayerSpec, resized_extra_specs
from .registry import register_model
from .spec import InputSpec
from .ssdlite import IMAGENET_INPUT_SPEC

__all__ = ["ssd_resnet", "ssd300_resnet50_nvidia", "NVIDIA_EXTRAS"]

#: NVIDIA's SSD300-ResNet50 extra blocks after the 38x38 ``layer3`` map: 19, 10, 5, 3, 1.
NVIDIA_EXTRAS: tuple[ExtraLayerSpec, ...] = (
    ExtraLayerSpec(256, 512, 3, 2, 1, "extra1"),
    ExtraLayerSpec(256, 512, 3, 2, 1, "extra2"),
    ExtraLayerSpec(128, 256, 3, 2, 1, "extra3"),
    ExtraLayerSpec(128, 256, 3, 1, 0, "extra4"),
    ExtraLayerSpec(128, 256, 3, 1, 0, "extra5"),
)


def ssd_resnet(
    backbone: str,
    priors: PriorConfig,
    num_classes: int = 21,
    class_names: Sequence[str] | None = None,
    input_spec: InputSpec | None = None,
    pretrained_backbone: str | os.PathLike | None = None,
    **backbone_kwargs: object,
) -> SSD:
    """An SSD on the registered ResNet backbone ``backbone`` with extras derived from ``priors``
    (:func:`~multibox.models.assemble.ssd_on_backbone`) and optional ImageNet weights."""
    return ssd_on_registered_backbone(backbone, priors, num_classes, class_names, input_spec or IMAGENET_INPUT_SPEC,
                                      pretrained_backbone, **backbone_kwargs)


def _register_v1(depth: int, side: int) -> None:
    name, preset = f"ssd{side}_resnet{depth}", f"ssd{side}-voc"

    @register_model(name)
    def builder(num_classes: int = 21, class_names: Sequence[str] | None = None, priors: PriorConfig | None = None,
                input_spec: InputSpec | None = None, pretrained_backbone: str | os.PathLike | None = None) -> SSD:
        return ssd_resnet(f"resnet{depth}", priors or get_prior_preset(preset), num_classes, class_names,
                          input_spec, pretrained_backbone)

    builder.__qualname__ = builder.__name__ = name
    builder.__doc__ = (f"SSD{side} on ResNet-{depth} v1: layer2..4 plus derived extras; default priors "
                       f"``{preset}``.")


for _side in (300, 512):
    for _depth in (18, 34, 50, 101, 152):
        _register_v1(_depth, _side)


def _register_v2(side: int) -> None:
    name, preset = f"ssd{side}_resnetv2_50", f"ssd{side}-voc"

    @register_model(name)
    def builder(num_classes: int = 21, class_names: Sequence[str] | None = None, priors: PriorConfig | None = None,
                input_spec: InputSpec | None = None, depth: int = 50) -> SSD:
        if depth not in (50, 101):
            raise ValueError(f"{name}: depth must be 50 or 101, got {depth}")
        return ssd_resnet(f"resnetv2_{depth}", priors or get_prior_preset(preset), num_classes, class_names,
                          input_spec)

    builder.__qualname__ = builder.__name__ = name
    builder.__doc__ = f"SSD{side} on the pre-activation ResNet (``depth`` 50 / 101); default priors ``{preset}``."


for _side in (300, 512):
    _register_v2(_side)


@register_model("ssd300_resnet50_nvidia")
def ssd300_resnet50_nvidia(
    num_classes: int = 21,
    class_names: Sequence[str] | None = None,
    priors: PriorConfig | None = None,
    input_spec: InputSpec | None = None,
    pretrained_backbone: str | os.PathLike | None = None,
    image_size: Sequence[int] | None = None,
) -> SSD:
    """NVIDIA's SSD300-ResNet50: ``layer3`` at 38x38 (stride-1 first block) plus :data:`NVIDIA_EXTRAS`; maps 38,
    19, 10, 5, 3, 1; default priors ``ssd300-coco`` (8732).

    ``image_size (h, w)`` other than 300x300 (without ``priors``): ``ssd300-coco`` scaled to it
    (:func:`~multibox.anchors.scale_prior_config`) and the extras sized to ``layer3``'s map (128x128: maps 16, 8,
    4, 2, 1, 1)."""
    net = build_backbone("resnet50_nvidia")
    if pretrained_backbone is not None:
        load_backbone_pretrained(net, pretrained_backbone, "resnet50")
    extras: Sequence[ExtraLayerSpec] = NVIDIA_EXTRAS
    if priors is None:
        priors = get_prior_preset("ssd300-coco")
        if image_size is not None and tuple(int(v) for v in image_size) != (300, 300):
            priors = scale_prior_config(priors, image_size)
            extras = resized_extra_specs(NVIDIA_EXTRAS, max(backbone_map_sizes(net, priors.image_size)[-1]))
    return ssd_on_backbone(net, priors, num_classes, class_names, input_spec or IMAGENET_INPUT_SPEC,
                           extra_specs=extras)
