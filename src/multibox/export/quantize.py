"""int8 post-training static quantization of an exported SSD network with ONNX Runtime (QDQ format).

The float graph of :func:`multibox.export.onnx.export_onnx_bytes` (``images [B, 3, H, W]`` -> ``cls_logits
[B, P, C]``, ``box_deltas [B, P, 4]``) is calibrated on real images passed through the detector's own
pre-processing (:func:`multibox.data.transforms.preprocess` with its :class:`~multibox.models.spec.InputSpec`), then
quantized by ``onnxruntime.quantization.quantize_static``: QDQ format (``QuantizeLinear`` / ``DequantizeLinear``
pairs that ONNX Runtime fuses into int8 kernels), int8 weights per output channel, int8 activations per tensor,
activation ranges from ``minmax``, ``entropy`` or ``percentile`` calibration. The graph keeps the float contract:
float32 in, float32 out, so the same post-processing (and the fused ONNX post-processing) applies.

Layers can stay in float (``keep_float``): node names, ``fnmatch`` patterns over them, or the words ``first``
(the first convolution, which sees the raw normalized pixels) and ``heads`` (the convolutions whose outputs reach
``cls_logits`` / ``box_deltas`` without another convolution in between). :func:`sensitivity` measures, per
convolution, how far the outputs move when that one layer alone is int8, and when every layer but it is int8, to
choose them (``multibox quant analyze``).

Why ONNX Runtime and not PyTorch's PT2E quantizer: the default CPU runtime of multibox is already ONNX Runtime
(``multibox.runtime.ort``), its int8 convolutions use the VNNI instructions of this CPU through MLAS, and a QDQ
graph is a file any ONNX Runtime can load; a PT2E model would need ``torch.compile`` with the x86 inductor backend
at load time. PT2E was not measured (docs/quantization.md).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data.datasets.common import IMAGE_EXTENSIONS
from ..data.image_io import load_image
from ..data.transforms import preprocess
from ..fileio import atomic_write_bytes
from ..models.qat import folded_batchnorm, has_qat, qat_convs, qat_disabled
from .onnx import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAMES, export_onnx_bytes, ort_session, require

__all__ = ["METHODS", "KEEP_FLOAT_WORDS", "inline_identity_initializers", "calibration_files", "calibration_inputs",
           "conv_nodes", "resolve_keep_float", "quantize_onnx", "sensitivity", "output_error", "export_onnx_int8",
           "qat_overrides"]

METHODS = ("minmax", "entropy", "percentile")
KEEP_FLOAT_WORDS = ("first", "heads")


def calibration_files(folder: str | os.PathLike, limit: int = 200) -> list[Path]:
    """The first ``limit`` image files of ``folder`` (recursively, sorted by path, so the choice is reproducible).

    Raises ``FileNotFoundError`` / ``ValueError`` naming ``folder`` when it is not a folder or holds no image."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder of calibration images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) to calibrate on")
    if limit < 1:
        raise ValueError(f"calibration images: need at least 1, got {limit}")
    return files[:limit]


def calibration_inputs(folder: str | os.PathLike, input_spec: Any, limit: int = 200) -> Tensor:  # noqa: ANN401
    """``[N, 3, h, w]`` float32 network inputs of the first ``limit`` images of ``folder``, pre-processed exactly as
    the detector does (``input_spec``: the detector's :class:`~multibox.models.spec.InputSpec`)."""
    batches = []
    for path in calibration_files(folder, limit):
        try:
            image = load_image(path)
        except Exception as e:  # a broken file: say which
            raise ValueError(f"{path}: cannot be read as an image ({e})") from None
        batches.append(preprocess([image], input_spec)[0])
    return torch.cat(batches)


def _load(model: bytes | Any) -> Any:  # noqa: ANN401
    onnx = require("onnx")
    return onnx.load_from_string(model) if isinstance(model, bytes) else model


def conv_nodes(model: bytes | Any) -> list[str]:  # noqa: ANN401
    """Names of the graph's ``Conv`` nodes, in graph (topological) order."""
    return [n.name for n in _load(model).graph.node if n.op_type == "Conv"]


