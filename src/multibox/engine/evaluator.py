"""Evaluation of detections and of models: VOC07 / VOC12 AP and COCO metrics, one result type.

* :func:`evaluate_table` scores a :class:`~multibox.metrics.results.DetectionTable` against a
  :class:`~multibox.metrics.results.GroundTruth` (what ``multibox eval --gt ... --detections ...`` runs);
* :func:`evaluate_detections` scores one :class:`~multibox.detections.Detections` per image against
  :class:`~multibox.data.types.Target` lists;
* :func:`evaluate_model` runs a model over a dataset through a :class:`~multibox.detector.Detector` (the same
  preprocessing, runtime choice, post-processing and box clipping as ``multibox detect``; ``PostProcess`` with
  confidence threshold 0.01 and 200 detections per image, boxes in pixels of the original image) and scores
  the detections (used by the trainer's periodic evaluation and ``multibox eval CHECKPOINT``).

All return :class:`EvalResult`. Metrics: ``"voc07"`` (11-point), ``"voc12"`` (all-point), ``"coco"``
(pycocotools); see :mod:`multibox.metrics.voc` and :mod:`multibox.metrics.coco`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.loader import build_loader
from ..detections import Detections
from ..metrics.registry import ClassAP, get_metric
from ..metrics.results import DetectionTable, GroundTruth, read_coco_ground_truth
from ..models.detector import default_class_names

if TYPE_CHECKING:
    from ..data.types import DetectionDataset, Target
    from ..detector import Detector
    from ..models.detector import SSD
    from ..postprocess import PostProcess

__all__ = ["EVAL_POSTPROCESS", "EvalResult", "evaluate_table", "evaluate_detections", "evaluate_model", "check_metric",
           "label_map"]

# the post-processing settings of an evaluation (the Caffe SSD scripts' test settings): keep every detection scoring
# above 0.01, at most 200 per image; the rest of a detector's settings (NMS threshold, mode, top-k) are its own
EVAL_POSTPROCESS: dict[str, Any] = {"conf_threshold": 0.01, "keep_top_k": 200}


def check_metric(metric: str) -> str:
    """``metric`` if it is a registered metric (:func:`multibox.metrics.registry.list_metrics`); else ValueError."""
    return get_metric(metric).name


def _num(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


@dataclass
class EvalResult:
    """The result of an evaluation.

    Attributes:
        metric: ``"voc07"``, ``"voc12"`` or ``"coco"``.
        mAP: mean AP over the classes with ground truth (VOC; NaN when none has any), or COCO's ``AP``
            (IoU 0.50:0.95).
        per_class: class name -> AP (NaN for a class without ground truth), in class order.
        class_names: ``C`` names, background first (the labels of ``detections``).
        num_gt: class name -> ground-truth boxes counted (non-difficult / non-crowd).
        num_det: class name -> detections of the class.
        image_ids: the image ids, in order.
        detections: one :class:`~multibox.detections.Detections` per image (xyxy pixels of the original image).
        coco_stats: the 12 pycocotools numbers by name (``AP``, ``AP50``, ..., ``ARl``) for ``coco``, else None.
        coco_summary: pycocotools' printed summary (``coco`` only).
        classes: the per-class results with their precision-recall curves (for plots).
        tile: ``{"tile": pixels, "overlap": fraction}`` when the detections came from tiled inference
            (:meth:`multibox.detector.Detector.detect_tiled`), else ``None``.
        tta: the test-time augmentation mode the detections came from (:mod:`multibox.tta`), else ``None``.
    """

    metric: str
    mAP: float  # noqa: N815 (the name every detection paper uses)
    per_class: dict[str, float]
    class_names: list[str]
    num_gt: dict[str, int]
    num_det: dict[str, int]
    image_ids: list[str]
    detections: list[Detections] = field(default_factory=list, repr=False)
    coco_stats: dict[str, float] | None = None
    coco_summary: str | None = field(default=None, repr=False)
    classes: list[ClassAP] = field(default_factory=list, repr=False)
    tile: dict[str, Any] | None = None
    tta: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``metric``, ``mAP``, ``per_class`` {name: AP}, ``num_gt``, ``num_det``,
        ``num_images``, for ``coco`` ``coco_stats`` {name: value}, for tiled inference ``tile``
        ``{"tile", "overlap"}`` and with test-time augmentation ``tta`` (the mode). NaN becomes ``null``;
        detections are not included (write them with the results writers)."""
        out: dict[str, Any] = {
            "metric": self.metric,
            "mAP": _num(self.mAP),
            "per_class": {k: _num(v) for k, v in self.per_class.items()},
            "num_gt": dict(self.num_gt),
            "num_det": dict(self.num_det),
            "num_images": len(self.image_ids),
        }
        if self.coco_stats is not None:
            out["coco_stats"] = {k: _num(v) for k, v in self.coco_stats.items()}
        if self.tile is not None:
            out["tile"] = dict(self.tile)
        if self.tta is not None:
            out["tta"] = self.tta
        return out

    def format_table(self) -> str:
        """The per-class table (class, AP, #gt, #det) and the mean, as text; AP values are fractions in [0, 1]
        with 4 decimals, as in :meth:`to_json`."""
        width = max([5, *(len(n) for n in self.per_class)])
        head = get_metric(self.metric).column
        lines = [f"{'class':<{width}}  {head:>11}  {'#gt':>7}  {'#det':>8}"]
        for name, ap in self.per_class.items():
            text = "n/a" if math.isnan(ap) else f"{ap:.4f}"
            lines.append(f"{name:<{width}}  {text:>11}  {self.num_gt[name]:>7}  {self.num_det[name]:>8}")
        m = "n/a" if math.isnan(self.mAP) else f"{self.mAP:.4f}"
        tiled = "" if self.tile is None else f", tiles of {self.tile['tile']} px, overlap {self.tile['overlap']:g}"
        tiled += "" if self.tta is None else f", test-time augmentation {self.tta}"
        lines.append(f"{get_metric(self.metric).headline}: {m}  ({len(self.image_ids)} images, "
                     f"{sum(self.num_det.values())} detections{tiled})")
        if self.coco_stats is not None:
            lines.append("  ".join(f"{k} {v:.4f}" if v >= 0 else f"{k} n/a"
                                   for k, v in self.coco_stats.items()))
        return "\n".join(lines)


