"""Augmentation options for new sites and overhead imagery (``data.aug.*``): vertical flips, quarter turns, scale
jitter and colour strength, checked on hand-computed boxes, marked pixels and the unfused reference ops."""

import numpy as np
import pytest
import torch

from multibox.config import ConfigError, config_from_dict, load_config
from multibox.data.augment import (
    RandomRot90,
    RandomVerticalFlip,
    ScaleJitter,
    SSDTrainTransform,
    photometric_of_strength,
    rot90_target,
    ssd_train_transform,
    ssdlite_train_transform,
    train_transform,
    vflip_target,
)
from multibox.data.types import Target
from multibox.engine.trainer import Trainer
from multibox.models.spec import InputSpec


class FixedRng:
    """Stands in for np.random.Generator: ``random(n)`` returns the next ``n`` of the given uniforms."""

    def __init__(self, values):
        self.values = list(map(float, values))

    def random(self, n=None):
        if n is None:
            return self.values.pop(0)
        out, self.values = np.asarray(self.values[:n]), self.values[n:]
        return out


def target(boxes, h=6, w=10):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return Target(boxes=boxes, labels=np.arange(1, len(boxes) + 1), image_id="x", orig_size=(h, w))


# A box in a non-square image: H = 6, W = 10, box x 1..4, y 2..5.
BOX = [1, 2, 4, 5]


@pytest.mark.parametrize("k, expected", [
    (0, [1, 2, 4, 5]),
    # one quarter turn counter-clockwise: (x, y) -> (y, W - x), the image becomes 10 x 6 (H x W)
    (1, [2, 10 - 4, 5, 10 - 1]),
    # half turn: (x, y) -> (W - x, H - y)
    (2, [10 - 4, 6 - 5, 10 - 1, 6 - 2]),
    # three quarter turns: (x, y) -> (H - y, x)
    (3, [6 - 5, 1, 6 - 2, 4]),
    (5, [2, 6, 5, 9]),  # k mod 4
])
def test_rot90_boxes_by_hand(k, expected):
    np.testing.assert_array_equal(rot90_target(target(BOX), 6, 10, k).boxes, [expected])


def test_vflip_boxes_by_hand():
    np.testing.assert_array_equal(vflip_target(target(BOX), 6).boxes, [[1, 6 - 5, 4, 6 - 2]])


def marked_image(h=6, w=10, row=3, col=2):
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[row, col] = 255
    return img


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rot90_op_moves_pixels_with_boxes(k):
    # pixel (row 3, col 2) lies inside BOX; after the turn the bright pixel must lie inside the turned box
    img, t = marked_image(), target(BOX)
    rng = FixedRng([0.0, (k - 1) / 3 + 0.01])  # applied, k quarter turns
    out, tt = RandomRot90(prob=1.0)(img, t, rng)
    assert out.shape == ((10, 6, 3) if k % 2 else (6, 10, 3))
    np.testing.assert_array_equal(out, np.rot90(img, k))
    r, c = np.argwhere(out[..., 0] == 255)[0]
    x0, y0, x1, y1 = tt.boxes[0]
    assert x0 <= c + 0.5 <= x1 and y0 <= r + 0.5 <= y1
    # and the pixel's own one-pixel box lands exactly on it
    px = rot90_target(target([2, 3, 3, 4]), 6, 10, k).boxes[0]
    np.testing.assert_array_equal(px, [c, r, c + 1, r + 1])


def test_vflip_op_moves_pixels_with_boxes_and_prob_zero_is_identity():
    img, t = marked_image(), target(BOX)
    out, tt = RandomVerticalFlip(1.0)(img, t, FixedRng([0.3]))
    r, c = np.argwhere(out[..., 0] == 255)[0]
    assert (r, c) == (2, 2)
    np.testing.assert_array_equal(tt.boxes, [[1, 1, 4, 4]])
    out, tt = RandomVerticalFlip(0.0)(img, t, FixedRng([0.0]))
    assert out is img and tt is t
    out, tt = RandomRot90(0.0)(img, t, FixedRng([0.0, 0.5]))
    assert out is img and tt is t


