"""Make the Keras reference outputs of ssd_keras-family SSDs (tests/data/keras_ssd).

Runs in a SEPARATE virtual environment with TensorFlow / Keras (the multibox test suite never needs them)::

    python3.11 -m venv /tmp/kerasenv
    /tmp/kerasenv/bin/pip install tensorflow-cpu h5py numpy pillow
    TF_ENABLE_ONEDNN_OPTS=0 /tmp/kerasenv/bin/python scripts/make_keras_reference.py --out tests/data/keras_ssd

``--archs A B`` rebuilds only those architectures and keeps the others' entries in ``reference.npz`` /
``layout.json``.

No trained ssd_keras file can be fetched here, so the script builds the architectures in Keras with
ssd_keras' layer names and layouts (written for this script from the project's published facts: ``conv1_1`` ..
``fc7``, ``conv6_1`` .., ``conv4_3_norm`` (an ``L2Normalization`` layer whose weight is ``conv4_3_norm_gamma``),
``<source>_mbox_conf`` / ``<source>_mbox_loc``; SSD7's ``conv1`` .. ``conv7`` + ``bn1`` .. ``bn7`` + ELU,
``classes4`` .. / ``boxes4`` ..; the MobileNetV1 fork's ``conv1``, ``conv1_bn``, ``conv_dw_k`` (``DepthwiseConv2D``),
``conv_dw_k_bn``, ``conv_pw_k``, ``conv_pw_k_bn`` of Keras applications' MobileNetV1 in its Keras 2.1 form (``"same"``
padding on the stride-2 depthwise convs: 19x19 / 10x10 taps at ``conv_pw_11`` / ``conv_pw_13``), the extras
``conv14_1`` + ``bn14_1`` .. ``conv17_2`` + ``bn17_2`` and ``conv11_mbox_conf`` .. ``conv17_2_mbox_loc`` with 3x3 or
1x1 kernels), fills them with seeded random weights (:func:`layer_weights`; the predictor
convolutions are scaled so that logits and box offsets have a spread of about 1.5 and 0.5, so that scores are
neither flat nor saturated), runs them on real photos (SSD300 and MobileNetV1-3x3 the astronaut, SSD512 and
MobileNetV1-1x1 Grace Hopper, SSD7 both)
and decodes the predictions with TensorFlow ops
following ssd_keras' ``AnchorBoxes`` and ``DecodeDetections`` (softmax, centroid decoding with the variances, per
class the scores above the threshold, ``tf.image.non_max_suppression``, then ``tf.nn.top_k`` over all classes).

Written to ``--out``:

* ``ssd7.h5``: the SSD7 weight file itself as Keras writes it (``model.save``, legacy HDF5: layer groups under
  ``model_weights``; Keras 3's ``save_weights`` format names layers by class, ``conv2d_1``, and is refused);
* ``reference.npz``: per architecture ``<arch>/images`` is not stored (tests rebuild the inputs from
  ``tests/data/tf_person/reference.npz``'s 300x300 photos, see ``network_input``), ``<arch>/conf`` (logits before
  the softmax, ``[N, P, C]``), ``<arch>/loc`` ``[N, P, 4]``, ``<arch>/anchors`` ``[P, 4]`` (normalized cx, cy, w,
  h, Keras order), ``<arch>/dets`` ``[N, top_k, 6]`` (``class, confidence, xmin, ymin, xmax, ymax`` in pixels of
  the network input, zero-padded as ``DecodeDetections`` does), ``<arch>/gain/<layer>`` (the predictor scales)
  and ``<arch>/checksum/<layer>`` (float64 sums of every weight array, so tests can prove they regenerated the
  very weights Keras used);
* ``layout.json``: the HDF5 layout of each saved file (``layer_names``, each layer's ``weight_names`` and the
  dataset shapes): for SSD300 / SSD512 / the MobileNetV1 variants (105 / 110 / 35 / 24 MB of weights) only the
  layout is kept and tests rebuild the file from it and from :func:`layer_weights`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import zlib
from pathlib import Path

import numpy as np

SEED = 20261204
PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "data" / "tf_person" / "reference.npz"


def layer_weights(seed: int, name: str, shapes: list[tuple[int, ...]], kind: str, gain: float = 1.0
                  ) -> list[np.ndarray]:
    """Seeded random weights of one layer (the same in tests): ``kind`` ``conv`` (He-normal kernel
    ``[kh, kw, in, out]`` and a small bias, both times ``gain``), ``bn`` (gamma, beta, moving mean, moving
    variance), ``dw`` (a depthwise kernel ``[kh, kw, C, 1]``, He-normal over ``kh * kw``) or ``l2`` (gamma
    around 20)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if kind == "conv":
        k = shapes[0]
        fan_in = k[0] * k[1] * k[2]
        out = [rng.standard_normal(k, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in) * gain)]
        if len(shapes) > 1:
            out.append(rng.standard_normal(shapes[1], dtype=np.float32) * np.float32(0.05 * gain))
        return out
    if kind == "dw":  # DepthwiseConv2D kernel [kh, kw, C, 1]: fan-in kh * kw
        k = shapes[0]
        return [rng.standard_normal(k, dtype=np.float32) * np.float32(math.sqrt(2.0 / (k[0] * k[1])) * gain)]
    if kind == "bn":
        c = shapes[0]
        gamma = np.float32(1) + np.float32(0.1) * rng.standard_normal(c, dtype=np.float32)
        beta = np.float32(0.1) * rng.standard_normal(c, dtype=np.float32)
        mean = np.float32(0.1) * rng.standard_normal(c, dtype=np.float32)
        var = np.float32(1) + np.float32(0.1) * np.abs(rng.standard_normal(c, dtype=np.float32))
        return [gamma, beta, mean, var]
    if kind == "l2":
        return [np.float32(20) + rng.standard_normal(shapes[0], dtype=np.float32)]
    raise ValueError(kind)


