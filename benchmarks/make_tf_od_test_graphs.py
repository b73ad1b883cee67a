"""Make small frozen TF Object Detection API SSD graphs and TensorFlow's own outputs on a real photo.

Runs with TensorFlow in a SEPARATE virtual environment (multibox is not imported and not needed)::

    python3.11 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu numpy
    TF_ENABLE_ONEDNN_OPTS=0 /tmp/tfenv/bin/python benchmarks/make_tf_od_test_graphs.py \\
        --image .venv/lib/python3.11/site-packages/matplotlib/mpl-data/sample_data/grace_hopper.jpg \\
        --arch v1 --out tests/data/tf_mobilenet_v1
    (same) --arch v2 --depth-multiplier 0.125 --kernel 3 --score-threshold 0.7 --prefix v2_ \\
        --out tests/data/tf_mobilenet_v1

The graph is built with ``tf.compat.v1`` graph ops under the node names and scopes the detection API gives an
``ssd_mobilenet_v1`` (``--arch v1``) or a plain ``ssd_mobilenet_v2`` (``--arch v2``) model, with random but
well-scaled weights and batch-norm statistics drawn from a fixed seed; batch norms stay unfolded
(``FusedBatchNorm`` in the backbone, ``FusedBatchNormV3`` in the extra layers) and every weight is a variable
until the graph is frozen with ``convert_variables_to_constants``:

* ``image_tensor`` (uint8 ``[B, H, W, 3]``) -> ``Preprocessor/ToFloat`` -> ``Preprocessor/ResizeImage``
  (``ResizeBilinear`` to the constant ``Preprocessor/ResizeImage/stack``) -> ``Preprocessor/mul`` (``x * 2/255``)
  -> ``Preprocessor/sub`` (``- 1``);
* v1: ``FeatureExtractor/MobilenetV1/MobilenetV1/Conv2d_0`` (3x3 stride 2) and ``Conv2d_<k>_depthwise`` /
  ``Conv2d_<k>_pointwise`` for k = 1..13 (variables under ``FeatureExtractor/MobilenetV1/Conv2d_...``), each
  conv + ``BatchNorm/FusedBatchNorm`` + ``Relu6``, ``"SAME"`` padding, channels ``max(int(d * depth_multiplier),
  min_depth)``; feature maps ``Conv2d_11_pointwise`` and ``Conv2d_13_pointwise``, then the extra layers
  ``Conv2d_13_pointwise_1_Conv2d_<k>_1x1_<d/2>`` + ``Conv2d_13_pointwise_2_Conv2d_<k>_3x3_s2_<d>`` for layer depths
  d = 512, 256, 256, 128 (k = 2..5);
* v2: ``FeatureExtractor/MobilenetV2/Conv``, ``expanded_conv[_i]/{expand,depthwise,project}``, ``Conv_1``;
  maps ``layer_15/expansion_output`` (the expansion of ``expanded_conv_13``) and ``Conv_1``, then
  ``layer_19_1_Conv2d_<k>_1x1_<d/2>`` + ``layer_19_2_Conv2d_<k>_3x3_s2_<d>``;
* ``BoxPredictor_<k>/BoxEncodingPredictor`` and ``BoxPredictor_<k>/ClassPredictor`` (plain conv + ``BiasAdd``,
  kernel ``--kernel``), reshaped and concatenated to ``Squeeze`` (``[B, P, 4]``, ``(ty, tx, th, tw)``) and
  ``concat_1`` (``[B, P, C + 1]`` logits, background column 0);
* the anchors of a ``MultipleGridAnchorGenerator`` with ``reduce_boxes_in_lowest_layer`` (scales 0.2..0.95, ratios
  1, 2, 0.5, 3, 0.3333 and the interpolated square; 3 boxes on the first map: 0.1 at ratio 1, s_0 at 2 and 0.5)
  built from graph ops (``Range``, ``Tile``, ``Reshape``, ...) and concatenated in ``Concatenate/concat``
  (``[P, 4]`` normalized ``[ymin, xmin, ymax, xmax]``);
* ``Postprocessor``: ``Decode`` (``truediv`` by 10, 10, 5, 5), ``scale_logits`` (/ 1), ``convert_scores``
  (sigmoid), and TF's own ``CombinedNonMaxSuppression`` (per class, clip to [0, 1] after NMS) fed by
  ``.../MultiClassNonMaxSuppression/Minimum`` (max per class), ``Minimum_1`` (max total) and
  ``.../non_max_suppression/iou_threshold`` / ``score_threshold`` constants; outputs ``detection_boxes``,
  ``detection_scores``, ``detection_classes`` (1-based), ``num_detections``.

The photo is decoded by TensorFlow (``tf.io.decode_jpeg``); the batch is the photo and its mirror image, fed at
full size (the graph resizes it). ``reference.npz`` holds (float32 unless noted): ``preprocessed`` ``[2, H, W, 3]``
(``Preprocessor/sub``), ``box_encodings``, ``class_predictions``, ``anchors``, ``detection_boxes``,
``detection_scores``, ``detection_classes``, ``num_detections``, ``feature_sizes`` (int32 ``[L, 2]``: the maps the
graph computed), ``settings`` (a JSON string: the generator's arguments and the derived channels),
``graph_sha256`` and ``tf_version`` (strings).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: MobileNetV1 (stride, output depth): Conv2d_0 is a full 3x3 conv, Conv2d_1..13 depthwise-separable blocks.
V1_LAYERS: tuple[tuple[int, int], ...] = (
    (2, 32), (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
    (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024),
)
#: MobileNetV2 inverted-residual stages (expansion t, channels c, repeats n, first stride s).
V2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
#: Depths of the extra feature-map layers the detection API adds (1x1 conv of d/2, then 3x3 stride-2 conv of d).
EXTRA_DEPTHS: tuple[int, ...] = (512, 256, 256, 128)
ASPECT_RATIOS: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 0.3333)


class GraphMaker:
    """Creates variables and ops of one graph with random weights (``rng``) under explicit scopes."""

    def __init__(self, tf: Any, rng: np.random.Generator) -> None:
        self.tf = tf
        self.tf1 = tf.compat.v1
        self.rng = rng
        self.num_params = 0

    def var(self, scope: str, name: str, value: np.ndarray) -> Any:
        """A float32 variable ``scope/name``."""
        with self.tf1.name_scope(scope + "/"):
            v = self.tf1.Variable(value.astype(np.float32), name=name)
        self.num_params += int(value.size)
        return v

    def conv(self, x: Any, var_scope: str, op_scope: str, kernel: int, stride: int, out_ch: int, *,
             depthwise: bool = False, bn: str | None = "FusedBatchNorm", relu6: bool = True, bias: bool = False,
             w_gain: float = math.sqrt(2.0), bias_init: float = 0.0) -> Any:
        """Conv (or depthwise conv) + optional batch norm / bias + optional ReLU6, TF ``"SAME"`` padding."""
        tf, rng = self.tf, self.rng
        in_ch = int(x.shape[-1])
        if depthwise:
            shape = (kernel, kernel, in_ch, 1)
            fan_in = kernel * kernel
            out_ch = in_ch
        else:
            shape = (kernel, kernel, in_ch, out_ch)
            fan_in = kernel * kernel * in_ch
        w = self.var(var_scope, "depthwise_weights" if depthwise else "weights",
                     rng.normal(0.0, w_gain / math.sqrt(fan_in), shape))
        with self.tf1.name_scope(op_scope + "/"):
            if depthwise:
                y = tf.raw_ops.DepthwiseConv2dNative(input=x, filter=w, strides=[1, stride, stride, 1],
                                                      padding="SAME", name="depthwise")
            else:
                y = tf.raw_ops.Conv2D(input=x, filter=w, strides=[1, stride, stride, 1], padding="SAME",
                                      name="Conv2D")
        if bias:
            b = self.var(var_scope, "biases", rng.normal(bias_init, 0.1, (out_ch,)))
            with self.tf1.name_scope(op_scope + "/"):
                y = tf.raw_ops.BiasAdd(value=y, bias=b, name="BiasAdd")
        if bn is not None:
            bscope = var_scope + "/BatchNorm"
            gamma = self.var(bscope, "gamma", rng.uniform(0.6, 1.4, out_ch))
            beta = self.var(bscope, "beta", rng.normal(0.3, 0.3, out_ch))
            mean = self.var(bscope, "moving_mean", rng.normal(0.0, 0.3, out_ch))
            var = self.var(bscope, "moving_variance", rng.uniform(0.5, 2.0, out_ch))
            with self.tf1.name_scope(op_scope + "/BatchNorm/"):
                op = getattr(tf.raw_ops, bn)
                y = op(x=y, scale=gamma, offset=beta, mean=mean, variance=var, epsilon=0.001, is_training=False,
                       name=bn)[0]
        if relu6:
            with self.tf1.name_scope(op_scope + "/"):
                y = tf.raw_ops.Relu6(features=y, name="Relu6")
        return y


def depth_v1(d: int, multiplier: float, min_depth: int) -> int:
    """The detection API's MobileNetV1 / extra-layer depth: ``max(int(d * multiplier), min_depth)``."""
    return max(int(d * multiplier), min_depth)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """MobileNetV2's channel rounding (nearest multiple of ``divisor``, never 10% below ``v``)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def mobilenet_v1(g: GraphMaker, x: Any, multiplier: float, min_depth: int) -> tuple[list[Any], list[int]]:
    fe_vars, fe_ops = "FeatureExtractor/MobilenetV1", "FeatureExtractor/MobilenetV1/MobilenetV1"
    channels: list[int] = []
    maps: list[Any] = []
    for i, (stride, d) in enumerate(V1_LAYERS):
        out = depth_v1(d, multiplier, min_depth)
        channels.append(out)
        if i == 0:
            x = g.conv(x, f"{fe_vars}/Conv2d_0", f"{fe_ops}/Conv2d_0", 3, stride, out)
        else:
            x = g.conv(x, f"{fe_vars}/Conv2d_{i}_depthwise", f"{fe_ops}/Conv2d_{i}_depthwise", 3, stride, 0,
                       depthwise=True)
            x = g.conv(x, f"{fe_vars}/Conv2d_{i}_pointwise", f"{fe_ops}/Conv2d_{i}_pointwise", 1, 1, out)
        if i in (11, 13):
            maps.append(x)
    return maps, channels


def mobilenet_v2(g: GraphMaker, x: Any, multiplier: float, min_depth: int) -> tuple[list[Any], list[int]]:
    fe = "FeatureExtractor/MobilenetV2"
    channels: list[int] = []

    def ch(c: int) -> int:
        return make_divisible(c * multiplier, 8, min_depth)

    in_ch = ch(32)
    x = g.conv(x, f"{fe}/Conv", f"{fe}/Conv", 3, 2, in_ch)
    channels.append(in_ch)
    maps: list[Any] = []
    block = 0
    for t, c, n, s in V2_STAGES:
        out = ch(c)
        for r in range(n):
            scope = f"{fe}/expanded_conv" + ("" if block == 0 else f"_{block}")
            stride = s if r == 0 else 1
            y = x
            if t != 1:
                y = g.conv(y, f"{scope}/expand", f"{scope}/expand", 1, 1, in_ch * t)
                if block == 13:
                    maps.append(y)  # layer_15/expansion_output
            y = g.conv(y, f"{scope}/depthwise", f"{scope}/depthwise", 3, stride, 0, depthwise=True)
            y = g.conv(y, f"{scope}/project", f"{scope}/project", 1, 1, out, relu6=False, w_gain=1.0)
            if stride == 1 and in_ch == out:
                with g.tf1.name_scope(scope + "/"):
                    y = g.tf.add(y, x, name="add")
            x = y
            channels.append(out)
            in_ch = out
            block += 1
    last = max(1280, ch(1280)) if multiplier > 1 else ch(1280)
    x = g.conv(x, f"{fe}/Conv_1", f"{fe}/Conv_1", 1, 1, last)
    channels.append(last)
    maps.append(x)
    return maps, channels


def extra_layers(g: GraphMaker, x: Any, base: str, multiplier: float, min_depth: int) -> tuple[list[Any], list[
        list[int]]]:
    maps: list[Any] = []
    blocks: list[list[int]] = []
    for j, d in enumerate(EXTRA_DEPTHS):
        k = j + 2
        mid, out = depth_v1(d // 2, multiplier, min_depth), depth_v1(d, multiplier, min_depth)
        s1 = f"{base}_1_Conv2d_{k}_1x1_{mid}"
        s2 = f"{base}_2_Conv2d_{k}_3x3_s2_{out}"
        x = g.conv(x, s1, s1, 1, 1, mid, bn="FusedBatchNormV3")
        x = g.conv(x, s2, s2, 3, 2, out, bn="FusedBatchNormV3")
        maps.append(x)
        blocks.append([mid, out])
    return maps, blocks


def anchor_specs(num_layers: int, min_scale: float = 0.2, max_scale: float = 0.95
                 ) -> list[list[tuple[float, float]]]:
    """``(scale, aspect ratio)`` of each box of a location, per layer, in the detection API's order."""
    scales = [min_scale + (max_scale - min_scale) * i / (num_layers - 1) for i in range(num_layers)] + [1.0]
    specs = []
    for i in range(num_layers):
        if i == 0:
            specs.append([(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)])
        else:
            layer = [(scales[i], r) for r in ASPECT_RATIOS]
            layer.append((math.sqrt(scales[i] * scales[i + 1]), 1.0))
            specs.append(layer)
    return specs


