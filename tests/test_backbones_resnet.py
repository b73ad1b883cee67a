"""ResNet v1 / v2, NVIDIA's SSD300-ResNet50 and timm backbones: layouts, derived extras, and ImageNet weights from
torchvision's / timm's own models (random weights saved to a file, loaded into ours, feature maps compared)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
import torchvision

from multibox.engine.trainer import resolve_backbone_weights
from multibox.models import build_model, model_info
from multibox.models.backbones import build_backbone
from multibox.models.backbones.resnet import PreActBottleneck
from multibox.models.extras import sized_extra_specs

HAVE_TIMM = importlib.util.find_spec("timm") is not None


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine terms, so that a mis-mapped BN key changes the output."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _tv_stages(tv: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    outs = []
    for name in ("layer1", "layer2", "layer3", "layer4"):
        y = getattr(tv, name)(y)
        outs.append(y)
    return outs


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_resnet_weights_load_and_match(tmp_path, depth):
    torch.manual_seed(depth)
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    _randomize_bn(tv)
    tv.eval()
    path = tmp_path / f"resnet{depth}-0123abcd.pth"
    torch.save(tv.state_dict(), path)
    ours = build_backbone(f"resnet{depth}").eval()
    report = ours.load_pretrained_file(path)
    assert sorted(report["skipped"]) == ["fc.bias", "fc.weight"]
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ref = _tv_stages(tv, x)[1:]
        got = ours(x)
    assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in ref]
    for a, b in zip(got, ref, strict=True):
        assert float((a - b).abs().max()) <= 1e-5


def test_nvidia_layout_matches_torchvision_with_stride1_layer3(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None)
    _randomize_bn(tv, 1)
    tv.eval()
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(tv.state_dict(), path)
    # NVIDIA's recipe applied to torchvision's own model: the first block of layer3 strides 1
    tv.layer3[0].conv2.stride = (1, 1)
    tv.layer3[0].downsample[0].stride = (1, 1)
    model = build_model("ssd300_resnet50_nvidia", num_classes=3, pretrained_backbone=str(tmp_path)).eval()
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        ref = _tv_stages(tv, x)[2]
        (got,) = model.backbone(x)
    assert got.shape == (1, 1024, 38, 38)
    assert float((got - ref).abs().max()) <= 1e-5
    info = model_info("ssd300_resnet50_nvidia")
    assert info["num_priors"] == 8732
    assert info["feature_sizes"] == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    assert "layer4.0.conv1.weight" not in model.backbone.state_dict()


def test_resnet_ssd_layouts():
    i300 = model_info("ssd300_resnet50")
    assert i300["num_priors"] == 8732 and i300["backbone"] == "resnet50"
    assert i300["feature_sizes"] == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    i512 = model_info("ssd512_resnet101")
    assert i512["num_priors"] == 24564
    assert i512["feature_sizes"] == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert model_info("ssd300_resnetv2_50")["num_priors"] == 8732
    b18 = build_backbone("resnet18")
    assert (b18.out_channels, b18.strides) == ([128, 256, 512], [8, 16, 32])
    b50 = build_backbone("resnet50")
    assert (b50.out_channels, b50.strides) == ([512, 1024, 2048], [8, 16, 32])


def test_sized_extra_specs_by_hand():
    def sides(start, specs):
        out, s = [], start
        for sp in specs:
            s = (s + 2 * sp.padding - sp.kernel_size) // sp.stride + 1
            out.append(s)
        return out

    assert sides(10, sized_extra_specs(10, 3)) == [5, 3, 1]
    assert sides(16, sized_extra_specs(16, 4)) == [8, 4, 2, 1]
    assert sides(4, sized_extra_specs(4, 3)) == [2, 1, 1]
    specs = sized_extra_specs(10, 3, channels=(512, 256))
    assert [(s.mid_channels, s.out_channels) for s in specs] == [(256, 512), (128, 256), (128, 256)]
    with pytest.raises(ValueError, match="count >= 1"):
        sized_extra_specs(10, 0)


def test_preact_bottleneck_is_pre_activation():
    torch.manual_seed(0)
    block = PreActBottleneck(64, 32, stride=2)
    _randomize_bn(block)
    block.eval()
    x = torch.randn(1, 64, 16, 16)

    def bn(m, t):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    pre = F.relu(bn(block.bn1, x))
    out = F.conv2d(pre, block.conv1.weight)
    out = F.conv2d(F.relu(bn(block.bn2, out)), block.conv2.weight, stride=2, padding=1)
    out = F.conv2d(F.relu(bn(block.bn3, out)), block.conv3.weight)
    expected = out + F.conv2d(pre, block.downsample.weight, stride=2)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_pretrained_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match=r"resnet50.*looked for .*torch/hub/checkpoints/resnet50-\*\.pth"):
        build_model("ssd300_resnet50", num_classes=3, pretrained_backbone="imagenet")
    with pytest.raises(FileNotFoundError, match=r"no ImageNet weights for resnet34 found .*empty/resnet34-\*\.pth"):
        (tmp_path / "empty").mkdir()
        build_model("ssd300_resnet34", num_classes=3, pretrained_backbone=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"nothere\.pth: no such weights file"):
        build_model("ssd300_resnet18", num_classes=3, pretrained_backbone=str(tmp_path / "nothere.pth"))
    # a ResNet-18 file for a ResNet-50: shapes named, nothing loaded
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"r18\.pth: cannot load .*layer1\.0\.conv1\.weight has shape"):
        build_model("ssd300_resnet50", num_classes=3, pretrained_backbone=str(tmp_path / "r18.pth"))
    # the trainer's model.pretrained_backbone follows the same rules (and finds the cache file when present)
    model = build_model("ssd300_resnet18", num_classes=3)
    with pytest.raises(FileNotFoundError, match="resnet18-"):
        resolve_backbone_weights("imagenet", "ssd300_resnet18", model.backbone)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), cache / "resnet18-f37072fd.pth")
    assert resolve_backbone_weights("imagenet", "ssd300_resnet18", model.backbone) == str(
        cache / "resnet18-f37072fd.pth")
    assert build_model("ssd300_resnet18", num_classes=3, pretrained_backbone="imagenet") is not None
    with pytest.raises(ValueError, match="no ImageNet weights are known for ssd300_resnetv2_50"):
        resolve_backbone_weights("imagenet", "ssd300_resnetv2_50", build_backbone("resnetv2_50"))


@pytest.mark.skipif(not HAVE_TIMM, reason="timm not installed (pip install 'multibox[timm]')")
@pytest.mark.parametrize("timm_name", ["resnet18", "mobilenetv3_large_100"])
def test_timm_weights_load_and_match(tmp_path, timm_name):
    import timm

    torch.manual_seed(0)
    ref_model = timm.create_model(timm_name, pretrained=False)
    _randomize_bn(ref_model, 2)
    ref_model.eval()
    path = tmp_path / f"{timm_name}.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ref_model.state_dict().items()}, str(path))
    model = build_model("ssd300_timm", num_classes=3, timm_name=timm_name, pretrained_backbone=str(path)).eval()
    bb = model.backbone
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        ref = ref_model.forward_intermediates(x, indices=bb.picks, intermediates_only=True)
        got = bb(x)
    assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in ref]
    for a, b in zip(got, ref, strict=True):
        assert float((a - b).abs().max()) <= 1e-5
    assert bb.strides == [8, 16, 32]
    assert model.num_priors == 8732 or timm_name != "resnet18"


@pytest.mark.skipif(not HAVE_TIMM, reason="timm not installed")
def test_timm_prefix_and_unknown_name():
    b = build_backbone("timm:resnet18")
    assert b.out_channels == [128, 256, 512] and b.strides == [8, 16, 32]
    with pytest.raises(ValueError, match="timm cannot build 'no_such_net'"):
        build_backbone("timm:no_such_net")


def test_timm_missing_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ImportError, match=r"needs the optional dependency timm.*pip install 'multibox\[timm\]'"):
        build_model("ssd300_timm", num_classes=3)


def test_models_listing_without_timm(monkeypatch, capsys):
    import builtins
    import json

    from multibox.cli import main

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    assert main(["models", "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {m["name"]: m for m in doc["models"]}
    assert "pip install 'multibox[timm]'" in rows["ssd300_timm"]["unavailable"]
    assert rows["ssd300_timm"]["backbone"] is None
    assert rows["ssd300_resnet50_nvidia"]["num_priors"] == 8732
    assert "unavailable" in {b["name"]: b for b in doc["backbones"]}["timm"]
