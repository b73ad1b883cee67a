"""Binarized convolutions (XNOR-Net style) for a binarized SSD backbone, and their 1-bit packed size.

:class:`BinaryConv2d` is an ``nn.Conv2d`` (same parameters, same state-dict keys) whose forward uses

* binary activations ``sign(x)`` (``+1`` where ``x >= 0``, else ``-1``), with the straight-through estimator of
  Hubara et al. / Courbariaux et al. in the backward pass: the gradient passes where ``|x| <= 1`` and is zero
  elsewhere (the derivative of ``hardtanh``);
* binary weights ``alpha * sign(W)`` with XNOR-Net's per-output-channel scale ``alpha_o = mean |W[o]|``
  (Rastegari et al. 2016); the gradient through ``sign`` is the identity where ``|W| <= 1`` ("identity with
  clip"), and through ``alpha`` the exact one (autograd), which together is XNOR-Net's
  ``dL/dW = dL/dW~ * (1/n + alpha * 1{|W| <= 1})`` form;
* optionally (``activation_scale=True``) XNOR-Net's activation scale ``K = avg_pool(mean_c |x|)`` over each
  output's receptive field, multiplied into the output.

Zero padding is kept (the padded border reads 0, not +-1), as most PyTorch BNN implementations do; a bit-packed
kernel would pad with -1 or +1. Without bit-packed (XNOR + popcount) kernels a binary convolution is *not*
faster on a CPU: it is an ordinary float convolution of +-1 tensors plus the sign and scale operations
(docs/quantization.md, "Binarized SSD", measures it).

:func:`binarize_convs` turns the convolutions of a module (a backbone) into binary ones, leaving the first in
full precision (the image is not binarized); the heads stay in full precision because they are not in the
backbone. :func:`packed_binary_weights` / :func:`binary_size` / :func:`save_packed` / :func:`load_packed` give
the 1-bit packed weights (``np.packbits``) and their size against fp32.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fileio import atomic_write_with

__all__ = ["sign_ste", "binarize_weight", "weight_scale", "BinaryConv2d", "binarize_convs",
           "packed_binary_weights", "binary_size", "save_packed", "load_packed"]


class _SignSTE(torch.autograd.Function):
    """``sign`` with ``sign(0) = +1`` forward; gradient ``g * 1{|x| <= 1}`` backward (hardtanh STE)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # noqa: ANN401
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # noqa: ANN401
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign_ste(x: Tensor) -> Tensor:
    """``+1`` where ``x >= 0``, ``-1`` elsewhere (any shape); backward passes the gradient where ``|x| <= 1``."""
    return _SignSTE.apply(x)


def weight_scale(weight: Tensor) -> Tensor:
    """XNOR-Net's per-output-channel scale ``alpha [O, 1, 1, 1] = mean |W[o]|`` of ``weight [O, I, kh, kw]``."""
    return weight.abs().mean(dim=tuple(range(1, weight.dim())), keepdim=True)


def binarize_weight(weight: Tensor) -> Tensor:
    """``alpha * sign(W)`` for ``weight [O, I, kh, kw]`` (``alpha`` from :func:`weight_scale`), differentiable:
    STE through ``sign`` (identity where ``|W| <= 1``), exact through ``alpha``."""
    return weight_scale(weight) * sign_ste(weight)


