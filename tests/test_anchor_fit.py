"""``multibox anchors fit``: coverage of a model's priors on hand-made boxes, IoU k-means, the proposal, the
config fragment that ``multibox train`` reads, and the command line's errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from multibox.anchor_fit import (
    BoxSet,
    ModelPriors,
    collect_boxes,
    iou_kmeans,
    min_side_at_threshold,
    model_priors,
    prior_coverage,
    propose_priors,
    wh_iou,
    worst_case_iou,
)
from multibox.anchors import (
    PriorConfig,
    PriorLevel,
    cxcywh_to_xyxy,
    get_prior_preset,
    prior_config_from_dict,
    prior_config_to_dict,
)
from multibox.cli import main
from multibox.data.datasets import open_dataset
from multibox.models import build_model
from multibox.weights_io import load_model


def _grid_priors() -> ModelPriors:
    """100x100 input, one 2x2 map, step 50, one 50x50 square per cell: priors [0,50]^2, [50,100]x[0,50], ..."""
    cfg = PriorConfig(image_size=(100, 100), levels=(PriorLevel(min_sizes=(50.0,), step=50.0),))
    return ModelPriors.from_config(cfg, [(2, 2)])


def _boxset(boxes_px: list[list[float]], owners: list[int], size: float = 100.0) -> BoxSet:
    return BoxSet(boxes=np.array(boxes_px, np.float32) / size, image_index=np.array(owners, np.int64),
                  num_images=max(owners) + 1)


def test_boxes_equal_to_priors_are_all_matched_with_one_positive_each():
    priors = _grid_priors()
    boxes = _boxset([[0, 0, 50, 50], [50, 0, 100, 50], [0, 50, 50, 100], [50, 50, 100, 100]], [0, 0, 0, 1])
    cov = prior_coverage(boxes, priors, 0.5)
    assert cov.share_matched == 1.0
    np.testing.assert_allclose(cov.best_iou, 1.0)
    assert cov.num_above.tolist() == [1, 1, 1, 1] and cov.positives.tolist() == [1, 1, 1, 1]
    assert cov.mean_positives == 1.0 and cov.best_level.tolist() == [0, 0, 0, 0]


def test_boxes_smaller_than_every_prior_give_the_hand_computed_share():
    priors = _grid_priors()
    # IoU with the prior [0, 50]^2: 1.0; 40x40 inside it: 1600 / 2500 = 0.64; 10x10 inside it: 100 / 2500 = 0.04
    boxes = _boxset([[0, 0, 50, 50], [5, 5, 45, 45], [20, 20, 30, 30]], [0, 1, 2])
    cov = prior_coverage(boxes, priors, 0.5)
    np.testing.assert_allclose(cov.best_iou, [1.0, 0.64, 0.04], rtol=1e-5)
    assert cov.share_matched == pytest.approx(2 / 3)
    assert cov.num_above.tolist() == [1, 1, 0]
    assert cov.positives.tolist() == [1, 1, 1]  # the bipartite stage gives the small box its best prior anyway
    # only small boxes: none reaches the threshold
    small = _boxset([[20, 20, 30, 30], [60, 60, 70, 70]], [0, 1])
    assert prior_coverage(small, priors, 0.5).share_matched == 0.0
    # two boxes wanting the same prior in one image: the bipartite stage gives it to the better one; the other
    # overlaps no other prior, so it gets no positive at all (Caffe keeps no zero overlaps)
    both = prior_coverage(_boxset([[0, 0, 50, 50], [20, 20, 30, 30]], [0, 0]), priors, 0.5)
    assert both.positives.tolist() == [1, 0] and both.summary()["boxes_without_positive"] == 1


def test_positives_count_every_prior_above_the_threshold():
    # 2 priors of the same place and size plus one shifted by 10 px: a 50x50 box on the first gets 3 positives
    cfg = PriorConfig(image_size=(100, 100), levels=(PriorLevel(min_sizes=(50.0, 50.0 + 1e-3), step=50.0),))
    priors = ModelPriors.from_config(cfg, [(2, 2)])
    cov = prior_coverage(_boxset([[0, 0, 50, 50]], [0]), priors, 0.5)
    assert cov.num_above.tolist() == [2] and cov.positives.tolist() == [2]


def test_worst_case_iou_by_hand():
    # 20x20 box, step 8: the nearest prior centre is at most 4 px away in x and y: 16*16 / (2*400 - 256)
    assert worst_case_iou(20, 20, 8, 8) == pytest.approx(256 / 544)
    assert worst_case_iou(100, 100, 32, 32) == pytest.approx(84 * 84 / (20000 - 84 * 84))
    assert worst_case_iou(4, 4, 16, 16) == 0.0
    # the side at which the worst case reaches 0.5: 16 / (2 (1 - sqrt(2/3))) = 43.596 px on a stride-16 map
    side = min_side_at_threshold(16, 0.5)
    assert side == pytest.approx(43.596, abs=1e-3) and worst_case_iou(side, side, 16, 16) == pytest.approx(0.5)


def test_iou_kmeans_recovers_two_planted_sizes_deterministically():
    rng = np.random.default_rng(3)
    small = np.array([10.0, 10.0]) + rng.uniform(-0.5, 0.5, (60, 2))
    wide = np.array([40.0, 20.0]) + rng.uniform(-0.5, 0.5, (40, 2))
    wh = np.concatenate([wide, small])
    centers = iou_kmeans(wh, 2, seed=0)
    np.testing.assert_allclose(centers, [[10.0, 10.0], [40.0, 20.0]], atol=0.3)
    np.testing.assert_array_equal(centers, iou_kmeans(wh, 2, seed=0))
    assert iou_kmeans(np.array([[5.0, 5.0]] * 3), 4).shape == (1, 2)  # no more clusters than distinct sizes
    with pytest.raises(ValueError, match="positive"):
        iou_kmeans(np.array([[0.0, 5.0]]), 1)


def test_wh_iou_by_hand():
    np.testing.assert_allclose(wh_iou(np.array([[10.0, 10.0]]), np.array([[10.0, 10.0], [20.0, 5.0]])),
                               [[1.0, 50.0 / 150.0]])


def test_proposal_puts_sizes_on_the_coarsest_map_that_reaches_the_threshold():
    cfg = PriorConfig(image_size=(256, 256), levels=(PriorLevel(min_sizes=(16.0,), step=8.0),
                                                     PriorLevel(min_sizes=(64.0,), aspect_ratios=(2.0,), step=32.0)))
    priors = ModelPriors.from_config(cfg, [(32, 32), (8, 8)])
    # 20x20 reaches 0.5 on no map (0.47 at step 8): the finest; 100x100 reaches it at step 32 (0.545); 30x60
    # (ratio 1/2) at step 8 only
    new = propose_priors(priors, np.array([[20.0, 20.0], [30.0, 60.0], [100.0, 100.0]]), 0.5)
    assert new.levels[0].min_sizes == (20.0, 42.4) and new.levels[0].aspect_ratios == (2.0,)
    assert new.levels[1].min_sizes == (100.0,) and new.levels[1].aspect_ratios == ()
    assert new.levels[1].step == 32.0 and new.image_size == (256, 256)
    # ratios under 1.4 are left to the square; 60/33 = 1.82 and 2.0 are merged into the first (1.8)
    mixed = propose_priors(priors, np.array([[12.0, 10.0], [30.0, 60.0], [33.0, 60.0]]), 0.5)
    assert mixed.levels[0].min_sizes == (11.0, 42.4, 44.5) and mixed.levels[0].aspect_ratios == (1.8,)
    assert mixed.levels[0].num_priors == 3 * 3
    # a map given no size keeps its own level
    only_small = propose_priors(priors, np.array([[20.0, 20.0]]), 0.5)
    assert only_small.levels[1] == cfg.levels[1]


def test_prior_config_dict_round_trip_and_errors():
    cfg = get_prior_preset("ssd300-voc")
    assert prior_config_from_dict(prior_config_to_dict(cfg)) == cfg
    data = prior_config_to_dict(cfg)
    data["levels"][0]["bogus"] = 1
    with pytest.raises(ValueError, match=r"priors.levels\[0\]: unknown key\(s\) bogus"):
        prior_config_from_dict(data)
    with pytest.raises(ValueError, match=r"priors.levels\[1\].min_sizes: 'x' is not a finite number"):
        prior_config_from_dict({"image_size": [300, 300], "levels": [{"min_sizes": [30]}, {"min_sizes": ["x"]}]})
    with pytest.raises(ValueError, match="exceeds"):
        prior_config_from_dict({"image_size": [300, 10**6], "levels": [{"min_sizes": [30]}]})
    # build_model takes the mapping form (what model.kwargs.priors holds in a training config)
    model = build_model("ssd7", num_classes=3, priors={"image_size": [64, 64], "levels": [
        {"min_sizes": [s], "step": st} for s, st in ((6, 8), (12, 16), (24, 32), (48, 64))]})
    assert model.num_priors == 8 * 8 + 4 * 4 + 2 * 2 + 1 and model.input_spec.image_size == (64, 64)


def _voc(root: Path, images: list[tuple[tuple[int, int], list[list[float]]]]) -> Path:
    """A VOC root with one class 'obj'; ``images``: ``((height, width), boxes xyxy pixels)`` per image."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, ((h, w), boxes) in enumerate(images):
        objs = "".join(f"<object><name>obj</name><difficult>0</difficult><bndbox><xmin>{b[0] + 1}</xmin>"
                       f"<ymin>{b[1] + 1}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                       for b in boxes)
        (root / "Annotations" / f"im{i}.xml").write_text(
            f"<annotation><filename>im{i}.png</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")
        Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(root / "JPEGImages" / f"im{i}.png")
    (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"im{i}\n" for i in range(len(images))))
    return root


