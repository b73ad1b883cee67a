"""A converted detector in one file: network weights, priors, input contract, classes and decoding settings.

Importers (Caffe, TensorFlow Object Detection API) produce a :class:`DetectorBundle`; :func:`save_bundle` writes
it as one ``.safetensors`` file (the network's tensors plus ``__priors__``; everything else as JSON metadata) and
:func:`load_bundle` rebuilds it without running any code from the file: the network is rebuilt by a named
**builder** registered in Python (:func:`register_builder`) from the JSON ``spec`` stored in the file.

Builders: ``"multibox"`` (a registered multibox model: spec ``{"name", "kwargs", "num_classes", "class_names"}``)
is built in; the Caffe importer registers ``"caffe"`` (a graph of layers), the TF importer may use ``"multibox"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..models.spec import InputSpec

__all__ = ["DetectorBundle", "register_builder", "save_bundle", "load_bundle", "BUNDLE_FORMAT"]

BUNDLE_FORMAT = "multibox-detector-bundle"
_PRIORS_KEY = "__priors__"
_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {}


def register_builder(name: str, fn: Callable[[dict[str, Any]], nn.Module]) -> None:
    """Register ``fn(spec) -> nn.Module`` under ``name`` (the module's ``state_dict`` keys must match the file)."""
    _BUILDERS[name] = fn


def _builder(name: str) -> Callable[[dict[str, Any]], nn.Module]:
    if name not in _BUILDERS:
        # importers register on import
        if name == "caffe":
            from . import caffe  # noqa: F401
        elif name == "tf-od":
            from . import tensorflow  # noqa: F401
    if name not in _BUILDERS:
        raise KeyError(f"no bundle builder named {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name]


def _build_multibox(spec: dict[str, Any]) -> nn.Module:
    from ..models import build_model

    return build_model(spec["name"], num_classes=int(spec["num_classes"]), class_names=spec.get("class_names"),
                       **spec.get("kwargs", {}))


register_builder("multibox", _build_multibox)


@dataclass
class DetectorBundle:
    """A ready-to-run detector.

    * ``model``: ``images [B, 3, H, W]`` (already resized and normalized as ``input_spec`` says) ->
      an object with ``cls_logits [B, P, C]`` and ``box_deltas [B, P, 4]`` (e.g. :class:`~multibox.models.SSDOutput`);
    * ``priors``: ``[P, 4]`` normalized cxcywh in the order of the predictions;
    * ``input_spec``: size, channel order, mean/std; ``class_names``: ``C`` names, background first;
    * ``variances``: box coder variances; ``postprocess``: keyword arguments of
      :class:`~multibox.postprocess.PostProcess` (``mode``, ``conf_threshold``, ``top_k``, ``nms_threshold``,
      ``keep_top_k``, ``clip``, ``background_index``, and ``score`` = ``"softmax"`` or ``"sigmoid"`` where supported);
    * ``builder`` / ``spec``: how :func:`load_bundle` rebuilds ``model``; ``source``: provenance (files, sha256).
    """

    model: nn.Module
    priors: Tensor
    input_spec: InputSpec
    class_names: list[str]
    builder: str
    spec: dict[str, Any]
    variances: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    postprocess: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def make_postprocess(self, **overrides: Any) -> nn.Module:
        """The :class:`~multibox.postprocess.PostProcess` of this detector (``overrides`` win)."""
        from ..box_coder import BoxCoder
        from ..postprocess import PostProcess

        kwargs = {**self.postprocess, **overrides}
        kwargs.setdefault("class_names", self.class_names)
        return PostProcess(self.priors, BoxCoder(self.variances), **kwargs)


def _spec_json(spec: InputSpec) -> dict[str, Any]:
    return {"image_size": list(spec.image_size), "channel_order": spec.channel_order, "mean": list(spec.mean),
            "std": list(spec.std)}


def save_bundle(bundle: DetectorBundle, path: str | os.PathLike) -> Path:
    """Write ``bundle`` to ``path`` (``.safetensors``), atomically."""
    from safetensors.torch import save_file

    from ..fileio import atomic_write_with

    tensors = {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
    if _PRIORS_KEY in tensors:
        raise ValueError(f"the model has a tensor named {_PRIORS_KEY!r}, which bundles reserve")
    tensors[_PRIORS_KEY] = bundle.priors.detach().to(torch.float32).cpu().contiguous()
    meta = {
        "format": BUNDLE_FORMAT,
        "builder": bundle.builder,
        "spec": json.dumps(bundle.spec),
        "input_spec": json.dumps(_spec_json(bundle.input_spec)),
        "class_names": json.dumps(list(bundle.class_names)),
        "variances": json.dumps(list(bundle.variances)),
        "postprocess": json.dumps(bundle.postprocess),
        "source": json.dumps(bundle.source),
    }
    return atomic_write_with(Path(path), lambda p: save_file(tensors, str(p), metadata=meta))


def load_bundle(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> DetectorBundle:
    """Read a bundle written by :func:`save_bundle`; the network is rebuilt by its builder and loaded strictly."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: detector file not found")
    try:
        with safe_open(str(p), framework="pt", device=str(map_location)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{p}: not a readable safetensors file ({e})") from None
    if meta.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{p}: not a multibox detector bundle (format {meta.get('format')!r})")
    try:
        spec = json.loads(meta["spec"])
        ispec = json.loads(meta["input_spec"])
        class_names = json.loads(meta["class_names"])
        variances = tuple(float(v) for v in json.loads(meta["variances"]))
        post = json.loads(meta["postprocess"])
        source = json.loads(meta.get("source", "{}"))
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: damaged bundle metadata ({e})") from None
    priors = tensors.pop(_PRIORS_KEY, None)
    if priors is None:
        raise ValueError(f"{p}: the bundle has no priors tensor")
    model = _builder(meta["builder"])(spec)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"{p}: weights do not fit the rebuilt network (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]})")
    model.eval()
    input_spec = InputSpec(image_size=tuple(ispec["image_size"]), channel_order=ispec["channel_order"],
                           mean=tuple(ispec["mean"]), std=tuple(ispec["std"]))
    return DetectorBundle(model=model, priors=priors, input_spec=input_spec, class_names=list(class_names),
                          builder=meta["builder"], spec=spec, variances=variances,  # type: ignore[arg-type]
                          postprocess=post, source=source)
