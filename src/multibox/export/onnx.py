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

import importlib
import importlib.util
import io
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..fileio import atomic_write_bytes
from ..models.outputs import TupleOutput
from ..models.qat import qat_disabled
from .onnx_postprocess import POSTPROCESS_OUTPUTS, append_postprocess, postprocess_graph_from

# onnx (about 0.6 s to import) stays inside the functions that build graphs: this module loads with every Detector
# (the runtime registry imports multibox.runtime.ort), and the eager / jit runtimes need no onnx

__all__ = ["OnnxRuntimeNetwork", "OnnxUnavailable", "export_onnx_bytes", "export_onnx", "fold_zero_pads", "keep_input",
           "onnxruntime_available", "ort_session", "INPUT_NAME", "OUTPUT_NAMES", "require"]

INPUT_NAME = "images"
OUTPUT_NAMES = ("cls_logits", "box_deltas")
DEFAULT_OPSET = 17


class OnnxUnavailable(ImportError):
    """``onnx`` or ``onnxruntime`` is not installed."""


def onnxruntime_available() -> bool:
    """Whether both ``onnx`` (for the export) and ``onnxruntime`` (to run it) can be imported."""
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def require(module: str) -> Any:  # noqa: ANN401
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise OnnxUnavailable(f"{module} is not installed: pip install onnx onnxruntime ({e})") from None


