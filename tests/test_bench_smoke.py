import json

from multibox.cli import main


def test_bench_core_quick_writes_json(tmp_path, capsys):
    """Smoke run of the benchmark's code paths and JSON contract (timings are not checked: see README)."""
    out = tmp_path / "bench.json"
    assert main(["bench", "core", "--quick", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("speedup_infer_fp32", "speedup_infer_fast", "speedup_train", "postprocess_share", "match_loss_share"):
        assert isinstance(r[key], float) and r[key] > 0
    row = r["inference"]["batch_1"]
    # the fp32 path is the same network and post-processing as torchvision's
    assert row["network_vs_torchvision"]["cls_logits_max_abs_diff"] < 1e-3
    assert row["detections_vs_torchvision"]["matched_fraction"] >= 0.95
    assert "train step batch 2" in capsys.readouterr().out


def test_bench_data_writes_json(tmp_path, capsys):
    out = tmp_path / "data.json"
    assert main(["bench", "data", "--images", "4", "--passes", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("images_per_s", "torchvision_images_per_s", "speedup"):
        assert r[key] > 0
    assert abs(r["speedup"] - r["images_per_s"] / r["torchvision_images_per_s"]) < 1e-9
