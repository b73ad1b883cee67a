"""Matching priors to ground truth, batched over padded ground truth.

Two strategies, both returning a :class:`MatchResult`:

* :func:`match_caffe` -- Caffe SSD's ``MatchBBox`` with ``match_type: PER_PREDICTION`` (the SSD paper's
  matching): a greedy bipartite stage gives every ground-truth box the prior that overlaps it most (globally
  best pairs first), then every still-unmatched prior whose best overlap is ``>= threshold`` joins that box.
* :func:`match_argmax` -- torchvision ``SSDMatcher`` / ssd.pytorch: every prior takes its best box when the
  overlap is ``>= threshold``, then every box's best prior is forced to that box.

Shapes and formats (see docs/design.md):

* ``priors``: ``[P, 4]`` normalized **cxcywh**;
* ``gt_boxes``: ``[B, G, 4]`` normalized **xyxy**, padded; ``gt_valid``: ``[B, G]`` bool marks real boxes
  (``G`` may be 0 and an image may have no valid box);
* ``gt_labels``: ``[B, G]`` int64 class indices, ``0`` is background so real objects are ``>= 1``; a label
  ``< 0`` marks a box to *ignore* (e.g. COCO ``iscrowd``): it takes part in matching and the priors it
  matches get target label ``-1``, which :class:`multibox.loss.MultiBoxLoss` excludes from the loss.

Overlap is the plain Jaccard index (no ``+1`` pixel convention) of the prior's xyxy corners and the box.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torchvision.ops import box_convert

from .box_coder import BoxCoder

__all__ = [
    "MatchResult",
    "Targets",
    "pairwise_iou",
    "match_caffe",
    "match_argmax",
    "match",
    "build_targets",
    "MATCH_METHODS",
]

MatchMethod = Literal["caffe", "argmax"]
MATCH_METHODS: tuple[str, ...] = ("caffe", "argmax")

# Caffe's MatchBBox only records overlaps above this value: a box that overlaps no prior stays unmatched.
CAFFE_MIN_OVERLAP = 1e-6


class MatchResult(NamedTuple):
    """Result of matching ``P`` priors against the padded ground truth of ``B`` images.

    * ``matched_idx``: ``[B, P]`` int64, index into the ``G`` padded boxes of the image, ``-1`` for a
      background (unmatched) prior. Never points to an invalid (padding) box.
    * ``matched_iou``: ``[B, P]`` float, for a matched prior the IoU with its matched box (for a prior taken in
      the bipartite / forced stage this can be lower than its best IoU); for an unmatched prior its best
      IoU over the image's valid boxes, ``0`` when the image has none.
    """

    matched_idx: Tensor
    matched_iou: Tensor


class Targets(NamedTuple):
    """Training targets of :func:`build_targets`.

    * ``labels``: ``[B, P]`` int64, ``0`` background, ``>= 1`` the matched box's class, ``-1`` ignore;
    * ``deltas``: ``[B, P, 4]`` box offsets of the matched box (``BoxCoder.encode`` against the priors),
      zeros for background and ignored priors;
    * ``match``: the :class:`MatchResult` they were built from.
    """

    labels: Tensor
    deltas: Tensor
    match: MatchResult


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Plain Jaccard overlap of ``boxes1 [..., N, 4]`` and ``boxes2 [..., M, 4]`` (both xyxy, same units).

    Leading dimensions broadcast; returns ``[..., N, M]``. Boxes with ``x2 < x1`` or ``y2 < y1`` have area 0
    (as Caffe's ``BBoxSize``), and a pair whose union is empty has IoU 0 (never NaN).

    Why not ``torchvision.ops.box_iou``: on proper boxes the numbers are the same to the bit
    (``tests/test_matching.py::test_pairwise_iou_matches_torchvision_and_batches``), but box_iou takes 2-D inputs
    only (matching runs ``[1, P, 4]`` against ``[B, G, 4]`` in one broadcast), and it gives NaN for an empty
    union and negative areas for inverted boxes, where Caffe's matching has 0
    (``tests/test_matching.py::test_pairwise_iou_degenerate_is_zero_not_nan``,
    ``tests/test_registries.py::test_torchvision_box_iou_differs_on_degenerate_boxes``).
    """
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    area1 = (boxes1[..., 2] - boxes1[..., 0]).clamp_min(0) * (boxes1[..., 3] - boxes1[..., 1]).clamp_min(0)
    area2 = (boxes2[..., 2] - boxes2[..., 0]).clamp_min(0) * (boxes2[..., 3] - boxes2[..., 1]).clamp_min(0)
    union = area1[..., :, None] + area2[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(torch.finfo(union.dtype).tiny), torch.zeros_like(inter))


def _check_inputs(priors: Tensor, gt_boxes: Tensor, gt_valid: Tensor) -> None:
    if priors.ndim != 2 or priors.shape[-1] != 4:
        raise ValueError(f"priors must be [P, 4], got {tuple(priors.shape)}")
    if gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must be [B, G, 4], got {tuple(gt_boxes.shape)}")
    if gt_valid.shape != gt_boxes.shape[:2]:
        raise ValueError(f"gt_valid must be [B, G] = {tuple(gt_boxes.shape[:2])}, got {tuple(gt_valid.shape)}")


