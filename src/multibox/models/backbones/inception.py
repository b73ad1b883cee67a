"""Inception v4 and Inception-ResNet v2 (Szegedy et al. 2016) as SSD backbones.

Both module trees use the parameter names of timm's ``inception_v4`` / ``inception_resnet_v2`` (which are those of
Cadene's ``pretrainedmodels`` ports of the TF-slim weights), so their ImageNet state dicts load without renaming
(:meth:`InceptionV4Backbone.load_pretrained`); the classifier (``last_linear`` / ``classif``) is skipped. Every
convolution is a :class:`ConvBN` (children ``conv``, bias-free, and ``bn``, BatchNorm with TF's ``eps=1e-3``,
then ReLU), except the 1x1 ``conv2d`` (with bias, no BN) that closes each residual block of Inception-ResNet v2.

**Inception v4** (:class:`InceptionV4Backbone`, ``inception_v4``): ``features.0 .. features.21``: the stem (three
convs, ``Mixed3a``, ``Mixed4a``, ``Mixed5a``), 4 Inception-A blocks (``features.6 .. 9``, 384 channels at stride
8), Reduction-A (``features.10``), 7 Inception-B blocks (``features.11 .. 17``, 1024 channels at stride 16),
Reduction-B (``features.18``) and 3 Inception-C blocks (``features.19 .. 21``, 1536 channels at stride 32).

**Inception-ResNet v2** (:class:`InceptionResNetV2Backbone`, ``inception_resnet_v2``): the stem (``conv2d_1a``,
``conv2d_2a``, ``conv2d_2b``, ``maxpool_3a``, ``conv2d_3b``, ``conv2d_4a``, ``maxpool_5a``, ``mixed_5b``), 10
Block35 (``repeat``, 320 channels at stride 8, residual scale 0.17), ``mixed_6a``, 20 Block17 (``repeat_1``,
1088 channels at stride 16, scale 0.10), ``mixed_7a``, 9 Block8 (``repeat_2``, scale 0.20), a last Block8 without
ReLU (``block8``) and ``conv2d_7b`` (1536 channels at stride 32).

SSD taps: the last map at each of strides 8, 16 and 32 (the inputs of the two reduction blocks and the network's
output, timm's ``feature_info`` of those strides).

``padding``: ``"valid"`` is the networks' own layout (TF-slim's ``VALID`` convolutions and pools in the stem and the
reductions: 35, 17, 8 maps at 299x299 and at 300x300); ``"same"`` (the SSD default) pads every convolution and
max pool with a ``k x k`` kernel by ``k // 2`` (per dimension), as TF-slim's ``align_feature_maps`` does, so that
the maps are ``ceil(H / stride)``: 38, 19, 10 at 300x300 (SSD300's sizes, 8732 priors with ``ssd300-voc``) and
64, 32, 16 at 512x512. The padding has no parameters: the same ImageNet weights load in both modes (they were
trained with ``"valid"``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .base import Backbone, copy_matching_state_dict, load_state_dict_file
from .registry import register_backbone

__all__ = ["ConvBN", "InceptionV4Backbone", "InceptionResNetV2Backbone", "INCEPTION_PADDINGS"]

#: The two padding layouts (see the module docstring).
INCEPTION_PADDINGS: tuple[str, ...] = ("same", "valid")

_BN_EPS = 1e-3
_Kernel = int | tuple[int, int]


def _pair(k: _Kernel) -> tuple[int, int]:
    return (k, k) if isinstance(k, int) else (int(k[0]), int(k[1]))


class ConvBN(nn.Module):
    """``x [B, in, H, W] -> relu(bn(conv(x))) [B, out, H', W']``: children ``conv`` (bias-free) and ``bn``
    (``eps=1e-3``), timm's ``ConvNormAct`` key layout."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Kernel, stride: int = 1,
                 padding: _Kernel = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, _pair(kernel_size), stride=stride, padding=_pair(padding),
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class _Layers:
    """Builds convs and pools for one padding layout: ``valid`` marks the convs / pools that TF-slim leaves
    unpadded (they get ``k // 2`` in ``"same"``); every other conv pads ``k // 2`` per dimension in both layouts."""

    def __init__(self, padding: str) -> None:
        if padding not in INCEPTION_PADDINGS:
            raise ValueError(f"padding must be one of {INCEPTION_PADDINGS}, got {padding!r}")
        self.same = padding == "same"

    def conv(self, cin: int, cout: int, k: _Kernel = 1, stride: int = 1, valid: bool = False) -> ConvBN:
        kh, kw = _pair(k)
        pad = (0, 0) if valid and not self.same else (kh // 2, kw // 2)
        return ConvBN(cin, cout, (kh, kw), stride, pad)

    def chain(self, cin: int, *steps: tuple) -> nn.Sequential:
        """``ConvBN``s in sequence; each step is ``(out, kernel[, stride[, valid]])``."""
        layers: list[nn.Module] = []
        for step in steps:
            out, k = step[0], step[1]
            stride = step[2] if len(step) > 2 else 1
            valid = step[3] if len(step) > 3 else stride > 1
            layers.append(self.conv(cin, out, k, stride, valid))
            cin = out
        return nn.Sequential(*layers)

    def max_pool(self) -> nn.MaxPool2d:
        """3x3 stride-2 max pool (padded by 1 in ``"same"``)."""
        return nn.MaxPool2d(3, stride=2, padding=1 if self.same else 0)


def _avg_pool_then(conv: nn.Module) -> nn.Sequential:
    """The pooling branch of the Inception blocks: 3x3 stride-1 average (padding not counted), then ``conv``."""
    return nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), conv)


