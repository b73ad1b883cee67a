"""SSD-Tensorflow (TF-Slim) importer: an ``ssd_300_vgg`` / ``ssd_512_vgg`` checkpoint -> a multibox detector bundle.

``import_slim("model.ckpt-1000", out_dir, arch="ssd_300_vgg")`` reads the checkpoint with
:class:`~multibox.interop.tf_checkpoint.TFCheckpoint` (TensorFlow is not needed) and loads ``ssd300_vgg16`` /
``ssd512_vgg16`` with its variables, in SSD-Tensorflow's scopes:

* ``<scope>/conv1/conv1_1/weights`` (``biases``) .. ``conv5/conv5_3``, ``conv6`` (3x3, rate 6), ``conv7`` (1x1);
* ``<scope>/block8/conv1x1`` + ``conv3x3`` .. ``block11`` (SSD512: .. ``block12``, whose second conv is
  ``conv4x4``); the stride-2 ones follow an explicit 1-pixel pad, the others are ``VALID``;
* ``<scope>/block4_box/L2Normalization/gamma`` (conv4_3's channel-wise L2 normalization, its own scale, ``[512]``)
  and per source ``<scope>/<block>_box/conv_loc`` / ``conv_cls`` (3x3 with bias).

Kernels ``[kh, kw, in, out]`` become ``[out, in, kh, kw]``; VGG's ``SAME`` convs and poolings equal multibox's
(symmetric padding at stride 1, 2x2/2 pooling with ceil rounding). Other variables (``global_step``, optimizer
slots such as ``.../Momentum``, moving averages) are ignored.

**Anchors** are SSD-Tensorflow's own, not Caffe's: absolute ``anchor_sizes`` per layer (SSD300 ``(21, 45)``,
``(45, 99)``, ``(99, 153)``, ``(153, 207)``, ``(207, 261)``, ``(261, 315)``; SSD512 ``(20.48, 51.2)`` ..
``(460.8, 542.72)``), per location the ``sizes[0]`` square, the ``sqrt(sizes[0] sizes[1])`` square, then the
``anchor_ratios`` in order (``2, .5[, 3, 1/3]``), centres ``(i + 0.5) * step / image_size`` with steps 8, 16, 32,
64, 100, 300 (SSD512: .. 128, 256, 512), computed in float32 as its ``ssd_anchor_one_layer`` does
(:func:`slim_anchors`). The order is Caffe's (squares first), so no channel is permuted.

**Decoding** is its ``detected_bboxes``: softmax, ``CENTER_SIZE`` decoding with ``prior_scaling`` (0.1, 0.1, 0.2,
0.2), per class the scores ``> select_threshold`` (0.01), the 400 best (``select_top_k``), NMS at 0.45, and at most
``keep_top_k`` (200) boxes **per class**; it keeps no overall cap and never clips. multibox's post-processing has
the per-class cut before NMS and an overall ``keep_top_k`` (0 here: none) but no per-class cap after NMS: a
class that keeps more than 200 boxes after NMS of its 400 candidates reports them all,
where SSD-Tensorflow stops at 200 (the first 200 are the same).

**Pre-processing** is its ``ssd_vgg_preprocessing`` for evaluation: RGB, minus (123, 117, 104), no scaling, the
image resized to the network size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..anchors import PriorConfig, PriorLevel, prior_config_to_dict
from ..fileio import atomic_write_bytes, check_output_dir
from ..limits import check_num_classes
from ..models import build_model
from ..models.spec import InputSpec
from .bundle import DetectorBundle, save_bundle
from .registry import parse_classes, register_importer
from .tf_checkpoint import CheckpointError, TFCheckpoint

__all__ = ["SlimImportError", "SlimSSDConfig", "SLIM_ARCHS", "slim_anchors", "slim_variable_map",
           "convert_slim", "import_slim"]


class SlimImportError(ValueError):
    """A checkpoint that cannot be converted (the message names the checkpoint and the missing variable)."""


@dataclass(frozen=True)
class SlimSSDConfig:
    """SSD-Tensorflow's ``SSDParams`` for one network (``scope`` is its variable scope)."""

    scope: str
    model: str
    image_size: tuple[int, int]
    feat_layers: tuple[str, ...]
    anchor_sizes: tuple[tuple[float, float], ...]
    anchor_ratios: tuple[tuple[float, ...], ...]
    anchor_steps: tuple[int, ...]
    anchor_offset: float = 0.5
    prior_scaling: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    extras: tuple[tuple[str, str], ...] = ()
    select_threshold: float = 0.01
    select_top_k: int = 400
    nms_threshold: float = 0.45
    keep_top_k: int = 200


