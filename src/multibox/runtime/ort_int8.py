"""The ``onnxruntime-int8`` runtime: the network as an int8 QDQ graph (:mod:`multibox.export.quantize`) on ONNX
Runtime's CPU provider. Approximate by design (``exact = False``), so ``"auto"`` never picks it; it is asked for by
name with one of two options (``Detector(..., runtime="onnxruntime-int8", runtime_options={...})``,
``multibox detect/eval --runtime onnxruntime-int8 --int8-model F`` or ``--calibrate DIR``):

* ``model``: an int8 graph written by ``multibox export onnx MODEL --int8 --calibrate DIR`` (the deployment path:
  calibrated once, loaded in milliseconds); its input must have the detector's size;
* ``calibrate``: a folder of images; the network is exported and quantized when the runtime is built, calibrated
  on the first ``calib_images`` (default 200) images of the folder passed through the detector's own
  pre-processing, with ``method`` (``minmax``, ``entropy``, ``percentile``) and ``keep_float`` (node names or the
  words ``first`` / ``heads``), the same as the export's options. The graph is built once per detector, with a
  dynamic batch axis, and reused for every batch size.

The network callable is :class:`multibox.runtime.ort.OrtNetwork`, so the decoding and NMS can run in the same
graph; the Detector checks that fused post-processing against PyTorch's on the int8 outputs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..export.onnx import export_onnx_bytes, require
from ..export.quantize import METHODS, calibration_inputs, qat_overrides, quantize_onnx
from ..models.qat import has_qat, qat_disabled
from .base import Runtime, register_runtime
from .ort import OrtNetwork

__all__ = ["OnnxRuntimeInt8", "OPTIONS"]

OPTIONS = ("model", "calibrate", "calib_images", "method", "keep_float")


class OnnxRuntimeInt8(Runtime):
    """int8 (QDQ) ONNX graphs on ONNX Runtime's CPU provider; see the module docstring for the options."""

    name: ClassVar[str] = "onnxruntime-int8"
    auto_rank: ClassVar[dict[str, int]] = {}
    description: ClassVar[str] = ("int8 ONNX graph on ONNX Runtime, CPU (from 'export onnx --int8', or calibrated "
                                  "on a folder of images); approximate, never chosen by auto")
    exact: ClassVar[bool] = False

    def __init__(self, options: Mapping[str, Any] | None = None, input_spec: Any = None) -> None:  # noqa: ANN401
        self.options = dict(options or {})
        self.input_spec = input_spec
        self._graph: bytes | None = None

    def configure(self, options: Mapping[str, Any], input_spec: Any = None) -> OnnxRuntimeInt8:  # noqa: ANN401
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"runtime {self.name!r}: unknown option(s) {', '.join(unknown)} (known: "
                             f"{', '.join(OPTIONS)})")
        opts = {k: v for k, v in options.items() if v is not None}
        if ("model" in opts) == ("calibrate" in opts):
            raise ValueError(f"runtime {self.name!r} needs either an int8 graph (model=FILE.onnx, written by "
                             "'multibox export onnx MODEL --int8 --calibrate DIR') or calibration images "
                             "(calibrate=DIR), not " + ("both" if opts.get("model") else "neither"))
        if "model" in opts:
            extra = sorted(set(opts) & {"calib_images", "method", "keep_float"})
            if extra:
                raise ValueError(f"runtime {self.name!r}: {', '.join(extra)} only apply with calibrate=DIR")
            if not Path(opts["model"]).is_file():
                raise FileNotFoundError(f"{opts['model']}: no such int8 ONNX graph")
        else:
            if not Path(opts["calibrate"]).is_dir():
                raise FileNotFoundError(f"{opts['calibrate']}: not a folder of calibration images")
            if opts.get("method", "minmax") not in METHODS:
                raise ValueError(f"method {opts['method']!r}: use one of {', '.join(METHODS)}")
            if int(opts.get("calib_images", 200)) < 1:
                raise ValueError(f"calib_images must be >= 1, got {opts['calib_images']}")
            if input_spec is None:
                raise ValueError(f"runtime {self.name!r}: calibrate=DIR needs the detector's input spec")
        return OnnxRuntimeInt8(opts, input_spec)

    def check(self, device: torch.device) -> None:
        if device.type != "cpu":
            raise ValueError(f"runtime {self.name!r} runs on the CPU only, not {device}")
        require("onnx")
        require("onnxruntime")
        if not self.options:
            raise ValueError(f"runtime {self.name!r} needs runtime_options: model=FILE.onnx (an int8 graph) or "
                             "calibrate=DIR (images to calibrate on); on the command line --int8-model or "
                             "--calibrate")

    def available(self, device: torch.device) -> bool:
        return bool(self.options) and device.type == "cpu" and \
            all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))

    def graph(self, model: nn.Module, example: Tensor) -> bytes:
        """The int8 graph (read or quantized once, then reused for every batch size)."""
        if self._graph is None:
            if "model" in self.options:
                self._graph = Path(self.options["model"]).read_bytes()
            else:
                calib = calibration_inputs(self.options["calibrate"], self.input_spec,
                                           int(self.options.get("calib_images", 200)))
                model = model.eval().cpu()
                with qat_disabled(model):  # a QAT model: its latent float weights, and its ranges below
                    float_graph = export_onnx_bytes(model, example[:1].cpu(), dynamic_batch=True)
                overrides = qat_overrides(model, float_graph, example[:1].cpu()) if has_qat(model) else None
                self._graph = quantize_onnx(float_graph, calib, method=self.options.get("method", "minmax"),
                                            keep_float=list(self.options.get("keep_float") or ()),
                                            overrides=overrides)
        return self._graph

    def build(self, model: nn.Module, example: Tensor) -> OrtNetwork:
        net = OrtNetwork(self.graph(model, example))
        shape = net.network.session.get_inputs()[0].shape  # [B, 3, H, W], B symbolic for a dynamic batch axis
        want = list(example.shape)
        if len(shape) != 4 or any(isinstance(s, int) and s != w for s, w in zip(shape[1:], want[1:], strict=True)) \
                or isinstance(shape[0], int) and shape[0] != want[0]:
            where = self.options.get("model", "the int8 graph")
            raise ValueError(f"{where}: its input is {shape}, the detector's batch is {want} (export it from this "
                             "detector; without --static-batch for any batch size)")
        return net


register_runtime(OnnxRuntimeInt8())
