"""The Detector's user surface: the Detections API (len, iteration, numpy, pandas, plot, save), float images,
``predict`` over sources, boxes clipped to the image (and the pre-annotations ``multibox data check`` accepts),
drawing without matplotlib, and the ``detect`` / ``export`` command-line conventions."""

import builtins
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from multibox.cli import main
from multibox.commands.detect import detect_sources
from multibox.detections import Detection, Detections
from multibox.detector import Detector
from multibox.interop.bundle import DetectorBundle, save_bundle
from multibox.models.detector import SSDOutput
from multibox.models.spec import InputSpec
from multibox.sources import expand_sources
from multibox.viz import draw_boxes
from test_detect import NAMES, assert_same, make_bundle, photo


@pytest.fixture(scope="module")
def detector():
    return Detector(make_bundle(), runtime="eager")


def many(n: int = 134, size=(300, 400)) -> Detections:
    g = torch.Generator().manual_seed(0)
    h, w = size
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
    wh = torch.rand(n, 2, generator=g) * 40 + 5
    scores = torch.linspace(0.99, 0.1, n)
    labels = torch.randint(1, 3, (n,), generator=g)
    return Detections(torch.cat([xy, xy + wh], 1), scores, labels, NAMES, size)


# ----------------------------------------------------------------------------------------------- Detections API
def test_iterating_detections_gives_one_record_per_box():
    d = many(134)
    records = list(d)  # used to never end (integer indexing past the end gave empty Detections)
    assert len(d) == 134 and len(records) == 134
    first = records[0]
    assert isinstance(first, Detection)
    assert first.xyxy == tuple(d.boxes[0].tolist()) and first.score == pytest.approx(0.99)
    assert first.label == int(d.labels[0]) and first.class_name == NAMES[first.label]
    with pytest.raises(AttributeError):
        first.score = 0.5  # frozen
    with pytest.raises(IndexError):
        d[134]
    assert len(d[-1]) == 1 and d[-1].scores.item() == pytest.approx(0.1)


def test_numpy_and_to_dict():
    d = many(5)
    arrays = d.numpy()
    assert arrays["boxes"].shape == (5, 4) and arrays["boxes"].dtype == np.float32
    assert arrays["scores"].dtype == np.float32 and arrays["labels"].dtype == np.int64
    assert arrays["class_names"].tolist() == [NAMES[k] for k in d.labels.tolist()]
    doc = d.to_dict(image_id=7)
    assert doc["image_size"] == [300, 400] and len(doc["detections"]) == 5
    x1, y1, x2, y2 = d.boxes[0].tolist()
    np.testing.assert_allclose(doc["detections"][0]["bbox"], [x1, y1, x2 - x1, y2 - y1], rtol=1e-6)
    json.dumps(doc)
    empty = Detections.empty(NAMES, (10, 10))
    assert list(empty) == [] and empty.numpy()["boxes"].shape == (0, 4)


