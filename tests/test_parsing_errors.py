"""Safe and strict parsing: malicious XML, bad numbers, missing fields, broken and hostile image files."""

import io
import json
import resource
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from multibox.data import image_size, load_image, to_rgb
from multibox.data.datasets import AnnotationError, COCODataset, CSVDataset, VOCDataset, YOLODataset
from multibox.data.image_io import ImageDecodeError


def _obj(name="cat", box=("11", "21", "40", "45"), difficult="0", skip=()):
    tags = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
                   if t not in skip)
    bndbox = "" if "bndbox" in skip else f"<bndbox>{tags}</bndbox>"
    name_tag = "" if "name" in skip else f"<name>{name}</name>"
    return f"<object>{name_tag}<difficult>{difficult}</difficult>{bndbox}</object>"


def make_voc(root, objects, image_size=(48, 64), name="img1", header="", image=True):
    """A one-image VOC root; ``objects`` are XML snippets; the image is a gray PNG of ``image_size`` (h, w)."""
    h, w = image_size
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    xml = (f"{header}<annotation><filename>{name}.png</filename><size><width>{w}</width><height>{h}</height>"
           f"<depth>3</depth></size>{''.join(objects)}</annotation>")
    (root / "Annotations" / f"{name}.xml").write_text(xml)
    if image:
        Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(root / "JPEGImages" / f"{name}.png")
    split = root / "ImageSets" / "Main" / "trainval.txt"
    split.write_text((split.read_text() if split.exists() else "") + f"{name}\n")
    return root / "Annotations" / f"{name}.xml"


