"""ONNX export and the ONNX Runtime backend of Detector: same network outputs and detections as PyTorch eager mode,
any batch size through the dynamic batch axis, the thread setting restored, clear errors, ``multibox export onnx``."""

import json

import numpy as np
import pytest
import torch

from multibox.cli import main
from multibox.detector import Detector
from multibox.export import onnx as mbonnx
from multibox.interop.bundle import save_bundle
from test_detect import NAMES, SIZE, assert_same, make_bundle, photo


def test_exported_graph_matches_pytorch_at_any_batch_size(tmp_path):
    bundle = make_bundle()
    info = mbonnx.export_onnx(bundle.model, tmp_path / "m.onnx", SIZE, batch_size=2)
    assert info["max_abs_diff"] is not None and info["max_abs_diff"] < 1e-4
    assert (tmp_path / "m.onnx").stat().st_size == info["bytes"]
    net = mbonnx.OnnxRuntimeNetwork(tmp_path / "m.onnx", threads=1)
    x = torch.randn(3, 3, *SIZE, generator=torch.Generator().manual_seed(5))  # not the traced batch size
    with torch.inference_mode():
        ref = bundle.model(x)
    got = net(x)
    P = bundle.priors.shape[0]
    assert got[0].shape == (3, P, len(NAMES)) and got[1].shape == (3, P, 4)
    torch.testing.assert_close(got[0], ref.cls_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1], ref.box_deltas, rtol=1e-4, atol=1e-4)


def test_onnxruntime_backend_gives_eager_detections_and_restores_threads():
    img, img2 = photo(), photo(120, 90, seed=4)
    eager = Detector(make_bundle(), runtime="eager")([img, img2])
    before = torch.get_num_threads()
    for backend in ("onnxruntime", "auto"):  # auto prefers ONNX Runtime on the CPU when it is installed
        det = Detector(make_bundle(), runtime=backend, batch_size=2)
        got = det([img, img2])
        assert det.runtime_name == "onnxruntime"
        for g, e in zip(got, eager, strict=True):
            assert_same(g, e)
        assert_same(det(img2), eager[1])  # batch size 1: a second export
        assert torch.get_num_threads() == before
        # the post-processing ran inside ONNX Runtime too (checked against PyTorch's at each threshold)
        assert det._fused[2] is not None and det._fused[1] is not None and all(det._fused_ok.values())
        assert_same(det(img2, conf=0.3), Detector(make_bundle(), runtime="eager")(img2, conf=0.3))
        assert (1, float(det.postprocess_for(0.3).conf_threshold)) in det._fused_ok


def test_backend_errors_are_clear(monkeypatch):
    with pytest.raises(ValueError, match="unknown runtime .tensorrt."):
        Detector(make_bundle(), runtime="tensorrt")
    with pytest.raises(ValueError, match="CPU only"):
        Detector(make_bundle(), runtime="onnxruntime", device="meta")

    import importlib

    original = importlib.import_module

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return original(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_ort)
    with pytest.raises(mbonnx.OnnxUnavailable, match="pip install onnx onnxruntime"):
        Detector(make_bundle(), runtime="onnxruntime")


