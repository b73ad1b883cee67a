"""Which shifted copies should test-time augmentation add? Scores a trees checkpoint with the 8 views of
``--tta`` (default ``dihedral``) of each shifted copy of every image, all fused by weighted box fusion
(:func:`multibox.tta.fuse_detections`), VOC2010+ all-point AP50.

    python benchmarks/tta_shifts_trees.py CKPT [--split holdout|test] [--shifts "0,0;2,2;4,4;6,6"] [--iou 0.55]
        [--json OUT.json]

A copy shifted by ``(dx, dy)`` *image* pixels has the first rows and columns repeated at its top-left edge and as
many cut at the bottom-right; its boxes are moved back by ``(dx, dy)``. ``--shifts "0,0"`` gives exactly what
``multibox eval CKPT --split S --metric voc12 --tta dihedral`` gives. This explores shift sets the product's
``MODE+shift`` modes do not name (a 2-D grid, finer steps); session 12 (docs/results.md) chose ``dihedral+shift``
with it, on ``--split holdout`` (tiles of the training site) only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from multibox.config import load_config
from multibox.data.datasets import open_dataset
from multibox.detections import Detections
from multibox.detector import Detector
from multibox.engine.evaluator import EVAL_POSTPROCESS, evaluate_detections
from multibox.engine.trainer import ensure_trees
from multibox.fileio import atomic_write_bytes
from multibox.tta import FUSE_IOU_THRESHOLD, fuse_detections


def parse_shifts(text: str) -> list[tuple[int, int]]:
    """``"0,0;4,4"`` -> ``[(0, 0), (4, 4)]`` (whole image pixels, right and down, each >= 0)."""
    shifts = [tuple(int(v) for v in part.split(",")) for part in text.split(";") if part.strip()]
    if not shifts or any(len(s) != 2 or min(s) < 0 for s in shifts):
        raise SystemExit(f"--shifts {text!r}: expected 'dx,dy;dx,dy;...' with whole pixels >= 0")
    return shifts  # type: ignore[return-value]


def shifted_ap50(checkpoint: Path, split: str, shifts: list[tuple[int, int]], tta: str = "dihedral",
                 iou: float = FUSE_IOU_THRESHOLD) -> float:
    """VOC2010+ AP50 on the trees split ``split`` of the ``tta`` views of every shifted copy, fused together."""
    root = ensure_trees(load_config("trees", []))
    ds = open_dataset(root, format="voc", split=split, classes=root / "classes.txt")
    det = Detector.from_file(checkpoint, "cpu", runtime="eager", postprocess=EVAL_POSTPROCESS)
    keep = int(det.postprocess_for(det.conf).keep_top_k)
    targets, fused = [], []
    for i in range(len(ds)):
        image, target = ds[i]
        img = np.asarray(image)
        h, w = img.shape[:2]
        mapped = []
        for dx, dy in shifts:
            copy = np.ascontiguousarray(np.pad(img, ((dy, 0), (dx, 0), (0, 0)), mode="edge")[:h, :w])
            back = torch.tensor([dx, dy, dx, dy], dtype=torch.float32)
            mapped += [Detections(d.boxes - back, d.scores, d.labels, d.class_names, (h, w))
                       for d in det.detect_views([copy], tta)[0]]
        fused.append(fuse_detections(mapped, iou_threshold=iou, keep_top_k=keep, conf=det.conf,
                                     class_names=det.class_names, image_size=(h, w)).clip())
        targets.append(target)
    return float(evaluate_detections(targets, fused, list(ds.class_names), "voc12").mAP)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="checkpoint (.safetensors) of a trees run")
    p.add_argument("--split", default="holdout", choices=["holdout", "test"], help="trees split (default holdout)")
    p.add_argument("--shifts", default="0,0;2,2;4,4;6,6", help="copies: 'dx,dy;...' in image pixels")
    p.add_argument("--tta", default="dihedral", help="views of each copy (default dihedral)")
    p.add_argument("--iou", type=float, default=FUSE_IOU_THRESHOLD, help="fusion IoU threshold (default 0.55)")
    p.add_argument("--json", type=Path, help="also write the result as JSON")
    args = p.parse_args()
    torch.set_num_threads(2)
    shifts = parse_shifts(args.shifts)
    ap = shifted_ap50(args.checkpoint, args.split, shifts, args.tta, args.iou)
    report = {"checkpoint": str(args.checkpoint), "split": args.split, "tta": args.tta, "shifts": shifts,
              "iou": args.iou, "AP50_voc12": ap}
    print(json.dumps(report))
    if args.json is not None:
        atomic_write_bytes(args.json, (json.dumps(report, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
