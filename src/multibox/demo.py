"""The README's main job on built-in defaults: build a model, run it on a real photo, write result files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .classes import VOC_CLASSES
from .data import EvalTransform, load_image
from .fileio import atomic_save_npy, atomic_write_bytes

__all__ = ["default_photo", "run_demo"]


def default_photo() -> Path:
    """A real photo that ships with an installed dependency: matplotlib's ``grace_hopper.jpg``."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: matplotlib's sample photo is missing; pass --image FILE")
    return path


def run_demo(out: Path, model_name: str = "ssd300_vgg16", image: str | None = None, seed: int = 0,
             show_top: int = 10) -> dict:
    """Build ``model_name`` (21 VOC classes, random weights from ``seed``), detect on one photo, write files.

    Writes into ``out``: ``detections.json`` (COCO-style records, boxes in original-image pixels),
    ``<photo>_detections.png`` (the ``show_top`` best boxes drawn), ``priors.npy`` (``[P, 4]`` normalized
    cxcywh) and ``summary.json``. Returns the summary.
    """
    from .models import build_model, model_info
    from .postprocess import PostProcess
    from .viz import draw_detections

    torch.manual_seed(seed)
    path = Path(image) if image else default_photo()
    print(f"[1/4] building {model_name} (21 VOC classes; random weights: no pretrained SSD is installed yet)")
    model = build_model(model_name, num_classes=len(VOC_CLASSES), class_names=list(VOC_CLASSES)).eval()
    post = PostProcess.from_model(model)
    print(f"[2/4] reading {path}")
    img = load_image(path)
    transform = EvalTransform(model.input_spec)
    print(f"[3/4] detecting on a {img.shape[1]}x{img.shape[0]} image")
    t0 = time.perf_counter()
    with torch.inference_mode():
        x, sizes = transform([img])
        out_net = model(x.contiguous(memory_format=torch.channels_last))
        dets = post(out_net.cls_logits, out_net.box_deltas, sizes)[0]
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    records = dets.to_json_records(image_id=path.name)
    atomic_write_bytes(out / "detections.json", json.dumps(records, indent=1).encode())
    atomic_save_npy(out / "priors.npy", model.priors.numpy())
    top = min(show_top, len(dets))
    png = out / f"{path.stem}_detections.png"
    draw_detections(img, dets.boxes[:top].numpy(), dets.scores[:top].numpy(), dets.names()[:top], png)
    info = model_info(model_name)
    summary = {
        "model": model_name,
        "weights": f"random (torch.manual_seed({seed}))",
        "image": str(path),
        "image_size": [int(img.shape[0]), int(img.shape[1])],
        "num_priors": int(model.priors.shape[0]),
        "num_params": info["num_parameters"],
        "num_detections": len(dets),
        "seconds": round(seconds, 4),
        "files": sorted(p.name for p in out.iterdir() if not p.name.startswith(".")),
    }
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
    print(f"[4/4] {len(dets)} detections in {seconds:.2f} s (random weights: boxes and scores are meaningless)")
    print(f"wrote {out}/detections.json, {png.name}, priors.npy, summary.json")
    return summary
