"""Quantization-aware training: fake quantization equal to ONNX Runtime's int8 scheme, the config key, a QAT run
that exports to an int8 graph matching its fake-quantized PyTorch outputs, and loading a QAT checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from multibox.bench.roofline import cpu_flags
from multibox.config import ConfigError, load_config
from multibox.models import build_model
from multibox.models.qat import (
    QATConv2d,
    activation_qparams,
    fake_quant_activation,
    fake_quant_weight,
    has_qat,
    prepare_qat,
    qat_disabled,
)

onnx = pytest.importorskip("onnx")
quant_utils = pytest.importorskip("onnxruntime.quantization.quant_utils")


@pytest.mark.parametrize("lo, hi", [(-1.3, 2.7), (0.5, 3.0), (-2.0, -0.5), (-0.01, 6.0), (0.0, 0.0)])
def test_activation_qparams_equal_onnxruntime(lo, hi):
    # the reference is ONNX Runtime's own function, with the uint8 range it uses for activations
    zp, scale = quant_utils.compute_scale_zp(np.array(lo, np.float32), np.array(hi, np.float32),
                                             np.array(0, np.uint8), np.array(255, np.uint8))
    s, z = activation_qparams(torch.tensor(lo), torch.tensor(hi))
    assert float(s) == float(scale) and int(z) == int(zp)


def test_fake_quant_activation_by_hand():
    # range [-1, 1.55]: scale 2.55 / 255 = 0.01, zero point 100; 0.123 -> 12 steps -> 0.12; 2 clips to 1.55;
    # -1.5 clips to -1.0
    x = torch.tensor([0.123, 2.0, -1.5, 0.0], requires_grad=True)
    y = fake_quant_activation(x, torch.tensor(-1.0), torch.tensor(1.55))
    assert torch.allclose(y, torch.tensor([0.12, 1.55, -1.0, 0.0]), atol=1e-6)
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 0.0, 0.0, 1.0]  # straight through inside the range only


def test_fake_quant_weight_per_channel_symmetric_by_hand():
    w = torch.tensor([[0.5, -1.27, 0.013], [0.2, 0.1, -0.05]]).reshape(2, 3, 1, 1)
    q = fake_quant_weight(w).reshape(2, 3)
    # row 0: scale 1.27 / 127 = 0.01 -> 50, -127, 1 ; row 1: scale 0.2 / 127 -> 127, 63.5 -> 64 (half to even),
    # -31.75 -> -32
    s1 = 0.2 / 127
    want = torch.tensor([[0.5, -1.27, 0.01], [127 * s1, 64 * s1, -32 * s1]])
    assert torch.allclose(q, want, atol=1e-6)
    # per-channel symmetric: scaling a row by a positive constant (a folded BatchNorm) gives the same integers
    c = torch.tensor([3.7, 0.021]).reshape(2, 1, 1, 1)
    assert torch.allclose(fake_quant_weight(w * c), fake_quant_weight(w) * c, rtol=1e-5, atol=1e-9)


def test_quant_config_key_validates():
    assert load_config(None, ["quant.qat=true"]).quant.qat is True
    assert load_config(None, []).quant.qat is False
    with pytest.raises(ConfigError, match="quant.ema"):
        load_config(None, ["quant.ema=0"])
    with pytest.raises(ConfigError, match="quant.qat"):
        load_config(None, ["quant.qat=yes please"])
    with pytest.raises(ConfigError, match="binarize"):
        load_config(None, ["quant.qat=true", "model.kwargs={binarize: true}"])
    with pytest.raises(ConfigError, match="no key 'qta'"):
        load_config(None, ["quant.qta=true"])


def test_prepare_qat_replaces_convs_and_marks_prediction_outputs():
    model = build_model("ssd7", num_classes=3, image_size=(64, 64))
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    names = prepare_qat(model)
    assert len(names) == n_convs and has_qat(model)
    outs = {n for n, m in model.named_modules() if isinstance(m, QATConv2d) and m.quant_output}
    assert outs == {f"head.{b}.{k}" for b in ("classification", "regression") for k in range(4)}
    with pytest.raises(ValueError, match="binarized"):
        prepare_qat(build_model("ssd7", num_classes=3, image_size=(64, 64), binarize=True))


def _tiny_qat_model(images: torch.Tensor) -> nn.Module:
    """ssd7 at 64x64 with QAT layers, a few SGD steps on a toy objective (ranges observed in training; BatchNorm
    statistics frozen, as the trainer does with ``quant.freeze_bn``)."""
    torch.manual_seed(0)
    model = build_model("ssd7", num_classes=3, image_size=(64, 64))
    prepare_qat(model, ema=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    for _ in range(4):
        out = model(images)
        loss = out.cls_logits.square().mean() + (out.box_deltas - 0.1).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_qat_model_exports_to_int8_matching_its_fake_quant_outputs(tmp_path):
    from multibox.data.transforms import preprocess
    from multibox.export.onnx import ort_session
    from multibox.export.quantize import export_onnx_int8, output_error
    from multibox.postprocess import PostProcess

    rng = np.random.default_rng(0)
    calib = tmp_path / "calib"
    calib.mkdir()
    pictures = []
    for i in range(6):  # smooth random pictures: blobs on a gradient
        yy, xx = np.mgrid[0:64, 0:64]
        img = np.stack([(xx * 3 + i * 20) % 256, (yy * 3) % 256, np.full_like(xx, 40 * i)], -1).astype(np.float32)
        cy, cx = rng.integers(10, 54, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 100] = rng.integers(0, 255, 3)
        Image.fromarray(img.astype(np.uint8)).save(calib / f"{i}.png")
        pictures.append(img.astype(np.uint8))
    model = build_model("ssd7", num_classes=3, image_size=(64, 64))
    x = preprocess(pictures, model.input_spec)[0]
    model = _tiny_qat_model(x)
    info = export_onnx_int8(model, tmp_path / "q.onnx", model.input_spec, calib, calib_images=6)
    assert has_qat(model) and info["int8"]["qat"]["ranges_from_training"] > 10
    graph = (tmp_path / "q.onnx").read_bytes()
    got = ort_session(graph).run(None, {"images": x.numpy()})
    with torch.no_grad():
        fq = [t.numpy() for t in model(x)]
        with qat_disabled(model):
            fp = [t.numpy() for t in model(x)]
    err_fq = output_error(got, fq)
    err_fp = output_error(got, fp)
    # the int8 graph computes what the fake-quantized network computed (up to rounding flips at quantization
    # boundaries, which accumulate over the layers: measured 0.038 / 0.036 here), much closer than to the float
    # network (0.063 / 0.058); post-training quantization of the same weights is further from both
    # Without VNNI, ONNX Runtime's AVX2 u8 x s8 kernels add pairs of products in int16 with saturation, which the
    # fake quantization does not model: on an AVX2-only AMD EPYC the graph was 0.108 / 0.091 from the fake-quant
    # outputs and 0.111 / 0.091 from the float ones, so there the outputs cannot tell the QAT ranges apart and only
    # the graph's contents (below) are checked
    vnni = any("vnni" in f for f in cpu_flags())
    if vnni:
        assert err_fq["cls_logits"] < 0.05 and err_fq["box_deltas"] < 0.05, err_fq
        assert err_fq["total"] < 0.7 * err_fp["total"], (err_fq, err_fp)
    # the activation ranges learned in training are the ones in the graph: the first conv's input quantizer
    m = onnx.load_from_string(graph)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    q_images = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "images")
    conv1 = model.backbone.conv1.conv
    scale, zero = activation_qparams(conv1.act_range[0], conv1.act_range[1])
    assert float(inits[q_images.input[1]]) == pytest.approx(float(scale), rel=1e-6)
    assert int(inits[q_images.input[2]]) == int(zero)
    # detections: each image's 5 best fake-quant detections (an untrained network has no confident ones) are found
    # among the int8 graph's, same label, IoU >= 0.9, score within 0.05
    if not vnni:
        return
    ref = PostProcess(model.priors, model.box_coder, keep_top_k=5)(torch.from_numpy(fq[0]), torch.from_numpy(fq[1]))
    out = PostProcess(model.priors, model.box_coder)(torch.from_numpy(got[0]), torch.from_numpy(got[1]))
    from torchvision.ops import box_iou

    for r, o in zip(ref, out, strict=True):
        for box, score, label in zip(r.boxes, r.scores, r.labels, strict=True):
            same = o.labels == label
            assert same.any()
            iou = box_iou(box[None], o.boxes[same])[0]
            best = int(iou.argmax())
            assert float(iou[best]) >= 0.9 and abs(float(o.scores[same][best]) - float(score)) <= 0.05


def test_qat_training_run_checkpoint_loads_with_its_fake_quantization(tmp_path, monkeypatch):
    from multibox.engine.trainer import Trainer
    from multibox.weights_io import load_model

    monkeypatch.setenv("MULTIBOX_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, [
        "name=qat", "steps=3", "threads=2", "log_every=1", "model.name=ssd7", "model.kwargs={image_size: [64, 64]}",
        "data.synthetic={profile: easy, num_train: 8, num_test: 2, size: 64, seed: 0}", "data.batch_size=4",
        "eval.at_end=false", "checkpoint.every_steps=3", "quant.qat=true"])
    Trainer(cfg, tmp_path / "run", progress=False, quiet=True).run()
    model = load_model(tmp_path / "run" / "checkpoints" / "last.safetensors")
    convs = [m for m in model.modules() if isinstance(m, QATConv2d)]
    assert convs and all(bool(m.observed[0]) for m in convs)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert torch.equal(state["backbone.conv2.conv.act_range"], model.backbone.conv2.conv.act_range)
