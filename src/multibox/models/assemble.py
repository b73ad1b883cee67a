"""SSDs assembled on any registered backbone: extras derived from the backbone's last map and the prior config.

:func:`ssd_on_backbone` is how the ResNet, pre-activation ResNet and timm SSDs are put together: the backbone
returns ``K`` maps (``out_channels``, ``strides``), the prior config has ``N >= K`` levels, and ``N - K`` extra
blocks (:func:`~multibox.models.extras.sized_extra_specs`, :class:`~multibox.models.extras.BNExtras`) take the
last map down to 1x1 the way SSD300 / SSD512 do. Channels and map sizes are derived, never declared twice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from ..anchors import PriorConfig
from .backbones.base import find_pretrained_file
from .detector import SSD
from .extras import BNExtras, ExtraLayerSpec, sized_extra_specs
from .spec import InputSpec

__all__ = ["backbone_map_sizes", "ssd_on_backbone", "ssd_on_registered_backbone", "load_backbone_pretrained",
           "DEFAULT_EXTRA_CHANNELS"]

#: Output channels of derived extra blocks (the last repeats): SSD300's 512, 256, 256 after a wide backbone map.
DEFAULT_EXTRA_CHANNELS: tuple[int, ...] = (512, 256, 256, 256, 256)


def backbone_map_sizes(backbone: nn.Module, image_size: Sequence[int]) -> list[tuple[int, int]]:
    """``(H, W)`` of each map ``backbone`` returns for an ``image_size (h, w)`` input, computed on the meta device
    (no real compute, whatever device the backbone is on)."""
    meta = {name: torch.empty_like(t, device="meta")
            for name, t in [*backbone.named_parameters(), *backbone.named_buffers()]}
    x = torch.empty(1, 3, int(image_size[0]), int(image_size[1]), device="meta")
    training = [(m, m.training) for m in backbone.modules()]
    backbone.eval()
    try:
        with torch.no_grad():
            maps = functional_call(backbone, meta, (x,))
    except (RuntimeError, ValueError, NotImplementedError) as err:
        raise ValueError(f"{type(backbone).__name__} cannot run on a {image_size[0]}x{image_size[1]} input "
                         f"(too small?): {err}") from err
    finally:
        for m, mode in training:
            m.training = mode
    return [(int(f.shape[-2]), int(f.shape[-1])) for f in maps]


def load_backbone_pretrained(backbone: nn.Module, pretrained: str | os.PathLike, what: str) -> dict[str, list[str]]:
    """Load ImageNet weights into ``backbone`` from ``pretrained``: a file, a folder holding one of the backbone's
    ``imagenet_file_patterns`` (torchvision's / timm's cache names), or ``"imagenet"`` (their cache folders);
    see :func:`~multibox.models.backbones.base.find_pretrained_file`. Errors name the files looked for."""
    path = find_pretrained_file(pretrained, tuple(getattr(backbone, "imagenet_file_patterns", ())), what)
    return backbone.load_pretrained_file(path)


def ssd_on_backbone(
    backbone: nn.Module,
    priors: PriorConfig,
    num_classes: int,
    class_names: Sequence[str] | None,
    input_spec: InputSpec,
    extra_channels: Sequence[int] = DEFAULT_EXTRA_CHANNELS,
    extra_specs: Sequence[ExtraLayerSpec] | None = None,
) -> SSD:
    """An :class:`SSD` with the 3x3-conv head on ``backbone`` plus ``len(priors.levels) - len(out_channels)``
    :class:`~multibox.models.extras.BNExtras` blocks (``extra_specs``, or derived from the last map's side at
    ``priors.image_size`` by :func:`~multibox.models.extras.sized_extra_specs` with ``extra_channels``).

    ``ValueError`` when the backbone already yields more maps than the priors have levels."""
    n_maps = len(backbone.out_channels)
    n_extra = len(priors.levels) - n_maps
    if n_extra < 0:
        raise ValueError(f"the backbone yields {n_maps} maps but the prior config has only {len(priors.levels)} "
                         "levels")
    extras = None
    if n_extra:
        if extra_specs is None:
            h, w = backbone_map_sizes(backbone, priors.image_size)[-1]
            extra_specs = sized_extra_specs(max(h, w), n_extra, extra_channels)
        extras = BNExtras(backbone.out_channels[-1], extra_specs)
    return SSD(backbone, extras, priors, num_classes=num_classes, class_names=class_names,
               input_spec=input_spec.with_image_size(priors.image_size))


def ssd_on_registered_backbone(
    backbone: str,
    priors: PriorConfig,
    num_classes: int,
    class_names: Sequence[str] | None,
    input_spec: InputSpec,
    pretrained_backbone: str | os.PathLike | None = None,
    **backbone_kwargs: object,
) -> SSD:
    """:func:`ssd_on_backbone` on the registered backbone ``backbone`` (built with ``backbone_kwargs``), its
    ImageNet weights loaded first when ``pretrained_backbone`` is given (:func:`load_backbone_pretrained`)."""
    from .backbones.registry import build_backbone

    net = build_backbone(backbone, **backbone_kwargs)
    if pretrained_backbone is not None:
        load_backbone_pretrained(net, pretrained_backbone, backbone)
    return ssd_on_backbone(net, priors, num_classes, class_names, input_spec)