def ort_session(model: bytes | str, threads: int | None = None, optimize: bool = True) -> Any:  # noqa: ANN401
    """An ONNX Runtime CPU session of ``model`` (bytes or path): ``threads`` intra-op threads (default
    ``torch.get_num_threads()``, so both backends use the same cores), one inter-op thread, sequential execution,
    all graph optimizations (``optimize``), warnings off."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def export_onnx_bytes(model: nn.Module, example: Tensor, *, dynamic_batch: bool = False,
                      opset: int = DEFAULT_OPSET) -> bytes:
    """The ONNX model of ``model`` (in eval mode, on CPU) traced on ``example`` ``[B, 3, H, W]``, as bytes.

    ``dynamic_batch``: the batch axis is symbolic (any batch size runs), else fixed to ``B``.
    Raises :class:`OnnxUnavailable` when ``onnx`` is missing and ``ValueError`` for an ``opset`` the exporter
    does not support.
    """
    require("onnx")
    wrapper = TupleOutput(model).eval()
    buf = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(wrapper, (example.detach().cpu().float(),), buf, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
                              do_constant_folding=True)
        except RuntimeError as e:
            if "opset" not in str(e).lower():
                raise
            raise ValueError(f"opset {opset}: not supported by this PyTorch's ONNX exporter ({e}); "
                             f"the default is {DEFAULT_OPSET}") from None
    onnx = require("onnx")
    graph = onnx.load_from_string(buf.getvalue())
    changed = keep_input(graph, list(example.shape), dynamic_batch)
    if fold_zero_pads(graph) or changed:
        return graph.SerializeToString()
    return buf.getvalue()


def keep_input(model: Any, shape: Sequence[int], dynamic_batch: bool) -> bool:  # noqa: ANN401
    """Declare the graph input ``images`` (float32 ``shape`` ``[B, 3, H, W]``, ``B`` symbolic with
    ``dynamic_batch``) when the exporter left it out (in place); returns whether it did.

    PyTorch's exporter drops an input that no output depends on: a network whose outputs are constants for a fixed
    batch size (a test double, a network that only reads the input's shape) came out as a graph without inputs,
    which every runner of the ``images -> (cls_logits, box_deltas)`` contract fails to feed (ONNX Runtime runs
    the graph but the runtime found no input to name: ``IndexError``, and the Detector fell back to eager mode).
    An unread input is valid ONNX and ONNX Runtime accepts a value for it.
    """
    onnx = require("onnx")
    if any(i.name == INPUT_NAME for i in model.graph.input):
        return False
    dims: list[Any] = ["batch" if dynamic_batch else int(shape[0]), *(int(v) for v in shape[1:])]
    model.graph.input.insert(0, onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, dims))
    return True


def _constant_value(opsets: Any, name: str, producers: dict[str, Any], initializers: dict[str, Any]  # noqa: ANN401
                    ) -> np.ndarray | None:
    """The value of tensor ``name`` when it depends on constants only (``None`` otherwise), computed by evaluating
    its ancestor nodes with ONNX's reference evaluator."""
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    nodes: list[Any] = []
    used_inits: dict[str, Any] = {}
    seen: set[str] = set()

    def visit(t: str) -> bool:
        if t == "" or t in seen:
            return True
        seen.add(t)
        if t in initializers:
            used_inits[t] = initializers[t]
            return True
        node = producers.get(t)
        if node is None:  # a graph input: not a constant
            return False
        if not all(visit(i) for i in node.input):
            return False
        if node not in nodes:
            nodes.append(node)
        return True

    if not visit(name) or len(nodes) > 64:
        return None
    sub = onnx.helper.make_graph(nodes, "const", [], [onnx.ValueInfoProto(name=name)],
                                 initializer=list(used_inits.values()))
    model = onnx.helper.make_model(sub, opset_imports=list(opsets))
    try:
        return np.asarray(ReferenceEvaluator(model).run(None, {})[0])
    except Exception:  # an op the reference evaluator lacks: leave the graph as it is
        return None


def fold_zero_pads(model: Any) -> int:  # noqa: ANN401
    """Fold each zero-constant ``Pad`` that feeds only a ``Conv`` into that ``Conv``'s ``pads`` (in place).

    ``Conv2dSame`` (TensorFlow's ``"SAME"`` padding of stride-2 convolutions: the extra pixel bottom / right)
    exports as ``Pad -> Conv`` because PyTorch convolutions pad symmetrically; ONNX ``Conv`` takes asymmetric
    ``pads`` itself. The separate ``Pad`` costs a pass over the activation and, in ONNX Runtime, breaks its
    blocked-layout (NCHWc) chain: on the zoo's person SSDLite its 9 pads and the layout reorders around them were
    2.3 of 10.8 ms. Returns the number of pads folded; the dead nodes and initializers left are removed.
    """
    from onnx.helper import make_attribute as onnx_helper_attribute

    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    initializers = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    folded = 0
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        attrs = {a.name: a for a in pad.attribute}
        mode = attrs["mode"].s.decode() if "mode" in attrs else "constant"
        users = consumers.get(pad.output[0], [])
        if mode != "constant" or pad.output[0] in outputs or len(users) != 1 or users[0].op_type != "Conv":
            continue
        conv = users[0]
        conv_attrs = {a.name: a for a in conv.attribute}
        auto_pad = conv_attrs["auto_pad"].s.decode() if "auto_pad" in conv_attrs else "NOTSET"
        if conv.input[0] != pad.output[0] or auto_pad not in ("", "NOTSET"):
            continue
        if len(pad.input) > 3 and pad.input[3]:  # axes given: not handled
            continue
        if len(pad.input) > 2 and pad.input[2]:
            value = _constant_value(model.opset_import, pad.input[2], producers, initializers)
            if value is None or value.size != 1 or float(value.reshape(-1)[0]) != 0.0:
                continue
        pads = _constant_value(model.opset_import, pad.input[1], producers, initializers)
        if pads is None or pads.size != 8:
            continue
        pads = [int(v) for v in pads.reshape(-1)]
        if pads[0] or pads[1] or pads[4] or pads[5] or min(pads) < 0:  # batch / channel padding, or cropping
            continue
        old = list(conv_attrs["pads"].ints) if "pads" in conv_attrs else [0, 0, 0, 0]
        new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
        if "pads" in conv_attrs:
            conv.attribute.remove(conv_attrs["pads"])
        conv.attribute.append(onnx_helper_attribute("pads", new))
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)
        folded += 1
    if folded:
        _remove_dead(graph)
    return folded


