"""Detections of one image: the result type of :class:`multibox.postprocess.PostProcess` and of
:class:`multibox.detector.Detector`.

Boxes are ``xyxy`` float32, in absolute pixels of the original image when its size was known to the
post-processor (``image_size`` is then ``(height, width)``), else normalized to [0, 1]. Labels are class
indices of the classifier (``int64``); the background class never appears.

.. code-block:: python

    len(dets)                    # number of boxes
    for box in dets:             # one Detection record per box, best first
        box.xyxy, box.score, box.label, box.class_name
    dets.numpy()                 # {"boxes": [N, 4] float32, "scores": [N], "labels": [N], "class_names": [N]}
    dets.to_pandas()             # one row per box (needs pandas)
    dets.plot(image)             # a PIL image with the boxes drawn (image: the source file by default)
    dets.save("out.jpg", image)  # the same, written to a file (JPEG or PNG by the suffix)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .viz import draw_boxes, save_image

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["Detections", "Detection"]


@dataclass(frozen=True)
class Detection:
    """One detected box: ``xyxy`` ``(x1, y1, x2, y2)`` (pixels of the original image, or normalized when the
    detections carry no ``image_size``), ``score`` in [0, 1], ``label`` (class index, >= 1) and ``class_name``
    (``str(label)`` when no names are known)."""

    xyxy: tuple[float, float, float, float]
    score: float
    label: int
    class_name: str


@dataclass
class Detections:
    """Detections of ONE image, sorted by score (descending) when produced by ``PostProcess``.

    Attributes:
        boxes: ``[N, 4]`` float32 ``xyxy``; pixels of the original image when ``image_size`` is set,
            else normalized coordinates.
        scores: ``[N]`` float32 class probabilities.
        labels: ``[N]`` int64 class indices (index into ``class_names`` when given; background excluded).
        class_names: names of all classes, background included (``class_names[label]``), or ``None``.
        image_size: ``(height, width)`` in pixels of the image the boxes refer to, or ``None`` (normalized).
        source: the image file the detections are of, when known (what :meth:`plot` draws on by default).

    ``len(d)`` is the number of boxes and ``for box in d`` gives one :class:`Detection` per box.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    class_names: list[str] | None = None
    image_size: tuple[int, int] | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        n = self.scores.shape[0] if self.scores.dim() == 1 else -1
        if self.boxes.dim() != 2 or self.boxes.shape[-1] != 4 or self.boxes.shape[0] != n:
            raise ValueError(f"boxes must be [N, 4] and scores [N], got {tuple(self.boxes.shape)} and "
                             f"{tuple(self.scores.shape)}")
        if self.labels.shape != self.scores.shape:
            raise ValueError(f"labels {tuple(self.labels.shape)} must match scores {tuple(self.scores.shape)}")
        if self.image_size is not None:
            self.image_size = (int(self.image_size[0]), int(self.image_size[1]))

    @classmethod
    def empty(cls, class_names: list[str] | None = None, image_size: tuple[int, int] | None = None,
              device: torch.device | str | None = None) -> Detections:
        """No detections: ``boxes [0, 4]`` float32, ``scores [0]`` float32, ``labels [0]`` int64."""
        return cls(
            boxes=torch.zeros((0, 4), dtype=torch.float32, device=device),
            scores=torch.zeros((0,), dtype=torch.float32, device=device),
            labels=torch.zeros((0,), dtype=torch.int64, device=device),
            class_names=class_names,
            image_size=image_size,
        )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def device(self) -> torch.device:
        return self.boxes.device

    def to(self, device: torch.device | str) -> Detections:
        """The same detections with every tensor on ``device``."""
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device),
                          self.class_names, self.image_size, self.source)

    def cpu(self) -> Detections:
        return self.to("cpu")

    def __getitem__(self, index: int | slice | Tensor) -> Detections:
        """A subset: an ``int`` (``IndexError`` out of range; a one-box ``Detections``), a ``slice``, an index
        tensor or a ``[N]`` bool mask. Iterate (``for box in d``) for per-box :class:`Detection` records."""
        if isinstance(index, int):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"detection index {index} out of range for {n} detections")
            index %= n
            index = slice(index, index + 1)
        return Detections(self.boxes[index], self.scores[index], self.labels[index], self.class_names,
                          self.image_size, self.source)

    def __iter__(self) -> Iterator[Detection]:
        """One :class:`Detection` per box, in order."""
        boxes = self.boxes.detach().cpu().tolist()
        scores = self.scores.detach().cpu().tolist()
        labels = self.labels.detach().cpu().tolist()
        for box, score, label, name in zip(boxes, scores, labels, self.names(), strict=True):
            yield Detection((box[0], box[1], box[2], box[3]), float(score), int(label), name)

    def numpy(self) -> dict[str, np.ndarray]:
        """NumPy arrays: ``boxes [N, 4]`` float32 xyxy, ``scores [N]`` float32, ``labels [N]`` int64 and
        ``class_names [N]`` (str)."""
        return {"boxes": self.boxes.detach().cpu().numpy().astype(np.float32, copy=False).reshape(-1, 4),
                "scores": self.scores.detach().cpu().numpy().astype(np.float32, copy=False),
                "labels": self.labels.detach().cpu().numpy().astype(np.int64, copy=False),
                "class_names": np.array(self.names(), dtype=str)}

    def to_pandas(self) -> Any:  # noqa: ANN401
        """A ``pandas.DataFrame`` with one row per box: ``x1, y1, x2, y2, score, label, class_name``.
        Raises ``ImportError`` naming pandas when it is not installed."""
        try:
            import pandas as pd  # optional dependency
        except ImportError:
            raise ImportError("Detections.to_pandas needs pandas, which is not installed (pip install pandas); "
                              "Detections.numpy() and .to_dict() need nothing more") from None
        arrays = self.numpy()
        b = arrays["boxes"]
        return pd.DataFrame({"x1": b[:, 0], "y1": b[:, 1], "x2": b[:, 2], "y2": b[:, 3],
                             "score": arrays["scores"], "label": arrays["labels"],
                             "class_name": arrays["class_names"].astype(object)})

    def clip(self) -> Detections:
        """Boxes clipped to the image (``0 <= x <= width``, ``0 <= y <= height`` pixels, or [0, 1] without
        ``image_size``); a box left without area is dropped."""
        h, w = self.image_size if self.image_size is not None else (1, 1)
        limit = self.boxes.new_tensor([w, h, w, h])
        boxes = torch.minimum(self.boxes.clamp(min=0), limit)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return Detections(boxes[keep], self.scores[keep], self.labels[keep], self.class_names, self.image_size,
                          self.source)

    def plot(self, image: Any = None) -> Image.Image:  # noqa: ANN401
        """A PIL image (RGB) with the boxes, class names and scores drawn (:func:`multibox.viz.draw_boxes`).

        ``image``: a path, a PIL image or an ``[H, W, 3]`` uint8 RGB array; default: the :attr:`source` file.
        Boxes in normalized coordinates are scaled to the image.
        """
        if image is None:
            if self.source is None:
                raise ValueError("these detections know no source image file: give plot / save the image")
            image = self.source
        return draw_boxes(image, self.boxes.detach().cpu().numpy(), self.scores.detach().cpu().numpy(),
                          self.names(), normalized=self.image_size is None)

    def save(self, path: str | os.PathLike, image: Any = None) -> Path:  # noqa: ANN401
        """Write :meth:`plot`'s image to ``path`` atomically: JPEG for ``.jpg`` / ``.jpeg``, else PNG."""
        return save_image(self.plot(image), Path(path))

    def names(self) -> list[str]:
        """Class name of each detection (``str(label)`` when no class names are known)."""
        labels = self.labels.tolist()
        if self.class_names is None:
            return [str(lab) for lab in labels]
        return [self.class_names[lab] if 0 <= lab < len(self.class_names) else str(lab) for lab in labels]

    def filter(self, min_score: float) -> Detections:
        """The detections with ``score >= min_score`` (order kept)."""
        return self[self.scores >= min_score]

    def to_json_records(self, image_id: int | str | None = None) -> list[dict[str, Any]]:
        """COCO-results-style records, one per detection, in order.

        Each record is ``{"bbox": [x, y, w, h], "score": s, "category_id": label, "category_name": name}``
        (plus ``"image_id"`` when given), with plain Python numbers: ``bbox`` is ``xywh`` in the units of
        ``boxes`` (pixels when ``image_size`` is set). ``category_id`` is the class index (background 0 is
        never present); map it to a dataset's own ids where those differ.
        """
        boxes = self.boxes.detach().to("cpu", torch.float64)
        xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1).tolist()
        scores = self.scores.detach().to("cpu", torch.float64).tolist()
        labels = self.labels.detach().cpu().tolist()
        names = self.names()
        records: list[dict[str, Any]] = []
        for bbox, score, label, name in zip(xywh, scores, labels, names, strict=True):
            rec: dict[str, Any] = {} if image_id is None else {"image_id": image_id}
            rec.update(bbox=bbox, score=score, category_id=int(label), category_name=name)
            records.append(rec)
        return records

    def to_dict(self, image_id: int | str | None = None) -> dict[str, Any]:
        """A JSON-serializable summary: ``{"image_id", "image_size": [h, w] | None, "detections": records}``.

        ``detections`` are :meth:`to_json_records` (COCO ``xywh`` boxes).
        """
        return {
            "image_id": image_id,
            "image_size": None if self.image_size is None else list(self.image_size),
            "detections": self.to_json_records(image_id),
        }
