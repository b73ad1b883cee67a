"""The ``trees`` recipes make their own data: region tiling and the held-out strip on hand cases, the VOC root of
:func:`multibox.data.real.prepare_trees` on small synthetic "photos" standing in for the deepforest ones (no
network), and ``multibox train trees`` end to end with a tiny model on that data. The real photos are checked
in one ``slow`` test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multibox.config import ConfigError, load_config
from multibox.data import real
from multibox.data.datasets.voc import VOCDataset, voc_xml
from multibox.data.real import EVALUATION_SAMPLES, TRAINING_SAMPLES, prepare_trees
from multibox.data.tiles import TiledDataset, holdout_regions, tile_rects
from multibox.data.types import Target
from multibox.engine.trainer import Trainer, open_split, trees_root

# name -> (height, width, boxes xyxy 0-based pixels, class names)
FAKE_PHOTOS = {
    TRAINING_SAMPLES[0]: (200, 160, [[10, 10, 30, 30], [100, 150, 120, 170], [40, 185, 60, 199]], ["Tree"] * 3),
    TRAINING_SAMPLES[1]: (100, 100, [[50, 20, 70, 40]], ["Tree"]),
    "OSBS_029": (64, 64, [[5, 5, 20, 20], [30, 30, 50, 50]], ["Tree", "Tree"]),
    "SOAP_061": (64, 64, [[2, 2, 12, 12], [40, 40, 60, 60]], ["Alive", "Dead"]),
}


@pytest.fixture()
def fake_deepforest(tmp_path, monkeypatch):
    """Replace the wheel download by small synthetic photos with VOC XML (1-based, as deepforest's)."""
    src = tmp_path / "fake-wheel"
    src.mkdir()
    calls: list[str] = []
    rng = np.random.default_rng(0)
    for name, (h, w, boxes, names) in FAKE_PHOTOS.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(src / f"{name}.png")
        b = np.array(boxes, np.float32)
        n = len(b)
        (src / f"{name}.xml").write_bytes(voc_xml(f"{name}.tif", (h, w), b, names, np.zeros(n, bool),
                                                  np.zeros(n, bool)))

    def sample(name: str) -> tuple[Path, Path]:
        calls.append(name)
        return src / f"{name}.png", src / f"{name}.xml"

    monkeypatch.setattr(real, "deepforest_sample", sample)
    monkeypatch.setenv("MULTIBOX_CACHE", str(tmp_path / "cache"))
    return calls


def _ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


def test_holdout_regions_hand_cases():
    train, holdout = holdout_regions(0.2)
    assert train(1000, 500) == (0, 0, 500, 800) and holdout(1000, 500) == (0, 800, 500, 1000)
    assert train(7, 3) == (0, 0, 3, 6) and holdout(7, 3) == (0, 6, 3, 7)  # round(1.4) = 1 row held out
    train0, holdout0 = holdout_regions(0.0)
    assert train0(10, 10) == (0, 0, 10, 10) and holdout0(10, 10) is None
    with pytest.raises(ValueError, match="holdout fraction"):
        holdout_regions(1.0)


def test_tile_rects_stay_inside_the_region():
    # a 200-row strip of a 500-wide image, tiles of 200 with overlap 0.2: x origins 0, 150, 300, one row
    assert tile_rects(1000, 500, 200, 0.2, (0, 800, 500, 1000)) == [
        (0, 800, 200, 1000), (150, 800, 350, 1000), (300, 800, 500, 1000)]
    # a region smaller than a tile gives one tile of the region
    assert tile_rects(1000, 500, 200, 0.2, (10, 20, 110, 70)) == [(10, 20, 110, 70)]
    assert tile_rects(100, 100, 60, 0.0) == [(0, 0, 60, 60), (40, 0, 100, 60), (0, 40, 60, 100), (40, 40, 100, 100)]
    with pytest.raises(ValueError, match="outside"):
        tile_rects(100, 100, 60, 0.0, (0, 0, 101, 50))


class _Photo:
    class_names = ["background", "Tree"]

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int):
        img = np.zeros((100, 80, 3), np.uint8)
        img[:, :, 0] = np.arange(100, dtype=np.uint8)[:, None]  # red = row index
        return img, Target(boxes=np.array([[10, 10, 20, 20], [10, 75, 20, 95]], np.float32), labels=[1, 1],
                           image_id="p", orig_size=(100, 80))


