"""SSD-Tensorflow importer (``multibox import tf-slim``) and the TF checkpoint reader, against TensorFlow.

``tests/data/slim_ssd`` holds what ``scripts/make_slim_reference.py`` made with TensorFlow in a separate
environment (see its README): the ``.index`` of each checkpoint as ``tf.compat.v1.train.Saver`` wrote it, and the
network's raw outputs and decoded detections on real photos. The checkpoints' data files (105 / 110 MB) are
rebuilt here from the index (offsets, sizes) and the same seeded weights, checked against TensorFlow's checksums
and byte count. TensorFlow is not needed.
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from multibox.cli import main
from multibox.interop.bundle import load_bundle
from multibox.interop.slim import SLIM_ARCHS, SlimImportError, import_slim, slim_anchors
from multibox.interop.tf_checkpoint import CheckpointError, TFCheckpoint

DATA = Path(__file__).parent / "data" / "slim_ssd"
PHOTOS = Path(__file__).parent / "data" / "tf_person" / "reference.npz"
SEED = 20261205
SETUP = {"ssd_300_vgg": ((0,), 21), "ssd_512_vgg": ((1,), 6)}  # photos, classes


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(DATA / "reference.npz") as z:
        return {k: z[k] for k in z.files}


def layer_weights(scope: str, kshape: tuple[int, ...], gain: float = 1.0) -> tuple[np.ndarray, ...]:
    """The seeded weights of ``scripts/make_slim_reference.py`` (same recipe; checked by checksum)."""
    rng = np.random.default_rng([SEED, zlib.crc32(scope.encode())])
    if len(kshape) == 1:
        return (np.float32(20) + rng.standard_normal(kshape, dtype=np.float32),)
    fan_in = kshape[0] * kshape[1] * kshape[2]
    w = rng.standard_normal(kshape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in) * gain)
    b = rng.standard_normal(kshape[-1], dtype=np.float32) * np.float32(0.05 * gain)
    return w, b


def rebuild_checkpoint(tmp: Path, arch: str, ref: dict[str, np.ndarray]) -> Path:
    """TensorFlow's index plus a data file holding, at the offsets the index gives, the weights TF saved."""
    prefix = tmp / f"{arch}.ckpt-1000"
    shutil.copy(DATA / f"{arch}.ckpt-1000.index", f"{prefix}.index")
    ckpt = TFCheckpoint(prefix)
    data = bytearray(int(ref[f"{arch}/data_size"]))
    for name in ckpt.names():
        e = ckpt.entry(name)
        if name == "global_step":
            arr = np.array(1000, dtype="<i8")
        else:
            scope, leaf = name.rsplit("/", 1)
            kshape = e.shape if leaf != "biases" else ckpt.entry(f"{scope}/weights").shape
            arrays = layer_weights(scope, kshape, float(ref.get(f"{arch}/gain/{scope}", 1.0)))
            arr = arrays[{"weights": 0, "gamma": 0, "biases": 1}[leaf]]
            assert float(np.float64(arr).sum()) == pytest.approx(float(ref[f"{arch}/checksum/{name}"]), rel=1e-9)
        raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        assert len(raw) == e.size
        data[e.offset:e.offset + e.size] = raw
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))
    return prefix


def network_images(arch: str) -> torch.Tensor:
    n = SETUP[arch][0]
    size = SLIM_ARCHS[arch].image_size[0]
    with np.load(PHOTOS) as z:
        photos = z["images"][list(n)]
    idx = (np.arange(size) * photos.shape[1]) // size
    return torch.from_numpy(np.ascontiguousarray(photos[:, idx][:, :, idx])).permute(0, 3, 1, 2)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def assert_same_detections(scores: torch.Tensor, boxes: torch.Tensor, ref_scores: torch.Tensor,
                           ref_boxes: torch.Tensor) -> None:
    """Both lists score-sorted: the scores equal rank by rank (1e-4), and every reference box has its own match
    among ours (score within 1e-4, box within 1e-3): boxes whose scores differ by ~1e-6 may come in either order
    (float noise of two frameworks), nothing else may differ."""
    k = len(ref_scores)
    torch.testing.assert_close(scores[:k], ref_scores, rtol=0, atol=1e-4)
    used = torch.zeros(len(scores), dtype=torch.bool)
    for i in range(k):
        ok = ~used & ((scores - ref_scores[i]).abs() <= 1e-4) & ((boxes - ref_boxes[i]).abs().amax(1) <= 1e-3)
        assert ok.any(), f"reference detection {i} (score {float(ref_scores[i]):.6f}) has no match"
        used[int(ok.nonzero()[0])] = True


