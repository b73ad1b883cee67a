"""VOC AP: hand-computed cases, and a devkit-coordinates reference loop on random data."""

import math

import numpy as np
import pytest

from multibox.data.types import Target
from multibox.metrics.results import DetectionTable, GroundTruth
from multibox.metrics.voc import VOC07_RECALL_THRESHOLDS, match_detections, voc07_ap, voc12_ap, voc_evaluate

NAMES = ["background", "a", "b"]


def evaluate(gt_boxes, gt_labels, dets, metric, difficult=None, names=NAMES, gt_image=None):
    """dets: list of (image, label, score, box) in 0-based continuous coordinates."""
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    n = gt_boxes.shape[0]
    return voc_evaluate(
        gt_image=np.zeros(n, np.int64) if gt_image is None else np.asarray(gt_image),
        gt_label=np.asarray(gt_labels, np.int64),
        gt_boxes=gt_boxes,
        gt_ignore=np.zeros(n, bool) if difficult is None else np.asarray(difficult, bool),
        det_image=np.array([d[0] for d in dets], np.int64),
        det_label=np.array([d[1] for d in dets], np.int64),
        det_score=np.array([d[2] for d in dets], np.float64),
        det_boxes=np.array([d[3] for d in dets], np.float64).reshape(-1, 4),
        class_names=names, metric=metric)


def test_duplicate_is_fp_and_07_differs_from_12():
    gts = [[0, 0, 10, 10], [20, 20, 30, 30]]
    dets = [(0, 1, 0.9, [0, 0, 10, 10]), (0, 1, 0.8, [0, 0, 10, 10]), (0, 1, 0.7, [20, 20, 30, 30])]
    # tp = 1, 0, 1 -> recall .5 .5 1, precision 1 .5 2/3
    r12 = evaluate(gts, [1, 1], dets, "voc12")[0]
    assert r12.ap == pytest.approx(0.5 * 1 + 0.5 * (2 / 3), abs=1e-12)
    np.testing.assert_allclose(r12.recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(r12.precision, [1.0, 0.5, 2 / 3])
    r07 = evaluate(gts, [1, 1], dets, "voc07")[0]
    assert r07.ap == pytest.approx((6 * 1 + 5 * (2 / 3)) / 11, abs=1e-12)
    assert r07.num_gt == 2 and r07.num_det == 3


def test_difficult_match_is_ignored():
    gts = [[0, 0, 10, 10], [20, 20, 30, 30]]
    dets = [(0, 1, 0.9, [0, 0, 10, 10]), (0, 1, 0.85, [0, 0, 10, 10]), (0, 1, 0.8, [20, 20, 30, 30])]
    for metric in ("voc07", "voc12"):
        r = evaluate(gts, [1, 1], dets, metric, difficult=[True, False])[0]
        assert r.ap == pytest.approx(1.0) and r.num_gt == 1  # both hits on the difficult box: neither TP nor FP
        np.testing.assert_allclose(r.precision, [1.0])
    # the same detections with no difficult flag: the duplicate costs precision
    r = evaluate(gts, [1, 1], dets, "voc12")[0]
    assert r.ap == pytest.approx(0.5 + 0.5 * (2 / 3))


def test_iou_exactly_half_is_not_a_match():
    gts = [[0, 0, 10, 10]]
    exactly = evaluate(gts, [1], [(0, 1, 0.9, [0, 0, 10, 5])], "voc12")[0]  # inter 50 / union 100
    assert exactly.ap == 0.0
    above = evaluate(gts, [1], [(0, 1, 0.9, [0, 0, 10, 5.001])], "voc12")[0]
    assert above.ap == 1.0


def test_best_overlap_box_taken_means_fp_even_if_another_is_free():
    gts = [[0, 0, 10, 10], [2, 0, 12, 10]]
    # second detection: IoU 95/105 with box 0 (taken), 85/115 with box 1 (free) -> FP, as in the devkit
    dets = [(0, 1, 0.9, [0, 0, 10, 10]), (0, 1, 0.8, [0.5, 0, 10.5, 10])]
    r = evaluate(gts, [1, 1], dets, "voc12")[0]
    assert r.ap == pytest.approx(0.5)
    assert evaluate(gts, [1, 1], dets, "voc07")[0].ap == pytest.approx(6 / 11)


def test_matches_stay_within_image_and_class():
    gts = [[0, 0, 10, 10], [0, 0, 10, 10]]
    dets = [(1, 1, 0.9, [0, 0, 10, 10]),  # image 1, class a: only image 1's box 1 (class b) is there
            (0, 2, 0.8, [0, 0, 10, 10])]  # image 0, class b: image 0 has only class a
    r = evaluate(gts, [1, 2], dets, "voc12", gt_image=[0, 1])
    assert [x.ap for x in r] == [0.0, 0.0]


def test_no_detections_and_no_ground_truth():
    r = evaluate([[0, 0, 10, 10]], [1], [], "voc07")
    assert r[0].ap == 0.0 and r[0].num_det == 0
    assert math.isnan(r[1].ap) and r[1].num_gt == 0  # class b has no ground truth: undefined, not 0


def test_voc07_thresholds_are_matlab_colon():
    # MATLAB 0:0.1:1 gives 3 * 0.1 = 0.30000000000000004 for the 4th value and k/10 for the others
    assert VOC07_RECALL_THRESHOLDS[3] == 3 * 0.1 and VOC07_RECALL_THRESHOLDS[3] > 0.3
    others = np.delete(VOC07_RECALL_THRESHOLDS, 3)
    assert others.tolist() == [k / 10 for k in (0, 1, 2, 4, 5, 6, 7, 8, 9, 10)]
    # recall exactly 3/10 (3 of 10 boxes found, all precise) does not reach that threshold
    assert voc07_ap(np.array([0.1, 0.2, 0.3]), np.ones(3)) == pytest.approx(3 / 11)


def test_ap_formulas_on_a_curve():
    rec = np.array([0.2, 0.4, 0.4, 0.8])
    prec = np.array([1.0, 0.5, 0.4, 0.6])
    # envelope: 1 on (0, .2], .6 on (.2, .8], 0 after
    assert voc12_ap(rec, prec) == pytest.approx(0.2 * 1 + 0.6 * 0.6)
    # 11-point: t=0,.1,.2 -> 1; t=.3..0.8 -> .6 (6 thresholds); t=.9, 1 -> 0
    assert voc07_ap(rec, prec) == pytest.approx((3 * 1 + 6 * 0.6) / 11)


# ----------------------------------------------------------------------------------------------- reference


def devkit_iou(bb, bbgt):
    """The devkit's overlap on 1-based inclusive coordinates (+1 widths); None when they do not overlap."""
    iw = min(bb[2], bbgt[2]) - max(bb[0], bbgt[0]) + 1
    ih = min(bb[3], bbgt[3]) - max(bb[1], bbgt[1]) + 1
    if iw > 0 and ih > 0:
        ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) - iw * ih
        return iw * ih / ua
    return None


