"""multibox: an SSD (Single Shot MultiBox Detector) toolkit on PyTorch.

Public API: :func:`build_model`, :func:`list_models`, :class:`SSD`, :class:`PostProcess`, :class:`Detections`,
:class:`PriorBoxGenerator`, :class:`BoxCoder`, :class:`MultiBoxLoss`, :func:`build_targets`. They are imported
on first use, so that ``import multibox`` (and the command line's ``--help``) stays fast.
"""

from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "BoxCoder": "box_coder",
    "Detections": "detections",
    "Detector": "detector",
    "MultiBoxLoss": "loss",
    "PostProcess": "postprocess",
    "PriorBoxGenerator": "anchors",
    "PriorConfig": "anchors",
    "PriorLevel": "anchors",
    "get_prior_preset": "anchors",
    "SSD": "models",
    "build_model": "models",
    "list_models": "models",
    "build_targets": "matching",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
