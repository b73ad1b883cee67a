import colorsys

import numpy as np
import pytest
import torch

from multibox.data import EvalTransform
from multibox.data.augment import (
    CAFFE_SSD_SAMPLERS,
    Compose,
    CropSampler,
    Expand,
    Normalize,
    PhotometricDistort,
    RandomHorizontalFlip,
    RandomSampleCrop,
    Resize,
    adjust_hsv,
    crop_target,
    ssd_eval_transform,
    ssd_train_transform,
    ssdlite_train_transform,
)
from multibox.data.loader import build_loader, sample_rng, set_epoch
from multibox.data.synth import SyntheticShapes
from multibox.data.types import Target
from multibox.models.spec import InputSpec


class FixedRng:
    """Stands in for np.random.Generator: ``random(n)`` returns the given uniforms."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float64)

    def random(self, n=None):
        return self.values[:n] if n is not None else float(self.values[0])


def smooth_image(h, w, seed=0):
    rs = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w) + 60], axis=-1)
    img += rs.normal(0, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def target(boxes, labels=None, h=60, w=80, **kw):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.arange(1, len(boxes) + 1) if labels is None else labels
    return Target(boxes=boxes, labels=labels, image_id="x", orig_size=(h, w), **kw)


def empty_target(h=60, w=80):
    return Target(boxes=np.zeros((0, 4)), labels=np.zeros(0), image_id="e", orig_size=(h, w))


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ------------------------------------------------------------------------------------------------ geometry by hand


def test_flip_boxes_and_pixels_by_hand():
    img = np.zeros((10, 20, 3), dtype=np.uint8)
    img[:, 0] = 255  # left column white
    t = target([[2, 3, 5, 7], [0, 0, 20, 10]], h=10, w=20)
    out, tt = RandomHorizontalFlip(prob=1.0)(img, t, np.random.default_rng(0))
    np.testing.assert_array_equal(tt.boxes, [[15, 3, 18, 7], [0, 0, 20, 10]])
    assert out[:, -1].min() == 255 and out[:, :-1].max() == 0
    same, t2 = RandomHorizontalFlip(prob=0.0)(img, t, np.random.default_rng(0))
    assert same is img and np.array_equal(t2.boxes, t.boxes)


def test_expand_offsets_by_hand():
    img = np.full((10, 20, 3), 7, dtype=np.uint8)
    t = target([[1, 2, 3, 4]], h=10, w=20)
    op = Expand(fill=(1, 2, 3), prob=0.5, max_ratio=4.0)
    # apply (0.1 < 0.5), ratio 1 + 0.5 * 3 = 2.5 -> 25 x 50, top floor(0.5 * 15) = 7, left floor(0.25 * 30) = 7
    out, tt = op(img, t, FixedRng([0.1, 0.5, 0.5, 0.25]))
    assert out.shape == (25, 50, 3)
    assert (out[7:17, 7:27] == 7).all()
    mask = np.ones((25, 50), dtype=bool)
    mask[7:17, 7:27] = False
    assert (out[mask] == [1, 2, 3]).all()
    np.testing.assert_array_equal(tt.boxes, [[8, 9, 10, 11]])
    same, _ = op(img, t, FixedRng([0.7, 0.5, 0.5, 0.25]))  # 0.7 >= prob: not applied
    assert same is img


def test_crop_target_keeps_centre_inside_and_clips():
    t = target([[0, 0, 30, 30], [40, 40, 80, 80], [45, 5, 55, 25]], labels=[3, 4, 5], h=100, w=100,
               difficult=np.array([False, False, True]))
    out = crop_target(t, (10, 10, 50, 50))
    np.testing.assert_array_equal(out.boxes, [[0, 0, 20, 20], [35, 0, 40, 15]])  # centre (50, 15) on the border
    np.testing.assert_array_equal(out.labels, [3, 5])
    np.testing.assert_array_equal(out.difficult, [False, True])


def test_crop_op_cuts_pixels_and_boxes_consistently():
    img = smooth_image(60, 80)
    t = target([[10, 10, 40, 30], [50, 20, 70, 50]])
    op = RandomSampleCrop()
    n_cropped = 0
    for s in range(30):
        rect = op.sample(np.random.default_rng(s), 60, 80, t.boxes)
        out, tt = op(img, t, np.random.default_rng(s))
        if rect is None:
            assert out is img
            continue
        n_cropped += 1
        x0, y0, x1, y1 = rect
        np.testing.assert_array_equal(out, img[y0:y1, x0:x1])
        np.testing.assert_array_equal(tt.boxes, crop_target(t, rect).boxes)
        assert (tt.boxes[:, 2] <= x1 - x0).all() and (tt.boxes[:, 3] <= y1 - y0).all() and (tt.boxes >= 0).all()
    assert n_cropped > 10


@pytest.mark.parametrize("min_iou", [0.3, 0.7, 0.9])
def test_crop_meets_min_jaccard(min_iou):
    boxes = np.array([[5, 5, 190, 140], [150, 20, 190, 60]], dtype=np.float32)
    op = RandomSampleCrop([CropSampler(min_jaccard=min_iou)])
    crops = 0
    for s in range(200):
        rect = op.sample(np.random.default_rng(s), 150, 200, boxes)
        if rect is None:
            continue
        crops += 1
        x0, y0, x1, y1 = rect
        assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 150
        assert max(iou(rect, b) for b in boxes) >= min_iou - 1e-9
        side_w, side_h = (x1 - x0) / 200, (y1 - y0) / 150
        assert side_w * side_h >= 0.3 ** 2 * 0.9  # scale >= 0.3 (side fraction), up to pixel snapping
    assert crops > 5


def test_crop_pick_is_uniform_over_candidates():
    # One unconstrained sampler always finds a crop: candidates {whole image, crop}, each picked half the time.
    op = RandomSampleCrop([CropSampler()])
    whole = sum(op.sample(np.random.default_rng(s), 50, 50, np.zeros((0, 4))) is None for s in range(400))
    assert 150 < whole < 250


def test_no_boxes_means_no_crop():
    op = RandomSampleCrop(CAFFE_SSD_SAMPLERS)
    assert all(op.sample(np.random.default_rng(s), 60, 80, np.zeros((0, 4))) is None for s in range(50))


# ------------------------------------------------------------------------------------------------ photometric


def _reference_distort(img, p):
    x = img.astype(np.float64)
    x = np.clip(x + p.brightness, 0, 255)

    def contrast(x):
        return np.clip(x * p.contrast, 0, 255)

    def hsv(x):
        out = np.empty_like(x)
        for i, j in np.ndindex(x.shape[:2]):
            h, s, v = colorsys.rgb_to_hsv(*(x[i, j] / 255.0))
            h = (h + p.hue / 360.0) % 1.0
            s = min(s * p.saturation, 1.0)
            out[i, j] = np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0
        return out

    x = hsv(contrast(x)) if p.contrast_first else contrast(hsv(x))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("order_prob", [1.0, 0.0])
def test_photometric_matches_formula_with_all_probs_one(order_prob):
    img = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    img[0, 0] = [90, 90, 90]  # a grey pixel
    op = PhotometricDistort(brightness_prob=1, contrast_prob=1, saturation_prob=1, hue_prob=1, order_prob=order_prob)
    for seed in range(5):
        p = op.sample(np.random.default_rng(seed))
        assert None not in (p.brightness, p.contrast, p.saturation, p.hue) and p.channel_perm is None
        assert p.contrast_first == (order_prob == 1.0)
        assert abs(p.brightness) <= 32 and 0.5 <= p.contrast <= 1.5 and 0.5 <= p.saturation <= 1.5
        assert abs(p.hue) <= 18
        out, _ = op(img, empty_target(), np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == img.shape
        ref = _reference_distort(img, p)
        assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1  # float32 vs float64 rounding ties


def test_photometric_keeps_dtype_range_and_boxes():
    img = np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    t = target([[1, 2, 10, 12]], h=30, w=40)
    op = PhotometricDistort()
    changed = 0
    for seed in range(20):
        out, tt = op(img, t, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == img.shape
        assert np.array_equal(tt.boxes, t.boxes)
        changed += not np.array_equal(out, img)
    assert changed > 10


def test_channel_swap_is_off_by_default_and_permutes_when_on():
    assert all(PhotometricDistort().sample(np.random.default_rng(s)).channel_perm is None for s in range(50))
    img = np.random.default_rng(3).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    op = PhotometricDistort(brightness_prob=0, contrast_prob=0, saturation_prob=0, hue_prob=0, channel_swap_prob=1)
    p = op.sample(np.random.default_rng(4))
    out, _ = op(img, empty_target(), np.random.default_rng(4))
    np.testing.assert_array_equal(out, img[..., list(p.channel_perm)])


def test_adjust_hsv_matches_colorsys_for_any_hue():
    px = np.random.default_rng(5).integers(0, 256, (3, 50)).astype(np.float32)
    px[:, :3] = 77  # greys stay grey
    for sat in (0.5, 1.0, 1.5):
        for hue in (-180.0, -18.0, 0.0, 7.5, 18.0, 150.0, 359.0, 725.0):
            out = adjust_hsv(px.copy(), sat, hue)
            ref = []
            for r, g, b in px.T / 255.0:
                h, s, v = colorsys.rgb_to_hsv(r, g, b)
                ref.append(colorsys.hsv_to_rgb((h + hue / 360.0) % 1.0, min(s * sat, 1.0), v))
            np.testing.assert_allclose(out, np.array(ref).T * 255.0, atol=2e-3)


# ------------------------------------------------------------------------------------------------ pipelines


SPEC = InputSpec(image_size=(48, 64))


def test_fused_pipeline_equals_the_composed_ops():
    img = smooth_image(60, 80)
    t = target([[10, 10, 40, 30], [50, 20, 70, 50], [2, 40, 8, 58]])
    for spec in (SPEC, InputSpec((40, 40), "BGR", (110.0, 100.0, 120.0), (50.0, 60.0, 70.0))):
        fused = ssd_train_transform(spec)
        composed = fused.as_compose()
        for seed in range(40):
            a, ta = fused(img, t, np.random.default_rng(seed))
            b, tb = composed(img, t, np.random.default_rng(seed))
            assert a.shape == b.shape == (3, *spec.image_size) and a.dtype == torch.float32
            # the composed ops round to uint8 after the colour ops: at most 0.5 apart before normalization
            assert (a - b).abs().max().item() <= 0.5 / min(spec.std) + 1e-3, seed
            np.testing.assert_allclose(ta.boxes, tb.boxes, atol=1e-3)
            np.testing.assert_array_equal(ta.labels, tb.labels)


def test_train_transform_is_deterministic_and_boxes_stay_inside():
    img = smooth_image(60, 80)
    t = target([[10, 10, 40, 30], [50, 20, 70, 50]])
    tf = ssd_train_transform(SPEC)
    outs = []
    for seed in range(25):
        a, ta = tf(img, t, np.random.default_rng(seed))
        b, tb = tf(img, t, np.random.default_rng(seed))
        assert torch.equal(a, b) and np.array_equal(ta.boxes, tb.boxes)
        assert torch.isfinite(a).all()
        h, w = SPEC.image_size
        bx = ta.boxes
        assert ((bx[:, 0] >= 0) & (bx[:, 2] <= w + 1e-3) & (bx[:, 1] >= 0) & (bx[:, 3] <= h + 1e-3)).all()
        assert ((bx[:, 2] >= bx[:, 0]) & (bx[:, 3] >= bx[:, 1])).all()
        assert ta.orig_size == (60, 80)
        outs.append(a)
    assert len({o.sum().item() for o in outs}) > 20  # different seeds, different samples


def test_zero_boxes_pass_through_every_op():
    img = smooth_image(30, 40)
    e = empty_target(30, 40)
    ops = [PhotometricDistort(1, 32, 1, (0.5, 1.5), 1, (0.5, 1.5), 1), Expand((1, 2, 3), prob=1.0),
           RandomSampleCrop(), RandomSampleCrop([CropSampler()]), RandomHorizontalFlip(1.0), Resize((20, 24)),
           Normalize(SPEC)]
    for seed in range(5):
        x, tt = img, e
        for op in ops:
            x, tt = op(x, tt, np.random.default_rng(seed))
            assert len(tt) == 0 and tt.boxes.shape == (0, 4)
        assert tuple(x.shape) == (3, 20, 24)
        for tf in (ssd_train_transform(SPEC), ssdlite_train_transform(SPEC), ssd_eval_transform(SPEC)):
            out, tt = tf(img, e, np.random.default_rng(seed))
            assert tuple(out.shape) == (3, 48, 64) and len(tt) == 0


def test_ssdlite_recipe_has_no_expand_and_no_colour():
    tf = ssdlite_train_transform(SPEC)
    assert tf.photometric is None and tf.expand is None and tf.crop is not None
    img = smooth_image(48, 64)
    t = target([[10, 10, 40, 30]], h=48, w=64)
    # whenever neither crop nor flip is drawn, the output is the plain resized and normalized image
    plain = SPEC.normalize(torch.from_numpy(img).permute(2, 0, 1).float())
    hits = 0
    for seed in range(30):
        out, tt = tf(img, t, np.random.default_rng(seed))
        if np.array_equal(tt.boxes, t.boxes):
            hits += 1
            assert torch.allclose(out, plain)
    assert hits > 0


def test_eval_transform_matches_eval_batch_transform():
    img = smooth_image(60, 80)
    t = target([[10, 10, 40, 30]])
    out, tt = ssd_eval_transform(SPEC)(img, t, None)
    ref, sizes = EvalTransform(SPEC)([img])
    assert torch.allclose(out, ref[0], atol=1e-4) and sizes == [(60, 80)]
    np.testing.assert_allclose(tt.boxes, [[8, 8, 32, 24]])  # x * 64/80, y * 48/60


def test_compose_applies_ops_in_order():
    img = smooth_image(10, 20)
    t = target([[2, 3, 5, 7]], h=10, w=20)
    out, tt = Compose([RandomHorizontalFlip(1.0), Resize((5, 10))])(img, t, np.random.default_rng(0))
    np.testing.assert_allclose(tt.boxes, [[7.5, 1.5, 9, 3.5]])
    assert tuple(out.shape) == (3, 5, 10)


# ------------------------------------------------------------------------------------------------ loader


def test_loader_is_independent_of_worker_count():
    ds = SyntheticShapes(6, seed=1, size=64)
    tf = ssd_train_transform(InputSpec(image_size=(32, 32)))
    runs = []
    for workers in (0, 2):
        loader = build_loader(ds, tf, batch_size=3, seed=7, num_workers=workers)
        epochs = []
        for epoch in (0, 1):
            set_epoch(loader, epoch)
            epochs.append([(b["image_ids"], b["images"], b["boxes"], b["valid"]) for b in loader])
        runs.append(epochs)
    for e in range(2):
        for (ids0, im0, bx0, v0), (ids1, im1, bx1, v1) in zip(runs[0][e], runs[1][e], strict=True):
            assert ids0 == ids1 and torch.equal(im0, im1) and torch.equal(bx0, bx1) and torch.equal(v0, v1)
    order0 = [i for b in runs[0][0] for i in b[0]]
    order1 = [i for b in runs[0][1] for i in b[0]]
    assert sorted(order0) == sorted(order1) == [f"{i:06d}" for i in range(6)]
    # epoch 1 draws new augmentations for the same image
    first = {i: im for b in runs[0][0] for i, im in zip(b[0], b[1], strict=True)}
    second = {i: im for b in runs[0][1] for i, im in zip(b[0], b[1], strict=True)}
    assert any(not torch.equal(first[k], second[k]) for k in first)
    # and a sample equals the transform run by hand with sample_rng(seed, epoch, index)
    img, tg = ds[2]
    ref, _ = tf(img, tg, sample_rng(7, 1, 2))
    assert torch.equal(second["000002"], ref)


def test_crop_iou_of_a_degenerate_box_is_zero():
    """The min-IoU crop's overlap (hand values) stays finite for a zero-area box, where torchvision's box_iou
    gives NaN: why augment keeps its own IoU."""
    import torch
    from torchvision.ops import box_iou

    from multibox.data.augment import _iou_rects_boxes

    rects = np.array([[0.0, 0.0, 0.5, 0.5]])
    boxes = np.array([[0.25, 0.25, 0.75, 0.75], [0.3, 0.3, 0.3, 0.3]])
    got = _iou_rects_boxes(rects, boxes)
    np.testing.assert_allclose(got, [[0.0625 / (0.25 + 0.25 - 0.0625), 0.0]])
    zero_rect = np.array([[0.3, 0.3, 0.3, 0.3]])
    assert _iou_rects_boxes(zero_rect, boxes[1:])[0, 0] == 0.0
    assert torch.isnan(box_iou(torch.tensor(zero_rect), torch.tensor(boxes[1:])))[0, 0]
