"""TF Object Detection API importer on an SSD MobileNetV1 graph, checked against TensorFlow's own outputs.

``tests/data/tf_mobilenet_v1/frozen_inference_graph.pb`` is a small ``ssd_mobilenet_v1`` (depth multiplier
0.125, min depth 16, 160x160, 3 classes, 1x1 box predictors, random weights, batch norms left unfolded) built and
frozen with TensorFlow by ``benchmarks/make_tf_od_test_graphs.py``; ``reference.npz`` holds what TensorFlow
computed with it on ``grace_hopper.jpg`` and its mirror image (see the folder's README). TensorFlow is not
needed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from multibox.box_coder import BoxCoder
from multibox.interop.bundle import load_bundle
from multibox.interop.tensorflow import (
    TFImportError,
    build_tf_od_model,
    convert_tf_od,
    import_tf_od,
    read_graph_def,
    tf_anchors_to_cxcywh,
    tf_boxes_to_xyxy,
)
from multibox.models.backbones.mobilenet import DepthwiseSeparableConv, MobileNetV1Backbone
from multibox.models.heads import SSDHead
from multibox.models.ssd_mobilenet import SSDConvExtras
from multibox.postprocess import PostProcess

DATA = Path(__file__).parent / "data" / "tf_mobilenet_v1"
GRAPH = DATA / "frozen_inference_graph.pb"
GRAPH_SHA256 = "5770720e8a0f288507e1f3ff781c00e240773247cf57ac8c3f939f92f6e33baf"


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(DATA / "reference.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def converted() -> tuple:
    return convert_tf_od(read_graph_def(GRAPH), source="frozen_inference_graph.pb")


def _inputs(ref: dict[str, np.ndarray]) -> torch.Tensor:
    """TF's preprocessed input (``Preprocessor/sub``, NHWC) as ``[B, 3, H, W]``."""
    return torch.from_numpy(ref["preprocessed"]).permute(0, 3, 1, 2).contiguous()


