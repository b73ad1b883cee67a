import json

import pytest

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
    assert "train step batch 1" in capsys.readouterr().out
    # --quick leaves out the bf16 training step only where bf16 would be emulated (no native bf16 on this CPU)
    import torch

    from multibox.config import resolve_precision

    native_bf16 = resolve_precision("auto", torch.device("cpu")) == "bf16"
    assert (r["train"]["seconds_multibox_bf16"] is None) == (not native_bf16)
    roof = r["roofline"]
    # SSD300 VGG16: about 31 G multiply-adds per 300x300 image (the paper's model)
    assert 60 < roof["gflop_per_image"] < 65 and roof["conv_peak_gflops"] > 0
    inf = roof["inference"]["batch_1"]
    assert abs(inf["speedup_bound"] - roof["conv_peak_gflops"] / inf["torchvision_gflops"]) < 1e-9
    assert abs(inf["torchvision_gflops"] - roof["gflop_per_image"] / row["seconds_torchvision"]) < 1e-6
    assert r["speedup_train_bound"] == roof["train"]["speedup_bound"]
    assert r["speedup_infer_fast_bound"] == roof["inference"]["batch_1"]["speedup_bound_bf16"] > 0


def test_bench_data_writes_json(tmp_path, capsys):
    out = tmp_path / "data.json"
    assert main(["bench", "data", "--num-images", "4", "--passes", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("images_per_s", "torchvision_images_per_s", "speedup"):
        assert r[key] > 0
    assert abs(r["speedup"] - r["images_per_s"] / r["torchvision_images_per_s"]) < 1e-9


def test_roofline_counts_hand_computed_flops():
    import torch

    from multibox.bench.roofline import forward_gflop, rate_summary, train_step_gflop

    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    # 5x5 output positions x 4 filters x (3 x 3 x 3) multiply-adds, 2 FLOP each
    assert forward_gflop(conv, (1, 3, 5, 5)) * 1e9 == 2 * 25 * 4 * 27
    assert forward_gflop(conv, (2, 3, 5, 5)) * 1e9 == 2 * 2 * 25 * 4 * 27

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.b = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x):
            from multibox.models.detector import SSDOutput

            y = self.b(self.a(x)).flatten(2).transpose(1, 2)
            return SSDOutput(cls_logits=y, box_deltas=y)

    # forward a: 5400, b: 2*25*4*4 = 800; backward: weight grads of both (5400 + 800), input grad of b only (800)
    assert train_step_gflop(Tiny(), (1, 3, 5, 5)) * 1e9 == 5400 + 800 + 5400 + 800 + 800
    r = rate_summary(10.0, {"ours": 0.1, "peer": 0.2}, "peer", peak=200.0)
    assert r == {"ours_gflops": 100.0, "peer_gflops": 50.0, "peer_fraction_of_peak": 0.25, "speedup_bound": 4.0}


def test_bench_models_writes_json(tmp_path, capsys):
    import torch

    from multibox.bench.models import count_gflops
    from multibox.models import model_info

    # FLOPs counted by hand: a 3x3 conv, 3 -> 8 channels, padded, on 10x10: 2 * 8 * 3 * 9 * 100 multiply-adds
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert abs(count_gflops(conv, torch.randn(1, 3, 10, 10)) - 2 * 8 * 3 * 9 * 100 / 1e9) < 1e-12
    out = tmp_path / "models.json"
    assert main(["bench", "models", "--models", "ssd7", "--repeats", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    (row,) = r["models"]
    assert row["name"] == "ssd7" and row["num_parameters"] == model_info("ssd7")["num_parameters"]
    assert row["num_priors"] == model_info("ssd7")["num_priors"]
    assert row["gflops"] > 0 and row["latency_fp32_s"] > 0 and row["latency_fast_s"] > 0
    assert "ssd7" in capsys.readouterr().out
    assert main(["bench", "models", "--models", "nope*"]) == 2
    assert "matches no registered model" in capsys.readouterr().err


def test_bench_export_writes_json(tmp_path):
    """Smoke run of ``bench export`` on the tiny ssd7 (timings are not checked, only the JSON contract)."""
    out = tmp_path / "export.json"
    assert main(["bench", "export", "--models", "ssd7", "--repeats", "1", "--json", str(out), "-q"]) == 0
    r = json.loads(out.read_text())
    m = r["models"]["ssd7"]
    assert m["gflop_per_image"] > 0 and m["calibration_images"] >= 1
    for b in (1, 8):
        row = m["network"][f"batch_{b}"]
        for k in ("eager", "onnxruntime_fp32", "onnxruntime_int8"):
            assert row[k]["ms"] > 0 and row[k]["gflops"] > 0
        assert row["int8_speedup_vs_fp32_runtime"] == pytest.approx(
            row["onnxruntime_fp32"]["ms"] / row["onnxruntime_int8"]["ms"])
    assert r["threads"] == 2 and len(r["load_average_before"]) == 3
