"""Tiled inference (``multibox.tiling``, ``Detector.detect_tiled``, ``detect/eval --tile``): the windows on hand
cases, the cross-tile merge on hand-made boxes, boxes of a content-driven fake detector landing at their
full-image position, one window equal to the untiled run, an independent torchvision reference of the merge,
and the commands."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from multibox.box_coder import BoxCoder
from multibox.cli import main
from multibox.commands import eval as eval_cmd
from multibox.detections import Detections
from multibox.detector import Detector
from multibox.engine.evaluator import evaluate_model
from multibox.interop.bundle import save_bundle
from multibox.models.detector import SSDOutput
from multibox.models.spec import InputSpec
from multibox.tiling import check_tiling, merge_tile_detections, tile_windows
from test_detect import NAMES, make_bundle, photo
from test_eval_command import CLASSES, FakeSSD, ListDataset, voc_root  # noqa: F401 (voc_root is a fixture)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ----------------------------------------------------------------------------------------------- windows


def coverage(h, w, windows):
    seen = np.zeros((h, w), np.int32)
    for x0, y0, x1, y1 in windows:
        seen[y0:y1, x0:x1] += 1
    return seen


def test_windows_hand_cases():
    # stride round(100 * 0.75) = 75: starts 0, 75, 150; 150 + 100 = 250 is the right edge
    assert tile_windows(100, 250, 100, 0.25) == [(0, 0, 100, 100), (75, 0, 175, 100), (150, 0, 250, 100)]
    # 260 wide: 0, 75, 150 end inside, then one flush with the edge at 160
    assert [w[0] for w in tile_windows(100, 260, 100, 0.25)] == [0, 75, 150, 160]
    # overlap 0: stride = tile; rows then columns
    assert tile_windows(20, 30, 10, 0.0) == [(0, 0, 10, 10), (10, 0, 20, 10), (20, 0, 30, 10),
                                            (0, 10, 10, 20), (10, 10, 20, 20), (20, 10, 30, 20)]
    # stride round(400 * 0.7) = 280 (not 280.00000000000006), 1000 px: 0, 280, 560, then 600 flush
    assert [w[0] for w in tile_windows(400, 1000, 400, 0.3)] == [0, 280, 560, 600]
    # one side shorter than the tile: one window along it, of the side's length
    assert tile_windows(50, 250, 100, 0.25) == [(0, 0, 100, 50), (75, 0, 175, 50), (150, 0, 250, 50)]
    # tile 1 with a large overlap: stride max(1, round(0.1)) = 1
    assert tile_windows(2, 3, 1, 0.9) == [(x, y, x + 1, y + 1) for y in range(2) for x in range(3)]


@pytest.mark.parametrize("h, w", [(60, 40), (40, 60), (100, 100), (99, 101)])
def test_small_image_is_one_window(h, w):
    assert tile_windows(h, w, max(h, w), 0.25) == [(0, 0, w, h)]
    assert tile_windows(h, w, 400, 0.5) == [(0, 0, w, h)]


@pytest.mark.parametrize("h, w, tile, overlap", [(1000, 777, 400, 0.25), (401, 1200, 400, 0.5),
                                                 (333, 334, 64, 0.1), (64, 900, 64, 0.0), (130, 97, 13, 0.6)])
def test_windows_cover_the_image_exactly_flush_with_the_edges(h, w, tile, overlap):
    windows = tile_windows(h, w, tile, overlap)
    assert (coverage(h, w, windows) >= 1).all()
    stride = round(tile * (1 - overlap))
    xs = sorted({x0 for x0, _, _, _ in windows})
    ys = sorted({y0 for _, y0, _, _ in windows})
    assert len(windows) == len(xs) * len(ys)
    for x0, y0, x1, y1 in windows:
        assert (x1 - x0, y1 - y0) == (min(tile, w), min(tile, h))
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    for starts, length in ((xs, w), (ys, h)):
        assert starts[0] == 0 and starts[-1] + min(tile, length) == length  # flush with the far edge
        assert all(b - a == stride for a, b in zip(starts[:-2], starts[1:-1], strict=True))  # regular steps
        assert 0 < starts[-1] - starts[-2] <= stride if len(starts) > 1 else True


@pytest.mark.parametrize("tile, overlap, match", [(0, 0.25, "tile"), (-3, 0.25, "tile"), (2.5, 0.25, "tile"),
                                                  (True, 0.25, "tile"), (100, 1.0, "overlap"),
                                                  (100, -0.1, "overlap"), (100, 1.5, "overlap"),
                                                  (100, float("nan"), "overlap"), (100, "x", "overlap")])
def test_bad_tiling_arguments_raise(tile, overlap, match):
    with pytest.raises(ValueError, match=match):
        tile_windows(100, 100, tile, overlap)
    with pytest.raises(ValueError, match=match):
        check_tiling(tile, overlap)


def test_empty_image_raises():
    with pytest.raises(ValueError, match="empty image"):
        tile_windows(0, 10, 5, 0.0)


# ----------------------------------------------------------------------------------------------- merging


def dets(boxes, scores, labels, size):
    return Detections(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores),
                      torch.tensor(labels, dtype=torch.int64), NAMES, size)


# image 100 x 160 (h x w); two windows overlapping on x 60..100
WINDOWS = [(0, 0, 100, 100), (60, 0, 160, 100)]
IMAGE = (100, 160)


def test_duplicates_of_overlapping_tiles_merge():
    a = dets([[70, 20, 90, 40],      # object A, seen by both windows (score .9 here)
              [70, 20, 90, 40],      # a "dog" at the same place: another class, never merged with the cat
              [5, 5, 25, 25]],       # object B, only in window 0
             [0.9, 0.5, 0.7], [1, 2, 1], (100, 100))
    b = dets([[10, 20, 30, 40],      # object A in window 1's pixels: (70, 20, 90, 40) in the image (score .8)
              [12, 60, 32, 80],      # object C: (72, 60, 92, 80), IoU with nothing
              [12, 22, 32, 42]],     # (72, 22, 92, 42): IoU with A 324 / 476 = 0.68 > 0.45, suppressed
             [0.8, 0.6, 0.95], [1, 1, 1], (100, 100))
    got = merge_tile_detections([a, b], WINDOWS, IMAGE, iou_threshold=0.45)
    assert got.image_size == IMAGE and got.class_names == NAMES
    # sorted by score: the shifted (72, 22, 92, 42) at .95 now beats A's .9 copy and the .8 copy
    assert got.scores.tolist() == pytest.approx([0.95, 0.7, 0.6, 0.5])
    torch.testing.assert_close(got.boxes, torch.tensor([[72.0, 22, 92, 42], [5, 5, 25, 25], [72, 60, 92, 80],
                                                        [70, 20, 90, 40]]))
    assert got.labels.tolist() == [1, 1, 1, 2]
    # a higher threshold keeps the .68 overlap; the exact duplicates (IoU 1) still merge into the best one
    loose = merge_tile_detections([a, b], WINDOWS, IMAGE, iou_threshold=0.7)
    assert loose.scores.tolist() == pytest.approx([0.95, 0.9, 0.7, 0.6, 0.5])
    # keep_top_k keeps the best
    top = merge_tile_detections([a, b], WINDOWS, IMAGE, iou_threshold=0.7, keep_top_k=2)
    assert top.scores.tolist() == pytest.approx([0.95, 0.9])


def test_boxes_cut_by_an_inner_edge_go_when_another_tile_sees_the_object_whole():
    # object x 90..120: window 0 (x < 100) sees it cut at its inner edge x = 100; window 1 sees it whole
    a = dets([[90, 20, 100, 40], [40, 20, 60, 40]], [0.9, 0.3], [1, 1], (100, 100))
    b = dets([[30, 20, 60, 40]], [0.8], [1], (100, 100))  # (90, 20, 120, 40): IoU with the cut box 1/3 < .45
    got = merge_tile_detections([a, b], WINDOWS, IMAGE, iou_threshold=0.45)
    torch.testing.assert_close(got.boxes, torch.tensor([[90.0, 20, 120, 40], [40, 20, 60, 40]]))
    kept_both = merge_tile_detections([a, b], WINDOWS, IMAGE, iou_threshold=0.45, drop_cut=False)
    assert len(kept_both) == 3  # plain NMS cannot merge them
    # another class does not vouch for the cut box; nor does a box that is itself cut
    other = dets([[30, 20, 60, 40]], [0.8], [2], (100, 100))
    assert len(merge_tile_detections([a, other], WINDOWS, IMAGE, iou_threshold=0.45)) == 3
    cut_too = dets([[0, 20, 20, 40]], [0.8], [1], (100, 100))  # (60, 20, 80, 40) touches window 1's inner x = 60
    assert len(merge_tile_detections([a[0:1], cut_too], WINDOWS, IMAGE, iou_threshold=0.45)) == 2
    # the image border is no cut: a box at window 1's right edge (x 160 = the image's) stays in all cases
    edge = dets([[80, 20, 100, 40]], [0.8], [1], (100, 100))  # (140, 20, 160, 40)
    assert len(merge_tile_detections([dets([], [], [], (100, 100)), edge], WINDOWS, IMAGE,
                                     iou_threshold=0.45)) == 1


@pytest.mark.parametrize("seed, overlap", [(0, 0.3), (1, 0.0), (2, 0.6)])
def test_merge_nms_equals_torchvision_batched_nms(seed, overlap):
    """Random, heavily overlapping boxes (not NMSed within their window): the merge keeps exactly the boxes
    torchvision's batched_nms keeps on all of them, in the same order."""
    g = torch.Generator().manual_seed(seed)
    h, w, tile = 700, 900, 200
    windows = tile_windows(h, w, tile, overlap)
    tiles, shifted = [], []
    for x0, y0, _, _ in windows:
        n = 120
        xy = torch.rand(n, 2, generator=g) * (tile - 10)
        b = torch.cat([xy, (xy + torch.rand(n, 2, generator=g) * 80 + 3).clamp(max=tile)], 1)
        tiles.append(Detections(b, torch.rand(n, generator=g), torch.randint(1, 3, (n,), generator=g), NAMES,
                                (tile, tile)))
        shifted.append(b + torch.tensor([x0, y0, x0, y0], dtype=torch.float32))
    got = merge_tile_detections(tiles, windows, (h, w), iou_threshold=0.45, drop_cut=False)
    b, s = torch.cat(shifted), torch.cat([t.scores for t in tiles])
    lab = torch.cat([t.labels for t in tiles])
    keep = torchvision.ops.batched_nms(b, s, lab, 0.45)
    per_window = sum(len(torchvision.ops.batched_nms(t.boxes, t.scores, t.labels, 0.45)) for t in tiles)
    assert 0 < len(keep) < per_window < len(b)  # suppressions within windows and across (the flush ones overlap)
    assert torch.equal(got.boxes, b[keep]) and torch.equal(got.scores, s[keep])
    assert torch.equal(got.labels, lab[keep])


