"""Make the TensorFlow reference outputs of SSD-Tensorflow's ``ssd_300_vgg`` / ``ssd_512_vgg`` (tests/data/slim_ssd).

Runs in a SEPARATE virtual environment with TensorFlow (the multibox test suite never needs it)::

    python3.11 -m venv /tmp/kerasenv
    /tmp/kerasenv/bin/pip install tensorflow-cpu h5py numpy pillow
    TF_ENABLE_ONEDNN_OPTS=0 /tmp/kerasenv/bin/python scripts/make_slim_reference.py --out tests/data/slim_ssd

No trained SSD-Tensorflow checkpoint can be fetched here, so the script builds both networks as TF1-style graphs
(``tf.compat.v1``) with SSD-Tensorflow's variable scopes (written for this script from the project's published
facts: ``<scope>/conv1/conv1_1/weights`` .., ``conv6`` (rate 6), ``conv7``, ``block8/conv1x1`` + ``conv3x3`` ..
(SSD512 ``block12/conv4x4``), ``block4_box/L2Normalization/gamma``, ``<block>_box/conv_loc`` / ``conv_cls``),
``SAME`` padding for the VGG convs and poolings, explicit 1-pixel pads before the stride-2 extras, a
``global_step``), assigns seeded random weights (:func:`layer_weights`; predictor scales chosen so that logits and
offsets spread by about 1.5 and 0.5), saves a V2 checkpoint with ``tf.compat.v1.train.Saver`` and runs the graph
on a real photo (SSD300 the astronaut, SSD512 Grace
Hopper), preprocessed as its ``ssd_vgg_preprocessing`` does for evaluation (RGB minus
123, 117, 104). Its decoding is reproduced with TF ops after ``detected_bboxes``: softmax, decoding with
``prior_scaling``, per class the scores above 0.01 (others zeroed), ``tf.nn.top_k`` 400, then
``tf.image.non_max_suppression`` keeping at most 200 per class at IoU 0.45.

Written to ``--out``: ``<arch>.ckpt-1000.index`` (the checkpoint's index as TensorFlow wrote it; the
``.data-00000-of-00001`` file, 105 / 110 MB, is not kept: tests rebuild it from the index and
:func:`layer_weights`) and ``reference.npz`` with, per architecture, ``<arch>/logits`` ``[N, P, C]``,
``<arch>/localisations`` ``[N, P, 4]`` (TF order: layer, row, column, anchor), ``<arch>/anchors`` ``[P, 4]``
(cx, cy, w, h as its ``ssd_anchor_one_layer`` computes them), ``<arch>/dets`` ``[N, C - 1, 200, 5]`` (per class
``score, ymin, xmin, ymax, xmax``, zero-padded), ``<arch>/gain/<scope>``, ``<arch>/checksum/<variable>`` and
``<arch>/data_size`` (bytes of the data file TensorFlow wrote).
"""

from __future__ import annotations

import argparse
import math
import os
import zlib
from pathlib import Path

import numpy as np

SEED = 20261205
PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "data" / "tf_person" / "reference.npz"
R2, R4 = [2.0, 0.5], [2.0, 0.5, 3.0, 1.0 / 3.0]
ARCHS = {
    "ssd_300_vgg": dict(size=300, n_classes=21, images=(0,),
                        feat=["block4", "block7", "block8", "block9", "block10", "block11"],
                        sizes=[(21.0, 45.0), (45.0, 99.0), (99.0, 153.0), (153.0, 207.0), (207.0, 261.0),
                               (261.0, 315.0)],
                        ratios=[R2, R4, R4, R4, R2, R2], steps=[8, 16, 32, 64, 100, 300]),
    "ssd_512_vgg": dict(size=512, n_classes=6, images=(1,),
                        feat=["block4", "block7", "block8", "block9", "block10", "block11", "block12"],
                        sizes=[(20.48, 51.2), (51.2, 133.12), (133.12, 215.04), (215.04, 296.96),
                               (296.96, 378.88), (378.88, 460.8), (460.8, 542.72)],
                        ratios=[R2, R4, R4, R4, R4, R2, R2], steps=[8, 16, 32, 64, 128, 256, 512]),
}


def layer_weights(seed: int, scope: str, kshape: tuple[int, ...], gain: float = 1.0) -> tuple[np.ndarray, ...]:
    """Seeded weights of one conv scope (the same in tests): He-normal ``weights`` and small ``biases``, both
    times ``gain``; for an ``L2Normalization`` scope (``kshape = (C,)``) ``gamma`` around 20."""
    rng = np.random.default_rng([seed, zlib.crc32(scope.encode())])
    if len(kshape) == 1:
        return (np.float32(20) + rng.standard_normal(kshape, dtype=np.float32),)
    fan_in = kshape[0] * kshape[1] * kshape[2]
    w = rng.standard_normal(kshape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in) * gain)
    b = rng.standard_normal(kshape[-1], dtype=np.float32) * np.float32(0.05 * gain)
    return w, b


