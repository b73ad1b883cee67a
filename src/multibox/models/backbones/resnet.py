"""ResNet v1 (He et al. 2015) and v2 / pre-activation (He et al. 2016) as SSD backbones.

**v1** (:class:`ResNetBackbone`, registered ``resnet18`` .. ``resnet152`` and ``resnet50_nvidia``): the module
tree uses torchvision's names (``conv1``, ``bn1``, ``layer1`` .. ``layer4``, blocks ``layerN.K`` with ``conv1``,
``bn1``, ``conv2``, ``bn2`` [, ``conv3``, ``bn3``] and ``downsample.0`` (1x1 conv) / ``downsample.1`` (BN)), so an
ImageNet state dict of torchvision's ``resnetNN`` or timm's ``resnetNN`` (same names) loads without renaming
(:meth:`ResNetBackbone.load_pretrained`). Bottlenecks stride in the 3x3 conv (torchvision's "v1.5").
SSD taps: the outputs of ``layer2``, ``layer3``, ``layer4`` (strides 8, 16, 32: 38, 19, 10 at 300x300).

NVIDIA's SSD300-ResNet50 (``resnet50_nvidia``, DeepLearningExamples): ``layer4`` is dropped and the first block
of ``layer3`` strides 1 (its 3x3 conv and its downsample), so the one map returned is ``layer3``'s 1024 channels
at stride 8 (38x38 at 300x300).

**v2** (:class:`PreActResNetBackbone`, ``resnetv2_50`` / ``resnetv2_101``): pre-activation bottlenecks (``bn1 ->
relu -> conv1 -> bn2 -> relu -> conv2 -> bn3 -> relu -> conv3``, the projection shortcut a 1x1 conv on the
pre-activated input), a bias-free 7x7 stem conv without BN, and one ``BN + ReLU`` per tapped map (``post2``,
``post3``, ``post4``: the pre-activation network's outputs are not normalized; TF-slim's ``postnorm`` is the
last one). No ImageNet weights of this layout exist on this machine: it is trained from scratch here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from .base import Backbone, copy_matching_state_dict, load_state_dict_file
from .registry import register_backbone

__all__ = ["BasicBlock", "Bottleneck", "PreActBottleneck", "ResNetBackbone", "PreActResNetBackbone",
           "RESNET_LAYERS", "RESNETV2_LAYERS"]

#: depth -> (block kind, blocks per stage) of ResNet v1 (paper, Table 1).
RESNET_LAYERS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

#: depth -> blocks per stage of the pre-activation ResNet (bottlenecks).
RESNETV2_LAYERS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

_STAGE_PLANES = (64, 128, 256, 512)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """ResNet-18/34 block ``x [B, in, H, W] -> relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``,
    ``[B, planes, H / stride, W / stride]``."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != planes:
            self.downsample = nn.Sequential(_conv1x1(in_channels, planes, stride), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in, H, W] -> [B, planes, H', W']``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet-50+ block: 1x1 (planes) -> 3x3 (planes, ``stride``) -> 1x1 (4 planes), each with BN, ReLU after the
    residual sum; ``x [B, in, H, W] -> [B, 4 planes, H / stride, W / stride]``."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = _conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, out)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(_conv1x1(in_channels, out, stride), nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in, H, W] -> [B, 4 planes, H', W']``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _init_resnet(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _PretrainedMixin:
    """``load_pretrained`` by name (the module tree follows the source's names) and ``load_pretrained_file``."""

    layout_hint: str = ""

    def load_pretrained(self, state_dict: Mapping[str, Tensor]) -> dict[str, list[str]]:
        """Copy an ImageNet classifier's state dict in by name (``module.`` prefixes dropped; the classifier and
        any key this backbone lacks are reported ``skipped``). ``ValueError`` naming the keys when a shape
        differs or a parameter of this backbone is absent (nothing is loaded then)."""
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