def test_scale_jitter_window_by_hand():
    img, t = marked_image(), target(BOX)
    # s = 2 (lo = hi): window 3 x 5 at floor(0.5 * 3) = 1, floor(0.5 * 5) = 2 -> x 2..7, y 1..4
    out, tt = ScaleJitter((2.0, 2.0))(img, t, FixedRng([0.7, 0.5, 0.5]))
    assert out.shape == (3, 5, 3)
    assert out[2, 0, 0] == 255  # pixel (3, 2) -> (3 - 1, 2 - 2)
    # box centre (2.5, 3.5) is in the window: clipped to x 2..4, y 2..4, shifted by (-2, -1)
    np.testing.assert_array_equal(tt.boxes, [[0, 1, 2, 3]])
    # s = 0.5: window 12 x 20 at floor(0.5 * -6) = -3, floor(0.5 * -10) = -5: the image on a filled canvas
    out, tt = ScaleJitter((0.5, 0.5), fill=(10, 20, 30))(img, t, FixedRng([0.2, 0.5, 0.5]))
    assert out.shape == (12, 20, 3)
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    assert out[3 + 3, 2 + 5, 0] == 255
    np.testing.assert_array_equal(tt.boxes, [[6, 5, 9, 8]])


# ------------------------------------------------------------------------------------------- fused pipeline


SPEC = InputSpec(image_size=(48, 64))