def network_input(photos: np.ndarray, arch: dict) -> np.ndarray:
    size = arch["size"]
    idx = (np.arange(size) * photos.shape[1]) // size
    x = photos[list(arch["images"])][:, idx][:, :, idx].astype(np.float32)
    return np.ascontiguousarray(x - np.array([123.0, 117.0, 104.0], dtype=np.float32))


def anchors(arch: dict, shapes: list[tuple[int, int]]) -> np.ndarray:
    out = []
    img = arch["size"]
    for (fh, fw), sizes, ratios, step in zip(shapes, arch["sizes"], arch["ratios"], arch["steps"], strict=True):
        y, x = np.mgrid[0:fh, 0:fw]
        y = (y.astype(np.float32) + 0.5) * step / img
        x = (x.astype(np.float32) + 0.5) * step / img
        n = 2 + len(ratios)
        h = np.zeros(n, np.float32)
        w = np.zeros(n, np.float32)
        h[0] = w[0] = sizes[0] / img
        h[1] = w[1] = math.sqrt(sizes[0] * sizes[1]) / img
        for i, r in enumerate(ratios):
            h[i + 2] = sizes[0] / img / math.sqrt(r)
            w[i + 2] = sizes[0] / img * math.sqrt(r)
        a = np.zeros((fh, fw, n, 4), np.float32)
        a[..., 0], a[..., 1], a[..., 2], a[..., 3] = x[..., None], y[..., None], w, h
        out.append(a.reshape(-1, 4))
    return np.concatenate(out)


def build(tf, name: str, arch: dict, x):  # noqa: ANN001, ANN201
    """The graph; returns ``(logits [N, P, C], localisations [N, P, 4], feature shapes, conv variables)``."""
    v1 = tf.compat.v1
    convs: dict[str, tuple] = {}

    def conv(net, scope, out, k, stride=1, rate=1, padding="SAME", relu=True):  # noqa: ANN001, ANN202
        with v1.variable_scope(scope):
            cin = int(net.shape[-1])
            w = v1.get_variable("weights", [k, k, cin, out], initializer=v1.zeros_initializer())
            b = v1.get_variable("biases", [out], initializer=v1.zeros_initializer())
        convs[v1.get_variable_scope().name + "/" + scope if v1.get_variable_scope().name else scope] = (w, b)
        y = tf.nn.convolution(net, w, strides=stride, padding=padding, dilations=rate) + b
        return tf.nn.relu(y) if relu else y

    def pool(net, k, s):  # noqa: ANN001, ANN202
        return tf.nn.max_pool2d(net, k, s, padding="SAME")

    def pad(net):  # noqa: ANN001, ANN202
        return tf.pad(net, [[0, 0], [1, 1], [1, 1], [0, 0]])

    ends = {}
    with v1.variable_scope(name):
        net = x
        for blk, (n, f) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1):
            with v1.variable_scope(f"conv{blk}"):
                for j in range(1, n + 1):
                    net = conv(net, f"conv{blk}_{j}", f, 3)
            ends[f"block{blk}"] = net
            net = pool(net, 3, 1) if blk == 5 else pool(net, 2, 2)
        net = conv(net, "conv6", 1024, 3, rate=6)
        net = conv(net, "conv7", 1024, 1)
        ends["block7"] = net
        n_extra = 4 if name == "ssd_300_vgg" else 5
        for i in range(8, 8 + n_extra):
            with v1.variable_scope(f"block{i}"):
                net = conv(net, "conv1x1", 256 if i == 8 else 128, 1)
                if name == "ssd_300_vgg" and i >= 10:
                    net = conv(net, "conv3x3", 256, 3, padding="VALID")
                elif name == "ssd_512_vgg" and i == 12:
                    net = conv(pad(net), "conv4x4", 256, 4, padding="VALID")
                else:
                    net = conv(pad(net), "conv3x3", 512 if i == 8 else 256, 3, stride=2, padding="VALID")
            ends[f"block{i}"] = net
        logits, locs, shapes = [], [], []
        c = arch["n_classes"]
        for i, layer in enumerate(arch["feat"]):
            with v1.variable_scope(layer + "_box"):
                net = ends[layer]
                if i == 0:
                    with v1.variable_scope("L2Normalization"):
                        gamma = v1.get_variable("gamma", [int(net.shape[-1])], initializer=v1.ones_initializer())
                    convs[f"{name}/{layer}_box/L2Normalization"] = (gamma,)
                    net = tf.nn.l2_normalize(net, axis=3, epsilon=1e-12) * gamma
                na = 2 + len(arch["ratios"][i])
                loc = conv(net, "conv_loc", na * 4, 3, relu=False)
                cls = conv(net, "conv_cls", na * c, 3, relu=False)
                fh, fw = int(loc.shape[1]), int(loc.shape[2])
                shapes.append((fh, fw))
                locs.append(tf.reshape(loc, [-1, fh * fw * na, 4]))
                logits.append(tf.reshape(cls, [-1, fh * fw * na, c]))
    return tf.concat(logits, 1), tf.concat(locs, 1), shapes, convs


