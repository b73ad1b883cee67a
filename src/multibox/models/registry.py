"""Named model builders: ``register_model``, ``list_models``, ``build_model``, ``model_info``.

A builder is ``fn(num_classes, class_names, priors: PriorConfig | None, **kwargs) -> SSD``; ``priors=None``
means the builder's default prior preset.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch

from .._lazy import import_package_modules
from ..anchors import PriorConfig, get_prior_preset, prior_config_from_dict
from .backbones.registry import backbone_name
from .detector import SSD

__all__ = ["register_model", "list_models", "build_model", "model_info", "resolve_priors"]

ModelBuilder = Callable[..., SSD]
_F = TypeVar("_F", bound=ModelBuilder)
_REGISTRY: dict[str, ModelBuilder] = {}
_DISCOVERED: set[str] = set()


def register_model(name: str) -> Callable[[_F], _F]:
    """Decorator registering a builder under ``name`` (a name can be registered once)."""

    def decorator(fn: _F) -> _F:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"a model named {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell-style ``pattern`` (e.g. ``"ssd*_vgg16"``)."""
    _discover()
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def resolve_priors(priors: str | Mapping[str, Any] | PriorConfig | None) -> PriorConfig | None:
    """A preset name -> its :class:`PriorConfig`; a mapping (``model.kwargs.priors`` in a training config, as
    ``multibox anchors fit`` writes it) -> :func:`~multibox.anchors.prior_config_from_dict`; a config or ``None``
    passes through."""
    if priors is None or isinstance(priors, PriorConfig):
        return priors
    if isinstance(priors, str):
        return get_prior_preset(priors)
    if isinstance(priors, Mapping):
        return prior_config_from_dict(priors)
    raise TypeError(f"priors must be a preset name, a mapping, a PriorConfig or None, got {type(priors).__name__}")


def _discover() -> None:
    """Import every module of :mod:`multibox.models` once: the built-in builders register themselves, so a new
    model is its module (with ``@register_model``) and its test, no list to edit (docs/design.md, "Adding things")."""
    import_package_modules("multibox.models", exclude={"registry"}, done=_DISCOVERED)


def _builder(name: str) -> ModelBuilder:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None


def build_model(
    name: str,
    num_classes: int = 21,
    class_names: Sequence[str] | None = None,
    priors: str | Mapping[str, Any] | PriorConfig | None = None,
    **kwargs: Any,
) -> SSD:
    """Build the registered model ``name`` with ``num_classes`` classes (background included).

    ``priors`` is a preset name (``multibox.anchors.PRIOR_PRESETS``), a :class:`PriorConfig`, its mapping form
    (:func:`~multibox.anchors.prior_config_from_dict`), or ``None`` for
    the model's default; other keyword arguments go to the builder.
    """
    return _builder(name)(num_classes=num_classes, class_names=class_names, priors=resolve_priors(priors), **kwargs)


def model_info(name: str, **kwargs: Any) -> dict[str, Any]:
    """Facts about a registered model, built on the meta device (no weights allocated).

    Keys: ``name``, ``num_parameters``, ``num_priors``, ``image_size``, ``num_feature_maps``,
    ``feature_sizes``, ``num_classes``, ``backbone`` (its registered name, see
    :func:`~multibox.models.backbones.registry.list_backbones`; ``None`` if unregistered). ``kwargs`` go to
    :func:`build_model`.
    """
    with torch.device("meta"):
        model = build_model(name, **kwargs)
    return {
        "name": name,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_priors": model.num_priors,
        "image_size": tuple(model.prior_config.image_size),
        "num_feature_maps": model.num_feature_maps,
        "feature_sizes": model.feature_sizes(),
        "num_classes": model.num_classes,
        "backbone": backbone_name(model.backbone),
    }