def _prior_gt_iou(priors: Tensor, gt_boxes: Tensor, gt_valid: Tensor) -> Tensor:
    """``[B, P, G]`` IoU of every prior with every box; ``-1`` in the columns of invalid boxes."""
    dtype = torch.promote_types(priors.dtype, gt_boxes.dtype)
    priors_xyxy = box_convert(priors.to(dtype), "cxcywh", "xyxy")
    iou = pairwise_iou(priors_xyxy.unsqueeze(0), gt_boxes.to(dtype))  # [B, P, G]
    return iou.masked_fill(~gt_valid.bool().unsqueeze(1), -1.0)


def _empty_result(priors: Tensor, gt_boxes: Tensor) -> MatchResult:
    b, p = gt_boxes.shape[0], priors.shape[0]
    dtype = torch.promote_types(priors.dtype, gt_boxes.dtype)
    return MatchResult(
        torch.full((b, p), -1, dtype=torch.int64, device=priors.device),
        torch.zeros((b, p), dtype=dtype, device=priors.device),
    )


def _finish(iou: Tensor, matched_idx: Tensor) -> MatchResult:
    """Fill ``matched_iou``: the matched box's IoU, or the best valid IoU (``>= 0``) for unmatched priors."""
    best = iou.amax(dim=2).clamp_min(0)
    matched = iou.gather(2, matched_idx.clamp_min(0).unsqueeze(2)).squeeze(2)
    return MatchResult(matched_idx, torch.where(matched_idx >= 0, matched, best))


def match_caffe(priors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, threshold: float = 0.5) -> MatchResult:
    """Caffe ``MatchBBox`` (``match_type: PER_PREDICTION``), batched over images.

    Args:
        priors: ``[P, 4]`` normalized cxcywh.
        gt_boxes: ``[B, G, 4]`` normalized xyxy, padded.
        gt_valid: ``[B, G]`` bool, ``False`` for padding.
        threshold: overlap threshold of the per-prediction stage (Caffe ``overlap_threshold``).

    Only pairs with IoU ``> 1e-6`` are candidates (Caffe stores no smaller overlaps), so a box that overlaps
    no prior stays unmatched.

    1. Bipartite: repeatedly take, in every image at once, the best remaining (prior, box) pair among
       unmatched priors and unmatched boxes, and match it. Ties go to the lowest prior index, then the lowest
       box index (Caffe scans priors outside, boxes inside, with a strict ``>``). At most ``G`` rounds, each
       an argmax over ``[B, P * G]``.
    2. Per prediction: every still-unmatched prior whose best IoU over *all* valid boxes (matched ones too)
       is ``>= threshold`` is matched to that box (ties: lowest box index).

    Returns:
        :class:`MatchResult` with ``matched_idx [B, P]`` and ``matched_iou [B, P]``.
    """
    _check_inputs(priors, gt_boxes, gt_valid)
    b, g = gt_boxes.shape[:2]
    p = priors.shape[0]
    if b == 0 or g == 0 or p == 0:
        return _empty_result(priors, gt_boxes)
    iou = _prior_gt_iou(priors, gt_boxes, gt_valid)  # [B, P, G]
    candidate = iou > CAFFE_MIN_OVERLAP  # invalid boxes are -1, never candidates
    matched_idx = torch.full((b, p), -1, dtype=torch.int64, device=iou.device)

    # 1. greedy bipartite matching; `work` holds the IoU of the still-available pairs, -1 elsewhere.
    work = torch.where(candidate, iou, torch.full_like(iou, -1.0))
    flat = work.view(b, p * g)  # prior-major: a flat argmax breaks ties by prior, then by box
    max_rounds = int(gt_valid.sum(dim=1).max().item())
    for _ in range(max_rounds):
        best, arg = flat.max(dim=1)  # first maximum, as Caffe's strict '>' scan
        found = best > CAFFE_MIN_OVERLAP
        img = found.nonzero().squeeze(1)
        if img.numel() == 0:
            break
        prior_i = arg[img] // g
        gt_i = arg[img] % g
        matched_idx[img, prior_i] = gt_i
        work[img, prior_i, :] = -1.0
        work[img, :, gt_i] = -1.0

    # 2. per-prediction: unmatched priors take their best box if the overlap reaches the threshold.
    best_iou, best_gt = torch.where(candidate, iou, torch.full_like(iou, -1.0)).max(dim=2)
    take = (matched_idx < 0) & candidate.any(dim=2) & (best_iou >= threshold)
    matched_idx = torch.where(take, best_gt, matched_idx)
    return _finish(iou, matched_idx)