def grid_anchors(g: GraphMaker, sizes: list[tuple[int, int]], specs: list[list[tuple[float, float]]],
                 image_hw: tuple[int, int]) -> Any:
    """Anchors ``[P, 4]`` (ymin, xmin, ymax, xmax), location-major (y, x, box), computed by graph ops."""
    tf, tf1 = g.tf, g.tf1
    parts = []
    with tf1.name_scope("MultipleGridAnchorGenerator/"):
        im_h = tf.constant(float(image_hw[0]), name="im_height")
        im_w = tf.constant(float(image_hw[1]), name="im_width")
        min_dim = tf.minimum(im_h, im_w)
        base_h, base_w = min_dim / im_h, min_dim / im_w
        for k, ((fh, fw), spec) in enumerate(zip(sizes, specs, strict=True)):
            with tf1.name_scope(f"GridAnchorGenerator{'' if k == 0 else '_' + str(k)}"):
                scales = tf.constant([s for s, _ in spec], tf.float32, name="scales")
                ratios = tf.constant([r for _, r in spec], tf.float32, name="aspect_ratios")
                a = len(spec)
                sqrt_r = tf.sqrt(ratios)
                heights = scales / sqrt_r * base_h
                widths = scales * sqrt_r * base_w
                stride_y = 1.0 / tf.cast(tf.constant(fh), tf.float32)
                stride_x = 1.0 / tf.cast(tf.constant(fw), tf.float32)
                yc = tf.cast(tf.range(fh), tf.float32) * stride_y + 0.5 * stride_y
                xc = tf.cast(tf.range(fw), tf.float32) * stride_x + 0.5 * stride_x
                yg = tf.tile(tf.reshape(yc, [fh, 1, 1]), [1, fw, a])
                xg = tf.tile(tf.reshape(xc, [1, fw, 1]), [fh, 1, a])
                hg = tf.tile(tf.reshape(heights, [1, 1, a]), [fh, fw, 1])
                wg = tf.tile(tf.reshape(widths, [1, 1, a]), [fh, fw, 1])
                centers = tf.reshape(tf.stack([yg, xg], axis=3), [-1, 2])
                hw = tf.reshape(tf.stack([hg, wg], axis=3), [-1, 2])
                parts.append(tf.concat([centers - 0.5 * hw, centers + 0.5 * hw], axis=1))
    with tf1.name_scope("Concatenate/"):
        return tf.concat(parts, axis=0, name="concat")


