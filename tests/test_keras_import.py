"""ssd_keras importer (``multibox import keras``): anchors, h5 layouts, and parity with Keras on real photos.

The references in ``tests/data/keras_ssd`` were made by ``scripts/make_keras_reference.py`` with TensorFlow /
Keras in a separate environment (see that folder's README): the SSD300, SSD512, SSD7 and MobileNetV1 SSD300 (3x3 and
1x1 heads) networks with ssd_keras' layer names, seeded random weights, raw head outputs and
``DecodeDetections``-style detections on two real photos. SSD7's weight file is stored as Keras wrote it; the
SSD300 / SSD512 / MobileNetV1 files (105 / 110 / 35 / 24 MB) are rebuilt here from their recorded HDF5 layout and the
same seeded weights (checked against Keras' checksums). TensorFlow is not needed.
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from multibox.cli import main
from multibox.interop.bundle import load_bundle
from multibox.interop.keras import (
    KERAS_ARCHS,
    KerasImportError,
    convert_keras,
    import_keras,
    keras_anchors,
    read_keras_weights,
)

DATA = Path(__file__).parent / "data" / "keras_ssd"
PHOTOS = Path(__file__).parent / "data" / "tf_person" / "reference.npz"
SEED = 20261204
#: the photos (of tests/data/tf_person) and class counts of the reference per architecture (see the README)
SETUP = {"ssd300": ((0,), 21), "ssd512": ((1,), 6), "ssd7": ((0, 1), 6), "ssd300_mobilenetv1_3x3": ((0,), 21),
         "ssd300_mobilenetv1_1x1": ((1,), 21)}


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(DATA / "reference.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def layout() -> dict:
    return json.loads((DATA / "layout.json").read_text())


def layer_weights(name: str, shapes: list[tuple[int, ...]], kind: str, gain: float = 1.0) -> list[np.ndarray]:
    """The seeded weights of ``scripts/make_keras_reference.py`` (same recipe; checked by checksum)."""
    rng = np.random.default_rng([SEED, zlib.crc32(name.encode())])
    if kind == "conv":
        k = shapes[0]
        out = [rng.standard_normal(k, dtype=np.float32) * np.float32(math.sqrt(2.0 / (k[0] * k[1] * k[2])) * gain)]
        if len(shapes) > 1:
            out.append(rng.standard_normal(shapes[1], dtype=np.float32) * np.float32(0.05 * gain))
        return out
    if kind == "dw":
        k = shapes[0]
        return [rng.standard_normal(k, dtype=np.float32) * np.float32(math.sqrt(2.0 / (k[0] * k[1])) * gain)]
    if kind == "bn":
        c = shapes[0]
        gamma = np.float32(1) + np.float32(0.1) * rng.standard_normal(c, dtype=np.float32)
        beta = np.float32(0.1) * rng.standard_normal(c, dtype=np.float32)
        mean = np.float32(0.1) * rng.standard_normal(c, dtype=np.float32)
        var = np.float32(1) + np.float32(0.1) * np.abs(rng.standard_normal(c, dtype=np.float32))
        return [gamma, beta, mean, var]
    assert kind == "l2"
    return [np.float32(20) + rng.standard_normal(shapes[0], dtype=np.float32)]


#: Keras 2's weight names per kind of layer (``<layer>/<name>:0``)
KERAS2_NAMES = {"conv": ["kernel", "bias"], "dw": ["depthwise_kernel"], "l2": ["conv4_3_norm_gamma"],
                "bn": ["gamma", "beta", "moving_mean", "moving_variance"]}


def layer_kind(name: str, weight_names: list[str]) -> str:
    """The kind of a recorded layer (the reference's Conv2D, DepthwiseConv2D, BatchNormalization, L2Normalization)."""
    if name == "conv4_3_norm":
        return "l2"
    if any(n.endswith("moving_variance") for n in weight_names):
        return "bn"
    return "dw" if name.startswith("conv_dw_") else "conv"


def write_h5(path: Path, arch: str, layout: dict, ref: dict[str, np.ndarray], keras2_names: bool) -> None:
    """The SSD300 / SSD512 / MobileNetV1 file: Keras' recorded layout (``keras2_names``: as Keras 2 / ssd_keras
    wrote it, ``conv1_1/kernel:0``, ``conv_dw_1/depthwise_kernel:0``, ``conv1_bn/gamma:0`` and
    ``conv4_3_norm/conv4_3_norm_gamma:0`` under the layer's group) with the weights Keras used."""
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights")
        names = [entry["name"] for entry in layout[arch]["layers"]]
        root.attrs["layer_names"] = np.array([n.encode() for n in names])
        for entry in layout[arch]["layers"]:
            g = root.create_group(entry["name"])
            shapes = [tuple(s) for s in entry["shapes"]]
            wnames = entry["weight_names"]
            if wnames:
                kind = layer_kind(entry["name"], wnames)
                gain = float(ref.get(f"{arch}/gain/{entry['name']}", 1.0))
                arrays = layer_weights(entry["name"], shapes, kind, gain)
                total = sum(np.float64(a).sum() for a in arrays)
                assert total == pytest.approx(float(ref[f"{arch}/checksum/{entry['name']}"]), rel=1e-9, abs=1e-9)
                if keras2_names:
                    wnames = [f"{entry['name']}/{s}:0" for s in KERAS2_NAMES[kind][:len(arrays)]]
                for wn, arr in zip(wnames, arrays, strict=True):
                    g.create_dataset(wn, data=arr)
            g.attrs["weight_names"] = np.array([n.encode() for n in wnames])


def network_images(arch: str) -> torch.Tensor:
    """The photos as the reference fed them (nearest resize of the 300x300 photos), ``[N, 3, H, W]`` uint8 RGB."""
    n = SETUP[arch][0]
    h, w = KERAS_ARCHS[arch].image_size
    with np.load(PHOTOS) as z:
        photos = z["images"][list(n)]
    rows = (np.arange(h) * photos.shape[1]) // h
    cols = (np.arange(w) * photos.shape[2]) // w
    return torch.from_numpy(np.ascontiguousarray(photos[:, rows][:, :, cols])).permute(0, 3, 1, 2)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def assert_same_detections(labels: torch.Tensor, scores: torch.Tensor, boxes: torch.Tensor, ref: np.ndarray,
                           size: tuple[int, int]) -> None:
    """``ref`` rows ``class, score, xmin, ymin, xmax, ymax`` (pixels), score-sorted like ours: the scores equal rank
    by rank (1e-4), and every reference detection has its own match among ours (same class, score within 1e-4,
    box within 1e-3 normalized); detections whose scores differ by ~1e-6 may come in either order."""
    h, w = size
    ref_labels = torch.from_numpy(ref[:, 0]).long()
    ref_scores = torch.from_numpy(ref[:, 1])
    ref_boxes = torch.from_numpy(ref[:, 2:] / np.array([w, h, w, h], dtype=np.float32))
    assert len(scores) == len(ref_scores)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-4)
    used = torch.zeros(len(scores), dtype=torch.bool)
    for i in range(len(ref_scores)):
        ok = (~used & (labels == ref_labels[i]) & ((scores - ref_scores[i]).abs() <= 1e-4)
              & ((boxes - ref_boxes[i]).abs().amax(1) <= 1e-3))
        assert ok.any(), f"reference detection {i} (class {int(ref_labels[i])}, score {float(ref_scores[i]):.6f})"
        used[int(ok.nonzero()[0])] = True


