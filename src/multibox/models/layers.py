"""Small layers used by SSD models."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["L2Norm", "xavier_init_"]


def xavier_init_(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``Conv2d`` inside ``module`` (Caffe SSD's extras/heads)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class L2Norm(nn.Module):
    """Caffe SSD's ``Normalize`` layer (ParseNet): L2-normalize over channels, then scale per channel.

    ``y[b, c, h, w] = weight[c] * x[b, c, h, w] / sqrt(sum_c' x[b, c', h, w]^2 + eps)``

    ``weight`` is a learnable ``[C]`` vector initialized to ``init_scale`` (20 for VGG16 ``conv4_3``). The norm
    is computed in float32 whatever the input dtype (sums of squares overflow float16) and the result is cast
    back to the input dtype, so the layer is safe under ``torch.autocast``.
    """

    def __init__(self, num_channels: int, init_scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.num_channels = int(num_channels)
        self.init_scale = float(init_scale)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.empty(self.num_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set every channel scale to ``init_scale``."""
        nn.init.constant_(self.weight, self.init_scale)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, H, W]`` -> same shape and dtype."""
        xf = x.float()
        inv_norm = torch.rsqrt(xf.pow(2).sum(dim=1, keepdim=True) + self.eps)
        out = xf * inv_norm * self.weight.float().view(1, -1, 1, 1)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, init_scale={self.init_scale}, eps={self.eps}"
