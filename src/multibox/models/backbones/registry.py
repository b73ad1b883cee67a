"""The backbones registry: ``register_backbone``, ``list_backbones``, ``build_backbone``, ``backbone_info``.

A backbone registers itself in its own module (``vgg16`` in :mod:`~multibox.models.backbones.vgg`,
``mobilenet_v1`` and ``mobilenet_v2`` in :mod:`~multibox.models.backbones.mobilenet`, ``ssd7`` in
:mod:`multibox.models.ssd7`); the SSD builders build theirs with :func:`build_backbone`, and ``multibox models``
lists them. A factory is ``fn(**kwargs) -> Backbone`` (images ``[B, 3, H, W]`` -> feature maps, with
``out_channels`` and ``strides``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from ..._lazy import import_package_modules
from .base import Backbone

__all__ = ["register_backbone", "list_backbones", "build_backbone", "backbone_info", "backbone_name"]

BackboneFactory = Callable[..., Backbone]
_F = TypeVar("_F", bound=BackboneFactory)
_REGISTRY: dict[str, tuple[BackboneFactory, str]] = {}
_DISCOVERED: set[str] = set()


def register_backbone(name: str, description: str = "") -> Callable[[_F], _F]:
    """Decorator registering a backbone factory (a :class:`Backbone` subclass or a function returning one) under
    ``name`` with a one-line ``description`` (default: the first line of its docstring)."""

    def decorator(fn: _F) -> _F:
        old = _REGISTRY.get(name)
        if old is not None and old[0] is not fn and getattr(old[0], "__qualname__", None) != fn.__qualname__:
            raise ValueError(f"a backbone named {name!r} is already registered")
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = (fn, doc)
        return fn

    return decorator


def _discover() -> None:
    """Import every module of this package once: the built-in backbones register themselves, so a new backbone is
    its module (with ``@register_backbone``) and its test (docs/design.md, "Adding things")."""
    import_package_modules(__name__.rpartition(".")[0], exclude={"registry", "base"}, done=_DISCOVERED)
    import_package_modules("multibox.models", exclude={"registry"}, done=_DISCOVERED)  # SSD7 defines its own


def list_backbones() -> list[str]:
    """Sorted registered backbone names."""
    _discover()
    return sorted(_REGISTRY)


def build_backbone(name: str, **kwargs: Any) -> Backbone:
    """Build backbone ``name`` with the factory's keyword arguments; ``KeyError`` naming the registered ones.
    ``"timm:NAME"`` is the ``timm`` backbone with ``model_name="NAME"`` (any timm model)."""
    if name.startswith("timm:") and len(name) > len("timm:"):
        name, kwargs = "timm", {"model_name": name[len("timm:"):], **kwargs}
    if name not in _REGISTRY:
        _discover()
    try:
        fn = _REGISTRY[name][0]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None
    return fn(**kwargs)


def backbone_name(backbone: torch.nn.Module) -> str | None:
    """The registered name whose factory is the class of ``backbone``, or the ``registered_name`` that a factory
    function set on it (``None`` when neither is registered)."""
    named = getattr(backbone, "registered_name", None)
    if isinstance(named, str) and named in _REGISTRY:
        return named
    for name, (fn, _) in _REGISTRY.items():
        if type(backbone) is fn:
            return name
    return None


def backbone_info(name: str, **kwargs: Any) -> dict[str, Any]:
    """Facts about a registered backbone, built on the meta device (no weights allocated): ``name``,
    ``description``, ``out_channels``, ``strides``, ``num_parameters``."""
    with torch.device("meta"):
        b = build_backbone(name, **kwargs)
    return {"name": name, "description": _REGISTRY[name][1], "out_channels": list(b.out_channels),
            "strides": list(b.strides), "num_parameters": sum(p.numel() for p in b.parameters())}
