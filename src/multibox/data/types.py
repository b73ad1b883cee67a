"""The one sample format shared by every dataset, transform and loader.

A sample is ``(image, target)``:

* ``image``: ``np.ndarray [H, W, 3]`` uint8, RGB, upright (EXIF orientation applied);
* ``target``: :class:`Target` with boxes as absolute-pixel **xyxy** float32 in that image's coordinates
  (VOC's 1-based xmin/ymin already shifted by -1; COCO's xywh already converted), labels as int64 class
  indices where 0 is background (so real objects are >= 1), and per-box flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Target", "DetectionDataset"]


@dataclass
class Target:
    """Ground truth of one image.

    * ``boxes``: ``[N, 4]`` float32 xyxy pixels; ``labels``: ``[N]`` int64 (>= 1);
    * ``difficult``: ``[N]`` bool (VOC ``difficult``; evaluation ignores these);
    * ``iscrowd``: ``[N]`` bool (COCO ``iscrowd``: matched but neither positive nor negative in training);
    * ``image_id``: a stable id (file stem for VOC, the numeric id for COCO, as str);
    * ``orig_size``: ``(height, width)`` of the decoded image before any transform.
    """

    boxes: np.ndarray
    labels: np.ndarray
    image_id: str
    orig_size: tuple[int, int]
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = self.boxes.shape[0]
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.difficult.size == 0 and n:
            self.difficult = np.zeros(n, dtype=bool)
        if self.iscrowd.size == 0 and n:
            self.iscrowd = np.zeros(n, dtype=bool)
        self.difficult = np.asarray(self.difficult, dtype=bool).reshape(-1)
        self.iscrowd = np.asarray(self.iscrowd, dtype=bool).reshape(-1)
        if not (self.labels.shape[0] == self.difficult.shape[0] == self.iscrowd.shape[0] == n):
            raise ValueError(
                f"target {self.image_id}: {n} boxes but {self.labels.shape[0]} labels, "
                f"{self.difficult.shape[0]} difficult and {self.iscrowd.shape[0]} iscrowd flags"
            )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, keep: np.ndarray) -> Target:
        """The boxes where ``keep`` (bool mask or index array) holds, flags and labels alike."""
        return replace(self, boxes=self.boxes[keep], labels=self.labels[keep], difficult=self.difficult[keep],
                       iscrowd=self.iscrowd[keep])


@runtime_checkable
class DetectionDataset(Protocol):
    """What every dataset provides: ``len(ds)``, ``ds[i] -> (image, Target)`` and the class names.

    ``class_names[0]`` is ``"background"``; ``class_names[k]`` names label ``k``.
    """

    class_names: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, Target]: ...
