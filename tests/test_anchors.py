import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

from multibox.anchors import (
    PRIOR_PRESETS,
    PriorBoxGenerator,
    PriorConfig,
    PriorLevel,
    caffe_min_max_sizes,
    config_from_scales,
    cxcywh_to_xyxy,
    get_prior_preset,
    paper_scales,
    xyxy_to_cxcywh,
)


def test_hand_computed_small_config():
    # 100x100 image, one 2x2 map, step 50: centres at 25 and 75 px.
    cfg = PriorConfig(
        image_size=(100, 100),
        levels=(PriorLevel(min_sizes=(20,), max_sizes=(40,), aspect_ratios=(2,), step=50),),
    )
    p = PriorBoxGenerator(cfg)([(2, 2)])
    assert p.shape == (16, 4) and p.dtype == torch.float32
    r2 = math.sqrt(2.0)
    side = math.sqrt(20 * 40)
    # boxes of one location in Caffe order: min square, sqrt(min*max) square, ar 2, ar 1/2
    wh = [(20, 20), (side, side), (20 * r2, 20 / r2), (20 / r2, 20 * r2)]
    expected = []
    for cy in (25, 75):  # row-major over (y, x)
        for cx in (25, 75):
            for w, h in wh:
                expected.append([cx / 100, cy / 100, w / 100, h / 100])
    torch.testing.assert_close(p, torch.tensor(expected, dtype=torch.float32), atol=1e-7, rtol=0)


def test_non_square_image_and_explicit_two_steps():
    cfg = PriorConfig(image_size=(100, 200), levels=(PriorLevel(min_sizes=(10,), step=(50, 100)),))
    p = PriorBoxGenerator(cfg)([(2, 2)])
    # x centres 50, 150 of 200; y centres 25, 75 of 100; w = 10/200, h = 10/100
    expected = torch.tensor(
        [[0.25, 0.25, 0.05, 0.1], [0.75, 0.25, 0.05, 0.1], [0.25, 0.75, 0.05, 0.1], [0.75, 0.75, 0.05, 0.1]]
    )
    torch.testing.assert_close(p, expected)


def test_step_none_uses_image_over_feature_size():
    cfg = PriorConfig(image_size=(90, 90), levels=(PriorLevel(min_sizes=(9,)),))
    p = PriorBoxGenerator(cfg)([(3, 3)])
    torch.testing.assert_close(p[:3, 0], torch.tensor([15 / 90, 45 / 90, 75 / 90]))


def test_caffe_ratio_expansion_and_counts():
    lvl = PriorLevel(min_sizes=(30,), max_sizes=(60,), aspect_ratios=(2, 3, 2, 1))
    assert lvl.ratios() == pytest.approx([1.0, 2.0, 0.5, 3.0, 1 / 3])
    assert lvl.num_priors == 6
    assert PriorLevel(min_sizes=(30,), aspect_ratios=(2,), flip=False).num_priors == 2
    assert PriorLevel(min_sizes=(30, 50), max_sizes=(60, 80), aspect_ratios=(2,)).num_priors == 8


def test_caffe_formula_matches_issue_values():
    assert caffe_min_max_sizes(300, 6, 20, 90, 10, 20) == (
        [30, 60, 111, 162, 213, 264],
        [60, 111, 162, 213, 264, 315],
    )
    mins, maxs = caffe_min_max_sizes(512, 7, 15, 90, 7, 15)
    assert mins == pytest.approx([35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8])
    assert maxs == pytest.approx([76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6])
    mins, maxs = caffe_min_max_sizes(512, 7, 10, 90, 4, 10)
    assert mins == pytest.approx([20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8])
    assert maxs == pytest.approx([51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72])
    mins, maxs = caffe_min_max_sizes(300, 6, 15, 90, 7, 15)
    assert mins == pytest.approx([21, 45, 99, 153, 207, 261])
    assert maxs == pytest.approx([45, 99, 153, 207, 261, 315])


@pytest.mark.parametrize(("name", "count"), [("ssd300-voc", 8732), ("ssd300-coco", 8732),
                                             ("ssd512-voc", 24564), ("ssd512-coco", 24564)])
def test_preset_counts(name, count):
    cfg = get_prior_preset(name)
    gen = PriorBoxGenerator(cfg)
    p = gen(cfg.default_feature_sizes())
    assert p.shape == (count, 4)
    assert gen.num_priors(cfg.default_feature_sizes()) == count
    assert torch.isfinite(p).all()


def test_feature_sizes_of_presets():
    assert get_prior_preset("ssd300-voc").default_feature_sizes() == [(38, 38), (19, 19), (10, 10), (5, 5),
                                                                      (3, 3), (1, 1)]
    assert [h for h, _ in get_prior_preset("ssd512-voc").default_feature_sizes()] == [64, 32, 16, 8, 4, 2, 1]


