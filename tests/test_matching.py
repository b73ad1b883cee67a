from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import SSDMatcher
from torchvision.ops import box_iou

from multibox.anchors import cxcywh_to_xyxy, xyxy_to_cxcywh
from multibox.box_coder import BoxCoder
from multibox.matching import (
    MatchResult,
    Targets,
    build_targets,
    match,
    match_argmax,
    match_caffe,
    pairwise_iou,
)

# Hand-made scene (normalized xyxy priors, converted to the cxcywh that matching takes):
#   p0 [0, 0, .4, .4]      p1 = p0 shifted right by .05      p2 [.6, .6, 1, 1]      p3 [.7, .6, 1.1, 1]
PRIORS_XYXY = torch.tensor(
    [
        [0.0, 0.0, 0.4, 0.4],
        [0.05, 0.0, 0.45, 0.4],
        [0.6, 0.6, 1.0, 1.0],
        [0.7, 0.6, 1.1, 1.0],
    ],
    dtype=torch.float64,
)
PRIORS = xyxy_to_cxcywh(PRIORS_XYXY)
GT0 = [0.0, 0.0, 0.4, 0.4]  # IoU p0 = 1, p1 = .14 / .18
GT1 = [0.0, 0.0, 0.4, 0.38]  # IoU p0 = .152 / .16 = .95, p1 = .133 / .179
GT2 = [0.6, 0.6, 1.0, 0.72]  # IoU p2 = .048 / .16 = .3, p3 = .036 / .172
GT_NONE = [0.45, 0.45, 0.55, 0.55]  # overlaps no prior


def _batch(*images: list[list[float]], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = pad_to if pad_to is not None else max(len(im) for im in images)
    boxes = torch.zeros(len(images), g, 4, dtype=torch.float64)
    valid = torch.zeros(len(images), g, dtype=torch.bool)
    for i, im in enumerate(images):
        if im:
            boxes[i, : len(im)] = torch.tensor(im, dtype=torch.float64)
            valid[i, : len(im)] = True
    return boxes, valid


# ---------------------------------------------------------------- IoU


def test_pairwise_iou_hand_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 0.5], [2.0, 0.0, 3.0, 1.0], [5.0, 5.0, 6.0, 6.0]])
    iou = pairwise_iou(a, b)
    expected = torch.tensor(
        [
            [1 / 7, 0.5 / 4, 0.0, 0.0],  # [2,0,3,1] only touches a[0] at x=2: no overlap
            [0.0, 0.5, 0.0, 0.0],  # a[1] and b[0] touch at a corner
        ]
    )
    torch.testing.assert_close(iou, expected)