# --------------------------------------------------------------------------------------------- XML attacks

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
"""


@pytest.mark.parametrize("header, body_name", [
    (BILLION_LAUGHS, "&lol4;"),  # entity expansion bomb
    ('<?xml version="1.0"?>\n<!DOCTYPE annotation SYSTEM "http://example.com/voc.dtd">\n', "cat"),  # a DTD
    ('<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n', "&xxe;"),
])
def test_unsafe_xml_is_rejected_naming_the_file(tmp_path, header, body_name):
    xml = make_voc(tmp_path, [_obj(name=body_name)], header=header)
    t0 = time.perf_counter()
    with pytest.raises(AnnotationError, match="unsafe XML") as e:
        VOCDataset(tmp_path, classes=["cat"])
    assert time.perf_counter() - t0 < 2
    assert str(xml) in str(e.value) and e.value.kind == "unsafe_xml"


def test_malformed_xml_names_the_file(tmp_path):
    xml = make_voc(tmp_path, [_obj()])
    xml.write_text("<annotation><object><name>cat</name>")
    with pytest.raises(AnnotationError, match="not well-formed") as e:
        VOCDataset(tmp_path, classes=["cat"])
    assert str(xml) in str(e.value)


# --------------------------------------------------------------------------------------------- bad numbers

@pytest.mark.parametrize("value, match", [
    ("nan", "not a finite number"), ("NaN", "not a finite number"), ("inf", "not a finite number"),
    ("-Infinity", "not a finite number"), ("1e999", "not a finite number"), ("abc", "not a number"),
    ("12px", "not a number"), ("", "missing"),
])
def test_voc_bad_coordinates_name_file_object_and_field(tmp_path, value, match):
    xml = make_voc(tmp_path, [_obj(), _obj(name="dog", box=("5", value, "30", "30"))])
    with pytest.raises(AnnotationError, match=match) as e:
        VOCDataset(tmp_path, classes=["cat", "dog"])
    msg = str(e.value)
    assert str(xml) in msg and "object 1 ('dog')" in msg and "<ymin>" in msg
    assert e.value.index == 1 and e.value.name == "dog"


@pytest.mark.parametrize("skip, field", [(("name",), "<name>"), (("bndbox",), "<bndbox>"), (("xmax",), "<xmax>")])
def test_voc_missing_tags(tmp_path, skip, field):
    xml = make_voc(tmp_path, [_obj(skip=skip)])
    with pytest.raises(AnnotationError, match=f"missing .*{field}") as e:
        VOCDataset(tmp_path, classes=["cat"])
    assert str(xml) in str(e.value) and "object 0" in str(e.value) and e.value.kind == "missing_field"


def test_voc_inverted_box_is_an_error(tmp_path):
    make_voc(tmp_path, [_obj(box=("40", "21", "11", "45"))])
    with pytest.raises(AnnotationError, match="inverted box") as e:
        VOCDataset(tmp_path, classes=["cat"])
    assert "object 0 ('cat')" in str(e.value)


def test_bad_difficult_flag(tmp_path):
    make_voc(tmp_path, [_obj(difficult="maybe")])
    with pytest.raises(AnnotationError, match="<difficult>"):
        VOCDataset(tmp_path, classes=["cat"])


def test_unknown_class_error_or_ignored_and_counted(tmp_path):
    make_voc(tmp_path, [_obj(), _obj(name="zebra"), _obj(name="zebra")])
    with pytest.raises(AnnotationError, match="unknown class 'zebra'") as e:
        VOCDataset(tmp_path, classes=["cat"])
    assert "object 1" in str(e.value)
    ds = VOCDataset(tmp_path, classes=["cat"], unknown_classes="ignore")
    assert len(ds.target(0)) == 1
    assert ds.stats.boxes_dropped_unknown_class == 2 and ds.stats.unknown_classes == {"zebra": 2}


def test_clipping_and_degenerate_boxes_are_counted(tmp_path):
    # image 64 wide, 48 high; VOC 1-based: (1, 1, 64, 48) is exactly the whole image
    make_voc(tmp_path, [
        _obj(box=("1", "1", "64", "48")),          # whole image: untouched
        _obj(box=("-9", "10", "80", "30")),        # sticks out left and right: clipped to 0..64
        _obj(box=("20", "20", "20.5", "30")),      # 1.5 px wide after the 1-based shift: kept
        _obj(box=("21", "20", "20.5", "30")),      # 0.5 px wide (20 to 20.5): dropped
        _obj(box=("70", "10", "90", "30")),        # entirely right of the image: clipped to nothing, dropped
    ])
    ds = VOCDataset(tmp_path, classes=["cat"])
    t = ds.target(0)
    np.testing.assert_allclose(t.boxes, [[0, 0, 64, 48], [0, 9, 64, 30], [19, 19, 20.5, 30]])
    s = ds.stats
    assert (s.boxes, s.boxes_clipped, s.boxes_dropped_degenerate) == (3, 2, 2)
    kinds = [p.kind for p in s.warnings]
    assert kinds.count("box_clipped") == 2 and kinds.count("box_degenerate") == 2 and not s.errors


def test_rounding_of_normalized_labels_at_the_image_edge_is_not_clipping(tmp_path):
    # `detect --yolo` writes 6 decimals: a box from x=0 to 13.4291 px of a 128 px image is cx 0.052457, w 0.104915,
    # which reads back as x1 = -6.4e-05 px. That is rounding, not a box outside the image: no warning, exact 0.
    (tmp_path / "classes.txt").write_text("cat\n")
    Image.fromarray(np.zeros((128, 128, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("0 0.052457 0.5 0.104915 0.2\n0 0.947543 0.5 0.104915 0.2\n"
                                    "0 0.5 0.5 1.02 0.2\n")  # the last one really sticks out (by 1.28 px)
    ds = YOLODataset(tmp_path)
    boxes = ds.target(0).boxes
    assert boxes[0, 0] == 0 and boxes[1, 2] == 128 and (boxes[:, [0, 2]] >= 0).all()
    assert ds.stats.boxes_clipped == 1
    assert [p.kind for p in ds.stats.warnings] == ["box_clipped"]


def test_lenient_mode_collects_every_problem_and_keeps_the_good_boxes(tmp_path):
    make_voc(tmp_path, [_obj(), _obj(box=("nan", "1", "5", "5")), _obj(skip=("name",)),
                        _obj(box=("30", "1", "5", "5")), _obj(name="zebra"), _obj(box=("1", "1", "200", "9"))])
    ds = VOCDataset(tmp_path, classes=["cat"], strict=False)
    assert len(ds.target(0)) == 2
    kinds = sorted(p.kind for p in ds.stats.errors)
    assert kinds == ["bad_number", "inverted_box", "missing_field", "unknown_class"]
    assert all(p.path.endswith("img1.xml") and p.index is not None for p in ds.stats.errors)
    assert ds.stats.boxes_dropped_invalid == 3 and ds.stats.boxes_dropped_unknown_class == 1
    assert ds.stats.boxes_clipped == 1


def test_coco_bad_numbers_and_fields(tmp_path):
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "a.png")

    def coco(bbox, extra=None):
        ann = {"id": 7, "image_id": 1, "category_id": 1, "bbox": bbox, **(extra or {})}
        data = {"images": [{"id": 1, "file_name": "a.png", "width": 50, "height": 40}], "annotations": [ann],
                "categories": [{"id": 1, "name": "cat"}]}
        p = tmp_path / "ann.json"
        p.write_text(json.dumps(data))  # json writes NaN and Infinity literals, which Python's json reads back
        return p

    for bbox, match in [([1, float("nan"), 3, 4], "bbox\\[1\\] is nan"), ([1, 2, float("inf"), 4], "not a finite"),
                        ([1, "x", 3, 4], "not a number"), ([1, 2, 3], "must be \\[x, y"), ([1, 2, -3, 4], "negative")]:
        p = coco(bbox)
        with pytest.raises(AnnotationError, match=match) as e:
            COCODataset(p)
        assert str(p) in str(e.value) and "annotation 0 ('cat')" in str(e.value)
    p = coco([1, 2, 3, 4], {"category_id": 9})
    with pytest.raises(AnnotationError, match="unknown class 'category_id 9'"):
        COCODataset(p)
    p.write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        COCODataset(p)


def test_yolo_bad_lines(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "a.png")
    for line, match in [("0 0.5 nan 0.1 0.1", "cy is 'nan'"), ("1 0.5 0.5 0.1", "expected 5 values"),
                        ("x 0.5 0.5 0.1 0.1", "not a non-negative integer"), ("0 0.5 0.5 -0.1 0.1", "negative"),
                        ("0 25 20 10 10", "not normalized"), ("5 0.5 0.5 0.1 0.1", "unknown class '<class 5>'")]:
        (tmp_path / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n" + line + "\n")
        with pytest.raises(AnnotationError, match=match) as e:
            YOLODataset(tmp_path)
        assert str(tmp_path / "a.txt") in str(e.value) and "line 2" in str(e.value)


def test_csv_bad_cells(tmp_path):
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "a.png")
    p = tmp_path / "boxes.csv"
    p.write_text("image_path,xmin,ymin,xmax,ymax,label\na.png,1,2,10,12,cat\na.png,1,inf,10,12,cat\n")
    with pytest.raises(AnnotationError, match="row 3 \\('cat'\\): ymin is 'inf'"):
        CSVDataset(p)
    p.write_text("image_path,xmin,ymin,xmax,ymax,label\na.png,1,2,,12,cat\n")
    with pytest.raises(AnnotationError, match="missing xmax"):
        CSVDataset(p)
    p.write_text("image,x0,y0,x1,y1,label\n")
    with pytest.raises(AnnotationError, match="no 'xmin' column"):
        CSVDataset(p)


# --------------------------------------------------------------------------------------------- image files

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(path, width=100_000, height=100_000):
    """A tiny file whose PNG header claims ``width x height`` RGB pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _png_chunk(b"IEND", b""))
    return path