def test_to_pandas_names_pandas_when_missing(monkeypatch):
    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError("No module named 'pandas'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(ImportError, match="pandas"):
        many(3).to_pandas()


def test_to_pandas_rows():
    import pandas as pd  # a dev dependency: this test runs in CI, never skips

    d = many(4)
    df = d.to_pandas()
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["x1", "y1", "x2", "y2", "score", "label",
                                                                  "class_name"]
    assert len(df) == 4 and df["class_name"].tolist() == d.names()
    np.testing.assert_array_equal(df[["x1", "y1", "x2", "y2"]].to_numpy(np.float32), d.boxes.numpy())
    np.testing.assert_array_equal(df["score"].to_numpy(np.float32), d.scores.numpy())


def test_plot_and_save_follow_the_suffix(tmp_path):
    img = photo(300, 400)
    d = many(20)
    pic = d.plot(img)
    assert isinstance(pic, Image.Image) and pic.size == (400, 300) and pic.mode == "RGB"
    assert not np.array_equal(np.asarray(pic), img)  # something was drawn
    jpg = d.save(tmp_path / "x.jpg", img)
    png = d.save(tmp_path / "x.png", img)
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff" and png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="give plot / save the image"):
        d.plot()
    src = tmp_path / "src.png"
    Image.fromarray(img).save(src)
    d.source = str(src)
    assert np.array_equal(np.asarray(d.plot()), np.asarray(pic))  # the source file by default


def test_drawing_200_boxes_needs_no_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # any import of matplotlib now fails
    d = many(200, (300, 300))
    pic = draw_boxes(photo(300, 300), d.boxes.numpy(), d.scores.numpy(), d.names())
    assert pic.size == (300, 300)
    assert sys.modules["matplotlib"] is None


def test_labels_are_readable_on_a_300_px_image(tmp_path, detector):
    white = np.full((300, 300, 3), 255, np.uint8)
    pic = np.asarray(draw_boxes(white, np.array([[100.0, 150.0, 200.0, 250.0]]), [0.9], ["cat"]))
    label = (np.abs(pic.astype(int) - [31, 119, 180]).sum(-1) == 0)  # the first class colour: box and label
    rows = np.flatnonzero(label[:150, 100:104].any(1))  # the label sits above the box, from its left edge
    assert len(rows) >= 14 and rows.max() == 149  # a 12+ px text line and margins (not the 8 px bitmap font)
    # a detection of a file draws on that file by default
    path = tmp_path / "p.png"
    Image.fromarray(photo()).save(path)
    d = detector(path)
    assert d.source == str(path) and d.plot().size == (200, 150)


# ----------------------------------------------------------------------------------------------- float images
def test_float_images_in_0_1_match_uint8_and_0_255_floats_are_rejected(detector):
    img = photo()
    base = detector(img)
    assert len(base) > 0
    assert_same(detector(img.astype(np.float32) / 255), base)
    assert_same(detector(img.astype(np.float64) / 255), base)
    assert_same(detector(torch.from_numpy(img).permute(2, 0, 1).double() / 255), base)
    for bad in (img.astype(np.float32), torch.from_numpy(img).permute(2, 0, 1).float()):
        with pytest.raises(ValueError, match=r"\[0, 1\].*uint8.*255"):
            detector(bad)
    with pytest.raises(ValueError, match="values range from nan"):
        detector(np.full((20, 20, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="values range from -0.5"):
        detector(np.full((20, 20, 3), -0.5, np.float32))


# ----------------------------------------------------------------------------------------------- predict
def test_predict_is_a_generator_over_files_folders_and_globs(tmp_path, detector):
    folder = tmp_path / "imgs"
    folder.mkdir()
    arrays = {"a": photo(seed=1), "b": photo(120, 90, seed=2), "c": photo(80, 100, seed=3)}
    for k, arr in arrays.items():
        Image.fromarray(arr).save(folder / f"{k}.png")
    gen = detector.predict(folder, conf=0.3)
    assert iter(gen) is gen  # lazy
    got = list(gen)
    assert [name for name, _ in got] == ["a", "b", "c"]
    for name, dets in got:
        assert_same(dets, detector(arrays[name], conf=0.3))
        assert dets.source == str(folder / f"{name}.png")
    assert [n for n, _ in detector.predict(str(folder / "*.png"))] == ["a", "b", "c"]
    assert [n for n, _ in detector.predict([folder / "b.png", folder / "a.png"])] == ["b", "a"]
    with pytest.raises(FileNotFoundError, match="nope"):
        list(detector.predict(tmp_path / "nope"))


# ----------------------------------------------------------------------------------------------- boxes inside
class EdgeNet(nn.Module):
    """Three priors whose boxes leave the image (right edge, top-left corner, far outside) and one inside; every
    prior scores class 1 highly, zero box deltas: boxes are the priors."""

    def __init__(self):
        super().__init__()
        self.priors = torch.tensor([[0.95, 0.5, 0.4, 0.4], [0.0, 0.0, 0.3, 0.3], [1.5, 1.5, 0.2, 0.2],
                                    [0.5, 0.5, 0.2, 0.2]])
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        b = x.shape[0]
        logits = torch.full((b, 4, 3), -10.0) * self.scale
        logits[:, :, 1] = 10.0
        return SSDOutput(logits, torch.zeros(b, 4, 4))


def edge_detector() -> Detector:
    net = EdgeNet().eval()
    bundle = DetectorBundle(model=net, priors=net.priors, input_spec=InputSpec((32, 32)), class_names=NAMES,
                            builder="multibox", spec={}, variances=(0.1, 0.1, 0.2, 0.2),
                            postprocess={"clip": False, "nms_threshold": 0.45}, source={"name": "edge"})
    return Detector(bundle, runtime="eager")


def test_boxes_are_clipped_to_the_image_and_pre_annotations_pass_data_check(tmp_path, capsys):
    det = edge_detector()
    img = photo(60, 80)
    d = det(img, conf=0.5)
    # unclipped decoding gives x2 = 1.15 * 80 = 92 and negative corners; the far-away prior has no area left
    assert len(d) == 3
    assert float(d.boxes.min()) >= 0 and float(d.boxes[:, [0, 2]].max()) <= 80 and float(d.boxes[:, [1, 3]].max()) <= 60
    # priors (cx, cy, w, h) in pixels of the 80 x 60 image: (76, 30, 32, 24) -> x2 92 clipped to 80; (0, 0, 24, 18)
    # -> x1, y1 clipped to 0; (120, 90, 16, 12) -> nothing left; (40, 30, 16, 12) inside
    got = sorted(tuple(round(v, 3) for v in b) for b in d.boxes.tolist())
    assert got == [(0.0, 0.0, 12.0, 9.0), (32.0, 24.0, 48.0, 36.0), (60.0, 18.0, 80.0, 42.0)]
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(img).save(src / "edge.png")
    out = tmp_path / "out"
    summary = detect_sources(expand_sources([str(src)]), det, out, conf=0.5, draw=False, voc=True, yolo=True,
                             progress=False, model_name="edge")
    assert summary["detections"] == 3
    rows = np.loadtxt(out / "yolo" / "edge.txt", ndmin=2)
    assert (rows[:, 1:] >= 0).all() and (rows[:, 1:] <= 1).all()
    # YOLO layout: images/ + labels/ + classes.txt
    yolo = tmp_path / "yolo"
    (yolo / "images").mkdir(parents=True)
    (yolo / "labels").mkdir()
    shutil.copy(src / "edge.png", yolo / "images" / "edge.png")
    shutil.copy(out / "yolo" / "edge.txt", yolo / "labels" / "edge.txt")
    shutil.copy(out / "yolo" / "classes.txt", yolo / "classes.txt")
    # VOC layout: Annotations/ + JPEGImages/ + classes.txt
    voc = tmp_path / "voc"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    shutil.copy(src / "edge.png", voc / "JPEGImages" / "edge.png")
    shutil.copy(out / "voc" / "edge.xml", voc / "Annotations" / "edge.xml")
    (voc / "classes.txt").write_text("cat\ndog\n")
    capsys.readouterr()
    for root, fmt in ((yolo, "yolo"), (voc, "voc")):
        code = main(["data", "check", str(root), "--format", fmt])
        text = capsys.readouterr()
        assert code == 0, (fmt, text.out, text.err)
        assert "3" in text.out


# ----------------------------------------------------------------------------------------------- CLI conventions
@pytest.fixture
def bundle_file(tmp_path):
    return save_bundle(make_bundle(), tmp_path / "tiny.safetensors")


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(photo()).save(d / "a.png")
    Image.fromarray(photo(120, 90, seed=2)).save(d / "b.jpg", quality=95)
    return d


@pytest.mark.parametrize("conf", ["2", "-1", "nan"])
def test_detect_conf_out_of_range_is_a_usage_error(tmp_path, image_dir, bundle_file, conf, capsys):
    with pytest.raises(SystemExit) as e:
        main(["detect", str(image_dir), "--model", str(bundle_file), "--conf", conf, "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "--conf" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_detect_out_is_checked_before_any_work(tmp_path, image_dir, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    # the model does not exist: the --out error comes first, before loading anything
    assert main(["detect", str(image_dir), "--model", "no-such-model", "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multibox detect: error: --out") and "not a folder" in err
    assert a_file.read_text() == "x"
    assert main(["detect", str(image_dir), "--model", "no-such-model", "--out", str(a_file / "sub")]) == 2
    assert "--out" in capsys.readouterr().err


def test_unwritable_out_is_a_usage_error_before_any_work(tmp_path, image_dir, bundle_file, monkeypatch, capsys):
    from multibox import fileio

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = fileio.os.access
    monkeypatch.setattr(fileio.os, "access", lambda p, mode: False if str(p).startswith(str(locked)) else
                        real_access(p, mode))  # as root, chmod would not stop anything
    assert main(["detect", str(image_dir), "--model", "no-such-model", "--out", str(locked / "o")]) == 2
    assert "not writable" in capsys.readouterr().err and not (locked / "o").exists()
    assert main(["export", "onnx", str(bundle_file), "--out", str(locked / "m.onnx")]) == 2
    assert "not writable" in capsys.readouterr().err and not (locked / "m.onnx").exists()


def test_detect_quiet_json_overwrite_and_formats(tmp_path, image_dir, bundle_file, capsys):
    out = tmp_path / "o"
    summary = tmp_path / "summary.json"
    assert main(["detect", str(image_dir), "--model", str(bundle_file), "--out", str(out), "--quiet",
                 "--json", str(summary), "--runtime", "eager"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    doc = json.loads(summary.read_text())
    assert doc["images"] == 2 and doc["runtime"] == "eager" and doc["json"] == str(out / "detections.json")
    # annotated images: JPEG for JPEG in, PNG for PNG in
    assert (out / "annotated" / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "annotated" / "b.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    before = (out / "detections.json").read_bytes()
    assert main(["detect", str(image_dir), "--model", str(bundle_file), "--out", str(out), "-q"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "detections.json").read_bytes() == before
    assert main(["detect", str(image_dir), "--model", str(bundle_file), "--out", str(out), "-q", "--overwrite",
                 "--json", "-", "--runtime", "eager"]) == 0
    assert json.loads(capsys.readouterr().out)["detections"] == doc["detections"]
    assert main(["detect", str(image_dir), "--model", str(bundle_file), "--out", str(tmp_path / "o2"),
                 "--runtime", "tensorrt"]) == 2
    assert "unknown runtime 'tensorrt'" in capsys.readouterr().err


def test_export_conventions(tmp_path, bundle_file, capsys):
    out = tmp_path / "m.onnx"
    with pytest.raises(SystemExit) as e:
        main(["export", "onnx", str(bundle_file), "--out", str(out), "--postprocess", "--conf", "2"])
    assert e.value.code == 2 and not out.exists()
    capsys.readouterr()
    assert main(["export", "onnx", str(bundle_file), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["export", "onnx", str(bundle_file), "--out", str(out), "--quiet", "--json",
                 str(tmp_path / "s.json")]) == 0
    assert capsys.readouterr().out == ""
    assert json.loads((tmp_path / "s.json").read_text())["class_names"] == NAMES
    size = out.stat().st_size
    assert main(["export", "onnx", str(bundle_file), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.stat().st_size == size
    assert main(["export", "onnx", str(bundle_file), "--out", str(out), "--overwrite", "-q"]) == 0
    assert main(["export", "onnx", str(bundle_file), "--out", str(tmp_path / "x.onnx"), "--conf", "0.3"]) == 2
    assert "--postprocess" in capsys.readouterr().err


@pytest.mark.parametrize("device, message", [("tpu", "device 'tpu': not a device"),
                                             ("cuda", "device 'cuda': no CUDA GPU is available here"),
                                             ("cuda:3", "device 'cuda:3': no CUDA GPU is available here")])
def test_unusable_device_is_a_clear_error(tmp_path, image_dir, bundle_file, device, message, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    from multibox.data.synth import write_synthetic_voc

    with pytest.raises(ValueError, match=message):
        Detector(make_bundle(), device)
    voc = tmp_path / "voc"
    write_synthetic_voc(voc, 2, size=64, profile="easy")
    for cmd in (["detect", str(image_dir), "--model", str(bundle_file), "--out", str(tmp_path / "o")],
                ["eval", str(bundle_file), "--data", str(voc), "--classes", "a,b"]):
        assert main(cmd + ["--device", device]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


@pytest.mark.parametrize("conf", [2.0, -1.0, float("nan")])
def test_conf_out_of_range_is_an_error_in_the_python_api(detector, conf):
    # the command line range-checks --conf; Detector(conf=2) and detector(img, conf=nan) kept every box or none
    with pytest.raises(ValueError, match=r"conf .* is not in \[0, 1\]"):
        Detector(make_bundle(), runtime="eager", conf=conf)
    with pytest.raises(ValueError, match=r"conf .* is not in \[0, 1\]"):
        detector(photo(), conf=conf)
    assert len(detector(photo(), conf=0.0)) >= len(detector(photo(), conf=1.0))
