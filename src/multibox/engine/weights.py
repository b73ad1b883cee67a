"""Weight transfer for fine-tuning: partial loads, class remapping, freezing, ImageNet backbone init.

Name patterns (``exclude`` of :func:`load_weights`, ``patterns`` of :func:`freeze` / :func:`trainable_only`)
match full parameter names such as ``head.classification.0.weight``. A pattern is

* a shell-style glob (:func:`fnmatch.fnmatchcase`, case-sensitive) on the whole name: ``"head.*"``,
  ``"backbone.conv[12]_*"``; or
* a scope: a name matches when it starts with ``pattern + "."``, so ``"head.classification"`` matches every
  parameter of that module (SSD-Tensorflow's ``checkpoint_exclude_scopes`` style); or
* a regular expression when written ``"re:<regex>"``, searched (:func:`re.search`) in the name:
  ``r"re:^head\\.classification\\.\\d+\\.bias$"``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import load_weights_file, model_state_dict, unwrap_model

__all__ = [
    "LoadReport",
    "name_matches",
    "load_weights",
    "classifier_layers",
    "freeze",
    "trainable_only",
    "set_frozen_bn_eval",
    "load_backbone_weights",
]

Shape = tuple[int, ...]


# ---------------------------------------------------------------------------------------------- patterns
def _compile(patterns: Sequence[str] | str) -> list[tuple[str, Any]]:
    if isinstance(patterns, str):
        patterns = [patterns]
    out: list[tuple[str, Any]] = []
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise ValueError(f"name patterns must be non-empty strings, got {p!r}")
        if p.startswith("re:"):
            try:
                out.append((p, re.compile(p[3:])))
            except re.error as err:
                raise ValueError(f"invalid regular expression in pattern {p!r}: {err}") from err
        else:
            out.append((p, None))
    return out


def _match_one(name: str, pattern: str, regex: re.Pattern[str] | None) -> bool:
    if regex is not None:
        return regex.search(name) is not None
    return fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".")


def name_matches(name: str, patterns: Sequence[str] | str) -> bool:
    """Whether parameter ``name`` matches any of ``patterns`` (glob, scope prefix or ``re:`` regex; see the
    module docstring)."""
    return any(_match_one(name, p, rx) for p, rx in _compile(patterns))


# ------------------------------------------------------------------------------------------------ report
@dataclass
class LoadReport:
    """What :func:`load_weights` (or :func:`load_backbone_weights`) did, by target parameter name.

    * ``loaded``: copied from the source as they are;
    * ``remapped``: per-class output layers whose rows were carried over class by class (see
      ``classes_kept``; the other classes keep their fresh init);
    * ``skipped_excluded``: in both, but matched by an ``exclude`` pattern (left at their init);
    * ``skipped_shape``: ``(name, source shape, target shape)`` of entries whose shapes differ (left at init);
    * ``missing``: in the model but not in the source (left at their init);
    * ``unexpected``: in the source but not in the model (ignored);
    * ``classes_kept``: class names whose classifier rows came from the source (background included);
    * ``classes_new``: class names of the model that the source does not have.
    """

    loaded: list[str] = field(default_factory=list)
    skipped_excluded: list[str] = field(default_factory=list)
    skipped_shape: list[tuple[str, Shape, Shape]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    remapped: list[str] = field(default_factory=list)
    classes_kept: list[str] = field(default_factory=list)
    classes_new: list[str] = field(default_factory=list)

    def summary(self, max_names: int = 8) -> str:
        """A few human-readable lines: counts, and up to ``max_names`` names per category."""

        def names(items: Sequence[Any]) -> str:
            shown = [str(x) for x in items[:max_names]]
            more = f", ... (+{len(items) - max_names})" if len(items) > max_names else ""
            return ", ".join(shown) + more

        lines = [
            f"loaded {len(self.loaded)} tensors, remapped {len(self.remapped)}, "
            f"excluded {len(self.skipped_excluded)}, shape mismatch {len(self.skipped_shape)}, "
            f"missing {len(self.missing)}, unexpected {len(self.unexpected)}"
        ]
        if self.remapped:
            lines.append(f"  classes carried over: {names(self.classes_kept)}")
            lines.append(f"  new classes (fresh init): {names(self.classes_new) or '-'}")
        if self.skipped_excluded:
            lines.append(f"  excluded: {names(self.skipped_excluded)}")
        if self.skipped_shape:
            shapes = [f"{n} {list(s)} -> {list(t)}" for n, s, t in self.skipped_shape]
            lines.append(f"  shape mismatch (kept init): {names(shapes)}")
        if self.missing:
            lines.append(f"  missing (kept init): {names(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {names(self.unexpected)}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------- class remapping
def classifier_layers(model: nn.Module) -> dict[str, int]:
    """The per-class output layers of an SSD: ``{parameter name: anchors per location}``.

    Read from ``model.head.classification`` (one branch per feature map) and ``model.head.num_anchors``: in
    each branch, the last ``Conv2d`` / ``Linear`` with ``num_anchors[k] * num_classes`` outputs. Its weight
    and bias rows are anchor-major: output channel ``a * C + c`` is class ``c`` of anchor ``a``
    (:func:`multibox.models.heads.flatten_predictions`). Raises ``ValueError`` when the head does not expose
    this layout.
    """
    model = unwrap_model(model)
    head = getattr(model, "head", None)
    branches = getattr(head, "classification", None)
    num_anchors = getattr(head, "num_anchors", None)
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(branches, nn.ModuleList) or num_anchors is None or num_classes is None:
        raise ValueError(
            f"cannot find the per-class output layers of {type(model).__name__}: class remapping needs "
            "model.num_classes, model.head.classification (a ModuleList, one branch per feature map) and "
            "model.head.num_anchors"
        )
    out: dict[str, int] = {}
    for k, (branch, a) in enumerate(zip(branches, num_anchors, strict=True)):
        found = None
        for sub_name, m in branch.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.shape[0] == int(a) * int(num_classes):
                found = (sub_name, m)
        if found is None:
            raise ValueError(
                f"head.classification.{k} has no Conv2d/Linear with {a} x {num_classes} outputs; "
                "cannot locate its per-class rows"
            )
        prefix = f"head.classification.{k}" + (f".{found[0]}" if found[0] else "")
        out[f"{prefix}.weight"] = int(a)
        if found[1].bias is not None:
            out[f"{prefix}.bias"] = int(a)
    return out


def _class_index_map(source_names: Sequence[str], target_names: Sequence[str]) -> list[int | None]:
    """For every target class, its source index (or ``None``); background (index 0) maps to 0."""
    for what, names in (("source_class_names", source_names), ("model.class_names", target_names)):
        dup = sorted({n for n in names[1:] if list(names[1:]).count(n) > 1})
        if dup:
            raise ValueError(f"{what} has duplicate class names {dup}")
    where = {n: i for i, n in enumerate(source_names) if i > 0}
    return [0] + [where.get(n) for n in target_names[1:]]


def _remap_rows(src: Tensor, dst: Tensor, anchors: int, index: list[int | None]) -> Tensor:
    """``dst`` (``[A * C_t, ...]``) with class rows copied from ``src`` (``[A * C_s, ...]``) per ``index``."""
    c_t = len(index)
    c_s = src.shape[0] // anchors
    out = dst.detach().clone()
    src_v = src.detach().to(dtype=out.dtype, device=out.device).reshape(anchors, c_s, *src.shape[1:])
    out_v = out.view(anchors, c_t, *dst.shape[1:])
    for j, i in enumerate(index):
        if i is not None:
            out_v[:, j] = src_v[:, i]
    return out


# ------------------------------------------------------------------------------------------------ loading
def load_weights(
    model: nn.Module,
    source: Mapping[str, Tensor] | str | os.PathLike,
    *,
    exclude: Sequence[str] = (),
    source_class_names: Sequence[str] | None = None,
    strict_shapes: bool = False,
) -> LoadReport:
    """Copy what fits from ``source`` into ``model`` (parameters and persistent buffers) and report the rest.

    Args:
        model: the target (DDP / compiled wrappers are unwrapped).
        source: a state dict, or a file: ``.safetensors``, a multibox ``.pt`` checkpoint, or a ``.pt`` /
            ``.pth`` state dict (``weights_only=True``). ``module.`` / ``_orig_mod.`` prefixes are removed.
        exclude: name patterns (globs, scopes or ``re:`` regexes, see the module docstring) of target entries
            not to load, e.g. ``["head.classification"]`` to re-learn the classifier.
        source_class_names: the source's classes (background first). Read from the file's metadata when not
            given. When known, and ``model.class_names`` differ, the per-class rows of the classifier
            (:func:`classifier_layers`) are carried over for classes present in both by name, the background
            row always; the model's new classes keep their fresh init.
        strict_shapes: raise ``ValueError`` on any shape mismatch instead of skipping it.

    Returns a :class:`LoadReport`. Entries not loaded keep their current values.
    """
    model = unwrap_model(model)
    if isinstance(source, Mapping):
        src = model_state_dict(source)
        info: dict[str, Any] = {}
    else:
        src, info = load_weights_file(source, "cpu")
    if source_class_names is None and info.get("class_names") is not None:
        source_class_names = list(info["class_names"])
    rx = _compile(exclude)
    target = model.state_dict()
    target_names = getattr(model, "class_names", None)

    remap: dict[str, int] = {}
    index: list[int | None] | None = None
    if source_class_names is not None and target_names is not None:
        source_class_names = [str(n) for n in source_class_names]
        if list(source_class_names) != list(target_names):
            remap = classifier_layers(model)
            index = _class_index_map(source_class_names, list(target_names))

    report = LoadReport()
    new_state: dict[str, Tensor] = {}
    for name, value in src.items():
        if name not in target:
            report.unexpected.append(name)
            continue
        if any(_match_one(name, p, r) for p, r in rx):
            report.skipped_excluded.append(name)
            continue
        dst = target[name]
        if name in remap and index is not None:
            a = remap[name]
            c_s = len(source_class_names)  # type: ignore[arg-type]
            if tuple(value.shape) == (a * c_s, *dst.shape[1:]):
                new_state[name] = _remap_rows(value, dst, a, index)
                report.remapped.append(name)
                continue
            if tuple(value.shape) == tuple(dst.shape):
                raise ValueError(
                    f"source_class_names has {c_s} classes but the source's {name} has shape "
                    f"{list(value.shape)}, i.e. {value.shape[0] // a} classes per anchor"
                )
        if tuple(value.shape) != tuple(dst.shape):
            report.skipped_shape.append((name, tuple(value.shape), tuple(dst.shape)))
            continue
        new_state[name] = value
        report.loaded.append(name)
    report.missing = [k for k in target if k not in src]
    if strict_shapes and report.skipped_shape:
        lines = "; ".join(f"{n}: source {list(s)} vs model {list(t)}" for n, s, t in report.skipped_shape)
        raise ValueError(f"shape mismatch loading {_describe(source)}: {lines}")
    if report.remapped and index is not None:
        report.classes_kept = [n for n, i in zip(target_names, index, strict=True) if i is not None]
        report.classes_new = [n for n, i in zip(target_names, index, strict=True) if i is None]
    with torch.no_grad():
        model.load_state_dict(new_state, strict=False)
    return report


def _describe(source: object) -> str:
    return "a state dict" if isinstance(source, Mapping) else os.fspath(source)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ freezing
def _matching_params(model: nn.Module, patterns: Sequence[str] | str) -> tuple[list[str], list[str]]:
    compiled = _compile(patterns)
    params = [n for n, _ in unwrap_model(model).named_parameters()]
    unused = [p for p, r in compiled if not any(_match_one(n, p, r) for n in params)]
    if unused:
        raise ValueError(f"patterns {unused} match no parameter of {type(unwrap_model(model)).__name__}")
    matched = [n for n in params if any(_match_one(n, p, r) for p, r in compiled)]
    return matched, params


def freeze(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` on the parameters matching ``patterns``; returns their names.

    A pattern that matches nothing raises ``ValueError`` (a typo would otherwise train everything). Call
    :func:`set_frozen_bn_eval` after every ``model.train()`` so frozen BatchNorm layers keep their statistics.
    """
    matched, _ = _matching_params(model, patterns)
    params = dict(unwrap_model(model).named_parameters())
    for n in matched:
        params[n].requires_grad_(False)
    return matched


