"""COCO detection metrics: the 12 numbers of pycocotools' ``COCOeval`` (``iouType="bbox"``), unchanged.

:func:`coco_evaluate` hands a COCO ground-truth dict and COCO-format results to pycocotools (``loadRes``,
``evaluate``, ``accumulate``, ``summarize``) and returns its ``stats`` by name, so the numbers are exactly
pycocotools' on the same data. Per-class AP is the mean of ``eval["precision"]`` over IoU 0.50:0.95 and the 101
recall thresholds at area "all" and 100 detections (the usual per-category AP; NaN for a category without
ground truth). pycocotools' own conventions are kept: a stat that has no ground truth to measure is ``-1``.

Ground truth from other formats (:func:`multibox.metrics.results.coco_ground_truth`): images get ids ``1..N``
in dataset order, categories are the labels (``category_id = label``), ``bbox`` is ``[x, y, w, h]`` of the xyxy
box and ``area`` its box area (no segmentations here). ``difficult`` boxes (VOC) become ``iscrowd = 1``, COCO's
way of saying "ignore", unless ``difficult_as_crowd=False``. pycocotools matches crowd boxes by intersection over the
*detection's* area and lets any number of detections match one, which is close to, but not exactly, VOC's
"difficult: neither TP nor FP".
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .registry import ClassAP, MetricScore, register_metric
from .results import DetectionTable, GroundTruth, coco_results

__all__ = ["COCO_STAT_NAMES", "COCOEvaluation", "coco_evaluate", "evaluate_coco"]

#: Names of ``COCOeval.stats``, in its order.
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class COCOEvaluation:
    """pycocotools' results: ``stats`` (the 12 numbers by name), ``per_class`` (AP per category, and the
    precision at IoU 0.5 over ``recall`` = the 101 recall thresholds for plots) and pycocotools' printed summary."""

    stats: dict[str, float]
    per_class: list[ClassAP]
    summary: str


def _quiet() -> contextlib.AbstractContextManager:
    return contextlib.redirect_stdout(io.StringIO())


def coco_evaluate(gt: dict[str, Any], results: list[dict[str, Any]], class_names: Sequence[str],
                  category_ids: Sequence[int]) -> COCOEvaluation:
    """Run pycocotools' bbox evaluation.

    Args:
        gt: a COCO ground-truth dict (as read from an instances JSON, or from
            :func:`~multibox.metrics.results.coco_ground_truth`). It is
            not modified; annotations lacking ``area`` (box area is used), ``iscrowd`` (0) or ``id`` get them in a
            copy, since pycocotools needs them.
        results: COCO results records ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` with the
            ids of ``gt`` (pycocotools adds fields to these dicts).
        class_names: ``C`` names, background first: the per-class results follow this order.
        category_ids: ``C`` COCO category ids, ``category_ids[k]`` for label ``k`` (index 0 unused).

    Returns:
        :class:`COCOEvaluation`.
    """
    # heavy (~50 ms) and only the COCO metric needs it: metric discovery imports this module for every metric
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = _complete(gt)
    with _quiet():
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(gt["images"]), "categories": copy.deepcopy(gt.get("categories", [])),
                               "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev.summarize()
    stats = {name: float(v) for name, v in zip(COCO_STAT_NAMES, ev.stats, strict=True)}

    precision = ev.eval["precision"]  # [T, R, K, A, M]
    cat_index = {cid: k for k, cid in enumerate(ev.params.catIds)}
    area_all = list(ev.params.areaRngLbl).index("all")
    max_100 = list(ev.params.maxDets).index(100)
    n_gt: dict[int, int] = {}
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            n_gt[a["category_id"]] = n_gt.get(a["category_id"], 0) + 1
    n_det: dict[int, int] = {}
    for r in results:
        n_det[r["category_id"]] = n_det.get(r["category_id"], 0) + 1
    recall = np.asarray(ev.params.recThrs, dtype=np.float64)
    per_class = []
    for label in range(1, len(class_names)):
        cid = int(category_ids[label])
        k = cat_index.get(cid)
        ap, curve = float("nan"), np.zeros(0)
        if k is not None:
            p = precision[:, :, k, area_all, max_100]
            if (p > -1).any():
                ap = float(np.mean(p[p > -1]))
                curve = np.maximum(p[0], 0.0)
        per_class.append(ClassAP(str(class_names[label]), ap, n_gt.get(cid, 0), n_det.get(cid, 0),
                                 recall if curve.size else np.zeros(0), curve))
    return COCOEvaluation(stats=stats, per_class=per_class, summary=buf.getvalue())


def _complete(gt: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy of ``gt`` whose annotations are copies (pycocotools writes an ``ignore`` field into them),
    with ``id``, ``area`` (box area) and ``iscrowd`` (0) filled in where missing."""
    fixed = []
    for i, a in enumerate(gt.get("annotations", [])):
        a = dict(a)
        if "id" not in a:
            a["id"] = i + 1
        if "area" not in a:
            a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
        if "iscrowd" not in a:
            a["iscrowd"] = 0
        fixed.append(a)
    return {**gt, "annotations": fixed}


def evaluate_coco(gt: GroundTruth, table: DetectionTable, *, difficult_as_crowd: bool = True) -> MetricScore:
    """The ``coco`` metric: pycocotools' 12 numbers (``stats``), per-class AP@[.5:.95], headline ``AP``.

    ``table`` rows index ``gt.targets`` (boxes xyxy pixels); non-COCO ground truth is converted by
    :meth:`GroundTruth.coco_dict` (difficult boxes become crowd regions when ``difficult_as_crowd``)."""
    _, category_ids = gt.coco_ids()
    ev = coco_evaluate(gt.coco_dict(difficult_as_crowd),
                       coco_results(table, gt, for_coco_dict=True, with_names=False), gt.class_names, category_ids)
    return MetricScore(per_class=ev.per_class, mean=ev.stats["AP"], stats=ev.stats, summary=ev.summary)


register_metric("coco", evaluate_coco, description="COCO AP@[.5:.95] and the other 11 numbers of pycocotools",
                headline="AP (COCO)", column="AP@[.5:.95]", curve="COCO, IoU 0.5")
