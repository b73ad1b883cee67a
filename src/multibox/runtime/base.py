"""The runtime interface and its registry.

A runtime builds, from a network ``model`` (images ``[B, 3, H, W]`` float32, already resized and normalized, ->
an output with ``cls_logits [B, P, C]`` and ``box_deltas [B, P, 4]``, or that pair as a tuple) and an example
input, a *network callable*: ``net(x) -> (cls_logits, box_deltas)`` as plain tensors. A network callable may also
offer ``fuse(post, num_classes)`` (decoding and NMS in the same engine, see :mod:`multibox.runtime.ort`) and a
``torch_threads`` attribute (how many threads PyTorch's own pre- and post-processing should use beside it).

Writing one::

    class Int8(Runtime):
        name = "int8"
        auto_rank = {}                       # not picked by "auto"

        def build(self, model, example):
            ...
            return network_callable

    register_runtime(Int8())                 # at the bottom of its own module under multibox/runtime/

``"auto"`` (:func:`auto_runtimes`) tries the available runtimes ranked for the device (highest ``auto_rank``
first), then ``eager``; the :class:`~multibox.detector.Detector` uses the first whose outputs equal eager mode's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._lazy import import_package_modules

__all__ = ["Runtime", "NetworkCallable", "register_runtime", "list_runtimes", "get_runtime", "auto_runtimes",
           "outputs_close", "check_device", "EAGER", "AUTO"]

# a network callable: input [B, 3, H, W] -> (cls_logits [B, P, C], box_deltas [B, P, 4])
NetworkCallable = Callable[[Tensor], tuple[Tensor, Tensor]]
EAGER = "eager"
AUTO = "auto"
# modules of this package that hold no runtime
_NOT_RUNTIMES = {"base", "memory"}
_REGISTRY: dict[str, Runtime] = {}
_DISCOVERED: set[str] = set()


def outputs_close(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor], rtol: float = 1e-4) -> bool:
    """Equal shapes, and values within ``rtol`` times the largest magnitude of ``b`` (at least 1)."""
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            return False
        if y.numel() and float((x.float() - y.float()).abs().max()) > rtol * max(float(y.abs().max()), 1.0):
            return False
    return True


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device` that can run here.

    Raises ``ValueError`` naming it for a string that is not a device (``"tpu"``), and for a CUDA device without
    a CUDA GPU (or past the last one) and ``"mps"`` without Apple's MPS backend, instead of PyTorch's errors at
    the first tensor moved there."""
    try:
        dev = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r}: not a device (expected cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: no CUDA GPU is available here; use cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {str(device)!r}: there are {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r}: Apple's MPS backend is not available here; use cpu")
    return dev


class Runtime:
    """One way to run a network. Subclasses set ``name`` and implement :meth:`build`.

    Attributes:
        name: the registered name (``Detector(runtime=name)``, ``multibox detect --runtime name``).
        auto_rank: device type (``"cpu"``, ``"cuda"``, ... or ``"*"`` for any) -> rank in ``"auto"`` (higher is
            tried first); a device type without a rank never gets this runtime from ``"auto"``.
        description: one line for listings.
        exact: whether its outputs equal eager mode's (within 1e-4 relative; the Detector checks it on the first
            batch). ``False`` (an int8 runtime): approximate by design; the Detector then checks only the output
            shapes, and the fused post-processing against PyTorch's on the runtime's own outputs.
    """

    name: ClassVar[str] = ""
    auto_rank: ClassVar[dict[str, int]] = {}
    description: ClassVar[str] = ""
    exact: ClassVar[bool] = True

    def configure(self, options: Mapping[str, Any], input_spec: Any = None) -> Runtime:  # noqa: ANN401
        """This runtime with ``options`` (``Detector(..., runtime_options={...})``; ``input_spec``: the detector's
        :class:`~multibox.models.spec.InputSpec`, for runtimes that pre-process data themselves, e.g. calibration
        images). The default takes no options: any is a ``ValueError`` naming it."""
        if options:
            raise ValueError(f"runtime {self.name!r} takes no options, got {', '.join(sorted(options))}")
        return self

    def check(self, device: torch.device) -> None:
        """Raise a clear error (``ValueError``, or ``ImportError`` naming the package to install) when this
        runtime cannot run on ``device``; the default accepts every device."""

    def available(self, device: torch.device) -> bool:
        """Whether :meth:`check` passes (cheap: used by ``"auto"`` for every detector)."""
        try:
            self.check(device)
        except (ValueError, ImportError):
            return False
        return True

    def rank(self, device: torch.device) -> int | None:
        """This runtime's rank in ``"auto"`` on ``device`` (``None``: not used by ``"auto"``)."""
        return self.auto_rank.get(device.type, self.auto_rank.get("*"))

    def build(self, model: nn.Module, example: Tensor) -> NetworkCallable:
        """A network callable for ``model`` (eval mode, on ``example``'s device), built for inputs shaped like
        ``example`` ``[B, 3, H, W]``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<runtime {self.name!r}>"


def register_runtime(runtime: Runtime, *, replace: bool = False) -> Runtime:
    """Add ``runtime`` under ``runtime.name`` (a second one of the same name is an error unless ``replace``)."""
    name = runtime.name
    if not name or name == AUTO or not isinstance(name, str):
        raise ValueError(f"a runtime needs a name other than {AUTO!r}, got {name!r}")
    if name in _REGISTRY and not replace and _REGISTRY[name] is not runtime:
        raise ValueError(f"a runtime named {name!r} is already registered ({_REGISTRY[name]!r})")
    _REGISTRY[name] = runtime
    return runtime


def _discover() -> None:
    """Import every runtime module of this package once (each registers its own runtimes)."""
    import_package_modules(__name__.rpartition(".")[0], exclude=_NOT_RUNTIMES, done=_DISCOVERED)


def list_runtimes() -> list[str]:
    """The registered runtime names, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get_runtime(name: str) -> Runtime:
    """The runtime registered as ``name``; ``ValueError`` listing the names otherwise."""
    _discover()
    if name not in _REGISTRY:
        raise ValueError(f"unknown runtime {name!r}: use 'auto' or one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def auto_runtimes(device: torch.device | str) -> list[str]:
    """What ``"auto"`` tries on ``device``, in order: the available runtimes ranked for its type (highest first,
    then by name), then ``"eager"``."""
    _discover()
    device = torch.device(device)
    ranked = [(r.rank(device), n) for n, r in _REGISTRY.items() if n != EAGER]
    ranked = [(k, n) for k, n in ranked if k is not None]
    order = [n for _, n in sorted(ranked, key=lambda t: (-t[0], t[1]))]
    return [n for n in order if _REGISTRY[n].available(device)] + [EAGER]