def evaluate_table(gt: GroundTruth, table: DetectionTable, metric: str = "voc07", *,
                   detections: list[Detections] | None = None, difficult_as_crowd: bool = True) -> EvalResult:
    """Score ``table`` (rows index ``gt.targets``; labels in ``gt.class_names``) with ``metric``.

    ``detections``: the per-image detections to keep in the result (default: built from ``table``).
    ``difficult_as_crowd``: for ``coco`` on non-COCO ground truth, difficult boxes become ``iscrowd``.
    """
    scorer = get_metric(metric)
    names = gt.class_names
    if len(table) and (table.image.min() < 0 or table.image.max() >= len(gt)):
        raise ValueError(f"detections refer to image {int(table.image.max())} but the ground truth has {len(gt)}")
    score = scorer.evaluate(gt, table, difficult_as_crowd=difficult_as_crowd)
    classes, mean, coco_stats, coco_summary = score.per_class, score.mean, score.stats, score.summary
    if detections is None:
        detections = table.to_detections(len(gt), names, [t.orig_size for t in gt.targets])
    return EvalResult(
        metric=metric, mAP=float(mean), per_class={c.name: c.ap for c in classes}, class_names=list(names),
        num_gt={c.name: c.num_gt for c in classes}, num_det={c.name: c.num_det for c in classes},
        image_ids=gt.image_ids, detections=detections, coco_stats=coco_stats, coco_summary=coco_summary,
        classes=classes)


def evaluate_detections(gts: Sequence[Target], dets: Sequence[Detections], class_names: Sequence[str],
                        metric: str = "voc07") -> EvalResult:
    """Score one :class:`~multibox.detections.Detections` per image against its :class:`Target`.

    ``gts[i]`` and ``dets[i]`` are the same image; boxes are xyxy pixels of the original image (a ``Detections``
    without ``image_size`` is normalized by contract and is scaled by the target's ``orig_size``); labels of both
    index ``class_names`` (background first). For ``coco`` the ground truth is converted as
    :func:`~multibox.metrics.coco.coco_ground_truth` says (difficult boxes become crowd regions).
    """
    check_metric(metric)
    if len(gts) != len(dets):
        raise ValueError(f"{len(gts)} targets but {len(dets)} detection lists: need one per image")
    for t, d in zip(gts, dets, strict=True):
        if d.image_size is not None and all(t.orig_size) and tuple(d.image_size) != tuple(t.orig_size):
            raise ValueError(f"image {t.image_id}: detections are for a {d.image_size[1]}x{d.image_size[0]} "
                             f"image but the target's is {t.orig_size[1]}x{t.orig_size[0]} (WxH)")
    gt = GroundTruth(targets=list(gts), class_names=list(class_names))
    table = DetectionTable.from_detections(dets, [tuple(t.orig_size) for t in gts])
    return evaluate_table(gt, table, metric, detections=list(dets))


