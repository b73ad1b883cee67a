"""Drawing: prior boxes of a feature map, detections on an image (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from .fileio import atomic_write_with

__all__ = ["plot_priors", "draw_detections"]


def _figure(width_px: int, height_px: int, dpi: int = 100):  # noqa: ANN202
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
    """Save ``image`` ``[H, W, 3]`` uint8 RGB with boxes ``[N, 4]`` xyxy pixels, scores and names drawn."""
    from matplotlib.patches import Rectangle

    h, w = image.shape[:2]
    fig, plt = _figure(w, h)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image)
    ax.axis("off")
    colors = plt.get_cmap("tab20")
    for i, ((x1, y1, x2, y2), s, n) in enumerate(zip(boxes, scores, names, strict=True)):
        c = colors(i % 20)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2, color=c))
        ax.text(x1, max(y1 - 2, 8), f"{n} {s:.2f}", color="white", fontsize=8,
                bbox={"facecolor": c, "alpha": 0.8, "pad": 1, "lw": 0})
    atomic_write_with(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out
