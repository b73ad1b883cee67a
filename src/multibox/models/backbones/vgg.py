"""VGG16 backbone of SSD300 / SSD512 (Liu et al. 2016), as in Caffe SSD and torchvision.

Layers ``conv1_1 .. conv5_3`` are VGG16's; ``pool3`` uses ``ceil_mode=True`` (38x38 ``conv4_3`` at 300x300);
``pool5`` is 3x3 stride 1 pad 1; ``fc6`` is a 3x3 conv with dilation 6 (1024 channels) and ``fc7`` a 1x1 conv
(1024): the "reduced fc" of the paper. ``conv4_3`` is L2-normalized (:class:`~multibox.models.layers.L2Norm`,
scale 20) before it is returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import L2Norm
from .base import Backbone
from .registry import register_backbone

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


@register_backbone("vgg16", "VGG16 (conv4_3 L2-normed, fc6/fc7 as dilated convs): Caffe SSD300/SSD512")
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

    def load_pretrained(self, state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
        """Copy torchvision's ImageNet ``vgg16`` state dict into this backbone (SSD's "fc_reduced" VGG16).

        ``features.N.weight / bias`` -> ``conv1_1 .. conv5_3`` (:data:`TORCHVISION_VGG16_FEATURE_INDEX`).
        ``classifier.0`` (fc6, ``[4096, 25088]``) is viewed as ``[4096, 512, 7, 7]`` and subsampled to every
        4th output channel and every 3rd spatial tap (0, 3, 6): ``[1024, 512, 3, 3]``; ``classifier.3`` (fc7,
        ``[4096, 4096]``) to every 4th output and input: ``[1024, 1024, 1, 1]``; biases to every 4th entry,
        as Caffe's ``VGG_ILSVRC_16_layers_fc_reduced``. Without classifier keys fc6 / fc7 keep their init.
        The L2Norm scale is never in the source (``missing``). Keys may carry a ``module.`` prefix.

        Returns ``{"loaded", "missing", "unexpected"}`` (our names; source keys for ``unexpected``). Raises
        ``ValueError`` for ``vgg16_bn`` state dicts or keys whose shapes differ from VGG16's.
        """
        sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
        if any(k.startswith("features.") and k.endswith("running_mean") for k in sd):
            raise ValueError("the state dict is a vgg16_bn (BatchNorm) one; VGG16Backbone takes plain vgg16")
        used: set[str] = set()
        loaded: list[str] = []
        own = dict(self.named_parameters())

        def put(name: str, value: Tensor, key: str) -> None:
            target = own[name]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"{key} has shape {list(value.shape)} but {name} needs {list(target.shape)} "
                    "(is this a torchvision vgg16 state dict?)"
                )
            with torch.no_grad():
                target.copy_(value.to(dtype=target.dtype, device=target.device))
            loaded.append(name)

        for conv, idx in TORCHVISION_VGG16_FEATURE_INDEX.items():
            for kind in ("weight", "bias"):
                key = f"features.{idx}.{kind}"
                if key in sd:
                    put(f"{conv}.{kind}", sd[key], key)
                    used.add(key)
        fc = {
            "fc6": ("classifier.0", (4096, 512 * 7 * 7)),
            "fc7": ("classifier.3", (4096, 4096)),
        }
        for name, (prefix, shape) in fc.items():
            wkey, bkey = f"{prefix}.weight", f"{prefix}.bias"
            if wkey not in sd:
                continue
            w = sd[wkey]
            if tuple(w.shape) != shape:
                raise ValueError(f"{wkey} has shape {list(w.shape)}, expected {list(shape)} (torchvision vgg16)")
            if name == "fc6":
                w = w.reshape(4096, 512, 7, 7)[::4, :, ::3, ::3]
            else:
                w = w[::4, ::4].reshape(1024, 1024, 1, 1)
            put(f"{name}.weight", w, wkey)
            used.add(wkey)
            if bkey in sd:
                put(f"{name}.bias", sd[bkey][::4], bkey)
                used.add(bkey)
        names = [n for n, _ in self.named_parameters()] + [n for n, _ in self.named_buffers()]
        return {
            "loaded": loaded,
            "missing": [n for n in names if n not in loaded],
            "unexpected": [k for k in sd if k not in used],
        }
