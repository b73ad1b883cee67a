"""The ``multibox`` command line: ``multibox anchors | anchors fit | models | demo | bench``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .commands.options import (
    UsageError,
    add_json_option,
    add_overwrite_option,
    add_progress_options,
    add_quiet_option,
    check_output_dir,
    check_output_file,
    is_quiet,
    non_negative_int,
    positive_int,
    probability,
    quiet_output,
    show_progress,
    write_json_output,
)
from .commands.train import allow_intermixed
from .fileio import atomic_save_npy, atomic_write_bytes
from .runtime import keep_freed_memory

# Imports inside the command functions below are heavy (numpy, torch, matplotlib and the multibox modules built on
# them): `multibox --help` builds every parser and must stay at ~0.1 s without them.

__all__ = ["main", "build_parser"]


def _cmd_anchors(args: argparse.Namespace) -> int:
    import numpy as np  # heavy: see the note at the top

    from .anchors import PriorBoxGenerator, get_prior_preset

    cfg = get_prior_preset(args.preset)
    if args.feature_sizes:
        sizes = [_feature_size(s) for s in args.feature_sizes]
        if len(sizes) != len(cfg.levels):
            raise UsageError(f"--feature-sizes: {args.preset} has {len(cfg.levels)} feature maps, got {len(sizes)} "
                             "sizes")
    else:
        sizes = cfg.default_feature_sizes()
    if not 0 <= args.level < len(sizes):
        raise UsageError(f"--level {args.level}: {args.preset} has feature maps 0..{len(sizes) - 1}")
    for option in ("out", "json", "plot"):
        if getattr(args, option):
            check_output_file(getattr(args, option), f"--{option}")
    gen = PriorBoxGenerator(cfg)
    priors = gen(sizes)
    rows = []
    for k, ((fh, fw), lvl) in enumerate(zip(sizes, cfg.levels, strict=True)):
        boxes = lvl.box_sizes(cfg.caffe_int_sizes)
        rows.append({
            "level": k,
            "feature_size": [fh, fw],
            "step": lvl.step,
            "boxes_per_location": lvl.num_priors,
            "box_sizes_px": [[round(w, 2), round(h, 2)] for w, h in boxes],
            "count": fh * fw * lvl.num_priors,
        })
    print(f"{args.preset}: image {cfg.image_size[0]}x{cfg.image_size[1]}, clip={cfg.clip}, "
          f"variances={cfg.variances}, caffe_int_sizes={cfg.caffe_int_sizes}")
    print(f"{'map':>3} {'size':>7} {'step':>6} {'A':>2} {'count':>6}  box sizes w x h (px)")
    for r in rows:
        sz = "x".join(str(v) for v in r["feature_size"])
        boxes_txt = ", ".join(f"{w:g}x{h:g}" for w, h in r["box_sizes_px"])
        print(f"{r['level']:>3} {sz:>7} {r['step']!s:>6} {r['boxes_per_location']:>2} {r['count']:>6}  {boxes_txt}")
    print(f"total priors: {priors.shape[0]}")
    if args.out:
        atomic_save_npy(Path(args.out), priors.numpy().astype(np.float32))
        print(f"wrote {args.out}: ({priors.shape[0]}, 4) float32 normalized cxcywh, Caffe order")
    if args.json:
        write_json_output(args.json, {"preset": args.preset, "total": int(priors.shape[0]), "levels": rows})
    if args.plot:
        from .viz import plot_priors  # heavy (matplotlib), and only --plot needs it

        plot_priors(priors, sizes, cfg, level=args.level, out=Path(args.plot))
        print(f"wrote {args.plot}")
    return 0


def _fit_model(text: str) -> tuple[str, dict, str | None]:
    """``--model``: a registered model -> ``(name, {}, None)``; a recipe or YAML config -> ``(its model.name, its
    model.kwargs, the base the fragment names)``."""
    from .config import load_config  # heavy (yaml, metrics): see the note at the top
    from .models import list_models

    if text in list_models():
        return text, {}, None
    try:
        cfg = load_config(text)
    except (ValueError, KeyError, OSError) as e:
        raise UsageError(f"--model {text!r}: not a registered model ({', '.join(list_models())}) nor a usable "
                         f"recipe or config file ({e})") from None
    base = str(Path(text).resolve()) if Path(text).is_file() else text
    return cfg.model.name, dict(cfg.model.kwargs), base


def _cmd_anchors_fit(args: argparse.Namespace) -> int:
    import yaml  # heavy: see the note at the top

    from .anchor_fit import collect_boxes, fit_report, model_priors, plot_fit
    from .anchors import prior_config_to_dict
    from .data.datasets import open_dataset

    for option in ("json", "plot"):
        if getattr(args, option):
            check_output_file(getattr(args, option), f"--{option}")
    if args.out:
        check_output_file(args.out, "--out")
        if Path(args.out).exists() and not args.overwrite:
            raise UsageError(f"--out {args.out} exists; pass --overwrite to replace it")
    name, kwargs, base = _fit_model(args.model)
    dataset = open_dataset(args.dataset, format=args.format, split=args.split)
    boxes = collect_boxes(dataset)
    if len(boxes) == 0:
        raise UsageError(f"{args.dataset}: the dataset{f' (split {args.split})' if args.split else ''} has no boxes")
    try:
        priors = model_priors(name, len(dataset.class_names), kwargs)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--model {args.model}: cannot build {name} with {kwargs}: {e}") from None
    report = fit_report(boxes, priors, args.threshold, args.clusters, args.seed)
    proposal = report.pop("proposal_config")
    fragment: dict = {"base": base} if base else {}
    fragment["model"] = {"name": name, "kwargs": {**kwargs, "priors": prior_config_to_dict(proposal)}}
    report["fragment"] = fragment
    report.update({"dataset": str(args.dataset), "split": args.split, "model": name})
    if not is_quiet(args) and args.json != "-":
        _print_fit(report, args)
    if args.out:
        cur, new = report["current"], report["proposal"]
        head = (f"# multibox anchors fit {args.dataset} --model {args.model}: boxes matched at IoU >= "
                f"{args.threshold:g} {cur['share_matched']:.4f} -> {new['share_matched']:.4f}, positives per box "
                f"{cur['mean_positives']:.2f} -> {new['mean_positives']:.2f}\n# use: multibox train THIS_FILE "
                "[key=value ...] (with a 'base:' recipe, or merged into your config)\n")
        text = head + yaml.safe_dump(fragment, sort_keys=False, default_flow_style=None)
        atomic_write_bytes(Path(args.out), text.encode())
        if not is_quiet(args) and args.json != "-":
            print(f"wrote {args.out}")
    if args.plot:
        plot_fit(report, boxes, priors, args.plot)
        if not is_quiet(args) and args.json != "-":
            print(f"wrote {args.plot}")
    if args.json:
        write_json_output(args.json, report)
    return 0


def _print_fit(report: dict, args: argparse.Namespace) -> None:
    b = report["boxes"]
    h, w = report["image_size"]
    print(f"{b['count']} boxes in {b['images']} images, at the model's input {w}x{h} (stretch resize):")
    print("  side sqrt(w h) px: " + ", ".join(f"{k} {v:g}" for k, v in b["side_px"].items()))
    print("  aspect w/h:        " + ", ".join(f"{k} {v:g}" for k, v in b["aspect"].items()))
    hist = report["histograms"]
    edges, counts = hist["side_edges_px"], hist["side_counts"]
    print("  side histogram (px): " + "  ".join(f"[{lo:g},{hi:g}) {n}" for lo, hi, n in
                                                zip(edges, edges[1:], counts, strict=False) if n))
    for key, title in (("current", f"current priors ({args.model})"), ("proposal", "proposed priors")):
        c = report[key]
        print(f"{title}: {c['num_priors']} priors; boxes whose best prior IoU >= {c['threshold']:g}: "
              f"{c['share_matched']:.4f}; mean best IoU {c['mean_best_iou']:.4f}; positives per box "
              f"{c['mean_positives']:.2f} (boxes without any: {c['boxes_without_positive']})")
        print(f"  {'map':>3} {'size':>7} {'step':>7} {'reach':>6} {'best for':>8} {'matched':>7}  prior sizes w x h "
              "(px)")
        for r in c["levels"]:
            size = "x".join(str(v) for v in r["feature_size"])
            step = f"{r['step'][1]:g}" if r["step"][0] == r["step"][1] else f"{r['step'][1]:g}x{r['step'][0]:g}"
            share = "-" if r["share_matched"] is None else f"{r['share_matched']:.3f}"
            sizes = ", ".join(f"{bw:g}x{bh:g}" for bw, bh in r["box_sizes_px"])
            print(f"  {r['level']:>3} {size:>7} {step:>7} {r['reach_px']:>6g} {r['best_for_boxes']:>8} {share:>7}  "
                  f"{sizes}")
    print("IoU k-means clusters (w x h px): " + ", ".join(f"{cw:g}x{ch:g}" for cw, ch in report["clusters"]))
    print("(reach: the smallest square side a map matches at the threshold wherever the box lies; best for: boxes "
          "whose best prior is on that map; matched: their share at the threshold)")


def _feature_size(text: str) -> tuple[int, int]:
    """``"38x38"`` or ``"38"`` -> ``(38, 38)``; a :class:`~multibox.commands.options.UsageError` otherwise."""
    parts = text.lower().split("x") if "x" in text.lower() else [text, text]
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        raise UsageError(f"--feature-sizes: {text!r} is not HxW (e.g. 38x38) or N") from None
    if h < 1 or w < 1 or h > 10000 or w > 10000:
        raise UsageError(f"--feature-sizes: {text!r}: sides must be in 1..10000")
    return h, w


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models, model_info  # heavy (torch): see the note at the top
    from .models.backbones import backbone_info, list_backbones

    if args.json:
        check_output_file(args.json, "--json")
    def info_or_reason(fn: Any, name: str) -> dict[str, Any]:  # noqa: ANN401
        try:
            return fn(name)
        except ImportError as err:  # an optional dependency (timm) is missing: listed, not built
            return {"name": name, "backbone": None, "unavailable": str(err)}

    infos = [info_or_reason(model_info, name) for name in list_models()]
    backbones = [info_or_reason(backbone_info, name) for name in list_backbones()]
    if args.json != "-":
        w = max([len("name"), *(len(i["name"]) for i in infos)])
        b = max([len("backbone"), *(len(str(i.get("backbone"))) for i in infos)])
        print(f"{'name':<{w}} {'backbone':<{b}} {'input':>9} {'maps':>4} {'priors':>7} {'params (21 cls)':>16}  "
              "feature maps")
        for i in infos:
            if "unavailable" in i:
                print(f"{i['name']:<{w}} {'-':<{b}} unavailable: {i['unavailable']}")
                continue
            size = "x".join(str(v) for v in i["image_size"])
            maps = ", ".join(f"{h}x{w}" for h, w in i["feature_sizes"])
            print(f"{i['name']:<{w}} {i['backbone'] or '-':<{b}} {size:>9} {i['num_feature_maps']:>4} "
                  f"{i['num_priors']:>7} {i['num_parameters']:>16,}  {maps}")
        print()
        w = max([len("backbone"), *(len(i["name"]) for i in backbones)])
        print(f"{'backbone':<{w}} {'strides':>10} {'out channels':>14} {'params':>12}  description")
        for i in backbones:
            if "unavailable" in i:
                print(f"{i['name']:<{w}} unavailable: {i['unavailable']}")
                continue
            strides = ",".join(str(s) for s in i["strides"])
            chans = ",".join(str(c) for c in i["out_channels"])
            print(f"{i['name']:<{w}} {strides:>10} {chans:>14} {i['num_parameters']:>12,}  {i['description']}")
    if args.json:
        write_json_output(args.json, {"models": infos, "backbones": backbones})
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo  # heavy (torch): see the note at the top

    out = check_output_dir(args.out, "--out", create=False)
    run_demo(out, overrides=list(args.overrides), num_images=args.num_images, progress=show_progress(args),
             pretrained_first=not args.no_pretrained, quiet=is_quiet(args), overwrite=args.overwrite)
    return 0


def _cmd_bench_core(args: argparse.Namespace) -> int:
    from .bench.core import run_core_benchmark  # heavy (torch, torchvision): see the note at the top

    if args.json:
        check_output_file(args.json, "--json")
    with quiet_output(args):
        run_core_benchmark(json_path=Path(args.json) if args.json else None, repeats=args.repeats,
                           threads=args.threads, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="multibox", description="SSD (Single Shot MultiBox Detector) toolkit.")
    p.add_argument("--version", action="version", version=f"multibox {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    a = sub.add_parser("anchors", help="print and save the prior boxes of a preset; 'anchors fit': fit them to data",
                       usage="multibox anchors [-h] PRESET [options]\n       multibox anchors fit DATASET --model M "
                             "[options] (see multibox anchors fit --help)",
                       description="Print a table per feature map and optionally save the (P, 4) float32 "
                                   "normalized cxcywh priors in Caffe order. 'multibox anchors fit DATASET --model "
                                   "M' instead measures how a model's priors cover a dataset's boxes and proposes "
                                   "priors fitted to them (docs/anchors.md).")
    a.add_argument("preset", help="prior preset: ssd300-voc, ssd300-coco, ssd512-voc or ssd512-coco; or 'fit'")
    a.add_argument("--out", help="write the priors to this .npy file")
    a.add_argument("--json", metavar="FILE", help="also write the per-map table as JSON to FILE ('-': standard output)")
    a.add_argument("--feature-sizes", nargs="+", metavar="HxW",
                   help="feature map sizes (default: ceil(image / step), what the preset's model yields)")
    a.add_argument("--plot", help="draw the priors of one feature-map location set to this PNG")
    a.add_argument("--level", type=int, default=3, help="feature map drawn by --plot (default 3)")
    a.set_defaults(func=_cmd_anchors)

    m = sub.add_parser("models", help="list the registered models (parameters, prior count) and backbones")
    m.add_argument("--json", metavar="FILE",
                   help="also write {\"models\": [...], \"backbones\": [...]} as JSON to FILE ('-': standard "
                        "output, instead of the tables)")
    m.set_defaults(func=_cmd_models)

    d = sub.add_parser("demo", help="train the synthetic recipe, evaluate it, draw its detections",
                       description="The README's main job on built-in defaults: generates the synthetic shapes "
                                   "dataset (cached), trains an SSD on MobileNetV2 on it (the 'synthetic' recipe), "
                                   "prints the VOC07 mAP on the held-out test split with the loss and mAP curves, and "
                                   "draws the "
                                   "trained model's detections on a few test images. Before that (step 0) it runs "
                                   "the zoo's real face (Caffe) and person (TensorFlow) detectors on real photos.")
    allow_intermixed(d)
    d.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides of the synthetic recipe (before or after the options)")
    d.add_argument("--out", default="multibox-demo", help="output folder (default: multibox-demo)")
    add_overwrite_option(d, "a previous demo's training run in --out")
    d.add_argument("--num-images", type=positive_int, default=4, metavar="N", help="test images to draw (default 4)")
    add_progress_options(d)
    d.add_argument("--no-pretrained", action="store_true",
                   help="skip step 0 (the zoo's face and person detectors on real photos)")
    d.set_defaults(func=_cmd_demo)

    b = sub.add_parser("bench", help="benchmarks against peers, writing JSON")
    bsub = b.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    bc = bsub.add_parser("core", help="SSD300 inference and training step: multibox vs torchvision",
                         description="Times multibox and torchvision's ssd300_vgg16 (same random weights, 21 "
                                     "classes) side by side: end-to-end inference at batch 1 and 8 on 500x375 "
                                     "images, and a training step at batch 8.")
    bc.add_argument("--json", metavar="FILE", help="write the results to this JSON file")
    bc.add_argument("--repeats", type=positive_int, default=3, help="timed repetitions per case (median reported)")
    bc.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    bc.add_argument("--quick", action="store_true",
                    help="batch 1, one call of each path, no warm-up: a smoke run of the code paths, not a measurement")
    add_quiet_option(bc)
    bc.set_defaults(func=_cmd_bench_core)
    _add_plugin_commands(bsub, "multibox.bench", ["data", "zoo", "serve", "models", "export"])

    _add_plugin_commands(sub, "multibox.commands", TOP_COMMANDS)

    data = sub.add_parser("data", help="datasets: convert, check, synth, pack, formats")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA")
    _add_plugin_commands(dsub, "multibox.data.commands", DATA_COMMANDS)
    return p


def build_anchors_fit_parser() -> argparse.ArgumentParser:
    """The parser of ``multibox anchors fit`` (``main`` uses it when the arguments start with ``anchors fit``, so
    that ``multibox anchors PRESET`` keeps its own)."""
    f = argparse.ArgumentParser(
        prog="multibox anchors fit",
        description="Measure how the priors of a model cover a dataset's boxes after the model's resize (share of "
                    "boxes whose best prior reaches the matching IoU, positives per box, box size and aspect "
                    "histograms against the prior sizes of each feature map), then propose prior sizes and aspect "
                    "ratios from an IoU k-means of the boxes and measure them the same way. --out writes the "
                    "proposal as a config fragment (model.kwargs.priors) that 'multibox train' reads.")
    f.add_argument("dataset", metavar="DATASET", help="dataset path (any format of 'multibox data formats')")
    f.add_argument("--model", required=True, metavar="M",
                   help="registered model (multibox models), or a recipe / YAML config whose model (name and "
                        "kwargs, e.g. the input size) is analysed")
    f.add_argument("--format", help="dataset format (default: detected)")
    f.add_argument("--split", help="dataset split (default: every annotation for VOC; the format's default else)")
    f.add_argument("--threshold", type=probability, default=0.5, metavar="IOU",
                   help="matching IoU threshold (default 0.5, loss.iou_threshold)")
    f.add_argument("--clusters", type=positive_int, default=6, metavar="K",
                   help="box sizes proposed (IoU k-means clusters, default 6)")
    f.add_argument("--seed", type=non_negative_int, default=0, help="k-means seed (default 0)")
    f.add_argument("--out", metavar="FILE.yaml", help="write the proposal as a training config fragment")
    add_overwrite_option(f, "an existing --out file")
    f.add_argument("--plot", metavar="FILE.png", help="draw the box histograms with the prior sizes per map")
    add_json_option(f, "the analysis and the proposal")
    add_quiet_option(f)
    f.set_defaults(func=_cmd_anchors_fit, command="anchors", anchors_command="fit")
    return f


# Sub-commands living in their own modules: each module has ``register(subparsers)``, which adds its parser and
# sets ``func``. Listed here so that ``--help`` shows them in a fixed order.
DATA_COMMANDS = ["convert", "check", "synth", "pack", "formats"]
# "importer" registers `multibox import`
TOP_COMMANDS = ["train", "eval", "detect", "importer", "export", "quant", "zoo", "serve"]


def _add_plugin_commands(subparsers: argparse._SubParsersAction, package: str, names: list[str]) -> None:
    for name in names:
        module_name = f"{package}.{name}"
        try:
            found = importlib.util.find_spec(module_name) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            importlib.import_module(module_name).register(subparsers)


def command_name(args: argparse.Namespace) -> str:
    """The command a user typed, for error messages: ``"data convert"``, ``"bench zoo"``, ``"eval"``."""
    words = [args.command]
    for attr in ("anchors_command", "data_command", "bench_command", "zoo_command", "quant_command"):
        if getattr(args, attr, None):
            words.append(getattr(args, attr))
    if args.command in ("export", "import") and isinstance(getattr(args, "format", None), str):
        words.append(args.format)
    return " ".join(words)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``multibox`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["anchors", "fit"]:
        args = build_anchors_fit_parser().parse_args(argv[2:])
    else:
        args = build_parser().parse_args(argv)
    name = command_name(args)
    keep_freed_memory()  # reuse freed activations instead of page-faulting them in again (see multibox.runtime)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `multibox models --json | head`: the reader left; say nothing more
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        print(f"multibox {name}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"multibox {name}: error: {message}", file=sys.stderr)
        return 2
    except ImportError as e:
        if type(e).__name__ != "OnnxUnavailable":  # an optional runtime that is missing; anything else is a bug
            raise
        print(f"multibox {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