def check_against_keras(bundle_path: Path, arch: str, ref: dict[str, np.ndarray]) -> None:
    bundle = load_bundle(bundle_path)
    report = json.loads(bundle_path.with_suffix(".json").read_text())
    n_priors = ref[f"{arch}/anchors"].shape[0]
    order = list(range(n_priors)) if report["prior_order"] == "identity" else report["prior_order"]
    # priors: Keras' AnchorBoxes in our order
    torch.testing.assert_close(bundle.priors, torch.from_numpy(ref[f"{arch}/anchors"][order]), rtol=0, atol=1e-6)
    with torch.no_grad():
        out = bundle.model(bundle.input_spec.normalize(network_images(arch)))
    conf = torch.from_numpy(ref[f"{arch}/conf"])[:, order]
    loc = torch.from_numpy(ref[f"{arch}/loc"])[:, order]
    assert out.cls_logits.shape == conf.shape and out.box_deltas.shape == loc.shape
    assert _rel_err(out.cls_logits, conf) <= 1e-4
    assert _rel_err(out.box_deltas, loc) <= 1e-4
    dets = bundle.make_postprocess()(out.cls_logits, out.box_deltas)
    h, w = bundle.input_spec.image_size
    for b, d in enumerate(dets):
        kd = ref[f"{arch}/dets"][b]
        kd = kd[kd[:, 1] > 0]
        assert len(kd) > 20, "the reference should hold real detections"
        assert_same_detections(d.labels, d.scores, d.boxes, kd, (h, w))