class ResNetBackbone(_PretrainedMixin, Backbone):
    """ResNet v1 features for SSD: ``images [B, 3, H, W] -> [one map per tapped stage]``.

    Args:
        depth: 18, 34, 50, 101 or 152.
        taps: stages returned (2 = ``layer2`` .. 4 = ``layer4``), ascending; stages after the last tap are not
            built.
        layer3_stride: stride of the first block of ``layer3`` (1 in NVIDIA's SSD300: ``layer3`` at stride 8).
        zero_init_residual: the last BN of each block starts at weight 0 (each block the identity: Goyal et al.
            2017), so that a randomly initialized deep ResNet does not blow up its outputs (without it a random
            ResNet-152 SSD starts with logits near 70); ImageNet weights replace it.

    ``out_channels``: ``(64, 128, 256, 512)[stage - 1] * expansion`` per tap; ``strides``: 4, 8, 16, 32 for
    stages 1..4 (halved from ``layer3`` on when ``layer3_stride == 1``); map sizes are ``ceil(H / stride)``.
    Init: Kaiming-normal convs (fan_out), BatchNorm 1 / 0, as torchvision (``zero_init_residual=True``).
    """

    layout_hint = "expected a torchvision / timm resnet state dict (keys 'conv1.weight', 'layer1.0.conv1.weight', ...)"

    def __init__(self, depth: int = 50, taps: Sequence[int] = (2, 3, 4), layer3_stride: int = 2,
                 zero_init_residual: bool = True) -> None:
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
        taps = tuple(int(t) for t in taps)
        if not taps or list(taps) != sorted(set(taps)) or taps[0] < 1 or taps[-1] > 4:
            raise ValueError(f"taps must be ascending stages in 1..4, got {taps}")
        if layer3_stride not in (1, 2):
            raise ValueError(f"layer3_stride must be 1 or 2, got {layer3_stride}")
        kind, blocks = RESNET_LAYERS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.taps, self.layer3_stride = int(depth), taps, int(layer3_stride)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        ch, stride_total = 64, 4
        self.out_channels, self.strides = [], []
        for stage in range(1, taps[-1] + 1):
            stride = 1 if stage == 1 else (self.layer3_stride if stage == 3 else 2)
            stride_total *= stride
            layers: list[nn.Module] = []
            for k in range(blocks[stage - 1]):
                layers.append(block(ch, _STAGE_PLANES[stage - 1], stride if k == 0 else 1))
                ch = _STAGE_PLANES[stage - 1] * block.expansion
            self.add_module(f"layer{stage}", nn.Sequential(*layers))
            if stage in taps:
                self.out_channels.append(ch)
                self.strides.append(stride_total)
        _init_resnet(self)
        if zero_init_residual:  # each block starts as the identity: a deep random ResNet keeps bounded outputs
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)
        name = f"resnet{depth}"
        self.imagenet_file_patterns = (f"{name}-*.pth", f"{name}.pth", f"{name}*.safetensors",
                                       f"models--timm--{name}.*/snapshots/*/model.safetensors")

    def extra_repr(self) -> str:
        return f"depth={self.depth}, taps={self.taps}, layer3_stride={self.layer3_stride}"

    def forward(self, images: Tensor) -> list[Tensor]:
        """``images [B, 3, H, W]`` (normalized) -> ``[B, out_channels[i], ceil(H / strides[i]), ...]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        outs: list[Tensor] = []
        for stage in range(1, self.taps[-1] + 1):
            x = getattr(self, f"layer{stage}")(x)
            if stage in self.taps:
                outs.append(x)
        return outs


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (He et al. 2016, "Identity mappings"): ``x [B, in, H, W] -> [B, 4 planes, H /
    stride, W / stride]`` = ``conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(x))))))))) + shortcut``, the shortcut
    being ``x`` or ``downsample(relu(bn1(x)))`` (1x1 conv, no BN). The output is not normalized."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv1x1(in_channels, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, out)
        self.relu = nn.ReLU(inplace=False)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out:
            self.downsample = _conv1x1(in_channels, out, stride)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in, H, W] -> [B, 4 planes, H', W']``."""
        pre = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + shortcut