def build_graph(tf: Any, args: argparse.Namespace) -> tuple[Any, dict[str, Any], list[str]]:
    tf1 = tf.compat.v1
    rng = np.random.default_rng(args.seed)
    g = GraphMaker(tf, rng)
    h, w = args.size
    num_classes = args.num_classes
    settings: dict[str, Any] = {"arch": args.arch, "size": [h, w], "num_classes": num_classes,
                                "depth_multiplier": args.depth_multiplier, "min_depth": args.min_depth,
                                "kernel": args.kernel, "seed": args.seed, "score_threshold": args.score_threshold,
                                "iou_threshold": args.iou_threshold, "max_detections": args.max_detections}
    image = tf1.placeholder(tf.uint8, [None, None, None, 3], name="image_tensor")
    with tf1.name_scope("Preprocessor/"):
        x = tf.cast(image, tf.float32, name="ToFloat")
        with tf1.name_scope("ResizeImage/"):
            size = tf.constant([h, w], tf.int32, name="stack")
            x = tf1.image.resize_bilinear(x, size, align_corners=False, name="ResizeBilinear")
        x = tf.multiply(2.0 / 255.0, x, name="mul")
        x = tf.subtract(x, 1.0, name="sub")
    if args.arch == "v1":
        maps, channels = mobilenet_v1(g, x, args.depth_multiplier, args.min_depth)
        extras, blocks = extra_layers(g, maps[-1], "FeatureExtractor/MobilenetV1/Conv2d_13_pointwise",
                                      args.depth_multiplier, args.min_depth)
    else:
        maps, channels = mobilenet_v2(g, x, args.depth_multiplier, 8)
        extras, blocks = extra_layers(g, maps[-1], "FeatureExtractor/MobilenetV2/layer_19",
                                      args.depth_multiplier, args.min_depth)
    settings["backbone_channels"] = channels
    settings["extra_blocks"] = blocks
    feats = maps + extras
    sizes = [(int(f.shape[1]), int(f.shape[2])) for f in feats]
    settings["feature_sizes"] = sizes
    specs = anchor_specs(len(feats))
    boxes, classes = [], []
    batch = tf.shape(image)[0]
    for k, (f, spec) in enumerate(zip(feats, specs, strict=True)):
        a = len(spec)
        scope = f"BoxPredictor_{k}"
        enc = g.conv(f, f"{scope}/BoxEncodingPredictor", f"{scope}/BoxEncodingPredictor", args.kernel, 1, a * 4,
                     bn=None, relu6=False, bias=True, w_gain=0.5)
        cls = g.conv(f, f"{scope}/ClassPredictor", f"{scope}/ClassPredictor", args.kernel, 1,
                     a * (num_classes + 1), bn=None, relu6=False, bias=True, w_gain=2.0, bias_init=-4.5)
        with tf1.name_scope(scope + "/"):
            boxes.append(tf.reshape(enc, tf.stack([batch, -1, 1, 4]), name="Reshape"))
            classes.append(tf.reshape(cls, tf.stack([batch, -1, num_classes + 1]), name="Reshape_1"))
    box_encodings = tf.squeeze(tf.concat(boxes, axis=1, name="concat"), axis=[2], name="Squeeze")
    class_predictions = tf.concat(classes, axis=1, name="concat_1")
    anchors = grid_anchors(g, sizes, specs, (h, w))

    with tf1.name_scope("Postprocessor/"):
        with tf1.name_scope("Decode/"):
            ymin_a, xmin_a, ymax_a, xmax_a = tf.unstack(anchors, axis=1)
            ha, wa = ymax_a - ymin_a, xmax_a - xmin_a
            yca, xca = ymin_a + ha * 0.5, xmin_a + wa * 0.5
            ty, tx, th, tw = tf.unstack(box_encodings, axis=2)
            ty = tf.truediv(ty, 10.0, name="truediv")
            tx = tf.truediv(tx, 10.0, name="truediv_1")
            th = tf.truediv(th, 5.0, name="truediv_2")
            tw = tf.truediv(tw, 5.0, name="truediv_3")
            bh, bw = tf.exp(th) * ha, tf.exp(tw) * wa
            yc, xc = ty * ha + yca, tx * wa + xca
            decoded = tf.stack([yc - 0.5 * bh, xc - 0.5 * bw, yc + 0.5 * bh, xc + 0.5 * bw], axis=2)
        logits = tf.truediv(class_predictions, 1.0, name="scale_logits")
        scores = tf.sigmoid(logits, name="convert_scores")
        fg = scores[:, :, 1:]
        with tf1.name_scope("BatchMultiClassNonMaxSuppression/MultiClassNonMaxSuppression/"):
            num_boxes = tf.shape(decoded)[1]
            per_class = tf.minimum(args.max_detections, num_boxes, name="Minimum")
            total = tf.minimum(args.max_detections, num_boxes * num_classes, name="Minimum_1")
            with tf1.name_scope("non_max_suppression/"):
                iou = tf.constant(args.iou_threshold, tf.float32, name="iou_threshold")
                thr = tf.constant(args.score_threshold, tf.float32, name="score_threshold")
            nms = tf.image.combined_non_max_suppression(decoded[:, :, None, :], fg, per_class, total, iou, thr,
                                                        pad_per_class=False, clip_boxes=True)
    tf.identity(nms.nmsed_boxes, name="detection_boxes")
    tf.identity(nms.nmsed_scores, name="detection_scores")
    tf.identity(nms.nmsed_classes + 1.0, name="detection_classes")
    tf.cast(nms.valid_detections, tf.float32, name="num_detections")
    settings["num_params"] = g.num_params
    outputs = ["detection_boxes", "detection_scores", "detection_classes", "num_detections"]
    return image, settings, outputs


