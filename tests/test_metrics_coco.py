"""COCO metrics: our numbers are pycocotools' own, run directly on the same JSON files."""

import contextlib
import io
import json
import math

import numpy as np
import pytest

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from multibox.data.types import Target  # noqa: E402
from multibox.engine.evaluator import evaluate_detections, evaluate_table  # noqa: E402
from multibox.metrics.coco import COCO_STAT_NAMES  # noqa: E402
from multibox.metrics.results import load_ground_truth, read_detections  # noqa: E402

CATS = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 11, "name": "bird"}, {"id": 20, "name": "fish"}]


def pycocotools_stats(gt_path, res_path, cat_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(str(res_path))
        ev = COCOeval(gt, dt, "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def make_coco(tmp_path, seed=0, n_images=12):
    """A COCO file with small, medium and large boxes, segmentation-style areas (not w*h), a crowd box, a
    category without ground truth (fish), and a results file of noisy detections with COCO ids."""
    rng = np.random.default_rng(seed)
    images, anns, res = [], [], []
    for i in range(n_images):
        image_id = 100 + 3 * i
        images.append({"id": image_id, "file_name": f"img{i}.jpg", "width": 640, "height": 480})
        for _ in range(rng.integers(1, 6)):
            side = float(rng.choice([12.0, 60.0, 150.0])) * rng.uniform(0.8, 1.2)
            x, y = rng.uniform(0, 400), rng.uniform(0, 300)
            w, h = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
            cid = int(rng.choice([3, 7, 11]))
            crowd = int(rng.random() < 0.08)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cid, "bbox": [x, y, w, h],
                         "area": 0.8 * w * h, "iscrowd": crowd, "segmentation": []})
            for _ in range(rng.integers(0, 3)):
                j = rng.normal(0, 0.12, size=4) * np.array([w, h, w, h])
                res.append({"image_id": image_id, "category_id": cid if rng.random() < 0.85 else 20,
                            "bbox": [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])],
                            "score": round(float(rng.random()), 3)})
        for _ in range(rng.integers(0, 3)):
            res.append({"image_id": image_id, "category_id": int(rng.choice([3, 7, 11, 20])),
                        "bbox": [float(v) for v in rng.uniform(0, 300, 2)] + [float(v) for v in rng.uniform(5, 90, 2)],
                        "score": round(float(rng.random()), 3)})
    gt_path, res_path = tmp_path / "instances_val.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    res_path.write_text(json.dumps(res))
    return gt_path, res_path


@pytest.mark.parametrize("seed", [0, 1])
def test_stats_equal_pycocotools_on_the_same_files(tmp_path, seed):
    gt_path, res_path = make_coco(tmp_path, seed)
    expected = pycocotools_stats(gt_path, res_path)
    gt = load_ground_truth(gt_path)
    assert gt.class_names == ["background", "cat", "dog", "bird", "fish"]  # categories sorted by id
    result = evaluate_table(gt, read_detections(res_path, gt), "coco")
    assert list(result.coco_stats) == list(COCO_STAT_NAMES)
    assert list(result.coco_stats.values()) == expected  # exactly
    assert result.mAP == expected[0]
    assert 0 < expected[0] < 1 and expected[3] != expected[5]  # a non-trivial case with area ranges in play
    # per-class AP: pycocotools restricted to that one category
    for cid, name in ((3, "cat"), (7, "dog"), (11, "bird")):
        assert result.per_class[name] == pytest.approx(pycocotools_stats(gt_path, res_path, [cid])[0], abs=1e-12)
    assert math.isnan(result.per_class["fish"]) and result.num_gt["fish"] == 0 and result.num_det["fish"] > 0
    assert "Average Precision" in result.coco_summary