def _head_convs(graph: Any) -> list[str]:  # noqa: ANN401
    """Convolutions from which an output (``cls_logits`` / ``box_deltas``) is reachable without another Conv."""
    producers = {o: n for n in graph.node for o in n.output}
    heads: list[str] = []
    seen: set[str] = set()
    stack = [o.name for o in graph.output]
    while stack:
        t = stack.pop()
        if t in seen or t not in producers:
            continue
        seen.add(t)
        node = producers[t]
        if node.op_type == "Conv":
            if node.name not in heads:
                heads.append(node.name)
            continue
        stack.extend(node.input)
    order = {n.name: i for i, n in enumerate(graph.node)}
    return sorted(heads, key=order.__getitem__)


def resolve_keep_float(model: bytes | Any, names: Sequence[str]) -> list[str]:  # noqa: ANN401
    """Node names to leave in float: each entry of ``names`` is ``first``, ``heads``, a node name or an ``fnmatch``
    pattern over node names. An entry that matches no node is a ``ValueError`` naming it."""
    graph = _load(model).graph
    all_names = [n.name for n in graph.node]
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    out: list[str] = []
    for entry in names:
        if entry == "first":
            found = convs[:1]
        elif entry == "heads":
            found = _head_convs(graph)
        else:
            found = [n for n in all_names if n == entry or fnmatch.fnmatchcase(n, entry)]
        if not found:
            raise ValueError(f"--keep-float {entry!r}: no node of the graph has that name or matches it (the Conv "
                             f"nodes are named like {convs[0]!r}; 'multibox quant analyze' lists them)")
        out.extend(n for n in found if n not in out)
    return out


def inline_identity_initializers(model: Any) -> int:  # noqa: ANN401
    """Replace each ``Identity`` of an initializer by a copy of that initializer under the Identity's output name
    (in place); returns how many.

    PyTorch's exporter shares equal constants: identical biases (all zeros in a freshly initialized network)
    become one initializer read through ``Identity`` nodes. ONNX Runtime's quantizer only quantizes a bias that is
    an initializer, and its int8 convolution (``QLinearConv``) needs a quantized bias: through an ``Identity`` the
    convolution stays float between ``DequantizeLinear`` and ``QuantizeLinear``, slower than fp32 (measured on
    SSD300-VGG16 with random weights: 33 of 35 convolutions left in float).
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    done = 0
    for node in [n for n in graph.node if n.op_type == "Identity"]:
        src = node.input[0]
        if src not in inits or node.output[0] in outputs:
            continue
        copy = numpy_helper.from_array(numpy_helper.to_array(inits[src]), node.output[0])
        graph.initializer.append(copy)
        graph.node.remove(node)
        done += 1
    if done:
        read = {i for n in graph.node for i in n.input} | outputs
        for t in [t for t in graph.initializer if t.name not in read]:
            graph.initializer.remove(t)
    return done


class _Reader:
    """ONNX Runtime's calibration data reader over ``[N, 3, h, w]`` inputs, one image at a time."""

    def __init__(self, inputs: Tensor) -> None:
        self.inputs = inputs
        self.rewind()

    def rewind(self) -> None:
        self._it: Iterator[Tensor] = iter(self.inputs.split(1))

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {INPUT_NAME: np.ascontiguousarray(x.numpy().astype(np.float32))}

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


def _method(method: str) -> Any:  # noqa: ANN401
    q = require("onnxruntime.quantization")
    if method not in METHODS:
        raise ValueError(f"--method {method!r}: use one of {', '.join(METHODS)}")
    return {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
            "percentile": q.CalibrationMethod.Percentile}[method]


