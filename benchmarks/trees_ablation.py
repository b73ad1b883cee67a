"""Ablation of the trees recipe: each change on or off, at a fixed number of steps, scored like
``benchmarks/real_trees.py`` (held-out photos OSBS_029 + SOAP_061, and held-out tiles of the training site, the
split recipes are chosen on).

    python benchmarks/trees_ablation.py [--out runs/ablation] [--steps 1800] [--jobs 1] [--only a,b] [key=value ...]

Every variant is ``python benchmarks/real_trees.py --recipe trees_mobilenetv2 steps=STEPS <its overrides>
<common overrides>`` in its own run folder; ``--jobs N`` runs N at once (a GPU machine: ``device=cuda
data.num_workers=4``). A fixed step count, not a time budget, makes the variants comparable on any machine; the
steps a variant affords in the 35-minute CPU budget follow from its measured step time (docs/small-objects.md).
Writes ``OUT/ablation.json`` (one row per variant, with its overrides) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from multibox.fileio import atomic_write_bytes

#: name -> overrides on top of ``trees_mobilenetv2`` (the recipe as shipped is ``base``).
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "no_fpn": ["model.kwargs.neck=null"],
    "no_stride8_no_fpn": ["model.kwargs.stride8=false", "model.kwargs.neck=null"],
    "old_priors_0.06-0.5": ["model.kwargs.s_min=0.06", "model.kwargs.s_max=0.5"],
    "no_overhead_aug": ["data.aug.vflip=0", "data.aug.rot90=0"],
    "color2": ["data.aug.color=2.0"],
    "scale_jitter": ["data.aug.scale_jitter=[0.6,1.4]"],
    "color2_scale_jitter": ["data.aug.color=2.0", "data.aug.scale_jitter=[0.6,1.4]"],
    "iou0.4": ["loss.iou_threshold=0.4"],
    "lr2e-3": ["optim.lr=0.002"],
    "ema0.998": ["ema.decay=0.998"],
    "focal": ["loss.name=focal"],
    "loc_weight2": ["loss.loc_weight=2.0"],
}


def run_variant(name: str, overrides: list[str], common: list[str], steps: int, out: Path) -> dict[str, Any]:
    """Train and score one variant in ``out/name``; returns its row (``error`` set when the run failed)."""
    folder = out / name
    cmd = [sys.executable, str(Path(__file__).with_name("real_trees.py")), "--recipe", "trees_mobilenetv2",
           "--out", str(folder), f"steps={steps}", *overrides, *common]
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.log", "w", encoding="utf-8") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    row: dict[str, Any] = {"variant": name, "overrides": overrides, "steps": steps,
                           "wall_seconds": round(time.perf_counter() - t0, 1)}
    result = folder / "real_trees.json"
    if rc != 0 or not result.is_file():
        row["error"] = f"exit {rc}; see {out / (name + '.log')}"
        return row
    rep = json.loads(result.read_text(encoding="utf-8"))
    row.update({
        "AP50_heldout_photos": rep["AP50_voc12_heldout_photos"],
        "AP50_per_photo": rep["AP50_voc12_per_photo"],
        "AP_coco_heldout_photos": rep["AP_coco_heldout_photos"],
        "AP50_site_holdout_tiles": rep["AP50_voc12_training_site_holdout_tiles"],
        "train_seconds": rep["train_seconds"],
        "seconds_per_step": rep["train_seconds"] / max(rep["steps"], 1),
        "curve_heldout_photos": rep["curve_voc12_heldout_photos"],
        "tta": rep.get("tta"),
        "AP50_heldout_photos_no_tta": rep.get("AP50_voc12_heldout_photos_no_tta"),
        "AP50_site_holdout_tiles_no_tta": rep.get("AP50_voc12_training_site_holdout_tiles_no_tta"),
    })
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows (AP50 as fractions)."""
    lines = ["| variant | steps | AP50 held-out photos | OSBS_029 | SOAP_061 | COCO AP | AP50 site holdout |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['steps']} | failed: {r['error']} | | | | |")
            continue
        pp = r["AP50_per_photo"]
        lines.append(f"| {r['variant']} | {r['steps']} | {r['AP50_heldout_photos']:.3f} | {pp['OSBS_029']:.3f} | "
                     f"{pp['SOAP_061']:.3f} | {r['AP_coco_heldout_photos']:.3f} | "
                     f"{r['AP50_site_holdout_tiles']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("common", nargs="*", help="overrides applied to every variant (key=value)")
    p.add_argument("--out", default="runs/ablation", help="folder of the runs and ablation.json")
    p.add_argument("--steps", type=int, default=1800, help="training steps of every variant")
    p.add_argument("--jobs", type=int, default=1, help="variants run at once")
    p.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:K=V;K=V",
                   help="an extra variant (repeatable), e.g. 'long:steps=5000'")
    args = p.parse_args()
    variants = dict(VARIANTS)
    for spec in args.variant:
        name, _, ovr = spec.partition(":")
        variants[name] = [o for o in ovr.split(";") if o]
    names = [n for n in args.only.split(",") if n] or list(variants)
    unknown = [n for n in names if n not in variants]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {sorted(variants)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []

    def one(name: str) -> dict[str, Any]:
        row = run_variant(name, variants[name], list(args.common), args.steps, out)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "curve_heldout_photos"}), flush=True)
        done = sorted(rows, key=lambda r: names.index(r["variant"]))
        atomic_write_bytes(out / "ablation.json", (json.dumps({"common": args.common, "rows": done}, indent=2)
                                                   + "\n").encode())
        return row

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, names))
    print(table(sorted(rows, key=lambda r: names.index(r["variant"]))))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
