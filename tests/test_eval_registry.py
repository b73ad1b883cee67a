"""The metrics registry and ``multibox eval`` fixes: --list-metrics, a metric registered here, one AP scale,
detect's detections.json, hostile results files, outputs checked before work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from multibox.cli import main
from multibox.interop.bundle import DetectorBundle, save_bundle
from multibox.metrics.registry import ClassAP, MetricScore, get_metric, list_metrics, register_metric
from multibox.models import build_model
from test_eval_command import CAT_AP07, CAT_AP12, DOG_AP07, DOG_AP12, coco_json, voc_root  # noqa: F401

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_builtin_metrics_are_registered_by_their_modules():
    assert {"voc07", "voc12", "coco"} <= set(list_metrics())
    assert get_metric("voc07").module == "multibox.metrics.voc"
    assert get_metric("coco").module == "multibox.metrics.coco"
    assert get_metric("voc12").step_curve and not get_metric("voc07").step_curve
    with pytest.raises(ValueError, match="unknown metric 'nope'.*voc07"):
        get_metric("nope")


def _images_with_detections(gt, table, *, difficult_as_crowd=True):
    """A toy metric: per class, the fraction of images with ground truth of the class that got a detection of it."""
    per_class = []
    for k in range(1, len(gt.class_names)):
        with_gt = {i for i, t in enumerate(gt.targets) if (t.labels == k).any()}
        with_det = set(table.image[table.label == k].tolist())
        frac = len(with_gt & with_det) / len(with_gt) if with_gt else float("nan")
        per_class.append(ClassAP(gt.class_names[k], frac, len(with_gt), int((table.label == k).sum())))
    vals = [c.ap for c in per_class if c.ap == c.ap]
    return MetricScore(per_class=per_class, mean=sum(vals) / len(vals))


def test_a_metric_registered_in_a_test_module_is_usable_by_eval(voc_root, tmp_path, capsys):  # noqa: F811
    register_metric("test-hits", _images_with_detections, description="images hit per class (test)",
                    headline="hits")
    assert "test-hits" in list_metrics()
    det = coco_json(tmp_path / "dets.json")
    assert main(["eval", "--metric", "test-hits", "--gt", str(voc_root), "--detections", str(det),
                 "--json", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    # cat: gt in a1, b2, c3; detections in a1, b2 -> 2/3. dog: gt in a1, b2 (b2 difficult); det in b2, c3, a1 -> 1
    assert m["metric"] == "test-hits"
    assert m["per_class"] == pytest.approx({"cat": 2 / 3, "dog": 1.0})
    assert "hits: 0.8333" in capsys.readouterr().out
    assert main(["eval", "--list-metrics"]) == 0
    assert "test-hits" in capsys.readouterr().out


def test_list_metrics_json(tmp_path, capsys):
    assert main(["eval", "--list-metrics", "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list_metrics()
    assert {r["name"]: r["headline"] for r in rows}["voc07"] == "mAP (VOC07 11-point)"
    assert main(["eval", "--list-metrics", "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text()) == rows


def test_unknown_metric_is_a_usage_error(voc_root, tmp_path, capsys):  # noqa: F811
    det = coco_json(tmp_path / "dets.json")
    assert main(["eval", "--metric", "voc99", "--gt", str(voc_root), "--detections", str(det)]) == 2
    err = capsys.readouterr().err
    assert "multibox eval: error: unknown metric 'voc99'" in err and "voc07" in err


def test_ap_is_printed_as_a_fraction_with_4_decimals(voc_root, tmp_path, capsys):  # noqa: F811
    det = coco_json(tmp_path / "dets.json")
    assert main(["eval", "--metric", "voc12", "--gt", str(voc_root), "--detections", str(det)]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.strip()}
    assert lines["cat"][1] == f"{CAT_AP12:.4f}" and lines["dog"][1] == f"{DOG_AP12:.4f}"
    assert f"mAP (VOC12 all-point): {(CAT_AP12 + DOG_AP12) / 2:.4f} " in out


def _tiny_bundle(path, class_names):
    torch.manual_seed(0)
    spec = {"name": "ssd7", "num_classes": len(class_names), "class_names": class_names,
            "kwargs": {"image_size": [64, 64]}}
    model = build_model("ssd7", num_classes=len(class_names), class_names=class_names, image_size=(64, 64)).eval()
    bundle = DetectorBundle(model=model, priors=model.priors, input_spec=model.input_spec,
                            class_names=list(class_names), builder="multibox", spec=spec,
                            postprocess={"conf_threshold": 0.01, "keep_top_k": 20})
    return save_bundle(bundle, path)


def test_eval_scores_detects_detections_json_by_file_stem(voc_root, tmp_path, capsys):  # noqa: F811
    """`multibox detect` numbers images 1..N; eval matches them to the dataset by the file stem."""
    model = _tiny_bundle(tmp_path / "tiny.safetensors", ["background", "cat", "dog"])
    out = tmp_path / "found"
    # images given in reverse order, so that detect's ids 1..N do not follow the split's order
    images = sorted((voc_root / "JPEGImages").iterdir(), reverse=True)
    assert main(["detect", *map(str, images), "--model", str(model), "--out", str(out), "--conf", "0.01",
                 "--no-draw", "--runtime", "eager", "--no-progress"]) == 0
    doc = json.loads((out / "detections.json").read_text())
    assert [im["id"] for im in doc["images"]] == [1, 2, 3] and doc["annotations"]
    assert main(["eval", "--metric", "voc07", "--gt", str(voc_root), "--detections", str(out / "detections.json"),
                 "--json", str(tmp_path / "m.json")]) == 0
    got = json.loads((tmp_path / "m.json").read_text())
    # reference: the same records as a plain COCO results list with the VOC image ids (file stems)
    stem = {im["id"]: Path(im["file_name"]).stem for im in doc["images"]}
    recs = [{"image_id": stem[a["image_id"]], "category_name": a["category_name"], "bbox": a["bbox"],
             "score": a["score"]} for a in doc["annotations"]]
    (tmp_path / "ref.json").write_text(json.dumps(recs))
    assert main(["eval", "--metric", "voc07", "--gt", str(voc_root), "--detections", str(tmp_path / "ref.json"),
                 "--json", str(tmp_path / "ref_m.json")]) == 0
    ref = json.loads((tmp_path / "ref_m.json").read_text())
    assert got == ref and got["num_det"] == {"cat": sum(r["category_name"] == "cat" for r in recs),
                                             "dog": sum(r["category_name"] == "dog" for r in recs)}


def test_detect_json_with_an_image_not_in_the_dataset_names_it(voc_root, tmp_path, capsys):  # noqa: F811
    doc = {"model": "m", "conf": 0.5, "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
           "images": [{"id": 1, "file_name": "zz9.png", "source": "/x/zz9.png", "width": 320, "height": 280}],
           "annotations": [{"id": 1, "image_id": 1, "bbox": [1, 1, 5, 5], "score": 0.9, "category_id": 1,
                            "category_name": "cat"}]}
    (tmp_path / "d.json").write_text(json.dumps(doc))
    assert main(["eval", "--gt", str(voc_root), "--detections", str(tmp_path / "d.json")]) == 2
    err = capsys.readouterr().err
    assert "d.json" in err and "zz9" in err and "Traceback" not in err


def test_detect_json_matches_the_voc07_numbers_of_the_same_boxes(voc_root, tmp_path):  # noqa: F811
    """Hand-made detect-format file with the module's reference detections: AP as computed by hand."""
    from test_eval_command import DETS

    stems = ["c3", "a1", "b2"]
    images = [{"id": k + 1, "file_name": f"{s}.png", "source": f"/data/{s}.png", "width": 320, "height": 280}
              for k, s in enumerate(stems)]
    anns = [{"id": j + 1, "image_id": stems.index(i) + 1, "bbox": [b[0] - 1, b[1] - 1, b[2] - b[0] + 1,
                                                                   b[3] - b[1] + 1],
             "score": s, "category_id": 1 if c == "cat" else 2, "category_name": c}
            for j, (i, c, s, b) in enumerate(DETS)]
    (tmp_path / "d.json").write_text(json.dumps({"model": "m", "conf": 0.1, "images": images, "annotations": anns,
                                                 "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}))
    assert main(["eval", "--gt", str(voc_root), "--detections", str(tmp_path / "d.json"),
                 "--json", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["per_class"] == pytest.approx({"cat": CAT_AP07, "dog": DOG_AP07})


def test_deeply_nested_results_json_is_a_clear_error(voc_root, tmp_path):  # noqa: F811
    det = tmp_path / "deep.json"
    det.write_text("[" * 100000 + "]" * 100000)
    r = subprocess.run([sys.executable, "-m", "multibox", "eval", "--gt", str(voc_root), "--detections", str(det)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "deep.json" in r.stderr and "nested" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("option", ["--json", "--out"])
def test_unwritable_outputs_fail_before_work(voc_root, tmp_path, capsys, option):  # noqa: F811
    det = coco_json(tmp_path / "dets.json")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    target = str(blocker / "m.json") if option == "--json" else str(blocker)
    assert main(["eval", "--gt", str(voc_root), "--detections", str(det), option, target]) == 2
    cap = capsys.readouterr()
    assert f"multibox eval: error: {option}" in cap.err and "cat" not in cap.out  # no table: nothing was scored
    if option == "--json":
        assert main(["eval", "--gt", str(voc_root), "--detections", str(det), "--json", str(tmp_path)]) == 2
        assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--batch-size", "0"], ["--workers", "-1"], ["--interval", "nan"],
                                  ["--timeout", "-5"]])
def test_numeric_options_are_range_checked(voc_root, tmp_path, capsys, args):  # noqa: F811
    with pytest.raises(SystemExit) as e:
        main(["eval", "--gt", str(voc_root), "--detections", "x.json", *args])
    assert e.value.code == 2 and args[0] in capsys.readouterr().err


def test_eval_json_to_stdout(voc_root, tmp_path, capsys):  # noqa: F811
    det = coco_json(tmp_path / "dets.json")
    assert main(["eval", "--metric", "voc07", "--gt", str(voc_root), "--detections", str(det), "--json", "-"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["per_class"] == pytest.approx({"cat": CAT_AP07, "dog": DOG_AP07})
    assert np.isclose(m["mAP"], (CAT_AP07 + DOG_AP07) / 2)
