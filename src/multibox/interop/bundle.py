"""A converted detector in one file: network weights, priors, input contract, classes and decoding settings.

Importers (Caffe, TensorFlow Object Detection API) produce a :class:`DetectorBundle`; :func:`save_bundle` writes
it as one ``.safetensors`` file (the network's tensors plus ``__priors__``; everything else as JSON metadata) and
:func:`load_bundle` rebuilds it without running any code from the file: the network is rebuilt by a named
**builder** registered in Python (:func:`register_builder`) from the JSON ``spec`` stored in the file.

Builders: ``"multibox"`` (a registered multibox model: spec ``{"name", "kwargs", "num_classes", "class_names"}``,
optionally ``"input_spec"`` ``{"image_size", "channel_order", "mean", "std"}``; ``kwargs["priors"]`` may be a prior
config mapping, :func:`multibox.anchors.prior_config_to_dict`)
is built in; the Caffe importer registers ``"caffe"`` (a graph of layers), the TF importer ``"tf-od"``. Builders
are found through :mod:`multibox.interop.registry` (which imports the module that registers a builder name).

A bundle is untrusted input. Before anything is built, :func:`load_bundle` checks what its metadata asks for
against :mod:`multibox.limits` (input side, classes, priors; also nesting of the JSON metadata), then builds the
network on the ``meta`` device (no memory) and compares every tensor shape of that network with the file's: a
spec that asks for a layer larger than the weights it carries is an error naming the file, never a big
allocation.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..box_coder import BoxCoder
from ..fileio import atomic_write_with
from ..limits import LimitError, check_input_size, check_num_classes, check_num_priors
from ..models import build_model
from ..models.spec import InputSpec
from ..postprocess import PostProcess
from .registry import get_builder, register_builder

__all__ = ["DetectorBundle", "register_builder", "save_bundle", "load_bundle", "check_bundle_limits",
           "check_input_dims", "BUNDLE_FORMAT"]

BUNDLE_FORMAT = "multibox-detector-bundle"
_PRIORS_KEY = "__priors__"
#: JSON metadata deeper than this is refused (real specs are a few levels deep).
_MAX_JSON_DEPTH = 32


def _build_multibox(spec: dict[str, Any]) -> nn.Module:
    kwargs = dict(spec.get("kwargs", {}))
    ispec = spec.get("input_spec")
    if ispec is not None:  # the importers' own pre-processing (keras, tf-slim); priors ride in kwargs as a mapping
        kwargs["input_spec"] = InputSpec(image_size=tuple(ispec["image_size"]), channel_order=ispec["channel_order"],
                                         mean=tuple(ispec["mean"]), std=tuple(ispec["std"]))
    return build_model(spec["name"], num_classes=int(spec["num_classes"]), class_names=spec.get("class_names"),
                       **kwargs)


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
        kwargs = {**self.postprocess, **overrides}
        kwargs.setdefault("class_names", self.class_names)
        return PostProcess(self.priors, BoxCoder(self.variances), **kwargs)


def _spec_json(spec: InputSpec) -> dict[str, Any]:
    return {"image_size": list(spec.image_size), "channel_order": spec.channel_order, "mean": list(spec.mean),
            "std": list(spec.std)}


def save_bundle(bundle: DetectorBundle, path: str | os.PathLike) -> Path:
    """Write ``bundle`` to ``path`` (``.safetensors``), atomically."""
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


def _json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, stopping past ``limit`` (iterative: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _loads(p: Path, meta: dict[str, str], key: str, default: str | None = None) -> Any:  # noqa: ANN401
    text = meta[key] if default is None else meta.get(key, default)
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{p}: damaged bundle metadata {key!r} ({e})") from None
    if _json_depth(value, _MAX_JSON_DEPTH) > _MAX_JSON_DEPTH:
        raise ValueError(f"{p}: bundle metadata {key!r} is nested more than {_MAX_JSON_DEPTH} levels deep")
    return value


def _walk(value: Any, key: str) -> list[Any]:  # noqa: ANN401
    """Every value stored under ``key`` anywhere in a parsed JSON value."""
    found, stack = [], [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k, c in v.items():
                if k == key:
                    found.append(c)
                stack.append(c)
        elif isinstance(v, list):
            stack.extend(v)
    return found


def check_bundle_limits(spec: dict[str, Any], input_spec: dict[str, Any], class_names: list[Any],
                        prior_shape: list[int] | tuple[int, ...], source: object) -> None:
    """Check what a bundle's metadata asks for against :mod:`multibox.limits`, before anything is built.

    ``input_spec["image_size"]`` and every ``image_size`` in ``spec``: :func:`~multibox.limits.check_input_size`;
    the class names and every ``num_classes`` in ``spec``: :func:`~multibox.limits.check_num_classes`; a Caffe
    spec's ``inputs`` (``{blob: [N, C, H, W]}``): ``H, W`` bounded, ``N * C`` at most 64; the priors
    ``[P, 4]``: :func:`~multibox.limits.check_num_priors`. Raises :class:`~multibox.limits.LimitError` (a
    ``ValueError``) naming ``source``."""
    if not isinstance(input_spec, dict) or "image_size" not in input_spec:
        raise LimitError(f"{source}: the bundle's input_spec has no image_size")
    check_input_size(input_spec["image_size"], source)
    for size in _walk(spec, "image_size"):
        check_input_size(size, source)
    if not isinstance(class_names, list):
        raise LimitError(f"{source}: class_names is not a list")
    check_num_classes(len(class_names), source)
    for n in _walk(spec, "num_classes"):
        check_num_classes(n, source)
    for inputs in _walk(spec, "inputs"):
        if not isinstance(inputs, dict):
            raise LimitError(f"{source}: the spec's inputs are not a {{blob: shape}} table")
        for blob, shape in inputs.items():
            check_input_dims(shape, f"{source}: input {blob!r}")
    if len(prior_shape) != 2 or prior_shape[1] != 4:
        raise LimitError(f"{source}: the priors tensor has shape {list(prior_shape)}, expected [P, 4]")
    check_num_priors(int(prior_shape[0]), source)


def check_input_dims(shape: Any, source: object) -> list[int]:  # noqa: ANN401
    """An input blob shape ``[N, C, H, W]`` (or ``[C, H, W]``) as ints: ``H, W`` within
    :func:`~multibox.limits.max_input_side` and ``N * C <= 64`` (a batch of images, not a volume); else
    :class:`~multibox.limits.LimitError` naming ``source``."""
    if not isinstance(shape, list | tuple) or not 3 <= len(shape) <= 4:
        raise LimitError(f"{source}: input shape {shape!r} is not [N, C, H, W]")
    check_input_size(shape[-2:], source)
    lead = check_input_size(shape[:-2], source)
    if math.prod(lead) > 64:
        raise LimitError(f"{source}: input shape {list(shape)!r}: batch x channels = {math.prod(lead)} exceeds 64")
    return [int(v) for v in shape]


def _check_shapes(p: Path, model: nn.Module, shapes: dict[str, list[int]]) -> None:
    """The state dict of ``model`` (built on the meta device) against the file's tensor shapes."""
    want = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want) - set(shapes))
    unexpected = sorted(set(shapes) - set(want))
    if missing or unexpected:
        raise ValueError(f"{p}: weights do not fit the rebuilt network (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]})")
    wrong = [(k, shapes[k], want[k]) for k in want if shapes[k] != want[k]]
    if wrong:
        k, got, exp = wrong[0]
        raise ValueError(f"{p}: the spec asks for {k} of shape {exp} but the file holds {got} "
                         f"({len(wrong)} tensors differ)")
    priors = getattr(model, "priors", None)
    if isinstance(priors, Tensor):
        check_num_priors(int(priors.shape[0]), p)


