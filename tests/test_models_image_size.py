"""Models of the trained comparison at another input size (``model.kwargs.image_size``, docs/models.md): priors
scaled from a preset, extras resized to the last backbone map, and the map sizes / prior counts worked out by hand."""

from __future__ import annotations

import pytest
import torch

from multibox.anchors import PriorBoxGenerator, get_prior_preset, scale_prior_config
from multibox.models import build_model, model_info
from multibox.models.extras import SSD300_EXTRAS, resized_extra_specs, sized_extra_specs


def test_scale_prior_config_sizes_are_the_same_fractions_of_the_image() -> None:
    base = get_prior_preset("ssd300-voc")
    assert scale_prior_config(base, (300, 300)) is base
    cfg = scale_prior_config(base, (128, 128))
    assert cfg.image_size == (128, 128)
    assert not cfg.caffe_int_sizes
    # ssd300-voc: min sizes 30, 60, 111, 162, 213, 264 and max 60, 111, ..., 315 pixels of 300
    assert cfg.levels[0].min_sizes == pytest.approx((30 * 128 / 300,))
    assert cfg.levels[0].max_sizes == pytest.approx((60 * 128 / 300,))
    assert cfg.levels[5].max_sizes == pytest.approx((315 * 128 / 300,))
    assert all(lvl.step is None for lvl in cfg.levels)
    assert [lvl.aspect_ratios for lvl in cfg.levels] == [lvl.aspect_ratios for lvl in base.levels]
    # maps 16, 8, 4, 2, 1, 1 with 4, 6, 6, 6, 4, 4 boxes: 1024 + 384 + 96 + 24 + 4 + 4
    priors = PriorBoxGenerator(cfg)([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1), (1, 1)])
    assert priors.shape == (1536, 4)
    # first location of the 16x16 map: centre (0.5 / 16, 0.5 / 16), the min-size box 12.8 / 128 = 0.1 wide
    assert priors[0].tolist() == pytest.approx([1 / 32, 1 / 32, 0.1, 0.1])
    # last box: the 1x1 map's centre
    assert priors[-1, :2].tolist() == pytest.approx([0.5, 0.5])


def test_scale_prior_config_non_square_uses_the_short_side() -> None:
    cfg = scale_prior_config(get_prior_preset("ssd300-voc"), (150, 600))
    assert cfg.image_size == (150, 600)
    assert cfg.levels[1].min_sizes == pytest.approx((60 * 0.5,))


def test_resized_extra_specs_keep_channels_and_names() -> None:
    specs = resized_extra_specs(SSD300_EXTRAS, 8)  # fc7 at 128x128: 8 -> 4 -> 2 -> 1 -> 1
    assert [s.name for s in specs] == ["conv8", "conv9", "conv10", "conv11"]
    assert [(s.mid_channels, s.out_channels) for s in specs] == [(256, 512), (128, 256), (128, 256), (128, 256)]
    assert [(s.kernel_size, s.stride, s.padding) for s in specs] == [(3, 2, 1), (3, 2, 1), (2, 1, 0), (1, 1, 0)]
    with pytest.raises(ValueError):
        sized_extra_specs(0, 2)


@pytest.mark.parametrize(("name", "kwargs", "maps", "num_priors"), [
    ("ssd300_vgg16", {}, [16, 8, 4, 2, 1, 1], 1536),
    ("ssd300_resnet50_nvidia", {}, [16, 8, 4, 2, 1, 1], 1536),
    # ssd_keras anchors: 4, 6, 6, 6, 4, 4 boxes on maps 8, 4, 2, 1, 1, 1: 256 + 96 + 24 + 6 + 4 + 4
    ("ssd300_mobilenetv1_keras_3x3", {}, [8, 4, 2, 1, 1, 1], 390),
    # SSDLite: 3 boxes on the first map, 6 on the others: 192 + 96 + 24 + 6 + 6 + 6
    ("ssdlite320_mobilenetv2", {}, [8, 4, 2, 1, 1, 1], 330),
])
def test_models_at_128(name: str, kwargs: dict, maps: list[int], num_priors: int) -> None:
    info = model_info(name, num_classes=7, image_size=[128, 128], **kwargs)
    assert info["image_size"] == (128, 128)
    assert [h for h, _ in info["feature_sizes"]] == maps
    assert info["num_priors"] == num_priors


def test_timm_model_at_128() -> None:
    pytest.importorskip("timm")
    info = model_info("ssd300_timm", num_classes=7, image_size=[128, 128], timm_name="mobilenetv3_large_100")
    assert [h for h, _ in info["feature_sizes"]] == [16, 8, 4, 2, 1, 1]
    assert info["num_priors"] == 1536


@pytest.mark.parametrize("name", ["ssd300_vgg16", "ssd300_resnet50_nvidia"])
def test_image_size_300_is_the_original_model(name: str) -> None:
    torch.manual_seed(0)
    a = build_model(name, num_classes=7)
    b = build_model(name, num_classes=7, image_size=(300, 300))
    assert a.num_priors == b.num_priors == 8732
    assert torch.equal(a.priors, b.priors)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    # the original extras: the last two are unpadded 3x3 convolutions (5 -> 3 -> 1)
    convs = [m for n, m in b.extras.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert [(c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs][-2:] == [(3, 1, 0), (3, 1, 0)]


def test_vgg_at_128_forward_shapes() -> None:
    model = build_model("ssd300_vgg16", num_classes=3, image_size=[128, 128])
    out = model(torch.zeros(1, 3, 128, 128))
    assert out.cls_logits.shape == (1, 1536, 3)
    assert out.box_deltas.shape == (1, 1536, 4)