def _remove_dead(graph: Any) -> None:  # noqa: ANN401
    """Drop nodes whose outputs nobody reads (repeatedly) and initializers nobody reads."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input} | outputs
    for t in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(t)


def export_onnx(model: nn.Module, path: str | os.PathLike, image_size: Sequence[int], *, batch_size: int = 1,
                dynamic_batch: bool = True, opset: int = DEFAULT_OPSET, check: bool = True,
                postprocess: nn.Module | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """Write ``model``'s ONNX graph to ``path`` (atomically) for input ``[batch_size, 3, *image_size]``.

    ``postprocess``: a :class:`~multibox.postprocess.PostProcess` to append as ONNX operators (decoding and NMS,
    :mod:`multibox.export.onnx_postprocess`; ``num_classes`` = ``C`` of the logits): the graph then outputs
    ``boxes [B, K, 4]`` (normalized xyxy), ``scores [B, K]``, ``labels [B, K]`` and ``num_detections [B]``.
    With ``check`` (and ``onnxruntime`` installed) the exported graph is run on a random input and compared with
    PyTorch. Returns ``{"path", "bytes", "opset", "input": [B, 3, H, W], "dynamic_batch", "outputs",
    "max_abs_diff"}`` (``max_abs_diff``: of the network outputs, or of the detections' scores and boxes when they
    agree in number and labels (else ``inf``); ``None`` without the check). The int8 graph is written by
    :func:`multibox.export.quantize.export_onnx_int8`.
    """
    h, w = (int(v) for v in image_size)
    model = model.eval().cpu()
    example = torch.randn(batch_size, 3, h, w, generator=torch.Generator().manual_seed(0))
    with qat_disabled(model):  # a QAT model: the float graph of its latent weights (int8 below uses its ranges)
        data = export_onnx_bytes(model, example, dynamic_batch=dynamic_batch, opset=opset)
    outputs = list(OUTPUT_NAMES)
    if postprocess is not None:
        onnx = require("onnx")
        if num_classes is None:
            raise ValueError("num_classes is needed to export the post-processing")
        if opset != DEFAULT_OPSET:
            raise ValueError(f"the post-processing graph is built for opset {DEFAULT_OPSET}, not {opset}")
        merged = append_postprocess(onnx.load_from_string(data), postprocess_graph_from(postprocess, num_classes))
        data = merged.SerializeToString()
        outputs = list(POSTPROCESS_OUTPUTS)
    diff = None
    if check and onnxruntime_available():
        with torch.inference_mode(), qat_disabled(model):
            ref = TupleOutput(model)(example)
        if postprocess is None:
            got = OnnxRuntimeNetwork(data)(example)
            diff = max(float((a - b).abs().max()) for a, b in zip(got, ref, strict=True))
        else:
            diff = _detections_diff(data, example, postprocess.forward_padded(*ref))
    atomic_write_bytes(Path(path), data)
    return {"path": str(path), "bytes": len(data), "opset": opset, "input": [batch_size, 3, h, w],
            "dynamic_batch": dynamic_batch, "outputs": outputs, "max_abs_diff": diff}


def _detections_diff(data: bytes, example: Tensor, ref: Any) -> float:  # noqa: ANN401
    """Largest score / box difference between the exported graph's detections and ``ref`` (``PaddedDetections``);
    ``inf`` when the counts or labels differ."""
    boxes, scores, labels, num = ort_session(data).run(None, {INPUT_NAME: example.numpy()})
    valid = ref.valid.numpy()
    if not (num == valid.sum(1)).all():
        return math.inf
    k = min(valid.shape[1], scores.shape[1])
    if not (labels[:, :k][valid[:, :k]] == ref.labels.numpy()[:, :k][valid[:, :k]]).all():
        return math.inf
    if not valid.any():
        return 0.0
    mask = valid[:, :k]
    return float(max(np.abs(scores[:, :k][mask] - ref.scores.numpy()[:, :k][mask]).max(),
                     np.abs(boxes[:, :k][mask] - ref.boxes.numpy()[:, :k][mask]).max()))


class OnnxRuntimeNetwork:
    """An exported SSD network on ONNX Runtime's CPU provider, called like the PyTorch network.

    ``net(x)``: ``x [B, 3, H, W]`` float32 tensor -> ``(cls_logits [B, P, C], box_deltas [B, P, 4])`` float32
    tensors on the CPU. ``threads``: intra-op threads (default ``torch.get_num_threads()``, so both backends use
    the same cores).
    """

    def __init__(self, model: bytes | str | os.PathLike, threads: int | None = None) -> None:
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort_session(source, threads)
        except OnnxUnavailable:
            raise
        except Exception as e:  # onnxruntime raises its own exception types
            where = "the exported graph" if isinstance(model, bytes) else str(model)
            raise ValueError(f"{where}: onnxruntime cannot load it ({e})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            where = "the exported graph" if isinstance(model, bytes) else str(model)
            raise ValueError(f"{where}: expected an SSD graph with 1 input (images), got "
                             f"{[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        if len(self.output_names) != 2:
            raise ValueError(f"expected an SSD graph with 2 outputs (cls_logits, box_deltas), got {self.output_names}")

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
        cls_logits, box_deltas = self.session.run(self.output_names, {self.input_name: arr})
        return torch.from_numpy(cls_logits), torch.from_numpy(box_deltas)
