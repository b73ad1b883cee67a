"""TorchScript export of an SSD network, optionally with its decoding and NMS (``multibox export torchscript``).

The saved module loads with ``torch.jit.load`` alone (no multibox, no torchvision). Without post-processing it maps
``images [B, 3, H, W]`` float32 (resized and normalized as the detector's
:class:`~multibox.models.spec.InputSpec` says) to the tuple ``(cls_logits [B, P, C], box_deltas [B, P, 4])``, traced
(:func:`torch.jit.trace`). With post-processing (:class:`ScriptedPostProcess`, scripted: its loops and
data-dependent shapes must not be frozen by a trace) it returns ``(boxes [B, K, 4]`` normalized ``xyxy``,
``scores [B, K]``, ``labels [B, K]`` int64, ``num_detections [B]`` int64``), ``K = keep_top_k``, rows past
``num_detections`` zero, the same contract as the ONNX graph of ``export onnx --postprocess``.

The detector's metadata (class names, input spec, priors count) is stored in the archive as the extra file
``multibox.json`` (``torch.jit.load(path, _extra_files={"multibox.json": ""})``).
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..fileio import atomic_write_bytes
from ..models.outputs import TupleOutput

__all__ = ["ScriptedPostProcess", "ScriptedDetector", "export_torchscript", "META_FILE"]

META_FILE = "multibox.json"


def _iou_matrix(boxes: Tensor) -> Tensor:
    """``[n, 4]`` xyxy -> ``[n, n]`` IoU (``area_i + area_j - inter`` as torchvision; 0 where the union is 0)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    wh = (rb - lt).clamp(min=0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area[None, :] + area[:, None] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


class ScriptedPostProcess(nn.Module):
    """Caffe ``DetectionOutput`` in TorchScript-compatible code (a simpler, loop-based twin of
    :func:`multibox.postprocess.detection_output` with the same settings and results up to ties of equal scores).

    ``forward(cls_logits [B, P, C], box_deltas [B, P, 4])`` -> ``(boxes [B, K, 4]`` normalized xyxy, ``scores
    [B, K]``, ``labels [B, K]`` int64, ``num_detections [B]`` int64), ``K = keep_top_k``.
    """

    def __init__(self, priors: Tensor, variances: Sequence[float], max_log_scale: float, *, mode: str,
                 conf_threshold: float, top_k: int, nms_threshold: float, keep_top_k: int, clip: bool | str,
                 background_index: int | None, score: str) -> None:
        super().__init__()
        if int(keep_top_k) <= 0:
            raise ValueError("keep_top_k must be > 0 for a fixed output size")
        if mode not in ("per_class", "global") or score not in ("softmax", "sigmoid"):
            raise ValueError(f"unsupported mode {mode!r} or score {score!r}")
        self.register_buffer("priors", priors.detach().float().cpu().clone())
        self.variances = [float(v) for v in variances]
        self.max_log_scale = float(max_log_scale) if math.isfinite(float(max_log_scale)) else 1e30
        self.per_class = mode == "per_class"
        self.conf_threshold = float(conf_threshold)
        self.top_k = int(top_k)
        self.nms_threshold = float(nms_threshold)
        self.keep_top_k = int(keep_top_k)
        self.clip_before = clip is True
        self.clip_after = clip == "after"
        self.background_index = -1 if background_index is None else int(background_index)
        self.sigmoid = score == "sigmoid"

    @classmethod
    def from_postprocess(cls, post: Any) -> ScriptedPostProcess:  # noqa: ANN401
        """The settings of a :class:`multibox.postprocess.PostProcess`."""
        return cls(post.priors, tuple(post.box_coder.variances), float(post.box_coder.max_log_scale), mode=post.mode,
                   conf_threshold=post.conf_threshold, top_k=post.top_k, nms_threshold=post.nms_threshold,
                   keep_top_k=post.keep_top_k, clip=post.clip, background_index=post.background_index,
                   score=post.score)

    def _decode(self, deltas: Tensor, prior_index: Tensor) -> Tensor:
        p = self.priors[prior_index]
        cxy = deltas[:, :2] * torch.tensor(self.variances[:2]) * p[:, 2:] + p[:, :2]
        log_wh = (deltas[:, 2:] * torch.tensor(self.variances[2:])).clamp(max=self.max_log_scale)
        wh = torch.exp(log_wh) * p[:, 2:]
        return torch.cat((cxy - wh / 2, cxy + wh / 2), dim=1)

    def _nms(self, boxes: Tensor, scores: Tensor, labels: Tensor) -> Tensor:
        """Indices of the kept boxes (greedy, per label), by score descending."""
        order = torch.argsort(scores, descending=True, stable=True)
        boxes, labels = boxes[order], labels[order]
        iou = _iou_matrix(boxes)
        same = labels[:, None] == labels[None, :]
        n = boxes.shape[0]
        removed = torch.zeros(n, dtype=torch.bool)
        later = torch.arange(n)
        for i in range(n):
            if not bool(removed[i]):
                removed = removed | ((iou[i] > self.nms_threshold) & same[i] & (later > i))
        return order[~removed]

    def forward(self, cls_logits: Tensor, box_deltas: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b, p, c = cls_logits.shape
        scores_all = torch.sigmoid(cls_logits.float()) if self.sigmoid else torch.softmax(cls_logits.float(), -1)
        if self.background_index >= 0:
            scores_all[:, :, self.background_index] = -1.0
        k = p if self.top_k <= 0 else min(self.top_k, p)
        out_boxes = torch.zeros(b, self.keep_top_k, 4)
        out_scores = torch.zeros(b, self.keep_top_k)
        out_labels = torch.zeros(b, self.keep_top_k, dtype=torch.long)
        out_num = torch.zeros(b, dtype=torch.long)
        for i in range(b):
            s = scores_all[i]
            if self.per_class:
                vals, prior_idx = s.topk(k, dim=0)  # [k, C]
                labels = torch.arange(c)[None, :].expand(k, c)
                m = vals > self.conf_threshold
                cand_scores, cand_priors, cand_labels = vals[m], prior_idx[m], labels[m]
            else:
                best, best_label = s.max(dim=1)
                vals, prior_idx = best.topk(k)
                m = vals > self.conf_threshold
                cand_scores, cand_priors, cand_labels = vals[m], prior_idx[m], best_label[prior_idx][m]
            boxes = self._decode(box_deltas[i].float()[cand_priors], cand_priors)
            if self.clip_before:
                boxes = boxes.clamp(min=0.0, max=1.0)
            keep = self._nms(boxes, cand_scores, cand_labels)[:self.keep_top_k]
            kept = boxes[keep]
            if self.clip_after:
                kept = kept.clamp(min=0.0, max=1.0)
            n = int(keep.numel())
            out_boxes[i, :n] = kept
            out_scores[i, :n] = cand_scores[keep]
            out_labels[i, :n] = cand_labels[keep]
            out_num[i] = n
        return out_boxes, out_scores, out_labels, out_num


class ScriptedDetector(nn.Module):
    """A traced network followed by a :class:`ScriptedPostProcess`: ``images [B, 3, H, W]`` -> detections."""

    def __init__(self, network: nn.Module, post: ScriptedPostProcess) -> None:
        super().__init__()
        self.network = network
        self.post = post

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        cls_logits, box_deltas = self.network(images)
        return self.post(cls_logits, box_deltas)


def export_torchscript(model: nn.Module, path: str | os.PathLike, image_size: Sequence[int], *,
                       batch_size: int = 1, postprocess: nn.Module | None = None,
                       meta: dict[str, Any] | None = None, check: bool = True) -> dict[str, Any]:
    """Write ``model`` (an SSD network, eval mode, CPU) as a TorchScript archive at ``path`` (atomically).

    The network is traced on a ``[batch_size, 3, *image_size]`` random input (other batch sizes run too);
    ``postprocess`` (a :class:`~multibox.postprocess.PostProcess`) appends decoding and NMS
    (:class:`ScriptedPostProcess`). ``meta`` goes into the archive as ``multibox.json``. With ``check`` the saved
    archive is reloaded and run on a second random batch (batch size ``batch_size + 1``) and compared with eager
    PyTorch. Returns ``{"path", "bytes", "input", "outputs", "max_abs_diff"}`` (``max_abs_diff``: of the network
    outputs, or of the scores and boxes when the detections agree in number and labels, else ``inf``).
    """
    h, w = (int(v) for v in image_size)
    model = model.eval().cpu()
    wrapper = TupleOutput(model).eval()
    example = torch.randn(batch_size, 3, h, w, generator=torch.Generator().manual_seed(0))
    # the deprecation warnings of torch.jit (PyTorch points to torch.export, whose archives need PyTorch >= 2.x
    # of the same minor version to load; TorchScript is what the issue asks for)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
        module: Any = traced
        outputs = ["cls_logits", "box_deltas"]
        if postprocess is not None:
            module = torch.jit.script(ScriptedDetector(traced, ScriptedPostProcess.from_postprocess(postprocess)))
            outputs = ["boxes", "scores", "labels", "num_detections"]
        buf = io.BytesIO()
        torch.jit.save(module, buf, _extra_files={META_FILE: json.dumps(meta or {}, default=str)})
        data = buf.getvalue()
        loaded = torch.jit.load(io.BytesIO(data)) if check else None
    diff = None
    if loaded is not None:
        x = torch.randn(batch_size + 1, 3, h, w, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = wrapper(x)
            got = loaded(x)
            if postprocess is None:
                diff = max(float((a - b).abs().max()) for a, b in zip(got, ref, strict=True))
            else:
                diff = detections_diff(got, postprocess.forward_padded(*ref))
    atomic_write_bytes(Path(path), data)
    return {"path": str(path), "bytes": len(data), "input": [batch_size, 3, h, w], "outputs": outputs,
            "max_abs_diff": diff}


def detections_diff(got: Sequence[Tensor], ref: Any) -> float:  # noqa: ANN401
    """Largest score / box difference between ``got`` ``(boxes, scores, labels, num)`` and ``ref``
    (:class:`~multibox.postprocess.PaddedDetections`, normalized boxes); ``inf`` when counts or labels differ."""
    boxes, scores, labels, num = got
    valid = ref.valid
    if not torch.equal(num, valid.sum(1)):
        return math.inf
    k = min(valid.shape[1], scores.shape[1])
    mask = valid[:, :k]
    if not torch.equal(labels[:, :k][mask], ref.labels[:, :k][mask]):
        return math.inf
    if not bool(mask.any()):
        return 0.0
    return float(max((scores[:, :k][mask] - ref.scores[:, :k][mask]).abs().max(),
                     (boxes[:, :k][mask] - ref.boxes[:, :k][mask]).abs().max()))
