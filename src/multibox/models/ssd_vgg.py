"""SSD300 and SSD512 on VGG16 (Liu et al. 2016)."""

from __future__ import annotations

from collections.abc import Sequence

from ..anchors import PriorConfig, get_prior_preset, scale_prior_config
from .assemble import backbone_map_sizes
from .backbones.registry import build_backbone
from .detector import SSD
from .extras import SSD300_EXTRAS, SSD512_EXTRAS, ExtraLayerSpec, Extras, resized_extra_specs
from .registry import register_model
from .spec import VGG_INPUT_SPEC, InputSpec

__all__ = ["ssd_vgg16", "ssd300_vgg16", "ssd512_vgg16"]


def ssd_vgg16(
    extras: Sequence[ExtraLayerSpec],
    priors: PriorConfig,
    num_classes: int = 21,
    class_names: Sequence[str] | None = None,
    input_spec: InputSpec | None = None,
    l2norm_scale: float = 20.0,
    resize_extras: bool = False,
) -> SSD:
    """A VGG16 SSD with the given extra blocks; the input spec defaults to VGG's at ``priors.image_size``.
    ``resize_extras``: the extras' kernels, strides and paddings follow fc7's map side at ``priors.image_size``
    (:func:`~multibox.models.extras.resized_extra_specs`), for input sizes the fixed extras do not fit."""
    backbone = build_backbone("vgg16", l2norm_scale=l2norm_scale)
    if resize_extras:
        extras = resized_extra_specs(extras, max(backbone_map_sizes(backbone, priors.image_size)[-1]))
    if input_spec is None:
        input_spec = VGG_INPUT_SPEC.with_image_size(priors.image_size)
    return SSD(
        backbone,
        Extras(backbone.out_channels[-1], extras),
        priors,
        num_classes=num_classes,
        class_names=class_names,
        input_spec=input_spec,
    )


@register_model("ssd300_vgg16")
def ssd300_vgg16(
    num_classes: int = 21,
    class_names: Sequence[str] | None = None,
    priors: PriorConfig | None = None,
    input_spec: InputSpec | None = None,
    l2norm_scale: float = 20.0,
    image_size: Sequence[int] | None = None,
) -> SSD:
    """SSD300: maps 38, 19, 10, 5, 3, 1; default priors ``"ssd300-voc"`` (8732).

    ``image_size (h, w)`` other than 300x300 (without ``priors``): ``ssd300-voc`` scaled to it
    (:func:`~multibox.anchors.scale_prior_config`) and the extras sized to fc7's map (128x128: maps 16, 8, 4, 2,
    1, 1)."""
    resize = False
    if priors is None:
        priors = get_prior_preset("ssd300-voc")
        if image_size is not None and tuple(int(v) for v in image_size) != (300, 300):
            priors, resize = scale_prior_config(priors, image_size), True
    return ssd_vgg16(SSD300_EXTRAS, priors, num_classes, class_names, input_spec, l2norm_scale, resize)


@register_model("ssd512_vgg16")
def ssd512_vgg16(
    num_classes: int = 21,
    class_names: Sequence[str] | None = None,
    priors: PriorConfig | None = None,
    input_spec: InputSpec | None = None,
    l2norm_scale: float = 20.0,
) -> SSD:
    """SSD512: maps 64, 32, 16, 8, 4, 2, 1; default priors ``"ssd512-voc"`` (24564)."""
    return ssd_vgg16(
        SSD512_EXTRAS, priors or get_prior_preset("ssd512-voc"), num_classes, class_names, input_spec, l2norm_scale
    )
