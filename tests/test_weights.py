"""Weight transfer: partial loads, exclude patterns, class remapping, freezing, VGG16 ImageNet init."""

import os

import pytest
import torch
import torch.nn.functional as F
import torchvision

from multibox.engine.checkpoint import save_weights
from multibox.engine.weights import (
    LoadReport,
    classifier_layers,
    freeze,
    load_backbone_weights,
    load_weights,
    name_matches,
    set_frozen_bn_eval,
    trainable_only,
)
from multibox.models import build_model
from multibox.models.backbones.vgg import VGG16Backbone

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZE = (64, 64)


def _ssd7(names, seed):
    torch.manual_seed(seed)
    return build_model("ssd7", num_classes=len(names), class_names=names, image_size=SIZE)


# ------------------------------------------------------------------------------------------------ patterns
def test_name_patterns_glob_scope_and_regex():
    n = "head.classification.0.weight"
    assert name_matches(n, ["head.*"])  # glob
    assert name_matches(n, ["head.classification"])  # scope
    assert name_matches(n, "head.classification.0")
    assert not name_matches(n, ["head.class"])  # a scope is a whole module name, not a string prefix
    assert not name_matches(n, ["head.regression"])
    assert name_matches(n, [r"re:classification\.\d+\.weight$"])
    assert not name_matches("head.classification.0.bias", [r"re:classification\.\d+\.weight$"])
    assert name_matches("backbone.conv1.bn.weight", ["backbone.conv[12].*"])
    assert not name_matches("backbone.conv3.bn.weight", ["backbone.conv[12].*"])
    with pytest.raises(ValueError, match="regular expression"):
        name_matches(n, ["re:("])


# --------------------------------------------------------------------------------------- class remapping
def test_classifier_layers_follow_the_head_layout():
    model = _ssd7(["background", "a", "b"], 0)
    layers = classifier_layers(model)
    assert layers == {f"head.classification.{k}.{p}": 4 for k in range(4) for p in ("weight", "bias")}


def test_fine_tuning_onto_another_class_set_keeps_rows_by_name(tmp_path):
    src_names = ["background", "a", "b", "c"]
    dst_names = ["background", "c", "x", "a"]
    src = _ssd7(src_names, 0).eval()
    dst = _ssd7(dst_names, 1).eval()
    fresh = {k: v.clone() for k, v in dst.state_dict().items()}
    report = load_weights(dst, src.state_dict(), source_class_names=src_names)

    assert len(report.remapped) == 8 and report.skipped_shape == [] and report.missing == []
    assert report.classes_kept == ["background", "c", "a"] and report.classes_new == ["x"]
    # channel a * C + c is class c of anchor a: check rows by hand
    for k in range(4):
        for p in ("weight", "bias"):
            name = f"head.classification.{k}.{p}"
            s, d, f = src.state_dict()[name], dst.state_dict()[name], fresh[name]
            for a in range(4):
                assert torch.equal(d[a * 4 + 0], s[a * 4 + 0])  # background
                assert torch.equal(d[a * 4 + 1], s[a * 4 + 3])  # c
                assert torch.equal(d[a * 4 + 3], s[a * 4 + 1])  # a
                assert torch.equal(d[a * 4 + 2], f[a * 4 + 2])  # x keeps its fresh init
    torch.manual_seed(5)
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        so, do = src(x), dst(x)
    torch.testing.assert_close(do.cls_logits[..., [0, 1, 3]], so.cls_logits[..., [0, 3, 1]], rtol=0, atol=1e-6)
    torch.testing.assert_close(do.box_deltas, so.box_deltas, rtol=0, atol=1e-6)

    # the same transfer from a weights file: the source class names come from its metadata
    path = save_weights(tmp_path / "src.safetensors", src, model_name="ssd7", class_names=src_names,
                        model_kwargs={"image_size": list(SIZE)}, config={}, step=0)
    dst2 = _ssd7(dst_names, 1).eval()
    report2 = load_weights(dst2, path)
    assert report2.classes_kept == ["background", "c", "a"]
    with torch.no_grad():
        torch.testing.assert_close(dst2(x).cls_logits, do.cls_logits, rtol=0, atol=0)


def test_same_count_different_order_is_permuted_not_copied():
    src = _ssd7(["background", "a", "b"], 0)
    dst = _ssd7(["background", "b", "a"], 1)
    load_weights(dst, src.state_dict(), source_class_names=src.class_names)
    w_s, w_d = src.head.classification[0].weight, dst.head.classification[0].weight
    assert torch.equal(w_d[1], w_s[2]) and torch.equal(w_d[2], w_s[1]) and torch.equal(w_d[0], w_s[0])
    with pytest.raises(ValueError, match="source_class_names has 2 classes"):
        load_weights(dst, src.state_dict(), source_class_names=["background", "b"])
    with pytest.raises(ValueError, match="duplicate"):
        load_weights(dst, src.state_dict(), source_class_names=["background", "a", "a"])


