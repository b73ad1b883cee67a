"""SSD post-processing with the semantics of Caffe SSD's ``DetectionOutput`` layer, batched.

``cls_logits [B, P, C]`` and ``box_deltas [B, P, 4]`` (the network's outputs, priors in the order of
``priors [P, 4]`` normalized cxcywh) become, per image, boxes ``xyxy`` (pixels of the original image when its
size is given, else normalized), scores and labels:

1. softmax over the ``C`` classes (``background_index`` is the background class and never reported), or with
   ``score="sigmoid"`` (TF Object Detection API models) an independent sigmoid of each class logit;
2. boxes decoded with a :class:`~multibox.box_coder.BoxCoder`, scaled to pixels (``x`` by width, ``y`` by
   height) when image sizes are given and, with ``clip=True``, clipped to the image (to [0, 1] without
   sizes) *before* NMS, as torchvision's SSD and OpenCV's ``DetectionOutput(clip=true)`` do. Caffe's own
   layer never clips: use ``clip=False`` for its exact numbers;
3. ``mode="per_class"`` (Caffe): for every foreground class, the scores ``> conf_threshold``, the ``top_k``
   best of them, greedy NMS at ``nms_threshold`` (plain IoU without Caffe's legacy ``+1``; a box is
   suppressed when its IoU with a kept, higher-scoring box of the same class is ``> nms_threshold``, as in
   ``torchvision.ops.nms``), then the ``keep_top_k`` best of all classes of the image;
   ``mode="global"`` (fast): each prior's best foreground class and its score, ``> conf_threshold``, the
   ``top_k`` best priors of the image, ONE class-agnostic NMS, then the ``keep_top_k`` best;
4. results sorted by score, descending.

Everything is batched over images and classes; no Python loop runs over either. NMS works on blocks (one per
image and class, or per image in global mode), each sorted by score, padded into a few ``[N, m, 4]`` batches of
similar length (one Python iteration per batch). The exact greedy NMS runs vectorized over all blocks of a
batch as an IoU matrix per block iterated to the fixed point of the greedy rule (usually 2-6 ``bmm`` steps),
in cache-sized chunks; very large batches first get a few rounds that keep each block's best live box and
drop its overlaps (enough where most boxes get suppressed). IoUs use the same float32 operations as
``torchvision.ops.nms``, so the kept boxes are those of a per-class ``nms`` loop. Only blocks of over 724
candidates (``top_k`` above that) go to ``torchvision.ops.nms`` one block at a time.
(``torchvision.ops.batched_nms`` was measured too slow here: on CPU it loops over the groups above 4000
boxes, ~120 ms for SSD300 at batch 8 with random logits, and its coordinate-offset variant is O(n * kept)
and rounds the offset coordinates.)

Only the ``keep_top_k`` best kept boxes of an image are reported, and whether NMS keeps a box depends only on
the better boxes of its block. So NMS first runs on a prefix of each image's candidates, its ``1.5 *
keep_top_k`` best (prior, class) pairs over all classes, taken from one top-k per image; an image is done
when that prefix keeps ``keep_top_k`` boxes (or holds all its candidates), the others go on with a 2x longer
prefix (finally all ``top_k`` candidates of every class). A pair in an image's prefix has all the better
pairs of its class there too, so its rank there is its rank in its class (the ``top_k`` cut) and its NMS
fate is final: the result equals NMS on all candidates. With near-uniform scores (an untrained network) this
skips almost all of the ``(C - 1) * top_k`` candidates.

``detection_output`` returns :class:`PaddedDetections` (``[B, keep_top_k]`` shapes); its control flow
depends on the data, so tracing it for export needs more work (a later issue).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torchvision
from torch import Tensor, nn

from .box_coder import BoxCoder
from .detections import Detections

__all__ = ["PaddedDetections", "detection_output", "split_padded", "PostProcess", "grouped_nms"]

Mode = Literal["per_class", "global"]
Score = Literal["softmax", "sigmoid"]
_SCORES = ("softmax", "sigmoid")
ImageSizes = Sequence[tuple[int, int]] | Tensor | None

# NMS block batches: IoU matrices in chunks of at most _MATRIX_CHUNK entries; batches of more than
# _GREEDY_FIRST entries get _GREEDY_ROUNDS greedy rounds first (see _nms_blocks).
_MATRIX_CHUNK = 1 << 19
_GREEDY_FIRST = 1 << 22
_GREEDY_ROUNDS = 16
# Shortest block length: runs are padded to a power of two at least this long.
_MIN_BLOCK = 8
# Padding runs of different length classes into one block is worth up to this many extra IoU entries
# (about the cost of a block's fixed overhead).
_MERGE_SLACK = 1 << 17
# Per-class mode takes prefixes of up to this many times top_k from one top-k over all (prior, class) pairs
# of an image, longer ones from a top-k per class.
_FLAT_PREFIX_MAX = 4


class PaddedDetections(NamedTuple):
    """Detections of a batch, padded to ``K`` per image (static shapes, e.g. for export).

    ``boxes [B, K, 4]`` float32 xyxy, ``scores [B, K]`` float32, ``labels [B, K]`` int64, ``valid [B, K]``
    bool. Valid entries come first in each row, sorted by score descending; padding is zeros (label 0).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    valid: Tensor


