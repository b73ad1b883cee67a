"""multibox: an SSD (Single Shot MultiBox Detector) toolkit on PyTorch."""

__version__ = "0.1.0"