def devkit_class_ap(gt, dets, use_07):
    """VOCevaldet.m for one class, written as a plain loop. gt: {image: (boxes 1-based, difficult)};
    dets: list of (image, score, box 1-based) in file order."""
    npos = sum(int((~d).sum()) for _, d in gt.values())
    detected = {k: [False] * len(b) for k, (b, _) in gt.items()}
    order = sorted(range(len(dets)), key=lambda i: -dets[i][1])  # stable, as MATLAB's sort
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    for d, i in enumerate(order):
        img, _, bb = dets[i]
        boxes, difficult = gt.get(img, (np.zeros((0, 4)), np.zeros(0, bool)))
        ovmax, jmax = -math.inf, -1
        for j, bbgt in enumerate(boxes):
            ov = devkit_iou(bb, bbgt)
            if ov is not None and ov > ovmax:
                ovmax, jmax = ov, j
        if ovmax > 0.5:
            if not difficult[jmax]:
                if not detected[img][jmax]:
                    tp[d] = 1
                    detected[img][jmax] = True
                else:
                    fp[d] = 1
        else:
            fp[d] = 1
    if npos == 0:
        return math.nan
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos
    with np.errstate(invalid="ignore"):
        prec = tp / (fp + tp)  # NaN where only ignored detections so far, as in MATLAB
    if use_07:
        ap = 0.0
        for t in [0 + k * 0.1 for k in range(6)] + [1 - k * 0.1 for k in range(4, -1, -1)]:
            p = prec[rec >= t]
            p = p[~np.isnan(p)]  # MATLAB's max skips NaN
            ap += (p.max() if p.size else 0.0) / 11
        return ap
    mrec = np.concatenate([[0], rec, [1]])
    mpre = np.concatenate([[0], prec, [0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = np.fmax(mpre[i], mpre[i + 1])
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def random_problem(rng, n_images=40, n_classes=4, integer=True):
    """Ground truth and detections in devkit 1-based coordinates (integer pixels, or not)."""
    gt = {}  # (image, label) -> list of (box, difficult)
    dets = []  # (image, label, score, box)
    for img in range(n_images):
        for _ in range(rng.integers(0, 5)):
            x1, y1 = rng.uniform(1, 200, size=2)
            w, h = rng.uniform(5, 80, size=2)
            box = np.array([x1, y1, x1 + w, y1 + h])
            box = np.round(box) if integer else box
            lab = int(rng.integers(1, n_classes))
            gt.setdefault((img, lab), []).append((box, bool(rng.random() < 0.2)))
            for _ in range(rng.integers(0, 4)):  # detections near the box: some above, some below IoU 0.5
                jitter = rng.normal(0, 0.15, size=4) * np.array([w, h, w, h])
                d = box + jitter
                d = np.round(d) if integer else d
                d[2:] = np.maximum(d[2:], d[:2])
                dets.append((img, lab if rng.random() < 0.9 else int(rng.integers(1, n_classes)),
                             round(float(rng.random()), 2), d))  # 2 decimals: many score ties
        for _ in range(rng.integers(0, 3)):  # false alarms
            x1, y1 = rng.uniform(1, 200, size=2)
            d = np.array([x1, y1, x1 + rng.uniform(3, 60), y1 + rng.uniform(3, 60)])
            dets.append((img, int(rng.integers(1, n_classes)), round(float(rng.random()), 2),
                         np.round(d) if integer else d))
    return gt, dets


def to_ours(gt, dets, n_images, names):
    """Our inputs: 0-based continuous boxes (xmin - 1, ymin - 1, xmax, ymax)."""
    targets = []
    for img in range(n_images):
        boxes, labels, diff = [], [], []
        for (i, lab), objs in sorted(gt.items()):
            if i == img:
                for b, d in objs:
                    boxes.append(b - np.array([1, 1, 0, 0]))
                    labels.append(lab)
                    diff.append(d)
        targets.append(Target(boxes=np.array(boxes, np.float64).reshape(-1, 4), labels=np.array(labels),
                              image_id=f"{img:06d}", orig_size=(300, 300), difficult=np.array(diff, bool)))
    table = DetectionTable(image=[d[0] for d in dets], label=[d[1] for d in dets], score=[d[2] for d in dets],
                           boxes=np.array([d[3] - np.array([1, 1, 0, 0]) for d in dets]).reshape(-1, 4))
    return GroundTruth(targets, names), table


@pytest.mark.parametrize("integer", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_equals_devkit_reference(seed, integer):
    rng = np.random.default_rng(seed)
    names = ["background", "c1", "c2", "c3"]
    n_images = 40
    gt, dets = random_problem(rng, n_images, len(names), integer)
    ours_gt, table = to_ours(gt, dets, n_images, names)
    gi, gl, gb, ign = ours_gt.arrays()
    # the boxes went through Target's float32; use them in the reference too (1-based again)
    flat = {}
    for img, lab, b, d in zip(gi.tolist(), gl.tolist(), gb, ign.tolist(), strict=True):
        flat.setdefault(lab, {}).setdefault(img, ([], []))
        flat[lab][img][0].append(b + np.array([1, 1, 0, 0]))
        flat[lab][img][1].append(d)
    for metric in ("voc07", "voc12"):
        fast = voc_evaluate(gt_image=gi, gt_label=gl, gt_boxes=gb, gt_ignore=ign, det_image=table.image,
                            det_label=table.label, det_score=table.score, det_boxes=table.boxes, class_names=names,
                            metric=metric)
        for k in range(1, len(names)):
            cls_gt = {img: (np.array(b), np.array(d, bool)) for img, (b, d) in flat.get(k, {}).items()}
            cls_dets = [(img, s, bx) for img, lab, s, bx in zip(table.image.tolist(), table.label.tolist(),
                                                                table.score.tolist(), table.boxes, strict=True)
                        if lab == k]
            cls_dets = [(img, s, bx + np.array([1, 1, 0, 0])) for img, s, bx in cls_dets]
            ref = devkit_class_ap(cls_gt, cls_dets, metric == "voc07")
            assert fast[k - 1].ap == pytest.approx(ref, rel=1e-12, abs=1e-12, nan_ok=True), (metric, k)
            assert fast[k - 1].num_det == len(cls_dets)


def test_continuous_iou_equals_devkit_iou_on_random_boxes():
    rng = np.random.default_rng(7)
    n = 400
    g1 = rng.uniform(1, 100, size=(n, 2))
    gt1 = np.concatenate([g1, g1 + rng.uniform(0, 60, size=(n, 2))], axis=1)  # devkit 1-based
    d1 = gt1 + rng.normal(0, 8, size=(n, 4))
    ours_gt = gt1 - np.array([1, 1, 0, 0])
    ours_det = d1 - np.array([1, 1, 0, 0])
    best, iou = match_detections(np.arange(n), ours_gt, np.arange(n), ours_det)  # one box per group
    assert (best == np.arange(n)).all()
    ref = np.array([devkit_iou(d, g) or 0.0 for d, g in zip(d1, gt1, strict=True)])
    np.testing.assert_allclose(iou, ref, rtol=1e-12, atol=1e-12)
    assert (ref > 0).sum() > n // 2 and (ref == 0).sum() > 0  # both cases exercised


def test_match_ties_go_to_first_box():
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=np.float64)
    best, iou = match_detections(np.zeros(3, np.int64), gt, np.zeros(2, np.int64),
                                 np.array([[0, 0, 10, 10], [100, 100, 110, 110]], np.float64))
    assert best.tolist() == [0, 0] and iou.tolist() == [1.0, 0.0]
    best, _ = match_detections(np.zeros(3, np.int64), gt, np.ones(1, np.int64), np.zeros((1, 4)))
    assert best.tolist() == [-1]  # no box in the detection's group
