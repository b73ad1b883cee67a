"""What an SSD backbone is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

__all__ = ["Backbone"]


class Backbone(nn.Module):
    """Base of SSD backbones: ``images [B, 3, H, W] -> [feature maps]``.

    Subclasses set ``out_channels`` (channels of each returned map) and ``strides`` (nominal reduction of each
    map w.r.t. the input; with ceil-mode pooling the real size is ``ceil(H / stride)``). Consumers derive
    every channel count from ``out_channels``: nothing declares it a second time.
    """

    out_channels: list[int]
    strides: list[int]

    def forward(self, images: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_pretrained(self, state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
        """Initialize from an ImageNet classifier's state dict (e.g. torchvision's); the weights are copied in.

        Returns ``{"loaded": [names], "missing": [names], "unexpected": [source keys]}`` and optionally
        ``"skipped_shape": [(name, source shape, target shape)]``; ``loaded`` / ``missing`` are this
        backbone's own parameter and buffer names (no ``backbone.`` prefix). Raises ``ValueError`` naming the
        offending key when the state dict is not of the expected network. Backbones that support ImageNet
        initialization override this.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement load_pretrained(): it cannot be initialized from an "
            "ImageNet state dict; train it from scratch or load full detector weights instead"
        )
