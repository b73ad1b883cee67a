"""SSD models: the detector, its parts, and the registry of named models.

Importing this package registers the built-in models (``ssd300_vgg16``, ``ssd512_vgg16``, ``ssd7``,
``ssdlite320_mobilenetv2``, ``ssd300_mobilenetv2``, ``ssd300_mobilenetv1``).
"""

from . import ssd7, ssd_mobilenet, ssd_vgg, ssdlite  # noqa: F401  (registration side effect)
from .detector import SSD, SSDOutput
from .registry import build_model, list_models, model_info, register_model
from .spec import InputSpec

__all__ = ["SSD", "SSDOutput", "InputSpec", "build_model", "list_models", "register_model", "model_info"]
