"""The MultiBox loss of SSD with Caffe semantics, batched over images.

``loss = conf / N + alpha * loc / N`` where

* ``loc`` is the smooth L1 loss (transition ``beta``), summed over the 4 offsets, of the positive priors; or, with
  ``box_loss="giou"`` / ``"diou"``, ``1 - GIoU`` (Rezatofighi et al. 2019) / ``1 - DIoU`` (Zheng et al. 2020)
  between each positive prior's decoded box and its matched ground truth (both decoded from the offsets with the
  model's :class:`~multibox.box_coder.BoxCoder`, so the loss needs ``priors`` in ``forward``);
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

from .box_coder import BoxCoder

__all__ = ["BOX_LOSSES", "FocalMultiBoxLoss", "LossOutput", "MultiBoxLoss", "hard_negative_mask", "iou_box_loss"]

#: The localization losses: smooth L1 on the encoded offsets (SSD's), or an IoU loss on the decoded boxes.
BOX_LOSSES = ("smooth_l1", "giou", "diou")


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


def iou_box_loss(pred_xyxy: Tensor, target_xyxy: Tensor, kind: str = "giou", eps: float = 1e-7) -> Tensor:
    """Per-box IoU loss ``[...]`` of boxes ``pred_xyxy`` / ``target_xyxy`` ``[..., 4]`` (xyxy, any common unit).

    ``kind="giou"``: ``1 - IoU + (|C| - |A u B|) / |C|`` with ``C`` the smallest box enclosing both;
    ``kind="diou"``: ``1 - IoU + d^2 / c^2`` with ``d`` the distance of the centres and ``c`` the diagonal of ``C``.
    Both are in ``[0, 2)``, 0 only for identical boxes, and keep a gradient for boxes that do not overlap.
    ``eps`` keeps degenerate (zero-area) boxes finite.
    """
    if kind not in ("giou", "diou"):
        raise ValueError(f"kind must be 'giou' or 'diou', got {kind!r}")
    px1, py1, px2, py2 = pred_xyxy.unbind(-1)
    tx1, ty1, tx2, ty2 = target_xyxy.unbind(-1)
    iw = (torch.minimum(px2, tx2) - torch.maximum(px1, tx1)).clamp_min(0)
    ih = (torch.minimum(py2, ty2) - torch.maximum(py1, ty1)).clamp_min(0)
    inter = iw * ih
    union = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter
    iou = inter / (union + eps)
    cw = torch.maximum(px2, tx2) - torch.minimum(px1, tx1)
    ch = torch.maximum(py2, ty2) - torch.minimum(py1, ty1)
    if kind == "giou":
        enclosing = cw * ch
        return 1.0 - iou + (enclosing - union) / (enclosing + eps)
    centre_d2 = ((px1 + px2 - tx1 - tx2) ** 2 + (py1 + py2 - ty1 - ty2) ** 2) / 4.0
    return 1.0 - iou + centre_d2 / (cw**2 + ch**2 + eps)


def _positives_and_loc(box_deltas: Tensor, target_labels: Tensor, target_deltas: Tensor, beta: float,
                       box_loss: str = "smooth_l1", coder: BoxCoder | None = None, priors: Tensor | None = None
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """What both losses share: ``(labels [B, P] int64, positive [B, P] bool, num_pos scalar int64, normalizer
    max(1, num_pos) float32, loc)``, ``loc`` the localization loss of the positive priors (smooth L1 with
    transition ``beta`` summed over the 4 offsets, or the ``box_loss`` IoU loss of the boxes decoded with ``coder``,
    which needs ``priors [P, 4]`` normalized cxcywh), divided by the normalizer."""
    labels = target_labels.to(torch.int64)
    positive = labels > 0
    num_pos = positive.sum()
    normalizer = num_pos.clamp_min(1).to(torch.float32)
    if box_loss == "smooth_l1":
        loc_all = F.smooth_l1_loss(box_deltas, target_deltas.to(box_deltas.dtype), reduction="none", beta=beta)
        loc_all = loc_all.sum(dim=2)
        loc = torch.where(positive, loc_all, torch.zeros_like(loc_all)).sum() / normalizer
        return labels, positive, num_pos, normalizer, loc
    if priors is None:
        raise ValueError(f"box_loss={box_loss!r} decodes the boxes: pass the priors [P, 4] to forward")
    if priors.shape != (box_deltas.shape[1], 4):
        raise ValueError(f"priors must be [P, 4] = {(box_deltas.shape[1], 4)}, got {tuple(priors.shape)}")
    coder = coder if coder is not None else BoxCoder()
    where = positive.nonzero(as_tuple=True)
    pos_priors = priors.to(box_deltas.dtype)[where[1]]
    pred = coder.decode(box_deltas[where], pos_priors)
    target = coder.decode(target_deltas.to(box_deltas.dtype)[where], pos_priors)
    loc = iou_box_loss(pred, target, box_loss).sum() / normalizer
    return labels, positive, num_pos, normalizer, loc


def _check_box_loss(beta: float, box_loss: str, coder: BoxCoder | None) -> tuple[float, str, BoxCoder]:
    """Validated ``(beta, box_loss, coder)`` of a loss's constructor (``ValueError`` naming the argument)."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"box_loss must be one of {', '.join(BOX_LOSSES)}, got {box_loss!r}")
    return float(beta), box_loss, coder if coder is not None else BoxCoder()


