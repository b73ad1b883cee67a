"""The README's main job on built-in defaults: real pretrained detectors on real photos, then train the
``synthetic`` recipe, evaluate it and draw its detections.

0. runs the zoo's converted face detector (Caffe) and person detector (TF Object Detection API) on real photos
   (matplotlib's Grace Hopper portrait, imgaug's quokka photo) and writes the annotated images;
1. generates the synthetic shapes dataset (easy profile; cached after the first run) and trains an SSD on
   MobileNetV2 (ImageNet weights) on it
   (``multibox train synthetic``), evaluating VOC07 mAP on the held-out test split during and after training;
2. prints the final mAP with the loss and mAP curves (text here, PNGs in the run folder);
3. runs the trained model on a few test images and draws its detections.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from .config import load_config
from .data.image_io import load_image
from .data.real import RealDataUnavailable, quokka
from .detector import Detector
from .engine.trainer import Trainer, open_split, sparkline
from .fileio import atomic_write_bytes
from .viz import annotated_suffix, draw_detections

__all__ = ["run_demo", "default_photo"]


def default_photo() -> Path:
    """A real photo that ships with an installed dependency: matplotlib's ``grace_hopper.jpg``."""
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: matplotlib's sample photo is missing")
    return path


def run_pretrained_detectors(out: Path, models: tuple[str, ...] = ("face-res10-300", "person-ssdlite-mbv2"),
                             conf: float = 0.5) -> list[Path]:
    """Run the zoo detectors on the demo photos, drawing ``out/<model>_<photo>.png``. A model whose files cannot
    be fetched (offline, nothing cached) is reported and skipped."""
    photos = [default_photo()]
    try:
        photos.append(quokka()[0])
    except RealDataUnavailable as e:
        print(f"[0/3] (quokka photo unavailable: {e})")
    written: list[Path] = []
    for name in models:
        try:
            detector = Detector.from_pretrained(name)
        except RealDataUnavailable as e:
            print(f"[0/3] {name}: skipped ({e})")
            continue
        for photo in photos:
            image = load_image(photo)
            det = detector(image, conf=conf)
            names = [detector.class_names[int(k)] for k in det.labels]
            path = draw_detections(image, det.boxes.numpy(), det.scores.numpy(), names,
                                   out / f"{name}_{Path(photo).stem}{annotated_suffix(photo)}")
            written.append(path)
            best = f", best score {float(np.max(det.scores.numpy())):.3f}" if len(det) else ""
            print(f"[0/3] {name} on {Path(photo).name}: {len(det)} detections{best} -> {path}")
    return written


def run_demo(out: Path, overrides: list[str] | None = None, num_images: int = 4, progress: bool = True,
             pretrained_first: bool = True, quiet: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train and evaluate the ``synthetic`` recipe into ``out/run`` (``overrides``: ``key=value`` config
    overrides), then draw the detections of ``num_images`` test images into ``out``. ``progress``: progress
    bars; ``quiet``: no training log lines; ``overwrite``: replace a previous demo's run in ``out/run`` (else a
    used ``out/run`` is refused before any work).

    Writes ``out/run/`` (the training run: config, metrics.jsonl, checkpoints, eval.json, plots/),
    ``out/detections.json`` (COCO-style records with the image ids, boxes in image pixels),
    ``out/<id>_detections.png`` and ``out/summary.json``. Returns the summary.
    """
    t0 = time.perf_counter()
    out = Path(out)
    cfg = load_config("synthetic", list(overrides or []))
    trainer = Trainer(cfg, out / "run", progress=progress, quiet=quiet, overwrite=overwrite)  # checks out/run first
    pretrained = run_pretrained_detectors(out / "pretrained") if pretrained_first else []
    print(f"[1/3] training {cfg.model.name} on the synthetic shapes ({cfg.data.synthetic.profile} profile, "
          f"{cfg.data.synthetic.num_train} train / {cfg.data.synthetic.num_test} test images) for {cfg.steps} steps",
          flush=True)
    summary = trainer.run()
    rows = [json.loads(ln) for ln in (out / "run" / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    losses = [r["loss"] for r in rows if r.get("kind") == "train"]
    maps = [(r["step"], r["mAP"]) for r in rows if r.get("kind") == "eval"]
    print(f"[2/3] VOC07 mAP@0.5 on {cfg.data.synthetic.num_test} held-out images: {summary['mAP']:.4f} "
          f"(trained in {summary['train_seconds']:.0f} s, {summary['images_per_s']:.1f} images/s)")
    if losses:
        print(f"      loss {losses[0]:7.3f} {sparkline(losses, 50)} {losses[-1]:.3f}")
    if maps:
        print("      mAP  " + "  ".join(f"step {s}: {m:.4f}" for s, m in maps))
    for plot in summary["plots"]:
        print(f"      curve: {plot}")

    test = open_split(cfg, "val")
    drawn = _draw_test_detections(out, summary["checkpoint"], test, num_images)
    print(f"[3/3] detections of the trained model on {len(drawn)} test images: "
          + ", ".join(str(p) for p in drawn))
    result = {"mAP": summary["mAP"], "metric": summary["metric"], "run": summary["run"],
              "train_seconds": summary["train_seconds"], "total_seconds": time.perf_counter() - t0,
              "images": [str(p) for p in drawn], "plots": summary["plots"],
              "pretrained_images": [str(p) for p in pretrained]}
    atomic_write_bytes(out / "summary.json", (json.dumps(result, indent=2) + "\n").encode())
    print(f"done in {result['total_seconds']:.0f} s; everything is in {out}/")
    return result


def _draw_test_detections(out: Path, checkpoint: str, dataset: Any, num_images: int) -> list[Path]:
    detector = Detector.from_file(checkpoint, runtime="eager")
    records: list[dict[str, Any]] = []
    drawn = []
    for i in range(min(num_images, len(dataset))):
        image, target = dataset[i]
        det = detector(image, conf=0.5)
        records += det.to_json_records(image_id=target.image_id)
        names = [detector.class_names[int(k)] for k in det.labels]
        drawn.append(draw_detections(image, det.boxes.numpy(), det.scores.numpy(), names,
                                     out / f"{target.image_id}_detections.png"))
    atomic_write_bytes(out / "detections.json", (json.dumps(records, indent=1) + "\n").encode())
    return drawn
