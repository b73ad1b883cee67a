"""Datasets in four formats on real files (deepforest VOC tiles, imgaug's quokka) and round trips between them.

The real files come from PyPI wheels through multibox.wheels (cached after the first download). These tests
never skip: without PyPI and without a cache they fail with RealDataUnavailable, which says what to fetch.
"""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from multibox.data import DetectionDataset, Target
from multibox.data.datasets import (
    COCODataset,
    ConcatDetectionDataset,
    CSVDataset,
    VOCDataset,
    YOLODataset,
    detect_format,
    open_dataset,
    write_dataset,
)
from multibox.data.real import EVALUATION_SAMPLES, deepforest_sample, deepforest_voc, quokka
from multibox.wheels import RealDataUnavailable, fetch_wheel_member


@pytest.fixture(scope="module")
def eval_voc(tmp_path_factory):
    """The two real evaluation tiles as a VOC root (split "test") with classes.txt."""
    return deepforest_voc(EVALUATION_SAMPLES, tmp_path_factory.mktemp("df") / "voc")


def _classes(root):
    return root / "classes.txt"


def test_deepforest_voc_boxes(eval_voc):
    ds = VOCDataset(eval_voc, split="test", classes=_classes(eval_voc))
    assert isinstance(ds, DetectionDataset)
    assert ds.class_names == ["background", "Alive", "Dead", "Tree"]
    assert [r.image_id for r in ds.records] == ["OSBS_029", "SOAP_061"]
    assert [len(r.target) for r in ds.records] == [61, 37]
    image, t = ds[0]
    assert image.shape == (400, 400, 3) and image.dtype == np.uint8
    assert isinstance(t, Target) and t.boxes.dtype == np.float32 and t.labels.dtype == np.int64
    assert t.orig_size == (400, 400) and set(t.labels.tolist()) == {3}  # OSBS_029: all Tree
    np.testing.assert_array_equal(t.boxes[0], [202, 66, 227, 90])  # XML 203 67 227 90, 1-based
    assert not t.difficult.any() and not t.iscrowd.any()
    soap = ds.target(1)
    assert {ds.class_names[k] for k in soap.labels} == {"Alive", "Dead"}
    assert (soap.boxes >= 0).all() and (soap.boxes[:, 2:] <= 400).all()
    assert ds.stats.boxes == 98 and ds.stats.boxes_clipped == 0 and not ds.stats.problems


def test_default_voc_classes_reject_tree_with_a_clear_error(eval_voc):
    with pytest.raises(ValueError, match="OSBS_029.xml: object 0 \\('Tree'\\): unknown class 'Tree'"):
        VOCDataset(eval_voc, split="test")
    ds = VOCDataset(eval_voc, split="test", unknown_classes="ignore")
    assert ds.class_names[1] == "aeroplane" and len(ds.class_names) == 21
    assert ds.stats.boxes == 0 and ds.stats.boxes_dropped_unknown_class == 98
    assert ds.stats.unknown_classes == {"Tree": 61, "Alive": 9, "Dead": 28}


def test_several_voc_roots_and_concat(tmp_path):
    r1 = deepforest_voc(["OSBS_029"], tmp_path / "a", split="trainval")
    r2 = deepforest_voc(["SOAP_061"], tmp_path / "b", split="trainval")
    classes = ["Alive", "Dead", "Tree"]
    both = VOCDataset([r1, r2], split="trainval", classes=classes)
    assert len(both) == 2 and both.stats.boxes == 98
    cat = ConcatDetectionDataset([VOCDataset(r1, classes=classes), VOCDataset(r2, classes=classes)])
    assert len(cat) == 2 and cat.stats.boxes == 98
    np.testing.assert_array_equal(cat[1][1].boxes, both[1][1].boxes)
    np.testing.assert_array_equal(cat.target(-1).labels, both.target(1).labels)
    with pytest.raises(ValueError, match="class lists differ"):
        ConcatDetectionDataset([VOCDataset(r1, classes=classes), VOCDataset(r2, classes=classes[::-1])])


def test_training_tile_loads(tmp_path):
    png, xml = deepforest_sample("2019_YELL_2_541000_4977000_image_crop")
    assert png.stat().st_size > 2_000_000
    root = deepforest_voc(["2019_YELL_2_541000_4977000_image_crop"], tmp_path / "yell", split="train")
    ds = VOCDataset(root, split="train", classes=["Tree"])
    assert ds.records[0].size == (1035, 1249) and len(ds.target(0)) == 279


def test_quokka_box_from_imgaug_json(tmp_path):
    jpg, js = quokka()
    ann = json.loads(js.read_text())
    (bb,) = ann["bounding_boxes"]
    rows = ["image_path,xmin,ymin,xmax,ymax,label", f"{jpg.name},{bb['x1']},{bb['y1']},{bb['x2']},{bb['y2']},"
            f"{bb['label']}"]
    (tmp_path / "q.csv").write_text("\n".join(rows) + "\n")
    ds = CSVDataset(tmp_path / "q.csv", image_dir=jpg.parent)
    image, t = ds[0]
    assert image.shape == (643, 960, 3)
    assert ds.class_names == ["background", "animal"]
    np.testing.assert_array_equal(t.boxes, [[148, 50, 550, 642]])