# ------------------------------------------------------------------------------------------ partial loads
def test_exclude_shape_missing_unexpected_and_strict(tmp_path):
    src = _ssd7(["background", "a", "b", "c"], 0)
    dst = _ssd7(["background", "a"], 1)
    fresh = {k: v.clone() for k, v in dst.state_dict().items()}
    sd = dict(src.state_dict())
    sd.pop("backbone.conv7.bn.running_var")
    sd["extra.thing"] = torch.zeros(3)
    # no class names: the classifier shapes differ and are skipped
    report = load_weights(dst, sd, exclude=["backbone.conv1", r"re:^head\.regression\.0\."])
    assert isinstance(report, LoadReport)
    assert report.unexpected == ["extra.thing"] and report.missing == ["backbone.conv7.bn.running_var"]
    assert set(report.skipped_excluded) == {
        "backbone.conv1.conv.weight", "backbone.conv1.bn.weight", "backbone.conv1.bn.bias",
        "backbone.conv1.bn.running_mean", "backbone.conv1.bn.running_var", "backbone.conv1.bn.num_batches_tracked",
        "head.regression.0.weight", "head.regression.0.bias",
    }
    assert sorted(n for n, _, _ in report.skipped_shape) == sorted(
        f"head.classification.{k}.{p}" for k in range(4) for p in ("weight", "bias"))
    assert ("head.classification.0.bias", (16,), (8,)) in report.skipped_shape
    new = dst.state_dict()
    for name in report.loaded:
        assert torch.equal(new[name], sd[name]), name
    for name in [*report.skipped_excluded, *report.missing, *(n for n, _, _ in report.skipped_shape)]:
        assert torch.equal(new[name], fresh[name]), name
    assert "shape mismatch 8" in report.summary() and "extra.thing" in report.summary()
    with pytest.raises(ValueError, match=r"head\.classification\.0\.weight: source \[16"):
        load_weights(_ssd7(["background", "a"], 1), sd, strict_shapes=True)


def test_pth_state_dict_with_module_prefix(tmp_path):
    src = _ssd7(["background", "a"], 0)
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = _ssd7(["background", "a"], 1)
    report = load_weights(dst, path)
    assert len(report.loaded) == len(src.state_dict()) and not report.missing and not report.unexpected
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad\.pth"):
        load_weights(dst, bad)


