"""ONNX export of an SSD network and an ONNX Runtime runner for it.

The exported graph is the network only: input ``images`` ``[B, 3, H, W]`` float32, already resized and normalized
as the detector's :class:`~multibox.models.spec.InputSpec` says; outputs ``cls_logits`` ``[B, P, C]`` (raw class
scores, background at index 0) and ``box_deltas`` ``[B, P, 4]`` (encoded offsets against the priors, in the
bundle's box coding). Decoding and NMS stay in :class:`~multibox.postprocess.PostProcess`.

The export uses PyTorch's TorchScript-based ONNX exporter (``torch.onnx.export(dynamo=False)``, which needs the
``onnx`` package); :class:`OnnxRuntimeNetwork` runs the result with ``onnxruntime`` on the CPU
(``CPUExecutionProvider``, all graph optimizations, the thread count of ``torch.get_num_threads()``).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..fileio import atomic_write_bytes

__all__ = ["OnnxRuntimeNetwork", "OnnxUnavailable", "export_onnx_bytes", "export_onnx", "onnxruntime_available",
           "INPUT_NAME", "OUTPUT_NAMES", "require"]

INPUT_NAME = "images"
OUTPUT_NAMES = ("cls_logits", "box_deltas")
DEFAULT_OPSET = 17


class OnnxUnavailable(ImportError):
    """``onnx`` or ``onnxruntime`` is not installed."""


def onnxruntime_available() -> bool:
    """Whether both ``onnx`` (for the export) and ``onnxruntime`` (to run it) can be imported."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def require(module: str) -> Any:  # noqa: ANN401
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise OnnxUnavailable(f"{module} is not installed: pip install onnx onnxruntime ({e})") from None


class _Outputs(nn.Module):
    """``model(x)`` as a plain ``(cls_logits, box_deltas)`` tuple, whatever the model returns."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(x)
        if hasattr(out, "cls_logits"):
            return out.cls_logits, out.box_deltas
        return out[0], out[1]


def export_onnx_bytes(model: nn.Module, example: Tensor, *, dynamic_batch: bool = False,
                      opset: int = DEFAULT_OPSET) -> bytes:
    """The ONNX model of ``model`` (in eval mode, on CPU) traced on ``example`` ``[B, 3, H, W]``, as bytes.

    ``dynamic_batch``: the batch axis is symbolic (any batch size runs), else fixed to ``B``.
    Raises :class:`OnnxUnavailable` when ``onnx`` is missing.
    """
    require("onnx")
    wrapper = _Outputs(model).eval()
    buf = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example.detach().cpu().float(),), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
                          do_constant_folding=True)
    return buf.getvalue()


def export_onnx(model: nn.Module, path: str | os.PathLike, image_size: Sequence[int], *, batch_size: int = 1,
                dynamic_batch: bool = True, opset: int = DEFAULT_OPSET, check: bool = True) -> dict[str, Any]:
    """Write ``model``'s ONNX graph to ``path`` (atomically) for input ``[batch_size, 3, *image_size]``.

    With ``check`` (and ``onnxruntime`` installed) the exported graph is run on a random input and compared with
    PyTorch. Returns ``{"path", "bytes", "opset", "input": [B, 3, H, W], "dynamic_batch", "max_abs_diff"}``
    (``max_abs_diff`` of the two outputs, ``None`` without the check).
    """
    h, w = (int(v) for v in image_size)
    model = model.eval().cpu()
    example = torch.randn(batch_size, 3, h, w, generator=torch.Generator().manual_seed(0))
    data = export_onnx_bytes(model, example, dynamic_batch=dynamic_batch, opset=opset)
    diff = None
    if check and onnxruntime_available():
        net = OnnxRuntimeNetwork(data)
        with torch.inference_mode():
            ref = _Outputs(model)(example)
        got = net(example)
        diff = max(float((a - b).abs().max()) for a, b in zip(got, ref, strict=True))
    atomic_write_bytes(Path(path), data)
    return {"path": str(path), "bytes": len(data), "opset": opset, "input": [batch_size, 3, h, w],
            "dynamic_batch": dynamic_batch, "max_abs_diff": diff}


class OnnxRuntimeNetwork:
    """An exported SSD network on ONNX Runtime's CPU provider, called like the PyTorch network.

    ``net(x)``: ``x [B, 3, H, W]`` float32 tensor -> ``(cls_logits [B, P, C], box_deltas [B, P, 4])`` float32
    tensors on the CPU. ``threads``: intra-op threads (default ``torch.get_num_threads()``, so both backends use
    the same cores).
    """

    def __init__(self, model: bytes | str | os.PathLike, threads: int | None = None) -> None:
        ort = require("onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            where = "the exported graph" if isinstance(model, bytes) else str(model)
            raise ValueError(f"{where}: onnxruntime cannot load it ({e})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        if len(self.output_names) != 2:
            raise ValueError(f"expected an SSD graph with 2 outputs (cls_logits, box_deltas), got {self.output_names}")

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
        cls_logits, box_deltas = self.session.run(self.output_names, {self.input_name: arr})
        return torch.from_numpy(cls_logits), torch.from_numpy(box_deltas)
