"""Quantization-aware training: fake quantization that simulates the int8 graph ONNX Runtime will run.

The int8 export (:mod:`multibox.export.quantize`) is ONNX Runtime's QDQ quantization with

* weights: int8, **per output channel, symmetric**: ``scale_o = max |W[o]| / 127``, integers in ``[-127, 127]``;
* activations: uint8, **per tensor, asymmetric**: ``rmin = min(lo, 0)``, ``rmax = max(hi, 0)``,
  ``scale = (rmax - rmin) / 255``, ``zero_point = round(-rmin / scale)`` (``onnxruntime.quantization.quant_utils
  .compute_scale_zp``), ``q = clamp(round(x / scale) + zero_point, 0, 255)``.

:func:`prepare_qat` replaces every ``nn.Conv2d`` of a model by a :class:`QATConv2d` (same parameters and
state-dict keys, plus the observed ranges as buffers) whose forward fake-quantizes, with the straight-through
estimator of ``torch.fake_quantize_*`` (gradient passed inside the range, zero outside):

* its weight as above. Per-channel symmetric quantization does not change when a row is multiplied by a
  positive constant, so quantizing the conv's own weight gives the same integers as ONNX Runtime quantizing the
  weight with the following BatchNorm folded in (the exporter folds it);
* its input (the activation that ONNX Runtime quantizes in front of the Conv), with ``[lo, hi]`` an exponential
  moving average of the batches' min and max during training (momentum ``ema``; the first batch sets it);
* its output, where ONNX Runtime quantizes it: the exporter folds a BatchNorm into the conv before it, and ONNX
  Runtime quantizes every Conv's output, or, when a ReLU / ReLU6 follows, removes the activation and quantizes
  its output instead. So a conv followed by a BatchNorm (the next child of the same parent) gets the BatchNorm's
  output fake-quantized (:class:`QATBatchNorm2d`); in an ``nn.Sequential``, a ``ReLU`` / ``ReLU6`` right after
  the conv (or its BatchNorm) gets its output fake-quantized instead (:class:`OutputFakeQuant`); any other conv
  (the prediction convolutions, whose outputs ONNX Runtime quantizes before the reshapes and the concatenation)
  fake-quantizes its own output;
* the network's outputs ``cls_logits`` and ``box_deltas`` (a forward hook on the head): ONNX Runtime quantizes the
  concatenations that make them.

The int8 export of a QAT model hands the conv input ranges and the conv / BatchNorm output ranges to ONNX Runtime
(``TensorQuantOverrides`` ``rmin`` / ``rmax``), so that its integers are the ones the fake-quantized network was
trained with; the other tensors (activation outputs, residual additions, pooling, concatenation) are calibrated
by ONNX Runtime on the calibration images as for post-training quantization
(:func:`multibox.export.quantize.qat_overrides`). Residual additions and the final concatenations are not
simulated in training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .binary import BinaryConv2d

__all__ = ["QATConv2d", "QATBatchNorm2d", "OutputFakeQuant", "prepare_qat", "has_qat", "qat_disabled", "qat_convs",
           "folded_batchnorm", "activation_qparams", "fake_quant_activation", "fake_quant_weight", "ACT_QMIN",
           "ACT_QMAX", "WEIGHT_QMAX"]

ACT_QMIN, ACT_QMAX = 0, 255
WEIGHT_QMAX = 127


def activation_qparams(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """``(scale float32 [1], zero_point int32 [1])`` of uint8 asymmetric quantization of the range ``[lo, hi]``
    (0-dim or 1-element tensors), computed as ONNX Runtime does (range widened to hold 0, float64 arithmetic,
    scale stored as float32; a range narrower than float32's ``tiny`` gives scale 1, zero point 0)."""
    lo64 = torch.clamp(lo.detach().double().reshape(1), max=0.0)
    hi64 = torch.clamp(hi.detach().double().reshape(1), min=0.0)
    scale = (hi64 - lo64) / float(ACT_QMAX - ACT_QMIN)
    tiny = torch.finfo(torch.float32).tiny
    zero = torch.round(ACT_QMIN - lo64 / scale.clamp_min(tiny))
    small = scale < tiny
    scale = torch.where(small, torch.ones_like(scale), scale)
    zero = torch.where(small, torch.zeros_like(zero), zero)
    return scale.float(), zero.clamp(ACT_QMIN, ACT_QMAX).to(torch.int32)


def fake_quant_activation(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``x`` (any shape) quantized to uint8 with the range ``[lo, hi]`` (:func:`activation_qparams`) and
    dequantized; straight-through gradient inside the range."""
    scale, zero = activation_qparams(lo, hi)
    return torch.fake_quantize_per_tensor_affine(x, scale.to(x.device), zero.to(x.device), ACT_QMIN, ACT_QMAX)


def fake_quant_weight(weight: Tensor) -> Tensor:
    """``weight [O, ...]`` quantized per output channel to symmetric int8 (``scale_o = max |W[o]| / 127``,
    integers in ``[-127, 127]``) and dequantized; straight-through gradient."""
    absmax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1).double()
    scale = (2 * absmax) / (2 * WEIGHT_QMAX)
    tiny = torch.finfo(torch.float32).tiny
    scale = torch.where(scale < tiny, torch.ones_like(scale), scale).float()
    zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale.to(weight.device), zero, 0, -WEIGHT_QMAX,
                                                  WEIGHT_QMAX)


class QATConv2d(nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized weight, input and (``quant_output``) output (module docstring).

    Buffers: ``act_range [2]`` (``lo``, ``hi`` of the input), ``out_range [2]`` and ``observed [2]`` (whether
    each range was set). ``ema``: momentum of the moving averages. ``enabled = False`` makes it a plain conv
    (for exporting the float graph). Shapes as ``nn.Conv2d``.
    """

    def __init__(self, *args: Any, quant_output: bool = False, ema: float = 0.01, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.quant_output = bool(quant_output)
        self.ema = float(ema)
        self.enabled = True
        self.register_buffer("act_range", torch.zeros(2))
        self.register_buffer("out_range", torch.zeros(2))
        self.register_buffer("observed", torch.zeros(2))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, quant_output: bool = False, ema: float = 0.01) -> QATConv2d:
        """A QAT copy of ``conv`` (weights and bias copied)."""
        out = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, quant_output=quant_output, ema=ema,
                  device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(conv.weight)
            if conv.bias is not None:
                out.bias.copy_(conv.bias)
        return out

    def _observe(self, x: Tensor, which: int) -> Tensor:
        rng = self.act_range if which == 0 else self.out_range
        if self.training or not bool(self.observed[which]):
            with torch.no_grad():
                now = torch.stack([x.detach().min(), x.detach().max()]).float()
                if bool(self.observed[which]):
                    rng.add_(self.ema * (now - rng))
                else:
                    rng.copy_(now)
                    self.observed[which] = 1.0
        return rng

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C_in, H, W]`` -> ``[B, C_out, H', W']``."""
        if not self.enabled:
            return super().forward(x)
        rng = self._observe(x, 0)
        xq = fake_quant_activation(x, rng[0], rng[1])
        w = fake_quant_weight(self.weight)
        if self.padding_mode != "zeros":
            y = F.conv2d(F.pad(xq, self._reversed_padding_repeated_twice, mode=self.padding_mode), w, self.bias,
                         self.stride, 0, self.dilation, self.groups)
        else:
            y = F.conv2d(xq, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.quant_output:
            out = self._observe(y, 1)
            y = fake_quant_activation(y, out[0], out[1])
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", qat=True, quant_output={self.quant_output}"


class _RangeObserver:
    """Mixin: an EMA ``[lo, hi]`` range buffer ``out_range`` with ``observed`` (set by ``_init_observer``)."""

    out_range: Tensor
    observed: Tensor
    ema: float
    enabled: bool
    training: bool

    def _init_observer(self, ema: float) -> None:
        self.ema = float(ema)
        self.enabled = True
        self.register_buffer("out_range", torch.zeros(2))  # type: ignore[attr-defined]
        self.register_buffer("observed", torch.zeros(1))  # type: ignore[attr-defined]

    def _fake_quant_output(self, y: Tensor) -> Tensor:
        if self.training or not bool(self.observed[0]):
            with torch.no_grad():
                now = torch.stack([y.detach().min(), y.detach().max()]).float()
                if bool(self.observed[0]):
                    self.out_range.add_(self.ema * (now - self.out_range))
                else:
                    self.out_range.copy_(now)
                    self.observed[0] = 1.0
        return fake_quant_activation(y, self.out_range[0], self.out_range[1])


class QATBatchNorm2d(_RangeObserver, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same state-dict keys, plus ``out_range`` and ``observed``) whose output is
    fake-quantized to uint8: the output of the conv the exporter folds it into. ``[B, C, H, W]`` -> same."""

    def __init__(self, *args: Any, ema: float = 0.01, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_observer(ema)

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d, ema: float = 0.01) -> QATBatchNorm2d:
        """A QAT copy of ``bn`` (parameters and running statistics copied)."""
        out = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                  track_running_stats=bn.track_running_stats, ema=ema, device=bn.weight.device
                  if bn.weight is not None else None)
        out.load_state_dict(bn.state_dict(), strict=False)
        out.train(bn.training)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, H, W]`` -> BatchNorm output, fake-quantized."""
        y = super().forward(x)
        return self._fake_quant_output(y) if self.enabled else y


class OutputFakeQuant(_RangeObserver, nn.Module):
    """``inner`` (an activation module) followed by uint8 fake quantization of its output (ONNX Runtime
    removes a ReLU / ReLU6 after a conv and quantizes its output range). Shapes as ``inner``."""

    def __init__(self, inner: nn.Module, ema: float = 0.01) -> None:
        super().__init__()
        self.inner = inner
        self._init_observer(ema)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` -> ``inner(x)``, fake-quantized."""
        y = self.inner(x)
        return self._fake_quant_output(y) if self.enabled else y