class _Concat(nn.Module):
    """Runs the children named in ``order`` on the same input and concatenates their outputs on channels."""

    order: tuple[str, ...] = ()

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([getattr(self, name)(x) for name in self.order], dim=1)


# ---------------------------------------------------------------------------------------------- Inception v4
class _Mixed3a(_Concat):
    order = ("maxpool", "conv")

    def __init__(self, L: _Layers) -> None:
        super().__init__()
        self.maxpool = L.max_pool()
        self.conv = L.conv(64, 96, 3, 2, valid=True)


class _Mixed4a(_Concat):
    order = ("branch0", "branch1")

    def __init__(self, L: _Layers) -> None:
        super().__init__()
        self.branch0 = L.chain(160, (64, 1), (96, 3, 1, True))
        self.branch1 = L.chain(160, (64, 1), (64, (1, 7)), (64, (7, 1)), (96, 3, 1, True))


class _Mixed5a(_Concat):
    order = ("conv", "maxpool")

    def __init__(self, L: _Layers) -> None:
        super().__init__()
        self.conv = L.conv(192, 192, 3, 2, valid=True)
        self.maxpool = L.max_pool()


class _InceptionA(_Concat):
    order = ("branch0", "branch1", "branch2", "branch3")

    def __init__(self, L: _Layers) -> None:
        super().__init__()
        self.branch0 = L.conv(384, 96, 1)
        self.branch1 = L.chain(384, (64, 1), (96, 3))
        self.branch2 = L.chain(384, (64, 1), (96, 3), (96, 3))
        self.branch3 = _avg_pool_then(L.conv(384, 96, 1))


class _ReductionA(_Concat):
    order = ("branch0", "branch1", "branch2")

    def __init__(self, L: _Layers) -> None:
        super().__init__()
        self.branch0 = L.conv(384, 384, 3, 2, valid=True)
        self.branch1 = L.chain(384, (192, 1), (224, 3), (256, 3, 2))
        self.branch2 = L.max_pool()


class _InceptionB(_Concat):
    order = ("branch0", "branch1", "branch2", "branch3")

    def __init__(self, L: _Layers) -> None:
        super().__init__()
        self.branch0 = L.conv(1024, 384, 1)
        self.branch1 = L.chain(1024, (192, 1), (224, (1, 7)), (256, (7, 1)))
        self.branch2 = L.chain(1024, (192, 1), (192, (7, 1)), (224, (1, 7)), (224, (7, 1)), (256, (1, 7)))
        self.branch3 = _avg_pool_then(L.conv(1024, 128, 1))


class _ReductionB(_Concat):
    order = ("branch0", "branch1", "branch2")

    def __init__(self, L: _Layers) -> None:
        super().__init__()
        self.branch0 = L.chain(1024, (192, 1), (192, 3, 2))
        self.branch1 = L.chain(1024, (256, 1), (256, (1, 7)), (320, (7, 1)), (320, 3, 2))
        self.branch2 = L.max_pool()


