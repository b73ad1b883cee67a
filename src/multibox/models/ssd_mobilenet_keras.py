"""The MobileNetV1 SSD300 variants of the ssd_keras fork: Keras applications' MobileNetV1 with 3x3 or 1x1 heads.

Network (``ssd300_mobilenetv1_keras_3x3`` / ``ssd300_mobilenetv1_keras_1x1``):
:class:`~multibox.models.backbones.mobilenet_keras.KerasMobileNetV1Backbone` (maps ``conv_pw_11``, 19x19, and
``conv_pw_13``, 10x10, at 300x300), then :class:`KerasSSDExtras`: four blocks ``conv{14..17}_1`` (1x1 conv, with
bias) + ``bn{14..17}_1`` + ReLU, ``conv{14..17}_2`` (3x3 stride-2 conv, Keras ``"same"`` padding) +
``bn{14..17}_2`` + ReLU, of 256/512, 128/256, 128/256 and 64/128 channels (5, 3, 2, 1 at 300x300); then the
:class:`~multibox.models.heads.SSDHead` with 3x3 or 1x1 convolutions. Six maps, 2268 priors at 300x300
(:func:`keras_mobilenet_priors`).

Names for a Keras ``.h5`` importer: the backbone's modules are the Keras layer names (``conv1``, ``conv1_bn``,
``conv_dw_k``, ``conv_dw_k_bn``, ``conv_pw_k``, ``conv_pw_k_bn``); the extras' are ``extras.conv14_1``,
``extras.bn14_1``, ... ``extras.conv17_2``, ``extras.bn17_2``; the predictors ``conv11_mbox_conf``,
``conv13_mbox_conf``, ``conv14_2_mbox_conf`` .. ``conv17_2_mbox_conf`` are ``head.classification.0 .. 5`` and the
``*_mbox_loc`` ones ``head.regression.0 .. 5`` (channel ``a * K + k`` = box ``a``, column ``k``, as Keras'
``Reshape((-1, K))`` of an NHWC map orders them). docs/models.md has the table.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..anchors import PriorConfig, config_from_scales
from .backbones.mobilenet_keras import KERAS_BN_EPS, KERAS_BN_MOMENTUM, keras_conv
from .backbones.registry import build_backbone
from .detector import SSD
from .heads import SSDHead
from .registry import register_model
from .spec import InputSpec
from .ssdlite import assemble_ssd

__all__ = ["KerasSSDExtras", "KERAS_EXTRA_BLOCKS", "KERAS_SSD300_SCALES", "KERAS_MOBILENET_INPUT_SPEC",
           "keras_mobilenet_priors", "ssd300_mobilenetv1_keras"]

#: ``(1x1 channels, 3x3 stride-2 channels)`` of the extra blocks ``conv14`` .. ``conv17``.
KERAS_EXTRA_BLOCKS: tuple[tuple[int, int], ...] = ((256, 512), (128, 256), (128, 256), (64, 128))

#: ssd_keras' SSD300 (Pascal VOC) anchor scales: one per map, plus the last map's second square box.
KERAS_SSD300_SCALES: tuple[float, ...] = (0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05)

#: Keras applications' MobileNet pre-processing (``preprocess_input``, mode ``"tf"``): RGB, ``x / 127.5 - 1``.
KERAS_MOBILENET_INPUT_SPEC = InputSpec(image_size=(300, 300), channel_order="RGB", mean=(127.5,) * 3,
                                       std=(127.5,) * 3)


def keras_mobilenet_priors(image_size: Sequence[int] = (300, 300),
                           scales: Sequence[float] = KERAS_SSD300_SCALES) -> PriorConfig:
    """ssd_keras-style anchors for the six maps: scale ``s_k`` of ``min(image_size)`` at aspect ratios ``1, 2,
    1/2`` (maps 0, 4, 5) or ``1, 2, 1/2, 3, 1/3`` (maps 1..3), plus the square ``sqrt(s_k s_{k+1})`` box
    (``two_boxes_for_ar1``); centres ``(i + 0.5) / map size`` (steps from the map sizes), not clipped, variances
    0.1, 0.1, 0.2, 0.2. Boxes per location 4, 6, 6, 6, 4, 4: 2268 priors at 300x300 (maps 19, 10, 5, 3, 2, 1)."""
    if len(scales) != 7:
        raise ValueError(f"scales needs 7 entries (6 maps + 1), got {len(scales)}")
    ratios = [(2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,)]
    return config_from_scales((int(image_size[0]), int(image_size[1])), steps=[None] * 6, aspect_ratios=ratios,
                              scales=list(scales), extra_box=True)


class KerasSSDExtras(nn.Module):
    """The four extra blocks after ``conv_pw_13``: ``x [B, in_channels, H, W] -> [4 maps]``, block ``k`` (14..17)
    ``relu(bn{k}_2(conv{k}_2(relu(bn{k}_1(conv{k}_1(x))))))``, ``conv{k}_2`` 3x3 stride 2 with Keras ``"same"``
    padding (map ``ceil(H / 2)``); convs with bias (Keras' default), BatchNorm ``eps=1e-3``."""

    def __init__(self, in_channels: int, blocks: Sequence[Sequence[int]] = KERAS_EXTRA_BLOCKS,
                 first_index: int = 14) -> None:
        super().__init__()
        if not blocks:
            raise ValueError("KerasSSDExtras needs at least one block")
        self.in_channels = int(in_channels)
        self.names = [f"{first_index + i}" for i in range(len(blocks))]
        self.out_channels: list[int] = []
        ch = self.in_channels
        for n, (mid, out) in zip(self.names, blocks, strict=True):
            self.add_module(f"conv{n}_1", nn.Conv2d(ch, int(mid), 1))
            self.add_module(f"bn{n}_1", nn.BatchNorm2d(int(mid), eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM))
            self.add_module(f"conv{n}_2", keras_conv(int(mid), int(out), 3, 2))
            self.add_module(f"bn{n}_2", nn.BatchNorm2d(int(out), eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM))
            ch = int(out)
            self.out_channels.append(ch)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x [B, in_channels, H, W]`` -> ``[B, out_channels[i], H_i, W_i]`` per block."""
        outs: list[Tensor] = []
        for n in self.names:
            x = getattr(self, f"bn{n}_1")(getattr(self, f"conv{n}_1")(x)).relu()
            x = getattr(self, f"bn{n}_2")(getattr(self, f"conv{n}_2")(x)).relu()
            outs.append(x)
        return outs


def ssd300_mobilenetv1_keras(
    head_kernel_size: int,
    num_classes: int = 21,
    class_names: Sequence[str] | None = None,
    priors: PriorConfig | None = None,
    alpha: float = 1.0,
    input_spec: InputSpec | None = None,
    image_size: Sequence[int] = (300, 300),
) -> SSD:
    """The ssd_keras fork's SSD300 on Keras applications' MobileNetV1 (``alpha``: Keras' width multiplier) with
    ``head_kernel_size`` 3 or 1 predictors; default priors :func:`keras_mobilenet_priors` at ``image_size``
    (2268 at 300x300; maps 8, 4, 2, 1, 1, 1 at 128x128)."""
    if head_kernel_size not in (1, 3):
        raise ValueError(f"head_kernel_size must be 1 or 3, got {head_kernel_size}")
    backbone = build_backbone("mobilenet_v1_keras", alpha=alpha)
    extras = KerasSSDExtras(backbone.out_channels[-1])
    if priors is None:
        priors = keras_mobilenet_priors(image_size)
    spec = (input_spec or KERAS_MOBILENET_INPUT_SPEC).with_image_size(priors.image_size)
    return assemble_ssd(backbone, extras, priors, num_classes, class_names, spec,
                        lambda channels, per_loc: SSDHead(channels, per_loc, num_classes, kernel_size=head_kernel_size))


def _register(kernel: int) -> None:
    name = f"ssd300_mobilenetv1_keras_{kernel}x{kernel}"

    @register_model(name)
    def builder(num_classes: int = 21, class_names: Sequence[str] | None = None, priors: PriorConfig | None = None,
                alpha: float = 1.0, input_spec: InputSpec | None = None,
                image_size: Sequence[int] = (300, 300)) -> SSD:
        return ssd300_mobilenetv1_keras(kernel, num_classes, class_names, priors, alpha, input_spec, image_size)

    builder.__qualname__ = builder.__name__ = name
    builder.__doc__ = (f"SSD300 on Keras applications' MobileNetV1 (ssd_keras fork) with {kernel}x{kernel} heads: "
                       "maps 19, 10, 5, 3, 2, 1; 2268 priors.")


for _kernel in (3, 1):
    _register(_kernel)
