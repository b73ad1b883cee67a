"""SSD300 / SSD512 on any timm backbone (``ssd300_timm``, ``ssd512_timm``; ``timm_name`` picks the model).

The backbone is :class:`~multibox.models.backbones.timm_backbone.TimmBackbone` (by default the last three timm
feature maps of stride 8 or more); :func:`~multibox.models.assemble.ssd_on_backbone` adds
:class:`~multibox.models.extras.BNExtras` blocks until the prior config's number of maps is reached (SSD300:
38, 19, 10 from the backbone, then 5, 3, 1; 8732 priors with ``ssd300-voc``). The input normalization is the
timm model's own (its pretrained config's mean and std). timm is optional: ``pip install 'multibox[timm]'``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..anchors import PriorConfig, get_prior_preset, scale_prior_config
from .assemble import load_backbone_pretrained, ssd_on_backbone
from .backbones.registry import build_backbone
from .detector import SSD
from .registry import register_model
from .spec import InputSpec

__all__ = ["ssd_timm", "DEFAULT_TIMM_NAME"]

#: The timm model of ``ssd300_timm`` / ``ssd512_timm`` when ``timm_name`` is not given.
DEFAULT_TIMM_NAME = "mobilenetv3_large_100"


def ssd_timm(
    priors: PriorConfig,
    num_classes: int = 21,
    class_names: Sequence[str] | None = None,
    timm_name: str = DEFAULT_TIMM_NAME,
    out_indices: Sequence[int] | None = None,
    input_spec: InputSpec | None = None,
    pretrained_backbone: str | os.PathLike | None = None,
    timm_kwargs: dict[str, Any] | None = None,
) -> SSD:
    """An SSD on timm's ``timm_name`` (``out_indices``: timm feature indices; ``timm_kwargs`` go to
    ``timm.create_model``) with derived extras; ``pretrained_backbone``: a timm / torchvision-layout weights file,
    a folder, or ``imagenet`` (timm's cache)."""
    backbone = build_backbone("timm", model_name=timm_name, out_indices=out_indices, **(timm_kwargs or {}))
    if pretrained_backbone is not None:
        load_backbone_pretrained(backbone, pretrained_backbone, f"timm {timm_name}")
    if input_spec is None:
        input_spec = InputSpec(priors.image_size, "RGB", tuple(255.0 * m for m in backbone.input_mean),
                               tuple(255.0 * s for s in backbone.input_std))
    return ssd_on_backbone(backbone, priors, num_classes, class_names, input_spec)


def _register(side: int) -> None:
    name, preset = f"ssd{side}_timm", f"ssd{side}-voc"

    @register_model(name)
    def builder(num_classes: int = 21, class_names: Sequence[str] | None = None, priors: PriorConfig | None = None,
                timm_name: str = DEFAULT_TIMM_NAME, out_indices: Sequence[int] | None = None,
                input_spec: InputSpec | None = None, pretrained_backbone: str | os.PathLike | None = None,
                timm_kwargs: dict[str, Any] | None = None, image_size: Sequence[int] | None = None) -> SSD:
        if priors is None:
            priors = get_prior_preset(preset)
            if image_size is not None:  # the preset's boxes as the same fractions of another input size
                priors = scale_prior_config(priors, image_size)
        return ssd_timm(priors, num_classes, class_names, timm_name, out_indices, input_spec, pretrained_backbone,
                        timm_kwargs)

    builder.__qualname__ = builder.__name__ = name
    builder.__doc__ = (f"SSD{side} on the timm model ``timm_name`` (default {DEFAULT_TIMM_NAME}); default priors "
                       f"``{preset}`` (scaled to ``image_size`` when given).")


for _side in (300, 512):
    _register(_side)
