import json

import numpy as np

from multibox.cli import main


def test_demo_writes_result_files(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--model", "ssd300_vgg16"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["detections.json", "grace_hopper_detections.png", "priors.npy", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_priors"] == 8732 and summary["image_size"] == [600, 512]
    records = json.loads((out / "detections.json").read_text())
    assert 0 < len(records) <= 200 and len(records) == summary["num_detections"]
    for r in records:
        x, y, w, h = r["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 512 + 1e-3 and y + h <= 600 + 1e-3  # clipped to the photo
        assert 1 <= r["category_id"] <= 20 and r["category_name"] != "background"
    scores = [r["score"] for r in records]
    assert scores == sorted(scores, reverse=True)
    assert np.load(out / "priors.npy").shape == (8732, 4)
    assert (out / "grace_hopper_detections.png").read_bytes()[:4] == b"\x89PNG"
