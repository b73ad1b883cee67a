"""Hostile and broken dataset files: clear errors naming the file, nothing read or written outside the dataset."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import multibox
from multibox.cli import main
from multibox.data.datasets import AnnotationError, COCODataset, VOCDataset, YOLODataset, open_dataset
from multibox.data.shards import ShardDataset, ShardError, pack_dataset
from multibox.data.synth import write_synthetic_voc

SRC = str(Path(multibox.__file__).resolve().parents[1])  # the multibox under test, for the subprocess


def _png(path, h=24, w=32, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)
    return path


def _voc(root, filename, stem="a"):
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(exist_ok=True)
    (root / "Annotations" / f"{stem}.xml").write_text(
        f"<annotation><filename>{filename}</filename><object><name>cat</name><bndbox><xmin>2</xmin><ymin>2</ymin>"
        "<xmax>10</xmax><ymax>10</ymax></bndbox></object></annotation>")
    return root


def _coco(path, images, annotations=(), categories=({"id": 1, "name": "cat"},)):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": list(images), "annotations": list(annotations),
                                "categories": list(categories)}))
    return path


# ------------------------------------------------------------------------------ paths leaving the dataset


def test_voc_filename_leaving_the_root_is_refused_by_reader_and_convert(tmp_path, capsys):
    secret = _png(tmp_path / "elsewhere" / "secret.png")
    root = _voc(tmp_path / "data" / "voc", "../../../elsewhere/secret.png")
    with pytest.raises(AnnotationError, match=r"a\.xml: image path '\.\./\.\./\.\./elsewhere/secret\.png' leaves"):
        VOCDataset(root, split=None, classes=["cat"])
    assert main(["data", "convert", str(root), str(tmp_path / "out"), "--to", "coco", "--classes", "cat"]) == 2
    err = capsys.readouterr().err
    assert "multibox data convert: error:" in err and "a.xml" in err and "secret.png" in err
    assert not (tmp_path / "out" / "images" / "secret.png").exists()
    # explicitly allowed: read and copied
    assert main(["data", "convert", str(root), str(tmp_path / "out2"), "--to", "coco", "--classes", "cat",
                 "--allow-outside-root"]) == 0
    assert (tmp_path / "out2" / "images" / "secret.png").read_bytes() == secret.read_bytes()


def test_paths_leaving_a_relative_dataset_root_are_refused(tmp_path, monkeypatch, capsys):
    # The dataset named as a user types it (relative to the working folder): the image path then starts with the
    # root, and joining it to the root once more hid the `..` escape (the secret file was copied out).
    secret = _png(tmp_path / "secret.png")
    _voc(tmp_path / "d" / "v", "../../../secret.png")
    _coco(tmp_path / "c" / "annotations.json", [{"id": 1, "file_name": "../../secret.png", "width": 32,
                                                 "height": 24}])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AnnotationError, match=r"a\.xml: image path '\.\./\.\./\.\./secret\.png' leaves"):
        VOCDataset("d/v", split=None, classes=["cat"])
    with pytest.raises(AnnotationError, match=r"annotations\.json: image path .*secret\.png' leaves"):
        COCODataset("c/annotations.json")
    assert main(["data", "convert", "d/v", "out", "--to", "coco", "--classes", "cat"]) == 2
    assert "leaves the dataset" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert secret.is_file()


def test_coco_absolute_file_name_is_refused(tmp_path, capsys):
    secret = _png(tmp_path / "elsewhere" / "secret.png")
    ann = _coco(tmp_path / "coco" / "annotations.json", [{"id": 1, "file_name": str(secret)}])
    _png(tmp_path / "coco" / "ok.png")
    with pytest.raises(AnnotationError, match="annotations.json: image path .*secret.png' leaves"):
        COCODataset(ann)
    assert main(["data", "check", str(ann), "--no-decode"]) == 1  # check reports it as an error
    assert "leaves the dataset" in capsys.readouterr().err


# ------------------------------------------------------------------------------ outputs inside the source


def test_pack_and_convert_refuse_an_output_inside_or_equal_to_the_source(tmp_path, capsys):
    src = tmp_path / "voc"
    write_synthetic_voc(src, 3, seed=0, size=48, profile="easy")
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    assert main(["data", "pack", str(src), str(src / "packed"), "--shard-size", "2", "--quiet"]) == 2
    assert "overlaps the source" in capsys.readouterr().err
    assert main(["data", "pack", str(src), str(src), "--shard-size", "2", "--overwrite", "--quiet"]) == 2
    assert "overlaps the source" in capsys.readouterr().err
    assert main(["data", "convert", str(src), str(src), "--to", "coco", "--overwrite"]) == 2
    assert "overlaps the source" in capsys.readouterr().err
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before  # no dataset.json, no packed/


def test_output_that_is_a_file_fails_before_work(tmp_path, capsys):
    src = tmp_path / "voc"
    write_synthetic_voc(src, 2, seed=0, size=48, profile="easy")
    afile = tmp_path / "file"
    afile.write_text("x")
    for argv in (["data", "convert", str(src), str(afile), "--to", "coco"],
                 ["data", "pack", str(src), str(afile), "--shard-size", "2"],
                 ["data", "synth", str(afile), "--num-images", "2"],
                 ["data", "check", str(src), "--out", str(afile)]):
        assert main(argv) == 2, argv
        assert "not a folder" in capsys.readouterr().err
    assert afile.read_text() == "x"


# ------------------------------------------------------------------------------ truncated images


def _voc_with_cut_jpeg(root):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    _voc(root, "cut.jpg", stem="cut")
    (root / "JPEGImages" / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])  # header intact
    _voc(root, "ok.png", stem="ok")
    _png(root / "JPEGImages" / "ok.png")
    return root


def test_convert_fails_on_a_truncated_jpeg_naming_it_unless_told_to_skip(tmp_path, capsys):
    root = _voc_with_cut_jpeg(tmp_path / "voc")
    assert main(["data", "convert", str(root), str(tmp_path / "o1"), "--to", "coco", "--classes", "cat",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cut.jpg" in err and "truncated" in err and "--skip-bad-images" in err
    assert not (tmp_path / "o1" / "annotations.json").exists()
    assert main(["data", "convert", str(root), str(tmp_path / "o2"), "--to", "coco", "--classes", "cat",
                 "--skip-bad-images", "--quiet"]) == 0
    coco = json.loads((tmp_path / "o2" / "annotations.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["ok.png"]
    assert "left out" in capsys.readouterr().err


# ------------------------------------------------------------------------------ VOC ids with spaces


def test_convert_to_voc_of_ids_with_spaces_reads_back_equal(tmp_path):
    src = tmp_path / "csv"
    _png(src / "my cat.png", value=10)
    _png(src / "my_cat.png", value=20)  # what the sanitized name of the first would clash with
    _png(src / "dog\tone.png", value=30)
    (src / "annotations.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\nmy cat.png,1,2,10,12,cat\n"
                                         "my_cat.png,3,4,20,14,cat\ndog\tone.png,5,5,9,9,dog\n")
    a = open_dataset(src)
    assert main(["data", "convert", str(src), str(tmp_path / "voc"), "--to", "voc", "--quiet"]) == 0
    b = open_dataset(tmp_path / "voc", split="all")
    assert len(b) == len(a) == 3 and b.class_names == a.class_names
    ids = [r.image_id for r in b.records]
    assert len(set(ids)) == 3 and not any(c.isspace() for i in ids for c in i)
    for ra, rb in zip(a.records, b.records, strict=True):
        np.testing.assert_array_equal(ra.target.boxes, rb.target.boxes)
        np.testing.assert_array_equal(ra.target.labels, rb.target.labels)
        assert np.array_equal(np.asarray(Image.open(ra.path)), np.asarray(Image.open(rb.path)))


# ------------------------------------------------------------------------------ shard index


def test_shard_index_with_negative_samples_is_refused(tmp_path):
    src = tmp_path / "voc"
    write_synthetic_voc(src, 4, seed=0, size=48, profile="easy", test_fraction=0)
    pack_dataset(open_dataset(src, split="train"), tmp_path / "p", max_samples=2, progress=False)
    index = tmp_path / "p" / "dataset.json"
    doc = json.loads(index.read_text())
    assert len(ShardDataset(tmp_path / "p")) == 4
    doc["shards"][0]["samples"] = -5
    index.write_text(json.dumps(doc))
    with pytest.raises(ShardError, match=r"dataset\.json: shard 0 .*samples -5"):
        ShardDataset(tmp_path / "p")
    doc["shards"][0]["samples"] = 2
    doc["num_samples"] = 7
    index.write_text(json.dumps(doc))
    with pytest.raises(ShardError, match="num_samples 7"):
        ShardDataset(tmp_path / "p")


# ------------------------------------------------------------------------------ COCO and JSON


def test_duplicate_coco_annotation_ids_name_file_and_id(tmp_path):
    _png(tmp_path / "a.png")
    box = {"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}
    ann = _coco(tmp_path / "c.json", [{"id": 1, "file_name": "a.png"}],
                [{"id": 7, **box}, {"id": 7, **box}])
    with pytest.raises(AnnotationError, match=r"c\.json: annotation 1.*duplicate annotation id 7"):
        COCODataset(ann)


@pytest.mark.parametrize("images, match", [
    ([{"id": 1, "file_name": 5}], "'file_name' is 5"),
    ([{"id": [1], "file_name": "a.png"}], r"image 'id' is \[1\]"),
    ([{"id": {"x": 1}, "file_name": "a.png"}], "image 'id' is"),
    ([{"id": 1, "file_name": "a.png", "width": -1, "height": 20}], "image size -1 x 20 is negative"),
])
def test_coco_bad_field_types_are_clear_errors(tmp_path, capsys, images, match):
    _png(tmp_path / "a.png")
    ann = _coco(tmp_path / "c.json", images)
    with pytest.raises(AnnotationError, match=match):
        COCODataset(ann)
    for cmd in (["data", "check", str(ann)], ["data", "convert", str(ann), str(tmp_path / "o"), "--to", "voc"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert "c.json" in err and "Traceback" not in err


def test_deeply_nested_json_is_a_clear_error(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(AnnotationError, match="deep.json: .*nested too deeply"):
        COCODataset(deep)
    assert main(["data", "check", str(deep)]) == 2
    assert "deep.json" in capsys.readouterr().err
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "dataset.json").write_text('{"format": "multibox-shards", "x": ' + "[" * 100000)
    with pytest.raises(ShardError, match="dataset.json"):
        ShardDataset(tmp_path / "p")


@pytest.mark.parametrize("yaml_text, match", [
    ("- a\n- b\n", "expected a mapping"),
    ("names: cat\n", "'names' must be a list"),
    ("names: {0: a, 2: b}\n", "indices must be"),
    ("names: [a, b\n", "not a readable YAML"),
    ("names: {a: 1}\n", "keys must be class indices"),
    ("nc: 2\nnames: [a]\n", r"'nc' is 2 but 'names' has 1 class"),
    ("nc: two\nnames: [a]\n", r"'nc' is 'two', not a class count"),
])
def test_malformed_yolo_data_yaml(tmp_path, capsys, yaml_text, match):
    root = tmp_path / "yolo"
    _png(root / "images" / "a.png")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text(yaml_text)
    with pytest.raises(ValueError, match=match):
        YOLODataset(root)
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert "data.yaml" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ synth killed with SIGKILL


def _children(pid):
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out |= {int(x) for x in text}
    return out


def _alive(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_synth_leaves_no_workers_and_its_temp_folder_is_cleaned_next_run(tmp_path):
    out = tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-m", "multibox", "data", "synth", str(out), "--num-images", "100000",
                             "--size", "48", "--profile", "easy", "--workers", "2", "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = out.with_name(f"ds.tmp-{proc.pid}")
    deadline = time.monotonic() + 60
    workers: set[int] = set()
    while time.monotonic() < deadline and not (len(workers) >= 2 and len(list(tmp.glob("JPEGImages/*.jpg"))) > 4):
        time.sleep(0.05)
        workers = _children(proc.pid) if proc.poll() is None else workers
    assert len(workers) >= 2, "the workers never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "rendering workers outlived their killed parent"
    assert tmp.is_dir() and not out.exists()  # the killed run's output never took the final name
    assert main(["data", "synth", str(out), "--num-images", "3", "--size", "48", "--profile", "easy", "--quiet"]) == 0
    assert not tmp.exists() and len(list((out / "JPEGImages").glob("*.jpg"))) == 3


# ------------------------------------------------------------------------------ command-line conventions


def test_data_commands_json_quiet_and_renamed_options(tmp_path, capsys):
    src = tmp_path / "voc"
    assert main(["data", "synth", str(src), "--num-images", "3", "--size", "48", "--profile", "easy",
                 "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["data", "check", str(src), "--json", str(tmp_path / "r.json"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["images"] == 3 and rep["ok"] and rep["format"] == "voc"
    assert main(["data", "check", str(src), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3
    assert main(["data", "convert", str(src), str(tmp_path / "c"), "--to", "csv", "--quiet"]) == 0
    assert main(["data", "pack", str(src), str(tmp_path / "p"), "--shard-size", "2", "--quiet",
                 "--json", str(tmp_path / "s.json")]) == 0
    assert capsys.readouterr().out == ""
    assert json.loads((tmp_path / "s.json").read_text())["num_samples"] == 3
    for argv in (["data", "synth", str(tmp_path / "x"), "--images", "3"],
                 ["data", "convert", str(src), str(tmp_path / "c"), "--to", "csv", "--force"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