def _entropy_ranges(src: Path, reader: _Reader, cache: Path, tmp: Path) -> None:
    """Entropy (KL) calibration of the graph at ``src`` into the range cache ``cache``, with 2048 histogram bins.

    ``quantize_static`` cannot pass the histogram size, and with ONNX Runtime's default for entropy (128 bins, as
    many as the quantized bins) the KL search has a single candidate, the full range: ``entropy`` then gives a
    graph byte-identical to ``minmax`` (measured on the face SSD with ONNX Runtime 1.32). Calibrating here with
    2048 bins (the percentile calibrator's default) and handing the ranges over through the calibration cache
    makes it an actual entropy calibration.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    calibrator = create_calibrator(src, sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
                                   augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options={"num_bins": 2048, "num_quantized_bins": 128})
    calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), cache)
    reader.rewind()


def quantize_onnx(model: bytes, calibration: Tensor, *, method: str = "minmax", per_channel: bool = True,
                  keep_float: Sequence[str] = (), only: Sequence[str] | None = None,
                  activation: str = "uint8", cache: str | os.PathLike | None = None,
                  overrides: dict[str, list[dict[str, Any]]] | None = None) -> bytes:
    """The int8 QDQ graph of the float graph ``model`` (bytes), calibrated on ``calibration`` ``[N, 3, h, w]``
    (network inputs, pre-processed).

    ``method``: activation range calibration (``minmax``, ``entropy``, ``percentile``); ``per_channel``: weights
    per output channel; ``keep_float``: entries for :func:`resolve_keep_float`; ``only``: quantize these nodes and
    no other (sensitivity analysis); ``activation``: ``"uint8"`` (u8 activations x s8 weights, the VNNI
    instruction's native pair) or ``"int8"``; ``cache``: a file for the calibrated ranges (reused when it exists,
    so several quantizations of one graph calibrate once); ``overrides``: ONNX Runtime ``TensorQuantOverrides``
    (tensor name -> ``[{"rmin": ..., "rmax": ...}]``), the ranges a quantization-aware trained model learned
    (:func:`qat_overrides`); the other tensors are calibrated.
    """
    q = require("onnxruntime.quantization")
    onnx = require("onnx")
    if calibration.dim() != 4 or calibration.shape[0] < 1:
        raise ValueError(f"calibration inputs must be [N, 3, h, w] with N >= 1, got {tuple(calibration.shape)}")
    if activation not in ("uint8", "int8"):
        raise ValueError(f"activation must be 'uint8' or 'int8', got {activation!r}")
    exclude = resolve_keep_float(model, keep_float) if keep_float else []
    graph = onnx.load_from_string(model)
    if inline_identity_initializers(graph):
        model = graph.SerializeToString()
    act = q.QuantType.QUInt8 if activation == "uint8" else q.QuantType.QInt8
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static logs a pre-processing hint at WARNING level
    try:  # the histogram calibrators print their progress: kept off standard output (`--json -` writes there)
        with tempfile.TemporaryDirectory(prefix="multibox-int8-") as tmp, contextlib.redirect_stdout(io.StringIO()):
            src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(model)
            reader = _Reader(calibration)
            if method == "entropy" and (cache is None or not Path(cache).is_file()):
                cache = Path(cache) if cache is not None else Path(tmp) / "entropy-ranges.json"
                _entropy_ranges(src, reader, cache, Path(tmp))
            q.quantize_static(str(src), str(dst), reader, quant_format=q.QuantFormat.QDQ,
                              op_types_to_quantize=None, per_channel=per_channel, reduce_range=False,
                              activation_type=act, weight_type=q.QuantType.QInt8,
                              nodes_to_exclude=exclude, nodes_to_quantize=list(only) if only is not None else None,
                              calibrate_method=_method(method),
                              calibration_cache_path=str(cache) if cache is not None else None,
                              extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                             **({"TensorQuantOverrides": overrides} if overrides else {})})
            out = onnx.load(str(dst))
    finally:
        logging.getLogger().setLevel(quiet)
    return out.SerializeToString()


def _run(model: bytes, inputs: Tensor, threads: int | None = None) -> list[np.ndarray]:
    session = ort_session(model, threads)
    outs = [session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()}) for x in inputs.split(1)]
    return [np.concatenate([o[i] for o in outs]) for i in range(len(OUTPUT_NAMES))]


def output_error(got: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> dict[str, float]:
    """Relative RMS error of each output against ``ref`` (RMS of the difference over the RMS of ``ref``'s
    deviation from its mean): ``{"cls_logits": e1, "box_deltas": e2, "total": e1 + e2}``."""
    err = {}
    for name, a, b in zip(OUTPUT_NAMES, got, ref, strict=True):
        scale = float(np.sqrt(np.mean((b - b.mean()) ** 2))) or 1.0
        err[name] = float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2))) / scale
    err["total"] = err[OUTPUT_NAMES[0]] + err[OUTPUT_NAMES[1]]
    return err


def sensitivity(model: bytes, calibration: Tensor, inputs: Tensor, *, method: str = "minmax",
                per_channel: bool = True, layers: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-layer int8 sensitivity of the float graph ``model`` (bytes).

    Calibrates once on ``calibration`` ``[N, 3, h, w]``, then for each ``Conv`` (or each of ``layers``) quantizes
    that layer alone (``alone``: its output error, :func:`output_error`, on ``inputs`` ``[M, 3, h, w]`` against
    the float graph) and every layer but it (``all_but``: how much keeping it in float recovers). Returns
    ``{"method", "all_int8": error, "layers": [{"name", "index", "alone", "all_but", "recovered"}, ...]}``
    (``layers`` sorted by ``alone["total"]``, the most sensitive first; ``recovered``: the all-int8 total error
    minus the ``all_but`` one).
    """
    names = list(layers) if layers is not None else conv_nodes(model)
    ref = _run(model, inputs)
    with tempfile.TemporaryDirectory(prefix="multibox-sens-") as tmp:
        cache = Path(tmp) / "ranges.json"
        full = output_error(_run(quantize_onnx(model, calibration, method=method, per_channel=per_channel,
                                               cache=cache), inputs), ref)
        rows = []
        order = {n: i for i, n in enumerate(conv_nodes(model))}
        for name in names:
            alone = output_error(_run(quantize_onnx(model, calibration, method=method, per_channel=per_channel,
                                                    only=[name], cache=cache), inputs), ref)
            but = output_error(_run(quantize_onnx(model, calibration, method=method, per_channel=per_channel,
                                                  keep_float=[name], cache=cache), inputs), ref)
            rows.append({"name": name, "index": order.get(name, -1), "alone": alone, "all_but": but,
                         "recovered": full["total"] - but["total"]})
    rows.sort(key=lambda r: -r["alone"]["total"] if math.isfinite(r["alone"]["total"]) else -math.inf)
    return {"method": method, "per_channel": per_channel, "calibration_images": int(calibration.shape[0]),
            "eval_images": int(inputs.shape[0]), "all_int8": full, "layers": rows}


