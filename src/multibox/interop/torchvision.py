"""Import (and export) torchvision's ``ssd300_vgg16`` weights.

torchvision's SSD300 differs from Caffe's in three declared places, all reproduced here:

* priors: scales 0.07, 0.15, 0.33, 0.51, 0.69, 0.87 (+1.05 for the last extra box) of 300 px, i.e. sizes
  21..315 px, steps 8, 16, 32, 64, 100, 300, the SSD300 aspect ratios, and ``clip=True`` in torchvision's
  sense: each prior's normalized width/height is clamped to 1, its centre kept (``PriorConfig.clamp_wh``);
* input: RGB, ``(pixel / 255 - [0.48235, 0.45882, 0.40784]) / (1 / 255)``, i.e. on the 0-255 scale
  mean ``[0.48235, 0.45882, 0.40784] * 255`` and std 1;
* box coder weights ``(10, 10, 5, 5)`` = 1 / variances ``(0.1, 0.1, 0.2, 0.2)``: the same coding.

The networks are the same layer for layer; only the parameter names differ (see :func:`torchvision_key_map`).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..anchors import PriorConfig, config_from_scales
from ..fileio import atomic_write_bytes, check_output_dir
from ..limits import check_num_classes
from ..models.detector import SSD
from ..models.spec import InputSpec
from ..models.ssd_vgg import ssd300_vgg16
from .bundle import DetectorBundle, save_bundle
from .registry import parse_classes, register_builder, register_importer

__all__ = [
    "TORCHVISION_SSD300_PRIORS",
    "TORCHVISION_SSD300_INPUT_SPEC",
    "torchvision_key_map",
    "ssd300_from_torchvision_state_dict",
    "load_torchvision_weights",
    "to_torchvision_state_dict",
    "import_torchvision",
]

#: torchvision ``DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]], scales=[0.07, ..., 1.05],
#: steps=[8, 16, 32, 64, 100, 300])`` with its ``clip=True`` (width/height clamp).
TORCHVISION_SSD300_PRIORS: PriorConfig = replace(
    config_from_scales(
        (300, 300),
        steps=[8.0, 16.0, 32.0, 64.0, 100.0, 300.0],
        aspect_ratios=[(2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,)],
        scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        extra_box=True,
    ),
    clamp_wh=True,
)

#: torchvision's ``GeneralizedRCNNTransform(image_mean=[0.48235, 0.45882, 0.40784], image_std=[1/255] * 3)``.
TORCHVISION_SSD300_INPUT_SPEC = InputSpec(
    image_size=(300, 300),
    channel_order="RGB",
    mean=(0.48235 * 255.0, 0.45882 * 255.0, 0.40784 * 255.0),
    std=(1.0, 1.0, 1.0),
)

_VGG_FEATURES = (
    (0, "conv1_1"), (2, "conv1_2"), (5, "conv2_1"), (7, "conv2_2"), (10, "conv3_1"), (12, "conv3_2"),
    (14, "conv3_3"), (17, "conv4_1"), (19, "conv4_2"), (21, "conv4_3"),
)


def _module_map() -> dict[str, str]:
    """torchvision module prefix -> our module prefix (each with ``.weight`` and ``.bias``)."""
    out = {f"backbone.features.{i}": f"backbone.{name}" for i, name in _VGG_FEATURES}
    out.update({
        "backbone.extra.0.1": "backbone.conv5_1",
        "backbone.extra.0.3": "backbone.conv5_2",
        "backbone.extra.0.5": "backbone.conv5_3",
        "backbone.extra.0.7.1": "backbone.fc6",
        "backbone.extra.0.7.3": "backbone.fc7",
    })
    for i, block in enumerate(("conv8", "conv9", "conv10", "conv11"), start=1):
        out[f"backbone.extra.{i}.0"] = f"extras.{block}.reduce"
        out[f"backbone.extra.{i}.2"] = f"extras.{block}.expand"
    for k in range(6):
        out[f"head.classification_head.module_list.{k}"] = f"head.classification.{k}"
        out[f"head.regression_head.module_list.{k}"] = f"head.regression.{k}"
    return out


def torchvision_key_map() -> dict[str, str]:
    """Every key of torchvision's ``ssd300_vgg16().state_dict()`` -> the matching key of our SSD300."""
    keys = {"backbone.scale_weight": "backbone.l2norm.weight"}
    for tv, ours in _module_map().items():
        for leaf in ("weight", "bias"):
            keys[f"{tv}.{leaf}"] = f"{ours}.{leaf}"
    return keys


def _coco_class_names() -> list[str]:
    # heavy (~1.8 s: every torchvision detection model) and only the default COCO names need it; this module is
    # imported whenever the importers are listed
    from torchvision.models.detection import SSD300_VGG16_Weights

    names = list(SSD300_VGG16_Weights.COCO_V1.meta["categories"])
    names[0] = "background"
    return names


def _check_keys(given: Sequence[str], expected: Sequence[str], what: str) -> None:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        raise KeyError(
            f"{what} does not match torchvision's ssd300_vgg16 state dict: "
            f"missing keys {missing or 'none'}; unexpected keys {unexpected or 'none'}"
        )


def ssd300_from_torchvision_state_dict(
    state_dict: Mapping[str, Tensor],
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> SSD:
    """Our SSD300 (VGG16) carrying the weights of a torchvision ``ssd300_vgg16`` state dict.

    The model gets torchvision's priors (:data:`TORCHVISION_SSD300_PRIORS`) and input spec
    (:data:`TORCHVISION_SSD300_INPUT_SPEC`). ``num_classes`` (background included) is read from the
    classification head when not given; with 91 classes (torchvision's COCO) and no ``class_names`` the
    names are torchvision's COCO categories (index 0 renamed ``"background"``). Keys may carry a ``module.``
    prefix (DataParallel). Raises ``KeyError`` naming missing / unexpected keys.
    """
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    key_map = torchvision_key_map()
    _check_keys(list(sd), list(key_map), "state_dict")
    cls0 = sd["head.classification_head.module_list.0.weight"]
    a0 = TORCHVISION_SSD300_PRIORS.levels[0].num_priors
    inferred = int(cls0.shape[0]) // a0
    if num_classes is None:
        num_classes = inferred
    elif int(num_classes) != inferred:
        raise ValueError(f"num_classes={num_classes} but the state dict's classification head has {inferred}")
    if class_names is None and num_classes == 91:
        class_names = _coco_class_names()
    model = ssd300_vgg16(
        num_classes=num_classes,
        class_names=class_names,
        priors=TORCHVISION_SSD300_PRIORS,
        input_spec=TORCHVISION_SSD300_INPUT_SPEC,
    )
    ours = {key_map[k]: v for k, v in sd.items()}
    _check_keys(list(ours), list(model.state_dict()), "the mapped state_dict")
    model.load_state_dict(ours, strict=True)
    return model


def load_torchvision_weights(
    path: str | os.PathLike[str],
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> SSD:
    """:func:`ssd300_from_torchvision_state_dict` on a ``.pth`` file (``torch.load(weights_only=True)``).

    Accepts a bare state dict or one wrapped under ``"model"`` / ``"state_dict"``.
    """
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise TypeError(f"{os.fspath(path)} does not hold a state dict (got {type(obj).__name__})")
    return ssd300_from_torchvision_state_dict(obj, num_classes=num_classes, class_names=class_names)


def to_torchvision_state_dict(model: SSD) -> dict[str, Tensor]:
    """The state dict of torchvision's ``ssd300_vgg16(num_classes=model.num_classes)`` for our SSD300."""
    inverse = {ours: tv for tv, ours in torchvision_key_map().items()}
    sd = model.state_dict()
    _check_keys(list(sd), list(inverse), "the model's state_dict (as our SSD300 VGG16)")
    return {inverse[k]: v.detach().clone() for k, v in sd.items()}


# ------------------------------------------------------------------------------ `multibox import torchvision`


def _build_bundle_model(spec: dict[str, Any]) -> SSD:
    """The bundle builder ``"torchvision"``: an untrained SSD300 with torchvision's priors and input spec;
    ``spec = {"num_classes", "class_names"}``."""
    return ssd300_vgg16(num_classes=int(spec["num_classes"]), class_names=spec.get("class_names"),
                        priors=TORCHVISION_SSD300_PRIORS, input_spec=TORCHVISION_SSD300_INPUT_SPEC)


register_builder("torchvision", _build_bundle_model)


def import_torchvision(path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, name: str | None = None,
                       class_names: Sequence[str] | None = None) -> Path:
    """Convert a torchvision ``ssd300_vgg16`` ``.pth`` state dict into a detector bundle
    ``out_dir/<name>.safetensors`` (builder ``"torchvision"``; torchvision's post-processing settings, which are
    :class:`~multibox.postprocess.PostProcess`'s defaults) and a JSON report ``out_dir/<name>.json``. ``name``
    defaults to the file's stem. Returns the bundle's path."""
    src = Path(path)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: torchvision weights not found")
    stem = name or src.stem
    if not stem or "/" in stem or "\\" in stem:
        raise ValueError(f"bad output name {stem!r}")
    try:
        model = load_torchvision_weights(src, class_names=class_names).eval()
    except (KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{src}: {e.args[0] if e.args else e}") from None
    check_num_classes(model.num_classes, src)
    spec = {"num_classes": model.num_classes, "class_names": list(model.class_names)}
    bundle = DetectorBundle(model=model, priors=model.priors, input_spec=model.input_spec,
                            class_names=list(model.class_names), builder="torchvision", spec=spec,
                            variances=tuple(model.prior_config.variances),  # type: ignore[arg-type]
                            source={"importer": "torchvision", "file": src.name})
    out = Path(out_dir)
    bundle_path = save_bundle(bundle, out / f"{stem}.safetensors")
    report = {"name": stem, "bundle": bundle_path.name, "importer": "torchvision", "num_priors": model.num_priors,
              "class_names": list(model.class_names)}
    atomic_write_bytes(out / f"{stem}.json", (json.dumps(report, indent=2) + "\n").encode())
    return bundle_path


def _add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="a torchvision ssd300_vgg16 state dict (.pth)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", help="output file stem (default: the weights file's stem)")
    p.add_argument("--classes", help="class names, background first: a file (one per line) or comma-separated "
                                     "(default: torchvision's COCO names for 91 classes, else class_1, ...)")


def _run_cli(args: argparse.Namespace) -> Path:
    classes = parse_classes(args.classes)
    check_output_dir(args.out, "--out")
    return import_torchvision(args.weights, args.out, name=args.name, class_names=classes)


register_importer(
    "torchvision", help="torchvision's ssd300_vgg16 weights (.pth state dict)", builders=("torchvision",),
    source_arg="weights",
    description="Convert a torchvision ssd300_vgg16 state dict into a detector bundle: the same network layer for "
                "layer, torchvision's priors, input normalization and post-processing settings.",
    add_arguments=_add_cli_arguments, run=_run_cli)
