"""Data: image decoding, datasets in VOC / COCO / YOLO / CSV, and transforms.

Every dataset yields ``(image [H, W, 3] uint8 RGB, Target)`` (see :mod:`multibox.data.types`).
"""

from .datasets import (
    AnnotationError,
    COCODataset,
    ConcatDetectionDataset,
    CSVDataset,
    DatasetStats,
    Problem,
    VOCDataset,
    YOLODataset,
    detect_format,
    open_dataset,
    write_dataset,
)
from .image_io import MAX_IMAGE_PIXELS, ImageDecodeError, image_size, load_image, to_rgb
from .transforms import EvalTransform
from .types import DetectionDataset, Target

__all__ = [
    "ImageDecodeError", "load_image", "image_size", "to_rgb", "MAX_IMAGE_PIXELS", "EvalTransform", "Target",
    "DetectionDataset", "VOCDataset", "COCODataset", "YOLODataset", "CSVDataset", "ConcatDetectionDataset",
    "AnnotationError", "DatasetStats", "Problem", "detect_format", "open_dataset", "write_dataset",
]