def smooth_image(h, w, seed=0):
    rs = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w) + 60], axis=-1)
    return np.clip(img + rs.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


OPTIONS = [
    dict(vflip=0.5),
    dict(rot90=0.75),
    dict(vflip=0.5, rot90=0.75, scale_jitter=(0.5, 2.0), color=1.5),
    dict(scale_jitter=(0.6, 1.8)),
]


@pytest.mark.parametrize("recipe", ["ssd", "ssdlite", "none"])
@pytest.mark.parametrize("opts", OPTIONS)
def test_fused_options_equal_the_composed_ops(recipe, opts):
    img = smooth_image(45, 70)
    t = Target(boxes=np.array([[10, 10, 40, 30], [45, 12, 66, 40], [2, 30, 8, 43]], np.float32),
               labels=np.array([1, 2, 3]), image_id="x", orig_size=(45, 70))
    fused = train_transform(SPEC, recipe, **opts)
    assert isinstance(fused, SSDTrainTransform)
    composed = fused.as_compose()
    for seed in range(12):
        a, ta = fused(img, t, np.random.default_rng(seed))
        b, tb = composed(img, t, np.random.default_rng(seed))
        assert a.shape == b.shape == (3, 48, 64)
        assert (a - b).abs().max().item() <= 0.5 / min(SPEC.std) + 1e-3, seed
        np.testing.assert_allclose(ta.boxes, tb.boxes, atol=1e-3)
        np.testing.assert_array_equal(ta.labels, tb.labels)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fused_turn_and_vflip_move_a_marked_pixel_into_its_box(k):
    # a 30 x 50 image, a box around a bright 4 x 4 block; only the rotation and the vertical flip are on
    img = np.zeros((30, 50, 3), np.uint8)
    img[10:14, 30:34] = 255
    t = Target(boxes=np.array([[28, 8, 36, 16]], np.float32), labels=np.array([1]), image_id="x",
               orig_size=(30, 50))
    tf = train_transform(InputSpec(image_size=(50, 30)), "none", vflip=1.0, rot90=1.0)
    # draws: left-right flip (prob 0), vertical flip (applied), rotation (applied, k turns)
    out, tt = tf(img, t, FixedRng([0.9, 0.0, 0.0, (k - 1) / 3 + 0.01]))
    # by hand: vflip y -> 30 - y: box (28, 14, 36, 22); then k quarter turns of the 30 x 50 image
    expected = rot90_target(target([28, 14, 36, 22]), 30, 50, k).boxes[0]
    scale = np.array([30 / 30, 50 / 50] * 2) if k % 2 else np.array([30 / 50, 50 / 30] * 2)
    np.testing.assert_allclose(tt.boxes[0], expected * scale, rtol=1e-6)
    # the bright block (after the spec's normalization, the max) lies inside the box
    rows, cols = np.nonzero(out[0].numpy() >= out[0].max().item() - 1e-3)
    x0, y0, x1, y1 = tt.boxes[0]
    assert ((cols + 0.5 >= x0) & (cols + 0.5 <= x1) & (rows + 0.5 >= y0) & (rows + 0.5 <= y1)).all()
    # exact pixels when no resize is involved (k odd: a 50 x 30 result equals the spec size)
    if k % 2:
        ref = np.rot90(img[::-1], k).astype(np.float32)
        np.testing.assert_allclose(out.numpy(), tf.spec.normalize(torch.from_numpy(
            np.ascontiguousarray(ref.transpose(2, 0, 1)))).numpy(), atol=1e-5)


def test_options_off_are_the_recipes_bit_for_bit():
    img = smooth_image(45, 70)
    t = Target(boxes=np.array([[10, 10, 40, 30]], np.float32), labels=np.array([1]), image_id="x",
               orig_size=(45, 70))
    for recipe, ref in (("ssd", ssd_train_transform(SPEC)), ("ssdlite", ssdlite_train_transform(SPEC))):
        # explicit zeros are "off": no op is built and no random number drawn
        tf = SSDTrainTransform(SPEC, ref.photometric, ref.expand, ref.crop, 0.5, vflip_prob=0.0, rot90_prob=0.0)
        assert tf.vflip is None and tf.rot90 is None
        for seed in range(20):
            a, ta = train_transform(SPEC, recipe)(img, t, np.random.default_rng(seed))
            b, tb = ref(img, t, np.random.default_rng(seed))
            c, tc = tf(img, t, np.random.default_rng(seed))
            assert torch.equal(a, b) and torch.equal(a, c)
            assert np.array_equal(ta.boxes, tb.boxes) and np.array_equal(ta.boxes, tc.boxes)


def test_options_are_deterministic_per_seed():
    img = smooth_image(45, 70)
    t = Target(boxes=np.array([[10, 10, 40, 30], [45, 12, 66, 40]], np.float32), labels=np.array([1, 2]),
               image_id="x", orig_size=(45, 70))
    tf = train_transform(SPEC, "ssd", vflip=0.5, rot90=0.75, scale_jitter=(0.5, 2.0), color=1.5)
    sums = set()
    for seed in range(15):
        a, ta = tf(img, t, np.random.default_rng(seed))
        b, tb = tf(img, t, np.random.default_rng(seed))
        assert torch.equal(a, b) and np.array_equal(ta.boxes, tb.boxes)
        bx = ta.boxes
        assert ((bx[:, 0] >= 0) & (bx[:, 2] <= 64 + 1e-3) & (bx[:, 1] >= 0) & (bx[:, 3] <= 48 + 1e-3)).all()
        sums.add(round(a.sum().item(), 3))
    assert len(sums) > 12


def test_zero_boxes_pass_through_every_option():
    img = smooth_image(45, 70)
    t = Target(boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64), image_id="e", orig_size=(45, 70))
    tf = train_transform(SPEC, "ssd", vflip=1.0, rot90=1.0, scale_jitter=(0.5, 2.0), color=2.0)
    for seed in range(5):
        out, tt = tf(img, t, np.random.default_rng(seed))
        assert out.shape == (3, 48, 64) and tt.boxes.shape == (0, 4) and torch.isfinite(out).all()


