"""SSD decoding and NMS as an ONNX graph, to append to an exported network (``multibox export onnx --postprocess``).

The graph reproduces :func:`multibox.postprocess.detection_output` with standard ONNX operators (opset 17), for
any batch size:

* scores: ``Softmax`` over the classes (or ``Sigmoid`` per class for ``score="sigmoid"``); the background class
  (``background_index``) is never reported;
* boxes: ``CENTER_SIZE`` decoding against the priors with the variances, the log-scale clamped at ``max_log_scale``
  exactly as :class:`multibox.box_coder.BoxCoder`, then ``xyxy``; ``clip=True`` clips to [0, 1] before NMS,
  ``"after"`` after it;
* ``per_class`` (Caffe ``DetectionOutput``): per image and class, the ``top_k`` best priors, then
  ``NonMaxSuppression`` (IoU > ``nms_threshold`` suppresses; scores must exceed ``conf_threshold``), each
  (image, class) pair being one NMS batch; ``global``: one NMS per image over each prior's best class;
* per image the ``keep_top_k`` best survivors, ordered by score.

Inputs ``cls_logits [B, P, C]`` and ``box_deltas [B, P, 4]`` (the network's outputs); outputs ``boxes [B, K, 4]``
(normalized ``x1, y1, x2, y2``), ``scores [B, K]``, ``labels [B, K]`` (int64 class indices), ``num_detections
[B]`` (int64), with ``K = keep_top_k``; rows past ``num_detections`` are zero. Equal scores may come out in another
order than :func:`detection_output`'s (ties are broken by ONNX Runtime's NMS order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

# onnx (about 0.6 s to import) stays inside the graph builders: multibox.runtime.ort imports this module with every
# Detector, and only the onnxruntime path and 'multibox export onnx --postprocess' build these graphs

__all__ = ["postprocess_graph", "postprocess_graph_from", "append_postprocess", "POSTPROCESS_OUTPUTS"]

POSTPROCESS_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
_OPSET = 17


class _Builder:
    """A tiny helper that names nodes and constants of the graph being built."""

    def __init__(self) -> None:
        import onnx

        self.onnx = onnx
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, value: Any, dtype: Any = None) -> str:  # noqa: ANN401
        """An initializer: ``dtype``, else a NumPy value's own type (plain Python floats as float32)."""
        name = f"pp_const_{len(self.inits)}"
        if dtype is None:
            dtype = value.dtype if isinstance(value, np.ndarray | np.generic) else np.float32
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> Any:  # noqa: ANN401
        self._n += 1
        outs = [f"pp_{op_type.lower()}_{self._n}_{k}" for k in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), outs, name=f"pp_{op_type}_{self._n}",
                                                     **attrs))
        return outs[0] if n_out == 1 else outs


