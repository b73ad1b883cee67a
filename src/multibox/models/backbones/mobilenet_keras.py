"""MobileNetV1 in the layer layout of Keras applications (``keras.applications.MobileNet``), as the SSD backbone of
the ssd_keras fork's MobileNetV1 SSDs (:mod:`multibox.models.ssd_mobilenet_keras`).

Every submodule is named after its Keras layer, so that a Keras ``.h5`` importer maps weights by name:

* ``conv1``: 3x3 stride-2 conv (``int(32 * alpha)`` channels, no bias), ``conv1_bn``, then ReLU6;
* ``conv_dw_k`` (k = 1..13): 3x3 depthwise conv (no bias), ``conv_dw_k_bn``, ReLU6; ``conv_pw_k``: 1x1 conv
  (``int(c_k * alpha)`` channels, no bias), ``conv_pw_k_bn``, ReLU6.

BatchNorms use Keras' ``epsilon=1e-3`` (PyTorch ``momentum=0.01`` is Keras' ``momentum=0.99``). Stride-2
convolutions pad like Keras' ``padding="same"`` on TensorFlow (the extra pixel at the bottom / right,
:class:`~multibox.models.backbones.mobilenet.Conv2dSame`), so maps are ``ceil(H / stride)``: the taps
``conv_pw_11`` (stride 16) and ``conv_pw_13`` (stride 32) are 19x19 and 10x10 at 300x300.

Weight layouts (Keras -> here): ``Conv2D`` kernel ``[kh, kw, in, out]`` -> ``weight [out, in, kh, kw]``;
``DepthwiseConv2D`` kernel ``[kh, kw, C, 1]`` -> ``weight [C, 1, kh, kw]``; ``BatchNormalization`` ``gamma``,
``beta``, ``moving_mean``, ``moving_variance`` -> ``weight``, ``bias``, ``running_mean``, ``running_var``.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import Backbone
from .mobilenet import Conv2dSame
from .registry import register_backbone

__all__ = ["KerasMobileNetV1Backbone", "KERAS_MOBILENET_V1_LAYERS", "KERAS_BN_EPS", "KERAS_BN_MOMENTUM",
           "keras_conv"]

#: ``(stride, pointwise channels)`` of ``conv_dw_k`` / ``conv_pw_k`` for k = 1..13 (Keras applications' MobileNet).
KERAS_MOBILENET_V1_LAYERS: tuple[tuple[int, int], ...] = (
    (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
    (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024),
)

#: Keras ``BatchNormalization`` defaults: ``epsilon=1e-3``, ``momentum=0.99`` (PyTorch's momentum is 1 - that).
KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01

#: The pointwise layers whose ReLU6 outputs feed SSD.
_TAPS = (11, 13)


def keras_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
               bias: bool = True) -> nn.Conv2d:
    """A conv padding like Keras' ``padding="same"`` (TensorFlow): ``ceil(H / stride)`` outputs, the extra pixel of
    an even total padding at the bottom / right (:class:`Conv2dSame` when ``stride > 1``; symmetric ``k // 2``
    otherwise, which is the same for odd kernels)."""
    if stride > 1:
        return Conv2dSame(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=bias)
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups, bias=bias)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


@register_backbone("mobilenet_v1_keras", "MobileNetV1, Keras applications layout (conv_pw_11, conv_pw_13): ssd_keras")
class KerasMobileNetV1Backbone(Backbone):
    """MobileNetV1 features for SSD, Keras layout: ``images [B, 3, H, W] -> [conv_pw_11 [B, C11, ceil(H/16), ...],
    conv_pw_13 [B, C13, ceil(H/32), ...]]`` (ReLU6 outputs; ``C11 = int(512 alpha)``, ``C13 = int(1024 alpha)``).

    Args:
        alpha: Keras' width multiplier: every layer has ``int(channels * alpha)`` channels.

    Init: Kaiming-normal (fan_out) convs, BatchNorm 1 / 0. No ImageNet loader here: Keras weights come through a
    Keras ``.h5`` importer (the module docstring lists the names it maps).
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.alpha = float(alpha)
        ch = int(32 * self.alpha)
        self.conv1 = keras_conv(3, ch, 3, 2, bias=False)
        self.conv1_bn = _bn(ch)
        self.channels = [ch]
        for k, (stride, out) in enumerate(KERAS_MOBILENET_V1_LAYERS, start=1):
            out = int(out * self.alpha)
            self.add_module(f"conv_dw_{k}", keras_conv(ch, ch, 3, stride, groups=ch, bias=False))
            self.add_module(f"conv_dw_{k}_bn", _bn(ch))
            self.add_module(f"conv_pw_{k}", nn.Conv2d(ch, out, 1, bias=False))
            self.add_module(f"conv_pw_{k}_bn", _bn(out))
            ch = out
            self.channels.append(ch)
        self.act = nn.ReLU6(inplace=True)
        self.out_channels = [self.channels[k] for k in _TAPS]
        self.strides = [16, 32]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}"

    def forward(self, images: Tensor) -> list[Tensor]:
        """``images [B, 3, H, W]`` (normalized) -> ``[conv_pw_11 output (stride 16), conv_pw_13 output (stride
        32)]``."""
        x = self.act(self.conv1_bn(self.conv1(images)))
        outs: list[Tensor] = []
        for k in range(1, len(KERAS_MOBILENET_V1_LAYERS) + 1):
            x = self.act(getattr(self, f"conv_dw_{k}_bn")(getattr(self, f"conv_dw_{k}")(x)))
            x = self.act(getattr(self, f"conv_pw_{k}_bn")(getattr(self, f"conv_pw_{k}")(x)))
            if k in _TAPS:
                outs.append(x)
        return outs
