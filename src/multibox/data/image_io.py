"""Image decoding: EXIF-aware, always 3-channel RGB uint8, with a pixel limit checked before decoding.

* **Orientation.** The EXIF orientation tag (0x0112) is applied, so arrays are upright as an image viewer
  shows them, and :func:`image_size` reports that upright size. Box annotations are assumed to have been
  drawn on the upright image (what every annotation tool that displays the photo does).
* **Modes.** Grey (``L``, ``1``), palette (``P``, with or without transparency), ``RGBA``/``LA``, ``CMYK``,
  ``YCbCr``/``LAB``/``HSV``, 16-bit grey (``I;16*``), 32-bit integer (``I``) and float (``F``) images all
  become ``[H, W, 3]`` uint8 RGB; alpha is dropped (the colour channels are kept as stored).
* **Safety.** The width and height are read from the header and checked against ``max_pixels`` before any
  pixel is decoded, so a decompression bomb (a small file claiming a huge size) fails fast without
  allocating. Truncated files are an error (Pillow's ``LOAD_TRUNCATED_IMAGES`` is not used). Files are
  opened read-only.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageDecodeError", "NotAnImageError", "ImageTooLargeError", "MAX_IMAGE_PIXELS", "image_size",
           "load_image", "load_image_bytes", "to_rgb", "check_image_complete"]

# Refuse images above this many pixels before decoding them (decompression bombs). Pillow's own bomb check
# (``PIL.Image.MAX_IMAGE_PIXELS``, twice of which raises) applies as well and is reported the same way.
MAX_IMAGE_PIXELS = 16384 * 16384

# EXIF orientations that swap width and height (transpose, rotate 90 CW, transverse, rotate 90 CCW).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_ORIENTATION_TAG = 0x0112
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class ImageDecodeError(ValueError):
    """An image file could not be read; the message names the file and the problem."""


class NotAnImageError(ImageDecodeError):
    """The bytes are in no image format Pillow knows (not a corrupt image: no image at all)."""


class ImageTooLargeError(ImageDecodeError):
    """The header asks for more pixels than the limit (a possible decompression bomb), refused before decoding."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, 1, P, RGBA, LA, CMYK, I;16, I, F, ...) as 8-bit RGB.

    16-bit grey is scaled (65535 -> 255), not clipped, when any value exceeds 255; 32-bit integer and float
    images are scaled the same way from ``[0, 65535]`` or ``[0, 1]`` (floats with max <= 1) or clipped to
    ``[0, 255]`` otherwise. Alpha is dropped.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max(initial=0.0)) if arr.size else 0.0
        if img.mode == "F" and top <= 1.0:
            peak = 1.0
        elif top > 255:
            peak = 65535.0
        else:
            peak = 255.0
        arr = np.clip(np.nan_to_num(arr) / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def _check_file(p: Path) -> None:
    if not p.is_file():
        raise ImageDecodeError(f"{p}: no such image file")
    if p.stat().st_size == 0:
        raise ImageDecodeError(f"{p}: empty file (0 bytes)")


def _upright_size(img: Image.Image) -> tuple[int, int]:
    """``(width, height)`` as displayed, from the header and the EXIF orientation (no pixel decoded)."""
    w, h = img.size
    try:
        orientation = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block must not hide the image; Pillow ignores it too
        orientation = 1
    return (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)


def _check_pixels(p: Path | str, img: Image.Image, max_pixels: int) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"{p}: invalid image size {w}x{h} in the header")
    if w * h > max_pixels:
        raise ImageTooLargeError(f"{p}: {w}x{h} pixels exceeds the limit of {max_pixels} pixels "
                               "(refused before decoding: possible decompression bomb)")


def _bomb_message(p: Path | str, e: Exception) -> str:
    return f"{p}: image exceeds the pixel limit (refused before decoding: possible decompression bomb; {e})"


@contextmanager
def _open_checked(p: Path, max_pixels: int) -> Iterator[Image.Image]:
    """Open ``p`` with PIL after the file and header checks; every decoding failure becomes ImageDecodeError."""
    _check_file(p)
    try:
        with Image.open(p) as img:
            _check_pixels(p, img, max_pixels)
            yield img
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(_bomb_message(p, e)) from e
    except UnidentifiedImageError as e:
        raise NotAnImageError(f"{p}: cannot decode image (not in a known image format: {e})") from e
    except _DECODE_ERRORS as e:
        raise ImageDecodeError(f"{p}: cannot decode image ({e})") from e


def load_image_bytes(data: bytes, name: str = "<image bytes>", max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode an encoded image held in memory (an upload) to an ``[H, W, 3]`` RGB uint8 array, as
    :func:`load_image` decodes a file (EXIF orientation applied, size checked from the header first).

    Raises :class:`NotAnImageError` (no known image format, or empty), :class:`ImageTooLargeError` (more than
    ``max_pixels`` pixels) or :class:`ImageDecodeError` (truncated or corrupt), each naming ``name``.
    """
    if not data:
        raise NotAnImageError(f"{name}: empty image (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_pixels(name, img, max_pixels)
            img.load()
            return np.array(to_rgb(ImageOps.exif_transpose(img)), dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(_bomb_message(name, e)) from e
    except UnidentifiedImageError as e:
        raise NotAnImageError(f"{name}: cannot decode image (not in a known image format)") from e
    except _DECODE_ERRORS as e:
        raise ImageDecodeError(f"{name}: cannot decode image ({e})") from e


def image_size(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(height, width)`` of the upright image (EXIF orientation applied), read from the header only.

    Raises :class:`ImageDecodeError` naming the file when it is missing, empty, not an image, or larger than
    ``max_pixels``. A truncated file whose header is intact is only detected by :func:`load_image`.
    """
    with _open_checked(Path(path), max_pixels) as img:
        w, h = _upright_size(img)
        return h, w


def load_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode ``path`` to an ``[H, W, 3]`` RGB uint8 array.

    The EXIF orientation tag is applied (the array is upright as a viewer shows it) and the tag is then
    ignored. Raises :class:`ImageDecodeError` naming the file for missing, empty, truncated, corrupt or
    oversized files (the size is checked from the header before decoding).
    """
    with _open_checked(Path(path), max_pixels) as img:
        img.load()
        return np.array(to_rgb(ImageOps.exif_transpose(img)), dtype=np.uint8)  # a writable copy


def check_image_complete(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """Decode ``path`` far enough to know that the whole file is readable; return the upright ``(height,
    width)``.

    Cheaper than :func:`load_image`: a JPEG is decoded at 1/8 scale (Pillow's draft mode still reads every
    entropy-coded block, so a truncated or cut file fails), other formats are decoded once without the RGB
    conversion. Raises :class:`ImageDecodeError` naming the file (missing, empty, truncated, corrupt, too large).
    """
    p = Path(path)
    with _open_checked(p, max_pixels) as img:
        w, h = _upright_size(img)
        try:
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
            img.load()
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(_bomb_message(p, e)) from e
        except _DECODE_ERRORS as e:
            raise ImageDecodeError(f"{p}: cannot decode image ({e})") from e
        return h, w
