"""Image decoding: EXIF-aware, always 3-channel RGB uint8."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageDecodeError", "load_image", "to_rgb"]

# Refuse images above this many pixels before decoding them (decompression bombs).
MAX_IMAGE_PIXELS = 16384 * 16384


class ImageDecodeError(ValueError):
    """An image file could not be read; the message names the file and the problem."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, P, RGBA, CMYK, I;16, ...) as 8-bit RGB. 16-bit grey is scaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` to an ``[H, W, 3]`` RGB uint8 array.

    The EXIF orientation tag is applied (the array is upright as a viewer shows it) and the tag is then
    ignored. Raises :class:`ImageDecodeError` naming the file for missing, empty, truncated, corrupt or
    oversized files.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageDecodeError(f"{p}: no such image file")
    if p.stat().st_size == 0:
        raise ImageDecodeError(f"{p}: empty file (0 bytes)")
    try:
        with Image.open(p) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageDecodeError(f"{p}: {w}x{h} pixels exceeds the limit of {MAX_IMAGE_PIXELS} pixels")
            img.load()
            img = ImageOps.exif_transpose(img)
            return np.array(to_rgb(img), dtype=np.uint8)  # a writable copy
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"{p}: cannot decode image ({e})") from e