def test_tiled_dataset_region_splits_pixels():
    train, holdout = holdout_regions(0.2)  # rows 0-79 train, 80-99 held out
    tr = TiledDataset(_Photo(), tile=40, overlap=0.0, region=train)
    ho = TiledDataset(_Photo(), tile=40, overlap=0.0, region=holdout, keep_partial=True)
    assert [r for _, r in tr.index] == [(0, 0, 40, 40), (40, 0, 80, 40), (0, 40, 40, 80), (40, 40, 80, 80)]
    assert [r for _, r in ho.index] == [(0, 80, 40, 100), (40, 80, 80, 100)]
    rows_train = {int(v) for i in range(len(tr)) for v in np.unique(tr[i][0][:, :, 0])}
    rows_hold = {int(v) for i in range(len(ho)) for v in np.unique(ho[i][0][:, :, 0])}
    assert rows_train == set(range(80)) and rows_hold == set(range(80, 100))
    # the box across the cut (rows 75-95): 75% in the strip -> a whole-ish box there, too little in the training
    # tile above (25% < min_visible 0.5)
    img, t = ho[0]
    np.testing.assert_array_equal(t.boxes, [[10, 0, 20, 15]])
    assert not t.difficult.any()
    assert [len(tr[i][1]) for i in range(len(tr))] == [1, 0, 0, 0]


def test_prepare_trees_splits(fake_deepforest, tmp_path):
    root = prepare_trees(tmp_path / "trees", tile=64, overlap=0.25, holdout=0.25)
    info = json.loads((root / "trees.json").read_text())
    assert (root / "classes.txt").read_text() == "Tree\n"
    assert _ids(root, "test") == list(EVALUATION_SAMPLES)
    for split in ("train", "holdout"):  # never a tile of the evaluation photos
        assert _ids(root, split) and all(i.startswith(TRAINING_SAMPLES) for i in _ids(root, split))
    # photo 0 is 200x160: rows 0-149 train (y origins 0, 43, 86 for 150 rows; x 0, 48, 96 for 160), 150-199 held out
    photo0 = [i for i in _ids(root, "train") if i.startswith(TRAINING_SAMPLES[0])]
    assert photo0 == [f"{TRAINING_SAMPLES[0]}_{x}_{y}" for y in (0, 43, 86) for x in (0, 48, 96)]
    hold0 = [i for i in _ids(root, "holdout") if i.startswith(TRAINING_SAMPLES[0])]
    assert hold0 == [f"{TRAINING_SAMPLES[0]}_{x}_150" for x in (0, 48, 96)]
    # SOAP's Alive / Dead are trees; the photos are whole, boxes unchanged
    test = VOCDataset(root, split="test", classes=root / "classes.txt")
    assert test.class_names == ["background", "Tree"]
    img, t = test[1]
    assert t.image_id == "SOAP_061" and img.shape == (64, 64, 3)
    np.testing.assert_array_equal(t.boxes, [[2, 2, 12, 12], [40, 40, 60, 60]])
    np.testing.assert_array_equal(t.labels, [1, 1])
    assert info["splits"]["test"] == {"images": 2, "boxes": 4, "difficult": 0}
    assert info["splits"]["train"]["images"] == len(_ids(root, "train"))
    assert not list(tmp_path.glob("trees.tmp-*")) and not (root / "raw-train").exists()
    # made once: a second call reuses the root without fetching
    fetched = len(fake_deepforest)
    assert prepare_trees(tmp_path / "trees", tile=64, overlap=0.25, holdout=0.25) == root
    assert len(fake_deepforest) == fetched


def test_trees_recipes_open_their_data(fake_deepforest):
    # before: data.train was null in trees_mobilenetv2 and 'multibox train trees_mobilenetv2' died with
    # AttributeError: 'NoneType' object has no attribute 'class_names'
    for recipe in ("trees", "trees_mobilenetv2"):
        cfg = load_config(recipe, ["data.trees.tile=64"])
        train = open_split(cfg, "train", progress=False)
        val = open_split(cfg, "val", progress=False)
        assert train.class_names == ["background", "Tree"] and len(train) > 0
        assert [val[i][1].image_id for i in range(len(val))] == list(EVALUATION_SAMPLES)
        assert trees_root(cfg).is_dir()
    trees = load_config("trees", [])
    assert trees.time_budget_min == 35 and trees.data.train == "deepforest_trees" and trees.eval.metric == "voc12"
    with pytest.raises(ConfigError, match="data.trees.holdout"):
        load_config("trees", ["data.trees.holdout=1"])