# ----------------------------------------------------------------------------------------------- models


def label_map(source: Sequence[str], target: Sequence[str]) -> np.ndarray | None:
    """``[len(source)]`` int64 mapping labels of ``source`` class names to ``target``'s (-1: not there), or
    ``None`` when they are the same list.

    Equal lists, and lists of equal length where ``source`` holds the default names ``class_1, ...``, map
    one to one; otherwise classes are matched by name (at least one must match).
    """
    src, dst = list(source), list(target)
    if src == dst or (len(src) == len(dst) and src == default_class_names(len(src))):
        return None
    index = {n: k for k, n in enumerate(dst) if k > 0}
    out = np.array([-1] + [index.get(n, -1) for n in src[1:]], dtype=np.int64)
    if not (out >= 0).any():
        raise ValueError(f"the model's classes ({', '.join(src[1:6])}, ...) share no name with the dataset's "
                         f"({', '.join(dst[1:6])}, ...)")
    return out


def _remap(dets: Detections, mapping: np.ndarray | None, names: list[str]) -> Detections:
    if mapping is None:
        return Detections(dets.boxes, dets.scores, dets.labels, names, dets.image_size)
    lab = torch.from_numpy(mapping)[dets.labels]
    keep = lab > 0
    return Detections(dets.boxes[keep], dets.scores[keep], lab[keep], names, dets.image_size)


def _decode_only(image: Any, target: Target, rng: Any = None) -> tuple[Any, Target]:  # noqa: ANN401
    """The loader's per-sample transform: none (the Detector preprocesses whole batches)."""
    return image, target


def _collate_images(batch: list[tuple[Any, Target]]) -> tuple[list[Any], list[Target]]:
    return [x for x, _ in batch], [t for _, t in batch]