_CLIPPING = (nn.ReLU, nn.ReLU6)


def _fake_quant_head_outputs(head: nn.Module, _inputs: Any, output: Any) -> Any:  # noqa: ANN401
    """Forward hook of the head (:func:`prepare_qat`): ``(cls_logits [B, P, C], box_deltas [B, P, 4])``, each
    fake-quantized with its own observed range, as ONNX Runtime quantizes the concatenations that make them."""
    if not head.__dict__.get("_qat_enabled", True):
        return output
    cls_logits, box_deltas = output
    rng, seen = head.qat_out_range, head.qat_out_observed
    outs = []
    for k, y in enumerate((cls_logits, box_deltas)):
        if head.training or not bool(seen[k]):
            with torch.no_grad():
                now = torch.stack([y.detach().min(), y.detach().max()]).float()
                if bool(seen[k]):
                    rng[k].add_(head.__dict__.get("_qat_ema", 0.01) * (now - rng[k]))
                else:
                    rng[k].copy_(now)
                    seen[k] = 1.0
        outs.append(fake_quant_activation(y, rng[k, 0], rng[k, 1]))
    return type(output)(outs) if isinstance(output, tuple) and not hasattr(output, "_fields") else \
        type(output)(*outs)


def _head_output_convs(model: nn.Module) -> set[str]:
    """Names of the convolutions whose outputs are the predictions: ``head.classification[k]`` /
    ``head.regression[k]`` when a conv, else the last conv inside it."""
    names: set[str] = set()
    head = getattr(model, "head", None)
    for branch in ("classification", "regression"):
        for k, pred in enumerate(getattr(head, branch, None) or ()):
            convs = [n for n, m in pred.named_modules() if isinstance(m, nn.Conv2d)]
            if convs:
                names.add(f"head.{branch}.{k}" + (f".{convs[-1]}" if convs[-1] else ""))
    return names


