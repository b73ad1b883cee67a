"""SSD7: the small 7-layer SSD of the ssd_keras project, for quick experiments.

Seven conv blocks (Conv + BatchNorm + ELU) of 32, 48, 64, 64, 48, 48, 32 filters (first 5x5, the rest 3x3,
"same" padding), a 2x2 max-pool after each of the first six; predictions from conv4..conv7 (strides 8, 16,
32, 64). Priors: scales 0.08, 0.16, 0.32, 0.64, 0.96 of the shorter side, aspect ratios 1, 2, 1/2 plus the
extra square box ``sqrt(s_k s_{k+1})`` (4 boxes per location), steps = the backbone strides.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..anchors import PriorConfig, config_from_scales
from .backbones.base import Backbone
from .backbones.registry import build_backbone, register_backbone
from .binary import binarize_convs
from .detector import SSD
from .registry import register_model
from .spec import InputSpec

__all__ = ["ConvBNELU", "SSD7Backbone", "ssd7", "ssd7_priors", "SSD7_SCALES", "SSD7_INPUT_SPEC"]

SSD7_SCALES: tuple[float, ...] = (0.08, 0.16, 0.32, 0.64, 0.96)
#: ssd_keras SSD7: ``(x - 127.5) / 127.5``, RGB.
SSD7_INPUT_SPEC = InputSpec(image_size=(300, 300), channel_order="RGB", mean=(127.5,) * 3, std=(127.5,) * 3)

_FILTERS = (32, 48, 64, 64, 48, 48, 32)


class ConvBNELU(nn.Module):
    """``Conv2d ("same" padding, no bias) -> BatchNorm2d -> ELU``; modules ``conv``, ``bn``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(self.bn(self.conv(x)), inplace=True)


@register_backbone("ssd7", "SSD7: seven conv+BN+ELU blocks (ssd_keras), maps at strides 8..64")
class SSD7Backbone(Backbone):
    """``images [B, 3, H, W] -> [conv4, conv5, conv6, conv7]`` with ``out_channels [64, 48, 48, 32]``,
    ``strides [8, 16, 32, 64]`` (sizes ``floor``: 37, 18, 9, 4 at 300x300).

    Conv weights are Kaiming-normal (fan_in), BatchNorm weight 1 / bias 0.
    """

    def __init__(self) -> None:
        super().__init__()
        in_ch = 3
        for i, ch in enumerate(_FILTERS, start=1):
            self.add_module(f"conv{i}", ConvBNELU(in_ch, ch, 5 if i == 1 else 3))
            in_ch = ch
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.out_channels = list(_FILTERS[3:])
        self.strides = [8, 16, 32, 64]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, images: Tensor) -> list[Tensor]:
        """``images [B, 3, H, W]`` (normalized) -> 4 maps."""
        x = self.pool(self.conv1(images))
        x = self.pool(self.conv2(x))
        x = self.pool(self.conv3(x))
        c4 = self.conv4(x)
        c5 = self.conv5(self.pool(c4))
        c6 = self.conv6(self.pool(c5))
        c7 = self.conv7(self.pool(c6))
        return [c4, c5, c6, c7]


def ssd7_priors(image_size: Sequence[int] = (300, 300), steps: Sequence[int] = (8, 16, 32, 64)) -> PriorConfig:
    """SSD7's prior config for ``image_size (h, w)``: 4 boxes per location on 4 maps."""
    return config_from_scales(
        (int(image_size[0]), int(image_size[1])),
        steps=[float(s) for s in steps],
        aspect_ratios=[(2.0,)] * len(steps),
        scales=SSD7_SCALES,
        extra_box=True,
    )


@register_model("ssd7")
def ssd7(
    num_classes: int = 21,
    class_names: Sequence[str] | None = None,
    priors: PriorConfig | None = None,
    image_size: Sequence[int] = (300, 300),
    input_spec: InputSpec | None = None,
    binarize: bool = False,
    activation_scale: bool = False,
) -> SSD:
    """SSD7 at ``image_size`` (ignored when ``priors`` is given; then the priors' size is used).

    ``binarize``: the binarized SSD7 (``model.kwargs.binarize=true``): backbone convolutions ``conv2`` ..
    ``conv7`` become :class:`~multibox.models.binary.BinaryConv2d` (binary weights and activations, XNOR-Net
    scales; ``activation_scale`` adds XNOR-Net's activation scale K); ``conv1`` and the prediction heads stay in
    full precision. Each binary conv reads the ELU output of the block before it (after BatchNorm, so about half
    of its values are negative and ``sign`` keeps information), which is why SSD7 is the family with this
    option: the MobileNet and ResNet backbones feed each conv a ReLU / ReLU6 output, whose sign is constant.
    """
    backbone = build_backbone("ssd7")
    if binarize:
        binarize_convs(backbone, keep_first=True, activation_scale=activation_scale)
    elif activation_scale:
        raise ValueError("activation_scale applies only with binarize=true")
    if priors is None:
        priors = ssd7_priors(image_size, backbone.strides)
    if input_spec is None:
        input_spec = SSD7_INPUT_SPEC.with_image_size(priors.image_size)
    return SSD(backbone, None, priors, num_classes=num_classes, class_names=class_names, input_spec=input_spec)
