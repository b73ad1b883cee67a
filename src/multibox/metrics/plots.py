"""Precision-recall curves of an evaluation as a PNG (matplotlib, Agg backend, imported on first use)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_with
from .registry import ClassAP

__all__ = ["plot_pr_curves"]


def plot_pr_curves(per_class: Sequence[ClassAP], path: str | os.PathLike, *, title: str = "",
                   step: bool = False) -> Path:
    """Draw every class's precision-recall curve on one chart, AP in the legend, and write a PNG atomically.

    ``per_class``: the results of :func:`~multibox.metrics.voc.voc_evaluate` (curve points per detection) or of
    :func:`~multibox.metrics.coco.coco_evaluate` (precision at the 101 recall thresholds). Classes without a curve
    are listed in the legend with their AP (or ``n/a``). ``step``: draw the monotone envelope (VOC2010+ style)
    instead of the raw points.
    """
    # heavy (matplotlib, ~0.5 s) and only a drawing needs it; the Agg backend is chosen right before pyplot loads
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6), dpi=100)
    cmap = plt.get_cmap("tab20")
    for i, r in enumerate(per_class):
        ap = "n/a" if math.isnan(r.ap) else f"{100 * r.ap:.1f}"
        label = f"{r.name} ({ap})"
        if r.recall.size:
            prec = np.maximum.accumulate(r.precision[::-1])[::-1] if step else r.precision
            ax.plot(r.recall, prec, color=cmap(i % 20), linewidth=1.2, label=label)
        else:
            ax.plot([], [], color=cmap(i % 20), linewidth=1.2, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="class (AP %)", title_fontsize=8,
              ncol=1 if len(per_class) <= 30 else 2)
    fig.tight_layout()
    out = Path(path)
    try:
        atomic_write_with(out, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return out
