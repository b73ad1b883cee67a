"""The ``shards`` dataset format: a folder written by ``multibox data pack`` (tar shards + ``dataset.json``).

Registered here so that ``open_dataset("shards:DIR")``, ``open_dataset(DIR)`` (recognized by its
``dataset.json``) and ``data.train: shards:DIR`` in a training config read packed data through
:class:`multibox.data.shards.ShardDataset`, which yields the same ``(image, Target)`` as the packed source.
The reader module imports torch, so it is imported only when a packed dataset is opened (this module stays
light for the command line).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import resolve_class_names
from .registry import register_format

__all__ = ["SHARD_INDEX_NAME", "SHARD_FORMAT_NAME", "open_shards", "detect_shards"]

SHARD_INDEX_NAME = "dataset.json"
SHARD_FORMAT_NAME = "multibox-shards"
# How much of a JSON file is read to recognize a shard index (``pack`` writes "format" first).
_PEEK_BYTES = 4096


def _is_index(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(_PEEK_BYTES)
    except OSError:
        return False
    return f'"{SHARD_FORMAT_NAME}"'.encode() in head


def detect_shards(path: Path) -> int:
    """A folder with a shard ``dataset.json``, or that file itself (95: before COCO's "one *.json" rule)."""
    if path.is_dir():
        index = path / SHARD_INDEX_NAME
        return 95 if index.is_file() and _is_index(index) else 0
    if path.is_file() and path.suffix.lower() == ".json":
        return 95 if _is_index(path) else 0
    return 0


def open_shards(paths: Sequence[Path], split: str | None = None, classes: Any = None,
                images: str | os.PathLike | None = None, **options: Any) -> Any:
    """Registry opener: :class:`~multibox.data.shards.ShardDataset` over a packed folder (or its
    ``dataset.json``).

    ``split``: a pack holds one split (the one ``pack --split`` read, recorded in ``dataset.json``); another
    split is an error, ``None`` or the packed one (or any, for a pack of everything) is accepted. ``classes``,
    when given, must equal the packed class list. ``images`` is refused (the images are inside the shards).
    Options other than ``verify`` (``"size"``, ``"sha256"``, ``"none"``) and the scanning ones that do not
    apply to packed data (``progress``, ``strict``, ``verify_images``) are refused."""
    # heavy: multibox.data.shards imports torch, which data convert/check (they import every format) never need
    from ..shards import ShardDataset, load_index

    if images is not None:
        raise ValueError(f"{paths[0]}: packed datasets hold their images; --images does not apply")
    options.pop("progress", None)
    options.pop("strict", None)
    options.pop("verify_images", None)
    options.pop("max_pixels", None)
    unknown = sorted(k for k, v in options.items() if k != "verify" and v not in (None, False, "error", "header"))
    if unknown:
        raise ValueError(f"{paths[0]}: packed datasets do not take the option(s) {', '.join(unknown)}")
    index = load_index(paths[0])
    where = Path(index.base) / SHARD_INDEX_NAME
    source = index.meta.get("source") if isinstance(index.meta.get("source"), dict) else {}
    packed_split = source.get("split")
    if split is not None and packed_split is not None and split != packed_split:
        raise ValueError(f"{where}: this pack holds split {packed_split!r}, not {split!r} (ask for split "
                         f"{packed_split!r} or none)")
    if classes is not None and not (isinstance(classes, str) and classes == "infer"):
        wanted = resolve_class_names(classes)
        if wanted != index.class_names:
            raise ValueError(f"{where}: packed classes {index.class_names[1:]} differ from the classes asked for "
                             f"{wanted[1:]}")
    return ShardDataset(index, verify=options.get("verify", "size"))


register_format("shards", open=open_shards, write=None, detect=detect_shards,
                description="tar shards + dataset.json written by `multibox data pack` (read for training; "
                            "write with `data pack`)")
