"""``multibox train RECIPE|CONFIG.yaml [key=value ...] [--out DIR]``: train an SSD from a recipe or YAML file."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .options import add_overwrite_option, add_progress_options, check_output_dir, is_quiet, show_progress

__all__ = ["register", "run", "allow_intermixed", "summary_lines", "IntermixedArgumentParser"]


class IntermixedArgumentParser(argparse.ArgumentParser):
    """An argument parser whose positionals may follow options (``train synthetic --no-progress steps=3``):
    :meth:`parse_known_args` parses like :meth:`argparse.ArgumentParser.parse_known_intermixed_args`."""

    _intermixing = False

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def allow_intermixed(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let ``key=value`` positionals of a sub-command come after its options (returns ``parser``, now an
    :class:`IntermixedArgumentParser`). Sub-parsers are made by ``add_subparsers().add_parser``, which picks the
    class, so the class of the made parser is switched (it adds behaviour only, no state)."""
    parser.__class__ = IntermixedArgumentParser
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` parser."""
    p = subparsers.add_parser(
        "train", help="train an SSD from a recipe or a YAML config",
        description="Train from a packaged recipe (see --list) or a YAML file, with key=value overrides "
                    "(dotted keys, YAML values: optim.lr=0.01 schedule.milestones=[800,1000]), before or after the "
                    "options. Writes the run folder: config.yaml, metrics.jsonl, TensorBoard scalars, "
                    "checkpoints/last|best.(pt|safetensors), eval.json, plots/*.png, summary.json. Resume exactly "
                    "with resume=RUN/checkpoints/last.pt: the run's own saved config is used, with the overrides "
                    "given (e.g. steps=2000) on top. Several processes or GPUs: "
                    "torchrun --nproc_per_node N -m multibox train ...")
    allow_intermixed(p)
    p.add_argument("config", nargs="?", metavar="RECIPE|CONFIG.yaml", help="recipe name or YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--out", help="run folder (default runs/NAME-TIMESTAMP, or the resumed run's folder); a folder "
                                 "that already holds a run is refused unless --overwrite")
    add_overwrite_option(p, "the run already in --out (its metrics, checkpoints, plots, TensorBoard files)")
    p.add_argument("--list", action="store_true", help="list the packaged recipes and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    add_progress_options(p)
    p.set_defaults(func=run)


def summary_lines(summary: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The lines ``multibox train`` prints after a run: ``summary`` (summary.json's dict) and ``rows``
    (metrics.jsonl). mAP values are fractions in [0, 1] with 4 decimals, as in eval.json."""
    from ..engine.trainer import sparkline  # heavy (torch): keeps 'multibox --help' at ~0.2 s

    losses = [r["loss"] for r in rows if r.get("kind") == "train"]
    maps = [r["mAP"] for r in rows if r.get("kind") == "eval"]
    lines = [f"\nrun: {summary['run']}",
             f"steps: {summary['steps']}  train time: {summary['train_seconds']:.0f} s  "
             f"({summary['images_per_s']:.1f} images/s)"]
    if losses:
        lines.append(f"loss  {losses[0]:.3f} {sparkline(losses)} {losses[-1]:.3f}")
    if maps:
        lines.append(f"mAP   {maps[0]:.4f} {sparkline(maps)} {maps[-1]:.4f}")
    if summary.get("mAP") is not None:
        lines.append(f"final {summary['metric']} mAP: {summary['mAP']:.4f} (eval.json)")
    lines += [f"plot: {plot}" for plot in summary.get("plots", [])]
    lines.append(f"weights: {summary['checkpoint']}")
    return lines


def run(args: argparse.Namespace) -> int:
    # imported here: 'multibox --help' imports this module and must stay fast (~0.2 s, no torch, no yaml)
    from ..config import dump_config, list_recipes
    from ..engine.trainer import NonFiniteLossError, Trainer, load_run_config

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
    cfg = load_run_config(source, overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    if args.out is not None:
        check_output_dir(args.out, "--out", create=False)
    try:
        summary = Trainer(cfg, args.out, progress=show_progress(args), overwrite=args.overwrite,
                          quiet=is_quiet(args)).run()
    except NonFiniteLossError as e:
        print(f"multibox train: error: {e}", file=sys.stderr)
        return 1
    if not summary:
        return 0
    text = (Path(summary["run"]) / "metrics.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    for line in summary_lines(summary, rows):
        print(line)
    return 0
