"""Does the synthetic dataset expose a broken matcher? Train SSD7 briefly on it, correct and broken, compare mAP.

A sanity experiment, not a test (it takes minutes): the correct run must reach a clearly higher mAP than runs with
a classic bug, or the synthetic data would be too easy to catch mistakes. Variants:

* ``correct``: boxes normalized xyxy, Caffe matching, MultiBox loss with 3:1 hard negative mining;
* ``yxyx``: the ground truth handed to the matcher in (y1, x1, y2, x2) order (a common coordinate-order bug);
* ``no-bipartite``: per-prediction matching only at IoU 0.5 with no forced match, so small objects get no prior.

Usage: ``python benchmarks/synth_sensitivity.py [--steps 300] [--json FILE]``. mAP is the VOC all-point AP at
IoU 0.5, averaged over the 6 shape classes, on 200 held-out synthetic images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from multibox.data.augment import ssd_eval_transform, ssdlite_train_transform
from multibox.data.loader import build_loader, set_epoch
from multibox.data.synth import SyntheticShapes
from multibox.loss import MultiBoxLoss
from multibox.matching import build_targets, match_caffe
from multibox.models import build_model
from multibox.postprocess import PostProcess


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP (VOC 2010+)."""
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.concatenate(([0.0], precision, [0.0]))
    p = np.maximum.accumulate(p[::-1])[::-1]
    idx = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[idx + 1] - r[idx]) * p[idx + 1]))


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-12)


def mean_ap(dets: list, gts: list, num_classes: int) -> float:
    aps = []
    for c in range(1, num_classes):
        records, n_gt = [], 0
        for i, (d, (_, gl)) in enumerate(zip(dets, gts, strict=True)):
            n_gt += int((gl == c).sum())
            keep = d.labels.numpy() == c
            for box, score in zip(d.boxes.numpy()[keep], d.scores.numpy()[keep], strict=True):
                records.append((float(score), i, box))
        records.sort(key=lambda r: -r[0])
        used = [np.zeros(int((gl == c).sum()), dtype=bool) for _, gl in gts]
        tp = np.zeros(len(records))
        for k, (_, i, box) in enumerate(records):
            gb = gts[i][0][gts[i][1] == c]
            if len(gb) == 0:
                continue
            ious = box_iou_np(box[None], gb)[0]
            j = int(ious.argmax())
            if ious[j] >= 0.5 and not used[i][j]:
                used[i][j] = True
                tp[k] = 1
        if n_gt == 0:
            continue
        ctp = np.cumsum(tp)
        recall = ctp / n_gt
        precision = ctp / np.arange(1, len(records) + 1)
        aps.append(voc_ap(recall, precision) if len(records) else 0.0)
    return float(np.mean(aps))


class CachedDataset:
    """The samples of a dataset rendered once and kept in memory (the synthetic renderer is the slow part)."""

    def __init__(self, ds: SyntheticShapes) -> None:
        self.class_names = ds.class_names
        self.samples = [ds[i] for i in range(len(ds))]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple:
        return self.samples[index]


def run(variant: str, steps: int, size: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    train = CachedDataset(SyntheticShapes(1000, seed=seed, size=size))
    test = SyntheticShapes(200, seed=seed + 1, size=size)
    model = build_model("ssd7", num_classes=len(train.class_names), class_names=train.class_names,
                        image_size=(size, size))
    model.train()
    spec = model.input_spec
    loader = build_loader(train, ssdlite_train_transform(spec), batch_size=32, seed=seed, num_workers=0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    crit = MultiBoxLoss()
    step, t0 = 0, time.perf_counter()
    epoch = 0
    while step < steps:
        set_epoch(loader, epoch)
        for batch in loader:
            boxes = batch["boxes"]
            if variant == "yxyx":
                boxes = boxes[..., [1, 0, 3, 2]]
            if variant == "no-bipartite":
                m = match_caffe(model.priors, boxes, batch["valid"], threshold=0.5)
                idx = torch.where(m.matched_iou >= 0.5, m.matched_idx, torch.full_like(m.matched_idx, -1))
                labels = torch.where(idx >= 0, batch["labels"].gather(1, idx.clamp_min(0)), torch.zeros_like(idx))
                matched = boxes.gather(1, idx.clamp_min(0).unsqueeze(-1).expand(-1, -1, 4))
                deltas = model.box_coder.encode(matched, model.priors)
                deltas = torch.where((labels > 0).unsqueeze(-1), deltas, torch.zeros_like(deltas))
            else:
                labels, deltas, _ = build_targets(model.priors, boxes, batch["labels"], batch["valid"],
                                                  model.box_coder)
            out = model(batch["images"])
            loss = crit(out.cls_logits, out.box_deltas, labels, deltas).total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0:
                print(f"  {variant}: step {step}/{steps} loss {float(loss.detach()):.3f} "
                      f"({step * 32 / (time.perf_counter() - t0):.0f} images/s)")
            if step >= steps:
                break
        epoch += 1
    model.eval()
    post = PostProcess.from_model(model)
    evt = ssd_eval_transform(spec)
    dets, gts = [], []
    with torch.inference_mode():
        for i in range(len(test)):
            img, tgt = test[i]
            x, _ = evt(img, tgt, np.random.default_rng(0))
            out = model(x[None])
            dets.append(post(out.cls_logits, out.box_deltas, [img.shape[:2]])[0])
            gts.append((tgt.boxes, tgt.labels))
    return {"variant": variant, "steps": steps, "mAP": mean_ap(dets, gts, len(train.class_names)),
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--json")
    ap.add_argument("--variants", nargs="+", default=["correct", "yxyx", "no-bipartite"])
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = [run(v, args.steps, args.size) for v in args.variants]
    for r in results:
        print(f"{r['variant']:>13}: mAP@0.5 {r['mAP']:.3f} ({r['seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