def _ssd7_config(path: Path, data: Path | None = None) -> Path:
    cfg = {"model": {"name": "ssd7", "kwargs": {"image_size": [64, 64]}}}
    if data is not None:
        cfg.update({"name": "fit", "steps": 1, "threads": 1, "log_every": 1,
                    "data": {"train": str(data), "val": str(data), "train_split": "train", "val_split": "train",
                             "batch_size": 2, "augment": "none"},
                    "eval": {"at_end": False}, "checkpoint": {"every_steps": 1}})
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_collect_boxes_normalizes_by_each_image(tmp_path):
    root = _voc(tmp_path / "voc", [((100, 200), [[0, 0, 50, 100]]), ((50, 50), [[10, 10, 20, 30], [0, 0, 50, 50]])])
    boxes = collect_boxes(open_dataset(root))
    np.testing.assert_allclose(boxes.boxes, [[0, 0, 0.25, 1.0], [0.2, 0.2, 0.4, 0.6], [0, 0, 1, 1]], atol=1e-6)
    assert boxes.image_index.tolist() == [0, 1, 1] and boxes.num_images == 2
    # at a 64x64 input (the stretch resize) the first box is 16 x 64 pixels
    np.testing.assert_allclose(boxes.wh_pixels((64, 64))[0], [16.0, 64.0])