ARCHS = {
    "ssd300": dict(image_size=(300, 300), n_classes=21, images=(0,),
                   sources=["conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2"],
                   scales=[0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05],
                   ars=[[1.0, 2.0, 0.5], [1.0, 2.0, 0.5, 3.0, 1.0 / 3.0], [1.0, 2.0, 0.5, 3.0, 1.0 / 3.0],
                        [1.0, 2.0, 0.5, 3.0, 1.0 / 3.0], [1.0, 2.0, 0.5], [1.0, 2.0, 0.5]],
                   steps=[8, 16, 32, 64, 100, 300], variances=[0.1, 0.1, 0.2, 0.2],
                   mean=[123.0, 117.0, 104.0], std=None, swap=[2, 1, 0]),
    "ssd512": dict(image_size=(512, 512), n_classes=6, images=(1,),
                   sources=["conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2", "conv10_2"],
                   scales=[0.07, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05],
                   ars=[[1.0, 2.0, 0.5]] + [[1.0, 2.0, 0.5, 3.0, 1.0 / 3.0]] * 4 + [[1.0, 2.0, 0.5]] * 2,
                   steps=[8, 16, 32, 64, 128, 256, 512], variances=[0.1, 0.1, 0.2, 0.2],
                   mean=[123.0, 117.0, 104.0], std=None, swap=[2, 1, 0]),
    # the MobileNetV1 SSD300 variants of the ssd_keras fork: Keras applications' MobileNetV1 (Keras 2.1 layout:
    # "same" padding on the stride-2 depthwise convs, so 19x19 / 10x10 taps), four extra blocks, 3x3 or 1x1 heads
    "ssd300_mobilenetv1_3x3": dict(image_size=(300, 300), n_classes=21, images=(0,), head_kernel=3,
                                   sources=["conv11", "conv13", "conv14_2", "conv15_2", "conv16_2", "conv17_2"],
                                   scales=[0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05],
                                   ars=[[1.0, 2.0, 0.5]] + [[1.0, 2.0, 0.5, 3.0, 1.0 / 3.0]] * 3
                                   + [[1.0, 2.0, 0.5]] * 2,
                                   steps=None, variances=[0.1, 0.1, 0.2, 0.2], mean=[127.5] * 3, std=[127.5] * 3,
                                   swap=None),
    "ssd7": dict(image_size=(300, 480), n_classes=6, images=(0, 1), sources=["4", "5", "6", "7"],
                 scales=[0.08, 0.16, 0.32, 0.64, 0.96], ars=[[0.5, 1.0, 2.0]] * 4, steps=None,
                 variances=[1.0, 1.0, 1.0, 1.0], mean=[127.5] * 3, std=[127.5] * 3, swap=None),
}
ARCHS["ssd300_mobilenetv1_1x1"] = dict(ARCHS["ssd300_mobilenetv1_3x3"], images=(1,), head_kernel=1)