class PreActResNetBackbone(_PretrainedMixin, Backbone):
    """Pre-activation ResNet (v2) features for SSD: ``images [B, 3, H, W] -> [BN+ReLU of each tapped stage]``.

    Stem: 7x7 stride-2 conv (no BN: the first block pre-activates it), 3x3 stride-2 max pool; stages of
    :class:`PreActBottleneck` with the stride in the first block's 3x3 conv; ``post{stage}`` = ``BN + ReLU`` of
    each tapped stage. ``out_channels`` ``4 * (128, 256, 512)``, ``strides`` 8, 16, 32 for the default taps.
    No pretrained weights in this layout are available offline.
    """

    layout_hint = "expected a state dict of this pre-activation ResNet (keys 'conv1.weight', 'layer1.0.bn1.weight')"

    def __init__(self, depth: int = 50, taps: Sequence[int] = (2, 3, 4)) -> None:
        super().__init__()
        if depth not in RESNETV2_LAYERS:
            raise ValueError(f"ResNet v2 depth must be one of {sorted(RESNETV2_LAYERS)}, got {depth}")
        taps = tuple(int(t) for t in taps)
        if not taps or list(taps) != sorted(set(taps)) or taps[0] < 1 or taps[-1] > 4:
            raise ValueError(f"taps must be ascending stages in 1..4, got {taps}")
        blocks = RESNETV2_LAYERS[depth]
        self.depth, self.taps = int(depth), taps
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        ch, stride_total = 64, 4
        self.out_channels, self.strides = [], []
        for stage in range(1, taps[-1] + 1):
            stride = 1 if stage == 1 else 2
            stride_total *= stride
            layers = []
            for k in range(blocks[stage - 1]):
                layers.append(PreActBottleneck(ch, _STAGE_PLANES[stage - 1], stride if k == 0 else 1))
                ch = _STAGE_PLANES[stage - 1] * PreActBottleneck.expansion
            self.add_module(f"layer{stage}", nn.Sequential(*layers))
            if stage in taps:
                self.add_module(f"post{stage}", nn.Sequential(nn.BatchNorm2d(ch), nn.ReLU(inplace=True)))
                self.out_channels.append(ch)
                self.strides.append(stride_total)
        _init_resnet(self)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, taps={self.taps}"

    def forward(self, images: Tensor) -> list[Tensor]:
        """``images [B, 3, H, W]`` (normalized) -> ``[B, out_channels[i], ceil(H / strides[i]), ...]``."""
        x = self.maxpool(self.conv1(images))
        outs: list[Tensor] = []
        for stage in range(1, self.taps[-1] + 1):
            x = getattr(self, f"layer{stage}")(x)
            if stage in self.taps:
                outs.append(getattr(self, f"post{stage}")(x))
        return outs


def _register_v1(depth: int) -> None:
    name = f"resnet{depth}"

    @register_backbone(name, f"ResNet-{depth} v1 (layer2, layer3, layer4; torchvision / timm weights load)")
    def factory(taps: Sequence[int] = (2, 3, 4), layer3_stride: int = 2) -> ResNetBackbone:
        b = ResNetBackbone(depth, taps, layer3_stride)
        b.registered_name = name
        return b

    factory.__qualname__ = f"{name}_backbone"


for _depth in RESNET_LAYERS:
    _register_v1(_depth)


@register_backbone("resnet50_nvidia", "ResNet-50 to layer3 with a stride-1 first block (38x38): NVIDIA's SSD300")
def resnet50_nvidia() -> ResNetBackbone:
    """NVIDIA's SSD300 backbone: ResNet-50 up to ``layer3``, whose first block strides 1 (1024 channels at
    stride 8)."""
    b = ResNetBackbone(50, taps=(3,), layer3_stride=1)
    b.registered_name = "resnet50_nvidia"
    return b


def _register_v2(depth: int) -> None:
    name = f"resnetv2_{depth}"

    @register_backbone(name, f"pre-activation ResNet-{depth} v2 (post-normed layer2..4; no offline weights)")
    def factory(taps: Sequence[int] = (2, 3, 4)) -> PreActResNetBackbone:
        b = PreActResNetBackbone(depth, taps)
        b.registered_name = name
        return b

    factory.__qualname__ = f"{name}_backbone"


for _depth in (50, 101):
    _register_v2(_depth)
