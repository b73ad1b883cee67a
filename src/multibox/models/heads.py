"""SSD prediction heads: one ``3x3`` convolution per feature map for class scores and one for box offsets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import xavier_init_

__all__ = ["SSDHead", "check_head_args", "flatten_predictions", "run_predictors"]


def check_head_args(in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int
                    ) -> tuple[int, list[int]]:
    """Validate a head's arguments (one anchor count per input map, background counted in ``num_classes``);
    returns ``(num_classes, num_anchors)`` as ints."""
    if len(in_channels) != len(num_anchors):
        raise ValueError(f"in_channels ({len(in_channels)} maps) and num_anchors ({len(num_anchors)} maps) differ")
    if num_classes < 2:
        raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")
    return int(num_classes), [int(a) for a in num_anchors]


def flatten_predictions(pred: Tensor, num_columns: int) -> Tensor:
    """``[B, A * K, H, W] -> [B, H * W * A, K]`` (Caffe's Permute(0, 2, 3, 1) + Flatten, torchvision's layout).

    Channel ``a * K + k`` holds column ``k`` of anchor ``a``, so rows come out in prior order: y, then x, then
    anchor. Works on contiguous and channels_last tensors alike.
    """
    n = pred.shape[0]
    return pred.permute(0, 2, 3, 1).reshape(n, -1, num_columns)


class SSDHead(nn.Module):
    """Class and box predictors over a list of feature maps.

    ``features[k] [B, in_channels[k], H_k, W_k]`` -> ``(cls_logits [B, P, num_classes], box_deltas [B, P, 4])``
    with ``P = sum_k H_k * W_k * num_anchors[k]``, rows ordered map, y, x, anchor (the order of
    :class:`~multibox.anchors.PriorBoxGenerator`). Class index 0 is background.

    Init: Xavier-uniform weights and zero biases (Caffe SSD's ``xavier`` filler, torchvision's SSDHead).
    """

    def __init__(
        self, in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.num_classes, self.num_anchors = check_head_args(in_channels, num_anchors, num_classes)
        pad = kernel_size // 2
        self.classification = nn.ModuleList(
            nn.Conv2d(c, a * self.num_classes, kernel_size, padding=pad)
            for c, a in zip(in_channels, self.num_anchors, strict=True)
        )
        self.regression = nn.ModuleList(
            nn.Conv2d(c, a * 4, kernel_size, padding=pad) for c, a in zip(in_channels, self.num_anchors, strict=True)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, zero biases."""
        xavier_init_(self)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``[B, C_k, H_k, W_k]`` per map -> ``(cls_logits [B, P, num_classes], box_deltas [B, P, 4])``."""
        return run_predictors(self, features)


def run_predictors(head: nn.Module, features: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Apply ``head.classification[k]`` and ``head.regression[k]`` to map ``k`` and concatenate the flattened
    predictions in prior order: ``(cls_logits [B, P, head.num_classes], box_deltas [B, P, 4])``."""
    if len(features) != len(head.classification):
        raise ValueError(f"{type(head).__name__} has {len(head.classification)} predictors but got "
                         f"{len(features)} maps")
    cls_parts: list[Tensor] = []
    box_parts: list[Tensor] = []
    for x, cls_pred, box_pred in zip(features, head.classification, head.regression, strict=True):
        cls_parts.append(flatten_predictions(cls_pred(x), head.num_classes))
        box_parts.append(flatten_predictions(box_pred(x), 4))
    return torch.cat(cls_parts, dim=1), torch.cat(box_parts, dim=1)
