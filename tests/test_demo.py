import json

from multibox.cli import main


def test_demo_trains_evaluates_and_draws(tmp_path, monkeypatch, capsys):
    # The README demo on a tiny budget: the full recipe is measured in README/docs, not here.
    monkeypatch.setenv("MULTIBOX_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    overrides = ["steps=6", "model.pretrained_backbone=null", "data.synthetic.num_train=24",
                 "data.synthetic.num_test=6", "data.batch_size=8", "eval.every_steps=3", "checkpoint.every_steps=3",
                 "log_every=2"]
    assert main(["demo", *overrides, "--out", str(out), "--num-images", "2", "--no-progress", "--no-pretrained"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    ev = json.loads((out / "run" / "eval.json").read_text())
    assert summary["mAP"] == ev["mAP"] and ev["metric"] == "voc07" and len(ev["per_class"]) == 6
    assert (out / "run" / "plots" / "loss.png").is_file() and (out / "run" / "plots" / "map.png").is_file()
    assert len(summary["images"]) == 2
    for p in summary["images"]:
        with open(p, "rb") as f:
            assert f.read(4) == b"\x89PNG"
    records = json.loads((out / "detections.json").read_text())
    assert all(r["score"] >= 0.5 and r["category_name"] != "background" for r in records)
    text = capsys.readouterr().out
    assert "VOC07 mAP@0.5" in text and "curve:" in text
