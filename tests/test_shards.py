import json
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch.utils.data
from PIL import Image

from multibox.cli import main
from multibox.data.image_io import load_image
from multibox.data.shards import (
    ShardDataset,
    ShardError,
    ShardIterableDataset,
    load_index,
    pack_dataset,
    parse_size,
    verify_shards,
)
from multibox.data.types import DetectionDataset, Target

CLASSES = ["background", "cat", "dog", "person"]


class FolderDataset:
    """A folder of real image files read with load_image, exposing image_path like the real datasets."""

    def __init__(self, items):
        self.class_names = list(CLASSES)
        self.items = items  # (path, boxes, labels, difficult, iscrowd)

    def __len__(self):
        return len(self.items)

    def image_path(self, i):
        return self.items[i][0]

    def __getitem__(self, i):
        path, boxes, labels, difficult, iscrowd = self.items[i]
        image = load_image(path)
        target = Target(boxes=boxes, labels=labels, image_id=Path(path).stem, orig_size=image.shape[:2],
                        difficult=np.array(difficult, bool), iscrowd=np.array(iscrowd, bool))
        return image, target


class ArrayDataset(FolderDataset):
    """Same samples, but without image_path: the packer must PNG-encode the pixels."""

    image_path = None


class Record:
    def __init__(self, path):
        self.path = Path(path)


class RecordsDataset(FolderDataset):
    """Like the multibox datasets: records[i].path and target(i) (no image decoding); counts decodes."""

    image_path = None

    def __init__(self, items):
        super().__init__(items)
        self.records = [Record(it[0]) for it in items]
        self.decoded = 0

    def target(self, i):
        path, boxes, labels, difficult, iscrowd = self.items[i]
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
        return Target(boxes=boxes, labels=labels, image_id=Path(path).stem, orig_size=(h, w),
                      difficult=np.array(difficult, bool), iscrowd=np.array(iscrowd, bool))

    def __getitem__(self, i):
        self.decoded += 1
        return super().__getitem__(i)


class SubstitutingDataset(RecordsDataset):
    """A lenient dataset that hands out another sample (same size, other id) in place of sample 1."""

    def __getitem__(self, i):
        image, target = super().__getitem__(i)
        if i == 1:
            image, target.image_id = np.ascontiguousarray(image[::-1]), "other"
        return image, target


class FailingDataset(FolderDataset):
    def __init__(self, items, fail_at):
        super().__init__(items)
        self.fail_at = fail_at

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError("disk on fire")
        return super().__getitem__(i)


def _noise(rng, h, w, c=3):
    return rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    items = []
    f32 = np.float32

    p = root / "a.jpg"
    Image.fromarray(_noise(rng, 48, 64)).save(p, quality=90)
    items.append((str(p), np.array([[1.5, 2.25, 30.1, 40.7], [0, 0, 63, 47]], f32), [1, 3], [False, True],
                  [False, False]))

    p = root / "b.png"  # zero boxes
    Image.fromarray(_noise(rng, 70, 50)).save(p)
    items.append((str(p), np.zeros((0, 4), f32), [], [], []))

    p = root / "c.png"  # grey PNG: decoded to RGB
    Image.fromarray(_noise(rng, 33, 41, 1)[..., 0], mode="L").save(p)
    items.append((str(p), np.array([[3.3333333, 4.1, 20.9, 30.123456]], f32), [2], [False], [True]))

    p = root / "d.jpg"  # EXIF orientation 6 (rotate 90): an 80x30 (WxH) file decodes upright as 30x80
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_noise(rng, 30, 80)).save(p, exif=exif, quality=85)
    items.append((str(p), np.array([[0.1, 0.2, 10.3, 70.4]], f32), [1], [False], [False]))

    p = root / "e.jpeg"
    Image.fromarray(_noise(rng, 64, 64)).save(p, format="JPEG")
    items.append((str(p), np.array([[5, 5, 20, 20], [10, 10, 60, 60], [0, 1, 2, 3]], f32), [3, 2, 1],
                  [False, False, False], [False, False, False]))
    return items


