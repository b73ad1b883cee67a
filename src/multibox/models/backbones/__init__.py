"""SSD backbones: modules returning a list of feature maps, with ``out_channels`` and ``strides``."""

from .base import Backbone
from .vgg import VGG16Backbone

__all__ = ["Backbone", "VGG16Backbone"]