def test_real_files_fail_clearly_when_pypi_is_unreachable(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIBOX_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # what an offline machine sees, without waiting on timeouts
    with pytest.raises(RealDataUnavailable, match="imgaug==0.4.0") as e:
        fetch_wheel_member("imgaug", "0.4.0", "imgaug/quokka.jpg", "0" * 64)
    assert "pip download --no-deps" in str(e.value) and str(tmp_path / "empty-cache") in str(e.value)


def test_cached_member_is_verified(tmp_path, monkeypatch):
    jpg, _ = quokka()  # fills the default cache
    cache = tmp_path / "cache"
    member = cache / "imgaug-0.4.0" / "imgaug" / "quokka.jpg"
    member.parent.mkdir(parents=True)
    member.write_bytes(b"tampered")
    monkeypatch.setenv("MULTIBOX_CACHE", str(cache))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(RealDataUnavailable, match="cannot download"):
        quokka()  # the tampered copy is not trusted; the wheel has to be fetched again
    shutil.copy(jpg.parents[2] / next(p.name for p in jpg.parents[2].glob("imgaug-0.4.0-*.whl")), cache)
    assert quokka()[0].read_bytes() == jpg.read_bytes()  # re-extracted from the cached wheel, offline


# --------------------------------------------------------------------------------------------- other formats

def _png(path, h, w):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 60, np.uint8)).save(path)


def test_coco_classes_by_category_id_and_flags(tmp_path):
    _png(tmp_path / "images" / "a.png", 40, 50)
    _png(tmp_path / "images" / "b.png", 30, 20)
    data = {
        "images": [{"id": 10, "file_name": "a.png", "width": 50, "height": 40},
                   {"id": 11, "file_name": "b.png", "width": 20, "height": 30}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [1.5, 2, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 50, 40], "iscrowd": 1},
            {"id": 3, "image_id": 10, "category_id": 7, "bbox": [5, 5, 4, 4], "difficult": 1},
        ],
        "categories": [{"id": 7, "name": "person"}, {"id": 3, "name": "car"}],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    ds = COCODataset(tmp_path / "annotations.json")
    assert ds.class_names == ["background", "car", "person"]  # sorted by category id: 3, 7
    assert ds.image_dir == tmp_path / "images"
    t = ds.target(0)
    assert t.image_id == "10"
    np.testing.assert_allclose(t.boxes, [[1.5, 2, 11.5, 22], [0, 0, 50, 40], [5, 5, 9, 9]])
    assert t.labels.tolist() == [2, 1, 2]
    assert t.iscrowd.tolist() == [False, True, False] and t.difficult.tolist() == [False, False, True]
    assert len(ds.target(1)) == 0  # an image without annotations is normal
    assert detect_format(tmp_path) == "coco" and len(open_dataset(tmp_path)) == 2


def test_yolo_layouts(tmp_path):
    root = tmp_path / "ultra"
    _png(root / "images" / "train" / "a.png", 40, 80)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.25 0.5\n\n0 0.1 0.1 0.2 0.2\n")
    _png(root / "images" / "train" / "b.png", 10, 10)  # no label file: no boxes, a warning
    (root / "data.yaml").write_text("names: {0: cat, 1: dog}\n")
    ds = YOLODataset(root, split="train")
    assert ds.class_names == ["background", "cat", "dog"]
    t = ds.target(0)
    np.testing.assert_allclose(t.boxes, [[30, 10, 50, 30], [0, 0, 16, 8]], atol=1e-5)
    assert t.labels.tolist() == [2, 1]
    assert len(ds.target(1)) == 0 and [p.kind for p in ds.stats.warnings] == ["missing_label_file"]
    flat = tmp_path / "darknet"
    _png(flat / "x.png", 20, 20)
    (flat / "x.txt").write_text("0 0.5 0.5 1 1\n")
    (flat / "obj.names").write_text("thing\n")
    assert detect_format(flat) == "yolo"
    np.testing.assert_allclose(open_dataset(flat).target(0).boxes, [[0, 0, 20, 20]])