def evaluate_model(
    model: SSD | Detector,
    dataset: DetectionDataset,
    *,
    metric: str = "voc07",
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    postprocess: PostProcess | None = None,
    progress: bool = True,
    class_names: list[str] | None = None,
    ground_truth: GroundTruth | None = None,
    runtime: str = "eager",
    tile: int | None = None,
    overlap: float = 0.25,
    tta: str | None = None,
) -> EvalResult:
    """Run ``model`` over ``dataset`` and score its detections.

    The images (decoded by the dataset, ``num_workers`` loader processes) go through
    ``Detector.from_model(model, runtime=runtime).detect_arrays`` in batches of ``batch_size``: the one inference
    path of multibox (:func:`multibox.data.transforms.preprocess`, the network on ``runtime``, ``postprocess``
    (default ``PostProcess.from_model(model, conf_threshold=0.01, keep_top_k=200)``), boxes as xyxy pixels of the
    original image, clipped to it), exactly as ``multibox detect --model CHECKPOINT`` runs it. ``runtime``:
    ``"eager"`` by default (a model being trained changes between evaluations; nothing to trace), ``"auto"`` or
    any registered name for a fixed checkpoint (``multibox eval`` uses ``"auto"``, as ``detect`` does). The
    model's device and train/eval mode are restored afterwards. ``model`` may also be a ready
    :class:`~multibox.detector.Detector` (any detector file, e.g. an imported Caffe or TensorFlow bundle, as
    ``multibox eval`` loads it): it is used as it is (its runtime, post-processing and class names; ``device``,
    ``runtime`` and ``postprocess`` do not apply).

    Classes: ``class_names`` names the model's labels (default ``model.class_names``). When they differ from
    ``dataset.class_names`` detections are mapped by name (see :func:`label_map`); the result uses the dataset's
    classes. ``ground_truth``: score against this instead of the dataset's targets (images matched by image id,
    classes by name); by default, the ``coco`` metric on a COCO dataset scores against its annotation file
    itself (COCO's own areas and crowd regions), every other case against the dataset's targets.

    ``tile``: tiled inference (:meth:`~multibox.detector.Detector.detect_tiled`: windows of ``tile`` pixels
    overlapping by ``overlap``, merged by a cross-tile NMS at the detector's NMS threshold, at most its
    ``keep_top_k`` boxes per image), for datasets of photos much larger than the training tiles; recorded in
    the result's ``tile`` (and its JSON). ``None``: each image at once. ``ValueError`` for ``tile < 1`` or
    ``overlap`` outside ``[0, 1)``. ``tta``: test-time augmentation (:meth:`~multibox.detector.Detector.detect_tta`:
    ``"hflip"``, ``"flips"`` or ``"dihedral"`` views fused by weighted box fusion), recorded in the result's
    ``tta``; ``ValueError`` for an unknown mode.
    """
    # heavy: Detector and PostProcess import torchvision (about 1.3 s), which scoring a detection table
    # (evaluate_table: 'multibox eval --gt --detections') does not need
    from ..detector import Detector
    from ..postprocess import PostProcess
    from ..tiling import check_tiling
    from ..tta import tta_views

    check_metric(metric)
    if tile is not None:
        tile, overlap = check_tiling(tile, overlap)
    if tta is not None:
        tta_views(tta)  # an unknown mode fails before any image is read
    data_names = list(dataset.class_names)
    model_names = list(class_names or getattr(model, "class_names", None) or data_names)
    mapping = label_map(model_names, data_names)
    if isinstance(model, Detector):
        detector: Detector | None = model
        model = detector.model
    else:
        detector = None
        post = postprocess if postprocess is not None else PostProcess.from_model(model, **EVAL_POSTPROCESS)
    device = torch.device(device)
    param = next(model.parameters(), None)
    home = param.device if param is not None else device
    was_training = model.training
    loader = build_loader(dataset, _decode_only, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          collate_fn=_collate_images)
    targets: list[Target] = []
    dets: list[Detections] = []
    try:
        if detector is None:
            detector = Detector.from_model(model, device, batch_size=batch_size, runtime=runtime,
                                           postprocess=post)
        for images, batch_targets in tqdm(loader, total=len(loader), desc="eval", unit="batch",
                                          disable=not progress, leave=False):
            batch_dets = detector.detect_arrays(images, tile=tile, overlap=overlap, tta=tta)
            dets += [_remap(d, mapping, data_names) for d in batch_dets]
            targets += batch_targets
    finally:
        model.to(home)
        model.train(was_training)
    if ground_truth is None and metric == "coco" and getattr(dataset, "format", None) == "coco" \
            and getattr(dataset, "annotation_file", None) is not None:
        ground_truth = read_coco_ground_truth(dataset.annotation_file)
    if ground_truth is None:
        result = evaluate_detections(targets, dets, data_names, metric)
    else:
        result = _score_against(ground_truth, targets, dets, data_names, metric)
    if tile is not None:
        result.tile = {"tile": tile, "overlap": overlap}
    result.tta = tta
    return result


def _score_against(gt: GroundTruth, targets: list[Target], dets: list[Detections], names: list[str],
                   metric: str) -> EvalResult:
    """Score per-image detections (labels in ``names``) against ``gt``, matching images by id, classes by name."""
    mapping = label_map(names, gt.class_names)
    table = DetectionTable.from_detections(dets, [tuple(t.orig_size) for t in targets])
    index = np.array([gt.index_of(t.image_id) if gt.index_of(t.image_id) is not None else -1 for t in targets],
                     dtype=np.int64)
    if (index < 0).any():
        missing = targets[int(np.flatnonzero(index < 0)[0])].image_id
        raise ValueError(f"image {missing!r} of the dataset is not in the ground truth {gt.source}")
    label = table.label if mapping is None else mapping[table.label]
    keep = label > 0
    table = DetectionTable(index[table.image][keep], label[keep], table.score[keep], table.boxes[keep])
    by_image: list[Detections] = [Detections.empty(gt.class_names, tuple(t.orig_size) if all(t.orig_size) else None)
                                  for t in gt.targets]
    for i, d in zip(index.tolist(), dets, strict=True):
        by_image[i] = _remap(d, mapping, gt.class_names) if mapping is not None else \
            Detections(d.boxes, d.scores, d.labels, gt.class_names, d.image_size)
    return evaluate_table(gt, table, metric, detections=by_image)
