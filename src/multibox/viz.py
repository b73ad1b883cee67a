"""Drawing: detections on an image (PIL: fast, no matplotlib), prior boxes of a feature map (matplotlib, Agg).

:func:`draw_boxes` draws boxes, class names and scores with PIL (a few ms for 200 boxes, where matplotlib took
about 1.5 s per image); the label font (PIL's built-in scalable font, no font files) and the line width scale with
the image so that labels stay readable from 300 px images to large photos. :func:`save_image` writes JPEG for
``.jpg`` / ``.jpeg`` and PNG otherwise; :func:`annotated_suffix` picks the output suffix that follows the input's
format (JPEG in, JPEG out; everything else PNG). Used by ``multibox detect``, the demo and
:meth:`multibox.detections.Detections.plot` / ``save``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .data.image_io import load_image, to_rgb
from .fileio import atomic_write_bytes, atomic_write_with

__all__ = ["plot_priors", "draw_detections", "draw_boxes", "save_image", "annotated_suffix", "JPEG_SUFFIXES"]

JPEG_SUFFIXES = (".jpg", ".jpeg")
# tab10-like colours, one per class
_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _as_pil(image: Any) -> Image.Image:  # noqa: ANN401
    if isinstance(image, str | os.PathLike):
        return Image.fromarray(load_image(image))
    if isinstance(image, Image.Image):
        return to_rgb(image).copy()
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an [H, W, 3] uint8 RGB image to draw on, got {arr.dtype} {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def draw_boxes(image: Any, boxes: np.ndarray, scores: Sequence[float], names: Sequence[str],  # noqa: ANN401
               *, normalized: bool = False) -> Image.Image:
    """A copy of ``image`` (path, PIL image or ``[H, W, 3]`` uint8 RGB array) as an RGB PIL image with
    ``boxes`` ``[N, 4]`` xyxy (pixels, or [0, 1] with ``normalized``) drawn, each labelled ``"name score"``.

    Colours follow the class name; the font size is about 5 % of the shorter image side (at least 12 px) and the
    line width about 0.5 % (at least 1 px)."""
    img = _as_pil(image)
    w, h = img.size
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if normalized:
        b = b * np.array([w, h, w, h])
    side = min(w, h)
    font = _font(max(12, round(0.05 * side)))
    width = max(1, round(side / 200))
    draw = ImageDraw.Draw(img)
    palette: dict[str, tuple[int, int, int]] = {}
    for (x1, y1, x2, y2), s, n in zip(b.tolist(), scores, names, strict=True):
        color = palette.setdefault(n, _COLORS[len(palette) % len(_COLORS)])
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        text = f"{n} {float(s):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y1 - th - 2 * width if y1 - th - 2 * width >= 0 else y1  # above the box, else inside it
        tx = min(max(x1, 0), max(w - tw - 2, 0))
        draw.rectangle((tx, ty, tx + tw + 2, ty + th + 2 * width), fill=color)
        draw.text((tx + 1 - left, ty + width - top), text, fill=(255, 255, 255), font=font)
    return img


def annotated_suffix(source: str | os.PathLike) -> str:
    """The suffix of an annotated copy of ``source``: its own for JPEG files, ``.png`` for everything else."""
    suffix = Path(source).suffix.lower()
    return suffix if suffix in JPEG_SUFFIXES else ".png"


def save_image(image: Image.Image, out: Path, quality: int = 92) -> Path:
    """Write ``image`` to ``out`` atomically: JPEG (``quality``) for ``.jpg`` / ``.jpeg``, else PNG."""
    buf = io.BytesIO()
    if Path(out).suffix.lower() in JPEG_SUFFIXES:
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format="PNG")
    return atomic_write_bytes(Path(out), buf.getvalue())


def _figure(width_px: int, height_px: int, dpi: int = 100):  # noqa: ANN202
    # matplotlib imports stay in the plotting functions: heavy (pyplot about 0.5 s) and only the prior plots need
    # it; drawing detections must work without it (Detections.plot, detect); pyplot must load after use("Agg")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    return fig, plt


def plot_priors(priors: Tensor, feature_sizes: Sequence[tuple[int, int]], config: object, level: int,
                out: Path, location: tuple[int, int] | None = None) -> Path:
    """Draw the grid of feature map ``level`` and the boxes of one location (default: the centre cell).

    ``priors`` is ``[P, 4]`` normalized cxcywh in Caffe order, as ``PriorBoxGenerator`` returns.
    """
    from matplotlib.patches import Rectangle

    counts = [h * w * lvl.num_priors for (h, w), lvl in zip(feature_sizes, config.levels, strict=True)]
    start = int(sum(counts[:level]))
    fh, fw = feature_sizes[level]
    a = config.levels[level].num_priors
    y, x = location if location is not None else (fh // 2, fw // 2)
    first = start + (y * fw + x) * a
    boxes = priors[first:first + a].numpy()
    img_h, img_w = config.image_size
    fig, plt = _figure(640, 640)
    ax = fig.add_axes((0.08, 0.08, 0.88, 0.84))
    step = config.levels[level].step
    step_h, step_w = (img_h / fh, img_w / fw) if step is None else (
        (float(step[0]), float(step[1])) if isinstance(step, tuple | list) else (float(step), float(step)))
    for gx in np.arange(fw + 1) * step_w:  # cell borders: a cell is one step wide, centres at (i + offset) step
        ax.axvline(gx, color="0.85", lw=0.6)
    for gy in np.arange(fh + 1) * step_h:
        ax.axhline(gy, color="0.85", lw=0.6)
    colors = plt.get_cmap("tab10")
    for i, (cx, cy, w, h) in enumerate(boxes):
        ax.add_patch(Rectangle(((cx - w / 2) * img_w, (cy - h / 2) * img_h), w * img_w, h * img_h, fill=False,
                               lw=1.8, color=colors(i % 10), label=f"{w * img_w:.0f}x{h * img_h:.0f} px"))
    ax.plot(boxes[0, 0] * img_w, boxes[0, 1] * img_h, "k+", ms=10)
    ax.set_xlim(-0.25 * img_w, 1.25 * img_w)
    ax.set_ylim(1.25 * img_h, -0.25 * img_h)
    ax.add_patch(Rectangle((0, 0), img_w, img_h, fill=False, lw=1.2, color="black", ls="--"))
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"feature map {level}: {fh}x{fw} cells, {a} priors at cell (y={y}, x={x})")
    atomic_write_with(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, names: Sequence[str],
                    out: Path) -> Path:
    """Save ``image`` ``[H, W, 3]`` uint8 RGB with boxes ``[N, 4]`` xyxy pixels, scores and names drawn
    (:func:`draw_boxes`) to ``out`` (JPEG for ``.jpg`` / ``.jpeg``, else PNG; atomically)."""
    return save_image(draw_boxes(image, boxes, scores, names), Path(out))