def prepare_qat(model: nn.Module, ema: float = 0.01) -> list[str]:
    """Replace (in place) every ``nn.Conv2d`` of ``model`` by a :class:`QATConv2d` copy and fake-quantize each
    conv's output where ONNX Runtime quantizes it (module docstring): a BatchNorm right after the conv becomes a
    :class:`QATBatchNorm2d`; in an ``nn.Sequential`` a ``ReLU`` / ``ReLU6`` right after the conv or its BatchNorm is
    wrapped in :class:`OutputFakeQuant`; otherwise the conv fake-quantizes its own output. Returns the names of the
    convs replaced. The result is deterministic, so that a QAT checkpoint loads into ``prepare_qat(build_model(...))``.
    ``ValueError`` for a binarized model (its binary convolutions are not int8 convolutions)."""
    if any(isinstance(m, BinaryConv2d) for m in model.modules()):
        raise ValueError("quantization-aware training of a binarized model is not supported (its convolutions are "
                         "binary, not int8)")
    heads = _head_output_convs(model)
    names = [name for name, m in model.named_modules() if type(m) is nn.Conv2d]
    for parent_name, parent in list(model.named_modules()):
        children = list(parent.named_children())
        for i, (attr, child) in enumerate(children):
            if type(child) is not nn.Conv2d:
                continue
            name = f"{parent_name}.{attr}" if parent_name else attr
            nxt = children[i + 1] if i + 1 < len(children) else None
            quant_output = True
            if name not in heads and nxt is not None:
                j = i + 1
                if type(nxt[1]) is nn.BatchNorm2d:
                    after = children[i + 2] if i + 2 < len(children) else None
                    if isinstance(parent, nn.Sequential) and after is not None and type(after[1]) in _CLIPPING:
                        j = i + 2
                    else:
                        bn = QATBatchNorm2d.from_bn(nxt[1], ema=ema)
                        setattr(parent, nxt[0], bn)
                        quant_output = False
                if quant_output and isinstance(parent, nn.Sequential) and type(children[j][1]) in _CLIPPING:
                    setattr(parent, children[j][0], OutputFakeQuant(children[j][1], ema=ema))
                    quant_output = False
            qconv = QATConv2d.from_conv(child, quant_output=quant_output, ema=ema)
            if not quant_output and type(getattr(parent, nxt[0])) is QATBatchNorm2d:  # type: ignore[index]
                object.__setattr__(qconv, "_folded_bn", getattr(parent, nxt[0]))  # type: ignore[index]
            setattr(parent, attr, qconv)
    head = getattr(model, "head", None)
    if head is not None and hasattr(head, "classification"):
        head.register_buffer("qat_out_range", torch.zeros(2, 2))  # (cls_logits, box_deltas) x (lo, hi)
        head.register_buffer("qat_out_observed", torch.zeros(2))
        object.__setattr__(head, "_qat_ema", float(ema))
        head.register_forward_hook(_fake_quant_head_outputs)
    return names


