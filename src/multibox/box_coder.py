"""Caffe ``CENTER_SIZE`` box coding with variances, batched.

For a prior ``(pcx, pcy, pw, ph)`` and a box ``(cx, cy, w, h)`` (same units, here normalized cxcywh)::

    dx = (cx - pcx) / pw / v0        dw = log(w / pw) / v2
    dy = (cy - pcy) / ph / v1        dh = log(h / ph) / v3

Decoding inverts this; ``dw``/``dh`` are clamped to ``log(1000 / 16) / v`` style bounds
(``max_log_scale``) first, so that ``exp`` never overflows to ``inf``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_convert

__all__ = ["BoxCoder"]

# exp(log(1000/16)) = 62.5: a prediction may grow a prior at most 62.5x, as in torchvision's coder.
DEFAULT_MAX_LOG_SCALE = math.log(1000.0 / 16)


@dataclass(frozen=True)
class BoxCoder:
    """Encode boxes against priors and decode offsets back, ``CENTER_SIZE`` with ``variances``.

    All methods broadcast over leading dimensions: ``priors`` is ``[P, 4]`` normalized cxcywh and boxes /
    deltas are ``[..., P, 4]``.
    """

    variances: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    max_log_scale: float = DEFAULT_MAX_LOG_SCALE

    def encode(self, boxes_xyxy: Tensor, priors_cxcywh: Tensor, eps: float = 1e-12) -> Tensor:
        """Offsets ``[..., P, 4]`` of ``boxes_xyxy`` ``[..., P, 4]`` (normalized xyxy) w.r.t. the priors.

        Degenerate boxes (zero width or height) are floored at ``eps`` so that the log stays finite.
        """
        v = boxes_xyxy.new_tensor(self.variances)
        b = box_convert(boxes_xyxy, "xyxy", "cxcywh")
        p = priors_cxcywh
        dxy = (b[..., :2] - p[..., :2]) / p[..., 2:] / v[:2]
        dwh = torch.log(b[..., 2:].clamp_min(eps) / p[..., 2:]) / v[2:]
        return torch.cat((dxy, dwh), dim=-1)

    def decode_cxcywh(self, deltas: Tensor, priors_cxcywh: Tensor) -> Tensor:
        """Boxes ``[..., P, 4]`` normalized cxcywh from offsets ``[..., P, 4]``."""
        v = deltas.new_tensor(self.variances)
        p = priors_cxcywh.to(deltas.dtype)
        cxy = deltas[..., :2] * v[:2] * p[..., 2:] + p[..., :2]
        log_wh = (deltas[..., 2:] * v[2:]).clamp(max=self.max_log_scale)
        wh = torch.exp(log_wh) * p[..., 2:]
        return torch.cat((cxy, wh), dim=-1)

    def decode(self, deltas: Tensor, priors_cxcywh: Tensor) -> Tensor:
        """Boxes ``[..., P, 4]`` normalized xyxy from offsets ``[..., P, 4]`` (always finite for finite input)."""
        return box_convert(self.decode_cxcywh(deltas, priors_cxcywh), "cxcywh", "xyxy")