class _InceptionC(nn.Module):
    """Inception-C: the 3x3 branches fork into a 1x3 and a 3x1 conv each (1536 channels in and out)."""

    def __init__(self, L: _Layers) -> None:
        super().__init__()
        self.branch0 = L.conv(1536, 256, 1)
        self.branch1_0 = L.conv(1536, 384, 1)
        self.branch1_1a = L.conv(384, 256, (1, 3))
        self.branch1_1b = L.conv(384, 256, (3, 1))
        self.branch2_0 = L.conv(1536, 384, 1)
        self.branch2_1 = L.conv(384, 448, (3, 1))
        self.branch2_2 = L.conv(448, 512, (1, 3))
        self.branch2_3a = L.conv(512, 256, (1, 3))
        self.branch2_3b = L.conv(512, 256, (3, 1))
        self.branch3 = _avg_pool_then(L.conv(1536, 256, 1))

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1_0(x)
        b2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return torch.cat([self.branch0(x), self.branch1_1a(b1), self.branch1_1b(b1), self.branch2_3a(b2),
                          self.branch2_3b(b2), self.branch3(x)], dim=1)


class _PretrainedMixin:
    """ImageNet weights by name (the module tree follows timm's names)."""

    layout_hint: str = ""

    def load_pretrained(self, state_dict: Mapping[str, Tensor]) -> dict[str, list[str]]:
        """Copy an ImageNet classifier's state dict (timm's / Cadene's layout) in by name; the classifier and any
        key this backbone lacks are reported ``skipped``. ``ValueError`` naming the keys when a shape differs or a
        parameter of this backbone is absent (nothing is loaded then)."""
        assert isinstance(self, nn.Module)
        return copy_matching_state_dict(self, state_dict, f"{type(self).__name__}({self.extra_repr()})",
                                        self.layout_hint)

    def load_pretrained_file(self, path: str | os.PathLike) -> dict[str, list[str]]:
        """:meth:`load_pretrained` from a ``.pth`` / ``.safetensors`` file; errors name the file."""
        state_dict = load_state_dict_file(path)
        try:
            return self.load_pretrained(state_dict)
        except ValueError as err:
            raise ValueError(f"{os.fspath(path)}: {err}") from err