def folded_batchnorm(conv: nn.Module) -> QATBatchNorm2d | None:
    """The :class:`QATBatchNorm2d` that follows ``conv`` (a :class:`QATConv2d` made by :func:`prepare_qat`) and
    that the exporter folds into it, or ``None``."""
    return conv.__dict__.get("_folded_bn")


def qat_convs(model: nn.Module) -> list[tuple[str, QATConv2d]]:
    """``(name, module)`` of the :class:`QATConv2d` layers of ``model`` in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QATConv2d)]


def has_qat(model: nn.Module) -> bool:
    """Whether ``model`` holds :class:`QATConv2d` layers."""
    return any(isinstance(m, QATConv2d) for m in model.modules())


@contextlib.contextmanager
def qat_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, the QAT layers of ``model`` compute in float (no fake quantization): the float graph
    that the int8 export quantizes."""
    convs = [m for m in model.modules() if isinstance(m, QATConv2d | _RangeObserver)]
    before = [m.enabled for m in convs]
    heads = [m for m in model.modules() if "_qat_ema" in m.__dict__]
    head_before = [m.__dict__.get("_qat_enabled", True) for m in heads]
    for m in convs:
        m.enabled = False
    for m in heads:
        object.__setattr__(m, "_qat_enabled", False)
    try:
        yield model
    finally:
        for m, on in zip(convs, before, strict=True):
            m.enabled = on
        for m, on in zip(heads, head_before, strict=True):
            object.__setattr__(m, "_qat_enabled", on)
