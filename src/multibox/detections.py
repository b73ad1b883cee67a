"""Detections of one image: the result type of :class:`multibox.postprocess.PostProcess`.

Boxes are ``xyxy`` float32, in absolute pixels of the original image when its size was known to the
post-processor (``image_size`` is then ``(height, width)``), else normalized to [0, 1]. Labels are class
indices of the classifier (``int64``); the background class never appears.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Detections"]


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
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    class_names: list[str] | None = None
    image_size: tuple[int, int] | None = None

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
                          self.class_names, self.image_size)

    def cpu(self) -> Detections:
        return self.to("cpu")

    def __getitem__(self, index: int | slice | Tensor) -> Detections:
        """A subset: an ``int``, a ``slice``, an index tensor or a ``[N]`` bool mask."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return Detections(self.boxes[index], self.scores[index], self.labels[index], self.class_names,
                          self.image_size)

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
