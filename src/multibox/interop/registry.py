"""Registries of the importers (``multibox import FORMAT``) and of the detector-bundle builders.

An **importer** converts another framework's SSD into a detector bundle; it registers itself, on import of its
module, with :func:`register_importer`: its format name, help, CLI arguments and run function. A **bundle
builder** rebuilds a bundle's network from its JSON spec (:func:`register_builder`); an importer module registers
the builder its bundles name. The one table here, :data:`IMPORTER_MODULES`, says which module to import for a
format or builder name, so that ``multibox --help`` and loading a bundle import only what they need (importer
modules import torch and protobuf). Adding an importer: its module (calling :func:`register_importer` and
:func:`register_builder`), one line in :data:`IMPORTER_MODULES`, and its test. Importers and builders registered
from anywhere else (a plugin, a test) are found too.

This module imports nothing heavy: no torch.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Importer", "IMPORTER_MODULES", "register_importer", "list_importers", "get_importer",
           "register_builder", "list_builders", "get_builder", "parse_floats", "parse_classes"]

#: format (or bundle builder) name -> the module that registers it on import.
IMPORTER_MODULES: dict[str, str] = {
    "caffe": "multibox.interop.caffe",
    "tf-od": "multibox.interop.tensorflow",
    "torchvision": "multibox.interop.torchvision",
    "keras": "multibox.interop.keras",
    "tf-slim": "multibox.interop.slim",
}


@dataclass(frozen=True)
class Importer:
    """A registered importer.

    Attributes:
        name: the format (``multibox import NAME``).
        help: one line for ``multibox import --list``.
        description: the ``multibox import NAME --help`` text.
        add_arguments: adds its arguments to an ``argparse`` parser (``--out`` included).
        run: ``run(args) -> Path`` converts and writes the bundle, returning its path.
        builders: the bundle builders its bundles use.
        source_arg: the argument naming the source file whose stem is the default output name (``--name``
            overrides it): ``multibox import`` checks ``OUT/<name>.safetensors`` before converting.
        module: where it was registered.
    """

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None] = field(repr=False)
    run: Callable[[argparse.Namespace], Path] = field(repr=False)
    builders: tuple[str, ...] = ()
    source_arg: str = ""
    module: str = ""

    def to_json(self) -> dict[str, Any]:
        """``{"name", "help", "builders", "module"}``."""
        return {"name": self.name, "help": self.help, "builders": list(self.builders), "module": self.module}


_IMPORTERS: dict[str, Importer] = {}
_BUILDERS: dict[str, Callable[[dict[str, Any]], Any]] = {}


def register_importer(name: str, *, help: str, description: str,  # noqa: A002 (argparse's word)
                      add_arguments: Callable[[argparse.ArgumentParser], None],
                      run: Callable[[argparse.Namespace], Path], builders: tuple[str, ...] = (),
                      source_arg: str = "") -> Importer:
    """Register an importer (see :class:`Importer`); returns it. A name registered by another module is a
    ``ValueError``."""
    module = getattr(run, "__module__", "") or ""
    old = _IMPORTERS.get(name)
    if old is not None and old.module != module:
        raise ValueError(f"an importer named {name!r} is already registered (by {old.module})")
    imp = Importer(name=name, help=help, description=description, add_arguments=add_arguments, run=run,
                   builders=tuple(builders), source_arg=source_arg, module=module)
    _IMPORTERS[name] = imp
    return imp


def _load(name: str) -> None:
    module = IMPORTER_MODULES.get(name)
    if module is not None:
        importlib.import_module(module)


def list_importers() -> list[str]:
    """Every importer's name, sorted (the built-in ones are imported)."""
    for name in IMPORTER_MODULES:
        _load(name)
    return sorted(_IMPORTERS)


def get_importer(name: str) -> Importer:
    """The importer ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in _IMPORTERS:
        _load(name)
    if name not in _IMPORTERS:
        known = ", ".join(sorted({*_IMPORTERS, *IMPORTER_MODULES}))
        raise ValueError(f"unknown import format {name!r} (one of {known})")
    return _IMPORTERS[name]


def register_builder(name: str, fn: Callable[[dict[str, Any]], Any]) -> None:
    """Register ``fn(spec) -> nn.Module`` as bundle builder ``name`` (the module's ``state_dict`` keys must match
    the bundle's tensors)."""
    _BUILDERS[name] = fn


def list_builders() -> list[str]:
    """Every bundle builder's name, sorted (the built-in importers are imported)."""
    for name in IMPORTER_MODULES:
        _load(name)
    return sorted(_BUILDERS)


def get_builder(name: str) -> Callable[[dict[str, Any]], Any]:
    """The bundle builder ``name`` (its module imported when :data:`IMPORTER_MODULES` names it); ``ValueError``
    naming the known ones otherwise."""
    if name not in _BUILDERS:
        _load(name)
    if name not in _BUILDERS:
        raise ValueError(f"no bundle builder named {name!r}; known: "
                         f"{', '.join(sorted({*_BUILDERS, *IMPORTER_MODULES}))}")
    return _BUILDERS[name]


# ----------------------------------------------------------------------------------------------- CLI helpers


def parse_floats(text: str, n: int, what: str) -> tuple[float, ...]:
    """``"104,117,123"`` -> ``(104.0, 117.0, 123.0)``; exactly ``n`` finite numbers or a ``ValueError`` naming
    ``what``."""
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise ValueError(f"{what}: expected {n} comma-separated numbers, got {text!r}") from None
    if len(vals) != n or not all(v == v and abs(v) != float("inf") for v in vals):
        raise ValueError(f"{what}: expected {n} comma-separated finite numbers, got {text!r}")
    return vals


def parse_classes(text: str | None) -> list[str] | None:
    """Class names from ``--classes``: a file with one name per line, or comma-separated names (background
    first)."""
    if not text:
        return None
    p = Path(text)
    if p.is_file():
        names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise ValueError(f"--classes: no class names in {text!r}")
    return names