class MultiBoxLoss(nn.Module):
    """SSD's MultiBox loss (Caffe ``MultiBoxLoss`` layer with ``MAX_NEGATIVE`` mining and ``VALID`` norm).

    Args:
        neg_pos_ratio: hard negatives kept per positive in each image (Caffe ``neg_pos_ratio``).
        alpha: weight of the localization loss (Caffe ``loc_weight``).
        beta: smooth L1 transition point (1.0 in Caffe; 0 gives plain L1).
        box_loss: ``smooth_l1`` (SSD's, on the encoded offsets), ``giou`` or ``diou`` (on the boxes decoded with
            ``coder``: :func:`iou_box_loss`).
        coder: the model's box coder (its variances), used by the IoU losses; default ``BoxCoder()``.

    ``forward(cls_logits [B, P, C], box_deltas [B, P, 4], target_labels [B, P] int64, target_deltas [B, P, 4],
    priors [P, 4] normalized cxcywh, only needed by the IoU losses)`` returns a :class:`LossOutput`.
    ``target_labels`` uses 0 for background and -1 for priors to ignore; ``target_deltas`` only matters where
    ``target_labels > 0``.

    A batch without any positive prior (all images empty) gives exactly 0 for every term, still attached to
    the graph, so ``backward`` works and yields zero gradients.
    """

    def __init__(self, neg_pos_ratio: float = 3.0, alpha: float = 1.0, beta: float = 1.0,
                 box_loss: str = "smooth_l1", coder: BoxCoder | None = None) -> None:
        super().__init__()
        if neg_pos_ratio < 0:
            raise ValueError(f"neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.alpha = float(alpha)
        self.beta, self.box_loss, self.coder = _check_box_loss(beta, box_loss, coder)

    def extra_repr(self) -> str:
        return (f"neg_pos_ratio={self.neg_pos_ratio}, alpha={self.alpha}, beta={self.beta}, "
                f"box_loss={self.box_loss}")

    def forward(
        self,
        cls_logits: Tensor,
        box_deltas: Tensor,
        target_labels: Tensor,
        target_deltas: Tensor,
        priors: Tensor | None = None,
    ) -> LossOutput:
        """Loss of predictions ``cls_logits [B, P, C]`` / ``box_deltas [B, P, 4]`` against per-prior targets
        (``priors [P, 4]`` normalized cxcywh: only the IoU box losses use them)."""
        b, p, c = _check_shapes(cls_logits, box_deltas, target_labels, target_deltas)
        labels, positive, num_pos, normalizer, loc = _positives_and_loc(
            box_deltas, target_labels, target_deltas, self.beta, self.box_loss, self.coder, priors)

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

    def __init__(self, gamma: float = 2.0, focal_alpha: float = 0.25, alpha: float = 1.0, beta: float = 1.0,
                 box_loss: str = "smooth_l1", coder: BoxCoder | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if not 0.0 <= focal_alpha <= 1.0:
            raise ValueError(f"focal_alpha must be in [0, 1], got {focal_alpha}")
        self.gamma = float(gamma)
        self.focal_alpha = float(focal_alpha)
        self.alpha = float(alpha)
        self.beta, self.box_loss, self.coder = _check_box_loss(beta, box_loss, coder)

    def extra_repr(self) -> str:
        return (f"gamma={self.gamma}, focal_alpha={self.focal_alpha}, alpha={self.alpha}, beta={self.beta}, "
                f"box_loss={self.box_loss}")

    def forward(
        self,
        cls_logits: Tensor,
        box_deltas: Tensor,
        target_labels: Tensor,
        target_deltas: Tensor,
        priors: Tensor | None = None,
    ) -> LossOutput:
        """Loss of predictions ``cls_logits [B, P, C]`` / ``box_deltas [B, P, 4]`` against per-prior targets
        (``priors [P, 4]`` normalized cxcywh: only the IoU box losses use them)."""
        b, p, c = _check_shapes(cls_logits, box_deltas, target_labels, target_deltas)
        labels, positive, num_pos, normalizer, loc = _positives_and_loc(
            box_deltas, target_labels, target_deltas, self.beta, self.box_loss, self.coder, priors)

        log_p = F.log_softmax(cls_logits, dim=2)
        log_pt = log_p.gather(2, labels.clamp_min(0).unsqueeze(2)).squeeze(2)
        pt = log_pt.exp()
        weight = torch.where(positive, torch.full_like(pt, self.focal_alpha), torch.full_like(pt, 1 - self.focal_alpha))
        focal = weight * (1.0 - pt).pow(self.gamma) * (-log_pt)
        conf = torch.where(labels >= 0, focal, torch.zeros_like(focal)).sum() / normalizer

        total = conf + self.alpha * loc
        return LossOutput(total, loc, conf, num_pos)
