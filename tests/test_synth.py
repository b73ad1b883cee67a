import xml.etree.ElementTree as ET
from collections import Counter

import numpy as np
import pytest

from multibox.cli import main
from multibox.data.synth import (
    CLASS_NAMES,
    SHAPE_CLASSES,
    SyntheticShapes,
    open_synthetic_voc,
    read_class_names,
    render_image,
    write_synthetic_voc,
)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "a"
    summary = write_synthetic_voc(root, 12, seed=5, size=96, test_fraction=0.25)
    return root, summary


def test_same_seed_gives_identical_bytes(written, tmp_path):
    root, _ = written
    again = tmp_path / "b"
    write_synthetic_voc(again, 12, seed=5, size=96, test_fraction=0.25, workers=2)  # worker count does not matter
    assert _files(root) == _files(again)
    other = tmp_path / "c"
    write_synthetic_voc(other, 12, seed=6, size=96, test_fraction=0.25)
    a, c = _files(root), _files(other)
    assert a.keys() == c.keys() and a["JPEGImages/000000.jpg"] != c["JPEGImages/000000.jpg"]


def test_layout_and_splits(written):
    root, summary = written
    main_dir = root / "ImageSets" / "Main"
    train = main_dir.joinpath("train.txt").read_text().split()
    test = main_dir.joinpath("test.txt").read_text().split()
    assert len(test) == 3 and len(train) == 9 and not set(train) & set(test)
    assert sorted(train + test) == [f"{i:06d}" for i in range(12)]
    assert main_dir.joinpath("trainval.txt").read_text().split() == train
    assert summary.train_ids == train and summary.test_ids == test
    assert read_class_names(root) == list(CLASS_NAMES)
    for i in train + test:
        assert (root / "JPEGImages" / f"{i}.jpg").is_file() and (root / "Annotations" / f"{i}.xml").is_file()
    assert not list(root.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_xml_is_valid_voc_with_one_based_boxes(written):
    root, _ = written
    ds = SyntheticShapes(12, seed=5, size=96)
    n_objects = 0
    for i in range(12):
        tree = ET.parse(root / "Annotations" / f"{i:06d}.xml").getroot()
        assert tree.tag == "annotation" and tree.findtext("filename") == f"{i:06d}.jpg"
        w, h = int(tree.findtext("size/width")), int(tree.findtext("size/height"))
        assert tree.findtext("size/depth") == "3" and max(w, h) == 96
        image, target = ds[i]
        assert image.shape == (h, w, 3)
        objs = tree.findall("object")
        assert len(objs) == len(target)
        for o, box, label, diff in zip(objs, target.boxes, target.labels, target.difficult, strict=True):
            assert o.findtext("name") == CLASS_NAMES[label] and o.findtext("name") in SHAPE_CLASSES
            for tag in ("truncated", "difficult"):
                assert o.findtext(tag) in ("0", "1")
            assert (o.findtext("difficult") == "1") == bool(diff)
            x0, y0, x1, y1 = (int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= x0 <= x1 <= w and 1 <= y0 <= y1 <= h  # 1-based inclusive pixel indices
            np.testing.assert_array_equal(box, [x0 - 1, y0 - 1, x1, y1])  # docs/design.md: subtract 1 from xmin/ymin
            n_objects += 1
    assert n_objects > 12


def test_class_balance_and_variety():
    counts = Counter()
    sizes = []
    empty = 0
    for i in range(60):
        _, objects = render_image(11, i, 128)
        counts.update(o.name for o in objects)
        sizes += [max(o.box[2] - o.box[0], o.box[3] - o.box[1]) for o in objects]
        empty += not objects
    assert set(counts) == set(SHAPE_CLASSES)
    mean = sum(counts.values()) / len(counts)
    assert all(0.6 * mean < c < 1.4 * mean for c in counts.values()), counts
    assert min(sizes) < 12 and max(sizes) > 60  # small to large objects
    assert empty < 10


def test_render_is_deterministic_and_in_memory_dataset_matches():
    a, oa = render_image(3, 7, 80)
    b, ob = render_image(3, 7, 80)
    assert np.array_equal(a, b) and oa == ob and a.dtype == np.uint8
    img, t = SyntheticShapes(8, seed=3, size=80)[7]
    assert np.array_equal(img, a) and t.image_id == "000007" and t.orig_size == a.shape[:2]
    assert t.boxes.dtype == np.float32 and (t.labels >= 1).all()


def test_cli_writes_dataset_and_refuses_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["data", "synth", str(out), "--num-images", "4", "--seed", "2", "--size", "64", "--no-progress"]) == 0
    assert "wrote 4 images" in capsys.readouterr().out
    assert len(list((out / "JPEGImages").glob("*.jpg"))) == 4
    assert main(["data", "synth", str(out), "--num-images", "4", "--no-progress"]) == 2
    assert main(["data", "synth", str(out), "--num-images", "4", "--size", "64", "--no-progress", "--overwrite"]) == 0


def test_reads_back_with_the_voc_dataset(written):
    root, summary = written
    ds = open_synthetic_voc(root, split="test")
    assert ds.class_names == list(CLASS_NAMES) and len(ds) == len(summary.test_ids)
    mem = SyntheticShapes(12, seed=5, size=96)
    for k in range(len(ds)):
        image, t = ds[k]
        ref_image, ref = mem[int(t.image_id)]
        assert image.shape == ref_image.shape
        corr = np.corrcoef(image.astype(float).ravel(), ref_image.astype(float).ravel())[0, 1]
        assert corr > 0.9  # the same picture, up to JPEG loss
        np.testing.assert_array_equal(t.boxes, ref.boxes)
        np.testing.assert_array_equal(t.labels, ref.labels)
        np.testing.assert_array_equal(t.difficult, ref.difficult)


def test_image_size_is_bounded_before_any_rendering(tmp_path, capsys):
    # --size 100000 tried to allocate a 32 GB array and died with a MemoryError traceback
    from multibox.data.synth import SyntheticShapes, render_image

    for call in (lambda: SyntheticShapes(4, size=100000), lambda: render_image(0, 0, size=100000),
                 lambda: write_synthetic_voc(tmp_path / "big", 2, size=100000)):
        with pytest.raises(ValueError, match=r"size 100000: .*exceeds 4096 pixels"):
            call()
    assert main(["data", "synth", str(tmp_path / "ds"), "--num-images", "2", "--size", "100000", "-q"]) == 2
    err = capsys.readouterr().err
    assert "size 100000" in err and "Traceback" not in err and not (tmp_path / "ds").exists()
