"""Contract and unit tests of multibox.models (fast: SSD300 / SSD512 forwards at batch 1, few calls)."""

import copy
import functools
import os

import pytest
import torch

from multibox.anchors import PriorBoxGenerator, get_prior_preset
from multibox.models import SSD, InputSpec, SSDOutput, build_model, list_models, model_info, register_model
from multibox.models.backbones import VGG16Backbone
from multibox.models.extras import SSD300_EXTRAS, SSD512_EXTRAS, Extras
from multibox.models.heads import SSDHead, flatten_predictions
from multibox.models.layers import L2Norm
from multibox.models.ssd7 import ssd7

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NUM_CLASSES = 5


@functools.cache
def _built(name: str) -> SSD:
    torch.manual_seed(0)
    return build_model(name, num_classes=NUM_CLASSES).eval()


def test_builtin_models_registered():
    assert {"ssd300_vgg16", "ssd512_vgg16", "ssd7"} <= set(list_models())
    assert list_models("ssd*_vgg16") == ["ssd300_vgg16", "ssd512_vgg16"]


# at their full input size; the ResNet and timm families are covered (at small sizes) by test_model_contract.py,
# which runs every registered model
FULL_SIZE_MODELS = [n for n in list_models() if "resnet" not in n and "timm" not in n]


@pytest.mark.parametrize("name", FULL_SIZE_MODELS)
def test_model_contract(name):
    model = _built(name)
    cfg = model.prior_config
    batch = 2 if name == "ssd7" else 1
    x = torch.randn(batch, 3, *cfg.image_size)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, SSDOutput)
    sizes = model.feature_sizes()
    assert len(sizes) == len(cfg.levels) == model.num_feature_maps
    p = PriorBoxGenerator(cfg).num_priors(sizes)
    assert model.priors.shape == (p, 4) and model.num_priors == p
    assert out.cls_logits.shape == (batch, p, NUM_CLASSES)
    assert out.box_deltas.shape == (batch, p, 4)
    assert out.cls_logits.dtype == torch.float32 and torch.isfinite(out.cls_logits).all()
    torch.testing.assert_close(model.priors, PriorBoxGenerator(cfg)(sizes))
    assert "priors" not in model.state_dict()  # non-persistent buffer
    assert model.class_names == ["background"] + [f"class_{i}" for i in range(1, NUM_CLASSES)]
    assert model.num_classes == NUM_CLASSES
    assert model.input_spec.image_size == cfg.image_size
    assert model.box_coder.variances == cfg.variances
    assert hasattr(model.backbone, "out_channels") and hasattr(model.backbone, "strides")


def test_ssd300_shapes_and_info():
    model = _built("ssd300_vgg16")
    assert model.feature_sizes() == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    assert model.num_priors == 8732
    assert model.backbone.out_channels == [512, 1024] and model.backbone.strides == [8, 16]
    assert model.extras.out_channels == [512, 256, 256, 256]
    assert model.input_spec == InputSpec((300, 300), "RGB", (123.0, 117.0, 104.0), (1.0, 1.0, 1.0))
    info = model_info("ssd300_vgg16")
    assert info["num_priors"] == 8732 and info["num_feature_maps"] == 6 and info["image_size"] == (300, 300)
    assert info["num_parameters"] == sum(p.numel() for p in build_model("ssd300_vgg16").parameters())


def test_ssd512_shapes():
    model = _built("ssd512_vgg16")
    assert model.feature_sizes() == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert model.num_priors == 24564
    assert model_info("ssd512_vgg16")["num_priors"] == 24564


