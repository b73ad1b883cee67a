"""Options that mean the same in every ``multibox`` command, and the checks behind them.

One meaning per flag across commands (see docs/design.md, "Command line"):

* ``--json FILE``: also write the machine-readable result to ``FILE`` (never a switch);
* ``--overwrite``: replace an existing output (never ``--force``);
* ``--no-progress`` / ``--quiet`` (``-q``): no progress bar / neither progress bar nor informational lines;
  progress bars are off anyway when standard error is not a terminal (logs get no bar residue);
* ``--out``: an output folder (or file, where the command says so) that is checked before any work starts;
* thresholds in ``[0, 1]`` (``--conf``, ...) are range-checked: ``nan``, ``-1`` and ``2`` are usage errors;
* ``--tile PIXELS`` / ``--overlap FRACTION`` (``detect``, ``eval``): tiled inference on large photos.

Errors raised here are :class:`~multibox.fileio.UsageError` (a ``ValueError``): ``multibox`` prints them as
``multibox CMD: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ..config import TTA_MODE_NAMES
from ..fileio import UsageError, atomic_write_bytes, check_output_dir, check_output_file

__all__ = [
    "UsageError", "add_json_option", "add_overwrite_option", "add_progress_options", "show_progress", "is_quiet",
    "probability", "positive_int", "check_output_dir", "check_output_file", "quiet_output", "add_quiet_option",
    "non_negative_int", "positive_seconds", "write_json_output", "overlap_fraction", "add_tile_options",
    "tile_settings", "DEFAULT_OVERLAP", "add_calibration_options", "add_int8_runtime_options",
    "int8_runtime_options", "INT8_METHODS",
]

#: ``--overlap`` when ``--tile`` is given without it.
DEFAULT_OVERLAP = 0.25


def add_json_option(p: argparse.ArgumentParser, what: str = "the results") -> None:
    """``--json FILE``: also write ``what`` as JSON to FILE (``-`` for standard output)."""
    p.add_argument("--json", metavar="FILE", help=f"also write {what} as JSON to FILE ('-': standard output)")


def add_overwrite_option(p: argparse.ArgumentParser, what: str = "an existing output") -> None:
    """``--overwrite``: replace ``what``."""
    p.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def add_progress_options(p: argparse.ArgumentParser) -> None:
    """``--no-progress`` and ``--quiet``/``-q``."""
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (also off when standard error is not a terminal)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no informational lines")


def add_quiet_option(p: argparse.ArgumentParser) -> None:
    """``--quiet``/``-q`` alone, for long commands without a progress bar (benchmarks, zoo fetch)."""
    p.add_argument("-q", "--quiet", action="store_true", help="no informational lines (results go to the files)")


def is_quiet(args: argparse.Namespace) -> bool:
    """``--quiet`` was given."""
    return bool(getattr(args, "quiet", False))


def show_progress(args: argparse.Namespace | None = None, stream: object = None) -> bool:
    """Whether to draw a progress bar: not ``--no-progress``, not ``--quiet``, and the bar's stream (standard
    error by default) is a terminal, so that logs and pipes never receive bar updates."""
    if args is not None and (getattr(args, "no_progress", False) or is_quiet(args)):
        return False
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed stream
        return False


def finite_float(text: str, ok: Callable[[float], bool], bounds: str, what: str = "a number") -> float:
    """``float(text)`` for an argparse type: ``ArgumentTypeError("'text' is not <what>")`` when it does not parse,
    ``"'text' <bounds>"`` when it is ``nan`` / ``inf`` or ``ok(value)`` is false."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not math.isfinite(v) or not ok(v):
        raise argparse.ArgumentTypeError(f"{text!r} {bounds}")
    return v


def probability(text: str) -> float:
    """argparse type: a float in ``[0, 1]`` (``nan``, ``inf`` and values outside are errors)."""
    return finite_float(text, lambda v: 0.0 <= v <= 1.0, "is not in [0, 1]")


def overlap_fraction(text: str) -> float:
    """argparse type: a float in ``[0, 1)`` (the overlap of neighbouring tiles, a fraction of the tile)."""
    return finite_float(text, lambda v: 0.0 <= v < 1.0, "is not in [0, 1) (a fraction of the tile)")


def add_tile_options(p: argparse.ArgumentParser) -> None:
    """``--tile PIXELS`` and ``--overlap FRACTION``: tiled inference on large photos (see docs/detect.md)."""
    p.add_argument("--tile", type=positive_int, default=None, metavar="PIXELS",
                   help="tiled inference for large photos: detect in windows of PIXELS x PIXELS (the size the "
                        "model was trained on, e.g. 400) and merge them with a cross-tile NMS (default: the "
                        "whole image at once)")
    p.add_argument("--overlap", type=overlap_fraction, default=None, metavar="FRACTION",
                   help=f"overlap of neighbouring tiles, a fraction of --tile in [0, 1) (default {DEFAULT_OVERLAP}; "
                        "only with --tile)")