def test_cli_boxes_on_the_models_priors_give_full_coverage(tmp_path, capsys):
    mp = model_priors("ssd7", 2, {"image_size": [64, 64]})
    xyxy = cxcywh_to_xyxy(mp.priors.double())
    inside = ((xyxy >= 0) & (xyxy <= 1)).all(dim=1) & (mp.priors[:, 2] * 64 >= 8)
    chosen = xyxy[inside][:: max(1, int(inside.sum()) // 12)][:12]
    # a 128x96 image (W x H): the model input is 64x64, so the pixel boxes are the priors times (128, 96)
    boxes = (chosen * torch.tensor([128.0, 96.0, 128.0, 96.0], dtype=torch.float64)).round().tolist()
    root = _voc(tmp_path / "voc", [((96, 128), boxes)])
    config = _ssd7_config(tmp_path / "ssd7_64.yaml")
    out, js = tmp_path / "prior.yaml", tmp_path / "fit.json"
    assert main(["anchors", "fit", str(root), "--model", str(config), "--out", str(out), "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    assert report["current"]["share_matched"] == 1.0 and report["boxes"]["count"] == len(boxes)
    assert report["current"]["mean_best_iou"] > 0.85
    text = capsys.readouterr().out
    assert "boxes whose best prior IoU >= 0.5: 1.0000" in text and f"wrote {out}" in text
    fragment = yaml.safe_load(out.read_text())
    assert fragment["base"] == str(config.resolve()) and fragment["model"]["name"] == "ssd7"
    assert prior_config_from_dict(fragment["model"]["kwargs"]["priors"]).image_size == (64, 64)
    # --out is not replaced without --overwrite
    assert main(["anchors", "fit", str(root), "--model", str(config), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_train_reads_the_fragment(tmp_path, capsys):
    root = _voc(tmp_path / "voc", [((64, 64), [[4, 4, 20, 20], [30, 10, 60, 40]]), ((64, 64), [[8, 30, 24, 62]])])
    config = _ssd7_config(tmp_path / "train.yaml", root)
    frag = tmp_path / "prior.yaml"
    assert main(["anchors", "fit", str(root), "--model", str(config), "--clusters", "2", "--out", str(frag),
                 "-q"]) == 0
    assert capsys.readouterr().out == ""
    proposed = prior_config_from_dict(yaml.safe_load(frag.read_text())["model"]["kwargs"]["priors"])
    run = tmp_path / "run"
    assert main(["train", str(frag), "--out", str(run), "--no-progress", "-q"]) == 0, capsys.readouterr().err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert prior_config_from_dict(saved["model"]["kwargs"]["priors"]) == proposed
    expected = build_model("ssd7", num_classes=2, priors=proposed).num_priors
    ckpt = next(p for p in sorted(run.rglob("*.pt")))
    assert load_model(ckpt).num_priors == expected != build_model("ssd7", 2, image_size=(64, 64)).num_priors


def test_cli_errors_are_messages(tmp_path, capsys):
    root = _voc(tmp_path / "voc", [((32, 32), [[0, 0, 16, 16]])])
    assert main(["anchors", "fit", str(root), "--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multibox anchors fit: error: --model 'nope': not a registered model") and "ssd7" in err
    with pytest.raises(SystemExit) as e:  # argparse's own usage error
        main(["anchors", "fit", str(root), "--model", "ssd7", "--threshold", "2"])
    assert e.value.code == 2 and "--threshold: '2' is not in [0, 1]" in capsys.readouterr().err
    empty = _voc(tmp_path / "empty", [((32, 32), [])])
    assert main(["anchors", "fit", str(empty), "--model", "ssd7"]) == 2
    assert "has no boxes" in capsys.readouterr().err


def test_cli_unknown_dataset_is_a_message(tmp_path, capsys):
    assert main(["anchors", "fit", str(tmp_path / "missing"), "--model", "ssd7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multibox anchors fit: error: ") and "missing" in err and "no such dataset" in err


def test_anchors_preset_still_works(capsys):
    assert main(["anchors", "ssd300-voc"]) == 0
    assert "total priors: 8732" in capsys.readouterr().out


def test_help_names_the_fit_command(capsys):
    for argv in (["anchors", "--help"], ["anchors", "fit", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "multibox anchors fit DATASET --model M" in out and "--clusters K" in out