def test_merge_checks_its_arguments():
    empty = dets([], [], [], (100, 100))
    got = merge_tile_detections([empty, empty], WINDOWS, IMAGE, iou_threshold=0.45)
    assert len(got) == 0 and got.image_size == IMAGE
    with pytest.raises(ValueError, match="one per window"):
        merge_tile_detections([empty], WINDOWS, IMAGE, iou_threshold=0.45)
    with pytest.raises(ValueError, match="iou_threshold"):
        merge_tile_detections([empty, empty], WINDOWS, IMAGE, iou_threshold=1.5)


# ----------------------------------------------------------------------------------------------- detector


class BlobSSD(nn.Module):
    """A detector of bright squares: a 4 x 4 grid of priors (one per cell of the 32 x 32 input); a cell's class-1
    logit grows with its mean brightness (a fully bright cell scores ~1, a half-bright one ~0.47), box deltas 0:
    a bright square filling one cell of a crop is detected as exactly that cell."""

    def __init__(self):
        super().__init__()
        c = (torch.arange(4, dtype=torch.float32) + 0.5) / 4
        cy, cx = torch.meshgrid(c, c, indexing="ij")
        self.register_buffer("priors", torch.stack([cx.flatten(), cy.flatten(), torch.full((16,), 0.25),
                                                    torch.full((16,), 0.25)], 1))
        self.box_coder = BoxCoder()
        self.class_names = ["background", "blob"]
        self.input_spec = InputSpec((32, 32), "RGB", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        v = F.avg_pool2d(x.mean(1, keepdim=True), 8).flatten(1)  # [B, 16] row-major cells
        logits = torch.stack([torch.zeros_like(v), (v - 128.0) / 4.0], -1)
        return SSDOutput(logits, torch.zeros(x.shape[0], 16, 4))


def blob_image():
    """64 x 192 (h x w), dark, with two bright 16 px squares: one at x 64..80 (inside window x 48..112 only, its
    cell (1, 1)), one at x 96..112 (a whole cell of both windows x 48..112 and x 96..160)."""
    img = np.zeros((64, 192, 3), np.uint8)
    img[16:32, 64:80] = 255
    img[32:48, 96:112] = 255
    return img


def test_boxes_land_at_their_full_image_position_and_duplicates_merge():
    model = BlobSSD()
    det = Detector.from_model(model, runtime="eager", batch_size=3)
    windows = tile_windows(64, 192, 64, 0.25)
    assert [w[0] for w in windows] == [0, 48, 96, 128]
    img = blob_image()
    per_tile = det.detect_arrays([img[y0:y1, x0:x1] for x0, y0, x1, y1 in windows], conf=0.9)
    assert [len(d) for d in per_tile] == [0, 2, 1, 0]  # three boxes before merging
    for got in (det(img, conf=0.9, tile=64, overlap=0.25),
                det(torch.from_numpy(img).permute(2, 0, 1).contiguous(), conf=0.9, tile=64, overlap=0.25)):
        assert got.image_size == (64, 192) and got.class_names == ["background", "blob"]
        order = got.boxes[:, 0].argsort()
        torch.testing.assert_close(got.boxes[order], torch.tensor([[64.0, 16, 80, 32], [96, 32, 112, 48]]))
        assert got.labels.tolist() == [1, 1]
    assert {s[1:] for s in model.seen} == {(3, 32, 32)}  # every 64 px crop resized to the network input
    assert max(s[0] for s in model.seen) == 3  # crops batched by batch_size
    # untiled, the 192 px wide image squeezed to 32 px puts no square into a whole cell
    assert len(det(img, conf=0.9)) == 0


def test_one_window_covering_the_image_equals_the_untiled_detections():
    det = Detector(make_bundle(), runtime="eager", postprocess={"keep_top_k": 50})
    for h, w in ((150, 200), (96, 128), (40, 300)):
        img = photo(h, w, seed=h)
        plain = det(img)
        assert len(plain) > 10
        for tile in (max(h, w), 1000):
            tiled = det(img, tile=tile, overlap=0.5)
            assert torch.equal(tiled.boxes, plain.boxes) and torch.equal(tiled.scores, plain.scores)
            assert torch.equal(tiled.labels, plain.labels) and tiled.image_size == plain.image_size == (h, w)


def test_tiled_detection_matches_an_independent_reference():
    """Crops detected one by one, shifted by hand, merged with torchvision's batched NMS."""
    det = Detector(make_bundle(seed=3), runtime="eager", batch_size=4, postprocess={"keep_top_k": 40})
    img = photo(230, 310, seed=5)
    tile, overlap = 120, 0.3
    got = det.detect_tiled([img], tile, overlap, conf=0.02, keep_top_k=60, drop_cut=False)[0]
    stride = round(tile * (1 - overlap))  # 84: x 0, 84, 168, 190; y 0, 84, 110
    boxes, scores, labels = [], [], []
    for y0 in (0, stride, 230 - tile):
        for x0 in (0, stride, 2 * stride, 310 - tile):
            d = det(np.ascontiguousarray(img[y0:y0 + tile, x0:x0 + tile]), conf=0.02)
            boxes.append(d.boxes + torch.tensor([x0, y0, x0, y0], dtype=torch.float32))
            scores.append(d.scores)
            labels.append(d.labels)
    b, s, lab = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    keep = torchvision.ops.batched_nms(b, s, lab, 0.45)[:60]
    assert len(got) == len(keep) > 20
    torch.testing.assert_close(got.scores, s[keep])
    torch.testing.assert_close(got.boxes, b[keep])
    assert got.labels.tolist() == lab[keep].tolist()
    assert (got.boxes[:, 2] <= 310).all() and (got.boxes[:, 3] <= 230).all()


def test_detector_rejects_bad_tiling():
    det = Detector.from_model(BlobSSD(), runtime="eager")
    with pytest.raises(ValueError, match="overlap"):
        det(blob_image(), tile=64, overlap=1.0)
    with pytest.raises(ValueError, match="tile"):
        det(blob_image(), tile=0)


def test_evaluate_model_tiled():
    # FakeSSD finds the centre half of whatever it sees: of each 100 px window when tiled
    ds = ListDataset([(100, 200)], [[[25, 25, 75, 75], [125, 25, 175, 75]]], ["background", "a"])
    model = FakeSSD(["background", "a"])
    r = evaluate_model(model, ds, metric="voc12", progress=False, tile=100, overlap=0.0)
    assert r.mAP == pytest.approx(1.0) and r.tile == {"tile": 100, "overlap": 0.0}
    assert r.to_json()["tile"] == {"tile": 100, "overlap": 0.0}
    torch.testing.assert_close(r.detections[0].boxes, torch.tensor([[25.0, 25, 75, 75], [125, 25, 175, 75]]))
    plain = evaluate_model(model, ds, metric="voc12", progress=False)  # one box (50, 25, 150, 75): no match
    assert plain.mAP == 0.0 and plain.tile is None and "tile" not in plain.to_json()
    with pytest.raises(ValueError, match="overlap"):
        evaluate_model(model, ds, progress=False, tile=100, overlap=1.5)


# ----------------------------------------------------------------------------------------------- commands


def run_main(argv):
    """``main``'s exit status, whether it returns it or argparse exits with it (bad option values)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture
def bundle_file(tmp_path):
    return save_bundle(make_bundle(), tmp_path / "tiny.safetensors")


def test_detect_command_tiled(tmp_path, bundle_file, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    img = photo(150, 260, seed=7)
    Image.fromarray(img).save(folder / "a.png")
    out = tmp_path / "out"
    assert main(["detect", str(folder), "--model", str(bundle_file), "--out", str(out), "--conf", "0.01",
                 "--tile", "100", "--overlap", "0.2", "--runtime", "eager", "--json", str(tmp_path / "s.json"),
                 "--no-progress"]) == 0
    assert "tiles of 100 px, overlap 0.2" in capsys.readouterr().out
    summary = json.loads((tmp_path / "s.json").read_text())
    doc = json.loads((out / "detections.json").read_text())
    assert summary["tile"] == doc["tile"] == {"tile": 100, "overlap": 0.2}
    want = Detector.from_file(bundle_file, runtime="eager")(img, conf=0.01, tile=100, overlap=0.2)
    assert summary["detections"] == len(doc["annotations"]) == len(want) > 0
    got = np.array([a["bbox"] for a in doc["annotations"]])
    xywh = torch.cat([want.boxes[:, :2], want.boxes[:, 2:] - want.boxes[:, :2]], 1).numpy()
    np.testing.assert_allclose(got, xywh, atol=1e-3)
    # without --tile: no tile in the outputs
    assert main(["detect", str(folder), "--model", str(bundle_file), "--out", str(out), "--overwrite",
                 "--runtime", "eager", "--no-progress", "-q"]) == 0
    assert json.loads((out / "detections.json").read_text())["tile"] is None


@pytest.mark.parametrize("args, where", [(["--tile", "100", "--overlap", "1.5"], "argument --overlap"),
                                         (["--tile", "100", "--overlap", "-0.1"], "argument --overlap"),
                                         (["--tile", "0"], "argument --tile"),
                                         (["--overlap", "0.3"], "--overlap needs --tile")])
def test_detect_bad_tile_options_are_usage_errors(tmp_path, bundle_file, capsys, args, where):
    Image.fromarray(photo(60, 60)).save(tmp_path / "a.png")
    assert run_main(["detect", str(tmp_path / "a.png"), "--model", str(bundle_file), "--out", str(tmp_path / "o"),
                     *args]) == 2
    err = capsys.readouterr().err
    assert "multibox detect: error: " in err and where in err, err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_eval_command_tiled(voc_root, tmp_path, monkeypatch, capsys):  # noqa: F811
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"fake")
    monkeypatch.setattr(eval_cmd, "_default_loader", lambda path, device, **kw: FakeSSD(["background", *CLASSES]))
    out = tmp_path / "out"
    assert main(["eval", str(ckpt), "--data", str(voc_root), "--out", str(out), "--json", str(tmp_path / "m.json"),
                 "--tile", "160", "--overlap", "0", "--runtime", "eager"]) == 0
    assert "tiles of 160 px, overlap 0" in capsys.readouterr().out
    for m in (json.loads((out / "metrics.json").read_text()), json.loads((tmp_path / "m.json").read_text())):
        assert m["tile"] == {"tile": 160, "overlap": 0.0} and m["num_images"] == 3
    # 320 x 280 images, 160 px windows at x 0, 160 and y 0, 120: the centre half of each, in image pixels
    recs = json.loads((out / "detections.json").read_text())
    assert {r["image_id"] for r in recs} == {"a1", "b2", "c3"}
    got = sorted(tuple(r["bbox"]) for r in recs if r["image_id"] == "a1")
    assert got == sorted((x0 + 40.0, y0 + 40.0, 80.0, 80.0) for x0 in (0, 160) for y0 in (0, 120))


def test_eval_command_tiled_with_a_detector_file(voc_root, tmp_path, bundle_file, capsys):  # noqa: F811
    (voc_root / "classes.txt").write_text("\n".join(NAMES[1:]) + "\n")
    assert main(["eval", str(bundle_file), "--data", str(voc_root), "--tile", "128", "--runtime", "eager",
                 "--json", "-", "--no-progress"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["tile"] == {"tile": 128, "overlap": 0.25} and m["num_images"] == 3


@pytest.mark.parametrize("args, where", [(["--tile", "100", "--overlap", "1.5"], "argument --overlap"),
                                         (["--overlap", "0.5"], "--overlap needs --tile")])
def test_eval_bad_tile_options_are_usage_errors(voc_root, tmp_path, capsys, args, where):  # noqa: F811
    assert run_main(["eval", str(tmp_path / "m.safetensors"), "--data", str(voc_root), *args]) == 2
    err = capsys.readouterr().err
    assert "multibox eval: error: " in err and where in err and "Traceback" not in err, err


def test_eval_tile_needs_a_model(voc_root, tmp_path, capsys):  # noqa: F811
    dets = tmp_path / "d.json"
    dets.write_text("[]")
    assert main(["eval", "--gt", str(voc_root), "--detections", str(dets), "--tile", "100"]) == 2
    assert "--tile runs a model in tiles" in capsys.readouterr().err