def detect(tf, logits, locs, anc, n_classes):  # noqa: ANN001, ANN201
    """SSD-Tensorflow's detected_bboxes (select 0.01, top 400 per class, NMS 0.45, 200 per class)."""
    scores = tf.nn.softmax(logits, axis=-1)
    a = tf.constant(anc)
    cx = locs[..., 0] * a[:, 2] * 0.1 + a[:, 0]
    cy = locs[..., 1] * a[:, 3] * 0.1 + a[:, 1]
    w = a[:, 2] * tf.exp(locs[..., 2] * 0.2)
    h = a[:, 3] * tf.exp(locs[..., 3] * 0.2)
    boxes = tf.stack([cy - h / 2.0, cx - w / 2.0, cy + h / 2.0, cx + w / 2.0], -1)
    out = np.zeros((logits.shape[0], n_classes - 1, 200, 5), np.float32)
    for n in range(logits.shape[0]):
        for c in range(1, n_classes):
            s = scores[n, :, c]
            fmask = tf.cast(s > 0.01, s.dtype)
            s = s * fmask
            b = boxes[n] * fmask[:, None]
            top = tf.nn.top_k(s, k=400, sorted=True)
            s4, b4 = top.values, tf.gather(b, top.indices)
            idx = tf.image.non_max_suppression(b4, s4, 200, iou_threshold=0.45)
            k = int(idx.shape[0])
            out[n, c - 1, :k, 0] = tf.gather(s4, idx).numpy()
            out[n, c - 1, :k, 1:] = tf.gather(b4, idx).numpy()
    return out


def assign(sess, convs, step, assigns, feeds, gains: dict[str, float]) -> dict[str, float]:  # noqa: ANN001
    """Load the seeded weights (predictor scopes times their gain) and ``global_step = 1000``; returns the
    float64 sum of every variable."""
    values, sums = {}, {}
    for scope, vs in convs.items():
        ws = layer_weights(SEED, scope, tuple(int(d) for d in vs[0].shape), gains.get(scope, 1.0))
        for var, arr in zip(vs, ws, strict=True):
            values[var.name] = arr
            sums[var.name.split(":")[0]] = float(np.float64(arr).sum())
    values[step.name] = np.array(1000, np.int64)
    sess.run(assigns, {feeds[k]: v for k, v in values.items()})
    return sums


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--tmp", type=Path, default=Path("/tmp/slim_ref"))
    args = parser.parse_args()
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    v1 = tf.compat.v1
    args.out.mkdir(parents=True, exist_ok=True)
    args.tmp.mkdir(parents=True, exist_ok=True)
    photos = np.load(PHOTOS)["images"]
    ref: dict[str, np.ndarray] = {"tf_version": np.array(tf.__version__)}
    for name in args.archs:
        arch = ARCHS[name]
        xin = network_input(photos, arch)
        graph = tf.Graph()
        with graph.as_default():
            x = v1.placeholder(tf.float32, [None, arch["size"], arch["size"], 3])
            logits, locs, shapes, convs = build(tf, name, arch, x)
            step = v1.train.get_or_create_global_step()
            feeds, assigns = {}, []
            for var in v1.global_variables():
                ph = v1.placeholder(var.dtype.base_dtype, var.shape)
                feeds[var.name] = ph
                assigns.append(v1.assign(var, ph))
            saver = v1.train.Saver()
            with v1.Session(graph=graph) as sess:
                g = (sess, convs, step, assigns, feeds)
                assign(*g, {})
                lg, lc = sess.run([logits, locs], {x: xin})
                gains, start = {}, 0
                for layer, (fh, fw), ratios in zip(arch["feat"], shapes, arch["ratios"], strict=True):
                    n = fh * fw * (2 + len(ratios))
                    gains[f"{name}/{layer}_box/conv_cls"] = float(f"{1.5 / lg[:, start:start + n].std():.4g}")
                    gains[f"{name}/{layer}_box/conv_loc"] = float(f"{0.5 / lc[:, start:start + n].std():.4g}")
                    start += n
                sums = assign(*g, gains)
                lg, lc = sess.run([logits, locs], {x: xin})
                prefix = saver.save(sess, str(args.tmp / f"{name}.ckpt"), global_step=1000)
        anc = anchors(arch, shapes)
        dets = detect(tf, tf.constant(lg), tf.constant(lc), anc, arch["n_classes"])
        (args.out / f"{name}.ckpt-1000.index").write_bytes(Path(prefix + ".index").read_bytes())
        ref[f"{name}/data_size"] = np.array(Path(prefix + ".data-00000-of-00001").stat().st_size)
        ref[f"{name}/logits"] = lg
        ref[f"{name}/localisations"] = lc
        ref[f"{name}/anchors"] = anc
        ref[f"{name}/dets"] = dets
        for k, v in gains.items():
            ref[f"{name}/gain/{k}"] = np.array(v)
        for k, v in sums.items():
            ref[f"{name}/checksum/{k}"] = np.array(v)
        print(name, lg.shape, "dets", int((dets[..., 0] > 0).sum()), "max per class",
              int((dets[..., 0] > 0).sum(-1).max()))
    np.savez_compressed(args.out / "reference.npz", **ref)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