def test_extras_sizes_on_meta():
    e300 = Extras(1024, SSD300_EXTRAS).to("meta")
    assert [tuple(f.shape[-2:]) for f in e300(torch.empty(1, 1024, 19, 19, device="meta"))] == [
        (10, 10), (5, 5), (3, 3), (1, 1)]
    e512 = Extras(1024, SSD512_EXTRAS).to("meta")
    assert [tuple(f.shape[-2:]) for f in e512(torch.empty(1, 1024, 32, 32, device="meta"))] == [
        (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert e512.conv12.expand.kernel_size == (4, 4)


def test_vgg_module_names():
    names = {n for n, _ in VGG16Backbone().named_children()}
    assert {"conv1_1", "conv4_3", "conv5_3", "fc6", "fc7", "l2norm", "pool5"} <= names
    b = VGG16Backbone()
    assert b.fc6.dilation == (6, 6) and b.fc6.padding == (6, 6) and b.pool3.ceil_mode


def test_l2norm_init_and_math():
    layer = L2Norm(2)
    assert torch.equal(layer.weight.detach(), torch.full((2,), 20.0))
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(layer(x).flatten(), torch.tensor([12.0, 16.0]))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 10.0]))
    x = torch.tensor([[0.0, 2.0], [1.0, 0.0]]).view(1, 2, 1, 2)  # pixel 0: (0, 1), pixel 1: (2, 0)
    expected = torch.tensor([[0.0, 1.0], [10.0, 0.0]]).view(1, 2, 1, 2)
    torch.testing.assert_close(layer(x), expected)
    assert torch.isfinite(layer(torch.zeros(1, 2, 3, 3))).all()
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_mismatched_prior_levels_raise():
    backbone = VGG16Backbone()
    with pytest.raises(ValueError, match="7 levels"):
        SSD(backbone, Extras(1024, SSD300_EXTRAS), get_prior_preset("ssd512-voc"), 21)
    with pytest.raises(ValueError, match="levels"):
        build_model("ssd7", priors="ssd300-voc")


def test_bad_class_names_and_input_spec_raise():
    with pytest.raises(ValueError, match="class_names"):
        build_model("ssd7", num_classes=3, class_names=["background", "cat"])
    with pytest.raises(ValueError, match="image_size"):
        build_model("ssd7", input_spec=InputSpec(image_size=(320, 320)))
    model = build_model("ssd7", num_classes=3, class_names=["background", "cat", "dog"])
    assert model.class_names == ["background", "cat", "dog"]


def test_registry_errors():
    with pytest.raises(KeyError, match="unknown model"):
        build_model("no_such_model")
    with pytest.raises(ValueError, match="already registered"):
        register_model("ssd7")(lambda **kw: None)


def test_channels_last_matches_contiguous():
    model = copy.deepcopy(_built("ssd300_vgg16"))
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out.cls_logits, ref.cls_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.box_deltas, ref.box_deltas, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["ssd7", "ssd300_vgg16"])
def test_backward_finite_grads(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=NUM_CLASSES).train()
    out = model(torch.randn(2 if name == "ssd7" else 1, 3, *model.prior_config.image_size))
    loss = out.cls_logits.logsumexp(-1).mean() + out.box_deltas.abs().mean()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


def test_autocast_bfloat16_cpu():
    model = _built("ssd7")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 300, 300))
    assert out.cls_logits.dtype == torch.bfloat16 and torch.isfinite(out.cls_logits.float()).all()


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_jit_trace_ssd7():
    model = _built("ssd7")
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,))
        ref = model(x)
        got = traced(x)
        torch.testing.assert_close(got[0], ref.cls_logits)
        torch.testing.assert_close(got[1], ref.box_deltas)
        x2 = torch.randn(2, 3, 300, 300)
        torch.testing.assert_close(traced(x2)[1], model(x2).box_deltas)


def test_feature_sizes_and_priors_for_other_size():
    model = ssd7(num_classes=3, image_size=(256, 320))
    assert model.prior_config.image_size == (256, 320)
    size = (203, 411)
    with torch.no_grad():
        feats = model.extract_features(torch.zeros(1, 3, *size))
    assert model.feature_sizes(size) == [tuple(f.shape[-2:]) for f in feats]
    pri = model.priors_for(size)
    cfg = model.prior_config.with_image_size(size)
    torch.testing.assert_close(pri, PriorBoxGenerator(cfg)(model.feature_sizes(size)))
    assert model.priors_for((256, 320)) is model.priors


