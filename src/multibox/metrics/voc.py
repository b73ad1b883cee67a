"""Pascal VOC detection AP, as the official VOC devkit (``VOCevaldet.m``) computes it, vectorized.

Per class, the devkit:

1. sorts the class's detections by score, descending (MATLAB's ``sort`` is stable: ties keep input order);
2. gives each detection the ground-truth box of **its image and class** with the highest overlap (the first one
   on ties, in annotation order), whether or not that box is already taken;
3. when that overlap is ``> 0.5`` (strictly): a ``difficult`` box makes the detection *ignored* (neither true nor
   false positive); else the first detection (in score order) on the box is a true positive and every later one a
   false positive (duplicate). An overlap ``<= 0.5`` is a false positive;
4. ``recall = cumsum(tp) / npos`` (``npos`` = non-difficult boxes of the class), ``precision = cumsum(tp) /
   (cumsum(tp) + cumsum(fp))``;
5. AP: VOC2007 (``voc07``) averages, over the 11 recall thresholds ``t = 0:0.1:1``, the largest precision at a
   recall ``>= t`` (0 when there is none); VOC2010+ (``voc12``) is the area under the monotone (non-increasing)
   envelope of the precision-recall curve, summed where recall changes.

Overlap. The devkit's IoU uses inclusive pixel widths (``x2 - x1 + 1``) on its 1-based coordinates. Boxes here
are 0-based continuous (docs/design.md, "Boxes": ``[xmin, xmax]`` of VOC XML is loaded as ``[xmin - 1, xmax]``), so each
devkit width ``xmax - xmin + 1`` *is* the continuous width ``x2 - x1``, and the devkit IoU equals the plain
continuous IoU computed here (``tests/test_metrics_voc.py`` checks this against a devkit-coordinates loop).

Vectorization. Step 2 does not depend on the order of the detections, so it runs once for all detections of all
classes: every detection is paired with the boxes of its (image, class) group (a ragged product built with
``np.repeat``), IoUs of all pairs in one expression, the best box per detection with ``reduceat``. Step 3 is then
"the first detection in score order of each box": ``np.unique(..., return_index=True)`` on the sorted matches.
Only the final precision/recall/AP runs once per class (a few NumPy calls each).

Classes without non-difficult ground truth have no defined AP (the devkit divides by ``npos = 0``): their AP is
``NaN`` and the mean AP is taken over the other classes.

VOC2007 thresholds. MATLAB's ``0:0.1:1`` builds its first half as ``0 + k * 0.1`` and its second half as
``1 - (10 - k) * 0.1``; the values are the doubles nearest to ``k / 10`` except ``0.3``, which is
``3 * 0.1 = 0.30000000000000004``. Those exact values are used, so a recall of exactly ``3/10`` does not reach
the 0.3 threshold, as in the devkit. (``np.arange(0, 1.1, 0.1)``, used by some Python ports, also moves 0.6 and
0.7 up by one ulp.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .registry import ClassAP, MetricScore, register_metric

if TYPE_CHECKING:
    from .results import DetectionTable, GroundTruth

__all__ = ["VOC_METRICS", "VOC07_RECALL_THRESHOLDS", "voc07_ap", "voc12_ap", "match_detections",
           "voc_evaluate", "mean_ap", "evaluate_voc07", "evaluate_voc12"]

#: Metric names handled here: VOC2007 11-point and VOC2010+ all-point AP.
VOC_METRICS = ("voc07", "voc12")


def _matlab_colon(a: float, step: float, b: float) -> np.ndarray:
    """MATLAB's ``a:step:b`` for an exact number of steps: first half ``a + k step``, second ``b - k step``."""
    n = int(round((b - a) / step))
    out = np.empty(n + 1, dtype=np.float64)
    for k in range(n // 2 + 1):
        out[k] = a + k * step
        out[n - k] = b - k * step
    if n % 2 == 0:
        out[n // 2] = (a + b) / 2
    return out


#: The 11 recall thresholds of VOC2007 AP, exactly as MATLAB's ``0:0.1:1`` (see the module docstring).
VOC07_RECALL_THRESHOLDS = _matlab_colon(0.0, 0.1, 1.0)


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 11-point interpolated AP: ``sum over t of max(precision[recall >= t]) / 11`` (0 when none).

    ``recall``, ``precision``: ``[K]`` float arrays, one point per detection in score order.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    ap = 0.0
    for t in VOC07_RECALL_THRESHOLDS:
        p = precision[recall >= t]
        ap += (float(p.max()) if p.size else 0.0) / 11.0
    return ap


def voc12_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+ AP: area under the monotone envelope of the precision-recall curve (``[K]`` arrays)."""
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def match_detections(gt_group: np.ndarray, gt_boxes: np.ndarray, det_group: np.ndarray,
                     det_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every detection, the ground-truth box of the same group with the highest IoU.

    Args:
        gt_group: ``[G]`` int64 group of each box (e.g. ``image * num_classes + label``).
        gt_boxes: ``[G, 4]`` xyxy, 0-based continuous pixels.
        det_group: ``[D]`` int64 group of each detection.
        det_boxes: ``[D, 4]`` xyxy, same coordinates.

    Returns:
        ``(best [D] int64, iou [D] float64)``: index into the ground truth (``-1`` when the group has no box) and
        its IoU (``0`` where none). Ties go to the lowest index (annotation order), as MATLAB's ``max``. Pairs that
        do not overlap have IoU 0; an inverted detection box overlaps nothing.
    """
    gt_group = np.asarray(gt_group, dtype=np.int64)
    det_group = np.asarray(det_group, dtype=np.int64)
    d = det_group.shape[0]
    best = np.full(d, -1, dtype=np.int64)
    best_iou = np.zeros(d, dtype=np.float64)
    if d == 0 or gt_group.shape[0] == 0:
        return best, best_iou
    order = np.argsort(gt_group, kind="stable")  # stable: annotation order within a group
    sorted_groups = gt_group[order]
    start = np.searchsorted(sorted_groups, det_group, side="left")
    count = np.searchsorted(sorted_groups, det_group, side="right") - start
    has = count > 0
    if not has.any():
        return best, best_iou
    dets = np.flatnonzero(has)
    start, count = start[dets], count[dets]
    total = int(count.sum())
    seg_start = np.cumsum(count) - count  # first pair of each detection
    pair_det = np.repeat(np.arange(dets.shape[0]), count)
    pair_gt = order[np.repeat(start - seg_start, count) + np.arange(total)]
    db = np.asarray(det_boxes, dtype=np.float64)[dets][pair_det]
    gb = np.asarray(gt_boxes, dtype=np.float64)[pair_gt]
    # Our own overlap, not torchvision.ops.box_iou: the pairs are ragged (each detection against the boxes of its
    # own image and class, no full matrix), NumPy float64 as the devkit's MATLAB doubles, and "no overlap" is the
    # devkit's iw > 0 and ih > 0 test (tests/test_metrics_voc.py::test_fast_equals_devkit_reference and
    # ::test_continuous_iou_equals_devkit_iou_on_random_boxes pin these numbers).
    iw = np.minimum(db[:, 2], gb[:, 2]) - np.maximum(db[:, 0], gb[:, 0])
    ih = np.minimum(db[:, 3], gb[:, 3]) - np.maximum(db[:, 1], gb[:, 1])
    overlap = (iw > 0) & (ih > 0)
    inter = np.where(overlap, iw * ih, 0.0)
    union = ((db[:, 2] - db[:, 0]) * (db[:, 3] - db[:, 1]) + (gb[:, 2] - gb[:, 0]) * (gb[:, 3] - gb[:, 1])
             - inter)
    iou = np.zeros(total, dtype=np.float64)
    np.divide(inter, union, out=iou, where=overlap)  # overlap implies a positive union
    seg_max = np.maximum.reduceat(iou, seg_start)
    first = np.minimum.reduceat(np.where(iou == seg_max[pair_det], np.arange(total), total), seg_start)
    best[dets] = pair_gt[first]
    best_iou[dets] = seg_max
    return best, best_iou


def voc_evaluate(
    *,
    gt_image: np.ndarray,
    gt_label: np.ndarray,
    gt_boxes: np.ndarray,
    gt_ignore: np.ndarray,
    det_image: np.ndarray,
    det_label: np.ndarray,
    det_score: np.ndarray,
    det_boxes: np.ndarray,
    class_names: list[str],
    metric: str = "voc07",
    iou_threshold: float = 0.5,
) -> list[ClassAP]:
    """VOC AP of every foreground class, as the devkit computes it (module docstring).

    Args:
        gt_image, gt_label: ``[G]`` int64 image index and label (1..C-1) of every ground-truth box.
        gt_boxes: ``[G, 4]`` xyxy 0-based continuous pixels.
        gt_ignore: ``[G]`` bool, True for ``difficult`` boxes (matched, but neither TP nor FP).
        det_image, det_label: ``[D]`` int64 image index and label of every detection.
        det_score: ``[D]`` float scores (ties keep the input order).
        det_boxes: ``[D, 4]`` xyxy 0-based continuous pixels.
        class_names: ``C`` names, background first.
        metric: ``"voc07"`` (11-point) or ``"voc12"`` (all-point).
        iou_threshold: a match needs IoU strictly above this.

    Returns:
        One :class:`ClassAP` per foreground class (``C - 1``), in label order.
    """
    if metric not in VOC_METRICS:
        raise ValueError(f"unknown VOC metric {metric!r} (one of {', '.join(VOC_METRICS)})")
    c = len(class_names)
    gt_label = np.asarray(gt_label, dtype=np.int64)
    det_label = np.asarray(det_label, dtype=np.int64)
    det_score = np.asarray(det_score, dtype=np.float64)
    gt_ignore = np.asarray(gt_ignore, dtype=bool)
    for what, lab in (("ground-truth", gt_label), ("detection", det_label)):
        if lab.size and (lab.min() < 1 or lab.max() >= c):
            raise ValueError(f"{what} labels must be in 1..{c - 1} for {c} classes (background 0), got "
                             f"{int(lab.min())}..{int(lab.max())}")
    gt_group = np.asarray(gt_image, dtype=np.int64) * c + gt_label
    det_group = np.asarray(det_image, dtype=np.int64) * c + det_label
    best, iou = match_detections(gt_group, gt_boxes, det_group, det_boxes)

    # score order within each class, stable (ties keep the input order)
    perm = np.argsort(-det_score, kind="stable")
    perm = perm[np.argsort(det_label[perm], kind="stable")]
    hit = iou[perm] > iou_threshold
    gt_of = best[perm]
    ignored = hit & gt_ignore[np.where(hit, gt_of, 0)] if gt_ignore.size else np.zeros_like(hit)
    cand = np.flatnonzero(hit & ~ignored)
    _, first = np.unique(gt_of[cand], return_index=True)
    tp = np.zeros(perm.shape[0], dtype=bool)
    tp[cand[first]] = True
    counted = ~ignored

    npos = np.bincount(gt_label[~gt_ignore], minlength=c) if gt_label.size else np.zeros(c, dtype=np.int64)
    n_det = np.bincount(det_label, minlength=c) if det_label.size else np.zeros(c, dtype=np.int64)
    bounds = np.searchsorted(det_label[perm], np.arange(c + 1), side="left")
    ap_fn = voc07_ap if metric == "voc07" else voc12_ap
    out = []
    for k in range(1, c):
        s, e = bounds[k], bounds[k + 1]
        keep = counted[s:e]
        ctp = np.cumsum(tp[s:e][keep], dtype=np.float64)
        cfp = np.cumsum(~tp[s:e][keep], dtype=np.float64)
        n = int(npos[k])
        if n == 0:
            out.append(ClassAP(class_names[k], float("nan"), 0, int(n_det[k])))
            continue
        rec = ctp / n
        prec = ctp / (ctp + cfp)
        out.append(ClassAP(class_names[k], ap_fn(rec, prec), n, int(n_det[k]), rec, prec))
    return out


def mean_ap(per_class: list[ClassAP]) -> float:
    """Mean of the classes' AP, skipping NaN (classes without ground truth); NaN when none has one."""
    aps = np.array([r.ap for r in per_class], dtype=np.float64)
    aps = aps[~np.isnan(aps)]
    return float(aps.mean()) if aps.size else float("nan")


# ----------------------------------------------------------------------------------------------- registry


def _evaluate(gt: GroundTruth, table: DetectionTable, metric: str) -> MetricScore:
    gi, gl, gb, ign = gt.arrays()
    classes = voc_evaluate(gt_image=gi, gt_label=gl, gt_boxes=gb, gt_ignore=ign, det_image=table.image,
                           det_label=table.label, det_score=table.score, det_boxes=table.boxes,
                           class_names=gt.class_names, metric=metric)
    return MetricScore(per_class=classes, mean=mean_ap(classes))


def evaluate_voc07(gt: GroundTruth, table: DetectionTable, *, difficult_as_crowd: bool = True) -> MetricScore:
    """The ``voc07`` metric: devkit 11-point AP per class (difficult boxes ignored), mean over classes with
    ground truth. ``table`` rows index ``gt.targets`` (boxes xyxy pixels); ``difficult_as_crowd`` is unused."""
    return _evaluate(gt, table, "voc07")


def evaluate_voc12(gt: GroundTruth, table: DetectionTable, *, difficult_as_crowd: bool = True) -> MetricScore:
    """The ``voc12`` metric: devkit all-point AP (VOC2010+), otherwise as :func:`evaluate_voc07`."""
    return _evaluate(gt, table, "voc12")


register_metric("voc07", evaluate_voc07, description="Pascal VOC2007 11-point AP at IoU > 0.5 (devkit exact)",
                headline="mAP (VOC07 11-point)", curve="VOC07 11-point")
register_metric("voc12", evaluate_voc12, description="Pascal VOC2010+ all-point AP at IoU > 0.5 (devkit exact)",
                headline="mAP (VOC12 all-point)", curve="VOC12 all-point", step_curve=True)
