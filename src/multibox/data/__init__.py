"""Data: image decoding and transforms (datasets arrive with the data issue)."""

from .image_io import ImageDecodeError, load_image
from .transforms import EvalTransform

__all__ = ["ImageDecodeError", "load_image", "EvalTransform"]
