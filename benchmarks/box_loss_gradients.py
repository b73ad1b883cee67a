"""How strongly each localization loss pulls on the box offsets: the mean gradient per offset of the smooth L1
(SSD's) and of the GIoU / DIoU losses (``loss.box``) over the positive priors of real training batches of the trees
recipe, for a trained checkpoint. Tells what ``loss.loc_weight`` gives an IoU loss the weight smooth L1 has.

    python benchmarks/box_loss_gradients.py RUN/checkpoints/last.safetensors [--batches 3] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from multibox.config import load_config
from multibox.engine.trainer import Trainer
from multibox.fileio import atomic_write_bytes
from multibox.loss import iou_box_loss
from multibox.matching import build_targets
from multibox.weights_io import load_weights_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--config", default="trees", help="recipe whose data and augmentation give the batches")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    trainer = Trainer(load_config(args.config, ["steps=1", "data.num_workers=0"]), None, progress=False, quiet=True)
    trainer._setup()
    weights, _ = load_weights_file(args.checkpoint)
    model = trainer.model
    model.load_state_dict(weights)
    model.eval()
    rows = []
    batches = iter(trainer._batches())
    for _ in range(args.batches):
        batch = next(batches)
        with torch.no_grad():
            out = model(batch["images"])
        targets = build_targets(model.priors, batch["boxes"], batch["labels"], batch["valid"], model.box_coder)
        pos = targets.labels > 0
        deltas = out.box_deltas.float()[pos].clone().requires_grad_(True)
        target = targets.deltas[pos]
        priors = model.priors.expand(pos.shape[0], -1, -1)[pos]
        row = {"positives": int(pos.sum()), "mean_abs_offset_error": float((deltas - target).abs().mean())}
        smooth = F.smooth_l1_loss(deltas, target, reduction="none").sum(1)
        (grad,) = torch.autograd.grad(smooth.sum(), deltas)
        row["smooth_l1"] = {"loss_per_box": float(smooth.mean()), "grad_per_offset": float(grad.abs().mean())}
        for kind in ("giou", "diou"):
            loss = iou_box_loss(model.box_coder.decode(deltas, priors), model.box_coder.decode(target, priors), kind)
            (grad,) = torch.autograd.grad(loss.sum(), deltas)
            row[kind] = {"loss_per_box": float(loss.mean()), "grad_per_offset": float(grad.abs().mean())}
        for kind in ("giou", "diou"):
            row[f"ratio_smooth_l1_to_{kind}"] = row["smooth_l1"]["grad_per_offset"] / row[kind]["grad_per_offset"]
        rows.append(row)
        print(f"{row['positives']} positives, mean |offset error| {row['mean_abs_offset_error']:.3f}: gradient per "
              f"offset smooth L1 {row['smooth_l1']['grad_per_offset']:.4f}, GIoU {row['giou']['grad_per_offset']:.4f}"
              f" ({row['ratio_smooth_l1_to_giou']:.1f}x less), DIoU {row['diou']['grad_per_offset']:.4f} "
              f"({row['ratio_smooth_l1_to_diou']:.1f}x less)")
    if args.json:
        payload = json.dumps({"checkpoint": str(args.checkpoint), "batches": rows}, indent=2) + "\n"
        atomic_write_bytes(args.json, payload.encode())


if __name__ == "__main__":
    main()
