"""int8 accuracy on trained models (issue 13): mAP of the int8 runtime against fp32 on the same test images.

    python benchmarks/int8_accuracy.py [--synthetic CKPT] [--trees CKPT] [--methods minmax percentile]
        [--calib-images 200] [--json benchmarks/results/int8-accuracy.json]

For each checkpoint (a training run's ``checkpoints/last.safetensors``; the run's ``config.yaml`` beside
``checkpoints/`` says which data it was trained on):

1. the test split of its data: the synthetic recipe's 300 test images (``data.train: synthetic``), or the held-out
   tree photos OSBS_029 + SOAP_061 (``data.train: deepforest_trees``);
2. calibration images: the first ``--calib-images`` images of the *train* split, in the order of its image list
   (linked into a temporary folder; never a test image); the histogram methods (``percentile``, ``entropy``) on
   the first ``--hist-calib-images`` (default 16) of them only: ONNX Runtime's histogram calibrators keep every
   activation of every calibration image in memory before building the histograms (the trees model at 448x448
   with 68 images went past 18 GB and was killed);
3. fp32: ``Detector.from_file(CKPT, runtime="onnxruntime")`` (the default CPU runtime, equal to eager mode within
   1e-4) with the evaluation's post-processing; int8: the same with ``runtime="onnxruntime-int8"`` calibrated on
   those images with each of ``--methods`` (all layers int8). This is what
   ``multibox eval CKPT --data ROOT --split test --metric M --runtime onnxruntime-int8 --calibrate DIR`` runs;
4. metrics: the synthetic recipe's ``voc07`` and ``voc12``; on the trees ``voc12`` without and with the dihedral
   test-time augmentation (as benchmarks/real_trees.py reports them), per photo, and on the held-out tiles of the
   training site (split ``holdout``: 20 tiles, 447 boxes of which 88 difficult; no calibration image), whose
   boxes resolve a change of 0.01 better than the 98 of the two photos;
5. writes the JSON after each run (``delta`` = int8 - fp32, ``within_target``: ``|delta| <= 0.01``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import onnxruntime
import torch
from torch.utils.data import Subset

from multibox.config import load_config
from multibox.data.datasets import open_dataset
from multibox.data.real import EVALUATION_SAMPLES
from multibox.detector import Detector
from multibox.engine.evaluator import EVAL_POSTPROCESS, evaluate_model
from multibox.engine.trainer import ensure_synthetic, ensure_trees
from multibox.fileio import atomic_write_bytes

TARGET = 0.01
DEFAULT_SYNTHETIC = "/work/runs/syn-fp32-seed1/checkpoints/last.safetensors"
DEFAULT_TREES = "/work/runs/cand1b/checkpoints/last.safetensors"


def data_root(ckpt: Path) -> tuple[str, Path, Any]:
    """``(kind, VOC root, config)`` of the run that wrote ``ckpt`` (``RUN/checkpoints/NAME``)."""
    cfg = load_config(ckpt.parent.parent / "config.yaml")
    if cfg.data.train == "synthetic":
        return "synthetic", ensure_synthetic(cfg, progress=False), cfg
    if cfg.data.train == "deepforest_trees":
        return "trees", ensure_trees(cfg), cfg
    raise ValueError(f"{ckpt}: trained on {cfg.data.train!r}; this script knows synthetic and deepforest_trees")


def calibration_folder(root: Path, limit: int, dest: Path) -> list[str]:
    """Link the first ``limit`` train images of the VOC ``root`` into ``dest`` (numbered, so that the calibration
    takes them in list order); returns their ids."""
    ids = [s.strip() for s in (root / "ImageSets" / "Main" / "train.txt").read_text().splitlines() if s.strip()]
    images = {p.stem: p for p in (root / "JPEGImages").iterdir()}
    chosen = ids[:limit]
    for i, image_id in enumerate(chosen):
        src = images[image_id]
        (dest / f"{i:05d}{src.suffix}").symlink_to(src)
    return chosen


def score(det: Detector, dataset: Any, metric: str, tta: str | None = None) -> float:  # noqa: ANN401
    """mAP (a fraction) of ``metric`` for the detector on ``dataset``."""
    return float(evaluate_model(det, dataset, metric=metric, progress=False, tta=tta).mAP)


def evaluate(kind: str, det: Detector, test: Any, holdout: Any = None) -> dict[str, float]:  # noqa: ANN401
    """The metrics of one detector (see the module docstring, step 4)."""
    if kind == "synthetic":
        return {"voc07": score(det, test, "voc07"), "voc12": score(det, test, "voc12")}
    out = {"voc12": score(det, test, "voc12"), "voc12_tta_dihedral": score(det, test, "voc12", "dihedral"),
           "voc12_holdout_tiles": score(det, holdout, "voc12")}
    for name in EVALUATION_SAMPLES:
        one = Subset(test, [i for i in range(len(test)) if test[i][1].image_id == name])
        one.class_names = test.class_names  # type: ignore[attr-defined]
        out[f"voc12_{name}"] = score(det, one, "voc12")
    return out


def run_model(ckpt: Path, methods: list[str], calib_images: int, hist_calib_images: int, batch_size: int,
              out: dict[str, Any], save: Any) -> dict[str, Any]:  # noqa: ANN401
    """fp32 and int8 (each of ``methods``) metrics of ``ckpt`` into ``out``; ``save()`` after each run."""
    kind, root, cfg = data_root(ckpt)
    test = open_dataset(root, format="voc", split="test", classes=root / "classes.txt")
    holdout = open_dataset(root, format="voc", split="holdout", classes=root / "classes.txt") \
        if kind == "trees" else None
    out.update({"checkpoint": str(ckpt), "data": kind, "root": str(root), "model": cfg.model.name,
                "input_size": list(cfg.model.kwargs.get("image_size", [])) or None, "test_images": len(test),
                "test_boxes": sum(len(test[i][1].boxes) for i in range(len(test))), "runs": {}})
    common = {"batch_size": batch_size, "postprocess": EVAL_POSTPROCESS}
    t0 = time.perf_counter()
    fp32 = Detector.from_file(ckpt, "cpu", runtime="onnxruntime", **common)
    out["runs"]["fp32"] = {"runtime": "onnxruntime", "metrics": evaluate(kind, fp32, test, holdout),
                           "seconds": time.perf_counter() - t0}
    print(f"{kind} fp32: {out['runs']['fp32']['metrics']}", flush=True)
    save()
    with tempfile.TemporaryDirectory(prefix="int8-calib-") as tmp:
        ids = calibration_folder(root, calib_images, Path(tmp))
        out["calibration"] = {"split": "train", "images": len(ids), "first": ids[:3]}
        for method in methods:
            t0 = time.perf_counter()
            n = calib_images if method == "minmax" else min(calib_images, hist_calib_images)
            det = Detector.from_file(ckpt, "cpu", runtime="onnxruntime-int8",
                                     runtime_options={"calibrate": tmp, "calib_images": n, "method": method},
                                     **common)
            metrics = evaluate(kind, det, test, holdout)
            ref = out["runs"]["fp32"]["metrics"]
            delta = {k: metrics[k] - ref[k] for k in metrics}
            out["runs"][f"int8_{method}"] = {
                "runtime": det.runtime_name, "method": method, "calibration_images": min(n, len(ids)),
                "metrics": metrics, "delta": delta,
                "within_target": {k: abs(v) <= TARGET for k, v in delta.items()},
                "seconds": time.perf_counter() - t0}
            print(f"{kind} int8 {method}: {metrics} (delta {', '.join(f'{k} {v:+.4f}' for k, v in delta.items())})",
                  flush=True)
            save()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--synthetic", default=DEFAULT_SYNTHETIC, help="checkpoint trained on the synthetic recipe")
    p.add_argument("--trees", default=DEFAULT_TREES, help="checkpoint trained on the trees recipe")
    p.add_argument("--methods", nargs="+", default=["minmax", "percentile"], help="calibration methods")
    p.add_argument("--calib-images", type=int, default=200, help="train images to calibrate on (default 200)")
    p.add_argument("--hist-calib-images", type=int, default=16,
                   help="at most this many for the histogram methods (percentile, entropy; default 16)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    p.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    p.add_argument("--json", default="benchmarks/results/int8-accuracy.json", help="output JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "benchmark": "int8 accuracy (issue 13)", "target_abs_map_change": TARGET,
        "int8": "ONNX Runtime QDQ, per-channel int8 weights, uint8 activations, all layers int8",
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "machine": platform.processor()
        or platform.machine(), "cpu_count": os.cpu_count(), "threads": args.threads,
        "load_average_before": list(os.getloadavg()), "models": {}}
    def save() -> None:
        result["load_average_after"] = list(os.getloadavg())
        atomic_write_bytes(Path(args.json), (json.dumps(result, indent=2) + "\n").encode())

    for key in ("synthetic", "trees"):
        ckpt = getattr(args, key)
        if ckpt:
            result["models"][key] = {}
            run_model(Path(ckpt), args.methods, args.calib_images, args.hist_calib_images, args.batch_size,
                      result["models"][key], save)
    save()
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