# ------------------------------------------------------------------------------------------------ anchors
def test_anchors_match_hand_computed_ssd7_values() -> None:
    cfg = KERAS_ARCHS["ssd7"]  # 300x480, scales .08 .16 ..., ratios [0.5, 1, 2], steps from the map size
    a = keras_anchors(cfg, [(37, 60), (18, 30), (9, 15), (4, 7)])
    assert a.shape == ((37 * 60 + 18 * 30 + 9 * 15 + 4 * 7) * 4, 4)
    size = 0.08 * 300
    # first location: centre (0.5 * 480/60, 0.5 * 300/37) px; boxes ar 0.5, ar 1, sqrt(.08 * .16) square, ar 2
    cx, cy = 4.0 / 480, (0.5 * 300 / 37) / 300
    expected = [(size * math.sqrt(0.5), size / math.sqrt(0.5)), (size, size),
                (math.sqrt(0.08 * 0.16) * 300,) * 2, (size * math.sqrt(2), size / math.sqrt(2))]
    for j, (bw, bh) in enumerate(expected):
        np.testing.assert_allclose(a[j], [cx, cy, bw / 480, bh / 300], rtol=1e-6)
    # second location of the row: one step (8 px) to the right
    np.testing.assert_allclose(a[4, 0], 12.0 / 480, rtol=1e-6)


def test_anchor_clipping_clips_corners_to_the_last_pixel() -> None:
    cfg = replace(KERAS_ARCHS["ssd300"], clip_boxes=True)
    a = keras_anchors(cfg, [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)])
    last = a[-1]  # 1x1 map, ratio 1/2 box of scale .88: 187 x 373 px around (150, 150): y clipped to [0, 299]
    np.testing.assert_allclose(last, [0.5, 149.5 / 300, 0.88 * 300 / math.sqrt(2) / 300, 299 / 300], rtol=1e-6)
    first = a[0]  # 30x30 px box at (4, 4): corners (-11, -11, 19, 19) -> (0, 0, 19, 19)
    np.testing.assert_allclose(first, [9.5 / 300, 9.5 / 300, 19 / 300, 19 / 300], rtol=1e-6)


# ----------------------------------------------------------------------------------------- Keras parity
def test_ssd7_keras_file_matches_keras(tmp_path: Path, ref: dict[str, np.ndarray]) -> None:
    path = import_keras(DATA / "ssd7.h5", tmp_path, arch="ssd7")
    report = json.loads(path.with_suffix(".json").read_text())
    assert report["num_classes"] == 6 and report["model"] == "ssd7" and report["image_size"] == [300, 480]
    assert report["prior_order"][:4] == [1, 2, 0, 3]  # squares first: Keras lists ratio 0.5 first
    assert report["input_spec"] == {"channel_order": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3}
    check_against_keras(path, "ssd7", ref)


