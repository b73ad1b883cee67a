"""Anchor analysis and fitting: how well a model's priors cover a dataset's boxes, and priors fitted to them.

What ``multibox anchors fit DATASET --model M`` computes (docs/anchors.md):

* the ground-truth boxes after the evaluation resize (a plain stretch to the model's input size, as
  :func:`multibox.data.transforms.preprocess` does): normalized ``xyxy`` boxes are unchanged by it, their sizes in
  input pixels are ``w * W_in`` and ``h * H_in``;
* :func:`prior_coverage`: per box the best IoU with any prior and the number of priors that the training matcher
  (Caffe's bipartite best prior plus every prior whose best box has IoU >= the threshold,
  :func:`multibox.matching.match_caffe`) makes positive for it, and which feature map holds its best prior;
* :func:`iou_kmeans`: k-means of the boxes' ``(w, h)`` with the distance ``1 - IoU`` of boxes sharing a centre;
* :func:`propose_priors`: a :class:`~multibox.anchors.PriorConfig` with the cluster sizes and aspect ratios, each
  cluster on the coarsest feature map whose grid is fine enough to reach the threshold wherever the box lies
  (:func:`worst_case_iou`), the model's steps and input size kept.

Layer 2 (imports :mod:`multibox.models` and :mod:`multibox.data`); the command line is in :mod:`multibox.cli`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .anchors import PriorBoxGenerator, PriorConfig, PriorLevel, cxcywh_to_xyxy
from .fileio import atomic_write_bytes
from .matching import match_caffe, pairwise_iou
from .models import build_model

__all__ = [
    "BoxSet",
    "Coverage",
    "ModelPriors",
    "collect_boxes",
    "model_priors",
    "prior_coverage",
    "wh_iou",
    "iou_kmeans",
    "worst_case_iou",
    "min_side_at_threshold",
    "propose_priors",
    "level_sizes",
    "fit_report",
    "plot_fit",
]


@dataclass
class BoxSet:
    """Ground-truth boxes of a dataset, normalized to their images.

    * ``boxes``: ``[N, 4]`` float32 normalized ``xyxy`` (pixel box divided by the image's ``(W, H, W, H)``),
      the same after the model's stretch resize;
    * ``image_index``: ``[N]`` int64, the image each box belongs to (``0..num_images-1``).
    """

    boxes: np.ndarray
    image_index: np.ndarray
    num_images: int

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def wh_pixels(self, image_size: Sequence[int]) -> np.ndarray:
        """``[N, 2]`` float64 ``(w, h)`` in input pixels of a model of ``image_size (H_in, W_in)``."""
        h_in, w_in = float(image_size[0]), float(image_size[1])
        b = self.boxes.astype(np.float64)
        return np.stack(((b[:, 2] - b[:, 0]) * w_in, (b[:, 3] - b[:, 1]) * h_in), axis=1)


def collect_boxes(dataset: Any) -> BoxSet:  # noqa: ANN401 (any registered dataset format)
    """The non-crowd boxes of every image of ``dataset`` (any :func:`~multibox.data.datasets.open_dataset`
    result), normalized by each image's ``orig_size``. Uses ``dataset.target(i)`` when the dataset has it (no
    image decoded), else ``dataset[i][1]``. Boxes of zero width or height are left out."""
    parts, owners = [], []
    n = len(dataset)
    has_target = callable(getattr(dataset, "target", None))
    for i in range(n):
        t = dataset.target(i) if has_target else dataset[i][1]
        boxes = np.asarray(t.boxes, dtype=np.float64).reshape(-1, 4)
        keep = np.ones(len(boxes), dtype=bool)
        if getattr(t, "iscrowd", None) is not None and len(t.iscrowd) == len(boxes):
            keep &= ~np.asarray(t.iscrowd, dtype=bool)
        keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        h, w = t.orig_size
        parts.append(boxes[keep] / np.array([w, h, w, h], dtype=np.float64))
        owners.append(np.full(int(keep.sum()), i, dtype=np.int64))
    boxes = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 4), np.float32)
    index = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    return BoxSet(boxes=boxes.reshape(-1, 4), image_index=index, num_images=n)


@dataclass
class ModelPriors:
    """A model's priors as the analysis needs them.

    * ``config``: its :class:`~multibox.anchors.PriorConfig` (``image_size`` is ``(H_in, W_in)``);
    * ``feature_sizes``: ``(H_k, W_k)`` of each feature map, from the network;
    * ``priors``: ``[P, 4]`` float32 normalized ``cxcywh`` in the model's order;
    * ``level_of_prior``: ``[P]`` int64, the feature map of each prior.
    """

    config: PriorConfig
    feature_sizes: list[tuple[int, int]]
    priors: torch.Tensor
    level_of_prior: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        counts = [h * w * lvl.num_priors for (h, w), lvl in zip(self.feature_sizes, self.config.levels, strict=True)]
        self.level_of_prior = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        if int(self.level_of_prior.numel()) != int(self.priors.shape[0]):
            raise ValueError(f"{self.priors.shape[0]} priors but the levels count {sum(counts)}")

    @classmethod
    def from_config(cls, config: PriorConfig, feature_sizes: Sequence[tuple[int, int]]) -> ModelPriors:
        """Priors generated from ``config`` on maps of ``feature_sizes``."""
        sizes = [(int(h), int(w)) for h, w in feature_sizes]
        return cls(config=config, feature_sizes=sizes, priors=PriorBoxGenerator(config)(sizes))

    def steps(self) -> list[tuple[float, float]]:
        """``(step_y, step_x)`` in input pixels per feature map (the level's ``step``, else input / map size)."""
        out = []
        img_h, img_w = self.config.image_size
        for (fh, fw), lvl in zip(self.feature_sizes, self.config.levels, strict=True):
            if lvl.step is None:
                out.append((img_h / fh, img_w / fw))
            elif isinstance(lvl.step, tuple | list):
                out.append((float(lvl.step[0]), float(lvl.step[1])))
            else:
                out.append((float(lvl.step), float(lvl.step)))
        return out


def model_priors(name: str, num_classes: int, model_kwargs: dict[str, Any] | None = None) -> ModelPriors:
    """The priors of registered model ``name`` built with ``num_classes`` (background included) and
    ``model_kwargs``: the network is built on the ``meta`` device (no weights allocated) only to learn its
    prior config and feature-map sizes. Raises ``KeyError`` for an unknown model."""
    with torch.device("meta"):
        model = build_model(name, num_classes=num_classes, **dict(model_kwargs or {}))
        sizes = model.feature_sizes()
    return ModelPriors.from_config(model.prior_config, sizes)


@dataclass
class Coverage:
    """How a set of priors serves a set of boxes (one entry per box, in :class:`BoxSet` order).

    * ``best_iou``: ``[N]`` the best IoU of the box with any prior;
    * ``best_level``: ``[N]`` the feature map holding that prior;
    * ``num_above``: ``[N]`` priors with IoU >= ``threshold`` with the box;
    * ``positives``: ``[N]`` priors the Caffe matcher assigns to the box in its image (bipartite best prior plus
      per-prediction matches at ``threshold``), as training sees it without augmentation.
    """

    threshold: float
    best_iou: np.ndarray
    best_level: np.ndarray
    num_above: np.ndarray
    positives: np.ndarray

    @property
    def share_matched(self) -> float:
        """Share of boxes whose best prior IoU reaches the threshold (1.0 for no boxes)."""
        return float((self.best_iou >= self.threshold).mean()) if len(self.best_iou) else 1.0

    @property
    def mean_positives(self) -> float:
        """Mean positives per box (0.0 for no boxes)."""
        return float(self.positives.mean()) if len(self.positives) else 0.0

    def summary(self) -> dict[str, float | int]:
        """``boxes``, ``threshold``, ``share_matched``, ``mean_positives``, ``mean_best_iou``,
        ``boxes_without_positive``."""
        return {"boxes": len(self.best_iou), "threshold": self.threshold, "share_matched": self.share_matched,
                "mean_positives": self.mean_positives,
                "mean_best_iou": float(self.best_iou.mean()) if len(self.best_iou) else 0.0,
                "boxes_without_positive": int((self.positives == 0).sum())}


def prior_coverage(boxes: BoxSet, priors: ModelPriors, threshold: float = 0.5, batch_images: int = 16) -> Coverage:
    """Match ``boxes`` against ``priors`` image by image (``batch_images`` padded images at a time).

    IoU is computed in normalized coordinates after the stretch resize, i.e. between ``boxes.boxes`` and the
    ``[P, 4]`` cxcywh priors converted to xyxy. Returns a :class:`Coverage`.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"matching threshold {threshold} is not in [0, 1]")
    n = len(boxes)
    best_iou = np.zeros(n, np.float64)
    best_level = np.zeros(n, np.int64)
    num_above = np.zeros(n, np.int64)
    positives = np.zeros(n, np.int64)
    prior_t = priors.priors.to(torch.float64)
    prior_xyxy = cxcywh_to_xyxy(prior_t)
    order = np.argsort(boxes.image_index, kind="stable")
    images = np.unique(boxes.image_index)
    for start in range(0, len(images), batch_images):
        chunk = images[start:start + batch_images]
        rows = [order[boxes.image_index[order] == img] for img in chunk]
        g = max(len(r) for r in rows)
        gt = torch.zeros(len(rows), g, 4, dtype=torch.float64)
        valid = torch.zeros(len(rows), g, dtype=torch.bool)
        for b, r in enumerate(rows):
            gt[b, :len(r)] = torch.from_numpy(boxes.boxes[r].astype(np.float64))
            valid[b, :len(r)] = True
        iou = pairwise_iou(gt, prior_xyxy)  # [B, G, P]
        best, arg = iou.max(dim=2)
        above = (iou >= threshold).sum(dim=2)
        matched = match_caffe(prior_t, gt, valid, threshold).matched_idx  # [B, P], -1 unmatched
        for b, r in enumerate(rows):
            k = len(r)
            best_iou[r] = best[b, :k].numpy()
            best_level[r] = priors.level_of_prior[arg[b, :k]].numpy()
            num_above[r] = above[b, :k].numpy()
            m = matched[b]
            positives[r] = torch.bincount(m[m >= 0], minlength=g)[:k].numpy()
    return Coverage(threshold=threshold, best_iou=best_iou, best_level=best_level, num_above=num_above,
                    positives=positives)


def wh_iou(wh: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """IoU of boxes sharing a centre: ``wh [N, 2]`` and ``centers [K, 2]`` (w, h) -> ``[N, K]``."""
    inter = np.minimum(wh[:, None, 0], centers[None, :, 0]) * np.minimum(wh[:, None, 1], centers[None, :, 1])
    union = (wh[:, 0] * wh[:, 1])[:, None] + (centers[:, 0] * centers[:, 1])[None, :] - inter
    return inter / np.maximum(union, 1e-12)


def iou_kmeans(wh: np.ndarray, k: int, seed: int = 0, max_iter: int = 300) -> np.ndarray:
    """k-means of box sizes ``wh [N, 2]`` (w, h > 0) with the distance ``1 - IoU`` of boxes sharing a centre.

    Deterministic for a ``seed``: k-means++ seeding on ``1 - IoU``, then Lloyd iterations (each centre the mean
    ``(w, h)`` of its boxes; an emptied cluster takes the box farthest from its centre) until the assignment no
    longer changes. Returns ``[min(k, distinct sizes), 2]`` float64 centres sorted by area.
    """
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    if len(wh) == 0:
        raise ValueError("no boxes to cluster")
    if k < 1:
        raise ValueError(f"the number of clusters must be >= 1, got {k}")
    if np.any(wh <= 0) or not np.all(np.isfinite(wh)):
        raise ValueError("box widths and heights must be positive and finite")
    k = min(k, len(np.unique(wh, axis=0)))
    rng = np.random.default_rng(seed)
    centers = [wh[rng.integers(len(wh))]]
    for _ in range(1, k):
        d = (1.0 - wh_iou(wh, np.array(centers))).min(axis=1) ** 2
        total = d.sum()
        pick = rng.choice(len(wh), p=d / total) if total > 0 else int(rng.integers(len(wh)))
        centers.append(wh[pick])
    c = np.array(centers, dtype=np.float64)
    assign = np.full(len(wh), -1)
    for _ in range(max_iter):
        dist = 1.0 - wh_iou(wh, c)
        new = dist.argmin(axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = wh[assign == j]
            if len(members):
                c[j] = members.mean(axis=0)
            else:
                far = int(dist[np.arange(len(wh)), assign].argmax())
                c[j] = wh[far]
                assign[far] = j
    return c[np.argsort(c[:, 0] * c[:, 1], kind="stable")]


def worst_case_iou(w: float, h: float, step_x: float, step_y: float) -> float:
    """IoU of a ``w x h`` box with a same-sized prior whose centre is half a grid step away in x and y, the
    farthest a box centre can be from the nearest prior centre of a map with these steps (input pixels)."""
    iw, ih = max(w - step_x / 2.0, 0.0), max(h - step_y / 2.0, 0.0)
    inter = iw * ih
    return inter / (2.0 * w * h - inter)


def min_side_at_threshold(step: float, threshold: float = 0.5) -> float:
    """The smallest side ``s`` of a square box that a map of grid ``step`` (input pixels) matches at IoU >=
    ``threshold`` wherever the box lies, with a same-sized prior: solves :func:`worst_case_iou` ``(s, s, step,
    step) = threshold``, i.e. ``s = step / (2 (1 - sqrt(2 t / (1 + t))))`` (``2.72 step`` at ``t = 0.5``);
    ``inf`` for ``threshold >= 1``."""
    if threshold >= 1.0:
        return math.inf
    return step / (2.0 * (1.0 - math.sqrt(2.0 * threshold / (1.0 + threshold))))


def _fold_ratios(centers: np.ndarray, square_below: float = 1.4, merge: float = 1.25) -> tuple[float, ...]:
    """Aspect ratios ``w / h`` of ``centers`` folded to ``>= 1`` (the priors are flipped), rounded to 0.1.

    Ratios below ``square_below`` are left to the square box (a square of the same area still has IoU >= 0.73
    with a box of ratio 1.4); a ratio within a factor ``merge`` of a kept one is dropped, so that a map holding
    several sizes does not multiply its boxes for near-equal ratios."""
    kept: list[float] = []
    for r in sorted(max(w / h, h / w) for w, h in centers):
        if r < square_below or any(abs(math.log(r / q)) < math.log(merge) for q in kept):
            continue
        kept.append(round(r, 1))
    return tuple(kept)


def propose_priors(priors: ModelPriors, centers: np.ndarray, threshold: float = 0.5) -> PriorConfig:
    """A prior config with the box sizes ``centers [K, 2]`` (w, h in input pixels) on the model's feature maps.

    Each size goes to the coarsest feature map whose :func:`worst_case_iou` reaches ``threshold`` (else to the
    finest map). A map given sizes gets ``min_sizes`` = their ``sqrt(w h)`` (rounded to 0.1 px) and
    ``aspect_ratios`` = their folded ratios (ratios of 1.4 or more, near-equal ones merged; ``flip`` on): every
    size at every ratio. A map
    given none keeps its own boxes (a plain level of the same box sizes: its first size with its ratios).
    Steps, offsets, input size, variances and clipping are the model's.
    """
    steps = priors.steps()
    by_level: dict[int, list[np.ndarray]] = {}
    order = sorted(range(len(steps)), key=lambda k: steps[k][0] * steps[k][1])  # finest first
    for c in np.asarray(centers, dtype=np.float64).reshape(-1, 2):
        chosen = order[0]
        for k in order:
            if worst_case_iou(c[0], c[1], steps[k][1], steps[k][0]) >= threshold:
                chosen = k
        by_level.setdefault(chosen, []).append(c)
    levels = []
    for k, lvl in enumerate(priors.config.levels):
        if k in by_level:
            cs = np.array(by_level[k])
            sizes = sorted({round(float(math.sqrt(w * h)), 1) for w, h in cs})
            levels.append(PriorLevel(min_sizes=tuple(sizes), aspect_ratios=_fold_ratios(cs), flip=True,
                                     step=lvl.step, offset=lvl.offset))
        elif type(lvl) is PriorLevel:
            levels.append(lvl)
        else:  # a subclass (e.g. SSDLite's split-size lowest level): its first box size with its ratios
            w, h = lvl.box_sizes(priors.config.caffe_int_sizes)[0]
            levels.append(PriorLevel(min_sizes=(round(math.sqrt(w * h), 1),), aspect_ratios=lvl.aspect_ratios,
                                     flip=lvl.flip, step=lvl.step, offset=lvl.offset))
    return PriorConfig(image_size=priors.config.image_size, levels=tuple(levels), clip=priors.config.clip,
                       variances=priors.config.variances, caffe_int_sizes=False, clamp_wh=priors.config.clamp_wh)


def level_sizes(priors: ModelPriors, threshold: float = 0.5) -> list[dict[str, Any]]:
    """Per feature map: ``level``, ``feature_size``, ``step`` ``[y, x]``, ``box_sizes_px`` ``[[w, h], ...]`` and
    ``reach_px``: :func:`min_side_at_threshold` of its coarser step (smaller squares can fall between its
    prior centres below the threshold)."""
    out = []
    for k, ((fh, fw), lvl, step) in enumerate(zip(priors.feature_sizes, priors.config.levels, priors.steps(),
                                                  strict=True)):
        out.append({"level": k, "feature_size": [fh, fw], "step": [round(step[0], 3), round(step[1], 3)],
                    "box_sizes_px": [[round(w, 2), round(h, 2)]
                                     for w, h in lvl.box_sizes(priors.config.caffe_int_sizes)],
                    "reach_px": round(min_side_at_threshold(max(step), threshold), 2)})
    return out


def _histogram(values: np.ndarray, edges: np.ndarray) -> list[int]:
    return [int(v) for v in np.histogram(values, bins=edges)[0]]


def fit_report(boxes: BoxSet, priors: ModelPriors, threshold: float = 0.5, clusters: int = 6,
               seed: int = 0) -> dict[str, Any]:
    """The whole analysis as JSON-ready data, plus the proposal.

    Keys: ``image_size``, ``boxes`` (count, ``side_px`` quantiles of ``sqrt(w h)``, ``aspect`` quantiles of
    ``w / h``), ``histograms`` (log2-spaced ``side_edges_px`` with box counts, ``aspect_edges`` with counts),
    ``current`` (:meth:`Coverage.summary` plus per level: sizes, boxes it best serves and their share matched),
    ``clusters`` (``[[w, h], ...]`` input px), ``proposal`` (the same as ``current`` for the proposed priors) and
    ``proposal_config`` (the :class:`~multibox.anchors.PriorConfig`, not JSON). Raises ``ValueError`` when the
    dataset has no boxes.
    """
    if len(boxes) == 0:
        raise ValueError("the dataset has no boxes to analyse")
    wh = boxes.wh_pixels(priors.config.image_size)
    side = np.sqrt(wh[:, 0] * wh[:, 1])
    aspect = wh[:, 0] / wh[:, 1]
    lo = 2.0 ** math.floor(math.log2(max(side.min(), 1e-3)))
    hi = 2.0 ** math.ceil(math.log2(side.max()) + 1e-9)
    side_edges = 2.0 ** np.arange(math.log2(lo), math.log2(hi) + 0.25, 0.5)
    aspect_edges = 2.0 ** np.arange(-3.0, 3.25, 0.5)
    q = [0.0, 0.1, 0.5, 0.9, 1.0]
    current = prior_coverage(boxes, priors, threshold)
    centers = iou_kmeans(wh, clusters, seed=seed)
    proposal_cfg = propose_priors(priors, centers, threshold)
    proposed = ModelPriors.from_config(proposal_cfg, priors.feature_sizes)
    after = prior_coverage(boxes, proposed, threshold)
    return {
        "image_size": list(priors.config.image_size),
        "boxes": {"count": len(boxes), "images": boxes.num_images,
                  "side_px": dict(zip(("min", "p10", "median", "p90", "max"),
                                      (round(float(v), 2) for v in np.quantile(side, q)), strict=True)),
                  "aspect": dict(zip(("min", "p10", "median", "p90", "max"),
                                     (round(float(v), 3) for v in np.quantile(aspect, q)), strict=True))},
        "histograms": {"side_edges_px": [round(float(v), 3) for v in side_edges],
                       "side_counts": _histogram(side, side_edges),
                       "aspect_edges": [round(float(v), 4) for v in aspect_edges],
                       "aspect_counts": _histogram(np.clip(aspect, aspect_edges[0], aspect_edges[-1]), aspect_edges)},
        "current": _coverage_data(current, priors),
        "clusters": [[round(float(w), 2), round(float(h), 2)] for w, h in centers],
        "proposal": _coverage_data(after, proposed),
        "proposal_config": proposal_cfg,
    }


def _coverage_data(cov: Coverage, priors: ModelPriors) -> dict[str, Any]:
    levels = level_sizes(priors, cov.threshold)
    for row in levels:
        mine = cov.best_level == row["level"]
        row["best_for_boxes"] = int(mine.sum())
        row["share_matched"] = float((cov.best_iou[mine] >= cov.threshold).mean()) if mine.any() else None
    return {**cov.summary(), "num_priors": int(priors.priors.shape[0]), "levels": levels}


def plot_fit(report: dict[str, Any], boxes: BoxSet, priors: ModelPriors, out: str | Path) -> Path:
    """Draw the box side (``sqrt(w h)``), width, height and aspect histograms of ``boxes`` in input pixels with
    the prior sizes of each feature map (current: solid lines, proposed: dashed) into a PNG at ``out``."""
    import matplotlib  # heavy, and only --plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wh = boxes.wh_pixels(priors.config.image_size)
    side = np.sqrt(wh[:, 0] * wh[:, 1])
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    edges = np.array(report["histograms"]["side_edges_px"])
    fine = 2.0 ** np.linspace(math.log2(edges[0]), math.log2(edges[-1]), 4 * (len(edges) - 1) + 1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, values, title in ((axes[0, 0], side, "box side sqrt(w h)"), (axes[0, 1], wh[:, 0], "box width"),
                              (axes[1, 0], wh[:, 1], "box height")):
        ax.hist(values, bins=fine, color="0.6")
        ax.set_xscale("log")
        ax.set_xlabel(f"{title} (input px)")
        ax.set_ylabel("boxes")
        for style, key in (("-", "current"), ("--", "proposal")):
            for row in report[key]["levels"]:
                color = colors[row["level"] % len(colors)]
                for w, h in row["box_sizes_px"]:
                    v = {"box side sqrt(w h)": math.sqrt(w * h), "box width": w, "box height": h}[title]
                    ax.axvline(v, color=color, linestyle=style, linewidth=0.8)
        ax.set_title(f"{title}; prior sizes, colour = feature map (solid: current, dashed: proposed)", fontsize=8)
    ax = axes[1, 1]
    ax.hist(np.log2(wh[:, 0] / wh[:, 1]), bins=24, color="0.6")
    ax.set_xlabel("log2 aspect ratio w/h")
    ax.set_ylabel("boxes")
    ax.set_title("aspect ratio", fontsize=9)
    cur, new = report["current"], report["proposal"]
    fig.suptitle(f"{len(boxes)} boxes at input {priors.config.image_size[1]}x{priors.config.image_size[0]}: matched "
                 f"{cur['share_matched']:.3f} -> {new['share_matched']:.3f} (IoU >= {cur['threshold']:g})")
    fig.tight_layout()
    out = Path(out)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out