def test_colour_strength_scales_the_recipe_ranges():
    p = photometric_of_strength(1.0)
    assert (p.brightness_delta, p.contrast_range, p.saturation_range, p.hue_delta) == (32, (0.5, 1.5), (0.5, 1.5), 18)
    p = photometric_of_strength(2.0)
    assert (p.brightness_delta, p.contrast_range, p.hue_delta) == (64, (0.0, 2.0), 36)
    assert photometric_of_strength(0.0) is None
    with pytest.raises(ValueError, match="strength"):
        photometric_of_strength(3.0)


# ------------------------------------------------------------------------------------------------- config


def test_config_keys_and_defaults(tmp_path):
    cfg = config_from_dict({})
    assert (cfg.data.aug.vflip, cfg.data.aug.rot90, cfg.data.aug.scale_jitter, cfg.data.aug.color) == (
        0.0, 0.0, [], None)
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  augment: ssdlite\n")
    cfg = load_config(str(path), ["data.aug.vflip=0.5", "data.aug.rot90=0.75", "data.aug.scale_jitter=[0.5,2]",
                                  "data.aug.color=1.5"])
    assert (cfg.data.aug.vflip, cfg.data.aug.rot90, cfg.data.aug.scale_jitter, cfg.data.aug.color) == (
        0.5, 0.75, [0.5, 2.0], 1.5)


@pytest.mark.parametrize("aug, key", [
    ({"vflip": 1.5}, "data.aug.vflip"),
    ({"rot90": -0.1}, "data.aug.rot90"),
    ({"scale_jitter": [2.0, 0.5]}, "data.aug.scale_jitter"),
    ({"scale_jitter": [0.5]}, "data.aug.scale_jitter"),
    ({"scale_jitter": [0.01, 2.0]}, "data.aug.scale_jitter"),
    ({"color": 2.5}, "data.aug.color"),
    ({"colour": 1.0}, "data.aug.colour"),
])
def test_config_validation_names_the_key(aug, key):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"data": {"aug": aug}})
    assert key in str(e.value) and e.value.key == key


def test_trainer_passes_the_options_to_its_loader(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIBOX_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, [
        "steps=2", "threads=1", "model.name=ssd7", "model.kwargs={image_size: [64, 64]}",
        "data.synthetic={profile: easy, num_train: 4, num_test: 2, size: 64, seed: 0}", "data.batch_size=2",
        "data.augment=ssdlite", "data.aug.vflip=0.5", "data.aug.rot90=0.75", "data.aug.scale_jitter=[0.5, 2]",
        "eval.at_end=false"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert trainer.run()["steps"] == 2
    tf = trainer.loader.dataset.transform  # the AugmentedDataset's per-sample op
    assert isinstance(tf, SSDTrainTransform)
    assert tf.vflip.prob == 0.5 and tf.rot90.prob == 0.75 and tf.scale_jitter.scale_range == (0.5, 2.0)
    assert tf.photometric is None and tf.expand is None  # still the ssdlite recipe underneath


def test_dihedral_region_of_one_row_turned_twice_gives_a_torch_ready_array():
    """Regression: a one-row region turned twice is a numpy view with a negative stride on a length-1 axis, which
    numpy calls contiguous; torch.from_numpy refuses it (a real trees run stopped at step 745 on it)."""
    from multibox.data.augment import _dihedral_region

    x = np.arange(3 * 1 * 5, dtype=np.float32).reshape(3, 1, 5)
    out, (oy, ox) = _dihedral_region(x, (2, 1), (4, 8), False, False, 2)
    t = torch.from_numpy(out)  # raised ValueError before the fix
    assert all(s > 0 for s in out.strides)
    # two quarter turns = a half turn: the row is reversed, and lands at (4 - 2 - 1, 8 - 1 - 5)
    assert t[0, 0].tolist() == [4.0, 3.0, 2.0, 1.0, 0.0] and (oy, ox) == (1, 2)