def voc_xml(name, w, h, objects):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    return (f"<annotation><filename>{name}.jpg</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


def test_voc_root_with_coco_metric_equals_pycocotools_on_hand_converted_json(tmp_path):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "classes.txt").write_text("cat\ndog\n")
    gts = {  # devkit 1-based boxes
        "a1": [("cat", (11, 21, 110, 220), False), ("dog", (201, 31, 300, 90), False)],
        "b2": [("dog", (5, 5, 40, 40), True), ("cat", (50, 60, 250, 260), False)],
        "c3": [("cat", (1, 1, 20, 30), False)],
    }
    for stem, objs in gts.items():
        (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(stem, 320, 280, objs))
    (root / "ImageSets" / "Main" / "test.txt").write_text("a1\nb2\nc3\n")
    dets = [("a1", "cat", 0.9, (11, 21, 112, 218)), ("a1", "dog", 0.8, (200, 30, 300, 95)),
            ("b2", "dog", 0.7, (5, 5, 41, 40)), ("b2", "cat", 0.6, (60, 60, 240, 250)),
            ("b2", "cat", 0.5, (0, 0, 30, 30)), ("c3", "dog", 0.4, (1, 1, 20, 30)), ("c3", "cat", 0.3, (2, 2, 20, 28))]
    res = [{"image_id": i, "category_name": c, "score": s, "bbox": [b[0] - 1, b[1] - 1, b[2] - b[0] + 1,
                                                                    b[3] - b[1] + 1]} for i, c, s, b in dets]
    (tmp_path / "res.json").write_text(json.dumps(res))
    # the conversion coco_ground_truth documents, done by hand: ids 1..N in split order, category = label,
    # bbox = [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1], area = w * h, difficult -> iscrowd
    ids = {"a1": 1, "b2": 2, "c3": 3}
    labels = {"cat": 1, "dog": 2}
    anns = []
    for stem, objs in gts.items():
        for n, b, d in objs:
            w, h = b[2] - b[0] + 1, b[3] - b[1] + 1
            anns.append({"id": len(anns) + 1, "image_id": ids[stem], "category_id": labels[n],
                         "bbox": [b[0] - 1, b[1] - 1, w, h], "area": w * h, "iscrowd": int(d)})
    coco_gt = {"images": [{"id": v, "file_name": k, "width": 320, "height": 280} for k, v in ids.items()],
               "annotations": anns, "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    (tmp_path / "gt.json").write_text(json.dumps(coco_gt))
    coco_res = [{"image_id": ids[r["image_id"]], "category_id": labels[r["category_name"]], "bbox": r["bbox"],
                 "score": r["score"]} for r in res]
    (tmp_path / "coco_res.json").write_text(json.dumps(coco_res))
    expected = pycocotools_stats(tmp_path / "gt.json", tmp_path / "coco_res.json")

    gt = load_ground_truth(root, split="test")
    result = evaluate_table(gt, read_detections(tmp_path / "res.json", gt), "coco")
    np.testing.assert_allclose(list(result.coco_stats.values()), expected, rtol=0, atol=1e-12)
    assert result.num_gt == {"cat": 3, "dog": 1}  # the difficult dog is a crowd region, not counted


def test_no_detections_gives_zero_ap(tmp_path):
    t = Target(boxes=np.array([[0, 0, 50, 50]], np.float32), labels=np.array([1]), image_id="x", orig_size=(100, 100))
    import torch

    from multibox.detections import Detections

    r = evaluate_detections([t], [Detections.empty(["background", "a"], (100, 100))], ["background", "a"], "coco")
    assert r.coco_stats["AP"] == 0.0 and r.coco_stats["AR100"] == 0.0 and r.per_class["a"] == 0.0
    assert r.coco_stats["APs"] == -1.0  # pycocotools' "no ground truth in this area range"
    d = Detections(torch.tensor([[0.0, 0.0, 50.0, 50.0]]), torch.tensor([0.9]), torch.tensor([1]), None, (100, 100))
    assert evaluate_detections([t], [d], ["background", "a"], "coco").coco_stats["AP"] == pytest.approx(1.0)
