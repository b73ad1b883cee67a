"""SSD models: the detector, its parts, and the registry of named models.

The built-in models (``ssd300_vgg16``, ``ssd512_vgg16``, ``ssd7``, ``ssdlite320_mobilenetv2``,
``ssd300_mobilenetv2``, ``ssd300_mobilenetv1``) register themselves in their modules, which the registry imports on
first use (:func:`list_models`, :func:`build_model`).
"""

from .detector import SSD, SSDOutput
from .registry import build_model, list_models, model_info, register_model
from .spec import InputSpec

__all__ = ["SSD", "SSDOutput", "InputSpec", "build_model", "list_models", "register_model", "model_info"]