_R2 = (2.0, 0.5)
_R4 = (2.0, 0.5, 3.0, 1.0 / 3.0)

SLIM_ARCHS: dict[str, SlimSSDConfig] = {
    "ssd_300_vgg": SlimSSDConfig(
        scope="ssd_300_vgg", model="ssd300_vgg16", image_size=(300, 300),
        feat_layers=("block4", "block7", "block8", "block9", "block10", "block11"),
        anchor_sizes=((21.0, 45.0), (45.0, 99.0), (99.0, 153.0), (153.0, 207.0), (207.0, 261.0), (261.0, 315.0)),
        anchor_ratios=(_R2, _R4, _R4, _R4, _R2, _R2), anchor_steps=(8, 16, 32, 64, 100, 300),
        extras=tuple((f"block{8 + i}/{c}", f"extras.conv{8 + i}.{part}") for i in range(4)
                     for c, part in (("conv1x1", "reduce"), ("conv3x3", "expand")))),
    "ssd_512_vgg": SlimSSDConfig(
        scope="ssd_512_vgg", model="ssd512_vgg16", image_size=(512, 512),
        feat_layers=("block4", "block7", "block8", "block9", "block10", "block11", "block12"),
        anchor_sizes=((20.48, 51.2), (51.2, 133.12), (133.12, 215.04), (215.04, 296.96), (296.96, 378.88),
                      (378.88, 460.8), (460.8, 542.72)),
        anchor_ratios=(_R2, _R4, _R4, _R4, _R4, _R2, _R2), anchor_steps=(8, 16, 32, 64, 128, 256, 512),
        extras=tuple((f"block{8 + i}/{c}", f"extras.conv{8 + i}.{part}") for i in range(5)
                     for c, part in (("conv1x1", "reduce"), ("conv4x4" if i == 4 else "conv3x3", "expand")))),
}

_VGG = [(f"conv{b}/conv{b}_{j}", f"backbone.conv{b}_{j}") for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
        for j in range(1, n + 1)] + [("conv6", "backbone.fc6"), ("conv7", "backbone.fc7")]


def slim_variable_map(cfg: SlimSSDConfig) -> dict[str, str]:
    """Checkpoint scope (without the network scope; ``/weights`` and ``/biases`` follow) -> our module; the L2
    normalization's ``gamma`` is ``block4_box/L2Normalization/gamma`` -> ``backbone.l2norm.weight``."""
    out = dict(_VGG)
    out.update(dict(cfg.extras))
    for k, block in enumerate(cfg.feat_layers):
        out[f"{block}_box/conv_cls"] = f"head.classification.{k}"
        out[f"{block}_box/conv_loc"] = f"head.regression.{k}"
    return out


def slim_anchors(cfg: SlimSSDConfig, feature_sizes: Sequence[tuple[int, int]]) -> np.ndarray:
    """SSD-Tensorflow's anchors (``ssd_anchors_all_layers``, float32 arithmetic as it does), flattened to
    ``[P, 4]`` normalized ``(cx, cy, w, h)`` in its order (layer, row, column, anchor)."""
    img_h, img_w = cfg.image_size
    parts = []
    for k, (fh, fw) in enumerate(feature_sizes):
        sizes, ratios, step = cfg.anchor_sizes[k], cfg.anchor_ratios[k], cfg.anchor_steps[k]
        y, x = np.mgrid[0:fh, 0:fw]
        y = (y.astype(np.float32) + np.float32(cfg.anchor_offset)) * np.float32(step) / np.float32(img_h)
        x = (x.astype(np.float32) + np.float32(cfg.anchor_offset)) * np.float32(step) / np.float32(img_w)
        n = len(sizes) + len(ratios)
        h = np.zeros(n, dtype=np.float32)
        w = np.zeros(n, dtype=np.float32)
        h[0], w[0] = sizes[0] / img_h, sizes[0] / img_w
        di = 1
        if len(sizes) > 1:
            h[1] = math.sqrt(sizes[0] * sizes[1]) / img_h
            w[1] = math.sqrt(sizes[0] * sizes[1]) / img_w
            di = 2
        for i, r in enumerate(ratios):
            h[i + di] = sizes[0] / img_h / math.sqrt(r)
            w[i + di] = sizes[0] / img_w * math.sqrt(r)
        a = np.zeros((fh, fw, n, 4), dtype=np.float32)
        a[..., 0] = x[..., None]
        a[..., 1] = y[..., None]
        a[..., 2] = w
        a[..., 3] = h
        parts.append(a.reshape(-1, 4))
    return np.concatenate(parts, 0)