def _float32_floor(x: float) -> float:
    """The largest float32 ``<= x``: for float32 ``v``, ``v > x`` iff ``v > _float32_floor(x)``."""
    f = torch.tensor(x, dtype=torch.float32)
    if f.item() > x:
        f = torch.nextafter(f, torch.tensor(-math.inf))
    return float(f.item())


def _image_scale(image_sizes: ImageSizes, batch: int, device: torch.device) -> Tensor | None:
    """``[B, 4]`` float32 ``(w, h, w, h)`` from ``(h, w)`` sizes, or ``None``."""
    if image_sizes is None:
        return None
    hw = torch.as_tensor(image_sizes, dtype=torch.float32, device=device)
    if hw.shape != (batch, 2):
        raise ValueError(f"image_sizes must be {batch} (height, width) pairs, got shape {tuple(hw.shape)}")
    return hw.flip(1).repeat(1, 2)


def _box_parts(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``x1, y1, x2, y2, area`` of ``[N, m, 4]`` boxes, each a contiguous ``[N, m]``."""
    x1, y1, x2, y2 = boxes.permute(2, 0, 1).contiguous().unbind(0)
    return x1, y1, x2, y2, (x2 - x1) * (y2 - y1)


def _nms_matrix(boxes: Tensor, active: Tensor, threshold: float) -> Tensor:
    """Greedy NMS of ``N`` blocks via their ``[N, m, m]`` IoU matrices and a fixed-point iteration.

    The IoU is computed here, in place and for all blocks at once, with torchvision's formula and operation
    order (``area_j + area_i - inter``), so that the result equals ``torchvision.ops.nms`` exactly
    (``tests/test_postprocess.py::test_grouped_nms_matches_torchvision``); ``torchvision.ops.box_iou`` takes one
    2-D pair of box sets per call and would allocate per block. Long blocks do go to ``torchvision.ops.nms``.

    The greedy rule ``keep[i] = active[i] and not any(keep[j] and iou[j, i] > t for j < i)`` has one
    solution; iterating the rule from ``keep = active`` reaches it (each step fixes at least one more position;
    two to four steps are typical). Blocks stop iterating once they stop changing.
    """
    n, m = active.shape
    x1, y1, x2, y2, area = _box_parts(boxes)
    # Each op takes box j's coordinate as a contiguous [N, m, m] copy and box i's broadcast: several times
    # faster than broadcasting both sides. Three buffers; same float32 arithmetic as torchvision's kernel.
    def spread(t: Tensor, out: Tensor | None = None) -> Tensor:  # [N, m] -> [N, m, m], t[n, j] at [n, i, j]
        if out is None:  # (copy_ into a new buffer: far faster than .contiguous() of an expanded view)
            out = torch.empty((n, m, m), dtype=t.dtype, device=t.device)
        return out.copy_(t[:, None, :].expand(n, m, m))

    w = spread(x2)
    torch.minimum(w, x2[:, :, None], out=w)
    h = spread(x1)
    w.sub_(torch.maximum(h, x1[:, :, None], out=h)).clamp_(min=0)
    spread(y2, out=h)
    torch.minimum(h, y2[:, :, None], out=h)
    tmp = spread(y1)
    h.sub_(torch.maximum(tmp, y1[:, :, None], out=tmp)).clamp_(min=0)
    inter = w.mul_(h)
    union = spread(area, out=tmp).add_(area[:, :, None]).sub_(inter)  # area_j + area_i - inter, as torchvision
    # sup[n, j, i] = 1: box j (before i, so at least as good) suppresses box i if j is kept; NaN IoU: 0
    sup_f = torch.gt(inter.div_(union), threshold, out=h).triu_(1)
    keep = active
    rows = None  # None: every block still iterating
    cur, act = active, active
    for _ in range(m + 1):
        hit = torch.bmm(cur.to(sup_f.dtype).unsqueeze(1), sup_f).squeeze(1) > 0
        new = act & ~hit
        changed = (new != cur).any(1)
        if rows is None:
            keep = new
        else:
            keep[rows] = new
        n_changed = int(changed.sum())
        if n_changed == 0:
            break
        if 2 * n_changed <= changed.numel():  # compact to the blocks still changing
            idx = changed.nonzero().squeeze(1)
            rows = idx if rows is None else rows[idx]
            new, act, sup_f = new[idx], act[idx], sup_f[idx]
        cur = new
    return keep


def _nms_greedy(boxes: Tensor, active: Tensor, threshold: float, max_rounds: int) -> tuple[Tensor, Tensor]:
    """Greedy NMS of ``N`` blocks in rounds: each live block keeps its best live box and drops its overlaps.

    Each round is ``O(N m)``; a block needs as many rounds as it keeps boxes, so this suits blocks where most
    boxes get suppressed. Stops after ``max_rounds``: returns the kept mask so far and the boxes still
    undecided (``alive``), all after the last kept box of their block; greedy NMS among them finishes the job.
    """
    x1, y1, x2, y2, area = _box_parts(boxes)
    keep = torch.zeros_like(active)
    alive = active.clone()
    rows = alive.any(1).nonzero().squeeze(1)
    for _ in range(max_rounds):
        if rows.numel() == 0:
            break
        al = alive[rows]
        first = al.to(torch.uint8).argmax(1, keepdim=True)  # first live (= best) box of each block
        keep[rows, first.squeeze(1)] = True
        bx1, by1, bx2, by2, barea = x1[rows], y1[rows], x2[rows], y2[rows], area[rows]
        w = torch.minimum(bx2.gather(1, first), bx2) - torch.maximum(bx1.gather(1, first), bx1)
        h = torch.minimum(by2.gather(1, first), by2) - torch.maximum(by1.gather(1, first), by1)
        inter = w.clamp_(min=0).mul_(h.clamp_(min=0))
        iou = inter / (barea.gather(1, first) + barea).sub_(inter)
        al &= ~(iou > threshold)  # as torchvision: a NaN IoU (two empty boxes) suppresses nothing
        al.scatter_(1, first, False)
        alive[rows] = al
        rows = rows[al.any(1)]
    return keep, alive


def _pack(mask: Tensor) -> Tensor:
    """``[N, m]`` bool -> ``[N, k]`` column indices of each row's True entries, left-aligned, -1 padded."""
    n = mask.shape[0]
    k = int(mask.sum(1).amax()) if mask.numel() else 0
    table = torch.full((n, k), -1, dtype=torch.int64, device=mask.device)
    r, col = mask.nonzero(as_tuple=True)
    table[r, mask.cumsum(1)[r, col] - 1] = col
    return table


def _nms_blocks(boxes: Tensor, active: Tensor, threshold: float) -> Tensor:
    """``[N, m]`` kept mask of ``N`` padded blocks ``[N, m, 4]``, each sorted by score (descending).

    The IoU-matrix NMS runs in chunks of blocks of at most ``_MATRIX_CHUNK`` IoU entries (larger matrices
    fall out of the caches and run several times slower per entry). Batches of over ``_GREEDY_FIRST`` entries
    first get ``_GREEDY_ROUNDS`` greedy rounds (cheap, and all it takes where NMS suppresses most boxes);
    the undecided boxes are then packed to the left. Blocks longer than ``sqrt(_MATRIX_CHUNK)`` (over 724
    candidates in one class, only with a large ``top_k``) go to ``torchvision.ops.nms`` one by one.
    """
    n, m = active.shape
    keep = torch.zeros_like(active)
    rows: Tensor | None = None  # blocks left to do (None: all) and their columns
    cols: Tensor | None = None
    if n * m * m > _GREEDY_FIRST:
        keep, alive = _nms_greedy(boxes, active, threshold, _GREEDY_ROUNDS)
        rows = alive.any(1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return keep
        cols = _pack(alive[rows])
        boxes, active = boxes[rows[:, None], cols.clamp(min=0)], cols >= 0
        n, m = active.shape

    def record(kept: Tensor, first: int) -> None:  # kept [k, m] of blocks first.. of the current batch
        r, c = kept.nonzero(as_tuple=True)
        r = r + first
        if cols is not None:
            c = cols[r, c]
        keep[r if rows is None else rows[r], c] = True

    if m * m > _MATRIX_CHUNK:
        for i in range(n):
            idx = active[i].nonzero().squeeze(1)
            scores = torch.arange(idx.numel(), 0, -1, dtype=boxes.dtype, device=boxes.device)  # the order
            kept = torch.zeros_like(active[i:i + 1])
            kept[0, idx[torchvision.ops.nms(boxes[i, idx], scores, threshold)]] = True
            record(kept, i)
        return keep
    step = max(1, _MATRIX_CHUNK // (m * m))
    if step >= n and rows is None:
        return _nms_matrix(boxes, active, threshold)
    for first in range(0, n, step):  # chunks of many blocks each, not one per block
        record(_nms_matrix(boxes[first:first + step], active[first:first + step], threshold), first)
    return keep


def _nms_sorted_groups(boxes: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS within runs of equal ``groups``; ``[n]`` bool kept mask.

    ``boxes [n, 4]`` xyxy; ``groups [n]`` integer ids whose equal values are contiguous, each run sorted by
    score, descending (earlier wins ties). Runs are padded into blocks of similar length (power-of-two length
    classes, neighbouring classes merged while padding them together costs little; one Python iteration per
    chunk of classes, never per group) and handed to :func:`_nms_blocks`.
    """
    n = groups.numel()
    device = boxes.device
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    if n == 0:
        return keep
    thr = _float32_floor(iou_threshold) if boxes.dtype == torch.float32 else float(iou_threshold)
    _, lengths = torch.unique_consecutive(groups, return_counts=True)
    n_runs = lengths.numel()
    order = lengths.argsort(descending=True, stable=True)
    sorted_len = lengths[order]
    slot_of_run = torch.empty_like(order)
    slot_of_run[order] = torch.arange(n_runs, device=device)
    run = torch.repeat_interleave(torch.arange(n_runs, device=device), lengths)
    slot = slot_of_run[run]  # [n] row of each box's run, runs ordered longest first
    pos = torch.arange(n, device=device) - (lengths.cumsum(0) - lengths)[run]  # [n] column

    # length classes (contiguous in `sorted_len`): row count, head length; merged into chunks greedily
    length_class = torch.log2(sorted_len.clamp(min=_MIN_BLOCK).to(torch.float32)).ceil().to(torch.int64)
    _, class_rows = torch.unique_consecutive(length_class, return_counts=True)
    class_heads = sorted_len[class_rows.cumsum(0) - class_rows]
    chunks: list[list[int]] = []  # [first row, end row, block length]
    for rows, head in zip(class_rows.tolist(), class_heads.tolist(), strict=True):
        if chunks:
            r0, r1, m = chunks[-1]
            if (r1 - r0 + rows) * m * m <= (r1 - r0) * m * m + rows * head * head + _MERGE_SLACK:
                chunks[-1][1] = r1 + rows
                continue
            r0 = r1
        else:
            r0 = 0
        chunks.append([r0, r0 + rows, head])

    for r0, r1, m in chunks:
        if len(chunks) == 1:
            el = torch.arange(n, device=device)
        else:
            el = ((slot >= r0) & (slot < r1)).nonzero().squeeze(1)
        table = torch.full((r1 - r0, m), -1, dtype=torch.int64, device=device)
        table[slot[el] - r0, pos[el]] = el
        kept = _nms_blocks(boxes[table.clamp(min=0)], table >= 0, thr)
        keep[table[kept]] = True
    return keep


def grouped_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Exact batched NMS, a drop-in for ``torchvision.ops.batched_nms`` without its CPU per-group loop.

    Args:
        boxes: ``[n, 4]`` xyxy (any units).
        scores: ``[n]``.
        groups: ``[n]`` integer group ids (e.g. class, or ``image * num_classes + class``); boxes of different
            groups never suppress each other.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scoring box of its group is
            ``> iou_threshold``.

    Returns:
        ``[k]`` int64 indices of the kept boxes, by score descending: the boxes ``torchvision.ops.nms`` keeps
        in each group (the same float32 IoU arithmetic), when scores within a group are distinct.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    order = order[groups[order].argsort(stable=True)]
    keep = order[_nms_sorted_groups(boxes[order], groups[order], iou_threshold)]
    return keep[scores[keep].argsort(descending=True, stable=True)]


class _Candidates(NamedTuple):
    """Candidates of some images, grouped (contiguous groups, each sorted by score descending)."""

    row: Tensor  # [n] position of the image in the round's image list
    group: Tensor  # [n] NMS group id
    prior: Tensor  # [n] prior index
    label: Tensor  # [n] class index
    score: Tensor  # [n]
    complete: Tensor  # [B'] bool: every candidate of the image is present


def _sorted_candidates(values: Tensor, index: Tensor, conf_threshold: float, exhaustive: bool
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Entries ``> conf_threshold`` of per-image score-sorted ``values`` / ``index`` ``[B', M]``.

    Returns ``row``, ``index``, ``score`` ``[n]`` (row-major: by image, then score) and ``complete [B']``: the
    image has no candidate beyond these (fewer than ``M`` passed, or ``exhaustive``).
    """
    valid = values > conf_threshold
    row, j = valid.nonzero(as_tuple=True)
    if exhaustive:
        complete = torch.ones_like(valid[:, 0])
    else:
        complete = valid.sum(1) < values.shape[1]
    return row, index[row, j], values[row, j], complete


def _global_candidates(values: Tensor, prior: Tensor, labels: Tensor, conf_threshold: float, exhaustive: bool
                       ) -> _Candidates:
    """Global mode: the best priors of each image (``values``, ``prior``, ``labels`` ``[B', M]``, sorted)."""
    row, j, score, complete = _sorted_candidates(values, torch.arange(values.shape[1], device=values.device)
                                                 .expand_as(prior), conf_threshold, exhaustive)
    return _Candidates(row, row, prior[row, j], labels[row, j], score, complete)


def _flat_candidates(values: Tensor, flat: Tensor, num_classes: int, k: int, conf_threshold: float,
                     exhaustive: bool) -> _Candidates:
    """Per-class mode from the best (prior, class) pairs of each image: ``values`` and ``flat`` indices
    ``prior * C + class``, ``[B', M]`` sorted; grouped by class, less the pairs ranking ``>= k`` in their class.

    Every better pair of a pair's class is among the ``M`` too, so its rank there is its rank within its
    class: no per-class top-k pass is needed.
    """
    c = num_classes
    row, flat, score, complete = _sorted_candidates(values, flat, conf_threshold, exhaustive)
    label = flat % c
    group = row * c + label
    order = group.argsort(stable=True)  # by image and class, keeping the score order within each
    row, group, flat, label, score = row[order], group[order], flat[order], label[order], score[order]
    if values.shape[1] > k:
        _, lengths = torch.unique_consecutive(group, return_counts=True)
        starts = torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
        m = torch.arange(group.numel(), device=group.device) - starts < k
        row, group, flat, label, score = row[m], group[m], flat[m], label[m], score[m]
    return _Candidates(row, group, flat // c, label, score, complete)


def _class_candidates(scores: Tensor, k: int, prefix: int | None, conf_threshold: float) -> _Candidates:
    """Per class the ``k`` best priors ``> conf_threshold`` (Caffe); only those ranking in their image's
    ``prefix`` best overall when ``prefix`` is given. ``scores [B', P, C]``, background at ``-inf``."""
    b, p, c = scores.shape
    values, prior = scores.transpose(1, 2).topk(k, dim=-1)  # [B', C, k], sorted
    valid = values > conf_threshold
    if prefix is not None and prefix < valid.shape[1] * k:
        cut = values.masked_fill(~valid, -math.inf).flatten(1).topk(prefix, dim=1, sorted=False).values.amin(1)
        taken = valid & (values >= cut[:, None, None])
        complete = taken.sum((1, 2)) == valid.sum((1, 2))
    else:
        taken = valid
        complete = torch.ones(b, dtype=torch.bool, device=scores.device)
    row, label, j = taken.nonzero(as_tuple=True)  # row-major: by image, class, then score
    return _Candidates(row, row * c + label, prior[row, label, j], label, values[row, label, j], complete)


def detection_output(
    cls_logits: Tensor,
    box_deltas: Tensor,
    priors: Tensor,
    box_coder: BoxCoder,
    image_sizes: ImageSizes = None,
    *,
    mode: Mode = "per_class",
    conf_threshold: float = 0.01,
    top_k: int = 400,
    nms_threshold: float = 0.45,
    keep_top_k: int = 200,
    clip: bool | str = True,
    background_index: int | None = 0,
    score: Score = "softmax",
) -> PaddedDetections:
    """Caffe ``DetectionOutput`` on a batch: see the module docstring for the steps.

    Args:
        cls_logits: ``[B, P, C]`` class logits (softmax or sigmoid is applied here, see ``score``), ``C``
            counting the background.
        box_deltas: ``[B, P, 4]`` offsets w.r.t. the priors, as ``box_coder.encode`` makes them.
        priors: ``[P, 4]`` normalized cxcywh.
        box_coder: the coder the network was trained with.
        image_sizes: ``(height, width)`` of each original image (``B`` pairs or a ``[B, 2]`` tensor): boxes
            come out in its pixels. ``None``: normalized coordinates.
        mode: ``"per_class"`` (NMS within each class) or ``"global"`` (best class per prior, one NMS).
        conf_threshold: candidates need a score ``> conf_threshold``.
        top_k: candidates kept before NMS, per class (``per_class``) or per image (``global``); ``<= 0``: all.
        nms_threshold: IoU above which a lower-scoring box is suppressed.
        keep_top_k: detections kept per image after NMS; ``<= 0``: all.
        clip: ``True`` clips boxes to the image (to [0, 1] when normalized) before NMS; ``"after"`` clips the
            kept boxes after NMS (TensorFlow Object Detection API's order); ``False`` never clips.
        background_index: the background class, never reported; ``None``: every class is an object class.
        score: ``"softmax"`` (over the ``C`` classes, SSD / Caffe) or ``"sigmoid"`` (each class independently,
            TF Object Detection API SSDs; the background column is ignored all the same).

    Returns:
        :class:`PaddedDetections`, ``K = keep_top_k`` (with ``keep_top_k <= 0``: the largest count of an
        image); boxes xyxy in pixels (with ``image_sizes``) or normalized; valid entries first, by score.
    """
    if cls_logits.dim() != 3 or box_deltas.dim() != 3 or box_deltas.shape[-1] != 4:
        raise ValueError(f"expected cls_logits [B, P, C] and box_deltas [B, P, 4], got "
                         f"{tuple(cls_logits.shape)} and {tuple(box_deltas.shape)}")
    b, p, c = cls_logits.shape
    if box_deltas.shape[:2] != (b, p) or priors.shape != (p, 4):
        raise ValueError(f"shapes disagree: cls_logits {tuple(cls_logits.shape)}, box_deltas "
                         f"{tuple(box_deltas.shape)}, priors {tuple(priors.shape)}")
    if mode not in ("per_class", "global"):
        raise ValueError(f"mode must be 'per_class' or 'global', got {mode!r}")
    if score not in _SCORES:
        raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")
    if background_index is not None and not 0 <= background_index < c:
        raise ValueError(f"background_index {background_index} out of range for {c} classes")
    n_fg = c - (background_index is not None)
    if n_fg < 1:
        raise ValueError("need at least one object class")
    device = cls_logits.device
    priors = priors.to(device=device, dtype=torch.float32)
    deltas = box_deltas.float()
    scale = _image_scale(image_sizes, b, device)

    scores = cls_logits.float().softmax(dim=-1) if score == "softmax" else cls_logits.float().sigmoid()  # [B,P,C]
    if background_index is not None:
        scores[..., background_index] = -math.inf  # never a candidate, never the best class
    k_cls = p if top_k <= 0 else min(top_k, p)
    cap = k_cls if mode == "global" else n_fg * k_cls  # most candidates an image can have

    # NMS runs on each image's `prefix` best candidates; images with fewer than keep_top_k kept (and more
    # candidates left) go again with a 2x longer prefix. See the module docstring for why this is exact.
    # Prefixes up to `fetch` come from one sorted top-k of each image, computed once.
    if mode == "global":
        best, best_label = scores.max(dim=-1)  # [B, P]
        fetch = cap
        top_values, top_index = best.topk(fetch, dim=1)
        top_labels = best_label.gather(1, top_index)
    else:
        fetch = min(3 * keep_top_k, _FLAT_PREFIX_MAX * k_cls, p * c) if keep_top_k > 0 else 0
        if fetch > 0:
            top_values, top_index = scores.view(b, p * c).topk(fetch, dim=1)
    prefix = min(max(keep_top_k + keep_top_k // 2, 1), fetch) if keep_top_k > 0 and fetch > 0 else cap
    rows: Tensor | None = None  # images of this round; None: all

    def of_rows(t: Tensor) -> Tensor:
        return t if rows is None else t[rows]

    found: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    while True:
        last = False  # no image goes on after this round
        if mode == "global":
            last = prefix >= cap
            cand = _global_candidates(of_rows(top_values[:, :prefix]), of_rows(top_index[:, :prefix]),
                                      of_rows(top_labels[:, :prefix]), conf_threshold, last)
        elif prefix <= fetch:
            cand = _flat_candidates(of_rows(top_values[:, :prefix]), of_rows(top_index[:, :prefix]), c, k_cls,
                                    conf_threshold, prefix >= p * c)
        else:
            last = prefix >= cap
            cand = _class_candidates(of_rows(scores), k_cls, None if last else prefix, conf_threshold)
        img = cand.row if rows is None else rows[cand.row]
        boxes = box_coder.decode(deltas[img, cand.prior], priors[cand.prior])  # [n, 4] normalized xyxy
        if scale is not None:
            boxes = boxes * scale[img]
        if clip is True:
            boxes = boxes.clamp(min=0.0)
            boxes = torch.minimum(boxes, scale[img]) if scale is not None else boxes.clamp(max=1.0)
        keep = _nms_sorted_groups(boxes, cand.group, nms_threshold)
        done = cand.complete
        if keep_top_k > 0:
            done = done | (torch.bincount(cand.row[keep], minlength=done.numel()) >= keep_top_k)
        if last or bool(done.all()):
            found.append((img[keep], cand.score[keep], boxes[keep], cand.label[keep]))
            break
        take = keep & done[cand.row]
        found.append((img[take], cand.score[take], boxes[take], cand.label[take]))
        pending = (~done).nonzero().squeeze(1)
        rows = pending if rows is None else rows[pending]
        prefix = min(2 * prefix, fetch) if prefix < fetch else 2 * prefix
        if mode == "global":
            prefix = min(prefix, cap)

    img, score, boxes, label = (torch.cat(t) for t in zip(*found, strict=True))
    # rank the kept boxes of each image by score
    order = score.argsort(descending=True, stable=True)
    order = order[img[order].argsort(stable=True)]
    img, score, boxes, label = img[order], score[order], boxes[order], label[order]
    img_all = img
    counts = torch.bincount(img, minlength=b)
    rank = torch.arange(img.numel(), device=device) - (counts.cumsum(0) - counts)[img]
    k_out = keep_top_k if keep_top_k > 0 else int(counts.max()) if img.numel() else 0
    m = rank < k_out
    img, rank = img[m], rank[m]
    if clip == "after":
        boxes = boxes.clamp(min=0.0)
        boxes = torch.minimum(boxes, scale[img_all]) if scale is not None else boxes.clamp(max=1.0)
    out = PaddedDetections(
        boxes=torch.zeros((b, k_out, 4), dtype=torch.float32, device=device),
        scores=torch.zeros((b, k_out), dtype=torch.float32, device=device),
        labels=torch.zeros((b, k_out), dtype=torch.int64, device=device),
        valid=torch.zeros((b, k_out), dtype=torch.bool, device=device),
    )
    out.boxes[img, rank] = boxes[m]
    out.scores[img, rank] = score[m]
    out.labels[img, rank] = label[m]
    out.valid[img, rank] = True
    return out


def split_padded(padded: PaddedDetections, image_sizes: ImageSizes = None,
                 class_names: Sequence[str] | None = None) -> list[Detections]:
    """One :class:`Detections` per image from a :class:`PaddedDetections` batch (``image_sizes``: ``(h, w)``
    per image, recorded in the results)."""
    counts = padded.valid.sum(1).tolist()
    boxes = padded.boxes[padded.valid].split(counts)
    scores = padded.scores[padded.valid].split(counts)
    labels = padded.labels[padded.valid].split(counts)
    names = list(class_names) if class_names is not None else None
    if image_sizes is None:
        sizes: list[tuple[int, int] | None] = [None] * len(counts)
    else:
        sizes = [(int(h), int(w)) for h, w in torch.as_tensor(image_sizes).tolist()]
    return [Detections(bx, sc, lb, names, sz) for bx, sc, lb, sz in zip(boxes, scores, labels, sizes, strict=True)]


class PostProcess(nn.Module):
    """Network outputs -> one :class:`Detections` per image (Caffe ``DetectionOutput`` semantics, batched).

    Args:
        priors: ``[P, 4]`` normalized cxcywh, kept as a (non-persistent) buffer.
        box_coder: the coder of the training targets (default :class:`BoxCoder` with Caffe variances).
        mode, conf_threshold, top_k, nms_threshold, keep_top_k, clip, background_index, score: see
            :func:`detection_output`.
        class_names: names of all ``C`` classes (background included), attached to the results.
    """

    priors: Tensor

    def __init__(
        self,
        priors: Tensor,
        box_coder: BoxCoder | None = None,
        mode: Mode = "per_class",
        conf_threshold: float = 0.01,
        top_k: int = 400,
        nms_threshold: float = 0.45,
        keep_top_k: int = 200,
        clip: bool | str = True,
        background_index: int | None = 0,
        class_names: Sequence[str] | None = None,
        score: Score = "softmax",
    ) -> None:
        super().__init__()
        if priors.dim() != 2 or priors.shape[1] != 4:
            raise ValueError(f"priors must be [P, 4] normalized cxcywh, got {tuple(priors.shape)}")
        if mode not in ("per_class", "global"):
            raise ValueError(f"mode must be 'per_class' or 'global', got {mode!r}")
        if score not in _SCORES:
            raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")
        if not 0.0 <= nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must be in [0, 1], got {nms_threshold}")
        self.register_buffer("priors", priors.detach().to(torch.float32).clone(), persistent=False)
        self.box_coder = box_coder if box_coder is not None else BoxCoder()
        self.mode: Mode = mode
        self.conf_threshold = float(conf_threshold)
        self.top_k = int(top_k)
        self.nms_threshold = float(nms_threshold)
        self.keep_top_k = int(keep_top_k)
        if clip not in (True, False, "after"):
            raise ValueError(f"clip must be True, False or 'after', got {clip!r}")
        self.clip: bool | str = clip
        self.background_index = background_index
        self.class_names = list(class_names) if class_names is not None else None
        self.score: Score = score

    @classmethod
    def from_model(cls, model: nn.Module, **kwargs: object) -> PostProcess:
        """The post-processing of an ``SSD``: its priors, box coder and class names, plus ``kwargs``."""
        kwargs.setdefault("class_names", getattr(model, "class_names", None))
        return cls(model.priors, model.box_coder, **kwargs)

    def extra_repr(self) -> str:
        return (f"num_priors={self.priors.shape[0]}, mode={self.mode!r}, conf_threshold={self.conf_threshold}, "
                f"top_k={self.top_k}, nms_threshold={self.nms_threshold}, keep_top_k={self.keep_top_k}, "
                f"clip={self.clip}, background_index={self.background_index}, score={self.score!r}")

    def forward_padded(self, cls_logits: Tensor, box_deltas: Tensor, image_sizes: ImageSizes = None
                       ) -> PaddedDetections:
        """Batched result with static shapes ``[B, K, ...]`` (see :func:`detection_output`)."""
        return detection_output(
            cls_logits, box_deltas, self.priors, self.box_coder, image_sizes,
            mode=self.mode, conf_threshold=self.conf_threshold, top_k=self.top_k,
            nms_threshold=self.nms_threshold, keep_top_k=self.keep_top_k, clip=self.clip,
            background_index=self.background_index, score=self.score,
        )

    @torch.no_grad()
    def forward(self, cls_logits: Tensor, box_deltas: Tensor, image_sizes: ImageSizes = None
                ) -> list[Detections]:
        """``cls_logits [B, P, C]``, ``box_deltas [B, P, 4]``, optional ``(h, w)`` per image -> ``B`` results.

        Boxes are xyxy pixels of each original image when ``image_sizes`` is given, else normalized.
        """
        padded = self.forward_padded(cls_logits, box_deltas, image_sizes)
        return split_padded(padded, image_sizes, self.class_names)
