"""What a network returns, as plain tensors: ``(cls_logits [B, P, C], box_deltas [B, P, 4])``.

:func:`network_outputs` reads the pair from an :class:`~multibox.models.detector.SSDOutput`, a tuple or a list;
:class:`TupleOutput` wraps a network so that it returns the tuple (what tracing, the runtimes and ONNX export
need). It lives with the models so that both :mod:`multibox.export` and :mod:`multibox.runtime` (which builds on
the exporter) can use it without importing each other (docs/design.md, "Module map").
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["network_outputs", "TupleOutput"]


def network_outputs(out: Any) -> tuple[Tensor, Tensor]:  # noqa: ANN401
    """``(cls_logits [B, P, C], box_deltas [B, P, 4])`` from a network's output (an object with those two
    attributes, as :class:`~multibox.models.detector.SSDOutput`, or a 2-tuple / list)."""
    if hasattr(out, "cls_logits"):
        return out.cls_logits, out.box_deltas
    if isinstance(out, tuple | list) and len(out) == 2:
        return out[0], out[1]
    raise TypeError(f"the network must return (cls_logits, box_deltas), got {type(out).__name__}")


class TupleOutput(nn.Module):
    """Wraps a network so that it returns a plain ``(cls_logits [B, P, C], box_deltas [B, P, 4])`` tuple (what
    tracing and ONNX export need)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return network_outputs(self.model(x))
