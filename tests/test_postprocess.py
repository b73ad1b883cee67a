"""PostProcess / detection_output against a loop-per-image-and-class reference, hand cases, torchvision."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchvision

import multibox.postprocess as pp
from multibox.anchors import cxcywh_to_xyxy, xyxy_to_cxcywh
from multibox.box_coder import BoxCoder
from multibox.detections import Detections
from multibox.postprocess import PaddedDetections, PostProcess, detection_output, grouped_nms

CODER = BoxCoder()


# ---------------------------------------------------------------------------------------------------------
# reference: Python loops over images and classes, torchvision.ops.nms per class (Caffe DetectionOutput)
# ---------------------------------------------------------------------------------------------------------
def reference(cls_logits, box_deltas, priors, image_sizes=None, *, mode="per_class", conf_threshold=0.01,
              top_k=400, nms_threshold=0.45, keep_top_k=200, clip=True, background_index=0):
    scores_all = cls_logits.float().softmax(-1)
    boxes_all = CODER.decode(box_deltas.float(), priors)
    b, p, c = scores_all.shape
    top_k = p if top_k <= 0 else top_k
    keep_top_k = 10**9 if keep_top_k <= 0 else keep_top_k
    out = []
    for i in range(b):
        boxes = boxes_all[i]
        hi = torch.ones(4)
        if image_sizes is not None:
            h, w = image_sizes[i]
            hi = torch.tensor([w, h, w, h], dtype=torch.float32)
            boxes = boxes * hi
        if clip:
            boxes = torch.minimum(boxes.clamp(min=0.0), hi)
        scores = scores_all[i]
        fg = [k for k in range(c) if k != background_index]
        parts = []
        if mode == "per_class":
            for k in fg:
                s = scores[:, k]
                idx = (s > conf_threshold).nonzero().squeeze(1)
                idx = idx[s[idx].argsort(descending=True, stable=True)[:top_k]]
                keep = idx[torchvision.ops.nms(boxes[idx], s[idx], nms_threshold)]
                parts.append((boxes[keep], s[keep], torch.full((keep.numel(),), k, dtype=torch.int64)))
        else:
            s, j = scores[:, fg].max(-1)
            label = torch.tensor(fg)[j]
            idx = (s > conf_threshold).nonzero().squeeze(1)
            idx = idx[s[idx].argsort(descending=True, stable=True)[:top_k]]
            keep = idx[torchvision.ops.nms(boxes[idx], s[idx], nms_threshold)]
            parts.append((boxes[keep], s[keep], label[keep]))
        bx, sc, lb = (torch.cat(t) for t in zip(*parts, strict=True))
        order = sc.argsort(descending=True, stable=True)[:keep_top_k]
        out.append((bx[order], sc[order], lb[order]))
    return out


def random_case(seed, b=3, p=300, c=6, spread=0.3, logit_scale=2.0, delta_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    priors = torch.cat([torch.rand(p, 2, generator=g), torch.rand(p, 2, generator=g) * spread + 0.02], 1)
    logits = torch.randn(b, p, c, generator=g) * logit_scale
    logits[:, : p // 3, 0] += 3.0  # some clear background
    deltas = torch.randn(b, p, 4, generator=g) * delta_scale
    return logits, deltas, priors


def assert_same(out: PaddedDetections, ref, require_tie_free=True):
    for i, (rb, rs, rl) in enumerate(ref):
        v = out.valid[i]
        n = int(v.sum())
        assert bool(v[:n].all()) and not bool(v[n:].any()), "valid entries must come first"
        if require_tie_free:
            assert bool((rs[1:] != rs[:-1]).all()), "test data has tied scores: pick another seed"
        assert n == rs.numel()
        assert torch.equal(out.scores[i, :n], rs)
        assert torch.equal(out.labels[i, :n], rl)
        torch.testing.assert_close(out.boxes[i, :n], rb, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# batched == reference
# ---------------------------------------------------------------------------------------------------------
SETTINGS = [  # (top_k, keep_top_k)
    (400, 200),
    (30, 20),
    (50, 10),
    (1000, -1),
    (7, 3),
    (400, 5),
]


@pytest.mark.parametrize("mode", ["per_class", "global"])
@pytest.mark.parametrize("seed", [0, 2, 3, 5])
def test_matches_reference_random(seed, mode):
    logits, deltas, priors = random_case(seed)
    sizes = [(300, 500), (200, 100), (50, 60)] if seed % 2 else None
    for top_k, keep_top_k in SETTINGS:
        for clip in (True, False):
            kw = dict(mode=mode, conf_threshold=0.1, top_k=top_k, keep_top_k=keep_top_k, clip=clip)
            out = detection_output(logits, deltas, priors, CODER, sizes, **kw)
            assert_same(out, reference(logits, deltas, priors, sizes, **kw))


@pytest.mark.parametrize("mode", ["per_class", "global"])
def test_matches_reference_many_settings(mode):
    """Random sizes, thresholds and box overlap; scores are all distinct (tie-free), so the match is exact."""
    for seed in range(12):
        g = torch.Generator().manual_seed(100 + seed)
        p, c = int(torch.randint(5, 250, (1,), generator=g)), int(torch.randint(2, 9, (1,), generator=g))
        logits, deltas, priors = random_case(100 + seed, p=p, c=c, spread=float(torch.rand(1, generator=g)),
                                             delta_scale=float(torch.rand(1, generator=g)))
        conf = float(torch.rand(1, generator=g)) * 0.2
        nms = float(torch.rand(1, generator=g)) * 0.8 + 0.1
        for top_k, keep_top_k in SETTINGS:
            kw = dict(mode=mode, conf_threshold=conf, top_k=top_k, keep_top_k=keep_top_k, nms_threshold=nms)
            out = detection_output(logits, deltas, priors, CODER, **kw)
            assert_same(out, reference(logits, deltas, priors, **kw))


def test_all_prefix_phases_match_reference(monkeypatch):
    """Heavy suppression: no prefix reaches keep_top_k, so the images go through the flat prefixes, the
    per-class prefixes and the full candidate set; the result still equals the reference."""
    calls = {"flat": 0, "class": 0}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(pp, "_flat_candidates", spy("flat", pp._flat_candidates))
    monkeypatch.setattr(pp, "_class_candidates", spy("class", pp._class_candidates))
    g = torch.Generator().manual_seed(7)
    b, p, c = 2, 400, 21
    # one cluster of heavily overlapping priors: about one box per class survives NMS, 20 < keep_top_k
    priors = torch.cat([0.5 + torch.randn(p, 2, generator=g) * 0.01, torch.full((p, 2), 0.3)], 1)
    logits = torch.randn(b, p, c, generator=g)
    deltas = torch.randn(b, p, 4, generator=g) * 0.05
    kw = dict(top_k=10, keep_top_k=25, conf_threshold=0.01)  # prefixes 37, 40 (flat), 80, 160, all
    out = detection_output(logits, deltas, priors, CODER, **kw)
    assert_same(out, reference(logits, deltas, priors, **kw))
    assert calls["flat"] >= 2 and calls["class"] >= 2


def test_ties_keep_invariants():
    """Quantized logits give many tied scores: which tied box wins is arbitrary (as in torchvision), but the
    output is still a valid per-class NMS result of the right size and order."""
    g = torch.Generator().manual_seed(3)
    b, p, c = 2, 200, 4
    priors = torch.cat([torch.rand(p, 2, generator=g), torch.rand(p, 2, generator=g) * 0.3 + 0.05], 1)
    logits = torch.randint(0, 3, (b, p, c), generator=g).float()
    deltas = torch.zeros(b, p, 4)
    out = detection_output(logits, deltas, priors, CODER, keep_top_k=50, conf_threshold=0.2)
    ref = reference(logits, deltas, priors, keep_top_k=50, conf_threshold=0.2)
    for i in range(b):
        n = int(out.valid[i].sum())
        s, lb, bx = out.scores[i, :n], out.labels[i, :n], out.boxes[i, :n]
        assert n == ref[i][1].numel()
        assert torch.equal(s, ref[i][1])  # the same sorted scores
        assert bool((s[:-1] >= s[1:]).all())
        iou = torchvision.ops.box_iou(bx, bx)
        same = lb[:, None] == lb[None, :]
        assert not bool(((iou > 0.45) & same).triu(1).any())


@pytest.mark.parametrize("mode", ["per_class", "global"])
def test_background_index_elsewhere(mode):
    logits, deltas, priors = random_case(11, c=5)
    moved = logits.roll(-1, dims=2)  # background now last; class k moves to k - 1
    out0 = detection_output(logits, deltas, priors, CODER, mode=mode, conf_threshold=0.1)
    out4 = detection_output(moved, deltas, priors, CODER, mode=mode, conf_threshold=0.1, background_index=4)
    assert torch.equal(out0.valid, out4.valid)
    torch.testing.assert_close(out0.scores, out4.scores)  # softmax sums in another order: rounding only
    assert torch.equal(out0.labels[out0.valid], out4.labels[out4.valid] + 1)


NMS_PATHS = {  # module settings that route the NMS blocks through each of its algorithms
    "matrix": {},
    "greedy_then_matrix": {"_GREEDY_FIRST": 0, "_GREEDY_ROUNDS": 3, "_MATRIX_CHUNK": 5000},
    "greedy_only": {"_GREEDY_FIRST": 0, "_GREEDY_ROUNDS": 10**6},
    "torchvision_per_block": {"_MATRIX_CHUNK": 1},
}


@pytest.mark.parametrize("path", list(NMS_PATHS))
def test_grouped_nms_matches_torchvision(path, monkeypatch):
    for name, value in NMS_PATHS[path].items():
        monkeypatch.setattr(pp, name, value)
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        n = 600
        xy = torch.rand(n, 2, generator=g) * 100
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 40 + 0.5], 1)
        boxes[:5, 2:] = boxes[:5, :2]  # a few empty boxes
        scores = torch.rand(n, generator=g)
        groups = torch.randint(0, 7, (n,), generator=g) * 3
        for thr in (0.3, 0.45, 0.7):
            expected = torchvision.ops.batched_nms(boxes, scores, groups, thr)
            assert torch.equal(grouped_nms(boxes, scores, groups, thr), expected)
    assert grouped_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).numel() == 0


@pytest.mark.parametrize("path", list(NMS_PATHS)[1:])
def test_detection_output_every_nms_path(path, monkeypatch):
    for name, value in NMS_PATHS[path].items():
        monkeypatch.setattr(pp, name, value)
    logits, deltas, priors = random_case(5, p=200)
    for mode in ("per_class", "global"):
        kw = dict(mode=mode, conf_threshold=0.05, keep_top_k=-1)
        assert_same(detection_output(logits, deltas, priors, CODER, **kw),
                    reference(logits, deltas, priors, **kw))


# ---------------------------------------------------------------------------------------------------------
# hand cases
# ---------------------------------------------------------------------------------------------------------
def hand_case(boxes_xyxy, class_probs, num_classes=3):
    """Priors = the given normalized boxes, zero deltas (boxes decode to the priors), logits = log(probs)."""
    boxes = torch.tensor(boxes_xyxy, dtype=torch.float32)
    priors = xyxy_to_cxcywh(boxes)
    probs = torch.tensor(class_probs, dtype=torch.float32)  # [P, C], rows sum to 1
    assert probs.shape == (boxes.shape[0], num_classes)
    return probs.log()[None], torch.zeros(1, boxes.shape[0], 4), priors


def test_overlapping_same_class_one_kept():
    # IoU = 0.5 * 0.8 / (0.48 + 0.48 - 0.4) = 0.714 > 0.45
    logits, deltas, priors = hand_case([[0.1, 0.1, 0.7, 0.9], [0.2, 0.1, 0.8, 0.9]],
                                       [[0.2, 0.8, 0.0], [0.4, 0.6, 0.0]])
    dets = PostProcess(priors)(logits, deltas)[0]
    assert len(dets) == 1
    assert dets.labels.tolist() == [1]
    torch.testing.assert_close(dets.scores, torch.tensor([0.8]))
    torch.testing.assert_close(dets.boxes, torch.tensor([[0.1, 0.1, 0.7, 0.9]]))


def test_low_overlap_same_class_both_kept():
    # IoU = 0.2 * 0.8 / (0.48 + 0.4 - 0.16) = 0.222 < 0.45
    logits, deltas, priors = hand_case([[0.1, 0.1, 0.7, 0.9], [0.5, 0.1, 1.0, 0.9]],
                                       [[0.2, 0.8, 0.0], [0.4, 0.6, 0.0]])
    assert len(PostProcess(priors)(logits, deltas)[0]) == 2


def test_same_boxes_different_classes():
    logits, deltas, priors = hand_case([[0.1, 0.1, 0.7, 0.9], [0.1, 0.1, 0.7, 0.9]],
                                       [[0.1, 0.8, 0.1], [0.1, 0.2, 0.7]])
    per_class = PostProcess(priors, conf_threshold=0.3)(logits, deltas)[0]
    assert per_class.labels.tolist() == [1, 2]
    torch.testing.assert_close(per_class.scores, torch.tensor([0.8, 0.7]))
    global_ = PostProcess(priors, mode="global", conf_threshold=0.3)(logits, deltas)[0]
    assert global_.labels.tolist() == [1]
    torch.testing.assert_close(global_.scores, torch.tensor([0.8]))


def test_conf_threshold_is_strict_and_drops_low_scores():
    logits, deltas, priors = hand_case([[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7], [0.8, 0.0, 1.0, 0.2]],
                                       [[0.5, 0.5, 0.0], [0.75, 0.25, 0.0], [0.9, 0.1, 0.0]])
    dets = PostProcess(priors, conf_threshold=0.25)(logits, deltas)[0]
    torch.testing.assert_close(dets.scores, torch.tensor([0.5]))  # 0.25 is not > 0.25
    assert len(PostProcess(priors, conf_threshold=0.2)(logits, deltas)[0]) == 2


def test_keep_top_k_caps_the_count():
    n = 6  # non-overlapping boxes in a row, scores 0.9, 0.8, ... for class 1
    boxes = [[i / n, 0.0, (i + 0.9) / n, 0.5] for i in range(n)]
    probs = [[0.1 + 0.1 * i, 0.9 - 0.1 * i, 0.0] for i in range(n)]
    logits, deltas, priors = hand_case(boxes, probs)
    dets = PostProcess(priors, keep_top_k=4)(logits, deltas)[0]
    torch.testing.assert_close(dets.scores, torch.tensor([0.9, 0.8, 0.7, 0.6]))
    padded = PostProcess(priors, keep_top_k=4).forward_padded(logits, deltas)
    assert padded.boxes.shape == (1, 4, 4) and bool(padded.valid.all())
    padded = PostProcess(priors, keep_top_k=10).forward_padded(logits, deltas)
    assert padded.boxes.shape == (1, 10, 4) and padded.valid.sum() == n  # static [B, keep_top_k] shape


@pytest.mark.parametrize("mode", ["per_class", "global"])
def test_top_k_caps_before_nms(mode):
    # 5 disjoint class-1 boxes and 5 disjoint class-2 boxes; top_k = 3 is per class (per_class) or per image
    boxes = [[i / 10, 0.0, (i + 0.8) / 10, 0.5] for i in range(10)]
    probs = [[0.05, 0.9 - 0.01 * i, 0.05 + 0.01 * i] if i < 5 else [0.05, 0.05 + 0.01 * i, 0.9 - 0.01 * i]
             for i in range(10)]
    logits, deltas, priors = hand_case(boxes, probs)
    dets = PostProcess(priors, mode=mode, top_k=3, conf_threshold=0.5)(logits, deltas)[0]
    if mode == "per_class":
        assert sorted(dets.labels.tolist()) == [1, 1, 1, 2, 2, 2]
    else:
        assert len(dets) == 3


def test_top_k_limits_nms_candidates():
    # Caffe applies top_k before NMS: with top_k = 1 the suppressed runner-up cannot come back, and a box
    # outside the top_k is dropped even though nothing would suppress it
    logits, deltas, priors = hand_case([[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]],
                                       [[0.1, 0.9, 0.0], [0.2, 0.8, 0.0]])
    assert len(PostProcess(priors, top_k=1)(logits, deltas)[0]) == 1
    assert len(PostProcess(priors, top_k=2)(logits, deltas)[0]) == 2


def test_scaling_to_pixels_of_a_non_square_image_and_clipping():
    logits, deltas, priors = hand_case([[0.1, 0.2, 0.5, 0.6], [0.6, 0.7, 1.2, 1.1]],
                                       [[0.1, 0.9, 0.0], [0.2, 0.0, 0.8]])
    sizes = [(200, 400)]  # (h, w)
    dets = PostProcess(priors, clip=True)(logits, deltas, sizes)[0]
    assert dets.image_size == (200, 400)
    torch.testing.assert_close(dets.boxes, torch.tensor([[40.0, 40.0, 200.0, 120.0], [240.0, 140.0, 400.0, 200.0]]))
    dets = PostProcess(priors, clip=False)(logits, deltas, torch.tensor(sizes))[0]
    torch.testing.assert_close(dets.boxes, torch.tensor([[40.0, 40.0, 200.0, 120.0], [240.0, 140.0, 480.0, 220.0]]))
    dets = PostProcess(priors, clip=True)(logits, deltas)[0]  # normalized, clipped to [0, 1]
    assert dets.image_size is None
    torch.testing.assert_close(dets.boxes, torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.6, 0.7, 1.0, 1.0]]))


def test_nothing_above_threshold_gives_empty_detections():
    logits = torch.zeros(2, 50, 4)
    logits[..., 0] = 10.0  # background everywhere
    priors = torch.rand(50, 4) * 0.5 + 0.1
    post = PostProcess(priors, class_names=["bg", "a", "b", "c"])
    for mode in ("per_class", "global"):
        post.mode = mode
        for dets in post(logits, torch.zeros(2, 50, 4), [(10, 20), (30, 40)]):
            assert len(dets) == 0
            assert dets.boxes.shape == (0, 4) and dets.boxes.dtype == torch.float32
            assert dets.scores.shape == (0,) and dets.scores.dtype == torch.float32
            assert dets.labels.shape == (0,) and dets.labels.dtype == torch.int64
            assert dets.to_json_records() == [] and dets.names() == []
        padded = post.forward_padded(logits, torch.zeros(2, 50, 4))
        assert padded.boxes.shape == (2, 200, 4) and not bool(padded.valid.any())
    post.keep_top_k = -1
    assert post.forward_padded(logits, torch.zeros(2, 50, 4)).boxes.shape == (2, 0, 4)


def test_empty_batch_item_among_others():
    logits, deltas, priors = random_case(4)
    logits[1, :, 0] = 50.0  # image 1: all background
    out = PostProcess(priors, conf_threshold=0.05)(logits, deltas)
    assert len(out) == 3 and len(out[1]) == 0 and len(out[0]) > 0 and len(out[2]) > 0


def test_module_details():
    logits, deltas, priors = random_case(1, b=2, c=3)
    names = ["background", "cat", "dog"]
    post = PostProcess(priors, class_names=names)
    assert "priors" not in post.state_dict()  # derived from the config, not a weight
    out = post(logits.half(), deltas.half(), [(100, 200), (300, 50)])
    assert [d.image_size for d in out] == [(100, 200), (300, 50)]
    assert out[0].class_names == names and set(out[0].names()) <= {"cat", "dog"}
    for d in out:
        assert bool((d.scores[:-1] >= d.scores[1:]).all())
        assert d.boxes.dtype == torch.float32 and d.labels.dtype == torch.int64
    with pytest.raises(ValueError):
        PostProcess(priors, mode="fast")
    with pytest.raises(ValueError):
        post(logits[:, :10], deltas)
    with pytest.raises(ValueError):
        post(logits, deltas, [(1, 1)])
    with pytest.raises(ValueError):
        detection_output(logits, deltas, priors, CODER, background_index=3)


# ---------------------------------------------------------------------------------------------------------
# Detections
# ---------------------------------------------------------------------------------------------------------
def test_detections_methods():
    d = Detections(torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 5.0, 5.0]]), torch.tensor([0.9, 0.3]),
                   torch.tensor([2, 1]), ["bg", "cat", "dog"], (100, 200))
    assert len(d) == 2 and d.names() == ["dog", "cat"]
    recs = d.to_json_records(image_id=7)
    assert recs[0] == {"image_id": 7, "bbox": [10.0, 20.0, 40.0, 60.0], "score": pytest.approx(0.9),
                       "category_id": 2, "category_name": "dog"}
    assert "image_id" not in d.to_json_records()[0]
    as_dict = d.to_dict(image_id="a.jpg")
    assert as_dict["image_size"] == [100, 200] and len(as_dict["detections"]) == 2
    json.dumps(as_dict)
    f = d.filter(0.5)
    assert len(f) == 1 and f.labels.tolist() == [2] and f.image_size == (100, 200)
    assert len(d[1]) == 1 and d[-1].labels.tolist() == [1]
    assert d.to("cpu").boxes.device.type == "cpu"
    assert Detections(d.boxes, d.scores, d.labels).names() == ["2", "1"]
    e = Detections.empty(["bg"], (3, 4))
    assert len(e) == 0 and e.boxes.shape == (0, 4) and e.labels.dtype == torch.int64
    with pytest.raises(ValueError):
        Detections(torch.zeros(2, 4), torch.zeros(3), torch.zeros(3, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------------------
# torchvision's SSD
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tv_ssd():
    from torchvision.models.detection import ssd300_vgg16
    from torchvision.models.detection.image_list import ImageList

    # postprocess_detections uses no weights: build on the meta device (instant), anchors on the CPU
    with torch.device("meta"):
        model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).eval()
    gen = model.anchor_generator
    gen._wh_pairs = gen._generate_wh_pairs(len(gen.aspect_ratios))
    features = [torch.zeros(1, 1, s, s) for s in (38, 19, 10, 5, 3, 1)]
    anchors = gen(ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)]), features)[0]  # [8732, 4] xyxy px
    assert anchors.shape == (8732, 4) and anchors.device.type == "cpu"
    return model, anchors


def test_matches_torchvision_ssd_postprocess(tv_ssd):
    """Same settings (score 0.01, 400 per class, NMS 0.45, 200 per image, boxes clipped before NMS):
    same scores and labels; boxes equal up to float rounding (torchvision decodes in pixels, we decode
    normalized and scale)."""
    model, anchors = tv_ssd
    assert (model.score_thresh, model.topk_candidates, model.nms_thresh, model.detections_per_img) == (
        0.01, 400, 0.45, 200)
    assert model.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    priors = xyxy_to_cxcywh(anchors / 300.0)
    b = 2
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(b, 8732, 21, generator=g) * 3
    deltas = torch.randn(b, 8732, 4, generator=g)
    post = PostProcess(priors, CODER)

    expected = model.postprocess_detections({"cls_logits": logits, "bbox_regression": deltas},
                                            [anchors] * b, [(300, 300)] * b)
    got = post(logits, deltas, [(300, 300)] * b)
    for e, d in zip(expected, got, strict=True):
        assert len(d) == e["scores"].numel() == 200
        assert torch.equal(d.scores, e["scores"]) and torch.equal(d.labels, e["labels"])
        torch.testing.assert_close(d.boxes, e["boxes"], rtol=0, atol=1e-3)

    # non-square originals: torchvision runs NMS at 300x300 and rescales after; IoU does not change under
    # the per-axis scaling, so the kept boxes are the same
    sizes = [(375, 500), (480, 270)]
    expected = model.transform.postprocess(expected, [(300, 300)] * b, sizes)
    got = post(logits, deltas, sizes)
    for e, d in zip(expected, got, strict=True):
        assert torch.equal(d.scores, e["scores"]) and torch.equal(d.labels, e["labels"])
        torch.testing.assert_close(d.boxes, e["boxes"], rtol=0, atol=1e-3)


def test_clip_before_nms_as_torchvision(tv_ssd):
    """torchvision clips before NMS (our clip=True); Caffe never clips (clip=False). They differ exactly where
    clipping changes an overlap: B sticks out of the image; unclipped IoU(A, B) = 6000 / 30000 = 0.2, clipped
    (B = [240, 100, 300, 200]) 6000 / 10000 = 0.6 > 0.45."""
    model, _ = tv_ssd
    anchors = torch.tensor([[200.0, 100.0, 300.0, 200.0], [240.0, 100.0, 500.0, 200.0]])  # A, B, xyxy px
    probs = torch.tensor([[0.1, 0.9] + [0.0] * 19, [0.2, 0.8] + [0.0] * 19])
    logits, deltas = probs.log()[None], torch.zeros(1, 2, 4)
    e = model.postprocess_detections({"cls_logits": logits, "bbox_regression": deltas}, [anchors], [(300, 300)])[0]
    priors = xyxy_to_cxcywh(anchors / 300.0)
    clipped = PostProcess(priors, clip=True)(logits, deltas, [(300, 300)])[0]
    assert len(e["scores"]) == len(clipped) == 1
    torch.testing.assert_close(clipped.boxes, e["boxes"])
    unclipped = PostProcess(priors, clip=False)(logits, deltas, [(300, 300)])[0]
    torch.testing.assert_close(unclipped.boxes, anchors)


def test_priors_roundtrip_helper():
    # the helpers used above: xyxy pixels -> normalized cxcywh -> xyxy pixels
    a = torch.tensor([[10.0, 20.0, 110.0, 70.0]])
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(a / 300.0)) * 300.0, a)
    assert math.isclose(float(xyxy_to_cxcywh(a)[0, 2]), 100.0)
