"""The ssd_keras fork's MobileNetV1 SSD300 (Keras applications layout, 3x3 and 1x1 heads): Keras layer names,
TensorFlow "SAME" padding against a functional forward written here from TF's padding formula, the equality with
the TF-OD MobileNetV1 backbone under the name mapping, map sizes and the ssd_keras anchors by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from multibox.models import build_model, model_info
from multibox.models.backbones import build_backbone
from multibox.models.backbones.mobilenet import MobileNetV1Backbone
from multibox.models.ssd_mobilenet_keras import keras_mobilenet_priors

# Keras applications' MobileNet: (stride, pointwise channels) of blocks 1..13
LAYERS = [(1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), (1, 512), (1, 512), (1, 512), (1, 512),
          (1, 512), (2, 1024), (1, 1024)]


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _tf_same(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow's documented SAME padding: out = ceil(n / s), total = max((out - 1) s + k - n, 0), the smaller
    half before."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad wants (left, right, top, bottom)
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _bn(x, sd, name, eps=1e-3):
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                        sd[f"{name}.bias"], False, 0.0, eps)


def _reference_backbone(sd: dict, x: torch.Tensor) -> list[torch.Tensor]:
    x = F.relu6(_bn(F.conv2d(_tf_same(x, 3, 2), sd["conv1.weight"], stride=2), sd, "conv1_bn"))
    outs = []
    for k, (stride, _) in enumerate(LAYERS, start=1):
        w = sd[f"conv_dw_{k}.weight"]
        x = F.relu6(_bn(F.conv2d(_tf_same(x, 3, stride), w, stride=stride, groups=w.shape[0]), sd, f"conv_dw_{k}_bn"))
        x = F.relu6(_bn(F.conv2d(x, sd[f"conv_pw_{k}.weight"]), sd, f"conv_pw_{k}_bn"))
        if k in (11, 13):
            outs.append(x)
    return outs


def test_keras_layer_names_and_shapes():
    model = build_model("ssd300_mobilenetv1_keras_3x3", num_classes=21)
    sd = model.state_dict()
    assert sd["backbone.conv1.weight"].shape == (32, 3, 3, 3)
    assert sd["backbone.conv_dw_13.weight"].shape == (1024, 1, 3, 3)
    assert sd["backbone.conv_pw_13.weight"].shape == (1024, 1024, 1, 1)
    assert "backbone.conv_pw_11_bn.running_var" in sd and "backbone.conv_dw_1.bias" not in sd
    for k in range(14, 18):
        for part in ("conv{}_1.weight", "conv{}_1.bias", "bn{}_1.running_mean", "conv{}_2.weight", "bn{}_2.weight"):
            assert "extras." + part.format(k) in sd
    assert sd["extras.conv14_2.weight"].shape == (512, 256, 3, 3)
    assert sd["extras.conv17_2.weight"].shape == (128, 64, 3, 3)
    # conv11_mbox_conf: 4 boxes x 21 classes, 3x3 on conv_pw_11's 512 channels; 1x1 in the other variant
    assert sd["head.classification.0.weight"].shape == (84, 512, 3, 3)
    assert sd["head.regression.5.weight"].shape == (16, 128, 3, 3)
    sd1 = build_model("ssd300_mobilenetv1_keras_1x1", num_classes=21).state_dict()
    assert sd1["head.classification.1.weight"].shape == (126, 1024, 1, 1)
    bb = build_backbone("mobilenet_v1_keras", alpha=0.5)
    assert bb.out_channels == [256, 512] and bb.conv1.out_channels == 16
    assert model.backbone.conv1_bn.eps == 1e-3 and model.extras.bn14_1.eps == 1e-3


@pytest.mark.parametrize("size", [(300, 300), (96, 131)])
def test_forward_equals_functional_tf_same_reference(size):
    torch.manual_seed(0)
    model = build_model("ssd300_mobilenetv1_keras_1x1", num_classes=3).eval()
    _randomize(model, 1)
    x = torch.randn(1, 3, *size)
    sd = {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    ex = {k[len("extras."):]: v for k, v in model.state_dict().items() if k.startswith("extras.")}
    with torch.no_grad():
        got = model.extract_features(x)
        want = _reference_backbone(sd, x)
        y = want[-1]
        for k in range(14, 18):
            y = F.relu(_bn(F.conv2d(y, ex[f"conv{k}_1.weight"], ex[f"conv{k}_1.bias"]), ex, f"bn{k}_1"))
            y = F.conv2d(_tf_same(y, 3, 2), ex[f"conv{k}_2.weight"], ex[f"conv{k}_2.bias"], stride=2)
            y = F.relu(_bn(y, ex, f"bn{k}_2"))
            want.append(y)
    assert len(got) == 6
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if size == (300, 300):
        assert [tuple(t.shape[-2:]) for t in got] == [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]


def test_equals_tf_od_mobilenet_v1_under_the_name_mapping():
    """The same network as the TF-OD layout (TF "SAME", BN eps 1e-3, ReLU6), whose maps are tested against TF."""
    torch.manual_seed(0)
    keras = build_backbone("mobilenet_v1_keras").eval()
    _randomize(keras, 2)
    tfod = MobileNetV1Backbone(tf_same_padding=True, bn_eps=1e-3).eval()
    mapped = {}
    for key, value in keras.state_dict().items():
        layer, _, field = key.partition(".")
        if layer.startswith("conv1"):
            mapped[f"features.0.{1 if layer.endswith('_bn') else 0}.{field}"] = value
        else:
            _, kind, k, *bn = layer.split("_")
            part = "depthwise" if kind == "dw" else "pointwise"
            mapped[f"features.{k}.{part}.{1 if bn else 0}.{field}"] = value
    tfod.load_state_dict(mapped, strict=True)
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        for a, b in zip(keras(x), tfod(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_ssd_keras_anchors_by_hand():
    for name in ("ssd300_mobilenetv1_keras_3x3", "ssd300_mobilenetv1_keras_1x1"):
        info = model_info(name)
        assert info["feature_sizes"] == [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
        assert info["num_priors"] == 19 * 19 * 4 + 10 * 10 * 6 + 25 * 6 + 9 * 6 + 4 * 4 + 4 == 2268
        assert info["backbone"] == "mobilenet_v1_keras"
    model = build_model("ssd300_mobilenetv1_keras_3x3", num_classes=3)
    p = model.priors
    # first location of the 19x19 map: centre 0.5 / 19; boxes 0.1, sqrt(0.1 * 0.2), 0.1 * sqrt(2) x 0.1 / sqrt(2)
    torch.testing.assert_close(p[0], torch.tensor([0.5 / 19, 0.5 / 19, 0.1, 0.1]))
    torch.testing.assert_close(p[1, 2:], torch.tensor([math.sqrt(0.02)] * 2))
    torch.testing.assert_close(p[2, 2:], torch.tensor([0.1 * math.sqrt(2), 0.1 / math.sqrt(2)]))
    torch.testing.assert_close(p[3, 2:], torch.tensor([0.1 / math.sqrt(2), 0.1 * math.sqrt(2)]))
    # second map (10x10), its first location: scale 0.2, then sqrt(0.2 * 0.37), ratios 2, 1/2, 3, 1/3
    q = p[19 * 19 * 4: 19 * 19 * 4 + 6]
    torch.testing.assert_close(q[:, :2], torch.full((6, 2), 0.05))
    torch.testing.assert_close(q[4, 2:], torch.tensor([0.2 * math.sqrt(3), 0.2 / math.sqrt(3)]))
    # the last box: the 1x1 map's second square, sqrt(0.88 * 1.05)
    torch.testing.assert_close(p[-3], torch.tensor([0.5, 0.5, math.sqrt(0.88 * 1.05), math.sqrt(0.88 * 1.05)]))
    assert keras_mobilenet_priors().num_priors_per_location == [4, 6, 6, 6, 4, 4]
    with pytest.raises(ValueError, match="scales needs 7"):
        keras_mobilenet_priors(scales=(0.1, 0.2))
    with pytest.raises(ValueError, match="alpha must be positive"):
        build_model("ssd300_mobilenetv1_keras_1x1", alpha=0)
