"""Atomic file output (write to a temporary file in the same folder, fsync, then rename) and the checks of an
output path made before any work (:func:`check_output_dir`, :func:`check_output_file`).

A crash or kill during a write leaves either the previous file or no file under the final name, never a
half-written one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_with", "atomic_save_npy", "UsageError", "check_output_dir",
           "check_output_file"]


def _default_mode() -> int:
    """``0o666`` minus the process umask: what ``open(path, "w")`` would give (mkstemp makes files 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` to produce the file, then move it to ``path`` atomically."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_save_npy(path: str | os.PathLike, array: object) -> Path:
    """Save a NumPy array (or anything ``np.asarray`` takes) as ``.npy`` at ``path`` atomically."""
    # heavy: the command modules import this module at start-up; numpy would cost 'multibox --help' ~0.1 s
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array))

    return atomic_write_with(path, write)


class UsageError(ValueError):
    """A command-line value that cannot be used (the message names the option or path and the problem)."""


def _writable_dir(d: Path) -> bool:
    return os.access(d, os.W_OK | os.X_OK)


def _existing_parent(p: Path) -> Path:
    q = p.absolute()
    while not q.exists():
        if q.parent == q:
            break
        q = q.parent
    return q


def check_output_dir(path: str | os.PathLike, option: str = "--out", create: bool = True) -> Path:
    """Check (and by default create) an output folder before any work: it must not be a file, and it (or the
    nearest existing folder above it) must be writable. Raises :class:`UsageError` naming ``option`` and the path."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{option} {p}: exists and is not a folder")
    anchor = _existing_parent(p)
    if not anchor.is_dir():
        raise UsageError(f"{option} {p}: {anchor} is not a folder")
    if not _writable_dir(anchor):
        raise UsageError(f"{option} {p}: {anchor} is not writable")
    if create:
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"{option} {p}: cannot create the folder ({e.strerror or e})") from None
    return p


def check_output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check an output file path before any work: not a folder, and its folder (or the nearest existing one above)
    writable. ``-`` (standard output) passes. Raises :class:`UsageError` naming ``option`` and the path."""
    p = Path(path)
    if str(path) == "-":
        return p
    if p.is_dir():
        raise UsageError(f"{option} {p}: is a folder, expected a file")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"{option} {p}: is not writable")
    anchor = _existing_parent(p.parent)
    if not anchor.is_dir():
        raise UsageError(f"{option} {p}: {anchor} is not a folder")
    if not _writable_dir(anchor):
        raise UsageError(f"{option} {p}: {anchor} is not writable")
    return p
