"""The ``onnxruntime`` runtime: the network exported to ONNX (:mod:`multibox.export.onnx`, once per batch size)
and run by ONNX Runtime on the CPU; the fastest CPU path on both zoo detectors (``multibox bench zoo``), so
``"auto"`` tries it first on the CPU when ``onnx`` and ``onnxruntime`` are installed.

Its networks can also run the decoding and NMS in the same graph (:meth:`OrtNetwork.fuse`,
:mod:`multibox.export.onnx_postprocess`, the score threshold a graph input); the
:class:`~multibox.detector.Detector` uses that once, per threshold, its detections have matched the PyTorch
post-processing's on a batch.
"""

from __future__ import annotations

import importlib.util
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..export.onnx import INPUT_NAME, OnnxRuntimeNetwork, export_onnx_bytes, ort_session, require
from ..export.onnx_postprocess import append_postprocess, postprocess_graph_from
from ..postprocess import PaddedDetections
from .base import Runtime, register_runtime

__all__ = ["OnnxRuntime", "OrtNetwork", "FusedPostprocess"]


class FusedPostprocess:
    """Network + decoding + NMS in one ONNX Runtime session.

    ``fused(x, conf_threshold)``: ``x [B, 3, H, W]`` float32 -> :class:`~multibox.postprocess.PaddedDetections`
    with ``boxes [B, K, 4]`` normalized xyxy, ``scores [B, K]``, ``labels [B, K]`` and ``valid [B, K]``.
    """

    def __init__(self, network: bytes, post: nn.Module, num_classes: int) -> None:
        onnx = require("onnx")
        graph = append_postprocess(onnx.load_from_string(network),
                                   postprocess_graph_from(post, num_classes, conf_input=True))
        self.session = ort_session(graph.SerializeToString())

    def __call__(self, x: Tensor, conf_threshold: float) -> PaddedDetections:
        boxes, scores, labels, num = self.session.run(None, {
            INPUT_NAME: np.ascontiguousarray(x.detach().cpu().float().numpy()),
            "conf_threshold": np.asarray([conf_threshold], dtype=np.float32)})
        valid = np.arange(scores.shape[1])[None, :] < num[:, None]
        return PaddedDetections(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels),
                                torch.from_numpy(valid))


class OrtNetwork:
    """The exported network (``onnx`` bytes) on ONNX Runtime: ``net(x) -> (cls_logits, box_deltas)``.

    ``torch_threads = 1``: while it runs the network, PyTorch's own pre- and post-processing should use one
    thread; its idle OpenMP workers would otherwise spin on the cores that ONNX Runtime's threads need (measured
    on the zoo's person SSD: 18.6 -> 13.1 ms per image end to end, 2 cores).
    """

    torch_threads: ClassVar[int] = 1

    def __init__(self, onnx_bytes: bytes) -> None:
        self.onnx_bytes = onnx_bytes
        self.network = OnnxRuntimeNetwork(onnx_bytes)

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.network(x)

    def fuse(self, post: nn.Module, num_classes: int) -> FusedPostprocess | None:
        """The network with ``post`` (a :class:`~multibox.postprocess.PostProcess`) appended, or ``None`` where
        the graph cannot express it (``keep_top_k`` <= 0: no fixed output size)."""
        if int(post.keep_top_k) <= 0:
            return None
        return FusedPostprocess(self.onnx_bytes, post, num_classes)


class OnnxRuntime(Runtime):
    """ONNX Runtime on the CPU (``CPUExecutionProvider``)."""

    name: ClassVar[str] = "onnxruntime"
    auto_rank: ClassVar[dict[str, int]] = {"cpu": 30}
    description: ClassVar[str] = "ONNX Runtime on the CPU (network exported to ONNX; decoding and NMS in the graph)"

    def check(self, device: torch.device) -> None:
        if device.type != "cpu":
            raise ValueError(f"runtime 'onnxruntime' runs on the CPU only, not {device}")
        require("onnx")
        require("onnxruntime")

    def available(self, device: torch.device) -> bool:
        # without importing them (onnxruntime takes a while): "auto" asks this for every detector
        return device.type == "cpu" and all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))

    def build(self, model: nn.Module, example: Tensor) -> OrtNetwork:
        return OrtNetwork(export_onnx_bytes(model, example))


register_runtime(OnnxRuntime())
