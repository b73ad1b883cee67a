"""VGG16 backbone of SSD300 / SSD512 (Liu et al. 2016), as in Caffe SSD and torchvision.

Layers ``conv1_1 .. conv5_3`` are VGG16's; ``pool3`` uses ``ceil_mode=True`` (38x38 ``conv4_3`` at 300x300);
``pool5`` is 3x3 stride 1 pad 1; ``fc6`` is a 3x3 conv with dilation 6 (1024 channels) and ``fc7`` a 1x1 conv
(1024): the "reduced fc" of the paper. ``conv4_3`` is L2-normalized (:class:`~multibox.models.layers.L2Norm`,
scale 20) before it is returned.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import L2Norm
from .base import Backbone

__all__ = ["VGG16Backbone", "VGG16_CONV_NAMES", "TORCHVISION_VGG16_FEATURE_INDEX"]

#: The 13 convolutions of VGG16 in order.
VGG16_CONV_NAMES: tuple[str, ...] = (
    "conv1_1", "conv1_2",
    "conv2_1", "conv2_2",
    "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3",
    "conv5_1", "conv5_2", "conv5_3",
)

#: Index of each convolution in torchvision's ``vgg16().features`` (ImageNet VGG16 checkpoints).
TORCHVISION_VGG16_FEATURE_INDEX: dict[str, int] = dict(
    zip(VGG16_CONV_NAMES, (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), strict=True)
)

_CONV_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


class VGG16Backbone(Backbone):
    """VGG16 for SSD: ``images [B, 3, H, W] -> [conv4_3 (L2-normed) [B, 512, H/8, W/8], fc7 [B, 1024, H/16, W/16]]``.

    ``out_channels == [512, 1024]``, ``strides == [8, 16]`` (sizes are ``ceil`` because of ``pool3``).
    Initialization without pretrained weights: Kaiming normal (fan_out, ReLU) weights and zero biases, as
    torchvision's VGG.
    """

    def __init__(self, l2norm_scale: float = 20.0) -> None:
        super().__init__()
        in_ch = 3
        for name, ch in zip(VGG16_CONV_NAMES, _CONV_CHANNELS, strict=True):
            self.add_module(name, nn.Conv2d(in_ch, ch, kernel_size=3, padding=1))
            in_ch = ch
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.pool4 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool5 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.fc6 = nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6)
        self.fc7 = nn.Conv2d(1024, 1024, kernel_size=1)
        self.l2norm = L2Norm(512, init_scale=l2norm_scale)
        self.out_channels = [512, 1024]
        self.strides = [8, 16]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convolutions, zero biases, L2Norm scale back to its initial value."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.l2norm.reset_parameters()

    def _block(self, x: Tensor, names: tuple[str, ...]) -> Tensor:
        for name in names:
            x = F.relu(getattr(self, name)(x), inplace=True)
        return x

    def forward(self, images: Tensor) -> list[Tensor]:
        """``images [B, 3, H, W]`` (normalized) -> ``[conv4_3 normed, fc7]``."""
        x = self.pool1(self._block(images, VGG16_CONV_NAMES[0:2]))
        x = self.pool2(self._block(x, VGG16_CONV_NAMES[2:4]))
        x = self.pool3(self._block(x, VGG16_CONV_NAMES[4:7]))
        conv4_3 = self._block(x, VGG16_CONV_NAMES[7:10])
        x = self.pool4(conv4_3)
        x = self.pool5(self._block(x, VGG16_CONV_NAMES[10:13]))
        x = F.relu(self.fc6(x), inplace=True)
        fc7 = F.relu(self.fc7(x), inplace=True)
        return [self.l2norm(conv4_3), fc7]
