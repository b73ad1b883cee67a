"""``multibox train RECIPE|CONFIG.yaml [key=value ...] [--out DIR]``: train an SSD from a recipe or YAML file."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` parser."""
    p = subparsers.add_parser(
        "train", help="train an SSD from a recipe or a YAML config",
        description="Train from a packaged recipe (see --list) or a YAML file, with key=value overrides "
                    "(dotted keys, YAML values: optim.lr=0.01 schedule.milestones=[800,1000]). Writes the run "
                    "folder: config.yaml, metrics.jsonl, TensorBoard scalars, checkpoints/last|best.(pt|safetensors),"
                    " eval.json, plots/*.png, summary.json. Resume exactly with resume=RUN/checkpoints/last.pt. "
                    "Several processes or GPUs: torchrun --nproc_per_node N -m multibox train ...")
    p.add_argument("config", nargs="?", metavar="RECIPE|CONFIG.yaml", help="recipe name or YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--out", help="run folder (default runs/NAME-TIMESTAMP, or the resumed run's folder)")
    p.add_argument("--list", action="store_true", help="list the packaged recipes and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import dump_config, list_recipes, load_config

    if args.list:
        for name in list_recipes():
            print(name)
        return 0
    if args.config is None:
        raise ValueError("give a recipe name or a YAML file (multibox train --list shows the recipes)")
    overrides = list(args.overrides)
    source = args.config
    if "=" in source and not source.endswith((".yaml", ".yml")):  # only overrides: start from the defaults
        overrides.insert(0, source)
        source = None
    cfg = load_config(source, overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from ..engine.trainer import Trainer, sparkline

    summary = Trainer(cfg, args.out, progress=not args.no_progress).run()
    if not summary:
        return 0
    rows = [json.loads(ln) for ln in (open(summary["run"] + "/metrics.jsonl").read().splitlines()) if ln.strip()]
    losses = [r["loss"] for r in rows if r.get("kind") == "train"]
    maps = [r["mAP"] for r in rows if r.get("kind") == "eval"]
    out = sys.stdout
    print(f"\nrun: {summary['run']}", file=out)
    print(f"steps: {summary['steps']}  train time: {summary['train_seconds']:.0f} s  "
          f"({summary['images_per_s']:.1f} images/s)", file=out)
    if losses:
        print(f"loss  {losses[0]:.3f} {sparkline(losses)} {losses[-1]:.3f}", file=out)
    if maps:
        print(f"mAP   {maps[0]:.3f} {sparkline(maps)} {maps[-1]:.3f}", file=out)
    if summary.get("mAP") is not None:
        print(f"final {summary['metric']} mAP: {summary['mAP']:.4f} (eval.json)", file=out)
    for plot in summary.get("plots", []):
        print(f"plot: {plot}", file=out)
    print(f"weights: {summary['checkpoint']}", file=out)
    return 0