@pytest.mark.parametrize("arch,keras2_names", [("ssd300", False), ("ssd512", True)])
def test_vgg_ssd_matches_keras(tmp_path: Path, ref: dict[str, np.ndarray], layout: dict, arch: str,
                               keras2_names: bool) -> None:
    h5 = tmp_path / f"{arch}.h5"
    write_h5(h5, arch, layout, ref, keras2_names)
    path = import_keras(h5, tmp_path, arch=arch)
    report = json.loads(path.with_suffix(".json").read_text())
    assert report["prior_order"] == "identity"  # ratio 1 first: Keras' order is Caffe's
    assert report["num_classes"] == SETUP[arch][1]
    assert report["input_spec"]["channel_order"] == "BGR" and report["input_spec"]["mean"] == [104.0, 117.0, 123.0]
    assert report["num_priors"] == {"ssd300": 8732, "ssd512": 24564}[arch]
    check_against_keras(path, arch, ref)


@pytest.mark.parametrize("arch,keras2_names", [("ssd300_mobilenetv1_3x3", False), ("ssd300_mobilenetv1_1x1", True)])
def test_mobilenetv1_ssd_matches_keras(tmp_path: Path, ref: dict[str, np.ndarray], layout: dict, arch: str,
                                       keras2_names: bool) -> None:
    """The MobileNetV1 variants (Keras applications' MobileNetV1 with depthwise kernels ``[3, 3, C, 1]`` and batch
    norms, the extras ``conv14_1`` .. ``bn17_2``, 3x3 / 1x1 heads) against Keras on a real photo; the 1x1 file
    with Keras 2's weight names (``conv_dw_1/depthwise_kernel:0``, ``conv1_bn/moving_variance:0``)."""
    h5 = tmp_path / f"{arch}.h5"
    write_h5(h5, arch, layout, ref, keras2_names)
    path = import_keras(h5, tmp_path, arch=arch)
    report = json.loads(path.with_suffix(".json").read_text())
    kernel = int(arch[-1])
    assert report["model"] == f"ssd300_mobilenetv1_keras_{kernel}x{kernel}"
    assert report["prior_order"] == "identity" and report["num_priors"] == 2268 and report["num_classes"] == 21
    assert report["input_spec"] == {"channel_order": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3}
    assert [tuple(s) for s in ref[f"{arch}/feature_sizes"]] == [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    bundle = load_bundle(path)
    assert bundle.model.head.classification[0].kernel_size == (kernel, kernel)
    check_against_keras(path, arch, ref)


def test_mobilenetv1_comparison_can_fail(tmp_path: Path, ref: dict[str, np.ndarray], layout: dict) -> None:
    """A depthwise kernel read as a plain conv kernel (its rows and columns swapped: ``[kh, kw]`` read as
    ``[kw, kh]``) moves the outputs far outside the tolerance, so the parity test sees the kernel layout."""
    arch = "ssd300_mobilenetv1_3x3"
    h5 = tmp_path / "m.h5"
    write_h5(h5, arch, layout, ref, keras2_names=False)
    model, _, _, _ = convert_keras(read_keras_weights(h5), KERAS_ARCHS[arch])
    with torch.no_grad():
        x = model.input_spec.normalize(network_images(arch))
        assert _rel_err(model(x).cls_logits, torch.from_numpy(ref[f"{arch}/conf"])) <= 1e-4
        for k in range(1, 14):
            w = getattr(model.backbone, f"conv_dw_{k}").weight
            w.copy_(w.transpose(2, 3).clone())
        assert _rel_err(model(x).cls_logits, torch.from_numpy(ref[f"{arch}/conf"])) > 1e-2


def test_mobilenetv1_width_multiplier_round_trip(tmp_path: Path) -> None:
    """A file of a narrower MobileNetV1 (``alpha`` 0.5: ``conv_pw_13`` has 512 channels) builds the narrower model:
    a random alpha-0.5 multibox model written out in Keras' layouts comes back with the same outputs."""
    from multibox.models import build_model

    torch.manual_seed(0)
    src = build_model("ssd300_mobilenetv1_keras_1x1", num_classes=4, alpha=0.5).eval()
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.9, 1.1)
                m.weight.uniform_(0.9, 1.1)
                m.bias.uniform_(-0.1, 0.1)
    path = tmp_path / "half.h5"
    with h5py.File(path, "w") as f:
        names = []
        for name, m in src.named_modules():
            keras_name = {f"head.classification.{k}": f"{s}_mbox_conf" for k, s in
                          enumerate(KERAS_ARCHS["ssd300_mobilenetv1_1x1"].sources)}
            keras_name.update({f"head.regression.{k}": f"{s}_mbox_loc" for k, s in
                               enumerate(KERAS_ARCHS["ssd300_mobilenetv1_1x1"].sources)})
            lname = keras_name.get(name, name.split(".", 1)[-1])
            if isinstance(m, torch.nn.BatchNorm2d):
                arrays = {"gamma": m.weight, "beta": m.bias, "moving_mean": m.running_mean,
                          "moving_variance": m.running_var}
            elif isinstance(m, torch.nn.Conv2d):
                perm = (2, 3, 0, 1) if m.groups > 1 else (2, 3, 1, 0)  # -> [kh, kw, C, 1] / [kh, kw, in, out]
                arrays = {"kernel": m.weight.permute(*perm)}
                if m.bias is not None:
                    arrays["bias"] = m.bias
            else:
                continue
            g = f.create_group(lname)
            g.attrs["weight_names"] = np.array([f"{lname}/{k}".encode() for k in arrays])
            for k, v in arrays.items():
                g.create_dataset(f"{lname}/{k}", data=v.detach().numpy())
            names.append(lname)
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
    out = import_keras(path, tmp_path, arch="ssd300_mobilenetv1_1x1")
    bundle = load_bundle(out)
    assert bundle.spec["kwargs"]["alpha"] == 0.5
    assert bundle.model.backbone.out_channels == [256, 512]
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        a, b = src(x), bundle.model(x)
    torch.testing.assert_close(b.cls_logits, a.cls_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.box_deltas, a.box_deltas, rtol=1e-5, atol=1e-5)
    with h5py.File(path, "r+") as f:  # a bias where Keras applications' MobileNet has none is not dropped silently
        f["conv_pw_3"].create_dataset("conv_pw_3/bias", data=np.ones(64, np.float32))
        f["conv_pw_3"].attrs["weight_names"] = np.array([b"conv_pw_3/kernel", b"conv_pw_3/bias"])
    with pytest.raises(KerasImportError, match=r"half\.h5: layer 'conv_pw_3' has a bias where "
                                               r"ssd300_mobilenetv1_keras_1x1 has none"):
        import_keras(path, tmp_path, arch="ssd300_mobilenetv1_1x1", name="biased")


