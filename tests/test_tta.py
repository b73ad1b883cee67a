"""Test-time augmentation (``multibox.tta``, ``Detector.detect_tta``, ``detect/eval --tta``, ``eval.tta``): views
and their inverse on hand-drawn rectangles, weighted box fusion on hand-computed boxes, a content-driven fake
detector that finds a bright cell in every view, the detector against the views run one by one, and the
commands."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from multibox.cli import main
from multibox.commands import eval as eval_cmd
from multibox.config import TTA_MODE_NAMES, ConfigError, config_from_dict
from multibox.detections import Detections
from multibox.detector import Detector
from multibox.engine.evaluator import evaluate_model
from multibox.tta import TTA_MODES, TTA_SHIFTS, View, fuse_detections, shift_pixels, tta_views, unview_boxes, view_image
from test_detect import make_bundle, photo
from test_eval_command import CLASSES, FakeSSD, ListDataset, voc_root  # noqa: F401 (voc_root is a fixture)
from test_tiling import BlobSSD, bundle_file, run_main  # noqa: F401 (bundle_file is a fixture)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DIHEDRAL = TTA_MODES["dihedral"]


def bright_box(img):
    """xyxy pixel box (x1, y1 exclusive) of the non-zero pixels of an [H, W, C] array or [C, H, W] tensor."""
    a = img[..., 0] if isinstance(img, np.ndarray) else img[0].numpy()
    ys, xs = np.nonzero(a)
    return torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)


# ----------------------------------------------------------------------------------------------- views


def test_view_sets():
    assert len(tta_views("hflip")) == 2 and len(tta_views("flips")) == 4 and len(set(DIHEDRAL)) == 8
    assert tta_views("flips")[0] == (False, 0, 0) and set(tta_views("flips")) < set(DIHEDRAL)
    with pytest.raises(ValueError, match="unknown test-time augmentation 'rot45'.*dihedral"):
        tta_views("rot45")


def test_view_image_hand_cases():
    a = np.arange(6).reshape(2, 3)[..., None]  # [[0 1 2], [3 4 5]]
    assert view_image(a, (True, 0))[..., 0].tolist() == [[2, 1, 0], [5, 4, 3]]
    assert view_image(a, (False, 1))[..., 0].tolist() == [[2, 5], [1, 4], [0, 3]]  # a quarter turn to the left
    assert view_image(a, (False, 2))[..., 0].tolist() == [[5, 4, 3], [2, 1, 0]]
    assert view_image(a, (True, 2))[..., 0].tolist() == [[3, 4, 5], [0, 1, 2]]  # the top-bottom mirror
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
    for v in DIHEDRAL:  # tensors [C, H, W] turn the same way as arrays [H, W, C]
        assert view_image(t, v)[0].tolist() == view_image(a, v)[..., 0].tolist()
        assert view_image(a, v).flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("h, w", [(5, 8), (9, 4), (7, 7)])
def test_unview_maps_a_drawn_rectangle_back_exactly(h, w):
    img = np.zeros((h, w, 3), np.uint8)
    img[1:3, 2:w - 1] = 255
    want = torch.tensor([[2.0, 1, w - 1, 3]])
    for v in DIHEDRAL:
        seen = view_image(img, v)
        assert seen.shape[:2] == ((h, w) if v[1] % 2 == 0 else (w, h))
        torch.testing.assert_close(unview_boxes(bright_box(seen), v, (h, w)), want, rtol=0, atol=0)


def test_shifted_view_sets():
    views = tta_views("dihedral+shift")
    assert len(views) == len(set(views)) == 32 and TTA_SHIFTS == (0, 2, 4, 6)
    assert [v for v in views if v.shift == 0] == list(DIHEDRAL)
    assert {v.shift for v in views} == {0, 2, 4, 6} and all((v.mirror, v.turns, 0) in DIHEDRAL for v in views)
    assert len(tta_views("hflip+shift")) == 8 and len(tta_views("flips+shift")) == 16
    assert sorted(TTA_MODES) == sorted(TTA_MODE_NAMES)  # the config's torch-free list names the same modes


def test_shift_pixels_hand_cases():
    # the trees recipe: a 400 px photo seen at 448 px; 2, 4, 6 input pixels are 1.79, 3.57, 5.36 photo pixels
    assert [shift_pixels(View(False, 0, s), (400, 400), (448, 448)) for s in (0, 2, 4, 6)] == \
        [(0, 0), (2, 2), (4, 4), (5, 5)]
    assert shift_pixels(View(True, 3, 6), (200, 400), (448, 448)) == (5, 3)  # 6*400/448 = 5.36, 6*200/448 = 2.68
    assert shift_pixels(View(False, 0, 3), (10, 20)) == (3, 3)  # no input size: pixels of the image
    assert shift_pixels((True, 1), (10, 20), (5, 5)) == (0, 0)  # a plain pair is unshifted
    with pytest.raises(ValueError, match=r"view \(False, 0, -2\): the shift is in pixels right and down, >= 0"):
        view_image(np.zeros((4, 4, 3), np.uint8), View(False, 0, -2))


def test_view_image_shift_hand_cases():
    a = np.arange(12).reshape(3, 4)[..., None]  # [[0 1 2 3], [4 5 6 7], [8 9 10 11]]
    # moved one right and one down, the first row and column repeated, the last ones cut
    assert view_image(a, View(False, 0, 1))[..., 0].tolist() == [[0, 0, 1, 2], [0, 0, 1, 2], [4, 4, 5, 6]]
    # shifted first, then mirrored
    assert view_image(a, View(True, 0, 1))[..., 0].tolist() == [[2, 1, 0, 0], [2, 1, 0, 0], [6, 5, 4, 4]]
    # 1 input pixel of an input half the image's size is 2 image pixels right and 2 down
    assert view_image(a, View(False, 0, 1), (1.5, 2))[..., 0].tolist() == [[0, 0, 0, 1]] * 3
    assert view_image(a, View(False, 0, 1), (12, 16))[..., 0].tolist() == a[..., 0].tolist()  # 0.25 px: none
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
    for v in tta_views("dihedral+shift"):  # tensors [C, H, W] shift and turn the same way as arrays [H, W, C]
        assert view_image(t, v, (6, 2))[0].tolist() == view_image(a, v, (6, 2))[..., 0].tolist()
        assert view_image(a, v, (6, 2)).flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("h, w", [(30, 36), (38, 28)])
def test_unview_maps_a_drawn_rectangle_back_exactly_from_shifted_views(h, w):
    img = np.zeros((h, w, 3), np.uint8)
    img[2:5, 3:w - 14] = 255  # away from the bottom-right edges, which a shift cuts
    want = torch.tensor([[3.0, 2, w - 14, 5]])
    for v in tta_views("dihedral+shift"):
        seen = view_image(img, v, (h / 2, w / 2))  # the network at half the image's size: shifts of 0, 4, 8, 12
        assert seen.shape[:2] == ((h, w) if v.turns % 2 == 0 else (w, h))
        dx, dy = shift_pixels(v, (h, w), (h / 2, w / 2))
        assert dx == 2 * v.shift and dy == 2 * v.shift
        torch.testing.assert_close(unview_boxes(bright_box(seen), v, (h, w), (h / 2, w / 2)), want, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- fusion


def dets(boxes, scores, labels=None):
    n = len(scores)
    return Detections(torch.tensor(boxes, dtype=torch.float32).reshape(n, 4), torch.tensor(scores),
                      torch.tensor(labels if labels is not None else [1] * n), ["bg", "a", "b"], (100, 100))


def test_fusion_hand_case():
    v1 = dets([[0, 0, 10, 10], [50, 50, 60, 60]], [0.8, 0.9])
    v2 = dets([[2, 0, 12, 10], [0, 0, 10, 10]], [0.4, 0.7], labels=[1, 2])
    got = fuse_detections([v1, v2])
    # class 1: [0,0,10,10] (0.8) and [2,0,12,10] (0.4) overlap with IoU 80/120 > 0.55: weighted mean, score 1.2/2;
    # [50,50,60,60] only in one view: 0.9/2; class 2 is fused on its own: 0.7/2
    assert got.labels.tolist() == [1, 1, 2]
    torch.testing.assert_close(got.scores, torch.tensor([0.6, 0.45, 0.35]))
    torch.testing.assert_close(got.boxes, torch.tensor([[2 / 3, 0, 10 + 2 / 3, 10], [50, 50, 60, 60],
                                                        [0, 0, 10, 10]]))
    assert got.image_size == (100, 100) and got.class_names == ["bg", "a", "b"]
    # a box below the IoU threshold starts its own cluster: [5,0,15,10] has IoU 50/150 with [0,0,10,10]
    apart = fuse_detections([dets([[0, 0, 10, 10]], [0.8]), dets([[5, 0, 15, 10]], [0.6])])
    torch.testing.assert_close(apart.scores, torch.tensor([0.4, 0.3]))
    # conf and keep_top_k apply to the fused scores
    assert fuse_detections([v1, v2], conf=0.4).scores.tolist() == pytest.approx([0.6, 0.45])
    assert len(fuse_detections([v1, v2], keep_top_k=1)) == 1
    # more boxes in one cluster than views: the score stays a mean (<= the best score)
    crowd = fuse_detections([dets([[0, 0, 10, 10], [0, 0, 10, 11], [0, 0, 10, 9]], [0.9, 0.6, 0.3])])
    assert len(crowd) == 1 and crowd.scores.item() == pytest.approx(0.6)
    assert len(fuse_detections([Detections.empty(["bg", "a"], (5, 5))] * 3)) == 0


# ----------------------------------------------------------------------------------------------- detector


@pytest.mark.parametrize("h, w", [(64, 64), (64, 128)])
def test_every_view_finds_the_bright_cell_and_fuses_to_it(h, w):
    """BlobSSD finds a bright square filling one cell of its 4 x 4 grid; the grid turns with the image, so
    every view finds the same box, which the fusion keeps at full score."""
    model = BlobSSD()
    det = Detector.from_model(model, runtime="eager", batch_size=8)
    img = np.zeros((h, w, 3), np.uint8)
    ch, cw = h // 4, w // 4
    img[ch:2 * ch, 2 * cw:3 * cw] = 255  # cell (row 1, column 2)
    plain = det(img, conf=0.9)
    for mode in ("hflip", "flips", "dihedral"):
        got = det(img, conf=0.9, tta=mode)
        torch.testing.assert_close(got.boxes, torch.tensor([[2.0 * cw, ch, 3 * cw, 2 * ch]]))
        torch.testing.assert_close(got.scores, plain.scores)
        assert got.image_size == (h, w) and got.labels.tolist() == [1]
    assert model.seen[-1][0] == 8  # the 8 views of the last call ran as one batch


def test_detect_tta_equals_the_views_run_one_by_one():
    det = Detector(make_bundle(seed=2), runtime="eager", batch_size=5, postprocess={"keep_top_k": 30})
    images = [photo(120, 170, seed=3), photo(90, 90, seed=4)]
    got = det(images, conf=0.05, tta="dihedral")
    for img, g in zip(images, got, strict=True):
        views = []
        for v in DIHEDRAL:
            d = det(view_image(img, v), conf=0.05)
            views.append(Detections(unview_boxes(d.boxes, v, img.shape[:2]), d.scores, d.labels))
        want = fuse_detections(views, keep_top_k=30, conf=0.05, image_size=img.shape[:2]).clip()
        assert len(g) == len(want) > 5
        torch.testing.assert_close(g.boxes, want.boxes)
        torch.testing.assert_close(g.scores, want.scores)
        assert g.labels.tolist() == want.labels.tolist() and g.image_size == img.shape[:2]
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        det(images[0], tta="mirror")
    # shifted views: shifts in pixels of the network input, whole pixels of the image
    seen = det.input_spec.image_size
    for img, g in zip(images, det(images, conf=0.05, tta="flips+shift"), strict=True):
        views = []
        for v in tta_views("flips+shift"):
            d = det(view_image(img, v, seen), conf=0.05)
            views.append(Detections(unview_boxes(d.boxes, v, img.shape[:2], seen), d.scores, d.labels))
        want = fuse_detections(views, keep_top_k=30, conf=0.05, image_size=img.shape[:2]).clip()
        assert len(g) == len(want) > 5
        torch.testing.assert_close(g.boxes, want.boxes)
        torch.testing.assert_close(g.scores, want.scores)


def test_detect_views_are_the_unfused_views_and_fuse_across_detectors():
    """detect_views gives each view's detections mapped back (what detect_tta fuses); the views of two detectors
    fused together are an ensemble, and equal fusing their one-by-one runs."""
    dets = [Detector(make_bundle(seed=s), runtime="eager", batch_size=3, postprocess={"keep_top_k": 30})
            for s in (2, 5)]
    images = [photo(120, 170, seed=3), photo(90, 90, seed=4)]
    flips = ((False, 0), (True, 0), (False, 2), (True, 2))
    per_det = [d.detect_views(images, "flips", conf=0.05) for d in dets]
    for i, img in enumerate(images):
        singles = []
        for d, views in zip(dets, per_det, strict=True):
            assert len(views[i]) == 4
            for v, got in zip(flips, views[i], strict=True):
                alone = d(view_image(img, v), conf=0.05)
                # batched with other views here, alone there: equal up to float rounding (1e-5 px seen)
                torch.testing.assert_close(got.boxes, unview_boxes(alone.boxes, v, img.shape[:2]), atol=1e-3,
                                           rtol=0)
                torch.testing.assert_close(got.scores, alone.scores, atol=1e-5, rtol=0)
                assert got.image_size == img.shape[:2]
                singles.append(Detections(got.boxes, got.scores, got.labels))
        fused_one = fuse_detections(per_det[0][i], keep_top_k=30, conf=0.05, image_size=img.shape[:2]).clip()
        torch.testing.assert_close(fused_one.boxes, dets[0](img, conf=0.05, tta="flips").boxes, atol=1e-3, rtol=0)
        both = fuse_detections([*per_det[0][i], *per_det[1][i]], keep_top_k=30, conf=0.05, image_size=img.shape[:2])
        want = fuse_detections(singles, keep_top_k=30, conf=0.05, image_size=img.shape[:2])
        assert len(both) == len(want) > 0
        torch.testing.assert_close(both.boxes, want.boxes)


def test_tta_with_tiles_and_evaluate_model():
    ds = ListDataset([(100, 200)], [[[25, 25, 75, 75], [125, 25, 175, 75]]], ["background", "a"])
    model = FakeSSD(["background", "a"])  # finds the centre half of whatever it sees: symmetric in every view
    r = evaluate_model(model, ds, metric="voc12", progress=False, tile=100, overlap=0.0, tta="dihedral")
    assert r.mAP == pytest.approx(1.0) and r.tta == "dihedral" and r.to_json()["tta"] == "dihedral"
    torch.testing.assert_close(r.detections[0].boxes, torch.tensor([[25.0, 25, 75, 75], [125, 25, 175, 75]]))
    assert "tta" not in evaluate_model(model, ds, metric="voc12", progress=False).to_json()
    # shifted views: FakeSSD finds each window's centre half wherever the content is, so a view shifted by (d, d)
    # maps back d pixels up-left; the windows (100 px) are seen at 64 px: 2, 4, 6 input pixels are 3.125, 6.25,
    # 9.375 -> 3, 6, 9 image pixels, and the fused box is the mean, 4.5 pixels up-left of the centre halves
    shifted = evaluate_model(model, ds, metric="voc12", progress=False, tile=100, overlap=0.0, tta="dihedral+shift")
    assert shifted.tta == "dihedral+shift"
    torch.testing.assert_close(shifted.detections[0].boxes, torch.tensor([[20.5, 20.5, 70.5, 70.5],
                                                                          [120.5, 20.5, 170.5, 70.5]]))
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        evaluate_model(model, ds, progress=False, tta="twice")


def test_config_eval_tta():
    assert config_from_dict({"eval": {"tta": "dihedral"}}).eval.tta == "dihedral"
    assert config_from_dict({"eval": {"tta": "dihedral+shift"}}).eval.tta == "dihedral+shift"
    with pytest.raises(ConfigError, match="eval.tta='rot'.*dihedral"):
        config_from_dict({"eval": {"tta": "rot"}})


# ----------------------------------------------------------------------------------------------- commands


def test_detect_command_tta(tmp_path, bundle_file, capsys):  # noqa: F811
    img = photo(110, 140, seed=9)
    Image.fromarray(img).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["detect", str(tmp_path / "a.png"), "--model", str(bundle_file), "--out", str(out), "--conf", "0.05",
                 "--tta", "flips", "--runtime", "eager", "--json", str(tmp_path / "s.json"), "--no-progress"]) == 0
    assert "test-time augmentation flips" in capsys.readouterr().out
    doc = json.loads((out / "detections.json").read_text())
    assert doc["tta"] == json.loads((tmp_path / "s.json").read_text())["tta"] == "flips"
    want = Detector.from_file(bundle_file, runtime="eager")(img, conf=0.05, tta="flips")
    got = np.array([a["bbox"] for a in doc["annotations"]])
    xywh = torch.cat([want.boxes[:, :2], want.boxes[:, 2:] - want.boxes[:, :2]], 1).numpy()
    assert len(got) == len(want) > 0
    np.testing.assert_allclose(got, xywh, atol=1e-3)
    assert run_main(["detect", str(tmp_path / "a.png"), "--model", str(bundle_file), "--out", str(tmp_path / "o"),
                     "--tta", "sideways"]) == 2
    err = capsys.readouterr().err
    assert "multibox detect: error: argument --tta: invalid choice: 'sideways'" in err and "Traceback" not in err


def test_eval_command_tta(voc_root, tmp_path, monkeypatch, capsys):  # noqa: F811
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"fake")
    monkeypatch.setattr(eval_cmd, "_default_loader", lambda path, device, **kw: FakeSSD(["background", *CLASSES]))
    assert main(["eval", str(ckpt), "--data", str(voc_root), "--json", str(tmp_path / "m.json"), "--tta", "dihedral",
                 "--runtime", "eager", "--no-progress"]) == 0
    assert "test-time augmentation dihedral" in capsys.readouterr().out
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["tta"] == "dihedral" and m["num_images"] == 3
    dets_file = tmp_path / "d.json"
    dets_file.write_text("[]")
    assert run_main(["eval", "--gt", str(voc_root), "--detections", str(dets_file), "--tta", "flips"]) == 2
    assert "--tta runs a model on mirrored / turned copies" in capsys.readouterr().err