def _assert_same(a, b):
    (img_a, t_a), (img_b, t_b) = a, b
    assert img_a.dtype == img_b.dtype == np.uint8
    assert img_a.shape == img_b.shape
    assert np.array_equal(img_a, img_b)
    assert t_a.image_id == t_b.image_id
    assert tuple(t_a.orig_size) == tuple(t_b.orig_size)
    for name in ("boxes", "labels", "difficult", "iscrowd"):
        x, y = getattr(t_a, name), getattr(t_b, name)
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        assert np.array_equal(x, y), name


@pytest.fixture(scope="module")
def packed(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed")
    summary = pack_dataset(FolderDataset(folder), out, max_samples=2, progress=False)
    return out, summary


def test_pack_writes_webdataset_shards_and_index(packed, folder):
    out, summary = packed
    assert summary.num_samples == 5 and summary.num_shards == 3
    assert summary.original_images == 5 and summary.png_images == 0
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "shard-000000.tar", "shard-000001.tar",
                                                     "shard-000002.tar"]
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["class_names"] == CLASSES and doc["num_samples"] == 5
    assert [s["samples"] for s in doc["shards"]] == [2, 2, 1]
    with tarfile.open(out / "shard-000000.tar") as tf:
        assert tf.getnames() == ["00000000.jpg", "00000000.json", "00000001.png", "00000001.json"]
        # original bytes, untouched
        assert tf.extractfile("00000000.jpg").read() == Path(folder[0][0]).read_bytes()
        meta = json.loads(tf.extractfile("00000001.json").read())
        assert meta["boxes"] == [] and meta["labels"] == [] and meta["orig_size"] == [70, 50]
    with tarfile.open(out / "shard-000002.tar") as tf:
        assert tf.getnames() == ["00000004.jpeg", "00000004.json"]


def test_map_style_reads_back_exactly_what_the_folder_gives(packed, folder):
    out, _ = packed
    src = FolderDataset(folder)
    ds = ShardDataset(out)
    assert isinstance(ds, DetectionDataset)
    assert len(ds) == 5 and ds.class_names == CLASSES
    for i in [4, 0, 3, 1, 2, -1]:  # random access, out of order
        _assert_same(ds[i], src[i])
    assert ds[3][0].shape == (80, 30, 3)  # EXIF applied
    assert len(ds[1][1]) == 0
    with pytest.raises(IndexError):
        ds[5]


def test_png_fallback_without_image_path(folder, tmp_path):
    src = ArrayDataset(folder)
    summary = pack_dataset(src, tmp_path, max_samples=10, progress=False)
    assert summary.png_images == 5 and summary.num_shards == 1
    with tarfile.open(tmp_path / "shard-000000.tar") as tf:
        assert all(n.endswith((".png", ".json")) for n in tf.getnames())
    ds = ShardDataset(tmp_path)
    for i in range(len(src)):
        _assert_same(ds[i], src[i])


def test_records_paths_and_no_decode_fast_path(folder, tmp_path):
    src = RecordsDataset(folder)
    s = pack_dataset(src, tmp_path / "checked", progress=False)
    assert s.original_images == 5 and src.decoded == 5
    src.decoded = 0
    s = pack_dataset(src, tmp_path / "fast", check_images=False, progress=False)
    assert s.original_images == 5 and src.decoded == 0  # bytes copied, nothing decoded
    ds = ShardDataset(tmp_path / "fast")
    for i in range(5):
        _assert_same(ds[i], src[i])


def test_substituted_image_is_not_paired_with_the_wrong_file(folder, tmp_path):
    src = SubstitutingDataset(folder)
    s = pack_dataset(src, tmp_path, progress=False)
    assert s.original_images == 4 and s.png_images == 1
    ds = ShardDataset(tmp_path)
    for i in range(5):
        _assert_same(ds[i], src[i])


def test_iterable_agrees_with_map_style(packed):
    out, _ = packed
    ds = ShardDataset(out, verify="sha256")
    it = ShardIterableDataset(out)
    assert it.class_names == CLASSES and len(it) == 5
    got = list(it)
    assert len(got) == 5
    for i, sample in enumerate(got):
        _assert_same(sample, ds[i])


def _ids(batch):
    return [t.image_id for _, t in batch]


def test_iterable_with_two_workers_yields_every_sample_once(packed):
    out, _ = packed
    it = ShardIterableDataset(out)
    loader = torch.utils.data.DataLoader(it, batch_size=None, num_workers=2, collate_fn=None)
    ids = [t.image_id for _, t in loader]
    assert sorted(ids) == ["a", "b", "c", "d", "e"]


