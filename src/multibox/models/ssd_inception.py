"""SSD300 / SSD512 on Inception v4 and Inception-ResNet v2.

* ``ssd300_inception_v4`` / ``ssd300_inception_resnet_v2``: the backbone's maps at strides 8, 16 and 32 (38, 19,
  10 at 300x300 with the default ``padding="same"``; see :mod:`~multibox.models.backbones.inception`), plus three
  :class:`~multibox.models.extras.BNExtras` blocks derived from the last map (5, 3, 1); priors ``ssd300-voc``
  (8732).
* ``ssd512_inception_v4`` / ``ssd512_inception_resnet_v2``: the same taps (64, 32, 16 at 512x512) plus four
  blocks (8, 4, 2, 1); priors ``ssd512-voc`` (24564).

Inputs are normalized as the ImageNet weights expect (timm's Inception mean and std 0.5: RGB, ``(x - 127.5) /
127.5``). ``pretrained_backbone``: timm's / Cadene's ImageNet state dict file, a folder holding one, or ``imagenet``
(torchvision's and timm's cache folders), see :func:`~multibox.models.assemble.load_backbone_pretrained`;
``padding="valid"`` builds the networks' own unpadded layout (35, 17, 8 at 300x300: fewer priors).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..anchors import PriorConfig, get_prior_preset
from .assemble import ssd_on_registered_backbone
from .detector import SSD
from .registry import register_model
from .spec import InputSpec

__all__ = ["ssd_inception", "INCEPTION_INPUT_SPEC"]

#: timm's Inception normalization (mean = std = 0.5 of 255, RGB), which its ImageNet weights were trained with.
INCEPTION_INPUT_SPEC = InputSpec(image_size=(300, 300), channel_order="RGB", mean=(127.5,) * 3, std=(127.5,) * 3)


def ssd_inception(
    backbone: str,
    priors: PriorConfig,
    num_classes: int = 21,
    class_names: Sequence[str] | None = None,
    input_spec: InputSpec | None = None,
    pretrained_backbone: str | os.PathLike | None = None,
    padding: str = "same",
) -> SSD:
    """An SSD on the registered backbone ``backbone`` (``inception_v4`` or ``inception_resnet_v2``) with extras
    derived from ``priors`` (:func:`~multibox.models.assemble.ssd_on_backbone`) and optional ImageNet weights."""
    return ssd_on_registered_backbone(backbone, priors, num_classes, class_names, input_spec or INCEPTION_INPUT_SPEC,
                                      pretrained_backbone, padding=padding)


def _register(backbone: str, side: int) -> None:
    name, preset = f"ssd{side}_{backbone}", f"ssd{side}-voc"

    @register_model(name)
    def builder(num_classes: int = 21, class_names: Sequence[str] | None = None, priors: PriorConfig | None = None,
                input_spec: InputSpec | None = None, pretrained_backbone: str | os.PathLike | None = None,
                padding: str = "same") -> SSD:
        return ssd_inception(backbone, priors or get_prior_preset(preset), num_classes, class_names, input_spec,
                             pretrained_backbone, padding)

    builder.__qualname__ = builder.__name__ = name
    builder.__doc__ = (f"SSD{side} on {backbone}: maps at strides 8, 16, 32 plus derived extras; default priors "
                       f"``{preset}``.")


for _backbone in ("inception_v4", "inception_resnet_v2"):
    for _side in (300, 512):
        _register(_backbone, _side)
