"""The LiteFPN neck: the top-down sum on hand values, odd map sizes, shapes, and the SSD wiring (the head sees the
neck's maps, a training step moves the neck's weights)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from multibox.anchors import config_from_scales
from multibox.models.detector import SSD
from multibox.models.necks import LiteFPN, build_neck


def _identity_laterals(fpn: LiteFPN) -> None:
    with torch.no_grad():
        for conv in fpn.lateral:
            conv.weight.zero_()
            conv.bias.zero_()
            for c in range(conv.weight.shape[0]):
                conv.weight[c, c, 0, 0] = 1.0
    fpn.smooth = nn.ModuleList(nn.Identity() for _ in fpn.smooth)


def test_top_down_sum_hand_values():
    """One channel, identity laterals, no smoothing: ``t2 = x2``, ``t1 = x1 + up(t2)``, ``t0 = x0 + up(t1)``
    with nearest upsampling to the given sizes (3 -> 5 rows: rows 0,0,1,1,2 of the coarser map... as
    ``floor(i * 3 / 5)``)."""
    fpn = LiteFPN([1, 1, 1], channels=1)
    _identity_laterals(fpn)
    x2 = torch.tensor([[[[7.0]]]])  # 1x1
    x1 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # 2x2
    x0 = torch.arange(9.0).reshape(1, 1, 3, 3)  # 3x3 (ceil halving: 3 -> 2 -> 1)
    t0, t1, t2 = fpn([x0, x1, x2])
    assert t2.tolist() == [[[[7.0]]]]
    assert t1.tolist() == [[[[8.0, 9.0], [10.0, 11.0]]]]
    # nearest 2 -> 3: source index floor(i * 2 / 3) = 0, 0, 1
    expected = [[0 + 8, 1 + 8, 2 + 9], [3 + 8, 4 + 8, 5 + 9], [6 + 10, 7 + 10, 8 + 11]]
    assert t0[0, 0].tolist() == expected


def test_shapes_channels_and_errors():
    fpn = LiteFPN([16, 32, 8], channels=12)
    assert fpn.out_channels == [12, 12, 12]
    maps = [torch.randn(2, 16, 9, 7), torch.randn(2, 32, 5, 4), torch.randn(2, 8, 3, 2)]
    outs = fpn(maps)
    assert [tuple(o.shape) for o in outs] == [(2, 12, 9, 7), (2, 12, 5, 4), (2, 12, 3, 2)]
    with pytest.raises(ValueError, match="built for 3 maps, got 2"):
        fpn(maps[:2])
    with pytest.raises(ValueError, match="at least one"):
        LiteFPN([])
    assert build_neck(None, [4]) is None and build_neck("none", [4]) is None


class _Maps(nn.Module):
    """A stand-in backbone: two strided convs, maps at stride 2 and 4."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, 2, 1)
        self.b = nn.Conv2d(8, 16, 3, 2, 1)
        self.out_channels = [8, 16]

    def forward(self, x):
        a = self.a(x)
        return [a, self.b(a)]


def test_ssd_runs_the_neck_before_the_head_and_trains_it():
    priors = config_from_scales((32, 32), steps=[2.0, 4.0], aspect_ratios=[(), ()], s_min=0.2, s_max=0.6)
    neck = LiteFPN([8, 16], channels=6)
    model = SSD(_Maps(), None, priors, num_classes=3, neck=neck)
    assert model.feature_channels == [6, 6]
    assert [c.in_channels for c in model.head.classification] == [6, 6]
    x = torch.randn(2, 3, 32, 32)
    feats = model.extract_features(x)
    torch.testing.assert_close(feats[1], neck(model.backbone(x))[1])
    out = model(x)
    assert out.cls_logits.shape == (2, model.num_priors, 3)
    out.cls_logits.sum().backward()
    assert neck.lateral[0].weight.grad is not None and neck.lateral[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="the neck takes maps of \\[4, 16\\] channels"):
        SSD(_Maps(), None, priors, num_classes=3, neck=LiteFPN([4, 16], channels=6))


def test_small_object_model_exports_to_onnx_and_matches(tmp_path):
    """The stride-8 + FPN MobileNetV2 SSD exports (the pyramid's resize included) and ONNX Runtime gives the
    PyTorch outputs."""
    pytest.importorskip("onnxruntime")
    from multibox.export import onnx as mbonnx
    from multibox.models.ssdlite import ssd300_mobilenetv2

    torch.manual_seed(0)
    model = ssd300_mobilenetv2(num_classes=2, image_size=(96, 96), stride8=True, neck="fpn", neck_channels=32).eval()
    info = mbonnx.export_onnx(model, tmp_path / "m.onnx", (96, 96), batch_size=1)
    assert info["max_abs_diff"] is not None and info["max_abs_diff"] < 1e-4
    net = mbonnx.OnnxRuntimeNetwork(tmp_path / "m.onnx", threads=1)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = model(x)
    got = net(x)
    torch.testing.assert_close(got[0], ref.cls_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1], ref.box_deltas, rtol=1e-4, atol=1e-4)