def test_the_comparison_can_fail(ref: dict[str, np.ndarray]) -> None:
    """Without the head permutation SSD7's outputs would miss Keras' by far more than the tolerance."""
    weights = read_keras_weights(DATA / "ssd7.h5")
    model, _, _, info = convert_keras(weights, KERAS_ARCHS["ssd7"])
    with torch.no_grad():
        out = model(model.input_spec.normalize(network_images("ssd7")))
    unpermuted = torch.from_numpy(ref["ssd7/conf"])
    assert _rel_err(out.cls_logits, unpermuted) > 1e-2
    permuted = unpermuted[:, info["prior_order"]]
    assert _rel_err(out.cls_logits, permuted) <= 1e-4


def test_full_model_file_gives_its_anchor_and_decoding_settings(tmp_path: Path) -> None:
    """A ``model.save`` file of ssd_keras carries its AnchorBoxes / DecodeDetections configs in ``model_config``;
    they replace the preset (steps and offsets are not in them); options on the command line win over both."""
    scales = (0.1, 0.2, 0.4, 0.7, 1.0)
    layers = [{"class_name": "AnchorBoxes", "config": {
        "name": f"anchors{s}", "img_height": 300, "img_width": 480, "this_scale": scales[k],
        "next_scale": scales[k + 1], "aspect_ratios": [1.0, 2.0, 0.5], "two_boxes_for_ar1": True,
        "clip_boxes": True, "variances": [0.1, 0.1, 0.2, 0.2], "coords": "centroids", "normalize_coords": True}}
        for k, s in enumerate("4567")]
    layers.append({"class_name": "DecodeDetections", "config": {"name": "decoded_predictions",
                                                                "confidence_thresh": 0.05, "top_k": 100}})
    path = tmp_path / "full.h5"
    shutil.copy(DATA / "ssd7.h5", path)
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Model", "config": {"layers": layers}})
    out = import_keras(path, tmp_path, arch="ssd7")
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["anchors"]["scales"] == list(scales) and report["anchors"]["clip_boxes"] is True
    assert report["prior_order"] == "identity"  # ratio 1 first now: Keras' order is ours
    assert report["variances"] == [0.1, 0.1, 0.2, 0.2]
    assert report["postprocess"]["conf_threshold"] == 0.05 and report["postprocess"]["keep_top_k"] == 100
    assert "scales" in report["source"]["settings_from_model_config"]
    expected = replace(KERAS_ARCHS["ssd7"], scales=scales, aspect_ratios=((1.0, 2.0, 0.5),) * 4, clip_boxes=True,
                       variances=(0.1, 0.1, 0.2, 0.2))
    anchors = keras_anchors(expected, [(37, 60), (18, 30), (9, 15), (4, 7)])
    torch.testing.assert_close(load_bundle(out).priors, torch.from_numpy(anchors), rtol=0, atol=0)
    assert main(["import", "keras", str(path), "--arch", "ssd7", "--out", str(tmp_path), "--name", "cli",
                 "--top-k", "7"]) == 0
    cli = json.loads((tmp_path / "cli.json").read_text())
    assert cli["postprocess"]["keep_top_k"] == 7 and cli["anchors"]["scales"] == list(scales)
    layers[0]["config"]["coords"] = "minmax"
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Model", "config": {"layers": layers}})
    with pytest.raises(KerasImportError, match=r"full\.h5: AnchorBoxes coords 'minmax'"):
        import_keras(path, tmp_path, arch="ssd7")


