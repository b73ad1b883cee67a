"""Time one training step of a recipe's model in each precision / memory layout, alternating, and write JSON.

    python benchmarks/train_step.py [--recipe trees_mobilenetv2] [--repeats 6] [--rounds 2] [--json FILE]

The step is the trainer's: the recipe's model (its ``model.kwargs``) at its ``data.batch_size`` and input size on
random images with 20 random boxes each, the Caffe matching, the MultiBox loss, AdamW. Each variant (fp32;
fp32 + channels_last; bf16 autocast; bf16 + channels_last) runs ``repeats`` steps per round, rounds alternate so a
change of machine load hits every variant; the median of the steps after each round's first is reported, with the
load average and the CPU's vector flags (bf16 is fast only where the CPU has AVX-512 bf16 / AMX; on an AVX2-only
CPU it is emulated and slower than fp32). With ``--frozen`` the recipe's ``model.freeze`` patterns are applied in a
second copy of the model, timed as the ``+frozen`` variants of both channels_last ones (the trees recipes freeze
MobileNetV2's stem: its backward pass at the highest resolutions is skipped).
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
from multibox.engine.weights import freeze, set_frozen_bn_eval
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
    ap.add_argument("--frozen", action="store_true", help="also time the recipe's model.freeze (+frozen variants)")
    ap.add_argument("--only", default=None,
                    help="comma-separated variants to time (e.g. fp32+channels_last,fp32+channels_last+frozen)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.recipe, [])
    kwargs = dict(cfg.model.kwargs)
    model = build_model(cfg.model.name, num_classes=2, **kwargs).train()
    variants = dict(VARIANTS)
    models = {k: model for k in variants}
    if args.frozen:
        if not cfg.model.freeze:
            ap.error(f"--frozen: recipe {args.recipe} has no model.freeze")
        frozen_model = build_model(cfg.model.name, num_classes=2, **kwargs).train()
        freeze(frozen_model, cfg.model.freeze)
        set_frozen_bn_eval(frozen_model)  # as the trainer does: frozen BatchNorm keeps its statistics
        for name in ("fp32+channels_last", "bf16+channels_last"):
            variants[name + "+frozen"] = VARIANTS[name]
            models[name + "+frozen"] = frozen_model
    if args.only:
        unknown = set(args.only.split(",")) - set(variants)
        if unknown:
            ap.error(f"--only: unknown variants {sorted(unknown)}; known: {sorted(variants)}")
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
        models = {k: models[k] for k in variants}
    h, w = model.input_spec.image_size
    b = cfg.data.batch_size
    crit = MultiBoxLoss(neg_pos_ratio=cfg.loss.neg_pos_ratio)
    opts = {id(m): torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], 1e-4)
            for m in set(models.values())}
    x = torch.randn(b, 3, h, w)
    lo = torch.rand(b, 20, 2) * 0.8
    boxes = torch.cat([lo, lo + 0.05 + torch.rand(b, 20, 2) * 0.1], -1)
    labels = torch.ones(b, 20, dtype=torch.long)
    valid = torch.ones(b, 20, dtype=torch.bool)
    times: dict[str, list[float]] = {k: [] for k in variants}
    load = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name, (bf16, cl) in variants.items():
            fmt = torch.channels_last if cl else torch.contiguous_format
            model, opt = models[name], opts[id(models[name])]
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
              "speedup_vs_fp32": {k: med["fp32"] / v for k, v in med.items()} if "fp32" in med else None,
              "bf16_channels_last_vs_bf16": (med["bf16"] / med["bf16+channels_last"]
                                             if {"bf16", "bf16+channels_last"} <= med.keys() else None),
              "frozen_vs_not": {k: med[k[:-len("+frozen")]] / v for k, v in med.items()
                                if k.endswith("+frozen") and k[:-len("+frozen")] in med},
              "frozen": list(cfg.model.freeze) if args.frozen else [],
              "load_average_1min": load, "torch": torch.__version__,
              "cpu_flags": cpu_flags()}
    print(json.dumps(result, indent=1))
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(result, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
