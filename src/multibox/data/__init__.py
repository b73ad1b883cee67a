"""Data: image decoding, datasets in VOC / COCO / YOLO / CSV, augmentation, shards and transforms.

Every dataset yields ``(image [H, W, 3] uint8 RGB, Target)`` (see :mod:`multibox.data.types`). Names are imported
on first use, so that the command line starts without loading torchvision.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "AnnotationError": "datasets",
    "COCODataset": "datasets",
    "ConcatDetectionDataset": "datasets",
    "CSVDataset": "datasets",
    "DatasetStats": "datasets",
    "Problem": "datasets",
    "VOCDataset": "datasets",
    "YOLODataset": "datasets",
    "detect_format": "datasets",
    "open_dataset": "datasets",
    "write_dataset": "datasets",
    "MAX_IMAGE_PIXELS": "image_io",
    "ImageDecodeError": "image_io",
    "image_size": "image_io",
    "load_image": "image_io",
    "to_rgb": "image_io",
    "EvalTransform": "transforms",
    "DetectionDataset": "types",
    "Target": "types",
    "ssd_train_transform": "augment",
    "ssdlite_train_transform": "augment",
    "ssd_eval_transform": "augment",
    "collate_detection": "collate",
    "build_loader": "loader",
    "SyntheticShapes": "synth",
    "write_synthetic_voc": "synth",
    "ShardDataset": "shards",
    "ShardIterableDataset": "shards",
    "pack_dataset": "shards",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
