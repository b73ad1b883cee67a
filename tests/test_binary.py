"""Binarized convolutions (XNOR-Net style) on hand-computed cases, the binarized SSD7, and 1-bit packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from multibox.models import build_model
from multibox.models.binary import (
    BinaryConv2d,
    binarize_convs,
    binarize_weight,
    binary_size,
    load_packed,
    packed_binary_weights,
    save_packed,
    sign_ste,
    weight_scale,
)


def test_sign_forward_and_straight_through_gradient_mask() -> None:
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    y = sign_ste(x)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]  # sign(0) = +1: every value is one bit
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    y.backward(g)
    # hardtanh STE: the gradient passes where |x| <= 1 (both ends included), zero outside
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]


def test_weight_scale_is_mean_abs_per_output_channel() -> None:
    w = torch.tensor([[[[1.0, -3.0]]], [[[0.5, 0.5]]]])  # [2, 1, 1, 2]
    assert weight_scale(w).reshape(-1).tolist() == [2.0, 0.5]
    assert binarize_weight(w).reshape(2, 2).tolist() == [[2.0, -2.0], [0.5, 0.5]]


def test_binarized_weight_gradient_by_hand() -> None:
    # d/dW_j sum_i g_i alpha sign(W_i) = g_j alpha 1{|W_j| <= 1} + (1/n) sign(W_j) sum_i g_i sign(W_i)
    w = torch.tensor([[[[0.5, -2.0]]], [[[0.25, -0.75]]]], requires_grad=True)
    g = torch.tensor([[[[1.0, 3.0]]], [[[2.0, -1.0]]]])
    binarize_weight(w).backward(g)
    # channel 0: alpha 1.25, signs (+, -), mask (1, 0), sum g*s = 1 - 3 = -2:
    #   [1 * 1.25 + 0.5 * (-2), 0 + 0.5 * (-1) * (-2)] = [0.25, 1.0]
    # channel 1: alpha 0.5, signs (+, -), mask (1, 1), sum g*s = 2 + 1 = 3:
    #   [2 * 0.5 + 0.5 * 3, -1 * 0.5 + 0.5 * (-1) * 3] = [2.5, -2.0]
    assert torch.allclose(w.grad.reshape(2, 2), torch.tensor([[0.25, 1.0], [2.5, -2.0]]))


def _hand_conv(activation_scale: bool) -> BinaryConv2d:
    conv = BinaryConv2d(1, 1, 2, bias=False, activation_scale=activation_scale)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, -3.0], [0.5, 0.5]]]]))  # alpha = 1.25, sign [[1, -1], [1, 1]]
    return conv


X = torch.tensor([[[[0.2, -0.1, 0.7], [-0.3, 0.0, 1.5], [2.0, -2.0, -0.4]]]])  # sign [[1,-1,1],[-1,1,1],[1,-1,-1]]


def test_binary_conv_forward_by_hand() -> None:
    # windows of sign(x) . [[1, -1], [1, 1]]: (0,0) 1+1-1+1 = 2; (0,1) -1-1+1+1 = 0; (1,0) -1-1+1-1 = -2;
    # (1,1) 1-1-1-1 = -2; times alpha 1.25
    out = _hand_conv(False)(X)
    assert out.reshape(2, 2).tolist() == [[2.5, 0.0], [-2.5, -2.5]]


def test_binary_conv_activation_scale_by_hand() -> None:
    # K = mean |x| over each 2x2 window: 0.15, 0.575, 1.075, 0.975
    out = _hand_conv(True)(X)
    want = torch.tensor([[2.5 * 0.15, 0.0], [-2.5 * 1.075, -2.5 * 0.975]])
    assert torch.allclose(out.reshape(2, 2), want, atol=1e-6)


def test_binary_conv_input_gradient_is_masked() -> None:
    x = X.clone().requires_grad_(True)
    _hand_conv(False)(x).sum().backward()
    grad = x.grad.reshape(3, 3)
    # the values with |x| > 1 (1.5, 2.0, -2.0) get no gradient; inside, the sum over the windows touching each
    # position of alpha * sign(W) at that offset: e.g. x[0,0] is only in window (0,0) at offset (0,0): 1.25
    assert grad[1, 2] == 0 and grad[2, 0] == 0 and grad[2, 1] == 0
    assert grad[0, 0] == pytest.approx(1.25)
    assert grad[0, 1] == pytest.approx(1.25 * (-1 + 1))  # window (0,0) offset (0,1): -1; window (0,1) offset (0,0)
    assert grad[1, 1] == pytest.approx(1.25 * (1 + 1 - 1 + 1))  # in all four windows, offsets (1,1),(1,0),(0,1),(0,0)


def test_binarized_ssd7_keeps_first_conv_and_heads_in_full_precision() -> None:
    torch.manual_seed(0)
    model = build_model("ssd7", num_classes=3, image_size=(64, 64), binarize=True)
    kinds = {name: type(m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert kinds["backbone.conv1.conv"] is nn.Conv2d
    assert all(kinds[f"backbone.conv{i}.conv"] is BinaryConv2d for i in range(2, 8))
    assert all(t is nn.Conv2d for n, t in kinds.items() if n.startswith("head."))
    plain = build_model("ssd7", num_classes=3, image_size=(64, 64))
    assert list(model.state_dict()) == list(plain.state_dict())  # same keys: weights move between them
    model = build_model("ssd7", num_classes=3, image_size=(128, 128), binarize=True).train()
    out = model(torch.randn(4, 3, 128, 128))  # conv7's map is 2x2: BatchNorm over 16 values per channel
    (out.cls_logits.square().mean() + out.box_deltas.square().mean()).backward()
    for i in range(2, 8):  # the straight-through estimators let the gradient reach every binary conv's weights
        grad = model.backbone.get_submodule(f"conv{i}.conv").weight.grad
        assert grad is not None and grad.abs().sum() > 0, i
    with pytest.raises(ValueError, match="activation_scale"):
        build_model("ssd7", num_classes=3, image_size=(64, 64), activation_scale=True)


def test_packed_size_by_hand() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.Conv2d(8, 16, 3, bias=False))
    assert binarize_convs(net) == ["1"]
    size = binary_size(net)
    # conv 0 in fp32: 8*3*9 = 216 values; conv 1: 16*8*9 = 1152 bits = 144 bytes plus 16 fp32 alphas
    assert size["binary_params"] == 1152 and size["float_params"] == 216
    assert size["fp32_bytes"] == 4 * (216 + 1152)
    assert size["packed_bytes"] == 4 * 216 + 144 + 4 * 16
    bits = packed_binary_weights(net)["1"]["bits"]
    w = net[1].weight.detach().reshape(-1)
    assert np.array_equal(np.unpackbits(bits)[:1152].astype(bool), (w >= 0).numpy())


def test_save_and_load_packed_keep_the_outputs(tmp_path) -> None:
    torch.manual_seed(1)
    model = build_model("ssd7", num_classes=3, image_size=(64, 64), binarize=True).eval()
    # BatchNorm statistics as after training: with the initial ones (mean 0, var 1) a binary conv's outputs are
    # multiples of alpha, exact zeros are common, and float rounding flips their sign
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    path = save_packed(model, tmp_path / "bin.npz")
    assert path.stat().st_size < 0.5 * binary_size(model)["fp32_bytes"]
    torch.manual_seed(2)
    other = build_model("ssd7", num_classes=3, image_size=(64, 64), binarize=True).eval()
    load_packed(other, path)
    with torch.no_grad():
        got = other(x)
    assert torch.allclose(got.cls_logits, ref.cls_logits, atol=1e-4)
    assert torch.allclose(got.box_deltas, ref.box_deltas, atol=1e-4)
    w = other.backbone.conv3.conv.weight
    assert torch.equal(torch.sign(w), torch.sign(model.backbone.conv3.conv.weight).where(
        model.backbone.conv3.conv.weight != 0, torch.ones_like(w)))
