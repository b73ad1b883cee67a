"""Binarized SSD7 vs full precision, and int8 PTQ vs QAT, on the synthetic recipe (issue 13).

Stages (each writes what the next reads under ``--runs``):

* ``train``: the synthetic recipe (``configs/synthetic.yaml``: 2000 + 300 images of 128 px, AdamW 1e-3, cosine,
  700 steps, batch 32, ssdlite augmentation; ``--steps`` / ``--batch-size`` reduce it, the warm-up scaled with the
  steps) with ``model.name=ssd7`` (no ImageNet weights exist for it), evaluated by the ``int8`` stage:

  - ``fp32``: full precision; ``binary``: ``model.kwargs.binarize=true``; ``binary_k``: also XNOR-Net's
    activation scale K (``activation_scale=true``); all three the same steps;
  - from ``fp32``'s last weights, ``--finetune-steps`` more steps at a constant lr of 1e-4: ``qat``
    (``quant.qat=true``) and ``fp32_more`` (the same steps without fake quantization, the control for "more training").

* ``int8``: VOC07 mAP on the synthetic test split of ``fp32``, ``fp32_more`` (both as fp32 eager and as int8 PTQ,
  ``onnxruntime-int8`` calibrated on the first ``--calib-images`` training images) and ``qat`` (its fake-quantized
  PyTorch network, and its int8 graph exported with the ranges learned in QAT).
* ``speed``: CPU latency of ``ssd7`` full precision vs binarized (eager PyTorch, ``--threads`` threads, median of
  ``--repeats``) and the 1-bit packed size.

``python benchmarks/bnn_qat_synthetic.py train --runs DIR --device cuda`` then ``... int8 --runs DIR --json F``
and ``... speed --json F``.

The ``int8`` stage also evaluates ``mnv2_fp32``, ``mnv2_fp32_more`` and ``mnv2_qat`` when present: the synthetic
recipe's own model (SSD-MobileNetV2, ImageNet weights), trained with the command line (what was run for
``benchmarks/results/bnn-qat-synthetic.json``, a reduced budget on the loaded 2-core machine)::

    multibox train synthetic data.batch_size=16 eval.at_end=false steps=200 schedule.warmup_steps=29 \
        checkpoint.every_steps=200 --out DIR/mnv2_fp32
    multibox train synthetic data.batch_size=16 eval.at_end=false steps=50 checkpoint.every_steps=50 \
        model.pretrained_backbone=null model.init_from=DIR/mnv2_fp32/checkpoints/last.safetensors \
        optim.lr=0.0001 schedule.name=constant schedule.warmup_steps=0 [quant.qat=true] \
        --out DIR/mnv2_fp32_more (DIR/mnv2_qat with quant.qat=true)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

COMMON = ["model.name=ssd7", "model.pretrained_backbone=null", "eval.every_steps=0", "eval.at_end=false"]
RUNS = {
    "fp32": ["model.kwargs={image_size: [128, 128]}"],
    "binary": ["model.kwargs={image_size: [128, 128], binarize: true}"],
    "binary_k": ["model.kwargs={image_size: [128, 128], binarize: true, activation_scale: true}"],
}
FINETUNE = ["model.kwargs={image_size: [128, 128]}", "optim.lr=0.0001", "schedule.name=constant",
            "schedule.warmup_steps=0"]


def _budget(args: argparse.Namespace, finetune: bool) -> list[str]:
    """Steps, batch and warm-up: the recipe's (700 steps of 32, 100 warm-up steps) unless reduced."""
    steps = args.finetune_steps if finetune else args.steps
    out = [f"steps={steps}", f"data.batch_size={args.batch_size}", f"checkpoint.every_steps={steps}"]
    if not finetune:
        out.append(f"schedule.warmup_steps={max(1, round(100 * steps / 700))}")
    return out