def test_head_flatten_order():
    b, a, k, h, w = 1, 2, 3, 2, 3
    pred = torch.empty(b, a * k, h, w)
    for ai in range(a):
        for ki in range(k):
            for y in range(h):
                for x in range(w):
                    pred[0, ai * k + ki, y, x] = 1000 * y + 100 * x + 10 * ai + ki
    flat = flatten_predictions(pred, k)
    assert flat.shape == (1, h * w * a, k)
    for y in range(h):
        for x in range(w):
            for ai in range(a):
                row = (y * w + x) * a + ai
                assert flat[0, row].tolist() == [1000 * y + 100 * x + 10 * ai + ki for ki in range(k)]
    torch.testing.assert_close(flatten_predictions(pred.contiguous(memory_format=torch.channels_last), k), flat)


def test_head_init_and_shapes():
    head = SSDHead([8, 16], [4, 6], num_classes=3)
    assert all(torch.count_nonzero(c.bias) == 0 for c in head.classification)
    cls, box = head([torch.randn(2, 8, 5, 5), torch.randn(2, 16, 3, 3)])
    assert cls.shape == (2, 5 * 5 * 4 + 3 * 3 * 6, 3) and box.shape == (2, 5 * 5 * 4 + 3 * 3 * 6, 4)


def test_input_spec_normalize():
    img = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1).expand(1, 3, 2, 2)
    rgb = InputSpec(mean=(1.0, 2.0, 3.0), std=(1.0, 2.0, 3.0))
    out = rgb.normalize(img)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 2, 2)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([9.0, 9.0, 9.0]))
    bgr = InputSpec(channel_order="bgr", mean=(104.0, 117.0, 123.0))
    assert bgr.channel_order == "BGR"
    torch.testing.assert_close(bgr.normalize(img.float())[0, :, 1, 1], torch.tensor([-74.0, -97.0, -113.0]))
    torch.testing.assert_close(bgr.denormalize(bgr.normalize(img)), img.float())
    assert InputSpec.from_dict(bgr.to_dict()) == bgr
    with pytest.raises(ValueError):
        InputSpec(channel_order="YUV")
    with pytest.raises(ValueError):
        InputSpec(std=(1.0, 0.0, 1.0))


class _TinyBackbone(torch.nn.Module):
    """Two maps (stride 2 and 4); refuses empty batches, to exercise the meta-device probe."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.c2 = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.out_channels = [4, 6]
        self.strides = [2, 4]

    def forward(self, x):
        if x.shape[0] == 0:
            raise RuntimeError("no empty batches here")
        a = self.bn(self.c1(x))
        return [a, self.c2(a)]


def test_custom_backbone_feature_probe_keeps_state():
    from multibox.anchors import config_from_scales

    cfg = config_from_scales((32, 48), steps=[2, 4], aspect_ratios=[(2.0,), ()])
    model = SSD(_TinyBackbone(), None, cfg, num_classes=3).train()
    assert model.feature_sizes() == [(16, 24), (8, 12)]
    assert model.num_priors == 16 * 24 * 4 + 8 * 12 * 2
    before = model.backbone.bn.running_mean.clone()
    assert model.feature_sizes((20, 20)) == [(10, 10), (5, 5)]
    assert model.training and model.backbone.bn.training
    assert torch.equal(model.backbone.bn.running_mean, before)
    out = model(torch.randn(2, 3, 32, 48))
    assert out.cls_logits.shape == (2, model.num_priors, 3)


def test_too_small_input_raises():
    with pytest.raises(ValueError, match="too small"):
        _built("ssd300_vgg16").feature_sizes((100, 100))
