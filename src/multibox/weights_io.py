"""Reading model files for inference: ``.safetensors`` weight files and multibox ``.pt`` checkpoints.

This module is what eval, detect and export use to turn a file into a model (:func:`load_model`); it does not
depend on the training engine. Writing checkpoints and resuming training live in
:mod:`multibox.engine.checkpoint`, which builds on the readers here.

Two kinds of files come out of a training run (see :mod:`multibox.engine.checkpoint` for the full layout):

* ``NAME.safetensors``: the weights, with string metadata ``model_name``, ``num_classes``, ``class_names`` (JSON
  list), ``model_kwargs`` (JSON), ``config`` (JSON), ``step``, ``format_version`` and ``format``
  (``"multibox-weights"``);
* ``NAME.pt``: the whole training state, a dict that loads with ``torch.load(path, weights_only=True)``.

What a file asks to build (input side, classes, prior boxes) is bounded with :mod:`multibox.limits` before any
weight is allocated, so a crafted file gets a clear error naming it instead of many gigabytes of memory.

A ``NAME.safetensors`` with a ``NAME.pt`` beside it (a run's ``last`` and ``best`` pairs) must describe the same
training step: a save killed between the two writes leaves them one save apart, and :func:`load_weights_file`
refuses such a pair (:class:`multibox.engine.checkpoint.CheckpointManager` repairs it when the run resumes).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from .limits import check_input_size, check_num_classes, check_num_priors
from .models import build_model
from .models.detector import SSD
from .models.qat import prepare_qat

__all__ = [
    "torch_load_checked",
    "FORMAT_VERSION",
    "WEIGHTS_FORMAT",
    "REQUIRED_KEYS",
    "CheckpointError",
    "strip_wrapper_prefixes",
    "check_class_names",
    "check_checkpoint_dict",
    "read_safetensors",
    "pt_step",
    "check_pair_consistent",
    "check_model_request",
    "load_weights_file",
    "load_model",
]

#: Version of the checkpoint layout; bumped when a key changes meaning.
FORMAT_VERSION = 1
#: ``format`` metadata entry of multibox weight files.
WEIGHTS_FORMAT = "multibox-weights"
#: Keys every ``.pt`` training checkpoint has.
REQUIRED_KEYS = ("model", "step", "model_name", "class_names")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: ``model_kwargs`` entries that set the input size (height, width) in pixels.
_SIZE_KWARGS = ("image_size", "input_size")


class CheckpointError(ValueError):
    """A checkpoint or weight file that cannot be read: truncated, corrupt, or not written by multibox."""


def strip_wrapper_prefixes(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove ``module.`` / ``_orig_mod.`` when every key carries it (repeatedly, for nested wrappers)."""
    out = dict(state)
    changed = True
    while changed and out:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                changed = True
    return out


def check_class_names(names: Any, where: str) -> list[str]:
    """``names`` as a list of strings, background first, at least two; ``TypeError`` / ``ValueError`` naming
    ``where`` otherwise."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise TypeError(f"{where} must be a list of class names (background first), got {type(names).__name__}")
    out = [str(n) for n in names]
    if len(out) < 2:
        raise ValueError(f"{where} needs the background name and at least one class, got {out}")
    return out


def check_checkpoint_dict(obj: Any, path: Path) -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless ``obj`` is a complete multibox checkpoint dict of a
    format version this multibox reads."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} is not a multibox checkpoint: it holds a {type(obj).__name__}, not a dict")
    if "format_version" not in obj:
        raise CheckpointError(
            f"{path} is not a multibox checkpoint (no 'format_version' key; keys: {sorted(map(str, obj))[:10]}); "
            "for a bare state dict use multibox.engine.weights.load_weights"
        )
    version = obj["format_version"]
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, newer than this multibox reads ({FORMAT_VERSION}); upgrade"
        )
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"{path} is not a complete multibox checkpoint: it lacks {missing}")
    if not isinstance(obj["model"], Mapping):
        raise CheckpointError(f"{path}: 'model' is a {type(obj['model']).__name__}, not a state dict")


def _safetensors_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot read weights file {path}: truncated or not a safetensors file ({err})") from err


def read_safetensors(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a ``.safetensors`` file; :class:`CheckpointError` naming it when unreadable."""
    try:
        with safe_open(os.fspath(path), framework="pt", device=str(device)) as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot read weights file {path}: truncated or not a safetensors file ({err})") from err
    return tensors, metadata


def torch_load_checked(path: Path, map_location: str | torch.device, what: str, mmap: bool = False) -> Any:  # noqa: ANN401
    """``torch.load(path, weights_only=True)`` with :class:`CheckpointError` naming the file (``what`` says which
    kind) when the loader refuses its objects or the file is truncated or corrupt: no code from a file runs."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} is not a multibox checkpoint: it holds objects that torch.load(weights_only=True) refuses "
            f"({err})"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {what} {path}: the file is truncated or corrupt ({err})") from err


def pt_step(path: str | os.PathLike) -> int | None:
    """The ``step`` recorded in a multibox ``.pt`` checkpoint, read without loading its tensors (memory-mapped);
    ``None`` when the file has none."""
    obj = torch_load_checked(Path(path), "cpu", "checkpoint", mmap=True)
    if isinstance(obj, Mapping) and "step" in obj:
        return int(obj["step"])
    return None


def check_pair_consistent(weights: str | os.PathLike, step: int | None) -> None:
    """For ``NAME.safetensors`` recording ``step``: when a ``NAME.pt`` lies beside it, its step must be the same.

    A save killed between writing ``NAME.pt`` and ``NAME.safetensors`` leaves them one save apart; this raises
    :class:`CheckpointError` naming both files and both steps. Unreadable or step-less ``.pt`` files are ignored
    here (their own loaders report them)."""
    p = Path(weights)
    twin = p.with_suffix(".pt")
    if step is None or not twin.is_file():
        return
    try:
        other = pt_step(twin)
    except CheckpointError:
        return
    if other is not None and other != step:
        raise CheckpointError(
            f"{p} holds step {step} but {twin.name} beside it holds step {other}: a save was interrupted between "
            "the two files. Resume the run (resume=" + str(twin) + ") to rewrite the pair, or load "
            f"{twin.name}, which has the complete state"
        )


def load_weights_file(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, info)`` from a ``.safetensors`` file, a multibox ``.pt`` checkpoint or a plain ``.pt`` /
    ``.pth`` state dict (``weights_only=True``; one wrapped under ``"model"`` or ``"state_dict"`` works too).

    ``info`` has what the file tells about the model: ``model_name``, ``class_names``, ``model_kwargs``,
    ``config``, ``step`` (each present only when known). Wrapper prefixes (``module.``) are stripped. A
    ``.safetensors`` whose ``.pt`` twin records another step is refused (:func:`check_pair_consistent`).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {p} does not exist")
    if p.suffix == ".safetensors":
        info = _safetensors_info(p, _safetensors_metadata(p))
        check_pair_consistent(p, info.get("step"))
        tensors, _ = read_safetensors(p, map_location)
        return strip_wrapper_prefixes(tensors), info
    obj = torch_load_checked(p, map_location, "weights file")
    info = {}
    if isinstance(obj, Mapping) and "format_version" in obj:
        check_checkpoint_dict(obj, p)
        info = {k: obj[k] for k in ("model_name", "class_names", "model_kwargs", "config", "step") if k in obj}
        ema = obj.get("ema")  # a run with ema.decay: its weights are the average (as in its .safetensors)
        obj = ema["weights"] if isinstance(ema, Mapping) and isinstance(ema.get("weights"), Mapping) else obj["model"]
    elif isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p} does not hold a state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{p} is not a state dict: entries {bad[:5]} are not tensors")
    return strip_wrapper_prefixes(obj), info


def _safetensors_info(p: Path, meta: Mapping[str, str]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for key in ("class_names", "model_kwargs", "config"):
        if key not in meta:
            continue
        try:
            info[key] = json.loads(meta[key])
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{p}: metadata entry {key!r} is not valid JSON ({err})") from err
        except RecursionError:
            raise CheckpointError(f"{p}: metadata entry {key!r} is nested too deeply") from None
    if "model_name" in meta:
        info["model_name"] = meta["model_name"]
    try:
        if "step" in meta:
            info["step"] = int(meta["step"])
        if "num_classes" in meta and "class_names" in info and int(meta["num_classes"]) != len(info["class_names"]):
            raise CheckpointError(
                f"{p}: metadata num_classes={meta['num_classes']} but class_names has {len(info['class_names'])}"
            )
    except ValueError as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{p}: metadata step / num_classes is not an integer ({err})") from err
    return info


def check_model_request(path: str | os.PathLike, model_name: str, num_classes: int,
                        model_kwargs: Mapping[str, Any]) -> None:
    """Bound what a file asks to build before its model is allocated (:mod:`multibox.limits`).

    Checks the number of classes and any ``image_size`` / ``input_size`` in ``model_kwargs`` first, then builds
    the model on the ``meta`` device (no memory) to check its input size and number of priors. Raises
    :class:`~multibox.limits.LimitError` (a ``ValueError``) naming ``path``, or :class:`CheckpointError` when the
    model cannot be built with those arguments.
    """
    check_num_classes(num_classes, path)
    for key in _SIZE_KWARGS:
        if key in model_kwargs:
            check_input_size(model_kwargs[key], f"{path}: model_kwargs[{key!r}]")
    try:
        with torch.device("meta"):
            probe = build_model(model_name, num_classes=num_classes, **dict(model_kwargs))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot build model {model_name!r} with {dict(model_kwargs)}: {err}") from err
    check_input_size(probe.prior_config.image_size, path)
    check_num_priors(int(probe.num_priors), path)


def load_model(path: str | os.PathLike, map_location: str = "cpu") -> SSD:
    """Build the model recorded in a ``.safetensors`` weights file or a ``.pt`` checkpoint and load its weights.

    The model is ``multibox.models.build_model(model_name, num_classes=len(class_names),
    class_names=class_names, **model_kwargs)`` with the file's weights loaded strictly, moved to
    ``map_location`` and put in eval mode; it has ``.class_names``. Returns an :class:`~multibox.models.SSD`
    (input images ``[B, 3, H, W]``; outputs ``cls_logits [B, P, C]``, ``box_deltas [B, P, 4]``). What the file
    asks for is bounded by :func:`check_model_request` before the model is built. Raises
    :class:`CheckpointError` (or :class:`~multibox.limits.LimitError`) naming the file when the metadata is
    missing, out of bounds, or the weights do not fit.
    """
    p = Path(path)
    state, info = load_weights_file(p, "cpu")
    for key in ("model_name", "class_names"):
        if key not in info:
            raise CheckpointError(
                f"{p} does not record '{key}', so the model cannot be rebuilt; build the model yourself and use "
                "multibox.engine.weights.load_weights"
            )
    names = check_class_names(info["class_names"], f"{p}: class_names")
    kwargs = info.get("model_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise CheckpointError(f"{p}: model_kwargs is a {type(kwargs).__name__}, not a mapping")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("num_classes", "class_names")}
    check_model_request(p, str(info["model_name"]), len(names), kwargs)
    try:
        model = build_model(info["model_name"], num_classes=len(names), class_names=names, **kwargs)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{p}: cannot build model {info['model_name']!r} with {kwargs}: {err}") from err
    config = info.get("config")
    quant = config.get("quant") if isinstance(config, Mapping) else None
    if isinstance(quant, Mapping) and quant.get("qat") is True:  # trained with quant.qat=true: its fake quantization
        prepare_qat(model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{p}: the weights do not fit model {info['model_name']!r}: {err}") from err
    return model.to(map_location).eval()