# ------------------------------------------------------------------------------------------------ errors
def test_missing_layer_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    with h5py.File(DATA / "ssd7.h5", "r") as src, h5py.File(bad, "w") as dst:
        root = dst.create_group("model_weights")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in src["model_weights"].attrs["layer_names"]]
        names = [n for n in names if n != "bn3"]
        root.attrs["layer_names"] = np.array([n.encode() for n in names])
        for n in names:
            src.copy(src["model_weights"][n], root, name=n)
    with pytest.raises(KerasImportError, match=r"bad\.h5.*missing layer\(s\) bn3"):
        import_keras(bad, tmp_path, arch="ssd7")


def test_wrong_arch_and_bad_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(KerasImportError, match=r"ssd7\.h5.*missing layer\(s\) conv1_1"):
        import_keras(DATA / "ssd7.h5", tmp_path, arch="ssd300")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(KerasImportError, match=r"junk\.h5: not an HDF5 file"):
        read_keras_weights(junk)
    empty = tmp_path / "empty.h5"
    h5py.File(empty, "w").close()
    with pytest.raises(KerasImportError, match=r"empty\.h5: not a Keras weight file"):
        read_keras_weights(empty)
    with pytest.raises(KerasImportError, match="file not found"):
        read_keras_weights(tmp_path / "nope.h5")
    huge = tmp_path / "huge.h5"  # a compressed dataset that claims 2^28 values is refused before it is read
    with h5py.File(huge, "w") as f:
        f.attrs["layer_names"] = np.array([b"conv1"])
        f.create_group("conv1").attrs["weight_names"] = np.array([b"conv1/kernel:0"])
        f["conv1"].create_dataset("conv1/kernel:0", shape=(1 << 14, 1 << 14), dtype=np.float32, chunks=(256, 256),
                                  compression="gzip", fillvalue=1.0)
    assert huge.stat().st_size < 100_000
    with pytest.raises(KerasImportError, match=r"huge\.h5: layer 'conv1': weight 'conv1/kernel:0' is missing or "
                                               r"larger than"):
        read_keras_weights(huge)
    keras3 = tmp_path / "m.weights.h5"  # Keras 3 save_weights: layers named by class, not by ssd_keras' names
    with h5py.File(keras3, "w") as f:
        f.create_group("vars")
        f.create_dataset("layers/conv2d/vars/0", data=np.zeros((3, 3, 3, 8), np.float32))
    with pytest.raises(KerasImportError, match=r"m\.weights\.h5: a Keras 3 \.weights\.h5 file"):
        read_keras_weights(keras3)
    cfg = replace(KERAS_ARCHS["ssd7"], aspect_ratios=((0.5, 2.0),) * 4)
    with pytest.raises(KerasImportError, match="must hold 1 exactly once"):
        import_keras(DATA / "ssd7.h5", tmp_path, arch="ssd7", config=cfg)
    cfg = replace(KERAS_ARCHS["ssd7"], aspect_ratios=((0.5, 1.0, 2.0, 3.0),) * 4)  # 5 boxes: 24 outputs
    with pytest.raises(KerasImportError, match=r"24 outputs, not a multiple of its 5 boxes"):
        import_keras(DATA / "ssd7.h5", tmp_path, arch="ssd7", config=cfg)