def postprocess_graph(priors: Tensor | np.ndarray, num_classes: int, *,
                      variances: Sequence[float] = (0.1, 0.1, 0.2, 0.2), max_log_scale: float = math.log(1000.0 / 16),
                      mode: str = "per_class",
                      conf_threshold: float = 0.01, top_k: int = 400, nms_threshold: float = 0.45,
                      keep_top_k: int = 200, clip: bool | str = True, background_index: int | None = 0,
                      score: str = "softmax", conf_input: bool = False) -> Any:  # noqa: ANN401
    """The post-processing as an ONNX ``ModelProto`` (inputs ``cls_logits``, ``box_deltas``; see the module
    docstring). ``priors``: ``[P, 4]`` normalized cxcywh; the other arguments as in :func:`detection_output`.
    ``conf_input``: the score threshold is a third graph input ``conf_threshold`` (``[1]`` float32; scores must
    exceed it) instead of the constant ``conf_threshold``."""
    import onnx
    from onnx import TensorProto, helper

    if mode not in ("per_class", "global"):
        raise ValueError(f"mode must be 'per_class' or 'global', got {mode!r}")
    if score not in ("softmax", "sigmoid"):
        raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")
    if clip not in (True, False, "after"):
        raise ValueError(f"clip must be True, False or 'after', got {clip!r}")
    if keep_top_k <= 0:
        raise ValueError("the exported post-processing needs keep_top_k > 0 (it sets the output size)")
    pri = np.asarray(priors.detach().cpu() if isinstance(priors, Tensor) else priors, dtype=np.float32)
    if pri.ndim != 2 or pri.shape[1] != 4:
        raise ValueError(f"priors must be [P, 4] normalized cxcywh, got {pri.shape}")
    p = int(pri.shape[0])
    fg = [c for c in range(num_classes) if c != background_index]
    if not fg:
        raise ValueError("need at least one object class")
    k = p if top_k <= 0 else min(int(top_k), p)
    g = _Builder()
    i64 = np.int64

    # scores [B, P, C] and the foreground ones [B, P, C']
    scores = g.op("Softmax", ["cls_logits"], axis=-1) if score == "softmax" else g.op("Sigmoid", ["cls_logits"])
    fg_scores = g.op("Gather", [scores, g.const(fg, i64)], axis=2)
    # decode [B, P, 4] -> xyxy, as BoxCoder: cxy = d * v * p_wh + p_cxy; wh = exp(min(d * v, max)) * p_wh
    d = "box_deltas"
    d_xy = g.op("Slice", [d, g.const([0], i64), g.const([2], i64), g.const([2], i64)])
    d_wh = g.op("Slice", [d, g.const([2], i64), g.const([4], i64), g.const([2], i64)])
    v = np.asarray(variances, dtype=np.float32)
    cxy = g.op("Add", [g.op("Mul", [g.op("Mul", [d_xy, g.const(v[:2])]), g.const(pri[:, 2:])]), g.const(pri[:, :2])])
    log_wh = g.op("Min", [g.op("Mul", [d_wh, g.const(v[2:])]), g.const(np.float32(max_log_scale))])
    wh = g.op("Mul", [g.op("Exp", [log_wh]), g.const(pri[:, 2:])])
    half = g.op("Mul", [g.const(np.float32(0.5)), wh])
    boxes = g.op("Concat", [g.op("Sub", [cxy, half]), g.op("Add", [cxy, half])], axis=2)  # [B, P, 4]
    if clip is True:
        boxes = g.op("Clip", [boxes, g.const(np.float32(0.0)), g.const(np.float32(1.0))])

    shape = g.op("Shape", ["cls_logits"])
    b = g.op("Gather", [shape, g.const([0], i64)], axis=0)  # [1]
    n_fg = len(fg)
    boxes_flat = g.op("Reshape", [boxes, g.const([-1, 4], i64)])  # [B*P, 4]
    if mode == "per_class":
        per = g.op("Reshape", [g.op("Transpose", [fg_scores], perm=[0, 2, 1]), g.const([-1, p], i64)])  # [B*C', P]
        groups = n_fg
    else:
        best = g.op("ReduceMax", [fg_scores], axes=[2], keepdims=0)  # [B, P] (opset 17: axes an attribute)
        best_cls = g.op("ArgMax", [fg_scores], axis=2, keepdims=0, select_last_index=0)  # [B, P] (first max)
        per = best
        groups = 1
    values, index = g.op("TopK", [per, g.const([k], i64)], n_out=2, axis=-1, largest=1, sorted=1)  # [G, k]
    # candidate boxes [G, k, 4]: group r belongs to image r // groups
    rows = g.op("Range", [g.const(np.int64(0)), g.op("Squeeze", [g.op("Mul", [b, g.const([groups], i64)])]),
                          g.const(np.int64(1))])
    image_of_row = g.op("Div", [rows, g.const(np.int64(groups))])  # [G]
    flat_index = g.op("Add", [index, g.op("Unsqueeze", [g.op("Mul", [image_of_row, g.const(np.int64(p))]),
                                                        g.const([1], i64)])])  # [G, k]
    cand = g.op("Gather", [boxes_flat, flat_index], axis=0)  # [G, k, 4]
    selected = g.op("NonMaxSuppression", [cand, g.op("Unsqueeze", [values, g.const([1], i64)]),
                                          g.const([k], i64), g.const([nms_threshold], np.float32),
                                          "conf_threshold" if conf_input else g.const([conf_threshold], np.float32)],
                       center_point_box=0)  # [N, 3]
    sel_row = g.op("Gather", [selected, g.const(0, i64)], axis=1)  # [N]
    sel_j = g.op("Gather", [selected, g.const(2, i64)], axis=1)  # [N]
    pos = g.op("Add", [g.op("Mul", [sel_row, g.const(np.int64(k))]), sel_j])  # into [G * k]
    sel_score = g.op("Gather", [g.op("Reshape", [values, g.const([-1], i64)]), pos], axis=0)  # [N]
    sel_box = g.op("Gather", [g.op("Reshape", [cand, g.const([-1, 4], i64)]), pos], axis=0)  # [N, 4]
    sel_img = g.op("Div", [sel_row, g.const(np.int64(groups))])
    if mode == "per_class":
        cls_pos = g.op("Mod", [sel_row, g.const(np.int64(groups))])
    else:
        prior = g.op("Gather", [g.op("Reshape", [index, g.const([-1], i64)]), pos], axis=0)  # prior of each
        cls_pos = g.op("Gather", [g.op("Reshape", [best_cls, g.const([-1], i64)]),
                                  g.op("Add", [g.op("Mul", [sel_img, g.const(np.int64(p))]), prior])], axis=0)
    sel_label = g.op("Gather", [g.const(fg, i64), cls_pos], axis=0)
    if clip == "after":
        sel_box = g.op("Clip", [sel_box, g.const(np.float32(0.0)), g.const(np.float32(1.0))])

    # per image, by score (descending): sort by image, then by score, with a float64 key
    f64 = np.float64
    key = g.op("Add", [g.op("Mul", [g.op("Cast", [sel_img], to=TensorProto.DOUBLE), g.const(f64(4.0), f64)]),
                       g.op("Sub", [g.const(f64(2.0), f64), g.op("Cast", [sel_score], to=TensorProto.DOUBLE)])])
    n = g.op("Shape", [key])
    _, order = g.op("TopK", [key, n], n_out=2, axis=0, largest=0, sorted=1)
    s_img, s_score = g.op("Gather", [sel_img, order], axis=0), g.op("Gather", [sel_score, order], axis=0)
    s_box, s_label = g.op("Gather", [sel_box, order], axis=0), g.op("Gather", [sel_label, order], axis=0)
    counts = g.op("ReduceSum", [g.op("OneHot", [s_img, b, g.const([0, 1], i64)], axis=-1), g.const([0], i64)],
                  keepdims=0)  # [B]
    starts = g.op("CumSum", [counts, g.const(np.int64(0))], exclusive=1)
    rank = g.op("Sub", [g.op("Range", [g.const(np.int64(0)), g.op("Squeeze", [n]), g.const(np.int64(1))]),
                        g.op("Gather", [starts, s_img], axis=0)])
    kk = int(keep_top_k)
    keep = g.op("Less", [rank, g.const(np.int64(kk))])
    where = g.op("Concat", [g.op("Unsqueeze", [g.op("Compress", [s_img, keep], axis=0), g.const([1], i64)]),
                            g.op("Unsqueeze", [g.op("Compress", [rank, keep], axis=0), g.const([1], i64)])],
                 axis=1)  # [M, 2]
    bk = g.op("Concat", [b, g.const([kk], i64)], axis=0)
    out_scores = g.op("ScatterND", [g.op("ConstantOfShape", [bk], value=helper.make_tensor("v", TensorProto.FLOAT,
                                                                                          [1], [0.0])),
                                    where, g.op("Compress", [s_score, keep], axis=0)])
    out_labels = g.op("ScatterND", [g.op("ConstantOfShape", [bk], value=helper.make_tensor("v", TensorProto.INT64,
                                                                                          [1], [0])),
                                    where, g.op("Compress", [s_label, keep], axis=0)])
    bk4 = g.op("Concat", [b, g.const([kk, 4], i64)], axis=0)
    out_boxes = g.op("ScatterND", [g.op("ConstantOfShape", [bk4], value=helper.make_tensor("v", TensorProto.FLOAT,
                                                                                           [1], [0.0])),
                                   where, g.op("Compress", [s_box, keep], axis=0)])
    num = g.op("Min", [counts, g.const(np.int64(kk))])
    for src, dst in zip((out_boxes, out_scores, out_labels, num), POSTPROCESS_OUTPUTS, strict=True):
        g.nodes.append(helper.make_node("Identity", [src], [dst], name=f"pp_out_{dst}"))

    inputs = [helper.make_tensor_value_info("cls_logits", TensorProto.FLOAT, ["batch", p, num_classes]),
              helper.make_tensor_value_info("box_deltas", TensorProto.FLOAT, ["batch", p, 4])]
    if conf_input:
        inputs.append(helper.make_tensor_value_info("conf_threshold", TensorProto.FLOAT, [1]))
    outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", kk, 4]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", kk]),
               helper.make_tensor_value_info("labels", TensorProto.INT64, ["batch", kk]),
               helper.make_tensor_value_info("num_detections", TensorProto.INT64, ["batch"])]
    graph = helper.make_graph(g.nodes, "ssd_postprocess", inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    onnx.checker.check_model(model)
    return model


def postprocess_graph_from(post: Any, num_classes: int, conf_input: bool = False) -> Any:  # noqa: ANN401
    """:func:`postprocess_graph` with the settings of a :class:`multibox.postprocess.PostProcess` module."""
    return postprocess_graph(post.priors, num_classes, variances=tuple(post.box_coder.variances),
                             max_log_scale=float(post.box_coder.max_log_scale), mode=post.mode,
                             conf_threshold=post.conf_threshold, top_k=post.top_k, nms_threshold=post.nms_threshold,
                             keep_top_k=post.keep_top_k, clip=post.clip, background_index=post.background_index,
                             score=post.score, conf_input=conf_input)


def append_postprocess(network: Any, post: Any) -> Any:  # noqa: ANN401
    """``network`` (ONNX model with outputs ``cls_logits`` and ``box_deltas``) followed by ``post`` (from
    :func:`postprocess_graph`): one model from ``images`` to the detections."""
    from onnx import compose, helper

    opset = max(o.version for o in network.opset_import if o.domain in ("", "ai.onnx"))
    if opset != _OPSET:
        raise ValueError(f"the network uses opset {opset}; the post-processing graph needs {_OPSET}")
    post = helper.make_model(post.graph, opset_imports=list(network.opset_import), ir_version=network.ir_version)
    return compose.merge_models(network, post, io_map=[("cls_logits", "cls_logits"), ("box_deltas", "box_deltas")])
