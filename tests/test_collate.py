import numpy as np
import pytest
import torch

from multibox.data.collate import collate_detection
from multibox.data.types import Target


def sample(boxes, labels, h=40, w=80, iscrowd=None, difficult=None, image_id="a"):
    kw = {}
    if iscrowd is not None:
        kw["iscrowd"] = np.asarray(iscrowd, dtype=bool)
    if difficult is not None:
        kw["difficult"] = np.asarray(difficult, dtype=bool)
    t = Target(boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels=labels, image_id=image_id,
               orig_size=(123, 456), **kw)
    return torch.randn(3, h, w), t


def test_padding_normalization_and_flags():
    batch = [
        sample([[0, 0, 40, 20], [8, 4, 80, 40]], [1, 2], difficult=[False, True], image_id="a"),
        sample([], [], image_id="b"),
        sample([[4, 2, 8, 6], [0, 0, 80, 40], [10, 10, 20, 20]], [3, 4, 5], iscrowd=[False, True, False],
               image_id="c"),
    ]
    out = collate_detection(batch)
    assert out["images"].shape == (3, 3, 40, 80) and out["images"].dtype == torch.float32
    assert torch.equal(out["images"][1], batch[1][0])
    assert out["boxes"].shape == (3, 3, 4) and out["boxes"].dtype == torch.float32
    torch.testing.assert_close(out["boxes"][0, :2], torch.tensor([[0, 0, 0.5, 0.5], [0.1, 0.1, 1, 1]]))
    assert torch.equal(out["boxes"][0, 2], torch.zeros(4)) and torch.equal(out["boxes"][1], torch.zeros(3, 4))
    assert out["labels"].dtype == torch.int64
    assert out["labels"].tolist() == [[1, 2, 0], [0, 0, 0], [3, -1, 5]]  # iscrowd -> -1 (ignore)
    assert out["valid"].tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert out["difficult"].tolist() == [[False, True, False], [False] * 3, [False] * 3]
    assert out["image_ids"] == ["a", "b", "c"]
    assert out["orig_sizes"] == [(123, 456)] * 3


def test_batch_without_any_box_has_g_zero():
    out = collate_detection([sample([], []), sample([], [])])
    assert out["boxes"].shape == (2, 0, 4) and out["labels"].shape == (2, 0)
    assert out["valid"].shape == (2, 0) and out["difficult"].shape == (2, 0) and out["valid"].dtype == torch.bool


def test_mixed_sizes_and_raw_images_are_rejected():
    with pytest.raises(ValueError, match="one size"):
        collate_detection([sample([], [], h=40), sample([], [], h=41)])
    raw = np.zeros((40, 80, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="transform"):
        collate_detection([(raw, sample([], [])[1])])
