from __future__ import annotations

import math

import torch
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

from multibox.anchors import cxcywh_to_xyxy
from multibox.box_coder import DEFAULT_MAX_LOG_SCALE, BoxCoder


def _random_boxes_and_priors(seed: int, n: int = 500):
    g = torch.Generator().manual_seed(seed)
    priors = torch.cat((torch.rand(n, 2, generator=g), 0.02 + 0.6 * torch.rand(n, 2, generator=g)), dim=1)
    xy = torch.rand(n, 2, generator=g)
    boxes = torch.cat((xy, xy + 0.01 + 0.8 * torch.rand(n, 2, generator=g)), dim=1)
    return boxes, priors


def test_encode_hand_case_with_variances():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]])  # cxcywh
    box = torch.tensor([[0.45, 0.35, 0.65, 0.95]])  # xyxy: centre (.55, .65), size (.2, .6)
    deltas = BoxCoder((0.1, 0.1, 0.2, 0.2)).encode(box, prior)
    expected = torch.tensor([[0.05 / 0.2 / 0.1, 0.15 / 0.4 / 0.1, math.log(1.0) / 0.2, math.log(1.5) / 0.2]])
    torch.testing.assert_close(deltas, expected)  # [2.5, 3.75, 0, 2.0273]
    # unit variances give the raw offsets
    raw = BoxCoder((1.0, 1.0, 1.0, 1.0)).encode(box, prior)
    torch.testing.assert_close(raw, torch.tensor([[0.25, 0.375, 0.0, math.log(1.5)]]))


def test_encode_identity_is_zero_and_decode_of_zero_is_prior():
    prior = torch.tensor([[0.3, 0.6, 0.1, 0.2]])
    coder = BoxCoder()
    torch.testing.assert_close(coder.encode(cxcywh_to_xyxy(prior), prior), torch.zeros(1, 4))
    torch.testing.assert_close(coder.decode_cxcywh(torch.zeros(1, 4), prior), prior)


def test_round_trip_random_boxes():
    coder = BoxCoder()
    boxes, priors = _random_boxes_and_priors(0)
    decoded = coder.decode(coder.encode(boxes, priors), priors)
    torch.testing.assert_close(decoded, boxes, atol=1e-5, rtol=0)


def test_round_trip_batched_broadcast():
    coder = BoxCoder((0.1, 0.1, 0.2, 0.2))
    boxes, priors = _random_boxes_and_priors(1, n=50)
    batch = torch.stack((boxes, boxes.flip(0), boxes.roll(3, 0)))  # [3, 50, 4] against [50, 4] priors
    deltas = coder.encode(batch, priors)
    assert deltas.shape == (3, 50, 4)
    torch.testing.assert_close(deltas[1], coder.encode(boxes.flip(0), priors))
    torch.testing.assert_close(coder.decode(deltas, priors), batch, atol=1e-5, rtol=0)


def test_decode_huge_deltas_is_finite():
    coder = BoxCoder()
    prior = torch.tensor([[0.5, 0.5, 0.1, 0.1]]).expand(4, 4)
    deltas = torch.tensor(
        [
            [1e4, -1e4, 1e4, 1e4],
            [0.0, 0.0, -1e4, -1e4],
            [0.0, 0.0, float("inf"), float("inf")],
            [0.0, 0.0, -float("inf"), 3.0],
        ]
    )
    out = coder.decode(deltas, prior)
    assert torch.isfinite(out).all()
    # width/height are capped at exp(max_log_scale) = 62.5 times the prior
    wh = coder.decode_cxcywh(deltas, prior)[:, 2:]
    max_side = 0.1 * math.exp(DEFAULT_MAX_LOG_SCALE)
    torch.testing.assert_close(wh[0], torch.tensor([max_side, max_side]))
    torch.testing.assert_close(wh[2], torch.tensor([max_side, max_side]))
    assert (wh[1] >= 0).all() and wh[3, 0].item() == 0.0


def test_matches_torchvision_boxcoder_on_pixels():
    # Caffe variances (.1, .1, .2, .2) are torchvision weights (10, 10, 5, 5); the code is scale invariant,
    # so normalized boxes give the same offsets as the same boxes in pixels.
    height, width = 300.0, 400.0
    scale = torch.tensor([width, height, width, height])
    boxes, priors = _random_boxes_and_priors(2)
    tv = TorchvisionBoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    priors_px = cxcywh_to_xyxy(priors) * scale
    ours = BoxCoder((0.1, 0.1, 0.2, 0.2)).encode(boxes, priors)
    theirs = tv.encode_single(boxes * scale, priors_px)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)

    g = torch.Generator().manual_seed(3)
    deltas = torch.randn(priors.shape[0], 4, generator=g) * 3
    deltas[:10, 2:] = 100.0  # beyond the clamp
    decoded_px = BoxCoder((0.1, 0.1, 0.2, 0.2)).decode(deltas, priors) * scale
    torch.testing.assert_close(decoded_px, tv.decode_single(deltas, priors_px), atol=1e-3, rtol=1e-4)
