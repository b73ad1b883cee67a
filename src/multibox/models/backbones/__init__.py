"""SSD backbones: modules returning a list of feature maps, with ``out_channels`` and ``strides``; registered by
name (:mod:`~multibox.models.backbones.registry`)."""

from .base import Backbone
from .registry import backbone_info, build_backbone, list_backbones, register_backbone
from .vgg import VGG16Backbone

__all__ = ["Backbone", "VGG16Backbone", "register_backbone", "list_backbones", "build_backbone", "backbone_info"]