def test_cli_import_keras(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "keras", str(DATA / "ssd7.h5"), "--arch", "ssd7", "--out", str(tmp_path),
                 "--name", "s7", "--classes", "background,car,truck,pedestrian,bicyclist,light",
                 "--top-k", "50"]) == 0
    assert "s7.safetensors" in capsys.readouterr().out
    bundle = load_bundle(tmp_path / "s7.safetensors")
    assert bundle.class_names[1] == "car" and bundle.postprocess["keep_top_k"] == 50
    assert main(["import", "keras", str(DATA / "ssd7.h5"), "--arch", "ssd7", "--out", str(tmp_path),
                 "--name", "s8", "--steps", "8,16,32,64", "--image-size", "300,480"]) == 0
    priors = load_bundle(tmp_path / "s8.safetensors").priors
    torch.testing.assert_close(priors[4, 0], torch.tensor(12.0 / 480))  # step 8 px instead of 480 / 60
    assert main(["import", "keras", str(DATA / "ssd7.h5"), "--arch", "ssd300", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "multibox import keras: error:" in err and "ssd7.h5" in err and "conv1_1" in err and "Traceback" not in err
    assert main(["import", "keras", str(DATA / "ssd7.h5"), "--arch", "ssd300_mobilenetv1_1x1", "--out",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not an ssd_keras ssd300_mobilenetv1_keras_1x1 weight file: missing layer(s) conv1_bn, conv_dw_1" in err


def test_cli_import_keras_mobilenetv1(tmp_path: Path, ref: dict[str, np.ndarray], layout: dict,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    arch = "ssd300_mobilenetv1_3x3"
    h5 = tmp_path / "mnv1.h5"
    write_h5(h5, arch, layout, ref, keras2_names=True)
    assert main(["import", "keras", str(h5), "--arch", arch, "--out", str(tmp_path), "--top-k", "50",
                 "--confidence-thresh", "0.2"]) == 0
    assert "mnv1.safetensors" in capsys.readouterr().out
    bundle = load_bundle(tmp_path / "mnv1.safetensors")
    assert bundle.postprocess["keep_top_k"] == 50 and bundle.postprocess["conf_threshold"] == 0.2
    assert bundle.spec["name"] == "ssd300_mobilenetv1_keras_3x3" and bundle.priors.shape == (2268, 4)
    with h5py.File(h5, "r+") as f:  # a depthwise kernel of the wrong shape is named
        g = f["model_weights"]["conv_dw_5"]
        del g["conv_dw_5/depthwise_kernel:0"]
        g.create_dataset("conv_dw_5/depthwise_kernel:0", data=np.zeros((3, 3, 128, 1), np.float32))
    assert main(["import", "keras", str(h5), "--arch", arch, "--out", str(tmp_path), "--name", "bad"]) == 2
    err = capsys.readouterr().err
    assert "mnv1.h5: layer 'conv_dw_5': weight of shape [128, 1, 3, 3] where [256, 1, 3, 3]" in err