# ------------------------------------------------------------------------------------------------ freezing
def test_freeze_trainable_only_and_frozen_batchnorm():
    model = _ssd7(["background", "a"], 0)
    frozen = freeze(model, ["backbone.conv1", "backbone.conv2"])
    assert frozen == [f"backbone.conv{i}.{p}" for i in (1, 2) for p in ("conv.weight", "bn.weight", "bn.bias")]
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in frozen)
    with pytest.raises(ValueError, match="match no parameter"):
        freeze(model, ["backbone.conv99"])

    model.train()
    assert set_frozen_bn_eval(model, frozen) == ["backbone.conv1.bn", "backbone.conv2.bn"]
    assert set_frozen_bn_eval(model) == ["backbone.conv1.bn", "backbone.conv2.bn"]  # from requires_grad
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    model(torch.randn(2, 3, *SIZE))
    after = model.state_dict()
    assert torch.equal(after["backbone.conv1.bn.running_mean"], before["backbone.conv1.bn.running_mean"])
    assert torch.equal(after["backbone.conv2.bn.running_mean"], before["backbone.conv2.bn.running_mean"])
    assert not torch.equal(after["backbone.conv3.bn.running_mean"], before["backbone.conv3.bn.running_mean"])

    frozen = trainable_only(model, ["head.classification"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [f"head.classification.{k}.{p}" for k in range(4) for p in ("weight", "bias")]
    assert set(frozen) == {n for n, _ in model.named_parameters()} - set(trainable)
    model.train()
    assert len(set_frozen_bn_eval(model)) == 7


# ------------------------------------------------------------------------------------- VGG16 ImageNet init
@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).eval()


def test_vgg16_load_pretrained_matches_torchvision_conv4_3(vgg):
    sd = vgg.state_dict()
    ours = VGG16Backbone().eval()
    result = ours.load_pretrained(sd)
    assert len(result["loaded"]) == 30 and result["missing"] == ["l2norm.weight"]
    assert sorted(result["unexpected"]) == ["classifier.6.bias", "classifier.6.weight"]

    captured = {}
    ours.l2norm.register_forward_pre_hook(lambda m, args: captured.setdefault("conv4_3", args[0].clone()))
    torch.manual_seed(1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours(x)
        ref = vgg.features[:23](x)  # through conv4_3 + ReLU
    assert captured["conv4_3"].shape == ref.shape == (1, 512, 8, 8)
    torch.testing.assert_close(captured["conv4_3"], ref, rtol=1e-5, atol=1e-5)

    # fc6 / fc7 "reduced": hand-written index formulas on the flat torchvision matrices
    w6, b6 = sd["classifier.0.weight"], sd["classifier.0.bias"]
    w7, b7 = sd["classifier.3.weight"], sd["classifier.3.bias"]
    assert ours.fc6.weight.shape == (1024, 512, 3, 3) and ours.fc7.weight.shape == (1024, 1024, 1, 1)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        o, i = int(torch.randint(1024, (1,), generator=g)), int(torch.randint(512, (1,), generator=g))
        y, xx = int(torch.randint(3, (1,), generator=g)), int(torch.randint(3, (1,), generator=g))
        assert ours.fc6.weight[o, i, y, xx] == w6[4 * o, i * 49 + (3 * y) * 7 + 3 * xx]
        j = int(torch.randint(1024, (1,), generator=g))
        assert ours.fc7.weight[o, j, 0, 0] == w7[4 * o, 4 * j]
        assert ours.fc6.bias[o] == b6[4 * o] and ours.fc7.bias[o] == b7[4 * o]


def test_load_backbone_weights_from_file_and_errors(vgg, tmp_path):
    features = {k: v for k, v in vgg.state_dict().items() if k.startswith("features.")}
    path = tmp_path / "vgg16_features.pth"
    torch.save(features, path)
    model = build_model("ssd300_vgg16", num_classes=3)
    fc6_before = model.backbone.fc6.weight.clone()
    report = load_backbone_weights(model, path)
    assert len(report.loaded) == 26 and report.unexpected == []
    assert set(report.missing) == {"backbone.l2norm.weight", "backbone.fc6.weight", "backbone.fc6.bias",
                                   "backbone.fc7.weight", "backbone.fc7.bias"}
    assert torch.equal(model.backbone.conv4_3.weight, features["features.21.weight"])
    assert torch.equal(model.backbone.fc6.weight, fc6_before)

    with pytest.raises(ValueError, match="vgg16_bn"):
        VGG16Backbone().load_pretrained({"features.1.running_mean": torch.zeros(64)})
    with pytest.raises(ValueError, match=r"features\.0\.weight has shape"):
        VGG16Backbone().load_pretrained({"features.0.weight": torch.zeros(64, 3, 5, 5)})
    with pytest.raises(NotImplementedError, match="SSD7Backbone does not implement load_pretrained"):
        load_backbone_weights(_ssd7(["background", "a"], 0), path)


def test_frozen_module_gets_no_gradient_update():
    model = _ssd7(["background", "a"], 0)
    trainable_only(model, ["head"])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = model.backbone.conv1.conv.weight.clone()
    head_before = model.head.regression[0].weight.clone()
    out = model(torch.randn(2, 3, *SIZE))
    (out.cls_logits.square().mean() + F.l1_loss(out.box_deltas, torch.zeros_like(out.box_deltas))).backward()
    opt.step()
    assert torch.equal(model.backbone.conv1.conv.weight, before)
    assert not torch.equal(model.head.regression[0].weight, head_before)


def test_backbone_from_a_trained_detector_file(tmp_path):
    """``pretrained_backbone`` may name a whole detector's weights (a checkpoint or zoo bundle): its
    ``backbone.*`` tensors initialize the backbone, nothing else is taken."""
    from multibox.engine.trainer import resolve_backbone_weights

    kwargs = {"image_size": [128, 128]}
    torch.manual_seed(1)
    donor = build_model("ssd300_mobilenetv2", num_classes=2, **kwargs)  # other class count: heads differ anyway
    with torch.no_grad():
        for t in donor.backbone.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t))  # BN statistics included, so a skipped buffer would show
    path = tmp_path / "donor.safetensors"
    save_weights(path, donor, model_name="ssd300_mobilenetv2", class_names=["background", "person"],
                 model_kwargs=kwargs, config=None, step=0)
    torch.manual_seed(2)
    model = build_model("ssd300_mobilenetv2", num_classes=4, stride8=True, neck="fpn", **kwargs)
    heads_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    report = load_backbone_weights(model, path)
    own = model.backbone.state_dict()
    assert len(report.loaded) == len(own) > 300 and report.missing == []
    for k, v in donor.backbone.state_dict().items():
        assert torch.equal(own[k], v), k
    for k, v in model.state_dict().items():
        if not k.startswith("backbone."):
            assert torch.equal(v, heads_before[k]), k  # extras, neck and heads keep their own init
    with pytest.raises(ValueError, match="no zoo model 'nope'.*face-res10-300"):
        resolve_backbone_weights("zoo:nope", "ssd300_mobilenetv2")


def test_folded_batchnorm_is_recognized():
    """A backbone whose BatchNorm statistics were folded into the weights (mean 0, variance 1 - eps, as the zoo's
    imported person detector) is told apart from one with real statistics, so training can warn."""
    from multibox.engine.trainer import folded_batchnorm

    model = build_model("ssd300_mobilenetv2", num_classes=2, image_size=[128, 128])
    assert not folded_batchnorm(model.backbone)  # fresh BatchNorm: variance 1, not 1 - eps
    for b in model.backbone.modules():
        if isinstance(b, torch.nn.BatchNorm2d):
            b.running_var.fill_(1 - b.eps)
    assert folded_batchnorm(model.backbone)
    next(b for b in model.backbone.modules() if isinstance(b, torch.nn.BatchNorm2d)).running_mean[0] = 0.5
    assert not folded_batchnorm(model.backbone)
    assert not folded_batchnorm(torch.nn.Conv2d(1, 1, 1))  # no BatchNorm at all