def test_caffe_int_truncation_of_sizes():
    cfg = get_prior_preset("ssd512-voc")
    assert cfg.caffe_int_sizes
    p = PriorBoxGenerator(cfg)(cfg.default_feature_sizes())
    # Caffe builds 35-pixel boxes from min_size 35.84, and sqrt(35 * 76) for the extra box
    assert p[0, 2].item() == pytest.approx(35 / 512)
    assert p[1, 2].item() == pytest.approx(math.sqrt(35 * 76) / 512)
    from dataclasses import replace

    p_float = PriorBoxGenerator(replace(cfg, caffe_int_sizes=False))(cfg.default_feature_sizes())
    assert p_float[0, 2].item() == pytest.approx(35.84 / 512)


def test_clip_corners_like_caffe():
    cfg = PriorConfig(image_size=(100, 100), levels=(PriorLevel(min_sizes=(60,), step=50),), clip=True)
    p = PriorBoxGenerator(cfg)([(2, 2)])
    xyxy = cxcywh_to_xyxy(p)
    assert xyxy.min() >= 0 and xyxy.max() <= 1
    # first box: centre 25 px, side 60 -> corners -5..55 clipped to 0..55
    torch.testing.assert_close(xyxy[0], torch.tensor([0.0, 0.0, 0.55, 0.55]))


@pytest.mark.parametrize("clip", [False, True])
def test_equals_torchvision_default_boxes_coco(clip):
    """torchvision's ssd300_vgg16 COCO config: scales 0.07..1.05, same steps and ratios."""
    tv = DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        steps=[8, 16, 32, 64, 100, 300],
        clip=clip,
    )
    grid = [[38, 38], [19, 19], [10, 10], [5, 5], [3, 3], [1, 1]]
    ref = tv._grid_default_boxes(grid, [300, 300], dtype=torch.float32)  # cxcywh normalized
    from dataclasses import replace

    cfg = replace(get_prior_preset("ssd300-coco"), clamp_wh=clip)
    ours = PriorBoxGenerator(cfg)([tuple(g) for g in grid])
    assert ours.shape == ref.shape == (8732, 4)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_paper_scales_and_config_from_scales():
    s = paper_scales(6, 0.2, 0.9)
    assert s == pytest.approx([0.2, 0.34, 0.48, 0.62, 0.76, 0.9])
    cfg = config_from_scales((300, 300), [8, 16, 32, 64, 100, 300], [[2]] * 6, 0.2, 0.9)
    assert cfg.levels[0].min_sizes == pytest.approx((60.0,))
    assert cfg.levels[0].max_sizes == pytest.approx((0.34 * 300,))
    assert cfg.levels[-1].max_sizes == pytest.approx((1.04 * 300,))  # s_{m+1} extrapolated
    p = PriorBoxGenerator(cfg)(cfg.default_feature_sizes())
    assert p.shape[0] == 4 * (38 * 38 + 19 * 19 + 100 + 25 + 9 + 1)


def test_box_format_round_trip():
    b = torch.rand(50, 4)
    torch.testing.assert_close(xyxy_to_cxcywh(cxcywh_to_xyxy(b)), b)


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="max_size"):
        PriorLevel(min_sizes=(30,), max_sizes=(20,))
    with pytest.raises(ValueError, match="one entry per min_size"):
        PriorLevel(min_sizes=(30, 40), max_sizes=(60,))
    with pytest.raises(ValueError, match="levels"):
        PriorBoxGenerator(get_prior_preset("ssd300-voc"))([(38, 38)])
    with pytest.raises(KeyError, match="known"):
        get_prior_preset("nope")
    assert set(PRIOR_PRESETS) >= {"ssd300-voc", "ssd300-coco", "ssd512-voc", "ssd512-coco"}


def test_anchors_module_does_not_import_torchvision():
    """Why multibox.anchors keeps its own two box conversions instead of torchvision.ops.box_convert (which the
    rest of multibox uses, bit-identical): prior generation and `multibox anchors` stay free of torchvision's 1.2 s
    import."""
    import subprocess
    import sys

    code = ("import sys, multibox.anchors as a; a.PriorBoxGenerator(a.get_prior_preset('ssd300-voc'))"
            "(a.get_prior_preset('ssd300-voc').default_feature_sizes()); print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_box_convert_equals_our_conversions_bitwise():
    """The box coder and matching use torchvision.ops.box_convert; it gives the same bits as ours."""
    from torchvision.ops import box_convert

    b = torch.rand(2, 500, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    assert torch.equal(box_convert(b, "cxcywh", "xyxy"), cxcywh_to_xyxy(b))
    assert torch.equal(box_convert(b, "xyxy", "cxcywh"), xyxy_to_cxcywh(b))
