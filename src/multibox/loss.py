"""The MultiBox loss of SSD with Caffe semantics, batched over images.

``loss = conf / N + alpha * loc / N`` where

* ``loc`` is the smooth L1 loss (transition ``beta``), summed over the 4 offsets, of the positive priors;
* ``conf`` is the softmax cross-entropy of the positive priors plus the hard negatives: per image, the
  background priors ranked by their background loss ``-log softmax(logits)[0]`` (detached), the top
  ``floor(neg_pos_ratio * num_pos_image)`` of them (at most all of them). An image without positives gets
  no negatives, as in Caffe's ``MineHardExamples`` (``MAX_NEGATIVE``);
* ``N = max(1, number of positives in the batch)`` (Caffe ``normalization: VALID``).

Target labels: ``0`` background, ``>= 1`` object classes, ``-1`` ignore (neither positive nor negative).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FocalMultiBoxLoss", "LossOutput", "MultiBoxLoss", "hard_negative_mask"]


class LossOutput(NamedTuple):
    """Result of :class:`MultiBoxLoss`.

    * ``total``: scalar, ``conf + alpha * loc``, what to call ``backward`` on;
    * ``loc``: scalar, normalized smooth L1 loss (before ``alpha``);
    * ``conf``: scalar, normalized cross-entropy of positives and mined negatives;
    * ``num_pos``: scalar int64, positive priors in the batch (before the ``max(1, .)`` of the normalizer).
    """

    total: Tensor
    loc: Tensor
    conf: Tensor
    num_pos: Tensor


def hard_negative_mask(background_loss: Tensor, labels: Tensor, neg_pos_ratio: float) -> Tensor:
    """Caffe hard negative mining, batched: which priors are kept as negatives.

    Args:
        background_loss: ``[B, P]`` ranking score of every prior (``-log softmax[..., 0]``); it is detached here.
        labels: ``[B, P]`` int, ``0`` background, ``> 0`` positive, ``< 0`` ignore.
        neg_pos_ratio: negatives kept per positive.

    Returns:
        ``[B, P]`` bool, ``True`` for the ``min(floor(neg_pos_ratio * num_pos_i), num_background_i)`` background
        priors of image ``i`` with the highest ``background_loss`` (ties: lowest prior index first).
    """
    score = background_loss.detach()
    negative = labels == 0
    num_pos = (labels > 0).sum(dim=1, keepdim=True)
    num_neg = torch.minimum(
        torch.floor(num_pos.to(torch.float64) * neg_pos_ratio).to(torch.int64),
        negative.sum(dim=1, keepdim=True),
    )
    # Non-candidates rank last; a stable sort keeps ties in prior order.
    ranked = torch.where(negative, score, torch.full_like(score, -float("inf")))
    order = ranked.sort(dim=1, descending=True, stable=True).indices
    positions = torch.arange(score.shape[1], device=score.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return negative & (rank < num_neg)


def _check_shapes(cls_logits: Tensor, box_deltas: Tensor, target_labels: Tensor, target_deltas: Tensor
                  ) -> tuple[int, int, int]:
    """``(B, P, C)`` of ``cls_logits [B, P, C]``; ``ValueError`` unless ``box_deltas`` / ``target_deltas`` are
    ``[B, P, 4]`` and ``target_labels`` ``[B, P]``."""
    if cls_logits.ndim != 3:
        raise ValueError(f"cls_logits must be [B, P, C], got {tuple(cls_logits.shape)}")
    b, p, c = cls_logits.shape
    if box_deltas.shape != (b, p, 4) or target_deltas.shape != (b, p, 4):
        raise ValueError(
            f"box_deltas and target_deltas must be [B, P, 4] = {(b, p, 4)}, "
            f"got {tuple(box_deltas.shape)} and {tuple(target_deltas.shape)}"
        )
    if target_labels.shape != (b, p):
        raise ValueError(f"target_labels must be [B, P] = {(b, p)}, got {tuple(target_labels.shape)}")
    return b, p, c


def _positives_and_loc(box_deltas: Tensor, target_labels: Tensor, target_deltas: Tensor, beta: float
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """What both losses share: ``(labels [B, P] int64, positive [B, P] bool, num_pos scalar int64, normalizer
    max(1, num_pos) float32, loc)``, ``loc`` the smooth L1 (transition ``beta``) summed over the 4 offsets of the
    positive priors, divided by the normalizer."""
    labels = target_labels.to(torch.int64)
    positive = labels > 0
    num_pos = positive.sum()
    normalizer = num_pos.clamp_min(1).to(torch.float32)
    loc_all = F.smooth_l1_loss(box_deltas, target_deltas.to(box_deltas.dtype), reduction="none", beta=beta)
    loc_all = loc_all.sum(dim=2)
    loc = torch.where(positive, loc_all, torch.zeros_like(loc_all)).sum() / normalizer
    return labels, positive, num_pos, normalizer, loc


class MultiBoxLoss(nn.Module):
    """SSD's MultiBox loss (Caffe ``MultiBoxLoss`` layer with ``MAX_NEGATIVE`` mining and ``VALID`` norm).

    Args:
        neg_pos_ratio: hard negatives kept per positive in each image (Caffe ``neg_pos_ratio``).
        alpha: weight of the localization loss (Caffe ``loc_weight``).
        beta: smooth L1 transition point (1.0 in Caffe; 0 gives plain L1).

    ``forward(cls_logits [B, P, C], box_deltas [B, P, 4], target_labels [B, P] int64, target_deltas [B, P, 4])``
    returns a :class:`LossOutput`. ``target_labels`` uses 0 for background and -1 for priors to ignore;
    ``target_deltas`` only matters where ``target_labels > 0``.

    A batch without any positive prior (all images empty) gives exactly 0 for every term, still attached to
    the graph, so ``backward`` works and yields zero gradients.
    """

    def __init__(self, neg_pos_ratio: float = 3.0, alpha: float = 1.0, beta: float = 1.0) -> None:
        super().__init__()
        if neg_pos_ratio < 0:
            raise ValueError(f"neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def extra_repr(self) -> str:
        return f"neg_pos_ratio={self.neg_pos_ratio}, alpha={self.alpha}, beta={self.beta}"

    def forward(
        self,
        cls_logits: Tensor,
        box_deltas: Tensor,
        target_labels: Tensor,
        target_deltas: Tensor,
    ) -> LossOutput:
        """Loss of predictions ``cls_logits [B, P, C]`` / ``box_deltas [B, P, 4]`` against per-prior targets."""
        b, p, c = _check_shapes(cls_logits, box_deltas, target_labels, target_deltas)
        labels, positive, num_pos, normalizer, loc = _positives_and_loc(box_deltas, target_labels, target_deltas,
                                                                        self.beta)

        # Confidence: cross-entropy of every prior; the background loss of a negative is its own CE.
        ce = F.cross_entropy(cls_logits.reshape(b * p, c), labels.clamp_min(0).reshape(b * p), reduction="none")
        ce = ce.reshape(b, p)
        picked = positive | hard_negative_mask(ce, labels, self.neg_pos_ratio)
        conf = torch.where(picked, ce, torch.zeros_like(ce)).sum() / normalizer

        total = conf + self.alpha * loc
        return LossOutput(total, loc, conf, num_pos)


class FocalMultiBoxLoss(nn.Module):
    """SSD's loss with a softmax focal confidence term instead of hard negative mining (an option, ``loss.name:
    focal``; the focal loss of Lin et al. 2017 in its softmax form).

    ``loss = conf / N + alpha * loc / N`` with ``loc`` as in :class:`MultiBoxLoss` and, over every prior that is
    not ignored (label ``>= 0``)::

        conf = sum_priors  w_t * (1 - p_t) ** gamma * (-log p_t)

    where ``p_t`` is the softmax probability of the prior's target class and ``w_t`` is ``focal_alpha`` for an
    object target and ``1 - focal_alpha`` for background; ``N = max(1, number of positives in the batch)``.
    ``gamma = 0`` and ``focal_alpha = 0.5`` give half the plain cross-entropy over all priors.

    ``forward`` takes and returns what :class:`MultiBoxLoss` does.
    """

    def __init__(self, gamma: float = 2.0, focal_alpha: float = 0.25, alpha: float = 1.0, beta: float = 1.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if not 0.0 <= focal_alpha <= 1.0:
            raise ValueError(f"focal_alpha must be in [0, 1], got {focal_alpha}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.gamma = float(gamma)
        self.focal_alpha = float(focal_alpha)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, focal_alpha={self.focal_alpha}, alpha={self.alpha}, beta={self.beta}"

    def forward(
        self,
        cls_logits: Tensor,
        box_deltas: Tensor,
        target_labels: Tensor,
        target_deltas: Tensor,
    ) -> LossOutput:
        """Loss of predictions ``cls_logits [B, P, C]`` / ``box_deltas [B, P, 4]`` against per-prior targets."""
        b, p, c = _check_shapes(cls_logits, box_deltas, target_labels, target_deltas)
        labels, positive, num_pos, normalizer, loc = _positives_and_loc(box_deltas, target_labels, target_deltas,
                                                                        self.beta)

        log_p = F.log_softmax(cls_logits, dim=2)
        log_pt = log_p.gather(2, labels.clamp_min(0).unsqueeze(2)).squeeze(2)
        pt = log_pt.exp()
        weight = torch.where(positive, torch.full_like(pt, self.focal_alpha), torch.full_like(pt, 1 - self.focal_alpha))
        focal = weight * (1.0 - pt).pow(self.gamma) * (-log_pt)
        conf = torch.where(labels >= 0, focal, torch.zeros_like(focal)).sum() / normalizer

        total = conf + self.alpha * loc
        return LossOutput(total, loc, conf, num_pos)