class BinaryConv2d(nn.Conv2d):
    """A 2-D convolution with binary weights and activations (see the module docstring).

    ``x [B, C_in, H, W] -> [B, C_out, H', W']`` as ``nn.Conv2d`` with the same arguments; ``activation_scale``
    multiplies XNOR-Net's ``K [B, 1, H', W']`` into the output. The bias (if any) is added in full precision.
    """

    def __init__(self, *args: Any, activation_scale: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError("BinaryConv2d supports zero padding only")
        if isinstance(self.padding, str):
            raise ValueError("BinaryConv2d needs numeric padding")
        self.activation_scale = bool(activation_scale)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activation_scale: bool = False) -> BinaryConv2d:
        """A binary copy of ``conv`` (same shapes, weights and bias copied)."""
        out = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  activation_scale=activation_scale, device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(conv.weight)
            if conv.bias is not None:
                out.bias.copy_(conv.bias)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C_in, H, W]`` -> ``[B, C_out, H', W']``."""
        out = F.conv2d(sign_ste(x), binarize_weight(self.weight), None, self.stride, self.padding, self.dilation,
                       self.groups)
        if self.activation_scale:
            a = x.abs().mean(dim=1, keepdim=True)
            k = F.avg_pool2d(a, self.kernel_size, self.stride, self.padding, count_include_pad=True) \
                if self.dilation == (1, 1) else \
                F.conv2d(a, torch.full((1, 1, *self.kernel_size), 1.0 / (self.kernel_size[0] * self.kernel_size[1]),
                                       device=x.device, dtype=x.dtype), None, self.stride, self.padding,
                         self.dilation)
            out = out * k
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", binary=True, activation_scale={self.activation_scale}"


def binarize_convs(module: nn.Module, keep_first: bool = True, activation_scale: bool = False) -> list[str]:
    """Replace the ``nn.Conv2d`` layers inside ``module`` (in place) by :class:`BinaryConv2d` copies, except the
    first one (in module order) when ``keep_first``; returns the names (relative to ``module``) binarized."""
    convs = [(name, m) for name, m in module.named_modules() if type(m) is nn.Conv2d]
    if keep_first:
        convs = convs[1:]
    for name, conv in convs:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, BinaryConv2d.from_conv(conv, activation_scale=activation_scale))
    return [name for name, _ in convs]


def packed_binary_weights(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{name: {"bits": uint8 array (np.packbits of sign(W) >= 0, C order), "alpha": float32 [O],
    "shape": [O, I, kh, kw]}}`` for each :class:`BinaryConv2d` of ``model``."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, BinaryConv2d):
            w = m.weight.detach().cpu().float()
            out[name] = {"bits": np.packbits((w >= 0).numpy().reshape(-1)),
                         "alpha": weight_scale(w).reshape(-1).numpy().astype(np.float32),
                         "shape": list(w.shape)}
    return out


def binary_size(model: nn.Module) -> dict[str, Any]:
    """Sizes of ``model``'s stored tensors (its state dict's floating-point ones) in bytes: ``fp32_bytes``
    (everything at 4 bytes), and ``packed_bytes`` with each :class:`BinaryConv2d` weight as 1 bit per value
    (``np.packbits``) plus its fp32 ``alpha`` per output channel, everything else fp32. Also ``binary_params``
    (weights stored as bits), ``float_params`` and ``ratio`` (fp32 / packed)."""
    packed = packed_binary_weights(model)
    binary_names = {f"{name}.weight" for name in packed}
    tensors = model.state_dict()  # what a weights file stores (not the priors, a non-persistent buffer)
    total = sum(t.numel() for t in tensors.values() if t.is_floating_point())
    binary = sum(tensors[n].numel() for n in binary_names)
    float_params = total - binary
    packed_bytes = 4 * float_params + sum(p["bits"].nbytes + p["alpha"].nbytes for p in packed.values())
    return {"fp32_bytes": 4 * total, "packed_bytes": int(packed_bytes), "binary_params": int(binary),
            "float_params": int(float_params), "binary_layers": len(packed),
            "ratio": 4 * total / max(1, packed_bytes)}


def save_packed(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights to ``path`` (``.npz``): each :class:`BinaryConv2d` weight as packed bits and
    ``alpha`` (its forward needs nothing else), every other floating-point tensor of the state dict as float32.
    Atomic; returns the path. :func:`load_packed` reads it back."""
    p = Path(path)
    arrays: dict[str, np.ndarray] = {}
    packed = packed_binary_weights(model)
    shapes = {}
    for name, entry in packed.items():
        arrays[f"{name}.weight@bits"] = entry["bits"]
        arrays[f"{name}.weight@alpha"] = entry["alpha"]
        shapes[f"{name}.weight"] = entry["shape"]
    skip = set(shapes)
    for key, t in model.state_dict().items():
        if key in skip:
            continue
        arr = t.detach().cpu()
        arrays[key] = arr.float().numpy() if arr.is_floating_point() else arr.numpy()
    arrays["@shapes"] = np.frombuffer(json.dumps(shapes).encode(), dtype=np.uint8)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a path
            np.savez(f, **arrays)

    atomic_write_with(p, write)
    return p


def load_packed(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a file of :func:`save_packed` into ``model`` (same architecture): binary weights become
    ``alpha * sign`` (so the forward is unchanged), the rest is copied. Raises ``ValueError`` naming the file when
    a tensor is missing or has another shape."""
    p = Path(path)
    with np.load(p, allow_pickle=False) as data:
        shapes = json.loads(bytes(data["@shapes"]).decode())
        state = {}
        for key, t in model.state_dict().items():
            if key in shapes:
                shape = shapes[key]
                n = int(np.prod(shape))
                bits = np.unpackbits(data[f"{key}@bits"])[:n].astype(np.float32) * 2 - 1
                alpha = data[f"{key}@alpha"].astype(np.float32).reshape(-1, *([1] * (len(shape) - 1)))
                value = torch.from_numpy(bits.reshape(shape) * alpha)
            elif key in data:
                value = torch.from_numpy(np.array(data[key]))
            else:
                raise ValueError(f"{p}: no tensor {key!r} (not a packed file of this model?)")
            if tuple(value.shape) != tuple(t.shape):
                raise ValueError(f"{p}: {key!r} has shape {tuple(value.shape)}, the model {tuple(t.shape)}")
            state[key] = value.to(t.dtype)
    model.load_state_dict(state)