#: ``(stride, pointwise channels)`` of Keras applications' MobileNetV1 blocks ``conv_dw_k`` / ``conv_pw_k``
MOBILENET_BLOCKS = [(1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), (1, 512), (1, 512), (1, 512),
                    (1, 512), (1, 512), (2, 1024), (1, 1024)]


def network_input(photos: np.ndarray, arch: dict) -> np.ndarray:
    """The 300x300 RGB uint8 photos resized (nearest: row ``i`` takes source row ``i * 300 // H``) to the
    architecture's size, then ssd_keras' input Lambdas: minus the mean, divided by the std, channels swapped."""
    h, w = arch["image_size"]
    rows = (np.arange(h) * photos.shape[1]) // h
    cols = (np.arange(w) * photos.shape[2]) // w
    x = photos[list(arch["images"])][:, rows][:, :, cols].astype(np.float32)
    x = x - np.asarray(arch["mean"], dtype=np.float32)
    if arch["std"] is not None:
        x = x / np.asarray(arch["std"], dtype=np.float32)
    if arch["swap"] is not None:
        x = x[..., arch["swap"]]
    return np.ascontiguousarray(x)


def n_boxes(ars: list[float]) -> int:
    return len(ars) + (1 if 1.0 in ars else 0)


def build(keras, name: str, arch: dict):  # noqa: ANN001, ANN201 (Keras objects)
    """The Keras model with ssd_keras' layer names; outputs ``[mbox_conf (logits), mbox_loc]``."""
    L = keras.layers  # noqa: N806

    class L2Normalization(L.Layer):
        def build(self, input_shape):  # noqa: ANN001, ANN202
            self.gamma = self.add_weight(name=f"{self.name}_gamma", shape=(input_shape[-1],), initializer="ones")

        def call(self, x):  # noqa: ANN001, ANN202
            ops = keras.ops  # K.l2_normalize: x / sqrt(max(sum x^2, 1e-12))
            return x * ops.rsqrt(ops.maximum(ops.sum(x * x, axis=-1, keepdims=True), 1e-12)) * self.gamma

    h, w = arch["image_size"]
    c = arch["n_classes"]
    x0 = keras.Input((h, w, 3))
    feats = {}
    if name == "ssd7":
        x = x0
        for i, (f, k) in enumerate([(32, 5), (48, 3), (64, 3), (64, 3), (48, 3), (48, 3), (32, 3)], start=1):
            x = L.Conv2D(f, k, padding="same", name=f"conv{i}")(x)
            x = L.BatchNormalization(axis=3, momentum=0.99, name=f"bn{i}")(x)
            x = L.ELU(name=f"elu{i}")(x)
            feats[str(i)] = x
            if i < 7:
                x = L.MaxPooling2D(2, name=f"pool{i}")(x)
        conv_name, loc_name = "classes{}", "boxes{}"
    elif name.startswith("ssd300_mobilenetv1"):
        # Keras applications' MobileNetV1 (alpha 1): conv1 + conv1_bn + ReLU6, then per block k conv_dw_k
        # (depthwise 3x3) + conv_dw_k_bn + ReLU6, conv_pw_k (1x1) + conv_pw_k_bn + ReLU6; no conv bias
        x = L.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="conv1")(x0)
        x = L.BatchNormalization(axis=3, name="conv1_bn")(x)
        x = L.ReLU(6.0, name="conv1_relu")(x)
        for k, (stride, out) in enumerate(MOBILENET_BLOCKS, start=1):
            x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"conv_dw_{k}")(x)
            x = L.BatchNormalization(axis=3, name=f"conv_dw_{k}_bn")(x)
            x = L.ReLU(6.0, name=f"conv_dw_{k}_relu")(x)
            x = L.Conv2D(out, 1, padding="same", use_bias=False, name=f"conv_pw_{k}")(x)
            x = L.BatchNormalization(axis=3, name=f"conv_pw_{k}_bn")(x)
            x = L.ReLU(6.0, name=f"conv_pw_{k}_relu")(x)
            if k in (11, 13):
                feats[f"conv{k}"] = x
        # the fork's extra blocks: convK_1 (1x1) + bnK_1 + ReLU, convK_2 (3x3 stride 2, "same") + bnK_2 + ReLU
        for i, (mid, out) in enumerate([(256, 512), (128, 256), (128, 256), (64, 128)], start=14):
            x = L.Conv2D(mid, 1, padding="same", name=f"conv{i}_1")(x)
            x = L.BatchNormalization(axis=3, name=f"bn{i}_1")(x)
            x = L.Activation("relu", name=f"relu{i}_1")(x)
            x = L.Conv2D(out, 3, strides=2, padding="same", name=f"conv{i}_2")(x)
            x = L.BatchNormalization(axis=3, name=f"bn{i}_2")(x)
            x = L.Activation("relu", name=f"relu{i}_2")(x)
            feats[f"conv{i}_2"] = x
        conv_name, loc_name = "{}_mbox_conf", "{}_mbox_loc"
    else:
        x = x0
        for block, (n, f) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1):
            for j in range(1, n + 1):
                x = L.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{block}_{j}")(x)
            feats[f"conv{block}_{n}"] = x
            x = L.MaxPooling2D(3 if block == 5 else 2, strides=1 if block == 5 else 2, padding="same",
                               name=f"pool{block}")(x)
        x = L.Conv2D(1024, 3, dilation_rate=6, padding="same", activation="relu", name="fc6")(x)
        x = L.Conv2D(1024, 1, padding="same", activation="relu", name="fc7")(x)
        feats["fc7"] = x
        n_extra = 4 if name == "ssd300" else 5
        for i in range(6, 6 + n_extra):
            mid, out = (256, 512) if i == 6 else (128, 256)
            x = L.Conv2D(mid, 1, padding="same", activation="relu", name=f"conv{i}_1")(x)
            if name == "ssd300" and i >= 8:
                x = L.Conv2D(out, 3, padding="valid", activation="relu", name=f"conv{i}_2")(x)
            else:
                x = L.ZeroPadding2D(((1, 1), (1, 1)), name=f"conv{i}_padding")(x)
                last = name == "ssd512" and i == 10
                x = L.Conv2D(out, 4 if last else 3, strides=1 if last else 2, padding="valid", activation="relu",
                             name=f"conv{i}_2")(x)
            feats[f"conv{i}_2"] = x
        feats["conv4_3_norm"] = L2Normalization(name="conv4_3_norm")(feats["conv4_3"])
        conv_name, loc_name = "{}_mbox_conf", "{}_mbox_loc"
    confs, locs = [], []
    for s, ars in zip(arch["sources"], arch["ars"], strict=True):
        nb = n_boxes(ars)
        hk = arch.get("head_kernel", 3)
        cc = L.Conv2D(nb * c, hk, padding="same", name=conv_name.format(s))(feats[s])
        ll = L.Conv2D(nb * 4, hk, padding="same", name=loc_name.format(s))(feats[s])
        confs.append(L.Reshape((-1, c), name=conv_name.format(s) + "_reshape")(cc))
        locs.append(L.Reshape((-1, 4), name=loc_name.format(s) + "_reshape")(ll))
    conf = L.Concatenate(axis=1, name="mbox_conf")(confs)
    loc = L.Concatenate(axis=1, name="mbox_loc")(locs)
    return keras.Model(x0, [conf, loc], name=name)