def _tf_raw(ref: dict[str, np.ndarray], order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TF's box encodings ``(ty, tx, th, tw)`` -> ``(tx, ty, tw, th)`` and class logits, in our prior order."""
    box = torch.from_numpy(ref["box_encodings"])[:, order][..., [1, 0, 3, 2]]
    cls = torch.from_numpy(ref["class_predictions"])[:, order]
    return box, cls


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_graph_is_what_the_readme_says(reference: dict[str, np.ndarray]) -> None:
    import hashlib

    assert hashlib.sha256(GRAPH.read_bytes()).hexdigest() == GRAPH_SHA256 == str(reference["graph_sha256"])
    assert GRAPH.stat().st_size < 1_000_000
    ops = [n.op for n in read_graph_def(GRAPH).node]
    # batch norms left unfolded: the importer must fold them (27 backbone convs, 8 extra-layer convs)
    assert ops.count("FusedBatchNorm") == 27 and ops.count("FusedBatchNormV3") == 8
    assert "CombinedNonMaxSuppression" in ops and "Variable" not in ops and "VarHandleOp" not in ops


def test_v1_structure_and_anchors(converted: tuple, reference: dict[str, np.ndarray]) -> None:
    model, priors, spec, info = converted
    settings = json.loads(str(reference["settings"]))
    assert info["architecture"] == "ssd_mobilenet_v1" and spec["model"] == "ssd_mobilenet_v1"
    assert spec["image_size"] == [160, 160] and spec["num_classes"] == 4
    assert spec["class_names"] == ["background", "class_1", "class_2", "class_3"]
    # channels and kernels read from the weights equal what the generator used
    assert spec["backbone_channels"] == settings["backbone_channels"]
    assert spec["backbone_channels"] == [16, 16, 16, 16, 32, 32, 64, 64, 64, 64, 64, 64, 128, 128]
    assert spec["extra_blocks"] == settings["extra_blocks"] == [[32, 64], [16, 32], [16, 32], [16, 16]]
    assert spec["head_kernel_size"] == 1
    assert isinstance(model.backbone, MobileNetV1Backbone) and isinstance(model.extras, SSDConvExtras)
    assert isinstance(model.head, SSDHead) and model.head.regression[0].kernel_size == (1, 1)
    assert all(isinstance(model.backbone.features[k], DepthwiseSeparableConv) for k in range(1, 14))
    assert model.backbone.out_channels == [64, 128] and model.extras.out_channels == [64, 32, 32, 16]
    # feature maps: TF's (from its predictor outputs), with TF "SAME" padding 160 -> 80 -> ... -> 10 -> 5 -> 3 -> 2 -> 1
    assert info["feature_sizes"] == reference["feature_sizes"].tolist()
    assert info["feature_sizes"] == [[10, 10], [5, 5], [3, 3], [2, 2], [1, 1], [1, 1]]
    assert model.prior_config.num_priors_per_location == [3, 6, 6, 6, 6, 6]
    # the anchors evaluated from the graph's own anchor-generator ops are TensorFlow's
    assert priors.shape == (540, 4) and reference["anchors"].shape == (540, 4)
    np.testing.assert_allclose(info["tf_anchors"], reference["anchors"], rtol=0, atol=1e-6)
    torch.testing.assert_close(priors, tf_anchors_to_cxcywh(reference["anchors"])[info["prior_order"]],
                               rtol=0, atol=1e-6)
    order = info["prior_order"]
    assert sorted(order.tolist()) == list(range(540))
    assert order[:3].tolist() == [0, 1, 2]  # lowest layer: 0.1 square, s_0 at 2 and 1/2: same order as ours
    first_l1 = 10 * 10 * 3
    assert (order[first_l1:first_l1 + 6] - first_l1).tolist() == [0, 5, 1, 2, 3, 4]  # interpolated square second
    # our generator at the scales read from the graph gives the same boxes (TF's 0.3333 for 1/3: ~1e-4)
    assert spec["min_scale"] == pytest.approx(0.2, abs=1e-6) and spec["max_scale"] == pytest.approx(0.95, abs=1e-6)
    torch.testing.assert_close(priors, model.priors, atol=2e-4, rtol=0)
    # preprocessing and post-processing read from the graph
    assert info["input_spec"].mean == pytest.approx((127.5,) * 3) and info["input_spec"].std == pytest.approx(
        (127.5,) * 3)
    assert info["preprocess"]["read_from_graph"] is True
    assert info["variances"] == (0.1, 0.1, 0.2, 0.2)
    post = info["postprocess"]
    assert post["score"] == "sigmoid" and post["mode"] == "per_class" and post["clip"] == "after"
    assert post["conf_threshold"] == pytest.approx(settings["score_threshold"])
    assert post["nms_threshold"] == pytest.approx(settings["iou_threshold"])
    assert post["keep_top_k"] == settings["max_detections"] == 100
    assert info["graph"]["nms"]["read_from_graph"] is True


def test_v1_raw_outputs_match_tensorflow(converted: tuple, reference: dict[str, np.ndarray]) -> None:
    model, _, _, info = converted
    with torch.no_grad():
        out = model(_inputs(reference))
    tf_box, tf_cls = _tf_raw(reference, info["prior_order"])
    assert out.box_deltas.shape == (2, 540, 4) and out.cls_logits.shape == (2, 540, 4)
    assert _rel_err(out.box_deltas, tf_box) <= 1e-4
    assert _rel_err(out.cls_logits, tf_cls) <= 1e-4
    torch.testing.assert_close(out.box_deltas, tf_box, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.cls_logits, tf_cls, rtol=1e-4, atol=1e-4)


def test_v1_symmetric_padding_would_not_match(converted: tuple, reference: dict[str, np.ndarray]) -> None:
    """The comparison is sharp enough to see TF "SAME" padding: the same weights with PyTorch's symmetric padding
    of the stride-2 convs (160 -> 80 and 2 -> 1 pad one pixel on one side only in TF) give other outputs."""
    model, _, spec, info = converted
    sym = build_tf_od_model({**spec, "tf_same_padding": False})
    sym.load_state_dict(model.state_dict())
    with torch.no_grad():
        out = sym(_inputs(reference))
    tf_box, tf_cls = _tf_raw(reference, info["prior_order"])
    assert _rel_err(out.cls_logits, tf_cls) > 1e-2 and _rel_err(out.box_deltas, tf_box) > 1e-2


def _tf_like_detections(post: PostProcess, cls_logits: torch.Tensor, box_deltas: torch.Tensor
                        ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Our per-class NMS on unclipped boxes, then clipping to [0, 1] (TF's CombinedNonMaxSuppression with
    ``clip_boxes=True`` clips after NMS and keeps empty boxes)."""
    pad = post.forward_padded(cls_logits, box_deltas)
    return [(pad.boxes[b][pad.valid[b]].clamp(0.0, 1.0), pad.scores[b][pad.valid[b]], pad.labels[b][pad.valid[b]])
            for b in range(cls_logits.shape[0])]


def _check_detections(dets: list, reference: dict[str, np.ndarray]) -> None:
    for b, (boxes, scores, labels) in enumerate(dets):
        n = int(reference["num_detections"][b])
        assert n > 20 and len(scores) == n  # fewer than max_total_detections: both keep every survivor
        tf_boxes = tf_boxes_to_xyxy(reference["detection_boxes"][b][:n])
        tf_scores = torch.from_numpy(reference["detection_scores"][b][:n])
        tf_labels = torch.from_numpy(reference["detection_classes"][b][:n]).long()  # 1-based = ours
        torch.testing.assert_close(scores, tf_scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(boxes, tf_boxes, atol=1e-3, rtol=0)
        assert torch.equal(labels, tf_labels)
        assert len(set(labels.tolist())) == 3  # every class detected somewhere


def test_v1_detections_match_tensorflow(converted: tuple, reference: dict[str, np.ndarray]) -> None:
    model, priors, _, info = converted
    with torch.no_grad():
        out = model(_inputs(reference))
    post = PostProcess(priors, BoxCoder(info["variances"]), **info["postprocess"])
    _check_detections(_tf_like_detections(post, out.cls_logits, out.box_deltas), reference)


def test_v1_bundle_round_trip_and_cli(tmp_path: Path, converted: tuple, reference: dict[str, np.ndarray],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from multibox.cli import main

    path = import_tf_od(GRAPH, tmp_path, name="v1", class_names=["background", "cat", "dog", "bird"])
    assert path == tmp_path / "v1.safetensors"
    bundle = load_bundle(path)
    assert bundle.builder == "tf-od" and bundle.spec["model"] == "ssd_mobilenet_v1"
    assert bundle.class_names == ["background", "cat", "dog", "bird"]
    assert bundle.input_spec.image_size == (160, 160) and bundle.input_spec.mean == pytest.approx((127.5,) * 3)
    assert bundle.source["sha256"] == GRAPH_SHA256
    assert isinstance(bundle.model.backbone, MobileNetV1Backbone)
    model, priors, _, _ = converted
    torch.testing.assert_close(bundle.priors, priors, rtol=0, atol=0)
    x = _inputs(reference)
    with torch.no_grad():
        out, ref_out = bundle.model(x), model(x)
    torch.testing.assert_close(out.cls_logits, ref_out.cls_logits, rtol=0, atol=0)
    torch.testing.assert_close(out.box_deltas, ref_out.box_deltas, rtol=0, atol=0)
    _check_detections(_tf_like_detections(bundle.make_postprocess(), out.cls_logits, out.box_deltas), reference)

    assert main(["import", "tf-od", str(GRAPH), "--out", str(tmp_path / "cli"), "--name", "m"]) == 0
    assert "m.safetensors" in capsys.readouterr().out
    report = json.loads((tmp_path / "cli" / "m.json").read_text())
    assert report["num_priors"] == 540 and report["model"] == "ssd_mobilenet_v1"
    assert report["image_size"] == [160, 160] and report["postprocess"]["score"] == "sigmoid"


def test_v1_wrong_layout_is_a_clear_error() -> None:
    graph = read_graph_def(GRAPH)
    conv = next(n for n in graph.node if n.name.endswith("/Conv2d_2_depthwise/depthwise"))
    conv.attr["strides"].list.i[:] = [1, 1, 1, 1]
    with pytest.raises(TFImportError, match=r"v1\.pb: .*Conv2d_2_depthwise: stride 1, MobileNetV1 layer 2 has "
                                            r"stride 2"):
        convert_tf_od(graph, source="v1.pb")
    graph = read_graph_def(GRAPH)
    for n in graph.node:  # an SSDLite-style predictor on a MobileNetV1: not supported
        if n.name == "BoxPredictor_0/BoxEncodingPredictor/Conv2D":
            n.name = "BoxPredictor_0/BoxEncodingPredictor_depthwise/depthwise"
            n.op = "DepthwiseConv2dNative"
    with pytest.raises(TFImportError, match=r"v1\.pb: the box predictors mix SSDLite"):
        convert_tf_od(graph, source="v1.pb")


# ---------------------------------------------------------------------- SSD MobileNetV2, plain convolutions
V2_GRAPH = DATA / "v2_frozen_inference_graph.pb"
V2_GRAPH_SHA256 = "bc4eb6bcd32481be5d54c38e07a9db9d730788cd5faf017ac1d86b181d1d68f3"


def test_v2_plain_ssd_matches_tensorflow(tmp_path: Path) -> None:
    """``ssd_mobilenet_v2`` (depth multiplier 0.125, plain 3x3 extras and 3x3 box predictors): structure, anchors,
    raw outputs, detections and the bundle round trip."""
    from multibox.models.backbones.mobilenet import MobileNetV2Backbone

    with np.load(DATA / "v2_reference.npz") as z:
        ref = {k: z[k] for k in z.files}
    assert str(ref["graph_sha256"]) == V2_GRAPH_SHA256
    settings = json.loads(str(ref["settings"]))
    model, priors, spec, info = convert_tf_od(read_graph_def(V2_GRAPH), source="v2.pb")
    assert info["architecture"] == "ssd_mobilenet_v2" and spec["model"] == "ssd_mobilenet_v2"
    assert spec["width_mult"] == 0.125 and spec["last_channels"] == settings["backbone_channels"][-1] == 160
    assert spec["extra_blocks"] == settings["extra_blocks"] and spec["head_kernel_size"] == 3
    assert isinstance(model.backbone, MobileNetV2Backbone) and isinstance(model.extras, SSDConvExtras)
    assert model.head.classification[0].kernel_size == (3, 3)
    assert model.backbone.out_channels == [96, 160]  # expansion of expanded_conv_13 (6 x 16), Conv_1
    assert info["feature_sizes"] == ref["feature_sizes"].tolist() == [[10, 10], [5, 5], [3, 3], [2, 2], [1, 1], [1, 1]]
    np.testing.assert_allclose(info["tf_anchors"], ref["anchors"], rtol=0, atol=1e-6)
    assert info["postprocess"]["conf_threshold"] == pytest.approx(0.7)

    x = _inputs(ref)
    with torch.no_grad():
        out = model(x)
    tf_box, tf_cls = _tf_raw(ref, info["prior_order"])
    assert _rel_err(out.box_deltas, tf_box) <= 1e-4 and _rel_err(out.cls_logits, tf_cls) <= 1e-4
    post = PostProcess(priors, BoxCoder(info["variances"]), **info["postprocess"])
    _check_detections(_tf_like_detections(post, out.cls_logits, out.box_deltas), ref)

    bundle = load_bundle(import_tf_od(V2_GRAPH, tmp_path))
    assert bundle.spec["model"] == "ssd_mobilenet_v2" and bundle.source["sha256"] == V2_GRAPH_SHA256
    with torch.no_grad():
        again = bundle.model(x)
    torch.testing.assert_close(again.cls_logits, out.cls_logits, rtol=0, atol=0)
    torch.testing.assert_close(again.box_deltas, out.box_deltas, rtol=0, atol=0)