def _prior_config(cfg: SlimSSDConfig) -> PriorConfig:
    levels = tuple(PriorLevel(min_sizes=(float(s[0]),), max_sizes=(float(s[1]),), aspect_ratios=tuple(r),
                              flip=False, step=float(st), offset=float(cfg.anchor_offset))
                   for s, r, st in zip(cfg.anchor_sizes, cfg.anchor_ratios, cfg.anchor_steps, strict=True))
    return PriorConfig(image_size=cfg.image_size, levels=levels,
                       variances=tuple(cfg.prior_scaling))  # type: ignore[arg-type]


SLIM_INPUT_SPEC = InputSpec(image_size=(300, 300), channel_order="RGB", mean=(123.0, 117.0, 104.0))


def convert_slim(ckpt: TFCheckpoint, cfg: SlimSSDConfig, class_names: Sequence[str] | None = None
                 ) -> tuple[nn.Module, Tensor, dict[str, Any], dict[str, Any]]:
    """``(model, priors [P, 4] normalized cxcywh, bundle spec, info)`` from an SSD-Tensorflow checkpoint."""
    src = ckpt.prefix
    var_map = slim_variable_map(cfg)
    needed = [f"{cfg.scope}/{s}/{leaf}" for s in var_map for leaf in ("weights", "biases")]
    needed.append(f"{cfg.scope}/block4_box/L2Normalization/gamma")
    missing = [n for n in needed if n not in ckpt]
    if missing:
        others = sorted({n.split("/", 1)[0] for n in ckpt.names() if "/" in n})
        raise SlimImportError(f"{src}: not an SSD-Tensorflow {cfg.scope} checkpoint: missing variable(s) "
                              f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''} (its scopes: "
                              f"{', '.join(others[:6]) or 'none'})")
    n_anchors = [len(s) + len(r) for s, r in zip(cfg.anchor_sizes, cfg.anchor_ratios, strict=True)]
    cls0 = ckpt.entry(f"{cfg.scope}/{cfg.feat_layers[0]}_box/conv_cls/weights")
    if len(cls0.shape) != 4 or cls0.shape[-1] % n_anchors[0]:
        raise SlimImportError(f"{src}: {cls0.name} has shape {list(cls0.shape)}, not [3, 3, C_in, "
                              f"{n_anchors[0]} * classes]")
    num_classes = cls0.shape[-1] // n_anchors[0]
    check_num_classes(num_classes, src)
    if class_names is not None and len(class_names) != num_classes:
        raise SlimImportError(f"{src}: --classes gives {len(class_names)} names but the checkpoint predicts "
                              f"{num_classes} classes (background included)")
    priors_cfg = _prior_config(cfg)
    input_spec = SLIM_INPUT_SPEC.with_image_size(cfg.image_size)
    model = build_model(cfg.model, num_classes=num_classes, class_names=class_names, priors=priors_cfg,
                        input_spec=input_spec).eval()
    modules = dict(model.named_modules())
    with torch.no_grad():
        for scope, target in var_map.items():
            mod = modules[target]
            for leaf, param, transform in (("weights", mod.weight, lambda a: a.transpose(3, 2, 0, 1)),
                                           ("biases", mod.bias, lambda a: a)):
                name = f"{cfg.scope}/{scope}/{leaf}"
                _copy(param, transform(_read(ckpt, name)), name, src)
        name = f"{cfg.scope}/block4_box/L2Normalization/gamma"
        _copy(modules["backbone.l2norm"].weight, _read(ckpt, name), name, src)
    feature_sizes = model.feature_sizes()
    anchors = slim_anchors(cfg, feature_sizes)
    if anchors.shape[0] != model.num_priors:
        raise SlimImportError(f"{src}: {anchors.shape[0]} anchors but the network predicts {model.num_priors}")
    spec: dict[str, Any] = {"name": cfg.model, "num_classes": num_classes, "class_names": list(model.class_names),
                            "kwargs": {"priors": prior_config_to_dict(priors_cfg)},
                            "input_spec": {"image_size": list(input_spec.image_size),
                                           "channel_order": input_spec.channel_order,
                                           "mean": list(input_spec.mean), "std": list(input_spec.std)}}
    post = {"mode": "per_class", "conf_threshold": float(cfg.select_threshold), "top_k": int(cfg.select_top_k),
            "nms_threshold": float(cfg.nms_threshold), "keep_top_k": 0,  # no overall cap, as SSD-Tensorflow
            "clip": False, "background_index": 0}
    info = {"input_spec": input_spec, "variances": tuple(float(v) for v in cfg.prior_scaling), "postprocess": post,
            "feature_sizes": [list(s) for s in feature_sizes], "variables": needed}
    return model, torch.from_numpy(anchors), spec, info