def test_pairwise_iou_plain_jaccard_no_plus_one():
    # With Caffe's pixel "+1" convention this would be (2*2)/(2*2) vs (1*1)/(...): plain gives 1/4.
    iou = pairwise_iou(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    assert iou.item() == pytest.approx(0.25)


def test_pairwise_iou_degenerate_is_zero_not_nan():
    a = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    iou = pairwise_iou(a, a)
    assert torch.equal(iou, torch.zeros(2, 2))


def test_pairwise_iou_matches_torchvision_and_batches():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(3, 20, 2, generator=g)
    boxes = torch.cat((xy, xy + torch.rand(3, 20, 2, generator=g) * 0.5), dim=-1)
    other = torch.cat((xy[:, :7] + 0.1, xy[:, :7] + 0.4), dim=-1)
    batched = pairwise_iou(boxes, other)
    assert batched.shape == (3, 20, 7)
    for i in range(3):
        torch.testing.assert_close(batched[i], box_iou(boxes[i], other[i]))


def test_scene_ious_by_hand():
    boxes, valid = _batch([GT0, GT1, GT2])
    iou = pairwise_iou(PRIORS_XYXY, boxes[0])
    assert iou[0, 0].item() == pytest.approx(1.0)
    assert iou[1, 0].item() == pytest.approx(0.14 / 0.18)
    assert iou[0, 1].item() == pytest.approx(0.152 / 0.16)
    assert iou[1, 1].item() == pytest.approx(0.133 / 0.179)
    assert iou[2, 2].item() == pytest.approx(0.3)
    assert iou[3, 2].item() == pytest.approx(0.036 / 0.172)
    assert iou[2:, :2].abs().max().item() == 0.0


# ---------------------------------------------------------------- Caffe matching, hand cases


def test_caffe_two_gts_compete_for_one_prior():
    boxes, valid = _batch([GT0, GT1])
    res = match_caffe(PRIORS, boxes, valid)
    assert isinstance(res, MatchResult)
    # GT0 (IoU 1.0) wins p0 over GT1 (.95); GT1 takes its next best prior p1 (.743 -- also >= .5 to GT0,
    # but the bipartite stage comes first).
    assert res.matched_idx.tolist() == [[0, 1, -1, -1]]
    assert res.matched_idx.dtype == torch.int64
    torch.testing.assert_close(
        res.matched_iou, torch.tensor([[1.0, 0.133 / 0.179, 0.0, 0.0]], dtype=torch.float64)
    )


def test_caffe_per_prediction_adds_priors_above_threshold():
    # Only GT0: bipartite gives it p0, then p1 (IoU .78 >= .5) joins it in the per-prediction stage.
    boxes, valid = _batch([GT0])
    res = match_caffe(PRIORS, boxes, valid)
    assert res.matched_idx.tolist() == [[0, 0, -1, -1]]
    # With a threshold above .78 p1 stays background but still reports its best IoU.
    res = match_caffe(PRIORS, boxes, valid, threshold=0.8)
    assert res.matched_idx.tolist() == [[0, -1, -1, -1]]
    assert res.matched_iou[0, 1].item() == pytest.approx(0.14 / 0.18)


def test_caffe_low_overlap_gt_gets_exactly_one_prior():
    boxes, valid = _batch([GT2])
    res = match_caffe(PRIORS, boxes, valid)
    # best IoU .3 < .5: bipartite still gives GT2 its best prior p2; p3 (.21) is not added.
    assert res.matched_idx.tolist() == [[-1, -1, 0, -1]]
    assert res.matched_iou[0, 2].item() == pytest.approx(0.3)
    assert res.matched_iou[0, 3].item() == pytest.approx(0.036 / 0.172)


def test_caffe_zero_overlap_gt_stays_unmatched():
    boxes, valid = _batch([GT_NONE, GT2])
    res = match_caffe(PRIORS, boxes, valid)
    assert res.matched_idx.tolist() == [[-1, -1, 1, -1]]
    assert (res.matched_idx != 0).all()


def test_padded_and_invalid_gts_never_matched():
    # The invalid box equals p2 exactly (IoU 1) and sits before the valid one.
    boxes = torch.tensor([[[0.6, 0.6, 1.0, 1.0], GT2, GT0, [0.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    valid = torch.tensor([[False, True, True, False]])
    for fn in (match_caffe, match_argmax):
        res = fn(PRIORS, boxes, valid)
        assert not torch.isin(res.matched_idx, torch.tensor([0, 3])).any(), fn.__name__
        assert res.matched_idx[0, 2].item() == 1
        assert res.matched_iou[0, 2].item() == pytest.approx(0.3)


def test_image_without_gt_is_all_background():
    boxes, valid = _batch([GT0, GT1], [])
    boxes[1] = torch.tensor([GT0, GT1], dtype=torch.float64)  # garbage in the padding
    for fn in (match_caffe, match_argmax):
        res = fn(PRIORS, boxes, valid)
        assert res.matched_idx[1].tolist() == [-1] * 4
        assert res.matched_iou[1].tolist() == [0.0] * 4
        assert (res.matched_idx[0] >= 0).any()


def test_zero_gt_slots():
    boxes = torch.zeros(2, 0, 4)
    valid = torch.zeros(2, 0, dtype=torch.bool)
    for method in ("caffe", "argmax"):
        res = match(PRIORS.float(), boxes, valid, method=method)
        assert res.matched_idx.shape == (2, 4) and (res.matched_idx == -1).all()
        assert res.matched_iou.shape == (2, 4) and (res.matched_iou == 0).all()


def test_match_dispatch():
    boxes, valid = _batch([GT0, GT1])
    assert torch.equal(match(PRIORS, boxes, valid).matched_idx, match_caffe(PRIORS, boxes, valid).matched_idx)
    assert torch.equal(
        match(PRIORS, boxes, valid, method="argmax").matched_idx, match_argmax(PRIORS, boxes, valid).matched_idx
    )
    with pytest.raises(ValueError, match="unknown match method"):
        match(PRIORS, boxes, valid, method="nope")  # type: ignore[arg-type]


# ---------------------------------------------------------------- argmax matching, hand cases


def test_argmax_shared_best_prior_goes_to_later_gt():
    boxes, valid = _batch([GT0, GT1])
    res = match_argmax(PRIORS, boxes, valid)
    # p1's best is GT0 (.78 >= .5); both GTs' best prior is p0 and the later one (GT1) is forced onto it.
    assert res.matched_idx.tolist() == [[1, 0, -1, -1]]
    torch.testing.assert_close(res.matched_iou[0, :2], torch.tensor([0.95, 0.14 / 0.18], dtype=torch.float64))


def test_argmax_low_overlap_gt_forced_and_zero_overlap_like_torchvision():
    boxes, valid = _batch([GT2])
    assert match_argmax(PRIORS, boxes, valid).matched_idx.tolist() == [[-1, -1, 0, -1]]
    # A box overlapping nothing is forced onto prior 0, exactly as torchvision's SSDMatcher does.
    boxes, valid = _batch([GT_NONE])
    assert match_argmax(PRIORS, boxes, valid).matched_idx.tolist() == [[0, -1, -1, -1]]
    tv = SSDMatcher(0.5)(box_iou(boxes[0], PRIORS_XYXY))
    assert tv.tolist() == [0, -1, -1, -1]


# ---------------------------------------------------------------- references on random data


def caffe_match_bbox_reference(iou: list[list[float]], valid: list[bool], threshold: float):
    """Straight transcription of Caffe's MatchBBox (label -1, PER_PREDICTION), one image."""
    num_pred = len(iou)
    match_indices = [-1] * num_pred
    match_overlaps = [0.0] * num_pred
    gt_indices = [j for j, v in enumerate(valid) if v]
    if not gt_indices:
        return match_indices, match_overlaps
    overlaps: dict[int, dict[int, float]] = {}
    for i in range(num_pred):
        for j in gt_indices:
            ov = iou[i][j]
            if ov > 1e-6:
                match_overlaps[i] = max(match_overlaps[i], ov)
                overlaps.setdefault(i, {})[j] = ov
    gt_pool = list(gt_indices)
    while gt_pool:
        max_idx, max_gt_idx, max_overlap = -1, -1, -1.0
        for i in sorted(overlaps):
            if match_indices[i] != -1:
                continue
            for j in gt_pool:
                if j not in overlaps[i]:
                    continue
                if overlaps[i][j] > max_overlap:
                    max_idx, max_gt_idx, max_overlap = i, j, overlaps[i][j]
        if max_idx == -1:
            break
        match_indices[max_idx] = max_gt_idx
        match_overlaps[max_idx] = max_overlap
        gt_pool.remove(max_gt_idx)
    for i in sorted(overlaps):
        if match_indices[i] != -1:
            continue
        max_gt_idx, max_overlap = -1, -1.0
        for j in gt_indices:
            if j not in overlaps[i]:
                continue
            ov = overlaps[i][j]
            if ov >= threshold and ov > max_overlap:
                max_gt_idx, max_overlap = j, ov
        if max_gt_idx != -1:
            match_indices[i] = max_gt_idx
            match_overlaps[i] = max_overlap
    return match_indices, match_overlaps


def _random_scene(seed: int, b: int = 3, p: int = 200, g: int = 5):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.rand(p, 2, generator=gen)
    sizes = 0.05 + 0.45 * torch.rand(p, 2, generator=gen)
    priors = torch.cat((centers, sizes), dim=1)
    priors_xyxy = cxcywh_to_xyxy(priors)
    boxes = torch.zeros(b, g, 4)
    valid = torch.zeros(b, g, dtype=torch.bool)
    for i in range(b):
        n = int(torch.randint(0, g + 1, (1,), generator=gen)) if i else g  # image 0 full, others 0..g
        for k in range(g):
            if k < n and k % 2 == 0:  # jittered copy of a prior: IoUs above .5 around it
                src = priors_xyxy[int(torch.randint(0, p, (1,), generator=gen))]
                box = src + 0.03 * torch.randn(4, generator=gen)
            elif k < n and k == 3:  # duplicate of an earlier box: two boxes with one best prior
                box = boxes[i, k - 1].clone()
            else:  # random box (also the garbage in padded slots)
                xy = torch.rand(2, generator=gen) * 0.8
                box = torch.cat((xy, xy + 0.05 + 0.3 * torch.rand(2, generator=gen)))
            boxes[i, k] = box
        valid[i, :n] = True
    perm = torch.argsort(torch.rand(b, g, generator=gen), dim=1)  # valid boxes anywhere, not only first
    boxes = boxes.gather(1, perm[..., None].expand(b, g, 4))
    valid = valid.gather(1, perm)
    return priors, boxes, valid


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_caffe_batched_equals_reference(seed, threshold):
    priors, boxes, valid = _random_scene(seed)
    res = match_caffe(priors, boxes, valid, threshold=threshold)
    assert res.matched_idx.shape == (3, 200)
    for i in range(boxes.shape[0]):
        iou = pairwise_iou(cxcywh_to_xyxy(priors), boxes[i])
        ref_idx, ref_ov = caffe_match_bbox_reference(iou.tolist(), valid[i].tolist(), threshold)
        assert res.matched_idx[i].tolist() == ref_idx
        torch.testing.assert_close(res.matched_iou[i], torch.tensor(ref_ov), atol=1e-6, rtol=0)
        # and the batched call equals the single-image call
        single = match_caffe(priors, boxes[i : i + 1], valid[i : i + 1], threshold=threshold)
        assert torch.equal(single.matched_idx[0], res.matched_idx[i])


def test_caffe_ties_follow_caffe_order():
    # Quantized boxes with duplicated priors and duplicated gts: many exact IoU ties.
    cells = torch.tensor(
        [[x / 4 + 0.125, y / 4 + 0.125, s, s] for y in range(4) for x in range(4) for s in (0.25, 0.5)]
    )
    priors = torch.cat((cells, cells), dim=0)  # every prior twice
    boxes = torch.tensor(
        [
            [[0.0, 0.0, 0.25, 0.25], [0.0, 0.0, 0.25, 0.25], [0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 0.25, 0.25]],
            [[0.5, 0.5, 0.75, 0.75], [0.5, 0.5, 0.75, 0.75], [0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]],
        ]
    )
    valid = torch.tensor([[True, True, True, True], [True, False, True, True]])
    res = match_caffe(priors, boxes, valid)
    for i in range(2):
        iou = pairwise_iou(cxcywh_to_xyxy(priors), boxes[i])
        ref_idx, _ = caffe_match_bbox_reference(iou.tolist(), valid[i].tolist(), 0.5)
        assert res.matched_idx[i].tolist() == ref_idx
    # image 0: three identical boxes on a cell: the first takes the first copy of the cell's prior, the
    # second the second copy, the third another prior it overlaps.
    assert res.matched_idx[0, 0].item() == 0 and res.matched_idx[0, 32].item() == 1


def _torchvision_reference(priors, boxes, valid, threshold):
    out = torch.full((boxes.shape[0], priors.shape[0]), -1, dtype=torch.int64)
    matcher = SSDMatcher(threshold)
    for i in range(boxes.shape[0]):
        idx = valid[i].nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        m = matcher(box_iou(boxes[i, idx], cxcywh_to_xyxy(priors)))
        out[i] = torch.where(m >= 0, idx[m.clamp_min(0)], torch.full_like(m, -1))
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_argmax_equals_torchvision_ssdmatcher(seed, threshold):
    priors, boxes, valid = _random_scene(100 + seed)
    res = match_argmax(priors, boxes, valid, threshold=threshold)
    assert torch.equal(res.matched_idx, _torchvision_reference(priors, boxes, valid, threshold))
    iou = pairwise_iou(cxcywh_to_xyxy(priors).unsqueeze(0), boxes)
    matched = res.matched_idx >= 0
    got = iou.gather(2, res.matched_idx.clamp_min(0).unsqueeze(2)).squeeze(2)
    torch.testing.assert_close(res.matched_iou[matched], got[matched])


def test_argmax_shared_best_prior_against_torchvision():
    boxes, valid = _batch([GT0, GT1, GT2, GT2])
    ref = _torchvision_reference(PRIORS, boxes, valid, 0.5)
    assert torch.equal(match_argmax(PRIORS, boxes, valid).matched_idx, ref)
    assert ref.tolist() == [[1, 0, 3, -1]]


# ---------------------------------------------------------------- targets


@pytest.mark.parametrize("method", ["caffe", "argmax"])
def test_build_targets(method):
    coder = BoxCoder()
    boxes, valid = _batch([GT0, GT1], [GT2], [])
    labels = torch.tensor([[3, 5], [7, 0], [0, 0]])
    t = build_targets(PRIORS, boxes, labels, valid, coder, method=method)
    assert isinstance(t, Targets)
    assert t.labels.dtype == torch.int64 and t.labels.shape == (3, 4)
    assert t.deltas.shape == (3, 4, 4)
    expected_idx = [[0, 1, -1, -1], [-1, -1, 0, -1], [-1] * 4] if method == "caffe" else [
        [1, 0, -1, -1],
        [-1, -1, 0, -1],
        [-1] * 4,
    ]
    assert t.match.matched_idx.tolist() == expected_idx
    for i in range(3):
        for j in range(4):
            k = expected_idx[i][j]
            if k < 0:
                assert t.labels[i, j].item() == 0
                assert (t.deltas[i, j] == 0).all()
            else:
                assert t.labels[i, j].item() == labels[i, k].item()
                torch.testing.assert_close(t.deltas[i, j], coder.encode(boxes[i, k], PRIORS[j]))


def test_build_targets_hand_deltas_and_ignore_label():
    # GT2 on p2 (cx .8, cy .8, w .4, h .4): box centre (.8, .66), size (.4, .12).
    boxes, valid = _batch([GT2])
    t = build_targets(PRIORS, boxes, torch.tensor([[4]]), valid, BoxCoder((0.1, 0.1, 0.2, 0.2)))
    expected = [0.0, (0.66 - 0.8) / 0.4 / 0.1, 0.0, math.log(0.12 / 0.4) / 0.2]
    torch.testing.assert_close(t.deltas[0, 2], torch.tensor(expected, dtype=torch.float64))
    assert t.labels.tolist() == [[0, 0, 4, 0]]
    # a negative label marks an ignored box: its priors get -1 and zero deltas
    t = build_targets(PRIORS, boxes, torch.tensor([[-1]]), valid)
    assert t.labels.tolist() == [[0, 0, -1, 0]]
    assert (t.deltas == 0).all()


def test_build_targets_no_gt_slots():
    t = build_targets(PRIORS.float(), torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64),
                      torch.zeros(2, 0, dtype=torch.bool))
    assert t.labels.shape == (2, 4) and (t.labels == 0).all()
    assert t.deltas.shape == (2, 4, 4) and (t.deltas == 0).all()
    assert t.deltas.dtype == torch.float32
