"""``multibox bench models``: every registered model's size and CPU speed in one run.

Per model (built with 21 classes and its default priors, random weights): parameters, GFLOPs of one forward at
batch 1 at its own input size (``torch.utils.flop_counter.FlopCounterMode``: a multiply-add counts 2 FLOPs;
convolutions and matrix products only), and the median CPU latency of the network's forward at batch 1 (no
pre- or post-processing) on two paths: ``fp32`` (eager, contiguous) and ``fast``, the fast path of ``multibox
bench core`` (channels_last memory format and bf16 autocast, weights kept fp32). A model whose optional
dependency is missing (timm) is recorded with the reason instead of numbers.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from ..commands.options import add_quiet_option, check_output_file, positive_int, quiet_output
from ..fileio import atomic_write_bytes

# torch and the model registry are imported inside the functions: `multibox --help` imports this module (it
# registers `multibox bench models`) and must stay at ~0.1 s.

__all__ = ["register", "run_models_benchmark", "select_models", "count_gflops"]


def select_models(patterns: str | None) -> list[str]:
    """Registered model names matching a comma-separated list of names / shell patterns (all when ``None``);
    ``ValueError`` naming a pattern that matches nothing."""
    from ..models import list_models  # heavy (torch): see the note at the top

    names = list_models()
    if not patterns:
        return names
    chosen: list[str] = []
    for pat in (p.strip() for p in patterns.split(",")):
        if not pat:
            continue
        hits = [n for n in names if fnmatch.fnmatch(n, pat)]
        if not hits:
            raise ValueError(f"--models: {pat!r} matches no registered model (multibox models lists them)")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def count_gflops(model: Any, example: Any) -> float:  # noqa: ANN401 - nn.Module, Tensor
    """GFLOPs of ``model(example)`` (no grad) counted by ``FlopCounterMode`` (multiply-add = 2 FLOPs)."""
    import torch  # heavy: see the note at the top
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(example)
    return counter.get_total_flops() / 1e9


def _median_latency(fn: Any, repeats: int) -> float:  # noqa: ANN401
    fn()  # warm-up (one-time allocations, oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _bench_one(name: str, repeats: int) -> dict[str, Any]:
    import torch  # heavy: see the note at the top

    from ..models import build_model
    from ..models.backbones.registry import backbone_name

    torch.manual_seed(0)
    try:
        model = build_model(name, num_classes=21).eval()
    except ImportError as err:  # an optional dependency (timm) is missing
        return {"name": name, "unavailable": str(err)}
    h, w = model.prior_config.image_size
    x = torch.randn(1, 3, h, w)
    row: dict[str, Any] = {
        "name": name,
        "backbone": backbone_name(model.backbone) or type(model.backbone).__name__,
        "input": [int(h), int(w)],
        "num_priors": model.num_priors,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "gflops": count_gflops(model, x),
    }
    if hasattr(model.backbone, "timm_name"):  # which timm model
        row["backbone"] = f"timm:{model.backbone.timm_name}"
    with torch.inference_mode():
        row["latency_fp32_s"] = _median_latency(lambda: model(x), repeats)
        fast_model = model.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def fast() -> object:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fast_model(x_cl)

        row["latency_fast_s"] = _median_latency(fast, repeats)
    row["speedup_fast"] = row["latency_fp32_s"] / row["latency_fast_s"]
    return row


def run_models_benchmark(json_path: Path | None = None, models: str | None = None, repeats: int = 3,
                         threads: int = 2) -> dict[str, Any]:
    """Benchmark the models selected by ``models`` (comma-separated names / patterns; all when ``None``) and
    print a table; the result (``{"benchmark": "models", ..., "models": [rows]}``) is written to ``json_path``."""
    import torch  # heavy: see the note at the top

    names = select_models(models)
    torch.set_num_threads(threads)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    print(f"{'model':<24} {'params':>12} {'GFLOPs':>8} {'fp32 ms':>9} {'fast ms':>9}")
    for name in names:
        row = _bench_one(name, repeats)
        rows.append(row)
        if "unavailable" in row:
            print(f"{name:<24} unavailable: {row['unavailable']}")
        else:
            print(f"{name:<24} {row['num_parameters']:>12,} {row['gflops']:>8.2f} {1e3 * row['latency_fp32_s']:>9.1f} "
                  f"{1e3 * row['latency_fast_s']:>9.1f}", flush=True)
    result = {
        "benchmark": "models",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": threads,
        "repeats": repeats,
        "batch": 1,
        "num_classes": 21,
        "fast_path": "channels_last + bf16 autocast (weights fp32), as multibox bench core",
        "gflops_counting": "torch.utils.flop_counter.FlopCounterMode, multiply-add = 2 FLOPs",
        # other work on the machine inflates the latencies: the 1-minute load average before and after the run
        "load_average_1min": [load_before[0] if load_before else None,
                              os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
        "models": rows,
    }
    if json_path is not None:
        atomic_write_bytes(json_path, (json.dumps(result, indent=2) + "\n").encode())
        print(f"wrote {json_path}")
    return result


def _cmd(args: argparse.Namespace) -> int:
    if args.json:
        check_output_file(args.json, "--json")
    select_models(args.models)  # a pattern matching nothing: ValueError, printed as a usage error before any work
    with quiet_output(args):
        run_models_benchmark(Path(args.json) if args.json else None, models=args.models, repeats=args.repeats,
                             threads=args.threads)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``multibox bench models``."""
    p = subparsers.add_parser(
        "models", help="every registered model: parameters, GFLOPs, CPU latency (fp32 and fast path)",
        description="Builds each registered model (21 classes, default priors, random weights) and reports its "
                    "parameters, GFLOPs of one forward at batch 1 (FlopCounterMode) and the median CPU latency of "
                    "the network at batch 1, fp32 and on the fast path (channels_last + bf16 autocast).")
    p.add_argument("--json", metavar="FILE", help="write the results to this JSON file")
    p.add_argument("--models", metavar="A,B", help="comma-separated model names or shell patterns (default: all)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed forwards per path (median reported)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    add_quiet_option(p)
    p.set_defaults(func=_cmd)
