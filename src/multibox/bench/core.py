"""``multibox bench core``: SSD300 inference and training, multibox against torchvision, in one run.

Both sides use the same random weights (torchvision's ``ssd300_vgg16`` with 21 classes, loaded into our
SSD300 through the torchvision importer), the same thread count, and the same inputs. Cases are interleaved
(one repetition of each in turn) so that load on the shared machine hits both sides alike; each figure is the
median of the repetitions after one warm-up call (``--quick``: one call, no warm-up).

Paths compared:

* ``torchvision``: ``model(list_of_float_images)`` in eval mode (its own resize, normalize, network and
  ``postprocess_detections``); images are given as float tensors in [0, 1], converted outside the timer.
* ``multibox fp32``: uint8 images -> ``EvalTransform`` (bilinear resize on uint8, normalize) ->
  channels_last fp32 network -> batched ``PostProcess`` (Caffe DetectionOutput semantics, per-class NMS).
* ``multibox fast``: the same with the network under bf16 autocast (weights stay fp32).
* training: one SGD step at batch 8, 300x300, 3 boxes per image: torchvision's ``model(images, targets)``
  against our network + batched matching + ``MultiBoxLoss``.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.models.detection import ssd300_vgg16
from torchvision.ops import box_iou

from ..config import resolve_precision
from ..data import EvalTransform, load_image
from ..demo import default_photo
from ..fileio import atomic_write_bytes
from ..interop.torchvision import ssd300_from_torchvision_state_dict
from ..loss import MultiBoxLoss
from ..matching import build_targets
from ..postprocess import PostProcess
from ..runtime import keep_freed_memory
from .roofline import conv_peak_gflops, forward_gflop, rate_summary, train_step_gflop

__all__ = ["run_core_benchmark"]


def _median_times(cases: dict[str, Callable[[], object]], repeats: int, warmup: bool = True) -> dict[str, float]:
    if warmup:
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _photo_batch(batch: int, height: int = 375, width: int = 500) -> list[np.ndarray]:
    """``batch`` real-photo crops of ``height x width`` (matplotlib's grace_hopper.jpg, shifted crops)."""

    base = load_image(default_photo())
    big = np.asarray(Image.fromarray(base).resize((width + 64, height + 64), Image.BILINEAR))
    return [np.ascontiguousarray(big[(7 * i) % 64:(7 * i) % 64 + height, (5 * i) % 64:(5 * i) % 64 + width])
            for i in range(batch)]


def _random_targets(batch: int, size: int, gen: torch.Generator, per_image: int = 3) -> list[dict]:
    out = []
    for _ in range(batch):
        xy = torch.rand(per_image, 2, generator=gen) * (size * 0.6)
        wh = 20 + torch.rand(per_image, 2, generator=gen) * (size * 0.35)
        out.append({"boxes": torch.cat((xy, xy + wh), 1), "labels": torch.randint(1, 21, (per_image,), generator=gen)})
    return out


def run_core_benchmark(json_path: Path | None = None, repeats: int = 3, threads: int = 2,
                       quick: bool = False) -> dict:
    """Run the benchmark, print a table, write JSON to ``json_path`` (atomically) and return the results."""

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    # --quick is a smoke run of every code path and of the JSON contract, not a measurement: one image, one timed
    # call without warm-up, a batch-1 training step (bf16 on a CPU without native bf16 is emulated and slow)
    if quick:
        repeats = 1
    batches = [1] if quick else [1, 8]
    train_batch = 1 if quick else 8
    warmup = not quick
    peak_repeats = 1 if quick else 5

    tv = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).eval()
    ours = ssd300_from_torchvision_state_dict(tv.state_dict()).eval()
    ours_cl = ours.to(memory_format=torch.channels_last)
    post = PostProcess.from_model(ours, mode="per_class")
    transform = EvalTransform(ours.input_spec)

    def ours_infer(imgs: list[np.ndarray], bf16: bool) -> list:
        with torch.inference_mode():
            x, sizes = transform(imgs)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = ours_cl(x)
            return post(out.cls_logits.float(), out.box_deltas.float(), sizes)

    def tv_infer(imgs_f: list[torch.Tensor]) -> list:
        with torch.inference_mode():
            return tv(imgs_f)

    results: dict = {
        "benchmark": "core",
        "threads": threads,
        "repeats": repeats,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "image_size_hw": [375, 500],
        "allocator": _allocator(),
        "inference": {},
    }
    print(f"multibox bench core: {threads} threads, "
          + (f"median of {repeats} after 1 warm-up" if warmup else "one call of each path (--quick: no measurement)"))
    gflop_image = forward_gflop(ours, (1, 3, 300, 300))
    peak = conv_peak_gflops(peak_repeats)
    results["roofline"] = {"gflop_per_image": gflop_image, "conv_peak_gflops": peak, "inference": {}}
    for b in batches:
        imgs = _photo_batch(b)
        imgs_f = [torch.from_numpy(i).permute(2, 0, 1).float().div(255) for i in imgs]
        # Numeric checks before timing: same detections as torchvision, bf16 effect.
        ref = tv_infer(imgs_f)
        fp32 = ours_infer(imgs, bf16=False)
        fast = ours_infer(imgs, bf16=True)
        agree = _agreement(ref, fp32)
        agree_fast = _agreement(fp32, fast)
        with torch.inference_mode():  # the two networks on their own pre-processing of the same images
            tv_in, _ = tv.transform(imgs_f)
            tv_out = tv.head(list(tv.backbone(tv_in.tensors).values()))
            our_in, _ = transform(imgs)
            our_out = ours_cl(our_in.contiguous(memory_format=torch.channels_last))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                fast_out = ours_cl(our_in.contiguous(memory_format=torch.channels_last))
            fast_diff = {
                "cls_logits_max_abs_diff": float((fast_out.cls_logits.float() - our_out.cls_logits).abs().max()),
                "cls_logits_rms_rel_diff": float((fast_out.cls_logits.float() - our_out.cls_logits).pow(2).mean().sqrt()
                                                 / our_out.cls_logits.pow(2).mean().sqrt()),
                "box_deltas_max_abs_diff": float((fast_out.box_deltas.float() - our_out.box_deltas).abs().max()),
                "box_deltas_rms_rel_diff": float((fast_out.box_deltas.float() - our_out.box_deltas).pow(2).mean().sqrt()
                                                 / our_out.box_deltas.pow(2).mean().sqrt()),
            }
            net_diff = {
                "input_max_abs_diff": float((tv_in.tensors - our_in).abs().max()),
                "cls_logits_max_abs_diff": float((tv_out["cls_logits"] - our_out.cls_logits).abs().max()),
                "box_deltas_max_abs_diff": float((tv_out["bbox_regression"] - our_out.box_deltas).abs().max()),
                "cls_logits_abs_max": float(tv_out["cls_logits"].abs().max()),
            }

        # post-processing share: time the pieces of our fp32 path separately
        with torch.inference_mode():
            x, sizes = transform(imgs)
            x = x.contiguous(memory_format=torch.channels_last)
            net_out = ours_cl(x)

        def post_only(net_out: object = net_out, sizes: list = sizes) -> object:
            with torch.inference_mode():
                return post(net_out.cls_logits, net_out.box_deltas, sizes)

        t = _median_times({
            "torchvision": lambda imgs_f=imgs_f: tv_infer(imgs_f),
            "multibox_fp32": lambda imgs=imgs: ours_infer(imgs, bf16=False),
            "multibox_fast": lambda imgs=imgs: ours_infer(imgs, bf16=True),
            "multibox_postprocess": post_only,
        }, repeats, warmup)
        row = {
            "seconds_torchvision": t["torchvision"],
            "seconds_fp32": t["multibox_fp32"],
            "seconds_fast": t["multibox_fast"],
            "seconds_postprocess": t["multibox_postprocess"],
            "speedup_infer_fp32": t["torchvision"] / t["multibox_fp32"],
            "speedup_infer_fast": t["torchvision"] / t["multibox_fast"],
            "postprocess_share": t["multibox_postprocess"] / t["multibox_fp32"],
            "network_vs_torchvision": net_diff,
            "detections_vs_torchvision": agree,
            "fast_vs_fp32_network": fast_diff,
            "fast_vs_fp32_detections": agree_fast,
        }
        results["inference"][f"batch_{b}"] = row
        print(f"  inference batch {b}: torchvision {t['torchvision']:.3f} s, multibox fp32 "
              f"{t['multibox_fp32']:.3f} s ({row['speedup_infer_fp32']:.2f}x), fast {t['multibox_fast']:.3f} s "
              f"({row['speedup_infer_fast']:.2f}x), post-processing {100 * row['postprocess_share']:.1f}% "
              f"| same detections as torchvision: {agree['matched_fraction']:.3f}")

    # ---- training step ----
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(train_batch, 3, 300, 300, generator=gen) * 255
    targets = _random_targets(train_batch, 300, gen)
    tv_train = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21)
    tv_train.load_state_dict(tv.state_dict())
    tv_train.train()
    tv_opt = torch.optim.SGD(tv_train.parameters(), lr=1e-6, momentum=0.9)
    tv_images = [im / 255 for im in images]
    x_ours = ours.input_spec.normalize(images).contiguous(memory_format=torch.channels_last)
    gmax = max(len(t["boxes"]) for t in targets)
    gt_boxes = torch.zeros(train_batch, gmax, 4)
    gt_labels = torch.zeros(train_batch, gmax, dtype=torch.long)
    gt_valid = torch.zeros(train_batch, gmax, dtype=torch.bool)
    for i, tgt in enumerate(targets):
        n = len(tgt["boxes"])
        gt_boxes[i, :n] = tgt["boxes"] / 300
        gt_labels[i, :n] = tgt["labels"]
        gt_valid[i, :n] = True
    criterion = MultiBoxLoss()
    share: dict[str, list[float]] = {"match_loss": [], "total": []}

    def tv_step() -> float:
        losses = tv_train(tv_images, targets)
        loss = sum(losses.values())
        tv_opt.zero_grad(set_to_none=True)
        loss.backward()
        tv_opt.step()
        return float(loss.detach())

    def make_our_step(bf16: bool) -> Callable[[], float]:
        model = ssd300_from_torchvision_state_dict(tv.state_dict()).to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)

        def step() -> float:
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x_ours)
            t1 = time.perf_counter()
            labels, deltas, _ = build_targets(model.priors, gt_boxes, gt_labels, gt_valid, model.box_coder)
            loss = criterion(out.cls_logits.float(), out.box_deltas.float(), labels, deltas).total
            t2 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t3 = time.perf_counter()
            if not bf16:
                share["match_loss"].append(t2 - t1)
                share["total"].append(t3 - t0)
            return float(loss.detach())

        return step

    train_cases = {"torchvision": tv_step, "multibox": make_our_step(False), "multibox_bf16": make_our_step(True)}
    # a bf16 training step without native bf16 (AVX2 only) is emulated: ~30x an fp32 step; --quick leaves it out
    skip_bf16_train = quick and resolve_precision("auto", torch.device("cpu")) != "bf16"
    if skip_bf16_train:
        del train_cases["multibox_bf16"]
    t = _median_times(train_cases, repeats, warmup)
    bf16_step = t.get("multibox_bf16")
    gflop_step = train_step_gflop(ours, (train_batch, 3, 300, 300))
    peak = max(peak, conv_peak_gflops(peak_repeats))  # measured before and after the timings: the better of the two
    results["roofline"]["conv_peak_gflops"] = peak
    peak_bf16 = conv_peak_gflops(peak_repeats, dtype=torch.bfloat16)
    results["roofline"]["conv_peak_gflops_bf16"] = peak_bf16
    for b in batches:
        row = results["inference"][f"batch_{b}"]
        summary = rate_summary(gflop_image * b, {"torchvision": row["seconds_torchvision"],
                                                 "multibox_fp32": row["seconds_fp32"],
                                                 "multibox_fast": row["seconds_fast"]}, "torchvision", peak)
        summary["speedup_bound_bf16"] = peak_bf16 / summary["torchvision_gflops"]
        results["roofline"]["inference"][f"batch_{b}"] = summary
    results["roofline"]["train"] = {"gflop_per_step": gflop_step, **rate_summary(
        gflop_step, {"torchvision": t["torchvision"], "multibox_fp32": t["multibox"]}, "torchvision", peak)}
    results["train"] = {
        "batch": train_batch,
        "seconds_torchvision": t["torchvision"],
        "seconds_multibox": t["multibox"],
        "seconds_multibox_bf16": bf16_step,
        "speedup_train": t["torchvision"] / t["multibox"],
        "speedup_train_bf16": t["torchvision"] / bf16_step if bf16_step else None,
        "match_loss_share": statistics.median(share["match_loss"]) / statistics.median(share["total"]),
    }
    bf16_text = ("skipped (no native bf16, --quick)" if bf16_step is None
                 else f"{bf16_step:.3f} s ({results['train']['speedup_train_bf16']:.2f}x)")
    print(f"  train step batch {train_batch}: torchvision {t['torchvision']:.3f} s, multibox fp32 "
          f"{t['multibox']:.3f} s ({results['train']['speedup_train']:.2f}x), bf16 autocast {bf16_text}, "
          f"matching + loss {100 * results['train']['match_loss_share']:.1f}% of our fp32 step")

    key = f"batch_{batches[-1]}"
    results["speedup_infer_fp32"] = results["inference"][key]["speedup_infer_fp32"]
    results["speedup_infer_fast"] = results["inference"][key]["speedup_infer_fast"]
    results["speedup_infer_fp32_min"] = min(r["speedup_infer_fp32"] for r in results["inference"].values())
    results["speedup_infer_fast_min"] = min(r["speedup_infer_fast"] for r in results["inference"].values())
    results["postprocess_share"] = max(r["postprocess_share"] for r in results["inference"].values())
    results["speedup_train"] = results["train"]["speedup_train"]
    results["speedup_train_bf16"] = results["train"]["speedup_train_bf16"]
    results["match_loss_share"] = results["train"]["match_loss_share"]
    roof = results["roofline"]
    results["speedup_infer_fp32_bound"] = roof["inference"][key].get("speedup_bound")
    results["speedup_infer_fast_bound"] = roof["inference"][key].get("speedup_bound_bf16")
    results["speedup_train_bound"] = roof["train"].get("speedup_bound")
    print(f"  machine: fp32 convolution peak {peak:.0f} GFLOP/s; SSD300 {gflop_image:.1f} GFLOP per image; "
          f"inference batch {batches[-1]}: torchvision at {roof['inference'][key]['torchvision_gflops']:.0f}, ours "
          f"{roof['inference'][key]['multibox_fp32_gflops']:.0f} GFLOP/s (speedup bound fp32 "
          f"{results['speedup_infer_fp32_bound']:.2f}x, bf16 peak {peak_bf16:.0f} GFLOP/s: "
          f"{results['speedup_infer_fast_bound']:.2f}x); train: torchvision {roof['train']['torchvision_gflops']:.0f}, "
          f"ours {roof['train']['multibox_fp32_gflops']:.0f} GFLOP/s (bound {results['speedup_train_bound']:.2f}x)")
    if json_path is not None:
        atomic_write_bytes(json_path, json.dumps(results, indent=2).encode())
        print(f"wrote {json_path}")
    return results