def test_csv_styles(tmp_path):
    _png(tmp_path / "imgs" / "a.jpg", 30, 40)
    _png(tmp_path / "imgs" / "b.jpg", 30, 40)
    (tmp_path / "deepforest.csv").write_text(
        "image_path,xmin,ymin,xmax,ymax,label\na.jpg,1,2,11,12,Tree\nb.jpg,,,,,\na.jpg,0,0,40,30,Snag\n")
    ds = CSVDataset(tmp_path / "deepforest.csv", image_dir=tmp_path / "imgs")
    assert ds.class_names == ["background", "Snag", "Tree"]
    assert [r.image_id for r in ds.records] == ["a", "b"]
    np.testing.assert_array_equal(ds.target(0).boxes, [[1, 2, 11, 12], [0, 0, 40, 30]])
    assert ds.target(0).labels.tolist() == [2, 1] and len(ds.target(1)) == 0
    # Udacity (crowdai) order: xmin,xmax,ymin,ymax,Frame,Label
    (tmp_path / "imgs" / "labels.csv").write_text("xmin,xmax,ymin,ymax,Frame,Label,Preview URL\n"
                                                  "1,11,2,12,a.jpg,Car,http://x\n")
    ud = CSVDataset(tmp_path / "imgs" / "labels.csv", classes=["Car", "Truck"])
    np.testing.assert_array_equal(ud.target(0).boxes, [[1, 2, 11, 12]])
    assert ud.class_names == ["background", "Car", "Truck"]


# --------------------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("fmt", ["coco", "yolo", "csv"])
def test_round_trip_voc_fmt_voc_keeps_boxes_and_names(eval_voc, tmp_path, fmt):
    src = VOCDataset(eval_voc, split="test", classes=_classes(eval_voc))
    write_dataset(src, tmp_path / fmt, fmt, split="test")
    mid = open_dataset(tmp_path / fmt, format=fmt, split="test")
    assert mid.class_names == src.class_names
    write_dataset(mid, tmp_path / "back", "voc", split="test")
    back = open_dataset(tmp_path / "back", format="voc", split="test")
    assert back.class_names == src.class_names
    assert [r.path.name for r in back.records] == ["OSBS_029.png", "SOAP_061.png"]
    for a, b, m in zip(src.records, back.records, mid.records, strict=True):
        np.testing.assert_allclose(m.target.boxes, a.target.boxes, atol=1e-3)
        np.testing.assert_allclose(b.target.boxes, a.target.boxes, atol=1e-3)
        assert b.target.labels.tolist() == a.target.labels.tolist()
        assert b.image_id == a.image_id and b.size == a.size
        assert b.path.read_bytes() == a.path.read_bytes()


def test_flags_survive_voc_coco_voc_and_are_counted_when_lost(tmp_path):
    root = tmp_path / "voc"
    _png(root / "JPEGImages" / "p.png", 50, 60)
    (root / "Annotations").mkdir()
    (root / "Annotations" / "p.xml").write_text(
        "<annotation><filename>p.png</filename>"
        "<object><name>dog</name><difficult>1</difficult><bndbox><xmin>1.5</xmin><ymin>2</ymin><xmax>30.25</xmax>"
        "<ymax>40</ymax></bndbox></object>"
        "<object><name>cat</name><iscrowd>1</iscrowd><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>60</xmax>"
        "<ymax>50</ymax></bndbox></object></annotation>")
    src = VOCDataset(root, split=None, classes=["cat", "dog"])
    write_dataset(src, tmp_path / "coco", "coco")
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert [a["difficult"] for a in coco["annotations"]] == [1, 0]
    assert [a["iscrowd"] for a in coco["annotations"]] == [0, 1]
    assert coco["annotations"][0]["bbox"] == [0.5, 1.0, 29.75, 39.0]
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    back_dir = tmp_path / "back"
    write_dataset(COCODataset(tmp_path / "coco" / "annotations.json"), back_dir, "voc")
    back = VOCDataset(back_dir, split=None, classes=back_dir / "classes.txt")
    t, s = back.target(0), src.target(0)
    np.testing.assert_allclose(t.boxes, s.boxes, atol=1e-3)
    assert t.difficult.tolist() == [True, False] and t.iscrowd.tolist() == [False, True]
    assert "<xmin>1.5</xmin>" in (back_dir / "Annotations" / "p.xml").read_text()
    report = write_dataset(src, tmp_path / "yolo", "yolo")
    assert report.lost == {"difficult": 1, "iscrowd": 1}
    assert any("difficult" in w for w in report.warnings())
    assert VOCDataset(root, split=None, classes=["cat", "dog"], drop_difficult=True).stats.boxes_dropped_difficult == 1


def test_open_dataset_joins_voc_roots_and_can_trust_annotated_sizes(tmp_path):
    r1 = deepforest_voc(["OSBS_029"], tmp_path / "a", split="trainval")
    r2 = deepforest_voc(["SOAP_061"], tmp_path / "b", split="trainval")
    ds = open_dataset(f"{r1}:{r2}", split="trainval", classes=["Alive", "Dead", "Tree"])
    assert detect_format(r1) == "voc" and len(ds) == 2 and ds.stats.boxes == 98
    (r1 / "JPEGImages" / "OSBS_029.png").rename(r1 / "JPEGImages" / "elsewhere.png")
    with pytest.raises(ValueError, match="OSBS_029.tif: no such image file"):
        VOCDataset(r1, classes=["Tree"])
    fast = VOCDataset(r1, classes=["Tree"], image_sizes="annotation")  # the XML's <size>, no image opened
    assert fast.records[0].size == (400, 400) and len(fast.target(0)) == 61
