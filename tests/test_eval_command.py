"""Results formats (comp4 <-> COCO JSON), ``multibox eval`` end to end, model evaluation and ``--watch``."""

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from multibox.box_coder import BoxCoder
from multibox.cli import main
from multibox.commands import eval as eval_cmd
from multibox.data.types import Target
from multibox.engine.evaluator import evaluate_detections, evaluate_model, label_map
from multibox.metrics.results import (
    DetectionTable,
    load_ground_truth,
    read_coco_results,
    read_comp4,
    read_detections,
    write_coco_results,
    write_comp4,
)
from multibox.models.detector import SSDOutput
from multibox.models.spec import InputSpec

CLASSES = ["cat", "dog"]
# devkit 1-based boxes; image size 320 x 280 (W x H)
GTS = {
    "a1": [("cat", (11, 21, 110, 220), False), ("dog", (201, 31, 300, 90), False)],
    "b2": [("dog", (5, 5, 40, 40), True), ("cat", (50, 60, 250, 260), False)],
    "c3": [("cat", (1, 1, 20, 30), False)],
}


def voc_xml(name, w, h, objects):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    return (f"<annotation><filename>{name}.png</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for stem, objs in GTS.items():
        (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(stem, 320, 280, objs))
        Image.fromarray(np.full((280, 320, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{stem}.png")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(GTS) + "\n")
    return root


# detections in devkit coordinates: (image, class, score, box)
DETS = [("a1", "cat", 0.9, (11, 21, 110, 220)),   # cat TP
        ("a1", "cat", 0.8, (12, 21, 110, 220)),   # cat duplicate: FP
        ("b2", "dog", 0.7, (5, 5, 40, 40)),       # on the difficult dog: ignored
        ("b2", "cat", 0.6, (50, 60, 250, 260)),   # cat TP
        ("c3", "dog", 0.5, (1, 1, 20, 30)),       # dog FP (c3 has no dog)
        ("a1", "dog", 0.4, (201, 31, 300, 90))]   # dog TP
# cat: tp 1 0 1 of 3 -> rec 1/3 1/3 2/3, prec 1 .5 2/3; dog: fp, tp of 1 -> rec 0 1, prec 0 .5
CAT_AP12 = 1 / 3 * 1 + 1 / 3 * (2 / 3)
DOG_AP12 = 0.5
CAT_AP07 = (4 * 1 + 3 * (2 / 3)) / 11  # t = 0 .. 0.3: precision 1; t = .4, .5, .6: 2/3; t >= .7: 0
DOG_AP07 = 11 * 0.5 / 11


def coco_json(path, dets=DETS):
    recs = [{"image_id": i, "category_name": c, "score": s,
             "bbox": [b[0] - 1, b[1] - 1, b[2] - b[0] + 1, b[3] - b[1] + 1]} for i, c, s, b in dets]
    path.write_text(json.dumps(recs))
    return path


def comp4_folder(folder, dets=DETS, split="test"):
    folder.mkdir(parents=True, exist_ok=True)
    for c in CLASSES:
        lines = [f"{i} {s} {b[0]} {b[1]} {b[2]} {b[3]}\n" for i, cc, s, b in dets if cc == c]
        (folder / f"comp4_det_{split}_{c}.txt").write_text("".join(lines))
    return folder


# ----------------------------------------------------------------------------------------------- formats


def test_comp4_to_coco_json_uses_the_devkit_rule(voc_root, tmp_path):
    gt = load_ground_truth(voc_root, split="test")
    table = read_comp4(comp4_folder(tmp_path / "c4"), gt)
    write_coco_results(table, gt, tmp_path / "out.json")
    recs = json.loads((tmp_path / "out.json").read_text())
    got = {(r["image_id"], r["category_name"], r["score"]): (r["bbox"], r["category_id"]) for r in recs}
    # devkit [xmin, xmax] -> x = xmin - 1, w = xmax - xmin + 1; category_id = label in classes order
    assert got[("a1", "cat", 0.9)] == ([10.0, 20.0, 100.0, 200.0], 1)
    assert got[("a1", "dog", 0.4)] == ([200.0, 30.0, 100.0, 60.0], 2)
    assert got[("c3", "dog", 0.5)] == ([0.0, 0.0, 20.0, 30.0], 2)
    assert len(recs) == len(DETS)


def test_coco_json_to_comp4(voc_root, tmp_path):
    gt = load_ground_truth(voc_root, split="test")
    (tmp_path / "r.json").write_text(json.dumps([
        {"image_id": "b2", "category_id": 1, "bbox": [49.0, 59.0, 201.0, 201.0], "score": 0.25},
        {"image_id": "a1", "category_name": "dog", "bbox": [0.5, 1.5, 10.0, 20.0], "score": 0.75}]))
    files = write_comp4(read_coco_results(tmp_path / "r.json", gt), gt, tmp_path / "c4", split="test")
    assert [f.name for f in files] == ["comp4_det_test_cat.txt", "comp4_det_test_dog.txt"]
    assert files[0].read_text() == "b2 0.25 50.0 60.0 250.0 260.0\n"
    assert files[1].read_text() == "a1 0.75 1.5 2.5 10.5 21.5\n"


def test_random_round_trips(voc_root, tmp_path):
    gt = load_ground_truth(voc_root, split="test")
    rng = np.random.default_rng(0)
    n = 200
    xy = rng.uniform(0, 250, (n, 2))
    table = DetectionTable(rng.integers(0, 3, n), rng.integers(1, 3, n), rng.random(n),
                           np.concatenate([xy, xy + rng.uniform(1, 60, (n, 2))], axis=1))
    write_comp4(table, gt, tmp_path / "c4")
    back = read_detections(tmp_path / "c4", gt)
    write_coco_results(back, gt, tmp_path / "r.json")
    again = read_detections(tmp_path / "r.json", gt)
    order = np.argsort(table.label, kind="stable")  # comp4 files group rows by class
    for t in (back, again):
        np.testing.assert_array_equal(t.image, table.image[order])
        np.testing.assert_array_equal(t.label, table.label[order])
        np.testing.assert_array_equal(t.score, table.score[order])
        np.testing.assert_allclose(t.boxes, table.boxes[order], rtol=0, atol=1e-9)


def test_coco_ground_truth_results_use_coco_ids(tmp_path):
    cats = [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}]
    (tmp_path / "gt.json").write_text(json.dumps({
        "images": [{"id": 42, "file_name": "x.jpg", "width": 100, "height": 80}],
        "annotations": [{"id": 1, "image_id": 42, "category_id": 9, "bbox": [1, 2, 30, 40], "area": 1200,
                         "iscrowd": 0}], "categories": cats}))
    gt = load_ground_truth(tmp_path / "gt.json")
    assert gt.class_names == ["background", "cat", "dog"] and gt.targets[0].labels.tolist() == [2]
    np.testing.assert_allclose(gt.targets[0].boxes, [[1, 2, 31, 42]])
    (tmp_path / "r.json").write_text(json.dumps([{"image_id": 42, "category_id": 9, "bbox": [1, 2, 30, 40],
                                                  "score": 0.5}]))
    table = read_detections(tmp_path / "r.json", gt)
    assert table.label.tolist() == [2]
    write_coco_results(table, gt, tmp_path / "w.json")
    rec = json.loads((tmp_path / "w.json").read_text())[0]
    assert rec["image_id"] == 42 and rec["category_id"] == 9 and rec["bbox"] == [1, 2, 30, 40]


# ----------------------------------------------------------------------------------------------- command


def test_eval_results_end_to_end(voc_root, tmp_path, capsys):
    out = tmp_path / "out"
    det = coco_json(tmp_path / "dets.json")
    rc = main(["eval", "--metric", "voc12", "--gt", str(voc_root), "--detections", str(det),
               "--json", str(tmp_path / "m.json"), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "cat" in text and "dog" in text and "mAP (VOC12 all-point)" in text
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["metric"] == "voc12" and m["num_images"] == 3
    assert m["per_class"]["cat"] == pytest.approx(CAT_AP12) and m["per_class"]["dog"] == pytest.approx(DOG_AP12)
    assert m["mAP"] == pytest.approx((CAT_AP12 + DOG_AP12) / 2)
    assert m["num_gt"] == {"cat": 3, "dog": 1} and m["num_det"] == {"cat": 3, "dog": 3}
    assert (out / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "metrics.json").read_text()) == m
    assert sorted(p.name for p in (out / "comp4").iterdir()) == ["comp4_det_test_cat.txt", "comp4_det_test_dog.txt"]
    assert not [p for p in out.rglob(".*")], "temporary files left behind"
    # the written comp4 files and COCO JSON score the same, with voc07 too
    for dets in (out / "comp4", out / "detections.json", str(out / "comp4" / "comp4_det_*.txt")):
        assert main(["eval", "--metric", "voc07", "--gt", str(voc_root), "--detections", str(dets),
                     "--json", str(tmp_path / "m07.json")]) == 0
        m07 = json.loads((tmp_path / "m07.json").read_text())
        assert m07["per_class"]["cat"] == pytest.approx(CAT_AP07)
        assert m07["per_class"]["dog"] == pytest.approx(DOG_AP07)


def test_eval_coco_metric_on_voc_root(voc_root, tmp_path, capsys):
    det = coco_json(tmp_path / "dets.json")
    assert main(["eval", "--metric", "coco", "--gt", str(voc_root), "--detections", str(det),
                 "--json", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert list(m["coco_stats"]) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs",
                                     "ARm", "ARl"]
    assert m["mAP"] == m["coco_stats"]["AP"] and 0 < m["mAP"] < 1
    assert "Average Precision" not in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "bad_line", "bad_number", "unknown_class_json", "unknown_image",
                                  "unknown_class_file", "bad_bbox", "no_mode"])
def test_bad_input_names_the_file(voc_root, tmp_path, capsys, case):
    det = tmp_path / "dets.json"
    if case == "missing":
        det = tmp_path / "nope.json"
        where = "nope.json"
    elif case in ("bad_line", "bad_number"):
        folder = comp4_folder(tmp_path / "c4")
        f = folder / "comp4_det_test_dog.txt"
        extra = "a1 0.3 1 2 3\n" if case == "bad_line" else "a1 0.3 1 2 x 4\n"
        f.write_text(f.read_text() + extra)
        det, where = folder, "comp4_det_test_dog.txt: line 4"
    elif case == "unknown_class_json":
        det.write_text(json.dumps([{"image_id": "a1", "category_name": "cow", "bbox": [0, 0, 1, 1], "score": 1}]))
        where = "dets.json: record 0: unknown category_name 'cow'"
    elif case == "unknown_image":
        det.write_text(json.dumps([{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]))
        where = "dets.json: record 0: image_id 7 is not in the ground truth"
    elif case == "unknown_class_file":
        folder = comp4_folder(tmp_path / "c4")
        (folder / "comp4_det_test_cow.txt").write_text("a1 0.5 1 1 5 5\n")
        det, where = folder, "comp4_det_test_cow.txt: file name is not comp<N>_det_<split>_<class>.txt"
    elif case == "bad_bbox":
        det.write_text(json.dumps([{"image_id": "a1", "category_id": 1, "bbox": [0, 0, "w", 1], "score": 1}]))
        where = "dets.json: record 0: 'bbox' must be 4 finite numbers"
    else:
        assert main(["eval", "--gt", str(voc_root)]) == 2
        assert "give --gt PATH and --detections PATH" in capsys.readouterr().err
        return
    assert main(["eval", "--gt", str(voc_root), "--detections", str(det)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multibox eval: error: ") and where in err, err


# ----------------------------------------------------------------------------------------------- models


class FakeSSD(nn.Module):
    """Two priors; prior 0 (centre, half the image) is always class 1 with score ~1, zero box deltas."""

    def __init__(self, class_names):
        super().__init__()
        self.register_buffer("priors", torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.1, 0.1]]))
        self.box_coder = BoxCoder()
        self.class_names = list(class_names)
        self.input_spec = InputSpec(image_size=(64, 64))
        self.scale = nn.Parameter(torch.ones(()))
        self.seen_sizes = []

    def forward(self, images):
        self.seen_sizes.append(tuple(images.shape[-2:]))
        b, c = images.shape[0], len(self.class_names)
        logits = torch.full((b, 2, c), -10.0)
        logits[:, :, 0] = 10.0
        logits[:, 0, 0] = -10.0
        logits[:, 0, 1] = 10.0
        return SSDOutput(logits * self.scale, torch.zeros(b, 2, 4))


class ListDataset:
    def __init__(self, sizes, boxes, class_names):
        self.class_names = class_names
        self.items = [(np.zeros((h, w, 3), np.uint8),
                       Target(boxes=np.array(b, np.float32).reshape(-1, 4), labels=np.ones(len(b), np.int64),
                              image_id=f"im{i}", orig_size=(h, w)))
                      for i, ((h, w), b) in enumerate(zip(sizes, boxes, strict=True))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_evaluate_model_maps_boxes_back_to_the_original_image():
    sizes = [(100, 200), (300, 120), (50, 50)]
    # prior 0 decodes to the centre half of each image, in its own pixels
    boxes = [[[w / 4, h / 4, 3 * w / 4, 3 * h / 4]] for h, w in sizes]
    ds = ListDataset(sizes, boxes, ["background", "a"])
    model = FakeSSD(["background", "a"])
    model.train()
    r = evaluate_model(model, ds, metric="voc12", batch_size=2, progress=False)
    assert r.mAP == pytest.approx(1.0) and r.per_class == {"a": pytest.approx(1.0)}
    assert r.image_ids == ["im0", "im1", "im2"] and len(r.detections) == 3
    for d, (h, w) in zip(r.detections, sizes, strict=True):
        assert d.image_size == (h, w) and len(d) == 1 and d.labels.tolist() == [1]
        torch.testing.assert_close(d.boxes, torch.tensor([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]]))
    assert set(model.seen_sizes) == {(64, 64)}  # the eval transform resized to the model's input
    assert model.training  # mode restored
    # a box in the wrong place scores 0: the check above is not vacuous
    ds_off = ListDataset(sizes, [[[0, 0, w / 4, h / 4]] for h, w in sizes], ["background", "a"])
    assert evaluate_model(model, ds_off, metric="voc07", progress=False).mAP == 0.0


def test_model_classes_are_mapped_by_name():
    assert label_map(["background", "a", "b"], ["background", "a", "b"]) is None
    np.testing.assert_array_equal(label_map(["background", "b", "x", "a"], ["background", "a", "b"]), [-1, 2, -1, 1])
    assert label_map(["background", "class_1", "class_2"], ["background", "a", "b"]) is None  # default names
    with pytest.raises(ValueError, match="share no name"):
        label_map(["background", "x"], ["background", "a", "b"])
    sizes = [(100, 200)]
    ds = ListDataset(sizes, [[[50, 25, 150, 75]]], ["background", "b", "a"])
    ds.items[0][1].labels[:] = 2  # the box is an "a", label 2 in the dataset's order
    r = evaluate_model(FakeSSD(["background", "a", "b"]), ds, metric="voc07", progress=False)
    assert r.per_class == {"b": pytest.approx(math.nan, nan_ok=True), "a": pytest.approx(1.0)}
    assert r.detections[0].labels.tolist() == [2] and r.detections[0].class_names == ["background", "b", "a"]


def test_evaluate_detections_checks_sizes():
    t = Target(boxes=np.array([[0, 0, 10, 10]], np.float32), labels=np.array([1]), image_id="x", orig_size=(20, 30))
    from multibox.detections import Detections

    d = Detections(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0.9]), torch.tensor([1]), None, (40, 30))
    with pytest.raises(ValueError, match="image x"):
        evaluate_detections([t], [d], ["background", "a"], "voc07")
    normalized = Detections(torch.tensor([[0.0, 0.0, 1 / 3, 0.5]]), torch.tensor([0.9]), torch.tensor([1]))
    assert evaluate_detections([t], [normalized], ["background", "a"], "voc07").mAP == pytest.approx(1.0)
    # a diverged model: NaN score left out, NaN box kept as a false positive (ranked first here)
    bad = Detections(torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 2.0, 2.0], [math.nan, 0.0, 5.0, 5.0]]),
                     torch.tensor([0.5, math.nan, 0.9]), torch.tensor([1, 1, 1]), None, (20, 30))
    r = evaluate_detections([t], [bad], ["background", "a"], "voc12")
    assert r.num_det == {"a": 2} and r.mAP == pytest.approx(0.5)


