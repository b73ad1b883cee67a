"""Inception v4 and Inception-ResNet v2 backbones: timm's own models with random weights (and random BN statistics)
are saved, loaded into ours, and the stride-8/16/32 maps compared (<= 1e-5), in the networks' own ``"valid"``
layout and in the SSD ``"same"`` layout (timm's model with every k x k conv / max pool padded by k // 2 by hand);
the SSD layouts, the cache search and the errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from multibox.models import build_model, model_info
from multibox.models.backbones import build_backbone

HAVE_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAVE_TIMM, reason="timm not installed (pip install 'multibox[timm]')")

# timm name -> (our backbone name, timm feature_info indices of the stride 8, 16, 32 maps)
NETS = {"inception_v4": ("inception_v4", [2, 3, 4]), "inception_resnet_v2": ("inception_resnet_v2", [2, 3, 4])}


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _pad_like_same(model: torch.nn.Module) -> None:
    """timm's network turned into the "same" layout by hand: every conv pads k // 2, every max pool 1."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.padding = (m.kernel_size[0] // 2, m.kernel_size[1] // 2)
        elif isinstance(m, torch.nn.MaxPool2d):
            m.padding = 1


@pytest.fixture(scope="module", params=sorted(NETS))
def timm_file(request, tmp_path_factory):
    """``(timm name, timm model in eval mode, path of its state dict in timm's HF cache layout)``."""
    import timm
    from safetensors.torch import save_file

    name = request.param
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False)
    _randomize_bn(ref, 3)
    ref.eval()
    folder = tmp_path_factory.mktemp("hf") / f"models--timm--{name}.tf_in1k" / "snapshots" / "0123abcd"
    folder.mkdir(parents=True)
    path = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    return name, ref, path


@needs_timm
def test_timm_weights_load_and_match_valid_layout(timm_file):
    name, ref, path = timm_file
    ours = build_backbone(NETS[name][0], padding="valid").eval()
    report = ours.load_pretrained_file(path)
    assert report["skipped"] and all(k.split(".")[0] in ("last_linear", "classif") for k in report["skipped"])
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        want = ref.forward_intermediates(x, indices=NETS[name][1], intermediates_only=True)
        got = ours(x)
    assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in want]
    assert [t.shape[1] for t in got] == ours.out_channels and ours.strides == [8, 16, 32]
    for a, b in zip(got, want, strict=True):
        assert float((a - b).abs().max()) <= 1e-5


@needs_timm
def test_same_layout_matches_timm_padded_by_hand(timm_file, monkeypatch):
    import copy

    name, ref, path = timm_file
    padded = copy.deepcopy(ref)
    _pad_like_same(padded)
    # found in the (fake) timm cache by pretrained_backbone=imagenet, inside a whole SSD300
    monkeypatch.setenv("HF_HUB_CACHE", str(path.parents[3]))
    monkeypatch.setenv("TORCH_HOME", str(path.parents[3] / "torch"))
    model = build_model(f"ssd300_{name}", num_classes=3, pretrained_backbone="imagenet").eval()
    x = torch.randn(1, 3, 150, 190)
    with torch.no_grad():
        want = padded.forward_intermediates(x, indices=NETS[name][1], intermediates_only=True)
        got = model.backbone(x)
    assert [tuple(t.shape[-2:]) for t in got] == [(19, 24), (10, 12), (5, 6)]  # ceil(H / stride)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= 1e-5


@pytest.mark.parametrize("name", sorted(NETS))
def test_ssd_layouts(name):
    i300 = model_info(f"ssd300_{name}")
    assert i300["backbone"] == name and i300["num_priors"] == 8732
    assert i300["feature_sizes"] == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    i512 = model_info(f"ssd512_{name}")
    assert i512["num_priors"] == 24564
    assert i512["feature_sizes"] == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    # the networks' own unpadded layout: 299 -> 35, 17, 8 (the paper's Figure 9 / 15 sizes)
    with torch.device("meta"):
        valid = build_backbone(name, padding="valid")
    from multibox.models.assemble import backbone_map_sizes

    assert backbone_map_sizes(valid, (299, 299)) == [(35, 35), (17, 17), (8, 8)]


def test_taps_and_channels():
    with torch.device("meta"):
        v4 = build_backbone("inception_v4", taps=(8, 16))
        ir = build_backbone("inception_resnet_v2")
    assert (v4.out_channels, v4.strides) == ([384, 1024], [8, 16])
    assert len(v4.features) == 18  # blocks after the last tap are not built
    assert (ir.out_channels, ir.strides) == ([320, 1088, 1536], [8, 16, 32])
    with pytest.raises(ValueError, match="taps must be ascending strides"):
        build_backbone("inception_v4", taps=(16, 8))
    with pytest.raises(ValueError, match="padding must be one of"):
        build_backbone("inception_resnet_v2", padding="reflect")


def test_pretrained_errors_name_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match=r"inception_v4 found \(looked for .*inception_v4\*\.safetensors.*"
                                                r"models--timm--inception_v4\.\*/snapshots"):
        build_model("ssd300_inception_v4", num_classes=3, pretrained_backbone="imagenet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"inception_resnet_v2 found .*empty/inceptionresnetv2-\*\.pth"):
        build_model("ssd512_inception_resnet_v2", num_classes=3, pretrained_backbone=str(tmp_path / "empty"))
    # an Inception v4 state dict for Inception-ResNet v2: the missing keys are named, nothing is loaded
    v4 = build_backbone("inception_v4", taps=(8,))
    torch.save(v4.state_dict(), tmp_path / "v4.pth")
    with pytest.raises(ValueError, match=r"v4\.pth: the state dict lacks .* conv2d_1a\.conv\.weight"):
        build_model("ssd300_inception_resnet_v2", num_classes=3, pretrained_backbone=str(tmp_path / "v4.pth"))
