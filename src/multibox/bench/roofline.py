"""How close a measured time is to what this machine can do: network FLOPs and a measured convolution peak.

A speedup target against a peer is only reachable when the peer leaves room below the machine's arithmetic limit.
Benchmarks record, measured in the same run as the timings:

* ``gflop``: floating-point operations of one forward pass (a multiply-add counts 2), counted by
  ``torch.utils.flop_counter`` (convolutions and matrix products, the bulk of an SSD);
* ``conv_peak_gflops``: the best rate of large fp32 ``channels_last`` 3x3 convolutions through oneDNN on this
  machine with the benchmark's threads — what direct convolution achieves here at best;
* per side, the achieved rate ``gflop / seconds``, and ``speedup_bound``: ``peak / peer rate``, the largest speedup
  over the peer that any implementation doing the same arithmetic at that peak could reach (end to end, with
  pre- and post-processing counted as free). Fewer operations (Winograd, FFT, lower precision) are not covered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["forward_gflop", "train_step_gflop", "conv_peak_gflops", "rate_summary", "cpu_flags"]


def forward_gflop(model: nn.Module | Callable[[Tensor], object], input_shape: Sequence[int]) -> float:
    """GFLOP of one call of ``model`` on a zero input of ``input_shape`` (``[B, 3, H, W]``), multiply-add = 2."""
    x = torch.zeros(*input_shape)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def train_step_gflop(model: nn.Module, input_shape: Sequence[int]) -> float:
    """GFLOP of a forward and backward pass of ``model`` (an SSD returning ``cls_logits`` and ``box_deltas``) on a
    zero input of ``input_shape``, weight and input gradients counted; the model is left unchanged (no step)."""
    was_training = model.training
    model.train()
    try:
        x = torch.zeros(*input_shape)
        with FlopCounterMode(display=False) as counter:
            out = model(x)
            (out.cls_logits.sum() + out.box_deltas.sum()).backward()
        model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def conv_peak_gflops(repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s of 3x3 convolutions (``[4, 256, 38, 38] -> 256`` and ``[1, 512, 38, 38] -> 512``,
    ``channels_last``, oneDNN) in ``dtype`` with the current ``torch.get_num_threads()``: the machine's practical
    peak for that precision (``torch.bfloat16``: the bound of bf16 autocast paths)."""
    best = 0.0
    gen = torch.Generator().manual_seed(0)
    for b, c, s in ((4, 256, 38), (1, 512, 38)):
        x = torch.randn(b, c, s, s, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
        w = (torch.randn(c, c, 3, 3, generator=gen) * 0.02).to(dtype).contiguous(memory_format=torch.channels_last)
        flop = 2.0 * b * s * s * c * c * 9
        with torch.inference_mode():
            F.conv2d(x, w, padding=1)
            for _ in range(repeats):
                t0 = time.perf_counter()
                F.conv2d(x, w, padding=1)
                best = max(best, flop / (time.perf_counter() - t0) / 1e9)
    return best


def rate_summary(gflop: float, seconds: dict[str, float], peer: str, peak: float) -> dict[str, float]:
    """``{"<side>_gflops": gflop / seconds, ..., "peer_fraction_of_peak", "speedup_bound"}`` for the sides of
    ``seconds`` (``gflop`` per timed call); ``speedup_bound`` is ``peak`` over ``peer``'s rate."""
    out = {f"{k}_gflops": gflop / v for k, v in seconds.items() if v > 0}
    peer_rate = out.get(f"{peer}_gflops")
    if peer_rate:
        out["peer_fraction_of_peak"] = peer_rate / peak
        out["speedup_bound"] = peak / peer_rate
    return out


def cpu_flags() -> list[str]:
    """The vector-unit flags of this CPU that decide the fast paths (AVX, AVX-512, VNNI, bf16, AMX), sorted, from
    ``/proc/cpuinfo``; empty where it cannot be read. bf16 training is fast only with AVX-512 bf16 / AMX, int8 with
    VNNI; on an AVX2-only CPU bf16 is emulated."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx", "amx")) or "vnni" in f or "bf16" in f)