def test_export_command_writes_graph_priors_and_spec(tmp_path, capsys):
    bundle = make_bundle()
    src = save_bundle(bundle, tmp_path / "tiny.safetensors")
    out = tmp_path / "out" / "tiny.onnx"
    assert main(["export", "onnx", str(src), "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["class_names"] == NAMES and meta["input_spec"]["channel_order"] == "BGR"
    assert meta["max_abs_diff"] < 1e-4 and meta["dynamic_batch"] is True
    priors = np.load(out.with_suffix(".priors.npy"))
    np.testing.assert_array_equal(priors, bundle.priors.numpy())
    assert "max |onnxruntime - torch|" in capsys.readouterr().out
    assert main(["export", "onnx", str(src), "--out", str(tmp_path / "x.pt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


class _SamePadNet(torch.nn.Module):
    """TF-SAME stride-2 convs (zero Pad -> Conv in ONNX), a reflect pad and a pad by 1.0 (both must stay)."""

    def __init__(self):
        super().__init__()
        from multibox.models.backbones.mobilenet import Conv2dSame

        self.a = Conv2dSame(3, 4, 3, stride=2)
        self.b = Conv2dSame(4, 4, 3, stride=2, groups=4)
        self.c = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        y = self.c(torch.nn.functional.pad(y, (1, 1, 1, 1), mode="reflect"))
        y = torch.nn.functional.pad(y, (0, 1, 0, 1), value=1.0)
        return y.flatten(2).transpose(1, 2), y.mean((2, 3))[:, None, :].expand(-1, 3, -1)[..., :4]


def test_zero_pads_fold_into_convs_and_others_stay():
    import onnx

    torch.manual_seed(0)
    net = _SamePadNet().eval()
    x = torch.randn(2, 3, 20, 22)
    model = onnx.load_from_string(mbonnx.export_onnx_bytes(net, x))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Pad") == 2  # the reflect pad and the pad by 1.0
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    pads = [list(next(a.ints for a in c.attribute if a.name == "pads")) for c in convs]
    # TF SAME on 20x22 with 3x3 stride 2: total pad 1 per axis, all after; then 10x11 -> total 1 (H), 2 (W)
    assert pads[0] == [0, 0, 1, 1] and pads[1] == [0, 1, 1, 1] and pads[2] == [1, 1, 1, 1]
    net_ort = mbonnx.OnnxRuntimeNetwork(model.SerializeToString(), threads=1)
    with torch.inference_mode():
        ref = net(x)
    for got, want in zip(net_ort(x), ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["per_class", "global"])
@pytest.mark.parametrize("score,clip", [("softmax", True), ("softmax", False), ("sigmoid", "after")])
def test_postprocess_graph_equals_detection_output(mode, score, clip):
    import onnxruntime as ort

    from multibox.box_coder import BoxCoder
    from multibox.export.onnx_postprocess import postprocess_graph
    from multibox.postprocess import detection_output

    coder = BoxCoder()
    # (seed, batch, priors, classes, conf, top_k, keep_top_k): saturated, partly filled, empty, all priors
    for seed, b, p, c, conf, top_k, keep in [(1, 3, 300, 5, 0.05, 50, 20), (2, 1, 500, 3, 0.6, 100, 200),
                                             (3, 2, 100, 4, 0.999, 50, 10), (4, 2, 400, 21, 0.2, 0, 60)]:
        g = torch.Generator().manual_seed(seed)
        priors = torch.cat([torch.rand(p, 2, generator=g), torch.rand(p, 2, generator=g) * 0.3 + 0.05], 1)
        logits = torch.randn(b, p, c, generator=g) * 3
        deltas = torch.randn(b, p, 4, generator=g) * 0.5
        kw = dict(mode=mode, conf_threshold=conf, top_k=top_k, nms_threshold=0.45, keep_top_k=keep, clip=clip,
                  score=score)
        graph = postprocess_graph(priors, c, variances=coder.variances, max_log_scale=coder.max_log_scale, **kw)
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        boxes, scores, labels, num = session.run(None, {"cls_logits": logits.numpy(), "box_deltas": deltas.numpy()})
        ref = detection_output(logits, deltas, priors, coder, **kw)
        valid = ref.valid.numpy()
        assert boxes.shape == (b, keep, 4) and scores.shape == (b, keep) and labels.shape == (b, keep)
        np.testing.assert_array_equal(num, valid.sum(1))
        k = valid.shape[1]
        assert not scores[:, k:].any() and not labels[:, k:].any()
        np.testing.assert_array_equal(labels[:, :k][valid], ref.labels.numpy()[valid])
        np.testing.assert_allclose(scores[:, :k][valid], ref.scores.numpy()[valid], atol=1e-6)
        np.testing.assert_allclose(boxes[:, :k][valid], ref.boxes.numpy()[valid], atol=1e-6)
        assert not scores[:, :k][~valid].any()


def test_export_with_postprocess_detects_like_the_detector(tmp_path):
    import onnxruntime as ort

    bundle = make_bundle()
    src = save_bundle(bundle, tmp_path / "tiny.safetensors")
    out = tmp_path / "tiny.onnx"
    assert main(["export", "onnx", str(src), "--out", str(out), "--postprocess", "--conf", "0.2"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["outputs"] == ["boxes", "scores", "labels", "num_detections"] and meta["max_abs_diff"] < 1e-5
    det = Detector(make_bundle(), runtime="eager")
    imgs = [photo(), photo(120, 90, seed=4)]
    want = det(imgs, conf=0.2)
    x, sizes = det.preprocess(imgs)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    boxes, scores, labels, num = session.run(None, {"images": x.numpy()})
    for i, (w, (h, wd)) in enumerate(zip(want, sizes, strict=True)):
        n = int(num[i])
        assert n == len(w) > 0
        np.testing.assert_array_equal(labels[i, :n], w.labels.numpy())
        np.testing.assert_allclose(scores[i, :n], w.scores.numpy(), atol=1e-5)
        np.testing.assert_allclose(boxes[i, :n] * np.array([wd, h, wd, h], np.float32), w.boxes.numpy(), atol=1e-3)


@pytest.mark.parametrize("opset", ["3", "999"])
def test_unsupported_opset_is_a_usage_error(tmp_path, opset, capsys):
    pytest.importorskip("onnx")
    src = save_bundle(make_bundle(), tmp_path / "tiny.safetensors")
    with pytest.raises(ValueError, match=f"opset {opset}: not supported"):
        mbonnx.export_onnx_bytes(make_bundle().model, torch.zeros(1, 3, *SIZE), opset=int(opset))
    assert main(["export", "onnx", str(src), "--out", str(tmp_path / "m.onnx"), "--opset", opset]) == 2
    err = capsys.readouterr().err
    assert f"opset {opset}: not supported" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


class _ShapeOnlyNet(torch.nn.Module):
    """Outputs that depend on the input's shape only (as the evaluation tests' fake SSD): for a fixed batch size
    the exporter sees constants and no use of the input."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))

    def forward(self, images):
        b = images.shape[0]
        return self.bias.expand(b, 2, 3) * 2.0, torch.zeros(b, 2, 4)


def test_graph_keeps_its_input_when_no_output_reads_it():
    """The graph's contract is images -> (cls_logits, box_deltas) even when the outputs ignore the pixels: the
    exporter drops such an input, and the ONNX Runtime network then had no input to feed (the Detector fell back to
    eager mode with an IndexError warning)."""
    import onnx

    net = _ShapeOnlyNet().eval()
    x = torch.randn(2, 3, 16, 16)
    for dynamic in (False, True):
        graph = onnx.load_from_string(mbonnx.export_onnx_bytes(net, x, dynamic_batch=dynamic))
        assert [i.name for i in graph.graph.input] == ["images"]
        dims = graph.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == ["batch" if dynamic else 2, 3, 16, 16]
    got = mbonnx.OnnxRuntimeNetwork(mbonnx.export_onnx_bytes(net, x), threads=1)(x)
    torch.testing.assert_close(got[0], torch.tensor([1.0, -2.0, 4.0]).expand(2, 2, 3))
    assert got[1].shape == (2, 2, 4) and not got[1].any()
    # a real network reads its input: nothing to add
    bundle = make_bundle()
    assert mbonnx.keep_input(onnx.load_from_string(mbonnx.export_onnx_bytes(bundle.model, torch.zeros(1, 3, *SIZE))),
                             [1, 3, *SIZE], False) is False