@pytest.mark.parametrize("arch", ["ssd_300_vgg", "ssd_512_vgg"])
def test_slim_ssd_matches_tensorflow(tmp_path: Path, ref: dict[str, np.ndarray], arch: str) -> None:
    prefix = rebuild_checkpoint(tmp_path, arch, ref)
    ckpt = TFCheckpoint(prefix)
    assert ckpt.read("global_step") == 1000 and ckpt.entry("global_step").dtype_name == "int64"
    assert ckpt.entry(f"{arch}/block4_box/L2Normalization/gamma").shape == (512,)
    path = import_slim(prefix, tmp_path, arch=arch)
    assert path.name == f"{arch}.safetensors"
    bundle = load_bundle(path)
    n_priors = {"ssd_300_vgg": 8732, "ssd_512_vgg": 24564}[arch]
    assert bundle.priors.shape == (n_priors, 4) and len(bundle.class_names) == SETUP[arch][1]
    torch.testing.assert_close(bundle.priors, torch.from_numpy(ref[f"{arch}/anchors"]), rtol=0, atol=0)
    assert bundle.input_spec.channel_order == "RGB" and bundle.input_spec.mean == (123.0, 117.0, 104.0)
    with torch.no_grad():
        out = bundle.model(bundle.input_spec.normalize(network_images(arch)))
    logits = torch.from_numpy(ref[f"{arch}/logits"])
    locs = torch.from_numpy(ref[f"{arch}/localisations"])
    assert _rel_err(out.cls_logits, logits) <= 1e-4 and _rel_err(out.box_deltas, locs) <= 1e-4
    dets = bundle.make_postprocess()(out.cls_logits, out.box_deltas)
    compared = 0
    for b, d in enumerate(dets):
        for c in range(1, SETUP[arch][1]):
            tf_c = ref[f"{arch}/dets"][b, c - 1]
            tf_c = tf_c[tf_c[:, 0] > 0]
            ours = d.labels == c
            scores, boxes = d.scores[ours], d.boxes[ours]
            if len(tf_c) < 200:  # TF stops at 200 per class; we report every box NMS keeps (docs/importers.md)
                assert len(scores) == len(tf_c)
            assert_same_detections(scores, boxes, torch.from_numpy(tf_c[:, 0]),
                                   torch.from_numpy(tf_c[:, [2, 1, 4, 3]]))
            compared += len(tf_c)
    assert compared > 100


def test_anchors_match_hand_computed_values() -> None:
    cfg = SLIM_ARCHS["ssd_300_vgg"]
    a = slim_anchors(cfg, [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)])
    assert a.shape == (8732, 4)
    # first location of block4: centre 0.5 * 8 / 300, sizes 21 and sqrt(21 * 45), then ratio 2 and 1/2 of 21
    c = 4.0 / 300
    s = math.sqrt(21 * 45) / 300
    expected = [[c, c, 21 / 300, 21 / 300], [c, c, s, s], [c, c, 21 * math.sqrt(2) / 300, 21 / math.sqrt(2) / 300],
                [c, c, 21 / math.sqrt(2) / 300, 21 * math.sqrt(2) / 300]]
    np.testing.assert_allclose(a[:4], expected, rtol=1e-6)
    np.testing.assert_allclose(a[-4:, :2], 0.5, rtol=1e-6)  # block11: one location (4 anchors) at (150, 150) px


def test_reader_errors_name_the_file(tmp_path: Path, ref: dict[str, np.ndarray]) -> None:
    with pytest.raises(CheckpointError, match="checkpoint index not found"):
        TFCheckpoint(tmp_path / "none.ckpt")
    bad = tmp_path / "bad.ckpt.index"
    raw = bytearray((DATA / "ssd_300_vgg.ckpt-1000.index").read_bytes())
    raw[-1] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"bad\.ckpt\.index: not a TensorFlow checkpoint index \(bad table magic"):
        TFCheckpoint(tmp_path / "bad.ckpt")
    shutil.copy(DATA / "ssd_300_vgg.ckpt-1000.index", tmp_path / "m.ckpt.index")
    ckpt = TFCheckpoint(tmp_path / "m.ckpt")
    with pytest.raises(CheckpointError, match=r"m\.ckpt\.data-00000-of-00001: checkpoint data file not found"):
        ckpt.read("global_step")
    Path(tmp_path / "m.ckpt.data-00000-of-00001").write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match="lies outside the data file"):
        ckpt.read("ssd_300_vgg/conv1/conv1_1/weights")
    with pytest.raises(CheckpointError, match="has no variable 'nope'"):
        ckpt.read("nope")


def test_wrong_arch_names_the_missing_variables(tmp_path: Path) -> None:
    shutil.copy(DATA / "ssd_300_vgg.ckpt-1000.index", tmp_path / "m.ckpt.index")
    with pytest.raises(SlimImportError, match=r"m\.ckpt: not an SSD-Tensorflow ssd_512_vgg checkpoint: missing "
                                              r"variable\(s\) ssd_512_vgg/conv1/conv1_1/weights.*ssd_300_vgg"):
        import_slim(tmp_path / "m.ckpt", tmp_path, arch="ssd_512_vgg")


def test_cli_import_tf_slim(tmp_path: Path, ref: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]) -> None:
    prefix = rebuild_checkpoint(tmp_path, "ssd_300_vgg", ref)
    assert main(["import", "tf-slim", str(prefix), "--arch", "ssd_300_vgg", "--out", str(tmp_path / "o"),
                 "--name", "voc"]) == 0
    assert "voc.safetensors" in capsys.readouterr().out
    report = json.loads((tmp_path / "o" / "voc.json").read_text())
    assert report["num_priors"] == 8732 and report["postprocess"]["top_k"] == 400
    assert report["postprocess"]["keep_top_k"] == 0  # no overall cap
    assert main(["import", "tf-slim", str(tmp_path / "missing.ckpt"), "--arch", "ssd_300_vgg", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "multibox import tf-slim: error:" in err and "missing.ckpt.index" in err and "Traceback" not in err
