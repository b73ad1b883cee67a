"""The dataset format registry: one place that names every format and how to open, write and recognize it.

Each format registers itself in its own module (``voc.py``, ``coco.py``, ``yolo.py``, ``csv.py``,
``shards.py``)::

    register_format("voc", open=open_voc, write=write_voc, detect=detect_voc,
                    description="Pascal VOC: Annotations/*.xml, JPEGImages/, ImageSets/Main/<split>.txt",
                    multi_root=True)

and everything else reads the registry: :func:`~multibox.data.datasets.open_dataset`,
:func:`~multibox.data.datasets.write_dataset`, :func:`~multibox.data.datasets.detect_format`, the choices of
``multibox data convert|check|pack`` (:func:`multibox.data.commands.format_argument`) and
``multibox data formats``. Adding a format is its module (calling
:func:`register_format` when imported) and its test.

The callables:

* ``open(paths, split, classes, images, **options) -> dataset``: ``paths`` is a list of :class:`~pathlib.Path`
  (several only when ``multi_root``); the dataset yields ``(image [H, W, 3] uint8 RGB, Target)`` with boxes
  absolute-pixel xyxy float32 and has ``class_names`` (``"background"`` first);
* ``write(dataset, dst, split, link, progress) -> WriteReport`` (``None``: the format cannot be written by
  ``data convert``);
* ``detect(path) -> int``: how sure the format is that ``path`` (a file or folder) is one of its datasets;
  0 means "not mine". The highest score wins (ties: the format registered first).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._lazy import import_package_modules

__all__ = ["DatasetFormat", "register_format", "unregister_format", "get_format", "list_formats", "format_names",
           "detect_scores"]

OpenFunction = Callable[..., Any]
WriteFunction = Callable[..., Any]
DetectFunction = Callable[[Path], int]


@dataclass(frozen=True)
class DatasetFormat:
    """One registered dataset format (see the module doc for the callables' contracts)."""

    name: str
    open: OpenFunction
    write: WriteFunction | None
    detect: DetectFunction | None
    description: str
    multi_root: bool = False

    @property
    def writable(self) -> bool:
        """Whether ``data convert --to`` can write this format."""
        return self.write is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (what ``multibox data formats --json`` prints)."""
        return {"name": self.name, "description": self.description, "readable": True, "writable": self.writable,
                "detectable": self.detect is not None, "multi_root": self.multi_root}


_FORMATS: dict[str, DatasetFormat] = {}


def register_format(name: str, open: OpenFunction, write: WriteFunction | None = None,
                    detect: DetectFunction | None = None, description: str = "", *, multi_root: bool = False,
                    replace: bool = False) -> DatasetFormat:
    """Register dataset format ``name`` (lower-case letters, digits, ``_`` or ``-``). Registering a taken name
    raises ValueError unless ``replace``. Returns the :class:`DatasetFormat`."""
    if not name or not all(c.isalnum() or c in "_-" for c in name) or name != name.lower():
        raise ValueError(f"bad format name {name!r} (lower-case letters, digits, '_' and '-')")
    if not callable(open):
        raise ValueError(f"format {name!r}: open must be callable")
    if name in _FORMATS and not replace:
        raise ValueError(f"dataset format {name!r} is already registered")
    fmt = DatasetFormat(name=name, open=open, write=write, detect=detect, description=description,
                        multi_root=multi_root)
    _FORMATS[name] = fmt
    return fmt


def unregister_format(name: str) -> None:
    """Remove format ``name`` (no error when it is not registered)."""
    _FORMATS.pop(name, None)


_DISCOVERED: set[str] = set()


def _load_builtin() -> None:
    """Import every module of the ``multibox.data.datasets`` package once (alphabetically, which is also the order
    of registration), so that a format module registers itself by merely being there: adding a format touches its
    module and its test, no list. Done lazily: the format modules import this one (a cycle at import time)."""
    import_package_modules("multibox.data.datasets", done=_DISCOVERED)


def list_formats() -> list[DatasetFormat]:
    """Every registered format, in registration order."""
    _load_builtin()
    return list(_FORMATS.values())


def format_names(writable: bool = False) -> list[str]:
    """Names of the registered formats (only those ``data convert`` can write, with ``writable``)."""
    return [f.name for f in list_formats() if f.writable or not writable]


def get_format(name: str) -> DatasetFormat:
    """The format called ``name``; ValueError listing the known ones otherwise."""
    _load_builtin()
    try:
        return _FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset format {name!r} (one of {', '.join(_FORMATS)})") from None


def detect_scores(path: str | os.PathLike) -> list[tuple[int, str]]:
    """``(score, name)`` of every format whose detector claims ``path``, best first."""
    p = Path(path)
    scored = []
    for order, f in enumerate(list_formats()):
        if f.detect is None:
            continue
        score = int(f.detect(p) or 0)
        if score > 0:
            scored.append((score, -order, f.name))
    return [(s, n) for s, _, n in sorted(scored, reverse=True)]