def test_huge_png_header_fails_fast_without_allocating(tmp_path):
    p = huge_png(tmp_path / "bomb.png")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for fn in (image_size, load_image):
        with pytest.raises(ImageDecodeError, match="exceeds the (pixel )?limit") as e:
            fn(p)
        assert str(p) in str(e.value) and "decompression bomb" in str(e.value)
    assert time.perf_counter() - t0 < 1.0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 50  # 30 GB of pixels were never allocated


def test_pixel_limit_is_configurable(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(p)
    with pytest.raises(ImageDecodeError, match="20x20 pixels exceeds the limit of 100"):
        load_image(p, max_pixels=100)
    assert image_size(p, max_pixels=400) == (20, 20)


def _jpeg_bytes(h=64, w=80):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("content, match", [
    (lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2], "truncated"),
    (lambda: b"", "empty file"),
    (lambda: np.random.default_rng(1).bytes(5000), "cannot decode"),
    (lambda: b"\xff\xd8\xff\xe0" + b"\0" * 100, "cannot decode"),  # a JPEG signature and nothing valid
])
def test_broken_image_files_name_the_path(tmp_path, content, match):
    p = tmp_path / "broken.jpg"
    p.write_bytes(content())
    with pytest.raises(ImageDecodeError, match=match) as e:
        load_image(p)
    assert str(p) in str(e.value)


def _voc_with_images(root, images):
    for name, data in images.items():
        make_voc(root, [_obj()], name=name, image=False, image_size=(64, 80))
        (root / "JPEGImages" / f"{name}.png").write_bytes(data)


