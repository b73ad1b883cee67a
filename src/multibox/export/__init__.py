"""Export of multibox networks to other runtimes (ONNX, with an ONNX Runtime runner)."""
