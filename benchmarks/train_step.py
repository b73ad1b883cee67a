"""Time one training step of a recipe's model in each precision / memory layout, alternating, and write JSON.

    python benchmarks/train_step.py [--recipe trees_mobilenetv2] [--repeats 6] [--rounds 2] [--json FILE]

The step is the trainer's: the recipe's model (its ``model.kwargs``) at its ``data.batch_size`` and input size on
random images with 20 random boxes each, the Caffe matching, the MultiBox loss, AdamW. Each variant (fp32;
fp32 + channels_last; bf16 autocast; bf16 + channels_last) runs ``repeats`` steps per round, rounds alternate so a
change of machine load hits every variant; the median of the steps after each round's first is reported, with the
load average and the CPU's vector flags (bf16 is fast only where the CPU has AVX-512 bf16 / AMX; on an AVX2-only
CPU it is emulated and slower than fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import nullcontext

import torch

from multibox.bench.roofline import cpu_flags
from multibox.config import load_config
from multibox.fileio import atomic_write_bytes
from multibox.loss import MultiBoxLoss
from multibox.matching import build_targets
from multibox.models import build_model

VARIANTS = {"fp32": (False, False), "fp32+channels_last": (False, True), "bf16": (True, False),
            "bf16+channels_last": (True, True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="trees_mobilenetv2")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.recipe, [])
    kwargs = dict(cfg.model.kwargs)
    model = build_model(cfg.model.name, num_classes=2, **kwargs).train()
    h, w = model.input_spec.image_size
    b = cfg.data.batch_size
    crit = MultiBoxLoss(neg_pos_ratio=cfg.loss.neg_pos_ratio)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    x = torch.randn(b, 3, h, w)
    lo = torch.rand(b, 20, 2) * 0.8
    boxes = torch.cat([lo, lo + 0.05 + torch.rand(b, 20, 2) * 0.1], -1)
    labels = torch.ones(b, 20, dtype=torch.long)
    valid = torch.ones(b, 20, dtype=torch.bool)
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    load = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name, (bf16, cl) in VARIANTS.items():
            fmt = torch.channels_last if cl else torch.contiguous_format
            model.to(memory_format=fmt)
            xx = x.contiguous(memory_format=fmt)
            for i in range(args.repeats):
                t = time.perf_counter()
                ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
                with ctx:
                    out = model(xx)
                tg = build_targets(model.priors, boxes, labels, valid, model.box_coder, method="caffe", threshold=0.5)
                loss = crit(out.cls_logits.float(), out.box_deltas.float(), tg.labels, tg.deltas)
                opt.zero_grad()
                loss.total.backward()
                opt.step()
                if i:
                    times[name].append(time.perf_counter() - t)
            print(f"{name}: {statistics.median(times[name]):.3f} s per step so far", flush=True)
        load.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"recipe": args.recipe, "model": cfg.model.name, "model_kwargs": kwargs, "batch": b,
              "image_size": [h, w], "threads": args.threads, "seconds_per_step": med,
              "speedup_vs_fp32": {k: med["fp32"] / v for k, v in med.items()},
              "bf16_channels_last_vs_bf16": med["bf16"] / med["bf16+channels_last"],
              "load_average_1min": load, "torch": torch.__version__,
              "cpu_flags": cpu_flags()}
    print(json.dumps(result, indent=1))
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(result, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
