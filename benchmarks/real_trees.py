"""Real data: the ``trees`` recipe (SSD on MobileNetV2 from real ImageNet weights, trained on tiles of deepforest's
two YELL aerial photos) and every figure docs/results.md reports about it.

    python benchmarks/real_trees.py [--recipe trees] [--out runs/trees] [key=value ...]

1. trains with ``multibox train RECIPE`` (the recipe fetches the photos and cuts the tiles itself:
   ``data.train: deepforest_trees``, :func:`multibox.data.real.prepare_trees`), with any overrides;
2. evaluates the last checkpoint on the held-out photos OSBS_029 + SOAP_061 (never trained on; every box a
   ``Tree``): VOC07 and VOC2010+ AP50, COCO AP (0.5:0.95), and the VOC2010+ AP50 of each photo; and on the
   held-out tiles of the training site (split ``holdout``, for choosing recipes): VOC2010+ AP50; each with the
   recipe's test-time augmentation (``eval.tta``, e.g. ``dihedral``) and without it (``*_no_tta``);
3. writes ``OUT/real_trees.json`` (with the run's summary and learning curve) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from torch.utils.data import Subset

from multibox.commands.options import show_progress
from multibox.config import load_config
from multibox.data.datasets import open_dataset
from multibox.data.real import EVALUATION_SAMPLES
from multibox.engine.evaluator import evaluate_model
from multibox.engine.trainer import Trainer, ensure_trees
from multibox.fileio import atomic_write_bytes
from multibox.weights_io import load_model


def score(model: Any, dataset: Any, metric: str, tta: str | None = None) -> float:
    """The headline number (``mAP``, a fraction) of ``metric`` for ``model`` on ``dataset`` (with test-time
    augmentation ``tta``)."""
    return float(evaluate_model(model, dataset, metric=metric, progress=False, tta=tta).to_json()["mAP"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.add_argument("--recipe", default="trees", help="recipe or YAML file (default trees: 35-minute budget)")
    p.add_argument("--out", default="runs/trees", help="run folder")
    args = p.parse_args()
    out = Path(args.out)
    cfg = load_config(args.recipe, list(args.overrides))
    summary = Trainer(cfg, out, progress=show_progress()).run()  # no bar residue when logged to a file
    root = ensure_trees(cfg)
    info = json.loads((root / "trees.json").read_text(encoding="utf-8"))
    model = load_model(out / "checkpoints" / "last.safetensors")
    test = open_dataset(root, format="voc", split="test", classes=root / "classes.txt")
    holdout = open_dataset(root, format="voc", split="holdout", classes=root / "classes.txt")
    tta = cfg.eval.tta
    per_photo, per_photo_plain = {}, {}
    for name in EVALUATION_SAMPLES:
        one = Subset(test, [i for i in range(len(test)) if test[i][1].image_id == name])
        one.class_names = test.class_names  # type: ignore[attr-defined]
        per_photo[name] = score(model, one, "voc12", tta)
        per_photo_plain[name] = score(model, one, "voc12")
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if ln.strip()]
    report = {
        "data": info["splits"],
        "steps": summary["steps"], "train_seconds": summary["train_seconds"],
        "time_budget": summary.get("time_budget"),
        "tta": tta,
        "AP50_voc12_heldout_photos": score(model, test, "voc12", tta),
        "AP50_voc07_heldout_photos": score(model, test, "voc07", tta),
        "AP_coco_heldout_photos": score(model, test, "coco", tta),
        "AP50_voc12_per_photo": per_photo,
        "AP50_voc12_training_site_holdout_tiles": score(model, holdout, "voc12", tta),
        "AP50_voc12_heldout_photos_no_tta": score(model, test, "voc12"),
        "AP_coco_heldout_photos_no_tta": score(model, test, "coco"),
        "AP50_voc12_per_photo_no_tta": per_photo_plain,
        "AP50_voc12_training_site_holdout_tiles_no_tta": score(model, holdout, "voc12"),
        "curve_voc12_heldout_photos": [(r["step"], r["mAP"]) for r in rows if r.get("kind") == "eval"],
        "summary": summary,
    }
    atomic_write_bytes(out / "real_trees.json", (json.dumps(report, indent=2, default=float) + "\n").encode())
    print(json.dumps({k: v for k, v in report.items() if k != "summary"}, indent=2, default=float))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main()
