"""``multibox bench data``: our SSD training pipeline against torchvision.transforms.v2's SSD recipe.

Both pipelines take the same decoded images (uint8 RGB, about 500x375, with boxes) and produce a 300x300
training sample (normalized float tensor + boxes). torchvision's recipe is the one of its detection references:
``RandomPhotometricDistort, RandomZoomOut, RandomIoUCrop, RandomHorizontalFlip, Resize, SanitizeBoundingBoxes``
(plus the float conversion both sides need). Both run in this one process with the same torch thread count
(default 1, as in a DataLoader worker), alternating passes so that machine load hits both alike; decoding is
excluded from both (it is the same for both).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..commands.options import add_quiet_option, check_output_file, positive_int, quiet_output
from ..fileio import atomic_write_bytes

if TYPE_CHECKING:
    import numpy as np

# Imports inside functions below are heavy (numpy, torch, torchvision and the data pipeline): `multibox --help`
# imports this module (it registers `multibox bench data`) and must stay at ~0.1 s.

__all__ = ["register", "run_data_benchmark"]


def _sample_images(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``n`` (image [H, W, 3] uint8, boxes [k, 4] xyxy px, labels [k]) synthetic scenes with at least one box.

    Images have a long side of 500 px and a short side of 300-500 px (``SyntheticShapes(size=500)``).
    """
    import numpy as np

    from ..data.synth import SyntheticShapes

    ds = SyntheticShapes(4 * n, seed=seed, size=500)
    out = []
    for i in range(len(ds)):
        img, tgt = ds[i]
        if len(tgt):
            out.append((img, tgt.boxes.astype(np.float32), tgt.labels.astype(np.int64)))
        if len(out) == n:
            break
    return out


def _torchvision_pipeline(mean: tuple[float, float, float], size: tuple[int, int]):  # noqa: ANN202
    import torch
    from torchvision.transforms import v2 as T

    return T.Compose([
        T.RandomPhotometricDistort(p=1.0),
        T.RandomZoomOut(fill=list(mean)),
        T.RandomIoUCrop(),
        T.RandomHorizontalFlip(p=0.5),
        T.Resize(size, antialias=False),
        T.SanitizeBoundingBoxes(),
        T.ToDtype(torch.float32, scale=False),
    ])


def run_data_benchmark(json_path: Path | None = None, images: int = 64, passes: int = 3, threads: int = 1,
                       seed: int = 0) -> dict:
    """Time both pipelines over ``images`` samples, ``passes`` times each (alternating); return images/s."""
    import numpy as np
    import torch
    from torchvision import tv_tensors

    from ..data.augment import ssd_train_transform
    from ..data.types import Target
    from ..models.spec import VGG_INPUT_SPEC

    torch.set_num_threads(threads)
    data = _sample_images(images, seed)
    spec = VGG_INPUT_SPEC
    ours = ssd_train_transform(spec)
    tv = _torchvision_pipeline(spec.mean, spec.image_size)
    targets = [Target(boxes=b, labels=lab, image_id=str(i), orig_size=img.shape[:2])
               for i, (img, b, lab) in enumerate(data)]
    tv_inputs = [
        (tv_tensors.Image(torch.from_numpy(img).permute(2, 0, 1).contiguous()),
         {"boxes": tv_tensors.BoundingBoxes(torch.from_numpy(b), format="XYXY", canvas_size=img.shape[:2]),
          "labels": torch.from_numpy(lab)})
        for img, b, lab in data
    ]

    def run_ours(pass_index: int) -> None:
        for i, ((img, _, _), tgt) in enumerate(zip(data, targets, strict=True)):
            rng = np.random.default_rng([seed, pass_index, i])
            x, _ = ours(img, tgt, rng)
            x = spec.normalize(x) if x.dtype == torch.uint8 else x

    def run_tv(pass_index: int) -> None:
        torch.manual_seed(seed * 1000 + pass_index)
        for img, tgt in tv_inputs:
            out_img, _ = tv(img, tgt)
            spec.normalize(out_img)

    run_ours(passes)  # warm-up, with draws of its own
    run_tv(passes)
    t_ours, t_tv = [], []
    for p in range(passes):
        t0 = time.perf_counter()
        run_ours(p)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run_tv(p)
        t_tv.append(time.perf_counter() - t0)
    ours_ips = images / statistics.median(t_ours)
    tv_ips = images / statistics.median(t_tv)
    result = {
        "benchmark": "data",
        "threads": threads,
        "images": images,
        "passes": passes,
        "input_long_side": 500,
        "output_size_hw": list(spec.image_size),
        "images_per_s": ours_ips,
        "torchvision_images_per_s": tv_ips,
        "speedup": ours_ips / tv_ips,
    }
    print(f"multibox bench data: {images} images x {passes} passes, {threads} thread(s): multibox "
          f"{ours_ips:.1f} images/s, torchvision.transforms.v2 {tv_ips:.1f} images/s, speedup {ours_ips / tv_ips:.2f}x")
    if json_path is not None:
        atomic_write_bytes(json_path, json.dumps(result, indent=2).encode())
        print(f"wrote {json_path}")
    return result


def _cmd(args: argparse.Namespace) -> int:
    if args.json:
        check_output_file(args.json, "--json")
    with quiet_output(args):
        run_data_benchmark(Path(args.json) if args.json else None, images=args.num_images, passes=args.passes,
                           threads=args.threads)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``multibox bench data``."""
    p = subparsers.add_parser(
        "data", help="SSD training augmentation: multibox vs torchvision.transforms.v2",
        description="Runs our SSD training pipeline and torchvision.transforms.v2's SSD recipe on the same images "
                    "in one process and writes images_per_s, torchvision_images_per_s and speedup.")
    p.add_argument("--json", metavar="FILE", help="write the results to this JSON file")
    p.add_argument("--num-images", type=positive_int, default=64, help="images per pass (default 64)")
    p.add_argument("--passes", type=positive_int, default=3, help="timed passes per pipeline (median reported)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (default 1, like a loader worker)")
    add_quiet_option(p)
    p.set_defaults(func=_cmd)