def load_bundle(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> DetectorBundle:
    """Read a bundle written by :func:`save_bundle`; the network is rebuilt by its builder and loaded strictly.

    Nothing is built before the metadata passed :func:`check_bundle_limits` and the network, built on the meta
    device, has exactly the file's tensor names and shapes (``ValueError`` naming the file otherwise)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: detector file not found")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{p}: not a readable safetensors file ({e})") from None
    if meta.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{p}: not a multibox detector bundle (format {meta.get('format')!r})")
    try:
        spec = _loads(p, meta, "spec")
        ispec = _loads(p, meta, "input_spec")
        class_names = _loads(p, meta, "class_names")
        variances = tuple(float(v) for v in _loads(p, meta, "variances"))
        post = _loads(p, meta, "postprocess")
        source = _loads(p, meta, "source", "{}")
        builder_name = meta["builder"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{p}: damaged bundle metadata ({e})") from None
    prior_shape = shapes.pop(_PRIORS_KEY, None)
    if prior_shape is None:
        raise ValueError(f"{p}: the bundle has no priors tensor")
    if not isinstance(spec, dict):
        raise ValueError(f"{p}: damaged bundle metadata (spec is not an object)")
    check_bundle_limits(spec, ispec, class_names, prior_shape, p)
    build = get_builder(builder_name)
    with torch.device("meta"):
        probe = build(spec)
    _check_shapes(p, probe, shapes)
    del probe
    try:
        with safe_open(str(p), framework="pt", device=str(map_location)) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{p}: not a readable safetensors file ({e})") from None
    priors = tensors.pop(_PRIORS_KEY)
    model = build(spec)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"{p}: weights do not fit the rebuilt network (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]})")
    model.eval()
    input_spec = InputSpec(image_size=tuple(ispec["image_size"]), channel_order=ispec["channel_order"],
                           mean=tuple(ispec["mean"]), std=tuple(ispec["std"]))
    return DetectorBundle(model=model, priors=priors, input_spec=input_spec, class_names=list(class_names),
                          builder=builder_name, spec=spec, variances=variances,  # type: ignore[arg-type]
                          postprocess=post, source=source)