def _read(ckpt: TFCheckpoint, name: str) -> np.ndarray:
    arr = ckpt.read(name)
    if arr.dtype != np.float32:
        raise SlimImportError(f"{ckpt.prefix}: variable {name!r} is {arr.dtype}, expected float32")
    return arr


def _copy(dst: Tensor, src: np.ndarray, name: str, source: object) -> None:
    t = torch.from_numpy(np.ascontiguousarray(src))
    if tuple(t.shape) != tuple(dst.shape):
        raise SlimImportError(f"{source}: variable {name!r} has shape {list(src.shape)} where a tensor of our "
                              f"shape {list(dst.shape)} (transposed from TF's layout) was expected")
    dst.copy_(t)


def import_slim(prefix: str | os.PathLike, out_dir: str | os.PathLike, *, arch: str = "ssd_300_vgg",
                name: str | None = None, class_names: Sequence[str] | None = None) -> Path:
    """Convert an SSD-Tensorflow checkpoint (``prefix``: the path without ``.index``) into
    ``out_dir/<name>.safetensors`` plus ``out_dir/<name>.json``; ``name`` defaults to the prefix's stem
    (``model`` for ``model.ckpt-1000``).
    Returns the bundle's path; raises :class:`SlimImportError` / ``CheckpointError`` naming the checkpoint."""
    if arch not in SLIM_ARCHS:
        raise SlimImportError(f"--arch: unknown SSD-Tensorflow network {arch!r} (one of {', '.join(SLIM_ARCHS)})")
    cfg = SLIM_ARCHS[arch]
    ckpt = TFCheckpoint(prefix)
    model, priors, spec, info = convert_slim(ckpt, cfg, class_names=class_names)
    stem = name or Path(prefix).stem  # the stem `multibox import` checks for --overwrite
    if not stem or "/" in stem or "\\" in stem or stem in (".", ".."):
        raise SlimImportError(f"invalid bundle name {stem!r}")
    sha = hashlib.sha256(ckpt.index_path.read_bytes()).hexdigest()
    source = {"format": "SSD-Tensorflow TF-Slim checkpoint", "checkpoint": ckpt.prefix.name, "index_sha256": sha,
              "importer": "multibox.interop.slim", "arch": arch, "feature_sizes": info["feature_sizes"]}
    bundle = DetectorBundle(model=model, priors=priors, input_spec=info["input_spec"],
                            class_names=list(spec["class_names"]), builder="multibox", spec=spec,
                            variances=info["variances"], postprocess=info["postprocess"], source=source)
    out_path = save_bundle(bundle, Path(out_dir) / f"{stem}.safetensors")
    ispec = info["input_spec"]
    report = {"bundle": out_path.name, "importer": "tf-slim", "source": source, "model": cfg.model,
              "num_priors": int(priors.shape[0]), "num_classes": int(spec["num_classes"]),
              "class_names": list(spec["class_names"]), "image_size": list(ispec.image_size),
              "input_spec": {"channel_order": ispec.channel_order, "mean": list(ispec.mean), "std": list(ispec.std)},
              "anchor_sizes": [list(s) for s in cfg.anchor_sizes], "anchor_steps": list(cfg.anchor_steps),
              "variances": list(info["variances"]), "postprocess": info["postprocess"],
              "num_parameters": int(sum(t.numel() for t in model.parameters()))}
    atomic_write_bytes(out_path.with_suffix(".json"), (json.dumps(report, indent=2) + "\n").encode())
    return out_path


def _add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint prefix (model.ckpt-N for model.ckpt-N.index + .data-*)")
    p.add_argument("--arch", required=True, choices=sorted(SLIM_ARCHS), help="the SSD-Tensorflow network")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", help="output file stem (default: the prefix's stem, model for model.ckpt-1000)")
    p.add_argument("--classes", help="class names, background first: a file (one per line) or comma-separated")


def _run_cli(args: argparse.Namespace) -> Path:
    classes = parse_classes(args.classes)
    check_output_dir(args.out, "--out")
    try:
        return import_slim(args.checkpoint, args.out, arch=args.arch, name=args.name, class_names=classes)
    except CheckpointError as e:
        raise SlimImportError(str(e)) from None


register_importer(
    "tf-slim", help="SSD-Tensorflow TF-Slim checkpoints (ssd_300_vgg, ssd_512_vgg)", builders=("multibox",),
    source_arg="checkpoint",
    description="Convert an SSD-Tensorflow (balancap) checkpoint (.index + .data) of ssd_300_vgg or ssd_512_vgg "
                "into a detector bundle: its variable scopes, anchor sizes and decoding. The tensor bundle is read "
                "without TensorFlow. See docs/importers.md.",
    add_arguments=_add_cli_arguments, run=_run_cli)