def _agreement(ref: list, ours: list, iou: float = 0.99) -> dict:
    """How many detections of ``ref`` have a same-label box in ``ours`` with IoU >= ``iou`` (or equal corners).

    ``ref`` is torchvision-style dicts or ``Detections``; ``ours`` is ``Detections``.
    """
    total = matched = 0
    max_score_diff = 0.0
    for r, o in zip(ref, ours, strict=True):
        rb, rs, rl = (r["boxes"], r["scores"], r["labels"]) if isinstance(r, dict) else (r.boxes, r.scores, r.labels)
        total += len(rb)
        if len(rb) == 0 or len(o.boxes) == 0:
            continue
        ious = box_iou(rb.float(), o.boxes.float()).nan_to_num(0.0)  # zero-area (fully clipped) boxes: NaN
        close = (rb.float()[:, None] - o.boxes.float()[None]).abs().amax(-1) <= 0.01  # same box within 0.01 px
        ious = torch.where(close, torch.ones_like(ious), ious)
        ious[rl[:, None] != o.labels[None, :]] = 0
        best, idx = ious.max(1)
        ok = best >= iou
        matched += int(ok.sum())
        if ok.any():
            max_score_diff = max(max_score_diff, float((rs[ok] - o.scores[idx[ok]]).abs().max()))
    frac = matched / total if total else 1.0
    return {"reference_detections": total, "matched": matched, "matched_fraction": round(frac, 4),
            "max_score_diff_matched": max_score_diff if not math.isnan(max_score_diff) else None}


def _allocator() -> str:
    """How this process's malloc treats freed memory (see :mod:`multibox.runtime`)."""
    applied = keep_freed_memory()
    return "glibc default" if applied is None else f"glibc, freed blocks kept (mallopt {applied})"