def trainable_only(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Train only the parameters matching ``patterns`` ("train only the new layers"): they get
    ``requires_grad=True``, every other one ``False``. Returns the names of the frozen parameters."""
    matched, names = _matching_params(model, patterns)
    keep = set(matched)
    params = dict(unwrap_model(model).named_parameters())
    frozen = []
    for n in names:
        params[n].requires_grad_(n in keep)
        if n not in keep:
            frozen.append(n)
    return frozen


def set_frozen_bn_eval(model: nn.Module, frozen_names: Iterable[str] | None = None) -> list[str]:
    """Put the BatchNorm layers of frozen parts in eval mode (running statistics used, not updated).

    A BatchNorm layer is frozen when all its affine parameters are in ``frozen_names`` (default: the
    parameters with ``requires_grad=False``); one without affine parameters when every parameter of its
    parent module is. Call after ``model.train()``. Returns the names of the layers set to eval.
    """
    model = unwrap_model(model)
    if frozen_names is None:
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    else:
        frozen = set(frozen_names)
    modules = dict(model.named_modules())
    done = []
    for name, m in modules.items():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        own = [f"{name}.{p}" if name else p for p, _ in m.named_parameters(recurse=False)]
        if not own:
            parent = name.rpartition(".")[0]
            own = [f"{parent}.{p}" if parent else p for p, _ in modules[parent].named_parameters()]
        if own and all(n in frozen for n in own):
            m.eval()
            done.append(name)
    return done


# ----------------------------------------------------------------------------------- ImageNet backbone init
def detector_backbone_state(state: Mapping[str, Tensor], backbone: nn.Module) -> Mapping[str, Tensor]:
    """The backbone's part of ``state`` when ``state`` is a whole detector's (an SSD checkpoint or zoo bundle:
    keys ``backbone.<name>`` for the backbone's own names, none of them without the prefix), with the prefix
    removed; any other state dict (an ImageNet classifier's) unchanged."""
    own = set(backbone.state_dict())
    if any(k in own for k in state):
        return state
    inner = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return inner if any(k in own for k in inner) else state


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Initialize ``model.backbone`` from an ImageNet classifier's state dict file (``.pth`` / ``.pt`` with
    ``weights_only=True``, or ``.safetensors``), e.g. torchvision's ``vgg16`` for a VGG16 SSD, or from the
    backbone of a trained detector of the same backbone family (a multibox checkpoint or zoo bundle: its
    ``backbone.*`` tensors, :func:`detector_backbone_state`), e.g. a detection-pretrained MobileNetV2.

    Calls ``model.backbone.load_pretrained(state_dict)`` (contract: :meth:`Backbone.load_pretrained`; a
    ``"skipped"`` list is read as ``unexpected`` and, without ``"missing"``, every backbone entry not loaded
    is reported missing). The names in the returned report are the model's (``backbone.``-prefixed) except
    ``unexpected``, which are the file's keys. ``ValueError`` from the backbone is re-raised naming the file.
    """
    model = unwrap_model(model)
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ValueError(f"{type(model).__name__} has no .backbone")
    state, _ = load_weights_file(path, "cpu")
    state = detector_backbone_state(state, backbone)
    try:
        result = backbone.load_pretrained(state)
    except ValueError as err:
        raise ValueError(f"{os.fspath(path)}: {err}") from err
    if not isinstance(result, Mapping):
        raise TypeError(f"{type(backbone).__name__}.load_pretrained must return a dict, got {type(result).__name__}")
    own = list(backbone.state_dict())
    own_set = set(own)

    def ours(key: str) -> str:
        return key[len("module."):] if key.startswith("module.") and key[len("module."):] in own_set else key

    loaded = [ours(k) for k in result.get("loaded", [])]
    foreign = [k for k in loaded if k not in own_set]
    if foreign:
        raise ValueError(
            f"{type(backbone).__name__}.load_pretrained reported loading {foreign[:3]}, which are not its own names"
        )
    if "missing" in result:
        missing = list(result["missing"])
    else:  # backbones that report only what they loaded: everything else kept its init
        missing = [k for k in own if k not in set(loaded)]
    return LoadReport(
        loaded=[f"backbone.{n}" for n in loaded],
        skipped_shape=[(f"backbone.{n}", tuple(s), tuple(t)) for n, s, t in result.get("skipped_shape", [])],
        missing=[f"backbone.{n}" for n in missing],
        unexpected=[*result.get("unexpected", []), *result.get("skipped", [])],
    )
