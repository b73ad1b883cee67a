"""Bounds on what a file may ask multibox to build, checked before anything is allocated.

A checkpoint, detector bundle, Caffe prototxt or TensorFlow graph names an input size, a number of classes and
(through its feature maps) a number of priors. A crafted file can ask for a 60000x60000 input or 100001 classes and
make loading allocate many gigabytes; these checks turn that into a clear error naming the file. The bounds are far
above every real SSD (SSD512: 512 px, 24564 priors; COCO: 91 classes; LVIS: 1204) and can be raised with
environment variables for unusual models:

* ``MULTIBOX_MAX_INPUT_SIDE`` (default 4096): the longest input side in pixels;
* ``MULTIBOX_MAX_CLASSES`` (default 10000): classes including background;
* ``MULTIBOX_MAX_PRIORS`` (default 2000000): prior boxes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

__all__ = ["LimitError", "max_input_side", "max_classes", "max_priors", "check_input_size", "check_num_classes",
           "check_num_priors"]


class LimitError(ValueError):
    """A file asks for more than multibox builds (the message names the file, the value and the bound)."""


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        v = int(text)
    except ValueError:
        raise LimitError(f"{name}={text!r} is not an integer") from None
    if v < 1:
        raise LimitError(f"{name}={text!r} must be >= 1")
    return v


def max_input_side() -> int:
    """The longest input side allowed, in pixels (``MULTIBOX_MAX_INPUT_SIDE``, default 4096)."""
    return _env_int("MULTIBOX_MAX_INPUT_SIDE", 4096)


def max_classes() -> int:
    """The most classes allowed, background included (``MULTIBOX_MAX_CLASSES``, default 10000)."""
    return _env_int("MULTIBOX_MAX_CLASSES", 10000)


def max_priors() -> int:
    """The most prior boxes allowed (``MULTIBOX_MAX_PRIORS``, default 2000000)."""
    return _env_int("MULTIBOX_MAX_PRIORS", 2_000_000)


def _where(source: object) -> str:
    return f"{source}: " if source not in (None, "") else ""


def check_input_size(size: Iterable[object], source: object = None) -> tuple[int, ...]:
    """``size`` (``(h, w)`` or any sides) as positive ints no larger than :func:`max_input_side`.

    Raises :class:`LimitError` naming ``source`` (a file) for non-integers, sides < 1 or too large."""
    try:
        sides = tuple(size)
    except TypeError:
        raise LimitError(f"{_where(source)}input size {size!r} is not a list of sides") from None
    out = []
    bound = max_input_side()
    for s in sides:
        if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(float(s)) \
                or float(s) != int(s):
            raise LimitError(f"{_where(source)}input size {list(sides)!r}: {s!r} is not a whole number of pixels")
        if int(s) < 1:
            raise LimitError(f"{_where(source)}input size {list(sides)!r}: sides must be >= 1")
        if int(s) > bound:
            raise LimitError(f"{_where(source)}input size {list(sides)!r} exceeds {bound} pixels per side "
                             "(MULTIBOX_MAX_INPUT_SIDE raises the bound)")
        out.append(int(s))
    return tuple(out)


def check_num_classes(n: object, source: object = None) -> int:
    """``n`` (classes with background) as an int in ``[2, max_classes()]``; :class:`LimitError` otherwise."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise LimitError(f"{_where(source)}number of classes {n!r} is not an integer")
    bound = max_classes()
    if n < 2:
        raise LimitError(f"{_where(source)}number of classes {n} must be >= 2 (background and one class)")
    if n > bound:
        raise LimitError(f"{_where(source)}{n} classes exceed the bound of {bound} "
                         "(MULTIBOX_MAX_CLASSES raises it)")
    return n


def check_num_priors(n: int, source: object = None) -> int:
    """``n`` prior boxes, at most :func:`max_priors`; :class:`LimitError` otherwise."""
    bound = max_priors()
    if n > bound:
        raise LimitError(f"{_where(source)}{n} prior boxes exceed the bound of {bound} "
                         "(MULTIBOX_MAX_PRIORS raises it)")
    return int(n)
