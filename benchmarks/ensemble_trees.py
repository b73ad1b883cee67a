"""Does an ensemble of trees detectors beat one? Scores checkpoints together: every checkpoint detects every image in
the 8 views of ``--tta`` (default ``dihedral``, the trees recipe's), and all views of all checkpoints are fused by
weighted box fusion at once (:func:`multibox.tta.fuse_detections`, as ``multibox eval --tta`` fuses the views of
one), then scored with VOC2010+ all-point AP50.

    python benchmarks/ensemble_trees.py RUN_A/checkpoints/last.safetensors RUN_B/... [--split holdout|test]
        [--json OUT.json]

With one checkpoint it gives exactly what ``multibox eval CKPT --split S --metric voc12 --tta dihedral`` gives (the
check that the fusion here is the product's). Choose on ``--split holdout`` (tiles of the training site); ``test`` is
the two unseen photos, never chosen on. Session 10 (docs/results.md) used it to reject a two-model recipe.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from multibox.config import load_config
from multibox.data.datasets import open_dataset
from multibox.detector import Detector
from multibox.engine.evaluator import EVAL_POSTPROCESS, evaluate_detections
from multibox.engine.trainer import ensure_trees
from multibox.fileio import atomic_write_bytes
from multibox.tta import fuse_detections


def ensemble_ap50(checkpoints: list[Path], split: str, tta: str = "dihedral") -> float:
    """VOC2010+ AP50 on the trees split ``split`` of the views of ``tta`` of every checkpoint, fused together."""
    root = ensure_trees(load_config("trees", []))
    ds = open_dataset(root, format="voc", split=split, classes=root / "classes.txt")
    detectors = [Detector.from_file(c, "cpu", runtime="eager", postprocess=EVAL_POSTPROCESS) for c in checkpoints]
    first = detectors[0]
    keep = int(first.postprocess_for(first.conf).keep_top_k)
    targets, fused = [], []
    for i in range(len(ds)):
        image, target = ds[i]
        mapped = [d for det in detectors for d in det.detect_views([np.asarray(image)], tta)[0]]
        fused.append(fuse_detections(mapped, keep_top_k=keep, conf=first.conf, class_names=first.class_names,
                                     image_size=mapped[0].image_size).clip())
        targets.append(target)
    return float(evaluate_detections(targets, fused, list(ds.class_names), "voc12").mAP)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path, help="checkpoints (.safetensors) of trees runs")
    p.add_argument("--split", default="holdout", choices=["holdout", "test"], help="trees split (default holdout)")
    p.add_argument("--tta", default="dihedral", help="views per checkpoint (default dihedral)")
    p.add_argument("--json", type=Path, help="also write the result as JSON")
    args = p.parse_args()
    torch.set_num_threads(2)
    ap = ensemble_ap50(list(args.checkpoints), args.split, args.tta)
    report = {"checkpoints": [str(c) for c in args.checkpoints], "split": args.split, "tta": args.tta,
              "AP50_voc12": ap}
    print(json.dumps(report, indent=2))
    if args.json is not None:
        atomic_write_bytes(args.json, (json.dumps(report, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
