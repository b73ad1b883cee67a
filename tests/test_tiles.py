"""Tiling of large images: grid origins and the boxes each tile keeps, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from multibox.data.tiles import TiledDataset, tile_origins, tile_target
from multibox.data.types import Target


def test_tile_origins_hand_cases():
    assert tile_origins(300, 400, 0.25) == [0]
    assert tile_origins(400, 400, 0.25) == [0]
    # 1000 px, tile 400, stride <= 300: (1000 - 400) / 300 = 2 -> 3 tiles at 0, 300, 600
    assert tile_origins(1000, 400, 0.25) == [0, 300, 600]
    # 1001 px: needs 4 tiles, at round(i * 601 / 3), last flush with the border
    assert tile_origins(1001, 400, 0.25) == [0, 200, 401, 601]
    with pytest.raises(ValueError):
        tile_origins(10, 0, 0.1)


def test_tile_target_keeps_visible_boxes():
    t = Target(boxes=np.array([[10, 10, 30, 30], [90, 0, 110, 20], [95, 0, 130, 10], [200, 200, 210, 210]],
                              np.float32), labels=np.array([1, 2, 3, 1]), image_id="a", orig_size=(300, 300))
    out = tile_target(t, (0, 0, 100, 100), min_visible=0.5)
    # box 0 inside; box 1 half inside (exactly 0.5: kept, clipped); box 2 5/35 inside: dropped; box 3 outside
    np.testing.assert_array_equal(out.boxes, [[10, 10, 30, 30], [90, 0, 100, 20]])
    np.testing.assert_array_equal(out.labels, [1, 2])
    part = tile_target(t, (0, 0, 100, 100), min_visible=0.5, keep_partial=True)
    np.testing.assert_array_equal(part.labels, [1, 2, 3])
    np.testing.assert_array_equal(part.difficult, [False, False, True])
    shifted = tile_target(t, (100, 0, 200, 100))
    # box 1: its other half (exactly 0.5) also counts here; box 2: 30/35 visible; both shifted by -100
    np.testing.assert_array_equal(shifted.boxes, [[0, 0, 10, 20], [0, 0, 30, 10]])


class _Two:
    class_names = ["background", "tree"]

    def __len__(self):
        return 1

    def __getitem__(self, i):
        img = np.arange(250 * 500 * 3, dtype=np.uint32).reshape(250, 500, 3).astype(np.uint8)
        return img, Target(boxes=np.array([[260, 10, 280, 40]], np.float32), labels=np.array([1]), image_id="big",
                           orig_size=(250, 500))


def test_tiled_dataset_pixels_and_ids():
    ds = TiledDataset(_Two(), tile=200, overlap=0.2)
    # x origins for 500: ceil(300 / 160) + 1 = 3 tiles -> 0, 150, 300; y for 250: 2 tiles -> 0, 50
    assert [r for _, r in ds.index] == [(0, 0, 200, 200), (150, 0, 350, 200), (300, 0, 500, 200),
                                        (0, 50, 200, 250), (150, 50, 350, 250), (300, 50, 500, 250)]
    img, tgt = ds[1]
    full, _ = _Two()[0]
    np.testing.assert_array_equal(img, full[0:200, 150:350])
    assert tgt.image_id == "big@150_0" and tgt.orig_size == (200, 200)
    np.testing.assert_array_equal(tgt.boxes, [[110, 10, 130, 40]])
    assert ds.class_names == ["background", "tree"]
    assert len(TiledDataset(_Two(), tile=200, overlap=0.2, min_boxes=1)) == 1  # only (150, 0) holds the box