FETCH = {
    "preprocessed": "Preprocessor/sub:0",
    "box_encodings": "Squeeze:0",
    "class_predictions": "concat_1:0",
    "anchors": "Concatenate/concat:0",
    "detection_boxes": "detection_boxes:0",
    "detection_scores": "detection_scores:0",
    "detection_classes": "detection_classes:0",
    "num_detections": "num_detections:0",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, required=True, help="a JPEG photo (grace_hopper.jpg)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--arch", choices=("v1", "v2"), default="v1")
    parser.add_argument("--size", type=int, nargs=2, default=(160, 160), metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, default=3, help="foreground classes")
    parser.add_argument("--depth-multiplier", type=float, default=0.125)
    parser.add_argument("--min-depth", type=int, default=16)
    parser.add_argument("--kernel", type=int, default=1, help="box predictor kernel size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--iou-threshold", type=float, default=0.6)
    parser.add_argument("--max-detections", type=int, default=100, help="per class and in total")
    parser.add_argument("--prefix", default="", help="file name prefix (e.g. v2_)")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    tf1 = tf.compat.v1
    photo = tf.io.decode_jpeg(tf.io.read_file(str(args.image)), channels=3).numpy()
    images = np.stack([photo, photo[:, ::-1]])

    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(args.seed)
        _, settings, outputs = build_graph(tf, args)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            frozen = tf1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), outputs)
    data = frozen.SerializeToString(deterministic=True)  # map fields in key order: the same bytes every run
    args.out.mkdir(parents=True, exist_ok=True)
    pb = args.out / f"{args.prefix}frozen_inference_graph.pb"
    npz = args.out / f"{args.prefix}reference.npz"
    pb.write_bytes(data)

    # run the FROZEN graph (what the importer reads)
    run_graph = tf.Graph()
    with run_graph.as_default():
        tf.import_graph_def(frozen, name="")
    with tf1.Session(graph=run_graph) as sess:
        values = sess.run({k: run_graph.get_tensor_by_name(v) for k, v in FETCH.items()},
                          feed_dict={"image_tensor:0": images})
        sizes = [[int(v) for v in run_graph.get_tensor_by_name(f"BoxPredictor_{k}/BoxEncodingPredictor/BiasAdd:0")
                  .shape[1:3]] for k in range(len(settings["feature_sizes"]))]
    ops = sorted({n.op for n in frozen.node})
    out = {k: np.asarray(v, dtype=np.float32) for k, v in values.items()}
    out["feature_sizes"] = np.asarray(sizes, dtype=np.int32)
    out["settings"] = np.array(json.dumps(settings))
    out["graph_sha256"] = np.array(hashlib.sha256(data).hexdigest())
    out["tf_version"] = np.array(tf.__version__)
    tmp = args.out / f"{args.prefix}reference.tmp.npz"
    np.savez_compressed(tmp, **out)
    os.replace(tmp, npz)

    print(f"graph: {pb} ({len(data)} bytes, {len(frozen.node)} nodes, {settings['num_params']} weights)")
    print(f"ops: {', '.join(ops)}")
    print(f"settings: {json.dumps(settings)}")
    for k, v in out.items():
        print(f"{k}: {v.dtype} {v.shape}")
    cls = out["class_predictions"]
    print(f"logits mean {cls.mean():.3f} std {cls.std():.3f}; box encodings std {out['box_encodings'].std():.3f}")
    print(f"num_detections {out['num_detections']}, top scores {out['detection_scores'][:, :5]}")
    print(f"wrote {npz} ({npz.stat().st_size} bytes), "
          f"TensorFlow {tf.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