def test_dataset_strict_raises_and_lenient_skips_broken_images(tmp_path):
    good = io.BytesIO()
    Image.fromarray(np.full((64, 80, 3), 9, np.uint8)).save(good, format="PNG")
    jpeg = _jpeg_bytes()
    _voc_with_images(tmp_path, {"a_good": good.getvalue(), "b_truncated": jpeg[: len(jpeg) // 2], "c_empty": b"",
                                "d_random": np.random.default_rng(2).bytes(3000)})
    huge_png(tmp_path / "JPEGImages" / "e_bomb.png")
    make_voc(tmp_path, [_obj()], name="e_bomb", image=False, image_size=(64, 80))
    with pytest.raises(ImageDecodeError, match="c_empty.png: empty file"):
        VOCDataset(tmp_path, classes=["cat"])  # headers are read while scanning
    ds = VOCDataset(tmp_path, classes=["cat"], strict=False)
    assert [r.image_id for r in ds.records] == ["a_good", "b_truncated"]  # the truncated one has a valid header
    assert ds.stats.images_skipped == 3
    assert {p.path.rsplit("/", 1)[-1] for p in ds.stats.errors} == {"c_empty.png", "d_random.png", "e_bomb.png"}
    image, target = ds[1]  # truncated: skipped and replaced by the next readable image
    assert target.image_id == "a_good" and image.shape == (64, 80, 3)
    assert ds.stats.images_skipped == 4 and "truncated" in ds.stats.errors[-1].message
    strict = VOCDataset(tmp_path, split=None, classes=["cat"], strict=False)
    strict.strict = True
    with pytest.raises(ImageDecodeError, match="b_truncated.png"):
        strict[1]
    verified = VOCDataset(tmp_path, classes=["cat"], strict=False, verify_images=True)
    assert [r.image_id for r in verified.records] == ["a_good"] and verified.stats.images_skipped == 4


# --------------------------------------------------------------------------------------------- colour modes

def test_cmyk_jpeg_becomes_correct_rgb(tmp_path):
    cmyk = Image.new("CMYK", (16, 12), (0, 255, 255, 0))  # pure red in CMYK
    p = tmp_path / "cmyk.jpg"
    cmyk.save(p, quality=95)
    assert Image.open(p).mode == "CMYK"
    out = load_image(p)
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), [255, 0, 0], atol=6)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(3, axis=0)
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")
    out = load_image(p)
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "P+transparency", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb_uint8(mode):
    base = Image.fromarray(np.tile(np.array([[10, 200, 30]], np.uint8), (4, 5, 1)))
    if mode == "P":
        img = base.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode == "P+transparency":
        img = base.convert("P", palette=Image.Palette.ADAPTIVE)
        img.info["transparency"] = 0
    elif mode in ("I", "F"):
        img = base.convert("L").convert(mode)
    else:
        img = base.convert(mode)
    out = np.asarray(to_rgb(img))
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    if mode in ("RGBA", "P", "P+transparency", "YCbCr"):
        np.testing.assert_allclose(out[0, 0], [10, 200, 30], atol=8)
    if mode in ("L", "LA", "I", "F"):
        grey = np.asarray(base.convert("L"))[0, 0]
        np.testing.assert_array_equal(out[0, 0], [grey] * 3)


def test_rgba_png_palette_png_and_grey_files_load(tmp_path):
    rgba = np.zeros((6, 7, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    pal = Image.fromarray(np.full((6, 7, 3), 77, np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.save(tmp_path / "pal.png")
    Image.fromarray(np.full((6, 7), 33, np.uint8)).save(tmp_path / "grey.png")
    assert load_image(tmp_path / "rgba.png")[0, 0].tolist() == [200, 0, 0]
    assert load_image(tmp_path / "pal.png")[0, 0].tolist() == [77, 77, 77]
    assert load_image(tmp_path / "grey.png")[0, 0].tolist() == [33, 33, 33]


def test_exif_rotation_gives_upright_size_and_annotations_in_upright_coordinates(tmp_path):
    arr = np.zeros((40, 60, 3), np.uint8)  # stored 60 wide, 40 high; displayed 40 wide, 60 high
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    make_voc(tmp_path, [_obj(box=("1", "1", "40", "60"))], image_size=(60, 40), name="rot", image=False)
    img.save(tmp_path / "JPEGImages" / "rot.jpg", exif=exif)
    assert image_size(tmp_path / "JPEGImages" / "rot.jpg") == (60, 40)
    ds = VOCDataset(tmp_path, classes=["cat"])
    image, t = ds[0]
    assert image.shape == (60, 40, 3) and t.orig_size == (60, 40)
    np.testing.assert_allclose(t.boxes, [[0, 0, 40, 60]])
    assert ds.stats.boxes_clipped == 0 and not ds.stats.problems
    # an annotation that states the stored (un-rotated) size is flagged with a hint
    (tmp_path / "ImageSets" / "Main" / "trainval.txt").unlink()
    make_voc(tmp_path, [_obj(box=("1", "1", "40", "40"))], image_size=(40, 60), name="rot", image=False)
    ds = VOCDataset(tmp_path, classes=["cat"])
    (w,) = ds.stats.warnings
    assert w.kind == "size_mismatch" and "upright" in w.message