def test_train_trees_end_to_end_with_a_tiny_model(fake_deepforest, tmp_path):
    cfg = load_config("trees", ["model.name=ssd7", "model.pretrained_backbone=null", "model.freeze=[]",
                                "model.kwargs={image_size: [64, 64]}", "data.trees.tile=64", "steps=2",
                                "data.batch_size=2", "data.num_workers=0", "data.augment=none", "threads=1",
                                "eval.every_steps=0", "checkpoint.every_steps=0"])
    summary = Trainer(cfg, tmp_path / "run", progress=False, quiet=True).run()
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert summary["steps"] == 2 and ev["num_gt"] == {"Tree": 4} and ev["num_images"] == 2


def test_trees_recipe_on_another_model_names_its_freeze(fake_deepforest, tmp_path):
    """The recipes freeze MobileNetV2's stem by parameter name: on another model those names match nothing, and the
    run stops before training with a ConfigError that names model.freeze and the way out, writing no checkpoint."""
    cfg = load_config("trees", ["model.name=ssd7", "model.pretrained_backbone=null",
                                "model.kwargs={image_size: [64, 64]}", "data.trees.tile=64", "steps=2",
                                "data.num_workers=0", "threads=1", "eval.every_steps=0"])
    with pytest.raises(ConfigError, match=r"model\.freeze of trees for model ssd7: .*match no parameter.*"
                                          r"model\.freeze=\[\]") as err:
        Trainer(cfg, tmp_path / "run", progress=False, quiet=True).run()
    assert err.value.key == "model.freeze"
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


@pytest.mark.slow
def test_prepare_trees_on_the_real_photos(tmp_path):
    try:
        root = prepare_trees(tmp_path / "trees")
    except real.RealDataUnavailable as e:
        pytest.fail(f"the deepforest photos could not be fetched (needs PyPI once, then cached): {e}")
    info = json.loads((root / "trees.json").read_text())
    assert info["splits"]["test"] == {"images": 2, "boxes": 98, "difficult": 0}  # 61 + 37 trees
    assert info["splits"]["train"]["images"] == 68 and info["splits"]["holdout"]["images"] == 20


def test_anchor_fit_on_the_real_trees():
    """`multibox anchors fit`'s coverage on the real training tiles against torchvision's box_iou over the same
    priors, and the recipe's priors covering more boxes than the stride-16 start (docs/small-objects.md)."""
    import torch
    import torchvision

    from multibox.anchor_fit import collect_boxes, fit_report, model_priors, prior_coverage
    from multibox.anchors import cxcywh_to_xyxy
    from multibox.data.datasets import open_dataset
    from multibox.engine.trainer import ensure_trees

    try:
        root = ensure_trees(load_config("trees_mobilenetv2"))  # the cached root the recipe uses
    except real.RealDataUnavailable as e:
        pytest.fail(f"the deepforest photos could not be fetched (needs PyPI once, then cached): {e}")
    ds = open_dataset(root, format="voc", split="train", classes=root / "classes.txt")
    boxes = collect_boxes(ds)
    assert len(boxes) == 1261 and boxes.num_images == 68
    recipe = load_config("trees_mobilenetv2").model.kwargs
    shares = {}
    for name, kwargs in {"recipe": dict(recipe), "stride16": {"image_size": [448, 448], "s_min": 0.06,
                                                             "s_max": 0.5}}.items():
        priors = model_priors("ssd300_mobilenetv2", 2, kwargs)
        cov = prior_coverage(boxes, priors)
        ref = torchvision.ops.box_iou(torch.from_numpy(boxes.boxes.astype(np.float64)),
                                      cxcywh_to_xyxy(priors.priors.to(torch.float64))).max(1).values.numpy()
        np.testing.assert_allclose(cov.best_iou, ref, atol=1e-9)
        shares[name] = float((ref >= 0.5).mean())
        report = fit_report(boxes, priors)
        assert report["boxes"]["count"] == 1261
        assert report["current"]["share_matched"] == pytest.approx(float((ref >= 0.5).mean()))
        assert report["proposal"]["share_matched"] >= report["current"]["share_matched"] - 0.02
    assert shares["recipe"] > 0.95 > shares["stride16"] > 0.8
