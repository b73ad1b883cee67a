"""Lazy loading: module attributes on first use (PEP 562), so that importing a package does not import torch or
torchvision, and the discovery of a registry's plugin modules (every module of a package, imported once)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: name ``n`` comes from submodule ``exports[n]`` on first use
    and is then cached in the package ``namespace``."""

    def __getattr__(name: str) -> Any:  # noqa: ANN401
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*namespace, *exports])

    return __getattr__, __dir__


def import_package_modules(package: str, exclude: frozenset[str] | set[str] = frozenset(),
                           done: set[str] | None = None) -> None:
    """Import every module of ``package`` (alphabetically; not those named in ``exclude`` nor ``_private`` ones):
    how the registries (dataset formats, metrics, runtimes) find built-in entries that register themselves, so that
    adding one is its module and its test. ``done`` (a set kept by the caller) makes it run once per package."""
    if done is not None:
        if package in done:
            return
        done.add(package)
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if info.name not in exclude and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
