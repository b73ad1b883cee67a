"""``multibox data convert`` and ``multibox data check`` on real and broken datasets; the source stays intact."""

import hashlib
import io
import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from multibox.cli import main
from multibox.data.datasets import open_dataset
from multibox.data.real import EVALUATION_SAMPLES, deepforest_voc


def tree_hash(root):
    """sha256 over every path, mode and content under ``root``."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        h.update(str(stat.S_IMODE(p.lstat().st_mode)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _set_writable(root, writable):
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture(scope="module")
def eval_voc(tmp_path_factory):
    return deepforest_voc(EVALUATION_SAMPLES, tmp_path_factory.mktemp("df") / "voc")


@pytest.mark.parametrize("cmd", [["data"], ["data", "convert"], ["data", "check"]])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: multibox" in capsys.readouterr().out


def test_source_is_never_modified_by_load_convert_check(eval_voc, tmp_path, capsys):
    before = tree_hash(eval_voc)
    _set_writable(eval_voc, False)  # opened read-only: a write attempt would fail (unless running as root)
    try:
        for fmt in ("coco", "yolo", "csv", "voc"):
            assert main(["data", "convert", str(eval_voc), str(tmp_path / fmt), "--from", "voc", "--to", fmt,
                         "--split", "test"]) == 0
        assert main(["data", "convert", str(eval_voc), str(tmp_path / "linked"), "--to", "coco", "--split", "test",
                     "--link", "hardlink"]) == 0
        assert main(["data", "check", str(eval_voc), "--split", "test", "--out", str(tmp_path / "report")]) == 0
        ds = open_dataset(eval_voc, split="test")
        ds[0], ds[1]
    finally:
        _set_writable(eval_voc, True)
    assert tree_hash(eval_voc) == before
    out = capsys.readouterr().out
    assert "wrote coco" in out and "98 boxes" in out and "3 classes (Alive, Dead, Tree)" in out
    linked = tmp_path / "linked" / "images" / "OSBS_029.png"
    assert linked.stat().st_ino == (eval_voc / "JPEGImages" / "OSBS_029.png").stat().st_ino
    # every converted copy reads back with the same boxes and class names
    for fmt in ("coco", "yolo", "csv", "voc"):
        ds = open_dataset(tmp_path / fmt, format=fmt, split="test")
        assert ds.class_names == ["background", "Alive", "Dead", "Tree"]
        assert [len(r.target) for r in ds.records] == [61, 37]
    assert not list(tmp_path.rglob("*.tmp"))  # no half-written files left behind


def test_check_report_and_montage(eval_voc, tmp_path, capsys):
    assert main(["data", "check", str(eval_voc), "--split", "test", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Tree" in out and "sqrt(box area) px" in out and "0 errors" in out
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["format"] == "voc" and rep["images"] == 2 and rep["boxes"] == 98 and rep["ok"]
    assert rep["per_class"]["Tree"] == {"images": 1, "boxes": 61, "difficult": 0, "iscrowd": 0}
    assert rep["per_class"]["Alive"]["boxes"] + rep["per_class"]["Dead"]["boxes"] == 37
    q = rep["box_sqrt_area_px"]
    assert 5 < q["q00"] <= q["q50"] <= q["q100"] < 400
    assert 0 < rep["box_aspect_ratio_w_over_h"]["q50"] < 3
    with Image.open(tmp_path / "montage.png") as m:
        assert m.format == "PNG" and m.size[0] >= 400


def _broken_voc(root):
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    good = Image.fromarray(np.full((40, 60, 3), 90, np.uint8))
    good.save(root / "JPEGImages" / "good.png")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "JPEGImages" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # header intact

    def obj(name, box):
        b = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True))
        return f"<object><name>{name}</name><bndbox>{b}</bndbox></object>"

    (root / "Annotations" / "good.xml").write_text(
        "<annotation><filename>good.png</filename>" + obj("cat", (1, 1, 20, 20)) + obj("cat", (5, "nan", 9, 9))
        + obj("dog", (50, 10, 90, 30)) + obj("dog", (30, 30, 10, 35)) + "</annotation>")
    (root / "Annotations" / "cut.xml").write_text("<annotation><filename>cut.jpg</filename>"
                                                  + obj("cat", (1, 1, 9, 9)) + "</annotation>")
    (root / "Annotations" / "evil.xml").write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]>'
                                                   "<annotation><filename>good.png</filename></annotation>")
    return root


def test_check_reports_every_problem_and_fails(tmp_path, capsys):
    root = _broken_voc(tmp_path / "broken")
    assert main(["data", "check", str(root), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "unsafe XML" in captured.err
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert not rep["ok"]
    by_kind = {}
    for p in rep["problems"]:
        by_kind.setdefault(p["kind"], []).append(p)
    assert set(by_kind) == {"bad_number", "inverted_box", "unsafe_xml", "image_unreadable", "box_clipped"}
    (nan,) = by_kind["bad_number"]
    assert nan["path"].endswith("good.xml") and nan["index"] == 1 and nan["name"] == "cat"
    assert by_kind["inverted_box"][0]["index"] == 3
    assert by_kind["image_unreadable"][0]["path"].endswith("cut.jpg")
    assert rep["errors"] == 4 and rep["stats"]["boxes_clipped"] == 1
    assert rep["images"] == 1 and rep["boxes"] == 2  # the good image keeps its two valid boxes
    assert (tmp_path / "out" / "montage.png").is_file()


def test_convert_refuses_unsafe_destinations_and_strict_errors(eval_voc, tmp_path, capsys):
    inside = eval_voc / "converted"
    assert main(["data", "convert", str(eval_voc), str(inside), "--to", "coco", "--split", "test"]) == 2
    assert "overlaps the source" in capsys.readouterr().err and not inside.exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert main(["data", "convert", str(eval_voc), str(tmp_path / "full"), "--to", "csv", "--split", "test"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["data", "convert", str(eval_voc), str(tmp_path / "full"), "--to", "csv", "--split", "test",
                 "--overwrite"]) == 0
    broken = _broken_voc(tmp_path / "broken")
    assert main(["data", "convert", str(broken), str(tmp_path / "b1"), "--to", "coco"]) == 2
    assert "unsafe XML" in capsys.readouterr().err
    assert main(["data", "convert", str(broken), str(tmp_path / "b2"), "--to", "coco", "--lenient"]) == 0
    err = capsys.readouterr().err
    assert "left out" in err and "cut.jpg" in err
    coco = json.loads((tmp_path / "b2" / "annotations.json").read_text())
    # cut.jpg's header is intact, but it does not decode fully: --lenient leaves it out instead of copying it
    assert [im["file_name"] for im in coco["images"]] == ["good.png"] and len(coco["annotations"]) == 2


def test_convert_to_yolo_warns_about_lost_flags_and_symlinks(tmp_path, capsys):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / "JPEGImages" / "a.png")
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.png</filename><object><name>dog</name><difficult>1</difficult><bndbox><xmin>1"
        "</xmin><ymin>1</ymin><xmax>10</xmax><ymax>10</ymax></bndbox></object></annotation>")
    assert main(["data", "convert", str(root), str(tmp_path / "y"), "--from", "voc", "--to", "yolo",
                 "--classes", "cat,dog", "--link", "symlink"]) == 0
    err = capsys.readouterr().err
    assert "yolo cannot hold the difficult flag: 1 difficult boxes" in err
    img = tmp_path / "y" / "images" / "a.png"
    assert img.is_symlink() and os.readlink(img) == str((root / "JPEGImages" / "a.png").resolve())
    label = (tmp_path / "y" / "labels" / "a.txt").read_text()
    assert label == "1 0.1666666667 0.1666666667 0.3333333333 0.3333333333\n"  # dog: class 1, 0-based
    assert (tmp_path / "y" / "classes.txt").read_text() == "cat\ndog\n"
