"""The dataset format registry, and packed shards as a dataset format the trainer reads."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from multibox.cli import main
from multibox.config import TrainConfig
from multibox.data.augment import ssd_train_transform
from multibox.data.datasets import (
    AnnotatedImageDataset,
    WriteReport,
    detect_format,
    format_names,
    get_format,
    list_formats,
    open_dataset,
    register_format,
    unregister_format,
    write_dataset,
)
from multibox.data.datasets.common import RawImage, RawObject
from multibox.data.loader import build_loader, set_epoch
from multibox.data.shards import ShardDataset, pack_dataset
from multibox.data.synth import write_synthetic_voc
from multibox.engine.trainer import open_split
from multibox.models.spec import InputSpec

BUILTIN = ["coco", "csv", "shards", "voc", "yolo"]


def test_builtin_formats_are_registered_once_each():
    names = [f.name for f in list_formats()]
    assert sorted(names) == BUILTIN and len(set(names)) == len(names)
    assert sorted(format_names(writable=True)) == ["coco", "csv", "voc", "yolo"]  # shards: written by `data pack`
    with pytest.raises(ValueError, match="already registered"):
        register_format("voc", open=lambda *a, **k: None)
    with pytest.raises(ValueError, match="unknown dataset format 'nope'.*voc"):
        get_format("nope")


# ------------------------------------------------------------------------------------------ a toy format


class BoxListDataset(AnnotatedImageDataset):
    """The toy format: ``boxes.json`` = {"classes": [...], "images": {"file.png": [[x1, y1, x2, y2, "name"]]}}."""

    format = "boxlist"

    def __init__(self, path, classes=None, **options):
        super().__init__(**options)
        doc = json.loads(Path(path).read_text())
        raws = [RawImage(path=Path(path).parent / name, image_id=Path(name).stem, source=Path(path),
                         objects=[RawObject(name=b[4], box=tuple(b[:4]), index=i) for i, b in enumerate(boxes)])
                for name, boxes in doc["images"].items()]
        self._build(raws, classes if classes is not None else doc["classes"])


def _write_boxlist(dataset, dst, split=None, link="copy", progress=False):
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    images = {}
    for rec in dataset.records:
        (dst / rec.path.name).write_bytes(rec.path.read_bytes())
        images[rec.path.name] = [[*b, dataset.class_names[k]] for b, k in
                                 zip(rec.target.boxes.tolist(), rec.target.labels.tolist(), strict=True)]
    (dst / "boxes.json").write_text(json.dumps({"classes": dataset.class_names[1:], "images": images}))
    return WriteReport(format="boxlist", root=dst, images=len(images), boxes=sum(map(len, images.values())))


@pytest.fixture
def boxlist_format():
    register_format("boxlist", open=lambda paths, split=None, classes=None, images=None, **o:
                    BoxListDataset(paths[0] / "boxes.json" if paths[0].is_dir() else paths[0], classes, **o),
                    write=_write_boxlist, detect=lambda p: 99 if (p / "boxes.json").is_file() else 0,
                    description="toy: boxes.json")
    yield
    unregister_format("boxlist")


def _tiny_voc(root, n=3):
    write_synthetic_voc(root, n, seed=1, size=64, test_fraction=0.0, profile="easy")
    return root


def test_a_registered_toy_format_is_detected_opened_written_and_listed(boxlist_format, tmp_path, capsys):
    voc = _tiny_voc(tmp_path / "voc")
    src = open_dataset(voc, split="train")
    write_dataset(src, tmp_path / "toy", "boxlist")
    assert detect_format(tmp_path / "toy") == "boxlist"
    toy = open_dataset(tmp_path / "toy")
    assert toy.class_names == src.class_names
    for a, b in zip(src.records, toy.records, strict=True):
        np.testing.assert_array_equal(a.target.boxes, b.target.boxes)
        np.testing.assert_array_equal(a.target.labels, b.target.labels)
    # the command line reads the registry too: listed, accepted by --from/--to and by check
    assert main(["data", "formats", "--json", str(tmp_path / "f.json")]) == 0
    assert "boxlist" in capsys.readouterr().out
    listed = {f["name"]: f for f in json.loads((tmp_path / "f.json").read_text())}
    assert listed["boxlist"]["writable"] and listed["shards"]["writable"] is False
    assert main(["data", "convert", str(tmp_path / "toy"), str(tmp_path / "back"), "--from", "boxlist",
                 "--to", "voc"]) == 0
    assert len(open_dataset(tmp_path / "back", split="all")) == 3
    assert main(["data", "convert", str(voc), str(tmp_path / "toy2"), "--split", "train", "--to", "boxlist"]) == 0
    assert main(["data", "check", str(tmp_path / "toy2")]) == 0


def test_unknown_format_on_the_command_line_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "convert", str(tmp_path), str(tmp_path / "o"), "--to", "nope"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown writable format 'nope'" in err and "voc" in err
    with pytest.raises(SystemExit):
        main(["data", "convert", str(tmp_path), str(tmp_path / "o"), "--to", "shards"])  # read-only format


def test_formats_command_lists_every_format(capsys):
    assert main(["data", "formats", "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["name"] for r in rows) == BUILTIN


# ------------------------------------------------------------------------------------------ shards for training


def _batches(ds, n=3):
    loader = build_loader(ds, ssd_train_transform(InputSpec(image_size=(48, 48))), batch_size=2, seed=7,
                          shuffle=True, drop_last=True)
    set_epoch(loader, 1)
    out = []
    for k, batch in enumerate(loader):
        if k == n:
            break
        out.append(batch)
    return out


def test_training_reads_what_pack_writes_with_identical_batches(tmp_path):
    voc = _tiny_voc(tmp_path / "voc", n=7)
    assert main(["data", "pack", str(voc), str(tmp_path / "packed"), "--split", "train", "--shard-size", "3",
                 "--quiet"]) == 0
    assert detect_format(tmp_path / "packed") == "shards"  # recognized from the dataset.json that pack wrote
    cfg = TrainConfig()
    cfg.data.train, cfg.data.train_split = str(voc), "train"
    folder = open_split(cfg, "train", progress=False)
    cfg.data.train = f"shards:{tmp_path / 'packed'}"
    shards = open_split(cfg, "train", progress=False)
    assert isinstance(shards, ShardDataset) and len(shards) == len(folder) == 7
    assert shards.class_names == folder.class_names
    cfg.data.train = str(tmp_path / "packed")  # detected, no prefix
    assert isinstance(open_split(cfg, "train", progress=False), ShardDataset)
    a, b = _batches(folder), _batches(shards)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def test_shards_refuse_another_split_and_other_classes(tmp_path):
    voc = _tiny_voc(tmp_path / "voc")
    pack_dataset(open_dataset(voc, split="train"), tmp_path / "p", max_samples=2, progress=False,
                 meta={"source": {"split": "train"}})
    with pytest.raises(ValueError, match="holds split 'train', not 'test'"):
        open_dataset(f"shards:{tmp_path / 'p'}", split="test")
    with pytest.raises(ValueError, match="differ"):
        open_dataset(tmp_path / "p", classes=["a", "b"])
    assert len(open_dataset(tmp_path / "p" / "dataset.json", split="train")) == 3