def _train(name: str, overrides: list[str], runs: Path, device: str, workers: int) -> dict:
    from multibox.config import load_config
    from multibox.engine.trainer import Trainer

    cfg = load_config("synthetic", [*COMMON, *overrides, f"device={device}", f"data.num_workers={workers}",
                                    f"name={name}"])
    t0 = time.perf_counter()
    summary = Trainer(cfg, runs / name, progress=False, overwrite=True).run()
    print(f"{name}: mAP {summary.get('mAP')} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return summary


def stage_train(args: argparse.Namespace) -> None:
    runs = Path(args.runs)
    only = set(args.only.split(",")) if args.only else None
    for name, extra in RUNS.items():
        if only is None or name in only:
            _train(name, [*extra, *_budget(args, False)], runs, args.device, args.workers)
    base = runs / "fp32" / "checkpoints" / "last.safetensors"
    for name, extra in (("qat", ["quant.qat=true"]), ("fp32_more", [])):
        if only is None or name in only:
            _train(name, [*FINETUNE, *_budget(args, True), f"model.init_from={base}", *extra], runs, args.device,
                   args.workers)


RUN_NAMES = ("fp32", "fp32_more", "qat", "binary", "binary_k")


def model_name(ckpt: Path) -> str:
    """The model name recorded in a run's ``.pt`` checkpoint."""
    pt = ckpt.with_suffix(".pt")
    return str(torch.load(pt, weights_only=True, map_location="cpu").get("model_name")) if pt.is_file() else "?"


def _calib_folder(root: Path, out: Path, n: int) -> Path:
    """A folder of links to the first ``n`` training images (never the test split)."""
    out.mkdir(parents=True, exist_ok=True)
    ids = (root / "ImageSets" / "Main" / "train.txt").read_text().split()[:n]
    for i in ids:
        src = next((root / "JPEGImages").glob(f"{i}.*"))
        dst = out / src.name
        if not dst.exists():
            dst.symlink_to(src.resolve())
    return out


def stage_int8(args: argparse.Namespace) -> None:
    from multibox.config import load_config
    from multibox.detector import Detector
    from multibox.engine.evaluator import EVAL_POSTPROCESS, evaluate_model
    from multibox.engine.trainer import open_split, synthetic_root
    from multibox.postprocess import PostProcess
    from multibox.weights_io import load_model

    torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    cfg = load_config("synthetic", [])
    test = open_split(cfg, "val", progress=False)
    calib = _calib_folder(synthetic_root(cfg), runs / "calib", args.calib_images)
    rows = []
    for name in (*RUN_NAMES, *(f"mnv2_{n}" for n in ("fp32", "fp32_more", "qat"))):
        ckpt = runs / name / "checkpoints" / "last.safetensors"
        if not ckpt.is_file() or args.only and name not in args.only.split(","):
            continue
        model = load_model(ckpt)
        runtimes = ["eager"] if "binary" in name else ["eager", "onnxruntime-int8"]
        for runtime in runtimes:
            options = {"calibrate": str(calib), "calib_images": args.calib_images} if runtime != "eager" else None
            t0 = time.perf_counter()
            det = Detector.from_model(model, "cpu", batch_size=8, runtime=runtime, runtime_options=options,
                                      postprocess=PostProcess.from_model(model, **EVAL_POSTPROCESS))
            res = evaluate_model(det, test, metric="voc07", progress=False)
            qat = name.endswith("qat")
            row = {"run": name, "model": model_name(ckpt), "runtime": runtime, "network": (
                "fake-quant int8 (PyTorch)" if qat and runtime == "eager" else
                "int8 QDQ, QAT ranges" if qat else "int8 QDQ, PTQ minmax" if runtime != "eager" else
                "binary" if "binary" in name else "fp32"),
                "mAP": res.mAP, "per_class": res.per_class,
                "seconds": round(time.perf_counter() - t0, 1)}
            print(json.dumps({k: v for k, v in row.items() if k != "per_class"}), file=sys.stderr, flush=True)
            rows.append(row)
    summaries = {}
    for name in (*RUN_NAMES, "mnv2_fp32", "mnv2_fp32_more", "mnv2_qat"):
        path = runs / name / "summary.json"
        if path.is_file():
            summaries[name] = json.loads(path.read_text())
    curves = {}
    for name in summaries:
        lines = (runs / name / "metrics.jsonl").read_text().splitlines()
        curves[name] = [{"step": r["step"], "mAP": r.get("mAP")} for r in map(json.loads, lines)
                        if r.get("kind") == "eval"]
    _write(args.json, {"what": "synthetic recipe (ssd7, 128 px, test split 300 images, VOC07 mAP): binarized vs "
                               "fp32, int8 PTQ vs QAT", "calib_images": args.calib_images,
                       "threads": args.threads, "results": rows, "training": summaries, "eval_curves": curves,
                       **_env()})


def _median_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def stage_speed(args: argparse.Namespace) -> None:
    from multibox.models import build_model
    from multibox.models.binary import binary_size

    torch.set_num_threads(args.threads)
    rows = []
    for size in (128, 300):
        models = {"fp32": build_model("ssd7", num_classes=7, image_size=(size, size)).eval(),
                  "binary": build_model("ssd7", num_classes=7, image_size=(size, size), binarize=True).eval(),
                  "binary_k": build_model("ssd7", num_classes=7, image_size=(size, size), binarize=True,
                                          activation_scale=True).eval()}
        for batch in (1, 8):
            x = torch.randn(batch, 3, size, size)
            row = {"input": size, "batch": batch}
            for kind in ("fp32", "binary", "binary_k", "fp32", "binary", "binary_k"):  # interleaved, best of two
                ms = _median_ms(models[kind], x, args.repeats)
                row[f"{kind}_ms"] = min(ms, row.get(f"{kind}_ms", float("inf")))
            row["binary_vs_fp32"] = row["fp32_ms"] / row["binary_ms"]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    binary = build_model("ssd7", num_classes=7, image_size=(128, 128), binarize=True)
    size = {"model": binary_size(binary), "backbone": binary_size(binary.backbone)}
    _write(args.json, {"what": "ssd7 eager PyTorch CPU latency, fp32 vs binarized (no bit-packed kernels), and "
                               "1-bit packed size (7 classes)", "threads": args.threads, "repeats": args.repeats,
                       "latency": rows, "size": size, **_env()})


def _env() -> dict:
    import onnxruntime

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "cpu": platform.processor() or
            platform.machine(), "cpus": os.cpu_count(), "cuda": torch.cuda.get_device_name(0)
            if torch.cuda.is_available() else None}


def _write(path: str | None, data: dict) -> None:
    text = json.dumps(data, indent=2) + "\n"
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    else:
        print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=("train", "int8", "speed"))
    p.add_argument("--runs", default="runs/bnn-qat")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--only", help="train / evaluate only these runs (comma-separated)")
    p.add_argument("--json")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--calib-images", type=int, default=200)
    p.add_argument("--steps", type=int, default=700, help="training steps of fp32 / binary (the recipe's 700)")
    p.add_argument("--batch-size", type=int, default=32, help="batch (the recipe's 32)")
    p.add_argument("--finetune-steps", type=int, default=300, help="steps of qat / fp32_more (default 300)")
    args = p.parse_args()
    {"train": stage_train, "int8": stage_int8, "speed": stage_speed}[args.stage](args)


if __name__ == "__main__":
    main()