def test_ranks_and_workers_read_disjoint_shards(packed):
    out, _ = packed
    seen = []
    for rank in range(2):
        ds = ShardIterableDataset(out, rank=rank, world_size=2, shuffle_shards=True, seed=3)
        ds.set_epoch(1)
        per_worker = [ds.worker_shards(w, 2) for w in range(2)]
        assert sorted(per_worker[0] + per_worker[1]) == sorted(ds.rank_shards())
        assert len(ds) == sum(ds.index.shards[s].samples for s in ds.rank_shards())
        seen += ds.rank_shards()
    assert sorted(seen) == [0, 1, 2]


def test_shuffle_buffer_is_a_permutation(packed):
    out, _ = packed
    ds = ShardIterableDataset(out, shuffle_shards=True, shuffle_buffer=3, seed=1)
    ids = [t.image_id for _, t in ds]
    assert sorted(ids) == ["a", "b", "c", "d", "e"]


def test_memory_and_file_urls(packed, folder):
    out, _ = packed
    fs = fsspec.filesystem("memory")
    for p in out.iterdir():
        fs.pipe(f"/packs/voc/{p.name}", p.read_bytes())
    src = FolderDataset(folder)
    for url in ["memory://packs/voc", "memory://packs/voc/dataset.json", f"file://{out}"]:
        got = list(ShardIterableDataset(url))
        assert len(got) == 5
        for i, sample in enumerate(got):
            _assert_same(sample, src[i])
    assert verify_shards("memory://packs/voc") == 5
    _assert_same(ShardDataset(f"file://{out}/dataset.json")[2], src[2])
    with pytest.raises(ValueError, match="ShardIterableDataset"):
        ShardDataset("memory://packs/voc")
    fs.rm("/packs/voc/shard-000001.tar")
    with pytest.raises(ShardError, match="shard-000001.tar"):
        list(ShardIterableDataset("memory://packs/voc"))
    fs.rm("/packs", recursive=True)


def _copy(out, dst):
    dst.mkdir()
    for p in out.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_sha256_mismatch_names_the_shard(packed, tmp_path):
    d = _copy(packed[0], tmp_path / "bad")
    shard = d / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    with tarfile.open(shard) as tf:
        m = tf.getmember("00000003.jpg")
    data[m.offset_data + m.size // 2] ^= 0xFF  # same size, one byte flipped in the image
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard-000001\.tar.*sha256"):
        list(ShardIterableDataset(d))
    with pytest.raises(ShardError, match=r"shard-000001\.tar.*sha256"):
        ShardDataset(d, verify="sha256")[2]
    with pytest.raises(ShardError, match=r"shard-000001\.tar"):
        verify_shards(d)
    ShardDataset(d, verify="sha256")[0]  # other shards still read


def test_truncated_and_missing_shards_name_the_shard(packed, tmp_path):
    d = _copy(packed[0], tmp_path / "trunc")
    shard = d / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:1500])
    with pytest.raises(ShardError, match=r"shard-000000\.tar.*truncated"):
        ShardDataset(d)[0]
    with pytest.raises(ShardError, match=r"shard-000000\.tar"):
        ShardDataset(d, verify="none")[1]
    with pytest.raises(ShardError, match=r"shard-000000\.tar"):
        list(ShardIterableDataset(d))
    with pytest.raises(ShardError, match=r"shard-000000\.tar"):
        list(ShardIterableDataset(d, verify="none"))
    (d / "shard-000002.tar").unlink()
    with pytest.raises(ShardError, match=r"shard-000002\.tar.*missing"):
        ShardDataset(d)[4]
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        ShardDataset(tmp_path)


def test_interrupted_pack_leaves_no_final_shard(folder, tmp_path):
    with pytest.raises(RuntimeError, match="disk on fire"):
        pack_dataset(FailingDataset(folder, fail_at=3), tmp_path, max_samples=1, progress=False)
    assert list(tmp_path.iterdir()) == []  # no shard, no dataset.json, no temporary file


