"""PyTorch runtimes: ``eager``, ``jit`` (trace + freeze), ``jit+channels_last`` and ``channels_last``.

Measured on the zoo's face and person SSDs (``multibox bench zoo``): on the CPU, tracing and freezing the network
in ``channels_last`` memory format is the fastest PyTorch path, then plain tracing; on other devices tracing. These
ranks are what ``"auto"`` tries after ONNX Runtime (see :func:`multibox.runtime.base.auto_runtimes`).
"""

from __future__ import annotations

import copy
import warnings
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..models.outputs import TupleOutput, network_outputs
from .base import EAGER, NetworkCallable, Runtime, register_runtime

__all__ = ["TorchRuntime", "ChannelsLastOutput"]


class ChannelsLastOutput(nn.Module):
    """Runs ``model`` on a ``channels_last`` copy of the input (weights converted once); returns contiguous
    ``(cls_logits [B, P, C], box_deltas [B, P, 4])``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        cls_logits, box_deltas = network_outputs(self.model(x.contiguous(memory_format=torch.channels_last)))
        return cls_logits.contiguous(), box_deltas.contiguous()


class TorchRuntime(Runtime):
    """A PyTorch path: optionally traced and frozen (``torch.jit``), optionally in ``channels_last`` (on a copy
    of the model, so the original keeps its memory format)."""

    auto_rank: ClassVar[dict[str, int]] = {}

    def __init__(self, name: str, *, trace: bool, channels_last: bool, auto_rank: dict[str, int],
                 description: str) -> None:
        self.name = name  # type: ignore[misc]  # per-instance names of one class
        self.trace = trace
        self.channels_last = channels_last
        self.auto_rank = auto_rank  # type: ignore[misc]
        self.description = description  # type: ignore[misc]

    def build(self, model: nn.Module, example: Tensor) -> NetworkCallable:
        wrapper: nn.Module = ChannelsLastOutput(copy.deepcopy(model)) if self.channels_last else TupleOutput(model)
        wrapper = wrapper.eval()
        if not self.trace:
            return wrapper
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper, example, check_trace=False)
            return torch.jit.freeze(traced.eval())


register_runtime(TorchRuntime(EAGER, trace=False, channels_last=False, auto_rank={},
                              description="PyTorch eager mode (the reference every other runtime is checked against)"))
register_runtime(TorchRuntime("jit", trace=True, channels_last=False, auto_rank={"*": 10},
                              description="torch.jit.trace + freeze"))
register_runtime(TorchRuntime("jit+channels_last", trace=True, channels_last=True, auto_rank={"cpu": 20},
                              description="torch.jit.trace + freeze in channels_last memory format"))
register_runtime(TorchRuntime("channels_last", trace=False, channels_last=True, auto_rank={},
                              description="PyTorch eager mode in channels_last memory format"))