def _init_conv_bn(module: nn.Module) -> None:
    """Kaiming-normal (fan_out) conv weights, zero conv biases, BatchNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _check_taps(taps: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(t) for t in taps)
    if not out or list(out) != sorted(set(out)) or out[0] < 8 or out[-1] > 32 or any(t not in (8, 16, 32)
                                                                                      for t in out):
        raise ValueError(f"taps must be ascending strides among 8, 16, 32, got {tuple(taps)}")
    return out


@register_backbone("inception_v4", "Inception v4 (stride 8, 16, 32 stage ends; timm / Cadene weights load)")
class InceptionV4Backbone(_PretrainedMixin, Backbone):
    """Inception v4 features for SSD: ``images [B, 3, H, W] -> [maps at the tapped strides]``.

    Args:
        padding: ``"same"`` (maps ``ceil(H / stride)``: 38, 19, 10 at 300x300) or ``"valid"`` (the network's own
            layout: 35, 17, 8); see the module docstring.
        taps: strides returned, ascending among 8 (``features.9``, 384 channels), 16 (``features.17``, 1024) and
            32 (``features.21``, 1536); blocks after the last tap are not built.

    Init: Kaiming-normal (fan_out) convs, BatchNorm 1 / 0; ImageNet weights: :meth:`load_pretrained_file`.
    """

    layout_hint = "expected a timm / Cadene inception_v4 state dict (keys 'features.0.conv.weight', ...)"
    imagenet_file_patterns = ("inception_v4*.safetensors", "inception_v4*.pth", "inceptionv4-*.pth",
                              "models--timm--inception_v4.*/snapshots/*/model.safetensors")
    #: stride -> (index of the last block of ``features`` at that stride, its channels)
    STAGE_ENDS: dict[int, tuple[int, int]] = {8: (9, 384), 16: (17, 1024), 32: (21, 1536)}

    def __init__(self, padding: str = "same", taps: Sequence[int] = (8, 16, 32)) -> None:
        super().__init__()
        L = _Layers(padding)
        self.padding, self.taps = padding, _check_taps(taps)
        blocks: list[nn.Module] = [
            L.conv(3, 32, 3, 2, valid=True), L.conv(32, 32, 3, valid=True), L.conv(32, 64, 3),
            _Mixed3a(L), _Mixed4a(L), _Mixed5a(L),
            *[_InceptionA(L) for _ in range(4)], _ReductionA(L),
            *[_InceptionB(L) for _ in range(7)], _ReductionB(L),
            *[_InceptionC(L) for _ in range(3)],
        ]
        last = self.STAGE_ENDS[self.taps[-1]][0]
        self.features = nn.Sequential(*blocks[:last + 1])
        self._tap_index = {self.STAGE_ENDS[s][0] for s in self.taps}
        self.out_channels = [self.STAGE_ENDS[s][1] for s in self.taps]
        self.strides = list(self.taps)
        _init_conv_bn(self)

    def extra_repr(self) -> str:
        return f"padding={self.padding!r}, taps={self.taps}"

    def forward(self, images: Tensor) -> list[Tensor]:
        """``images [B, 3, H, W]`` (normalized) -> ``[B, out_channels[i], H_i, W_i]`` per tap."""
        outs: list[Tensor] = []
        x = images
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self._tap_index:
                outs.append(x)
        return outs


# ------------------------------------------------------------------------------------- Inception-ResNet v2
class _Mixed5b(_Concat):
    order = ("branch0", "branch1", "branch2", "branch3")

    def __init__(self, L: _Layers) -> None:
        super().__init__()
        self.branch0 = L.conv(192, 96, 1)
        self.branch1 = L.chain(192, (48, 1), (64, 5))
        self.branch2 = L.chain(192, (64, 1), (96, 3), (96, 3))
        self.branch3 = _avg_pool_then(L.conv(192, 64, 1))


class _Residual(nn.Module):
    """An Inception-ResNet block: ``x -> act(x + scale * conv2d(concat(branches(x))))`` (``conv2d`` a 1x1 conv
    with bias back to the input's channels; no ReLU when ``relu`` is false)."""

    branches: tuple[str, ...] = ()

    def __init__(self, scale: float, relu: bool = True) -> None:
        super().__init__()
        self.scale = float(scale)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        mixed = torch.cat([getattr(self, name)(x) for name in self.branches], dim=1)
        out = x + self.scale * self.conv2d(mixed)
        return torch.relu(out) if self.relu else out


class _Block35(_Residual):
    branches = ("branch0", "branch1", "branch2")

    def __init__(self, L: _Layers, scale: float) -> None:
        super().__init__(scale)
        self.branch0 = L.conv(320, 32, 1)
        self.branch1 = L.chain(320, (32, 1), (32, 3))
        self.branch2 = L.chain(320, (32, 1), (48, 3), (64, 3))
        self.conv2d = nn.Conv2d(128, 320, 1)


class _Mixed6a(_Concat):
    order = ("branch0", "branch1", "branch2")

    def __init__(self, L: _Layers) -> None:
        super().__init__()
        self.branch0 = L.conv(320, 384, 3, 2, valid=True)
        self.branch1 = L.chain(320, (256, 1), (256, 3), (384, 3, 2))
        self.branch2 = L.max_pool()


class _Block17(_Residual):
    branches = ("branch0", "branch1")

    def __init__(self, L: _Layers, scale: float) -> None:
        super().__init__(scale)
        self.branch0 = L.conv(1088, 192, 1)
        self.branch1 = L.chain(1088, (128, 1), (160, (1, 7)), (192, (7, 1)))
        self.conv2d = nn.Conv2d(384, 1088, 1)


class _Mixed7a(_Concat):
    order = ("branch0", "branch1", "branch2", "branch3")

    def __init__(self, L: _Layers) -> None:
        super().__init__()
        self.branch0 = L.chain(1088, (256, 1), (384, 3, 2))
        self.branch1 = L.chain(1088, (256, 1), (288, 3, 2))
        self.branch2 = L.chain(1088, (256, 1), (288, 3), (320, 3, 2))
        self.branch3 = L.max_pool()


class _Block8(_Residual):
    branches = ("branch0", "branch1")

    def __init__(self, L: _Layers, scale: float, relu: bool = True) -> None:
        super().__init__(scale, relu)
        self.branch0 = L.conv(2080, 192, 1)
        self.branch1 = L.chain(2080, (192, 1), (224, (1, 3)), (256, (3, 1)))
        self.conv2d = nn.Conv2d(448, 2080, 1)


@register_backbone("inception_resnet_v2",
                   "Inception-ResNet v2 (repeat, repeat_1, conv2d_7b: strides 8, 16, 32; timm / Cadene weights)")
class InceptionResNetV2Backbone(_PretrainedMixin, Backbone):
    """Inception-ResNet v2 features for SSD: ``images [B, 3, H, W] -> [maps at the tapped strides]``.

    Args:
        padding: ``"same"`` (maps ``ceil(H / stride)``: 38, 19, 10 at 300x300) or ``"valid"`` (the network's own
            layout); see the module docstring.
        taps: strides returned, ascending among 8 (``repeat``, 320 channels), 16 (``repeat_1``, 1088) and 32
            (``conv2d_7b``, 1536); stages after the last tap are not built.

    Init: Kaiming-normal (fan_out) convs (zero biases), BatchNorm 1 / 0; ImageNet weights:
    :meth:`load_pretrained_file`.
    """

    layout_hint = ("expected a timm / Cadene inception_resnet_v2 state dict (keys 'conv2d_1a.conv.weight', "
                   "'repeat.0.branch0.conv.weight', ...)")
    imagenet_file_patterns = ("inception_resnet_v2*.safetensors", "inception_resnet_v2*.pth",
                              "inceptionresnetv2-*.pth",
                              "models--timm--inception_resnet_v2.*/snapshots/*/model.safetensors")
    #: stride -> channels of the tapped map
    STAGE_CHANNELS: dict[int, int] = {8: 320, 16: 1088, 32: 1536}

    def __init__(self, padding: str = "same", taps: Sequence[int] = (8, 16, 32)) -> None:
        super().__init__()
        L = _Layers(padding)
        self.padding, self.taps = padding, _check_taps(taps)
        last = self.taps[-1]
        self.conv2d_1a = L.conv(3, 32, 3, 2, valid=True)
        self.conv2d_2a = L.conv(32, 32, 3, valid=True)
        self.conv2d_2b = L.conv(32, 64, 3)
        self.maxpool_3a = L.max_pool()
        self.conv2d_3b = L.conv(64, 80, 1)
        self.conv2d_4a = L.conv(80, 192, 3, valid=True)
        self.maxpool_5a = L.max_pool()
        self.mixed_5b = _Mixed5b(L)
        self.repeat = nn.Sequential(*[_Block35(L, 0.17) for _ in range(10)])
        if last >= 16:
            self.mixed_6a = _Mixed6a(L)
            self.repeat_1 = nn.Sequential(*[_Block17(L, 0.10) for _ in range(20)])
        if last >= 32:
            self.mixed_7a = _Mixed7a(L)
            self.repeat_2 = nn.Sequential(*[_Block8(L, 0.20) for _ in range(9)])
            self.block8 = _Block8(L, 1.0, relu=False)
            self.conv2d_7b = L.conv(2080, 1536, 1)
        self.out_channels = [self.STAGE_CHANNELS[s] for s in self.taps]
        self.strides = list(self.taps)
        _init_conv_bn(self)

    def extra_repr(self) -> str:
        return f"padding={self.padding!r}, taps={self.taps}"

    def forward(self, images: Tensor) -> list[Tensor]:
        """``images [B, 3, H, W]`` (normalized) -> ``[B, out_channels[i], H_i, W_i]`` per tap."""
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(images)))
        x = self.conv2d_4a(self.conv2d_3b(self.maxpool_3a(x)))
        x = self.repeat(self.mixed_5b(self.maxpool_5a(x)))
        outs: list[Tensor] = [x] if 8 in self.taps else []
        if self.taps[-1] >= 16:
            x = self.repeat_1(self.mixed_6a(x))
            if 16 in self.taps:
                outs.append(x)
        if self.taps[-1] >= 32:
            x = self.conv2d_7b(self.block8(self.repeat_2(self.mixed_7a(x))))
            outs.append(x)
        return outs