def match_argmax(priors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, threshold: float = 0.5) -> MatchResult:
    """torchvision ``SSDMatcher`` / ssd.pytorch matching, batched over images.

    Args:
        priors: ``[P, 4]`` normalized cxcywh.
        gt_boxes: ``[B, G, 4]`` normalized xyxy, padded.
        gt_valid: ``[B, G]`` bool, ``False`` for padding.
        threshold: a prior whose best IoU is ``>= threshold`` is matched to that box.

    1. Every prior takes its best valid box (ties: lowest box index) when the IoU is ``>= threshold``.
    2. Every valid box's best prior (ties: lowest prior index) is forced to that box, even below the
       threshold and even at IoU 0 (then the box's best prior is prior 0, as in torchvision). When several
       boxes share one best prior the highest box index wins (torchvision's assignment order).

    Returns:
        :class:`MatchResult` with ``matched_idx [B, P]`` and ``matched_iou [B, P]``.
    """
    _check_inputs(priors, gt_boxes, gt_valid)
    b, g = gt_boxes.shape[:2]
    p = priors.shape[0]
    if b == 0 or g == 0 or p == 0:
        return _empty_result(priors, gt_boxes)
    valid = gt_valid.bool()
    iou = _prior_gt_iou(priors, gt_boxes, valid)  # [B, P, G]
    best_iou, best_gt = iou.max(dim=2)  # [B, P]; -1 where the image has no valid box
    matched_idx = torch.where(best_iou >= threshold, best_gt, torch.full_like(best_gt, -1))

    best_prior = iou.argmax(dim=1)  # [B, G]
    gt_index = torch.arange(g, device=iou.device).expand(b, g)
    forced = torch.full((b, p), -1, dtype=torch.int64, device=iou.device)
    forced = forced.scatter_reduce(
        1, best_prior, torch.where(valid, gt_index, torch.full_like(gt_index, -1)), reduce="amax"
    )
    matched_idx = torch.where(forced >= 0, forced, matched_idx)
    return _finish(iou, matched_idx)


def match(
    priors: Tensor,
    gt_boxes: Tensor,
    gt_valid: Tensor,
    threshold: float = 0.5,
    method: MatchMethod = "caffe",
) -> MatchResult:
    """Dispatch to :func:`match_caffe` (``"caffe"``) or :func:`match_argmax` (``"argmax"``)."""
    if method == "caffe":
        return match_caffe(priors, gt_boxes, gt_valid, threshold)
    if method == "argmax":
        return match_argmax(priors, gt_boxes, gt_valid, threshold)
    raise ValueError(f"unknown match method {method!r}; known: {', '.join(MATCH_METHODS)}")


def build_targets(
    priors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_valid: Tensor,
    box_coder: BoxCoder | None = None,
    method: MatchMethod = "caffe",
    threshold: float = 0.5,
) -> Targets:
    """Match and encode: the per-prior classification and regression targets of a padded batch.

    Args:
        priors: ``[P, 4]`` normalized cxcywh.
        gt_boxes: ``[B, G, 4]`` normalized xyxy, padded.
        gt_labels: ``[B, G]`` int64, ``>= 1`` for objects (0 is background), ``< 0`` for boxes to ignore.
        gt_valid: ``[B, G]`` bool, ``False`` for padding.
        box_coder: encodes matched boxes against the priors (default ``BoxCoder()``, variances 0.1/0.2).
        method: ``"caffe"`` or ``"argmax"`` (see :func:`match`).
        threshold: matching overlap threshold.

    Returns:
        :class:`Targets` ``(labels [B, P] int64, deltas [B, P, 4], match)``: ``labels`` is 0 for background,
        the matched box's label otherwise (``-1`` for boxes to ignore); ``deltas`` are zeros wherever
        ``labels <= 0``.
    """
    if gt_labels.shape != gt_boxes.shape[:2]:
        raise ValueError(f"gt_labels must be [B, G] = {tuple(gt_boxes.shape[:2])}, got {tuple(gt_labels.shape)}")
    coder = box_coder if box_coder is not None else BoxCoder()
    result = match(priors, gt_boxes, gt_valid, threshold=threshold, method=method)
    idx = result.matched_idx
    b, p = idx.shape
    if gt_boxes.shape[1] == 0:
        labels = torch.zeros((b, p), dtype=torch.int64, device=idx.device)
        deltas = torch.zeros((b, p, 4), dtype=torch.promote_types(priors.dtype, gt_boxes.dtype), device=idx.device)
        return Targets(labels, deltas, result)
    is_matched = idx >= 0
    safe = idx.clamp_min(0)
    matched_labels = gt_labels.to(torch.int64).gather(1, safe).clamp_min(-1)
    labels = torch.where(is_matched, matched_labels, torch.zeros_like(matched_labels))
    matched_boxes = gt_boxes.gather(1, safe.unsqueeze(2).expand(b, p, 4))  # [B, P, 4]
    encoded = coder.encode(matched_boxes, priors.to(matched_boxes.dtype))
    deltas = torch.where((labels > 0).unsqueeze(2), encoded, torch.zeros_like(encoded))
    return Targets(labels, deltas, result)
