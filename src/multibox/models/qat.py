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
* the output of the prediction convolutions (the last conv of each ``head.classification[k]`` /
  ``head.regression[k]``), which ONNX Runtime quantizes before the reshapes and the concatenation.

The int8 export of a QAT model hands these ranges to ONNX Runtime (``TensorQuantOverrides`` ``rmin`` /
``rmax``), so that its integers are the ones the fake-quantized network was trained with; the other tensors
(residual additions, pooling, concatenation) are calibrated by ONNX Runtime on the calibration images as for
post-training quantization (:func:`multibox.export.quantize.qat_overrides`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .binary import BinaryConv2d

__all__ = ["QATConv2d", "prepare_qat", "has_qat", "qat_disabled", "qat_convs", "activation_qparams",
           "fake_quant_activation", "fake_quant_weight", "ACT_QMIN", "ACT_QMAX", "WEIGHT_QMAX"]

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
    """Replace (in place) every ``nn.Conv2d`` of ``model`` by a :class:`QATConv2d` copy; the prediction convs
    also fake-quantize their output. Returns the names replaced. ``ValueError`` for a binarized model (its binary
    convolutions are not int8 convolutions)."""
    if any(isinstance(m, BinaryConv2d) for m in model.modules()):
        raise ValueError("quantization-aware training of a binarized model is not supported (its convolutions are "
                         "binary, not int8)")
    heads = _head_output_convs(model)
    convs = [(name, m) for name, m in model.named_modules() if type(m) is nn.Conv2d]
    for name, conv in convs:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, QATConv2d.from_conv(conv, quant_output=name in heads, ema=ema))
    return [name for name, _ in convs]


def qat_convs(model: nn.Module) -> list[tuple[str, QATConv2d]]:
    """``(name, module)`` of the :class:`QATConv2d` layers of ``model`` in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QATConv2d)]


def has_qat(model: nn.Module) -> bool:
    """Whether ``model`` holds :class:`QATConv2d` layers."""
    return any(isinstance(m, QATConv2d) for m in model.modules())


@contextlib.contextmanager
def qat_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every :class:`QATConv2d` of ``model`` is a plain float conv (the float graph that the
    int8 export quantizes)."""
    convs = [m for _, m in qat_convs(model)]
    before = [m.enabled for m in convs]
    for m in convs:
        m.enabled = False
    try:
        yield model
    finally:
        for m, on in zip(convs, before, strict=True):
            m.enabled = on