@pytest.mark.filterwarnings("error::UserWarning")  # e.g. a runtime that falls back to eager mode
def test_eval_checkpoint_command(voc_root, tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"fake")
    model = FakeSSD(["background", *CLASSES])
    monkeypatch.setattr(eval_cmd, "_default_loader", lambda path, device, **kw: model)
    out = tmp_path / "out"
    assert main(["eval", str(ckpt), "--data", str(voc_root), "--metric", "voc07", "--out", str(out)]) == 0
    assert "mAP (VOC07 11-point)" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_images"] == 3 and set(m["per_class"]) == set(CLASSES)
    recs = json.loads((out / "detections.json").read_text())
    assert {r["image_id"] for r in recs} == set(GTS) and {r["category_name"] for r in recs} == {"cat"}
    assert recs[0]["bbox"] == pytest.approx([80.0, 70.0, 160.0, 140.0])  # centre half of 320 x 280
    assert main(["eval", str(tmp_path / "nope.pt"), "--data", str(voc_root)]) == 2
    assert "nope.pt: no such checkpoint file" in capsys.readouterr().err


def test_watch_evaluates_each_new_checkpoint_once(voc_root, tmp_path):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    (ckpts / "step-1.safetensors").write_bytes(b"1")
    (ckpts / "ignored.txt").write_bytes(b"x")
    loaded = []

    def load(path, device):
        loaded.append(path.name)
        if path.name == "broken.safetensors":
            raise ValueError(f"{path}: truncated")
        return FakeSSD(["background", *CLASSES])

    class Clock:
        t = 0.0
        calls = 0

        def sleep(self, s):
            self.t += s
            self.calls += 1
            if self.calls == 2:  # a new checkpoint appears while watching, and a broken one
                (ckpts / "step-2.safetensors").write_bytes(b"2")
                (ckpts / "broken.safetensors").write_bytes(b"")

        def now(self):
            return self.t

    clock = Clock()
    rows = eval_cmd.watch_checkpoints(ckpts, voc_root, interval=5, timeout=20, load=load, sleep=clock.sleep,
                                      clock=clock.now)
    assert loaded[0] == "step-1.safetensors" and sorted(loaded[1:]) == ["broken.safetensors", "step-2.safetensors"]
    lines = [json.loads(x) for x in (ckpts / "watch_eval.jsonl").read_text().splitlines()]
    assert [r["checkpoint"] for r in lines] == [r["checkpoint"] for r in rows] and len(lines) == 3
    good = [r for r in lines if "error" not in r]
    assert {r["checkpoint"] for r in good} == {"step-1.safetensors", "step-2.safetensors"}
    assert all(r["metric"] == "voc07" and r["num_images"] == 3 for r in good)
    assert "truncated" in next(r for r in lines if "error" in r)["error"]
    assert clock.t >= 20 + 10  # stopped by the timeout, counted from the last new checkpoint
    # a second run skips what the log holds; a rewritten file is a new checkpoint
    assert eval_cmd.watch_checkpoints(ckpts, voc_root, interval=5, timeout=5, load=load, sleep=lambda s: None,
                                      clock=iter(range(100)).__next__) == []
    st = (ckpts / "step-1.safetensors").stat()
    os.utime(ckpts / "step-1.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    rows = eval_cmd.watch_checkpoints(ckpts, voc_root, interval=5, timeout=5, load=load, sleep=lambda s: None,
                                      clock=iter(range(100)).__next__)
    assert [r["checkpoint"] for r in rows] == ["step-1.safetensors"]
    assert len((ckpts / "watch_eval.jsonl").read_text().splitlines()) == 4


def test_watch_command_line(voc_root, tmp_path, monkeypatch, capsys):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    (ckpts / "a.pt").write_bytes(b"1")
    monkeypatch.setattr(eval_cmd, "_default_loader", lambda path, device, **kw: FakeSSD(["background", *CLASSES]))
    assert main(["eval", "--watch", str(ckpts), "--data", str(voc_root), "--pattern", "*.pt", "--interval", "0.01",
                 "--timeout", "0.05"]) == 0
    assert "evaluated 1 checkpoint(s)" in capsys.readouterr().out
    assert main(["eval", "--watch", str(ckpts)]) == 2
    assert "--watch DIR needs --data" in capsys.readouterr().err