def kind_of(layer) -> str:  # noqa: ANN001
    t = type(layer).__name__
    return {"Conv2D": "conv", "DepthwiseConv2D": "dw", "BatchNormalization": "bn", "L2Normalization": "l2"}.get(t, "")


def set_weights(model, gains: dict[str, float]) -> dict[str, float]:  # noqa: ANN001
    sums = {}
    for layer in model.layers:
        kind = kind_of(layer)
        if not kind:
            continue
        shapes = [tuple(w.shape) for w in layer.get_weights()]
        ws = layer_weights(SEED, layer.name, shapes, kind, gains.get(layer.name, 1.0))
        layer.set_weights(ws)
        sums[layer.name] = float(sum(np.float64(a).sum() for a in ws))
    return sums


def keras_anchor_boxes(arch: dict, feature_sizes: list[tuple[int, int]]) -> np.ndarray:
    """ssd_keras' AnchorBoxes (no clipping, normalized coordinates, centroids), ``[P, 4]`` in Keras order."""
    h, w = arch["image_size"]
    size = min(h, w)
    out = []
    for k, (fh, fw) in enumerate(feature_sizes):
        s, s2 = arch["scales"][k], arch["scales"][k + 1]
        wh = []
        for ar in arch["ars"][k]:
            if ar == 1:
                wh += [(s * size, s * size), (np.sqrt(s * s2) * size,) * 2]
            else:
                wh.append((s * size * np.sqrt(ar), s * size / np.sqrt(ar)))
        wh = np.array(wh)
        if arch["steps"] is None:
            sh, sw = h / fh, w / fw
        else:
            sh = sw = arch["steps"][k]
        cy = np.linspace(0.5 * sh, (0.5 + fh - 1) * sh, fh)
        cx = np.linspace(0.5 * sw, (0.5 + fw - 1) * sw, fw)
        gx, gy = np.meshgrid(cx, cy)
        b = np.zeros((fh, fw, len(wh), 4))
        b[..., 0], b[..., 1] = gx[..., None], gy[..., None]
        b[..., 2], b[..., 3] = wh[:, 0], wh[:, 1]
        corners = np.stack([b[..., 0] - b[..., 2] / 2, b[..., 1] - b[..., 3] / 2, b[..., 0] + b[..., 2] / 2,
                            b[..., 1] + b[..., 3] / 2], -1)
        corners[..., [0, 2]] /= w
        corners[..., [1, 3]] /= h
        cent = np.stack([(corners[..., 0] + corners[..., 2]) / 2, (corners[..., 1] + corners[..., 3]) / 2,
                         corners[..., 2] - corners[..., 0], corners[..., 3] - corners[..., 1]], -1)
        out.append(cent.reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def decode(tf, conf, loc, anchors, arch, thresh=0.01, iou=0.45, top_k=200, nms_max=400):  # noqa: ANN001, ANN201
    """ssd_keras' DecodeDetections, with TF ops: ``[N, top_k, 6]`` (class, conf, xmin, ymin, xmax, ymax px)."""
    h, w = arch["image_size"]
    var = np.asarray(arch["variances"], dtype=np.float32)
    scores = tf.nn.softmax(conf, axis=-1)
    a = tf.constant(anchors)
    cx = loc[..., 0] * var[0] * a[:, 2] + a[:, 0]
    cy = loc[..., 1] * var[1] * a[:, 3] + a[:, 1]
    bw = tf.exp(loc[..., 2] * var[2]) * a[:, 2]
    bh = tf.exp(loc[..., 3] * var[3]) * a[:, 3]
    boxes = tf.stack([(cx - 0.5 * bw) * w, (cy - 0.5 * bh) * h, (cx + 0.5 * bw) * w, (cy + 0.5 * bh) * h], -1)
    results = []
    for n in range(conf.shape[0]):
        rows = []
        for c in range(1, conf.shape[-1]):
            sc = scores[n, :, c]
            keep = sc > thresh
            s_c = tf.boolean_mask(sc, keep)
            b_c = tf.boolean_mask(boxes[n], keep)
            if int(tf.size(s_c)) == 0:
                continue
            yx = tf.stack([b_c[:, 1], b_c[:, 0], b_c[:, 3], b_c[:, 2]], -1)
            idx = tf.image.non_max_suppression(yx, s_c, max_output_size=nms_max, iou_threshold=iou)
            s_k = tf.gather(s_c, idx)
            rows.append(tf.concat([tf.fill([tf.size(idx), 1], float(c)), s_k[:, None], tf.gather(b_c, idx)], 1))
        allr = tf.concat(rows, 0) if rows else tf.zeros([0, 6])
        k = min(top_k, int(allr.shape[0]))
        top = tf.gather(allr, tf.nn.top_k(allr[:, 1], k=k, sorted=True).indices)
        pad = np.zeros((top_k, 6), np.float32)
        pad[:k] = top.numpy()
        results.append(pad)
    return np.stack(results)


def h5_layout(path: Path) -> dict:
    import h5py

    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        layers = []
        for lname in root.attrs["layer_names"]:
            lname = lname.decode() if isinstance(lname, bytes) else lname
            g = root[lname]
            names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]]
            layers.append({"name": lname, "weight_names": names, "shapes": [list(g[n].shape) for n in names]})
        return {"root": "model_weights" if "model_weights" in f else "/",
                "root_attrs": {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in root.attrs.items()
                               if k != "layer_names"},
                "layers": layers}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--tmp", type=Path, default=Path("/tmp/keras_ref"))
    args = parser.parse_args()
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import keras
    import tensorflow as tf

    args.out.mkdir(parents=True, exist_ok=True)
    args.tmp.mkdir(parents=True, exist_ok=True)
    photos = np.load(PHOTOS)["images"]
    ref: dict[str, np.ndarray] = {}
    layouts = {}
    if (args.out / "reference.npz").is_file():  # keep the architectures not rebuilt this time
        with np.load(args.out / "reference.npz") as z:
            ref = {k: z[k] for k in z.files if k.split("/", 1)[0] not in args.archs}
    if (args.out / "layout.json").is_file():
        layouts = {k: v for k, v in json.loads((args.out / "layout.json").read_text()).items() if k not in args.archs}
    ref["tf_version"] = np.array(tf.__version__)
    ref["keras_version"] = np.array(keras.__version__)
    for name in args.archs:
        arch = ARCHS[name]
        model = build(keras, name, arch)
        x = network_input(photos, arch)
        set_weights(model, {})
        conf, loc = (np.asarray(t) for t in model(x, training=False))
        # predictor gains: logits spread ~1.5, offsets ~0.5 (per predictor layer, from the unit-gain outputs)
        gains = {}
        start = 0
        for s, ars in zip(arch["sources"], arch["ars"], strict=True):
            layer = model.get_layer(("classes{}" if name == "ssd7" else "{}_mbox_conf").format(s))
            fh, fw = layer.output.shape[1:3]
            n = fh * fw * n_boxes(ars)
            gains[layer.name] = float(f"{1.5 / conf[:, start:start + n].std():.4g}")
            lname = ("boxes{}" if name == "ssd7" else "{}_mbox_loc").format(s)
            gains[lname] = float(f"{0.5 / loc[:, start:start + n].std():.4g}")
            start += n
        sums = set_weights(model, gains)
        conf, loc = (np.asarray(t) for t in model(x, training=False))
        feature_sizes = []
        for s in arch["sources"]:
            layer = model.get_layer(("classes{}" if name == "ssd7" else "{}_mbox_conf").format(s))
            feature_sizes.append(tuple(int(v) for v in layer.output.shape[1:3]))
        anchors = keras_anchor_boxes(arch, feature_sizes)
        dets = decode(tf, tf.constant(conf), tf.constant(loc), anchors, arch)
        saved = args.tmp / f"{name}.h5"
        model.save(saved)
        layouts[name] = h5_layout(saved)
        if name == "ssd7":
            model.save(args.out / "ssd7.h5")
        ref[f"{name}/conf"] = conf
        ref[f"{name}/loc"] = loc
        ref[f"{name}/anchors"] = anchors
        ref[f"{name}/dets"] = dets
        ref[f"{name}/feature_sizes"] = np.array(feature_sizes)
        for k, v in gains.items():
            ref[f"{name}/gain/{k}"] = np.array(v)
        for k, v in sums.items():
            ref[f"{name}/checksum/{k}"] = np.array(v)
        print(name, conf.shape, "dets", int((dets[..., 1] > 0).sum()), "score max", float(dets[..., 1].max()))
    np.savez_compressed(args.out / "reference.npz", **ref)
    (args.out / "layout.json").write_text(json.dumps(layouts, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
