"""A trained comparison of SSD families on the synthetic recipe at the same budget (issue 12, docs/models.md).

Each model is ``multibox train synthetic`` with ``model.name=NAME model.kwargs={image_size: [128, 128], ...}``
(the recipe's own kwargs are MobileNetV2's priors and are replaced), the same number of steps for all, the
recipe's optimizer, schedule, batch and augmentation, and one evaluation at the end (VOC07 11-point mAP@0.5 on
the synthetic test split, 300 images). ``model.pretrained_backbone=imagenet`` is set only where a real ImageNet
file of the backbone is on this machine (MobileNetV2's, from its pinned wheel; torchvision's / timm's caches are
searched for the others); every other model starts from its random initialization, and the JSON says which.

    python benchmarks/models_trained.py [--steps 16] [--out runs/models-trained] \\
        [--json benchmarks/results/models-trained-synthetic.json] [--models a,b] [--probe] [key=value ...]

The same budget can also be a time budget: ``--steps 700 time_budget_min=8 schedule.warmup_steps=10`` gives every
model 8 minutes of training wall time (the trainer fits its step count, at most 700, and the cosine schedule to the
budget; a short warm-up so that the slow models leave it); the JSON then has each model's fitted ``steps``.

``--probe`` trains 5 steps of each model without evaluation, to choose ``--steps`` for a time budget. The
seconds per step are the training loop's wall time over the steps (the first step, which pays for lazy
initialization, included); the load average is sampled every 15 s during each run, since the 2-core machine is
shared and the times depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from multibox.fileio import atomic_write_bytes

#: name -> (model.kwargs beyond the image size, what it is)
MODELS: dict[str, tuple[dict[str, Any], str]] = {
    "ssd300_vgg16": ({}, "VGG16-SSD300"),
    "ssd300_mobilenetv1_keras_3x3": ({}, "MobileNetV1-SSD300, 3x3 heads (ssd_keras fork)"),
    "ssdlite320_mobilenetv2": ({}, "MobileNetV2-SSDLite"),
    "ssd300_resnet50_nvidia": ({}, "ResNet50-SSD300, NVIDIA layout"),
    "ssd300_timm": ({"timm_name": "mobilenetv3_large_100"}, "timm mobilenetv3_large_100 SSD300"),
}
IMAGE_SIZE = [128, 128]


def imagenet_weights(name: str, kwargs: dict[str, Any]) -> tuple[str | None, str]:
    """(the ImageNet file ``pretrained_backbone=imagenet`` would load for this model, or None; why)."""
    from multibox.engine.trainer import resolve_backbone_weights
    from multibox.models import build_model

    model = build_model(name, num_classes=7, image_size=IMAGE_SIZE, **kwargs)
    try:
        return resolve_backbone_weights("imagenet", name, model.backbone), "real ImageNet weights"
    except (FileNotFoundError, ValueError) as err:
        return None, f"random init: {str(err).splitlines()[0][:300]}"


class LoadSampler:
    """Samples ``os.getloadavg()[0]`` every ``period`` seconds in a thread."""

    def __init__(self, period: float = 15.0) -> None:
        self.period = period
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        s = self.samples
        return {"mean": round(sum(s) / len(s), 2), "min": round(min(s), 2), "max": round(max(s), 2)}


def run_model(name: str, steps: int, out: Path, probe: bool, extra: list[str],
              random_init: bool = False) -> dict[str, Any]:
    """Train ``name`` for ``steps`` in ``out/name``; returns its row (``error`` set when the run failed).
    ``random_init``: never load ImageNet weights (the control for what the initialization contributes)."""
    kwargs, what = MODELS[name]
    weights, why = (None, "random init: --random-init") if random_init else imagenet_weights(name, kwargs)
    model_kwargs = json.dumps({"image_size": IMAGE_SIZE, **kwargs})
    overrides = [f"model.name={name}", f"model.kwargs={model_kwargs}",
                 f"model.pretrained_backbone={'imagenet' if weights else 'null'}", f"steps={steps}",
                 "eval.every_steps=0", "checkpoint.every_steps=0"]
    if probe:
        overrides.append("eval.at_end=false")
    folder = out / name
    cmd = [sys.executable, "-m", "multibox", "train", "synthetic", "--out", str(folder), "--overwrite",
           "--no-progress", *overrides, *extra]
    log_path = out / f"{name}.log"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with LoadSampler() as load, open(log_path, "w", encoding="utf-8") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    row: dict[str, Any] = {"model": name, "what": what, "model_kwargs": json.loads(model_kwargs),
                           "pretrained_backbone": weights is not None, "init": why if weights is None else
                           f"real ImageNet weights: {weights}", "steps": steps,
                           "wall_seconds": round(time.perf_counter() - t0, 1), "load_average": load.summary(),
                           "overrides": overrides + extra}
    summary = folder / "summary.json"
    if rc != 0 or not summary.is_file():
        tail = log_path.read_text(encoding="utf-8").strip().splitlines()[-3:]
        row["error"] = f"exit {rc}: {' | '.join(tail)}"
        return row
    s = json.loads(summary.read_text(encoding="utf-8"))
    row.update({"steps": s["steps"], "time_budget": s.get("time_budget"),
                "mAP": s["mAP"], "metric": s["metric"], "train_seconds": round(s["train_seconds"], 1),
                "seconds_per_step": round(s["train_seconds"] / max(s["steps"], 1), 3),
                "images_per_s": round(s["images_per_s"], 2), "final_loss": s["final_loss"]})
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows (mAP as a fraction)."""
    lines = ["| model | ImageNet init | steps | VOC07 mAP | s / step | load avg (mean, min-max) |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| `{r['model']}` | - | {r['steps']} | error | - | - |")
            continue
        m = "-" if r.get("mAP") is None else f"{r['mAP']:.4f}"
        la = r["load_average"]
        lines.append(f"| `{r['model']}` | {'yes' if r['pretrained_backbone'] else 'no (random)'} | {r['steps']} | "
                     f"{m} | {r['seconds_per_step']:.2f} | {la['mean']:.1f} ({la['min']:.1f}-{la['max']:.1f}) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--out", default="runs/models-trained")
    ap.add_argument("--json", default=None)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--probe", action="store_true", help="5 steps each, no evaluation")
    ap.add_argument("--random-init", action="store_true",
                    help="every model from its random initialization, even where ImageNet weights exist")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = ap.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"--models: unknown {', '.join(unknown)}; known: {', '.join(MODELS)}")
    steps = 5 if args.probe else args.steps
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for name in names:
        row = run_model(name, steps, Path(args.out), args.probe, args.overrides, args.random_init)
        rows.append(row)
        print(json.dumps({k: row.get(k) for k in ("model", "mAP", "seconds_per_step", "load_average", "init",
                                                  "error") if k in row}), flush=True)
        report = {"benchmark": "models_trained", "recipe": "synthetic", "image_size": IMAGE_SIZE, "steps": steps,
                  "overrides": args.overrides, "probe": args.probe, "cpu_count": os.cpu_count(),
                  "wall_seconds": round(time.perf_counter() - t0, 1),
                  "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
        if args.json:  # after every model, so that an interrupted comparison keeps what it measured
            atomic_write_bytes(Path(args.json), (json.dumps(report, indent=2) + "\n").encode())
    print(table(rows))


if __name__ == "__main__":
    main()
