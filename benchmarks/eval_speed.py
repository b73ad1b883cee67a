"""How fast is VOC evaluation? 5000 images x 20 classes, up to 100 detections per image.

A VOC2007-test-sized problem with random data of realistic shape: 1-6 ground-truth boxes per image (15 % of
them difficult), and per image 100 detections (a typical ``keep_top_k`` cut well above what trained models
keep at score 0.01 on VOC): about one near each ground-truth box, some duplicates, the rest false alarms. Times,
as the median of ``--repeats`` runs on this machine:

* ``voc_evaluate_s``: :func:`multibox.metrics.voc.voc_evaluate` on flat arrays (the matching and AP);
* ``evaluate_detections_s``: :func:`multibox.engine.evaluator.evaluate_detections` from ``list[Target]`` and
  ``list[Detections]`` (what the trainer's periodic evaluation calls after the model ran), conversions included.

Usage: ``python benchmarks/eval_speed.py [--images 5000] [--dets 100] [--json FILE]``; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from multibox.classes import VOC_CLASSES
from multibox.data.types import Target
from multibox.detections import Detections
from multibox.engine.evaluator import evaluate_detections
from multibox.fileio import atomic_write_bytes
from multibox.metrics.voc import voc_evaluate


def make_problem(n_images: int, dets_per_image: int, seed: int = 0) -> tuple[list[Target], list[Detections]]:
    rng = np.random.default_rng(seed)
    names = list(VOC_CLASSES)
    targets, dets = [], []
    for i in range(n_images):
        h, w = 375, 500
        n = int(rng.integers(1, 7))
        xy = rng.uniform(0, [w - 40, h - 40], size=(n, 2))
        wh = rng.uniform(20, 200, size=(n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], axis=1).astype(np.float32)
        labels = rng.integers(1, 21, size=n)
        targets.append(Target(boxes=boxes, labels=labels, image_id=f"{i:06d}", orig_size=(h, w),
                              difficult=rng.random(n) < 0.15))
        near = np.repeat(boxes, 2, axis=0) + rng.normal(0, 8, size=(2 * n, 4)).astype(np.float32)
        near_labels = np.repeat(labels, 2)
        m = dets_per_image - near.shape[0]
        xy = rng.uniform(0, [w - 20, h - 20], size=(m, 2))
        far = np.concatenate([xy, xy + rng.uniform(10, 150, size=(m, 2))], axis=1).astype(np.float32)
        b = np.concatenate([near, far])
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2])
        s = np.concatenate([rng.uniform(0.3, 1.0, 2 * n), rng.uniform(0.01, 0.6, m)]).astype(np.float32)
        lab = np.concatenate([near_labels, rng.integers(1, 21, size=m)])
        order = np.argsort(-s, kind="stable")
        dets.append(Detections(torch.from_numpy(b[order]), torch.from_numpy(s[order]),
                               torch.from_numpy(lab[order]).long(), names, (h, w)))
    return targets, dets


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100, help="detections per image")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the JSON to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    targets, dets = make_problem(args.images, args.dets)
    names = list(VOC_CLASSES)

    from multibox.metrics.results import DetectionTable, GroundTruth

    gt = GroundTruth(targets, names)
    gi, gl, gb, ign = gt.arrays()
    table = DetectionTable.from_detections(dets)
    results = {}
    for metric in ("voc07", "voc12"):
        core_s, _ = timed(lambda m=metric: voc_evaluate(
            gt_image=gi, gt_label=gl, gt_boxes=gb, gt_ignore=ign, det_image=table.image, det_label=table.label,
            det_score=table.score, det_boxes=table.boxes, class_names=names, metric=m), args.repeats)
        full_s, res = timed(lambda m=metric: evaluate_detections(targets, dets, names, m), args.repeats)
        results[metric] = {"voc_evaluate_s": round(core_s, 4), "evaluate_detections_s": round(full_s, 4),
                           "mAP": round(res.mAP, 6)}
    out = {
        "benchmark": "eval_speed",
        "images": args.images,
        "classes": 20,
        "gt_boxes": int(gl.shape[0]),
        "detections": len(table),
        "repeats": args.repeats,
        "results": results,
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
                    "processor": platform.machine()},
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        atomic_write_bytes(Path(args.json), (text + "\n").encode())


if __name__ == "__main__":
    main()