def add_tta_option(p: argparse.ArgumentParser) -> None:
    """``--tta MODE``: test-time augmentation (mirrors and quarter turns fused by weighted box fusion)."""
    p.add_argument("--tta", choices=TTA_MODE_NAMES, default=None,
                   help="test-time augmentation: detect in mirrored / turned copies and fuse the boxes (weighted "
                        "box fusion): hflip (2 views), flips (4), dihedral (all 8 mirrors and quarter turns, for "
                        "overhead photos); MODE+shift also shifts each view by 2, 4 and 6 input pixels (4x the "
                        "views); costs one network pass per view (default: off)")


INT8_METHODS = ("minmax", "entropy", "percentile")  # multibox.export.quantize.METHODS (not imported: --help)


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    """``--calibrate DIR``, ``--calib-images N``, ``--method``, ``--keep-float NAME``: int8 calibration
    (docs/quantization.md)."""
    p.add_argument("--calibrate", metavar="DIR",
                   help="int8: a folder of images to calibrate the activation ranges on (pre-processed as the "
                        "model does)")
    p.add_argument("--calib-images", type=positive_int, default=None, metavar="N",
                   help="int8: calibrate on the first N images of --calibrate, sorted by path (default 200)")
    p.add_argument("--method", choices=INT8_METHODS, default=None,
                   help="int8: activation range calibration (default minmax)")
    p.add_argument("--keep-float", action="append", default=None, metavar="NAME",
                   help="int8: leave these layers in float: an ONNX node name or pattern, 'first' (the first "
                        "convolution) or 'heads' (the prediction convolutions); repeatable ('multibox quant "
                        "analyze' ranks the layers)")


def add_int8_runtime_options(p: argparse.ArgumentParser) -> None:
    """``--int8-model FILE`` and the calibration options: the options of ``--runtime onnxruntime-int8``."""
    p.add_argument("--int8-model", metavar="FILE",
                   help="with --runtime onnxruntime-int8: the int8 graph written by 'multibox export onnx MODEL "
                        "--int8 --calibrate DIR' (or give --calibrate DIR to quantize when loading)")
    add_calibration_options(p)


def int8_runtime_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """``runtime_options`` for the Detector from :func:`add_int8_runtime_options`' flags (``None`` when none is
    given); :class:`UsageError` when they are given without ``--runtime onnxruntime-int8``, or mixed wrongly."""
    given = {"model": args.int8_model, "calibrate": args.calibrate, "calib_images": args.calib_images,
             "method": args.method, "keep_float": args.keep_float}
    given = {k: v for k, v in given.items() if v is not None}
    runtime = getattr(args, "runtime", None)
    if runtime != "onnxruntime-int8":
        if given:
            flags = ", ".join("--" + ("int8-model" if k == "model" else k.replace("_", "-")) for k in given)
            raise UsageError(f"{flags}: only with --runtime onnxruntime-int8")
        return None
    if ("model" in given) == ("calibrate" in given):
        raise UsageError("--runtime onnxruntime-int8 needs either --int8-model FILE (from 'multibox export onnx "
                         "MODEL --int8 --calibrate DIR') or --calibrate DIR" +
                         (", not both" if "model" in given else ""))
    if "model" in given and len(given) > 1:
        raise UsageError("--calib-images, --method and --keep-float only apply with --calibrate DIR")
    return given


def tile_settings(args: argparse.Namespace) -> tuple[int | None, float]:
    """``(tile, overlap)`` from ``--tile`` / ``--overlap``: ``(None, DEFAULT_OVERLAP)`` without ``--tile``;
    :class:`UsageError` for ``--overlap`` without ``--tile``."""
    tile, overlap = getattr(args, "tile", None), getattr(args, "overlap", None)
    if tile is None:
        if overlap is not None:
            raise UsageError("--overlap needs --tile PIXELS (it is the overlap of neighbouring tiles)")
        return None, DEFAULT_OVERLAP
    return int(tile), DEFAULT_OVERLAP if overlap is None else float(overlap)


def _int(text: str, minimum: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= {minimum}")
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int(text, 0)


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds > 0")
    return v


def write_json_output(path: str, data: object) -> None:
    """What ``--json FILE`` writes: ``data`` as indented JSON to ``FILE`` (atomically), or to standard output for
    ``-``. Values JSON cannot hold are written with ``str``."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def quiet_output(args: argparse.Namespace) -> Iterator[None]:
    """With ``--quiet``: the informational lines a command prints on standard output are dropped (errors and
    warnings still reach standard error; ``--json -`` output is written outside this block). For commands whose
    output is a file (benchmarks, importers, zoo fetch)."""
    if not is_quiet(args):
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield
