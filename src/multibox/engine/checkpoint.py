"""Training checkpoints (``NAME.pt``) and weight files (``NAME.safetensors``), written atomically.

Two kinds of files live in a run's ``checkpoints/`` folder:

* ``NAME.pt``: the whole training state, a dict that loads with ``torch.load(path, weights_only=True)``:

  ======================  ===========================================================================
  ``model``               the model's ``state_dict`` (``DataParallel`` / ``torch.compile`` prefixes removed)
  ``optimizer``           ``optimizer.state_dict()`` or ``None``
  ``ema``                 ``None``, or the weight average (``ema.decay`` on; :mod:`multibox.engine.ema`):
                          ``{"weights": state dict, "updates": int, "decay": float}``
  ``scheduler``           ``scheduler.state_dict()`` or ``None``
  ``scaler``              ``GradScaler.state_dict()`` or ``None``
  ``step`` / ``epoch``    ints: optimizer steps done, current epoch
  ``sampler``             a small dict of ints, e.g. ``{"epoch": 3, "batch_in_epoch": 120}``
  ``rng``                 :func:`capture_rng_state` (Python, NumPy, torch CPU and CUDA generators)
  ``config``              the resolved configuration, a plain (JSON-able) dict
  ``class_names``         ``list[str]``, index 0 background
  ``model_name``          the registered model name (:func:`multibox.models.build_model`)
  ``model_kwargs``        plain (JSON-able) keyword arguments of ``build_model`` besides the classes
  ``metrics``             dict of the latest evaluation results
  ``best``                (written by :class:`CheckpointManager`) ``{"metric", "step", "higher_is_better"}``
  ``format_version``      :data:`FORMAT_VERSION`
  ======================  ===========================================================================

* ``NAME.safetensors``: the model weights only (the weight average when the run kept one), with string metadata
  ``model_name``, ``num_classes``, ``class_names`` (JSON list), ``model_kwargs`` (JSON), ``config`` (JSON),
  ``step``, ``format_version`` and ``format`` (``"multibox-weights"``).

Every file is written to a temporary file in the same folder (``.NAME.XXXX.tmp``), flushed and fsynced,
moved over the final name with ``os.replace`` and the folder is fsynced: a crash or ``kill -9`` during a save
leaves the previous file intact under its name. Loaders never look at temporary names.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch  # called as safetensors.torch.save_file: a patch of that function (tests) is seen
import torch
from safetensors import safe_open
from torch import Tensor, nn

from ..fileio import atomic_write_bytes, atomic_write_with
from ..weights_io import (
    FORMAT_VERSION,
    REQUIRED_KEYS,
    WEIGHTS_FORMAT,
    CheckpointError,
    check_checkpoint_dict,
    check_class_names,
    load_weights_file,
    pt_step,
    strip_wrapper_prefixes,
    torch_load_checked,
)

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointManager",
    "capture_rng_state",
    "restore_rng_state",
    "deployed_weights",
    "save_checkpoint",
    "save_weights",
    "load_checkpoint",
    "load_weights_file",
    "unwrap_model",
    "model_state_dict",
]

# ----------------------------------------------------------------------------------------------- helpers
def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``DataParallel`` / ``DistributedDataParallel`` (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def model_state_dict(model: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` of a module (unwrapped) or a state dict, without wrapper prefixes."""
    if isinstance(model, nn.Module):
        return dict(unwrap_model(model).state_dict())
    if isinstance(model, Mapping):
        bad = [k for k, v in model.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
        if bad:
            raise TypeError(f"a state dict maps str names to tensors; offending keys: {bad[:5]}")
        return strip_wrapper_prefixes(model)
    raise TypeError(f"expected an nn.Module or a state dict, got {type(model).__name__}")


def _fsync_dir(folder: Path) -> None:
    """fsync a directory so that a rename in it survives a power loss (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike, writer: Any) -> Path:
    """``atomic_write_with`` (tmp in the same folder, fsync, ``os.replace``) plus an fsync of the folder."""
    final = atomic_write_with(path, writer)
    _fsync_dir(final.parent)
    return final


def _atomic_link_or_copy(src: Path, dst: Path) -> Path:
    """Make ``dst`` a copy of the finished file ``src`` atomically: a hard link when the file system has them
    (later ``os.replace`` of ``src`` does not touch ``dst``), else a byte copy."""

    def write(tmp: Path) -> None:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    return _atomic_write(dst, write)


def _plain(obj: Any, where: str) -> Any:
    """A copy of ``obj`` made of what ``torch.load(weights_only=True)`` accepts (containers copied, tensors
    shared). NumPy scalars become Python numbers, NumPy arrays tensors, paths strings, dataclasses dicts.
    Anything else raises ``TypeError`` naming where it sits."""
    if isinstance(obj, np.generic):  # before the Python types: np.float64 subclasses float
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, bytearray)):
        return obj
    if isinstance(obj, (Tensor, torch.dtype, torch.device, torch.Size)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name), f"{where}.{f.name}") for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {_plain(k, f"{where} key {k!r}"): _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, list):
            return items
        return tuple(items) if isinstance(obj, tuple) else set(items)
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which torch.load(weights_only=True) "
        "cannot read back; store plain values (numbers, strings, lists, dicts, tensors) instead"
    )


def _jsonable(obj: Any, where: str) -> Any:
    """``obj`` as JSON-compatible plain values (tuples become lists); ``TypeError`` naming the bad entry."""
    if isinstance(obj, np.generic):
        return _jsonable(obj.item(), where)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj  # json writes NaN / Infinity and reads them back
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name), f"{where}.{f.name}") for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has a non-string key {k!r}; JSON metadata needs string keys")
            out[k] = _jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; it must be plain JSON values "
        "(numbers, strings, lists, dicts); pass e.g. a prior preset name instead of a PriorConfig"
    )


# --------------------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's and torch's global generators, as values ``weights_only`` loads.

    Returns ``{"python": {"version": int, "state": int64 tensor [625], "gauss_next": float | None},
    "numpy": {"name": str, "keys": int64 tensor [624], "pos": int, "has_gauss": int, "cached_gaussian":
    float}, "torch": uint8 tensor, "cuda": list of uint8 tensors (one per visible GPU; empty without CUDA)}``.
    """
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    cuda: list[Tensor] = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [t.clone() for t in torch.cuda.get_rng_state_all()]
    return {
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state().clone(),
        "cuda": cuda,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the global generators from :func:`capture_rng_state`'s dict (entries that are absent are left alone;
    CUDA states are restored when CUDA is available and the number of GPUs matches)."""
    if not isinstance(state, Mapping):
        raise TypeError(f"an RNG state is a dict from capture_rng_state(), got {type(state).__name__}")
    if "python" in state:
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    if "numpy" in state:
        npst = state["numpy"]
        keys = np.asarray(npst["keys"].tolist(), dtype=np.uint32)
        np.random.set_state(
            (npst["name"], keys, int(npst["pos"]), int(npst["has_gauss"]), float(npst["cached_gaussian"]))
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"].to(dtype=torch.uint8, device="cpu"))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.to(dtype=torch.uint8, device="cpu") for t in cuda])


# ------------------------------------------------------------------------------------------------ saving
def _full_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``state``, fill the optional keys, and convert it to weights_only-loadable values."""
    if not isinstance(state, Mapping):
        raise TypeError(f"a checkpoint state is a dict, got {type(state).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise KeyError(f"checkpoint state lacks {missing}; it needs at least {list(REQUIRED_KEYS)}")
    out = dict(state)
    out["model"] = model_state_dict(state["model"])
    out["class_names"] = check_class_names(state["class_names"], "state['class_names']")
    out["model_name"] = str(state["model_name"])
    out["step"] = int(state["step"])
    out["epoch"] = int(state.get("epoch") or 0)
    for key in ("optimizer", "scheduler", "scaler"):
        value = out.get(key)
        if value is not None and hasattr(value, "state_dict") and callable(value.state_dict):
            value = value.state_dict()  # an optimizer / scheduler / scaler object was passed
        out[key] = value
    sampler = out.get("sampler") or {}
    if not isinstance(sampler, Mapping):
        raise TypeError(f"state['sampler'] must be a dict of ints, got {type(sampler).__name__}")
    out["sampler"] = dict(sampler)
    out["model_kwargs"] = _jsonable(out.get("model_kwargs") or {}, "state['model_kwargs']")
    out["config"] = _jsonable(out.get("config") or {}, "state['config']")
    out["metrics"] = out.get("metrics") or {}
    if out.get("rng") is None:
        out["rng"] = capture_rng_state()
    out["format_version"] = FORMAT_VERSION
    return _plain(out, "state")


def deployed_weights(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """The weights a checkpoint state stands for: the moving average (``state["ema"]["weights"]``, written when
    the run had ``ema.decay`` on) when present, else ``state["model"]``. ``.safetensors`` files hold these."""
    ema = state.get("ema")
    if isinstance(ema, Mapping) and isinstance(ema.get("weights"), Mapping):
        return model_state_dict(ema["weights"])
    return model_state_dict(state["model"])


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write the training state ``state`` to ``path`` (``.pt``) atomically; returns the final path.

    ``state`` needs ``model`` (a state dict or a module), ``step``, ``model_name`` and ``class_names``; the
    other keys of the module docstring get defaults (``None``, 0, ``{}``; ``rng`` is captured now when
    absent; ``format_version`` is set). Optimizer / scheduler / scaler objects are replaced by their
    ``state_dict()``. Raises ``TypeError`` naming any entry ``torch.load(weights_only=True)`` could not read.
    """
    return _write_pt(path, _full_state(state))


def _write_pt(path: str | os.PathLike, full: dict[str, Any]) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(full, f)
            f.flush()

    return _atomic_write(path, write)


def _weights_metadata(
    num_classes: int, model_name: str, class_names: list[str], model_kwargs: Any, config: Any, step: int
) -> dict[str, str]:
    return {
        "format": WEIGHTS_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_name": str(model_name),
        "num_classes": str(int(num_classes)),
        "class_names": json.dumps(class_names),
        "model_kwargs": json.dumps(_jsonable(model_kwargs or {}, "model_kwargs")),
        "config": json.dumps(_jsonable(config or {}, "config")),
        "step": str(int(step)),
    }


def save_weights(
    path: str | os.PathLike,
    model: nn.Module | Mapping[str, Tensor],
    *,
    model_name: str,
    class_names: list[str] | tuple[str, ...],
    model_kwargs: Mapping[str, Any] | None,
    config: Mapping[str, Any] | None,
    step: int,
) -> Path:
    """Write the model's weights to ``path`` (``.safetensors``) with metadata, atomically; returns the path.

    ``model`` is a module (wrappers such as DDP are unwrapped) or a state dict. Tensors are saved on the CPU;
    tensors sharing memory are stored as separate copies. ``model_kwargs`` and ``config`` must be plain JSON
    values. Non-persistent buffers (the priors) are not saved: they are rebuilt by
    :func:`multibox.weights_io.load_model`.
    """
    names = check_class_names(class_names, "class_names")
    metadata = _weights_metadata(len(names), model_name, names, model_kwargs, config, step)
    tensors: dict[str, Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in model_state_dict(model).items():
        t = v.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) if t.numel() else (id(t), 0)
        if key in seen:
            t = t.clone()
        seen.add(key)
        tensors[k] = t

    def write(tmp: Path) -> None:
        safetensors.torch.save_file(tensors, os.fspath(tmp), metadata=metadata)

    return _atomic_write(path, write)


# ----------------------------------------------------------------------------------------------- loading
def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a ``.pt`` training checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises ``FileNotFoundError`` when ``path`` is missing and :class:`CheckpointError` (naming the file) when
    it is truncated or corrupt, refused by the ``weights_only`` loader, not a multibox checkpoint, or written
    by a newer format version. Restore RNGs with ``restore_rng_state(ckpt["rng"])``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint file {p} does not exist")
    if p.suffix == ".safetensors":
        raise CheckpointError(
            f"{p} holds model weights only; resuming needs the .pt training checkpoint next to it "
            "(use load_model or multibox.engine.weights.load_weights for the weights)"
        )
    obj = torch_load_checked(p, map_location, "checkpoint")
    check_checkpoint_dict(obj, p)
    return obj


# ------------------------------------------------------------------------------------------------ manager
_STEP_RE = re.compile(r"^step-(\d+)\.pt$")


class CheckpointManager:
    """Saves a run's checkpoints into ``folder``.

    Every :meth:`save` writes ``last.pt`` and ``last.safetensors``; when ``metric`` improves on the best so far
    also ``best.pt``, ``best.safetensors`` and ``best.json`` (``{"metric", "step", "higher_is_better"}``, read
    back on construction so that "best" survives a resume); when ``keep_last > 0`` also ``step-000123.pt``,
    keeping only the ``keep_last`` newest of those (``keep_last=0``: no step files). The saved state carries
    ``state["best"]``. Files of one save are written once and linked (or copied) to their other names.
    Stale temporary files left by a killed save are removed on construction, and a ``.pt`` / ``.safetensors``
    pair left one save apart by a kill between the two writes is repaired (:meth:`repair_pairs`).
    """

    def __init__(self, folder: str | os.PathLike, keep_last: int = 1) -> None:
        if int(keep_last) < 0:
            raise ValueError(f"keep_last must be >= 0, got {keep_last}")
        self.folder = Path(folder)
        self.keep_last = int(keep_last)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()
        self.repair_pairs()
        self.best: dict[str, Any] | None = self._read_best_json()

    # paths
    @property
    def last_path(self) -> Path:
        return self.folder / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.folder / "best.pt"

    @property
    def best_json_path(self) -> Path:
        return self.folder / "best.json"

    @property
    def best_metric(self) -> float | None:
        return None if self.best is None else float(self.best["metric"])

    def step_paths(self) -> list[Path]:
        """The ``step-N.pt`` files, oldest (smallest ``N``) first."""
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _STEP_RE.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """``last.pt`` if it exists, else the newest ``step-N.pt``, else ``None`` (the file to resume from)."""
        if self.last_path.is_file():
            return self.last_path
        steps = self.step_paths()
        return steps[-1] if steps else None

    # best tracking
    def _read_best_json(self) -> dict[str, Any] | None:
        p = self.best_json_path
        if not p.is_file():
            return None
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            best = {
                "metric": float(data["metric"]),
                "step": int(data["step"]),
                "higher_is_better": bool(data["higher_is_better"]),
            }
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{p} is not a valid best.json (expected {{\"metric\", \"step\", \"higher_is_better\"}}): {err}"
            ) from err
        return best

    def restore_best(self, state: Mapping[str, Any]) -> None:
        """Adopt ``state["best"]`` of a loaded checkpoint when this folder has no ``best.json``."""
        best = state.get("best")
        if self.best is None and isinstance(best, Mapping) and best.get("metric") is not None:
            self.best = {
                "metric": float(best["metric"]),
                "step": int(best["step"]),
                "higher_is_better": bool(best.get("higher_is_better", True)),
            }

    def is_better(self, metric: float, higher_is_better: bool = True) -> bool:
        """Whether ``metric`` beats the best so far (always, when there is none; NaN never does)."""
        if metric is None or math.isnan(float(metric)):
            return False
        if self.best is None:
            return True
        if bool(self.best["higher_is_better"]) != bool(higher_is_better):
            raise ValueError(
                f"best.json in {self.folder} was written with higher_is_better={self.best['higher_is_better']}, "
                f"now called with {higher_is_better}"
            )
        best = float(self.best["metric"])
        return float(metric) > best if higher_is_better else float(metric) < best

    def _remove_stale_temporaries(self) -> None:
        for p in self.folder.glob(".*.tmp"):
            if re.match(r"^\.(last|best|step-\d+)\.(pt|safetensors|json)\..+\.tmp$", p.name):
                p.unlink(missing_ok=True)

    def repair_pairs(self) -> list[Path]:
        """Make ``last.safetensors`` / ``best.safetensors`` (and ``best.json``) describe the same step as the
        ``.pt`` beside them again, after a save killed between the writes; returns the files rewritten.

        Saves write the ``.pt`` first, so the ``.pt`` is the complete, newer state: the weights file is rewritten
        from it (atomically). Called on construction, i.e. when a run resumes.
        """
        rewritten: list[Path] = []
        for stem in ("last", "best"):
            pt, st = self.folder / f"{stem}.pt", self.folder / f"{stem}.safetensors"
            if not pt.is_file():
                continue
            st_step: int | None = None
            if st.is_file():
                try:
                    with safe_open(os.fspath(st), framework="pt", device="cpu") as f:
                        st_step = int((f.metadata() or {}).get("step", -1))
                except Exception:  # noqa: BLE001 - safetensors raises its own types; an unreadable file is rewritten
                    st_step = None
            if st_step is not None and st_step == pt_step(pt):  # memory-mapped: no tensor is read
                continue
            pt_state = load_checkpoint(pt, map_location="cpu")
            if st_step == int(pt_state["step"]):
                continue
            rewritten.append(save_weights(st, deployed_weights(pt_state), model_name=pt_state["model_name"],
                                          class_names=pt_state["class_names"],
                                          model_kwargs=pt_state.get("model_kwargs") or {},
                                          config=pt_state.get("config") or {}, step=int(pt_state["step"])))
            best = pt_state.get("best")
            if stem == "best" and isinstance(best, Mapping) and best.get("metric") is not None:
                atomic_write_bytes(self.best_json_path, (json.dumps(dict(best), indent=2) + "\n").encode("utf-8"))
                rewritten.append(self.best_json_path)
        if rewritten:
            _fsync_dir(self.folder)
        return rewritten

    # saving
    def save(
        self,
        state: Mapping[str, Any],
        *,
        step: int,
        metric: float | None = None,
        higher_is_better: bool = True,
    ) -> dict[str, Path]:
        """Save ``state`` (see :func:`save_checkpoint`) at ``step``; returns ``{"last", "last_weights",
        ["best", "best_weights"], ["step"]}`` paths written.

        ``state["step"]``, when present, must equal ``step``. ``metric`` (e.g. validation mAP) decides whether
        this is the new best; ``higher_is_better=False`` for losses.
        """
        step = int(step)
        if "step" in state and int(state["step"]) != step:
            raise ValueError(f"state['step'] is {state['step']} but save() was called with step={step}")
        improved = metric is not None and self.is_better(float(metric), higher_is_better)
        best = self.best
        if improved:
            best = {"metric": float(metric), "step": step, "higher_is_better": bool(higher_is_better)}
        full = _full_state({**state, "step": step, "best": best})
        written: dict[str, Path] = {}
        written["last"] = _write_pt(self.last_path, full)
        written["last_weights"] = save_weights(
            self.folder / "last.safetensors",
            deployed_weights(full),
            model_name=full["model_name"],
            class_names=full["class_names"],
            model_kwargs=full["model_kwargs"],
            config=full["config"],
            step=step,
        )
        if improved:
            written["best"] = _atomic_link_or_copy(self.last_path, self.best_path)
            written["best_weights"] = _atomic_link_or_copy(written["last_weights"], self.folder / "best.safetensors")
            atomic_write_bytes(self.best_json_path, (json.dumps(best, indent=2) + "\n").encode("utf-8"))
            _fsync_dir(self.folder)
            self.best = best
        if self.keep_last > 0:
            written["step"] = _atomic_link_or_copy(self.last_path, self.folder / f"step-{step:06d}.pt")
            for old in self.step_paths()[: -self.keep_last]:
                old.unlink(missing_ok=True)
        return written