def test_existing_pack_and_overwrite(folder, tmp_path):
    pack_dataset(FolderDataset(folder), tmp_path, max_samples=1, progress=False)
    assert len(list(tmp_path.glob("shard-*.tar"))) == 5
    with pytest.raises(FileExistsError):
        pack_dataset(FolderDataset(folder), tmp_path, max_samples=1, progress=False)
    s = pack_dataset(FolderDataset(folder), tmp_path, max_samples=3, overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json", "shard-000000.tar", "shard-000001.tar"]
    assert s.num_shards == 2 and verify_shards(tmp_path) == 5


def test_byte_limit_and_deterministic_output(folder, tmp_path):
    limit = 6000
    s = pack_dataset(FolderDataset(folder), tmp_path / "a", max_samples=None, max_bytes=limit, progress=False)
    idx = load_index(tmp_path / "a")
    assert s.num_shards >= 3 and idx.num_samples == 5
    for info in idx.shards:
        assert info.samples == 1 or info.bytes <= limit + 10240
    s2 = pack_dataset(FolderDataset(folder), tmp_path / "b", max_bytes=limit, progress=False)
    assert [x.sha256 for x in load_index(tmp_path / "b").shards] == [x.sha256 for x in idx.shards]
    assert s2.num_shards == s.num_shards
    with pytest.raises(ValueError):
        pack_dataset(FolderDataset(folder), tmp_path / "c", max_samples=None, max_bytes=None)


def test_parse_size():
    assert parse_size("1000") == 1000
    assert parse_size("500M") == 500 << 20
    assert parse_size("1G") == parse_size("1GiB") == parse_size("1gb") == 1 << 30
    assert parse_size("1.5K") == 1536
    with pytest.raises(ValueError):
        parse_size("lots")


def test_cli_pack(folder, tmp_path, monkeypatch, capsys):
    import multibox.data.datasets as datasets

    calls = []

    def fake_open(src, format=None, split=None, **options):
        calls.append((src, format, split))
        return FolderDataset(folder)

    monkeypatch.setattr(datasets, "open_dataset", fake_open)
    out = tmp_path / "out"
    rc = main(["data", "pack", "some/voc", str(out), "--format", "voc", "--split", "val", "--shard-size", "2",
               "--no-progress", "--json", str(tmp_path / "s.json")])
    assert rc == 0
    assert calls == [("some/voc", "voc", "val")]
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_samples"] == 5 and summary["num_shards"] == 3 and summary["samples_per_second"] > 0
    assert json.loads((tmp_path / "s.json").read_text()) == summary
    assert load_index(out).meta["source"] == {"path": "some/voc", "format": "voc", "split": "val"}
    assert main(["data", "pack", "some/voc", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "pack", "--help"])
    assert e.value.code == 0
    assert "--shard-size" in capsys.readouterr().out


def test_cli_pack_real_voc_folder(tmp_path, capsys):
    datasets = pytest.importorskip("multibox.data.datasets")
    if not hasattr(datasets, "open_dataset"):
        pytest.skip("multibox.data.datasets.open_dataset not available")
    rng = np.random.default_rng(1)
    (tmp_path / "voc" / "Annotations").mkdir(parents=True)
    (tmp_path / "voc" / "JPEGImages").mkdir()
    for k, (w, h) in enumerate([(64, 48), (50, 70), (40, 40)]):
        Image.fromarray(_noise(rng, h, w)).save(tmp_path / "voc" / "JPEGImages" / f"im{k}.jpg")
        obj = "" if k == 1 else ("<object><name>cat</name><difficult>0</difficult><bndbox><xmin>2</xmin>"
                                 "<ymin>3</ymin><xmax>30</xmax><ymax>20</ymax></bndbox></object>")
        (tmp_path / "voc" / "Annotations" / f"im{k}.xml").write_text(
            f"<annotation><filename>im{k}.jpg</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{obj}</annotation>")
    out = tmp_path / "packed"
    assert main(["data", "pack", str(tmp_path / "voc"), str(out), "--format", "voc", "--shard-size", "2",
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_samples"] == 3 and summary["original_images"] == 3
    src = datasets.open_dataset(tmp_path / "voc", format="voc")
    ds = ShardDataset(out)
    assert ds.class_names == src.class_names
    for i in range(len(src)):
        _assert_same(ds[i], src[i])
