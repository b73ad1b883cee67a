"""multibox.Detector (every input kind, preprocessing against a hand-written reference, optimized path) and
``multibox detect`` (annotated images, detections.json, VOC XML, YOLO txt, folders, globs, errors)."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from multibox.box_coder import BoxCoder
from multibox.cli import main
from multibox.data.datasets.voc import parse_voc_xml
from multibox.detector import Detector
from multibox.interop.bundle import DetectorBundle, save_bundle
from multibox.models import build_model
from multibox.models.spec import InputSpec
from multibox.postprocess import PostProcess

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NAMES = ["background", "cat", "dog"]
SIZE = (96, 128)  # (h, w) network input
SPEC = InputSpec(SIZE, "BGR", mean=(104.0, 117.0, 123.0), std=(58.0, 57.0, 59.0))
POST = {"conf_threshold": 0.01, "top_k": 50, "nms_threshold": 0.45, "keep_top_k": 5}


def make_bundle(seed: int = 0) -> DetectorBundle:
    torch.manual_seed(seed)
    model = build_model("ssd7", num_classes=3, class_names=NAMES, image_size=SIZE).eval()
    return DetectorBundle(model=model, priors=model.priors, input_spec=SPEC, class_names=NAMES, builder="multibox",
                          spec={"name": "ssd7", "kwargs": {"image_size": list(SIZE)}, "num_classes": 3,
                                "class_names": NAMES},
                          variances=(0.1, 0.1, 0.2, 0.2), postprocess=dict(POST), source={"name": "tiny-ssd7"})


def photo(h: int = 150, w: int = 200, seed: int = 1) -> np.ndarray:
    """A smooth colour image (so that resizing is well conditioned)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 / w), (yy * 255 / h), ((xx + yy) * 127 / (h + w))], axis=-1)
    img = img + rng.normal(0, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def bundle():
    return make_bundle()


@pytest.fixture(scope="module")
def detector(bundle):
    return Detector(bundle, runtime="eager")


def reference(bundle: DetectorBundle, rgb: np.ndarray, conf: float | None = None):
    """Straightforward pipeline: bilinear resize (align_corners=False), BGR flip, mean/std, model, PostProcess."""
    x = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=SIZE, mode="bilinear", align_corners=False)
    x = x[:, [2, 1, 0]]  # BGR
    x = (x - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)) / torch.tensor([58.0, 57.0, 59.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        out = bundle.model(x)
    post = PostProcess(bundle.priors, BoxCoder((0.1, 0.1, 0.2, 0.2)), class_names=NAMES, **POST)
    det = post(out.cls_logits, out.box_deltas, [rgb.shape[:2]])[0]
    return det if conf is None else det.filter(conf)


def assert_same(a, b, atol=1e-4):
    assert len(a) == len(b)
    torch.testing.assert_close(a.boxes, b.boxes, atol=atol, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
    assert a.labels.tolist() == b.labels.tolist()


def test_detector_matches_reference_pipeline(bundle, detector):
    img = photo()
    got = detector(img)
    ref = reference(bundle, img)
    assert len(got) == 5 and got.image_size == (150, 200)
    assert got.class_names == NAMES and set(got.names()) <= {"cat", "dog"}
    assert_same(got, ref)
    # boxes are in original pixels (clipped to the image)
    assert float(got.boxes[:, 2].max()) <= 200 and float(got.boxes[:, 3].max()) <= 150


def test_every_input_kind_gives_the_same_detections(tmp_path, detector):
    img = photo()
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    base = detector(img)
    variants = {
        "path": detector(path),
        "str path": detector(str(path)),
        "pil": detector(Image.fromarray(img)),
        "pil rgba": detector(Image.fromarray(img).convert("RGBA")),
        "bgr array": detector(np.ascontiguousarray(img[..., ::-1]), bgr=True),
        "tensor uint8": detector(torch.from_numpy(img).permute(2, 0, 1)),
        "tensor float [0, 1]": detector(torch.from_numpy(img).permute(2, 0, 1).float() / 255),
        "array float [0, 1]": detector(img.astype(np.float32) / 255),
    }
    for name, d in variants.items():
        assert_same(d, base), name
    many = detector([path, img, Image.fromarray(img[:100])])
    assert isinstance(many, list) and len(many) == 3
    assert_same(many[0], base)
    assert_same(many[1], base)
    assert_same(many[2], detector(img[:100]))
    # bgr=True concerns arrays only: files and PIL images in the same call are still read as RGB
    mixed = detector([path, Image.fromarray(img), np.ascontiguousarray(img[..., ::-1])], bgr=True)
    for d in mixed:
        assert_same(d, base)
    # a BGR array without the flag is a different image
    assert not torch.equal(detector(np.ascontiguousarray(img[..., ::-1])).boxes, base.boxes)


def test_conf_and_batching(bundle):
    img1, img2, img3 = photo(seed=1), photo(120, 90, seed=2), photo(64, 64, seed=3)
    det = Detector(bundle, batch_size=2, runtime="eager")
    out = det([img1, img2, img3], conf=0.34)
    for im, d in zip((img1, img2, img3), out, strict=True):
        assert_same(d, reference(bundle, im, 0.34))
        assert bool((d.scores >= 0.34).all())
    top = det(img1).scores.max().item()
    assert len(det(img1, conf=top)) >= 1  # score >= conf is kept
    assert len(det(img1, conf=top + 1e-6)) == 0


def test_optimized_path_gives_unchanged_detections(bundle):
    img = photo()
    eager = Detector(bundle, runtime="eager")(img)
    fast = Detector(make_bundle(), runtime="jit+channels_last")
    assert fast.runtime_name == "undecided"
    got = fast([img, img])
    assert fast.runtime_name == "jit+channels_last"
    assert_same(got[0], eager)
    assert_same(got[1], eager)
    for name in ("jit", "channels_last"):
        det = Detector(make_bundle(), runtime=name)
        assert_same(det(img), eager)
        assert det.runtime_name == name


def test_bad_inputs_name_the_problem(tmp_path, detector):
    with pytest.raises(ValueError, match=r"no such image file"):
        detector(tmp_path / "missing.jpg")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="broken.jpg"):
        detector(bad)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        detector(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        detector(np.zeros((10, 10, 3), np.int32))
    with pytest.raises(ValueError, match="unsupported image input"):
        detector(12)


def test_from_file_bundle_and_checkpoint(tmp_path, bundle):
    from multibox.engine.checkpoint import save_weights

    img = photo()
    p = save_bundle(bundle, tmp_path / "tiny.safetensors")
    assert_same(Detector.from_file(p, runtime="eager")(img), reference(bundle, img))
    # a training checkpoint: the model's own input spec and default post-processing
    ck = save_weights(tmp_path / "best.safetensors", bundle.model, model_name="ssd7", class_names=NAMES,
                      model_kwargs={"image_size": list(SIZE)}, config=None, step=3)
    det = Detector.from_file(ck, runtime="eager")
    assert det.class_names == NAMES and det.input_spec.image_size == SIZE
    got = det(img)
    x, sizes = det.preprocess([img])
    with torch.no_grad():
        out = bundle.model(x)
    ref = PostProcess.from_model(bundle.model)(out.cls_logits, out.box_deltas, sizes)[0]
    assert_same(got, ref)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        Detector.from_file(tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------------------------- detect command
@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    arrays = {"a": photo(seed=1), "b": photo(120, 90, seed=2), "c": photo(80, 100, seed=3)}
    for name, arr in arrays.items():
        Image.fromarray(arr).save(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder, arrays


@pytest.fixture
def bundle_file(tmp_path, bundle):
    return save_bundle(bundle, tmp_path / "tiny.safetensors")


def run_detect(*args):
    return main(["detect", *map(str, args), "--no-progress"])


def test_detect_writes_images_json_voc_and_yolo(tmp_path, images, bundle_file, bundle):
    folder, arrays = images
    out = tmp_path / "out"
    assert run_detect(folder, "--model", bundle_file, "--out", out, "--conf", "0.3", "--voc-xml", "--yolo",
                      "--batch-size", "2") == 0
    doc = json.loads((out / "detections.json").read_text())
    assert [c["name"] for c in doc["categories"]] == ["cat", "dog"]
    assert [im["file_name"] for im in doc["images"]] == ["a.png", "b.png", "c.png"]
    assert [(im["height"], im["width"]) for im in doc["images"]] == [(150, 200), (120, 90), (80, 100)]
    ref = Detector(bundle, runtime="eager")
    for im in doc["images"]:
        stem = im["file_name"][:-4]
        arr = arrays[stem]
        want = ref(arr, conf=0.3)
        anns = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
        assert len(anns) == len(want) > 0
        xywh = torch.tensor([a["bbox"] for a in anns])
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1).float()
        torch.testing.assert_close(xyxy, want.boxes, atol=1e-3, rtol=0)
        assert [a["category_name"] for a in anns] == want.names()
        assert [a["category_id"] for a in anns] == want.labels.tolist()
        # annotated image, same size as the input
        drawn = Image.open(out / "annotated" / f"{stem}.png")
        assert drawn.size == (arr.shape[1], arr.shape[0])
        # VOC XML read back by multibox's own reader
        filename, size, objs = parse_voc_xml(out / "voc" / f"{stem}.xml")
        assert filename == f"{stem}.png" and size == arr.shape[:2]
        np.testing.assert_allclose(np.array([o.box for o in objs]), want.boxes.numpy(), atol=1e-3)
        assert [o.name for o in objs] == want.names()
        # YOLO: class cx cy w h normalized, class 0 = first object class
        rows = np.loadtxt(out / "yolo" / f"{stem}.txt", ndmin=2)
        h, w = arr.shape[:2]
        cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        np.testing.assert_allclose(boxes, want.boxes.numpy(), atol=1e-3 * max(h, w))
        assert rows[:, 0].astype(int).tolist() == [lab - 1 for lab in want.labels.tolist()]
    assert (out / "yolo" / "classes.txt").read_text() == "cat\ndog\n"


def test_detect_glob_files_and_duplicates(tmp_path, images, bundle_file):
    folder, _ = images
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(photo(seed=9)).save(other / "a.png")  # same stem as imgs/a.png
    out = tmp_path / "out"
    assert run_detect(str(folder / "*.png"), folder / "a.png", other / "a.png", "--model", bundle_file,
                      "--out", out, "--no-draw") == 0
    doc = json.loads((out / "detections.json").read_text())
    assert [im["source"] for im in doc["images"]] == [str(folder / "a.png"), str(folder / "b.png"),
                                                      str(folder / "c.png"), str(other / "a.png")]
    assert not (out / "annotated").exists()
    # the same stem twice: outputs do not overwrite each other
    assert run_detect(folder / "a.png", other / "a.png", "--model", bundle_file, "--out", out, "--yolo",
                      "--overwrite") == 0
    assert sorted(p.name for p in (out / "annotated").iterdir()) == ["a.png", "a_1.png"]
    assert sorted(p.name for p in (out / "yolo").iterdir()) == ["a.txt", "a_1.txt", "classes.txt"]


def test_detect_errors_name_the_file(tmp_path, images, bundle_file, capsys):
    folder, _ = images
    out = tmp_path / "out"
    assert run_detect(folder / "missing.jpg", "--model", bundle_file, "--out", out) == 2
    assert "missing.jpg" in capsys.readouterr().err
    bad = folder / "zz_broken.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    assert run_detect(bad, "--model", bundle_file, "--out", out) == 2
    err = capsys.readouterr().err
    assert "zz_broken.jpg" in err and "cannot decode" in err
    assert run_detect(str(tmp_path / "nothing" / "*.jpg"), "--model", bundle_file, "--out", out) == 2
    assert "matches no image" in capsys.readouterr().err
    assert run_detect(folder / "a.png", "--model", tmp_path / "nope.safetensors", "--out", out) == 2
    assert "nope.safetensors" in capsys.readouterr().err
    assert run_detect(folder / "a.png", "--model", "no-such-zoo-model", "--out", out) == 2
    assert "face-res10-300" in capsys.readouterr().err  # lists the zoo


def test_detect_video_without_opencv_is_a_clear_error(tmp_path, images, bundle_file, capsys, monkeypatch):
    import sys

    folder, _ = images
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    assert run_detect(video, "--model", bundle_file, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "clip.mp4" in err and "OpenCV" in err
    # images still work without OpenCV
    assert run_detect(folder / "a.png", "--model", bundle_file, "--out", tmp_path / "out", "--no-draw") == 0


def test_detect_video_frames_are_named_and_converted_from_bgr(tmp_path, bundle_file, bundle, monkeypatch):
    """A stand-in cv2 (3 BGR frames): frames <video>_f000000.., every --video-stride-th, read as RGB."""
    import sys
    import types

    frames = [photo(60, 80, seed=s) for s in range(3)]  # RGB

    class Capture:
        def __init__(self, path):
            self.path, self.i = path, 0

        def isOpened(self):  # noqa: N802 (OpenCV's name)
            return True

        def read(self):
            if self.i >= len(frames):
                return False, None
            self.i += 1
            return True, np.ascontiguousarray(frames[self.i - 1][..., ::-1])  # OpenCV gives BGR

        def get(self, prop):
            return float(len(frames))

        def release(self):
            pass

    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(VideoCapture=Capture, CAP_PROP_FRAME_COUNT=7))
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 16)
    out = tmp_path / "out"
    assert run_detect(video, "--model", bundle_file, "--out", out, "--video-stride", "2", "--conf", "0.3",
                      "--yolo") == 0
    doc = json.loads((out / "detections.json").read_text())
    assert [im["file_name"] for im in doc["images"]] == ["clip_f000000.png", "clip_f000002.png"]
    assert sorted(p.name for p in (out / "annotated").iterdir()) == ["clip_f000000.png", "clip_f000002.png"]
    ref = Detector(bundle, runtime="eager")
    for im, frame in zip(doc["images"], (frames[0], frames[2]), strict=True):
        anns = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
        want = ref(frame, conf=0.3)
        assert len(anns) == len(want)
        np.testing.assert_allclose([a["score"] for a in anns], want.scores.numpy(), atol=1e-5)
