"""Exponential moving average (EMA) of a model's weights during training (``ema.decay`` in training configs).

After every optimizer step, every floating-point entry of the model's state dict (parameters and BatchNorm running
statistics) is averaged into a shadow copy::

    d_n    = min(decay, (1 + n) / (10 + n))        # n: updates done before this one (0, 1, 2, ...)
    ema   <- d_n * ema + (1 - d_n) * current

so the average follows the weights closely at the start (``d_0 = 0.1``) and settles at ``decay`` (about
``1 / (1 - decay)`` steps of memory). Integer entries (BatchNorm's ``num_batches_tracked``) are copied. The
shadow copy is what the trainer evaluates and writes to ``.safetensors`` files; the ``.pt`` checkpoint keeps
both (``model``: the trained weights, ``ema``: the average and its update count), so a resumed run continues
exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ModelEma", "ema_decay_at"]


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay used by update number ``updates`` (0-based): ``min(decay, (1 + updates) / (10 + updates))``."""
    return min(float(decay), (1.0 + updates) / (10.0 + updates))


class ModelEma:
    """A shadow copy of ``model`` holding the moving average of its state (see the module docstring).

    Args:
        model: the model being trained (its current weights start the average).
        decay: the final decay, in ``[0, 1)``.

    ``module`` is the averaged model (in eval mode, no gradients), on the same device as ``model``.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Average ``model``'s current state into the shadow copy; returns the decay used."""
        d = ema_decay_at(self.decay, self.updates)
        current = model.state_dict()
        for name, avg in self.module.state_dict().items():
            value = current[name]
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(value.detach().to(avg.dtype), alpha=1.0 - d)
            else:
                avg.copy_(value)
        self.updates += 1
        return d

    def state_dict(self) -> dict[str, Any]:
        """``{"weights": the averaged state dict, "updates": int, "decay": float}`` (for ``.pt`` checkpoints)."""
        return {"weights": {k: v.detach().clone() for k, v in self.module.state_dict().items()},
                "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (resume)."""
        weights: dict[str, Tensor] = state["weights"]
        self.module.load_state_dict(weights)
        self.updates = int(state["updates"])