def qat_overrides(model: torch.nn.Module, graph: bytes, example: Tensor) -> dict[str, list[dict[str, Any]]]:
    """ONNX Runtime ``TensorQuantOverrides`` holding the ranges learned by the
    :class:`~multibox.models.qat.QATConv2d` layers of ``model`` for its float graph ``graph`` (exported from
    ``model`` with the fake quantization off): each QAT conv's input range on the input tensor of its ``Conv``
    node, and for the prediction convs the output range on the node's output.

    The convolutions are matched to the graph's ``Conv`` nodes by execution order (recorded by running ``model``
    on ``example`` ``[1, 3, h, w]``) and checked by weight shape; a mismatch is a ``ValueError``. The output range
    of a :class:`~multibox.models.qat.QATBatchNorm2d` goes on its conv's output (the exporter folds it in). The
    activation ranges are ``{"rmin", "rmax"}`` float32, from which ONNX Runtime computes the same uint8 scale and
    zero point as :func:`multibox.models.qat.activation_qparams`.
    """
    from onnx import numpy_helper

    onnx_model = _load(graph)
    inits = {t.name: t for t in onnx_model.graph.initializer}
    nodes = [n for n in onnx_model.graph.node if n.op_type == "Conv"]
    order: list[torch.nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad(), qat_disabled(model):
            model.eval()(example[:1])
    finally:
        for h in hooks:
            h.remove()
    if len(order) != len(nodes):
        raise ValueError(f"the float graph has {len(nodes)} Conv nodes but the model ran {len(order)} "
                         "convolutions: cannot match the QAT ranges to the graph")
    wanted = {id(m) for _, m in qat_convs(model)}
    out: dict[str, list[dict[str, Any]]] = {}

    def put(name: str, rng: Tensor) -> None:
        lo, hi = (float(v) for v in rng.detach().cpu())
        if name in out:  # one tensor read by several convs (the heads): they observed the same values
            lo, hi = min(lo, float(out[name][0]["rmin"])), max(hi, float(out[name][0]["rmax"]))
        out[name] = [{"rmin": np.array(lo, dtype=np.float32), "rmax": np.array(hi, dtype=np.float32)}]

    for mod, node in zip(order, nodes, strict=True):
        shape = tuple(mod.weight.shape)
        init = inits.get(node.input[1])
        got = tuple(numpy_helper.to_array(init).shape) if init is not None else None
        if got is not None and got != shape:
            raise ValueError(f"Conv node {node.name!r} has a weight of shape {got}, the model's conv at that "
                             f"place {shape}: cannot match the QAT ranges to the graph")
        if id(mod) not in wanted:
            continue
        if bool(mod.observed[0]):
            put(node.input[0], mod.act_range)
        if mod.quant_output and bool(mod.observed[1]):
            put(node.output[0], mod.out_range)
        bn = folded_batchnorm(mod)
        # the folded BatchNorm's output is the Conv node's; not when ONNX Runtime removes a Relu / Clip after it
        # and quantizes that one's output range instead
        if bn is not None and bool(bn.observed[0]) and not any(
                n.op_type in ("Relu", "Clip") for n in onnx_model.graph.node if node.output[0] in n.input):
            put(node.output[0], bn.out_range)
    head = getattr(model, "head", None)
    observed = getattr(head, "qat_out_observed", None)
    if observed is not None:  # the concatenated outputs (the graph's outputs)
        for k, name in enumerate(OUTPUT_NAMES):
            if bool(observed[k]):
                put(name, head.qat_out_range[k])
    return out


def export_onnx_int8(model: nn.Module, path: str | os.PathLike, input_spec: Any, calibrate: str | os.PathLike,  # noqa: ANN401
                     *, calib_images: int = 200, method: str = "minmax", keep_float: Sequence[str] = (),
                     batch_size: int = 1, dynamic_batch: bool = True, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Write the int8 QDQ graph of ``model``'s network to ``path`` (atomically): the float graph of
    :func:`~multibox.export.onnx.export_onnx_bytes` (input ``images [batch_size, 3, h, w]``, ``h, w`` =
    ``input_spec.image_size``; outputs ``cls_logits [B, P, C]``, ``box_deltas [B, P, 4]``), quantized by
    :func:`quantize_onnx` after calibration on the first ``calib_images`` images of ``calibrate`` pre-processed with
    ``input_spec`` (:func:`calibration_inputs`). The network only: the post-processing is appended by the runtime
    ``onnxruntime-int8``.

    Returns the summary of :func:`~multibox.export.onnx.export_onnx` (``max_abs_diff`` is ``None``: the int8 graph
    is approximate by design) with ``"int8": {"method", "calibrate", "calibration_images", "float_nodes",
    "per_channel", "format", "error"}`` (``error``: :func:`output_error` of the int8 graph against the float one on
    up to 16 calibration images).
    """
    h, w = (int(v) for v in input_spec.image_size)
    model = model.eval().cpu()
    example = torch.randn(batch_size, 3, h, w, generator=torch.Generator().manual_seed(0))
    qat = has_qat(model)
    with qat_disabled(model):  # a QAT model: the float graph of its latent weights, quantized with its ranges
        float_data = export_onnx_bytes(model, example, dynamic_batch=dynamic_batch, opset=opset)
    calib = calibration_inputs(calibrate, input_spec, int(calib_images))
    keep = list(keep_float)
    float_nodes = resolve_keep_float(float_data, keep) if keep else []
    overrides = qat_overrides(model, float_data, example) if qat else None
    data = quantize_onnx(float_data, calib, method=method, keep_float=keep, overrides=overrides)
    sample = calib[:16]
    got = _run(data, sample)
    error = output_error(got, _run(float_data, sample))
    atomic_write_bytes(Path(path), data)
    info = {"path": str(path), "bytes": len(data), "opset": opset, "input": [batch_size, 3, h, w],
            "dynamic_batch": dynamic_batch, "outputs": list(OUTPUT_NAMES), "max_abs_diff": None,
            "int8": {"method": method, "calibrate": str(calibrate), "calibration_images": int(calib.shape[0]),
                     "float_nodes": float_nodes, "per_channel": True, "format": "QDQ", "error": error}}
    if qat:  # the int8 graph against what the QAT model computed (its fake-quantized PyTorch outputs)
        with torch.inference_mode():
            fq = [t.numpy() for t in model(sample)]
        info["int8"]["qat"] = {"ranges_from_training": len(overrides or {}),
                               "error_vs_fake_quant": output_error(got, fq)}
    return info
