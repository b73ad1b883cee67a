"""Real data: an SSD on MobileNetV2 (real ImageNet weights) trained on tiles of deepforest's two YELL aerial photos,
evaluated on the held-out OSBS_029 and SOAP_061 photos (never trained on).

    python benchmarks/real_trees.py [--out runs/trees] [key=value ...]

1. fetches the four pinned photos (PyPI wheel deepforest==2.1.0, see multibox.data.real);
2. writes the training tiles (400 px, overlap 0.25, boxes at least half inside) of the two YELL photos as a VOC
   root, and the two evaluation photos as another, every box labelled ``Tree`` (SOAP_061 says ``Dead`` / ``Alive``:
   both are trees for a one-class detector);
3. trains with ``multibox train`` on ``configs/trees_mobilenetv2.yaml`` (plus any overrides), evaluating VOC07 and
   VOC12 mAP@0.5 on the held-out photos during training;
4. writes the run folder (curves in plots/, metrics.jsonl, eval.json) and prints the figures for docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from multibox.data.datasets.voc import VOCDataset, voc_xml
from multibox.data.real import EVALUATION_SAMPLES, TRAINING_SAMPLES, deepforest_voc
from multibox.data.tiles import TiledDataset
from multibox.fileio import atomic_write_bytes, atomic_write_with


def _write_voc(samples, root: Path, split: str) -> Path:
    """Write (image, target) samples as a one-class (``Tree``) VOC root."""
    from PIL import Image

    ids = []
    for image, target in samples:
        name = target.image_id.replace("@", "_")
        ids.append(name)
        atomic_write_with(root / "JPEGImages" / f"{name}.png", lambda p, im=image: Image.fromarray(im).save(p, "PNG"))
        xml = voc_xml(f"{name}.png", image.shape[:2], target.boxes, ["Tree"] * len(target), target.difficult,
                      target.iscrowd)
        atomic_write_bytes(root / "Annotations" / f"{name}.xml", xml)
    atomic_write_bytes(root / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{i}\n" for i in ids).encode())
    atomic_write_bytes(root / "classes.txt", b"Tree\n")
    return root


def prepare(data_root: Path, tile: int = 400, overlap: float = 0.25) -> tuple[Path, Path, dict]:
    """Training tiles and evaluation photos as two VOC roots under ``data_root``; returns (train, eval, counts)."""
    raw_train = deepforest_voc(list(TRAINING_SAMPLES), data_root / "raw-train", split="all")
    raw_eval = deepforest_voc(list(EVALUATION_SAMPLES), data_root / "raw-eval", split="test")
    train_src = VOCDataset(raw_train, split="all", classes=raw_train / "classes.txt")
    tiles = TiledDataset(train_src, tile=tile, overlap=overlap, min_visible=0.5)
    train_root = _write_voc((tiles[i] for i in range(len(tiles))), data_root / "train", "train")
    eval_src = VOCDataset(raw_eval, split="test", classes=raw_eval / "classes.txt")
    eval_root = _write_voc((eval_src[i] for i in range(len(eval_src))), data_root / "eval", "test")
    counts = {"train_tiles": len(tiles), "train_boxes": int(sum(len(tiles[i][1]) for i in range(len(tiles)))),
              "eval_images": len(eval_src), "eval_boxes": int(sum(len(eval_src[i][1]) for i in range(len(eval_src))))}
    return train_root, eval_root, counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.add_argument("--out", default="runs/trees", help="run folder")
    p.add_argument("--data", default=None, help="where to write the VOC roots (default OUT/data)")
    args = p.parse_args()
    out = Path(args.out)
    data_root = Path(args.data) if args.data else out.parent / (out.name + "-data")
    train_root, eval_root, counts = prepare(data_root)
    print(json.dumps(counts))
    from multibox.config import load_config
    from multibox.engine.trainer import Trainer

    cfg = load_config("trees_mobilenetv2", [f"data.train={train_root}", f"data.val={eval_root}", *args.overrides])
    summary = Trainer(cfg, out).run()
    from multibox.engine.evaluator import evaluate_model
    from multibox.weights_io import load_model

    model = load_model(out / "checkpoints" / "last.safetensors")
    val = VOCDataset(eval_root, split="test", classes=eval_root / "classes.txt")
    results = {m: evaluate_model(model, val, metric=m, progress=False).to_json() for m in ("voc07", "voc12")}
    per_image = {}
    for name in EVALUATION_SAMPLES:
        one = VOCDataset(eval_root, split="test", classes=eval_root / "classes.txt")
        keep = [i for i in range(len(one)) if one[i][1].image_id == name]
        if keep:
            from torch.utils.data import Subset

            sub = Subset(one, keep)
            sub.class_names = one.class_names  # type: ignore[attr-defined]
            per_image[name] = evaluate_model(model, sub, metric="voc12", progress=False).to_json()["mAP"]
    report = {"data": counts, "summary": summary,
              "mAP50_voc07": results["voc07"]["mAP"], "mAP50_voc12": results["voc12"]["mAP"],
              "AP50_voc12_per_image": per_image}
    atomic_write_bytes(out / "real_trees.json", (json.dumps(report, indent=2, default=float) + "\n").encode())
    print(json.dumps({k: v for k, v in report.items() if k != "summary"}, indent=2, default=float))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    np.set_printoptions(precision=4)
    main()
