"""`--quiet` on the long commands whose results are files: benchmarks, importers and zoo fetch print nothing on
standard output but still write their files (docs/design.md, "Command-line conventions")."""

import json

import torch
from torchvision.models.detection import ssd300_vgg16

from multibox.cli import build_parser, main


def test_every_long_command_takes_quiet():
    parser = build_parser()
    for argv in (["bench", "core"], ["bench", "data"], ["bench", "zoo"], ["zoo", "fetch", "x"], ["train", "x"],
                 ["demo"], ["eval"], ["detect", "x"], ["export", "onnx", "x", "--out", "y"],
                 ["data", "convert", "a", "b", "--to", "voc"], ["data", "check", "a"], ["data", "synth", "o",
                                                                                       "--num-images", "1"],
                 ["data", "pack", "a", "b"]):
        args = parser.parse_args([*argv, "--quiet"])
        assert args.quiet is True, argv


def test_import_quiet_writes_the_bundle_and_prints_nothing(tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "tv.pth"
    torch.save(ssd300_vgg16(weights=None, weights_backbone=None, num_classes=3).state_dict(), weights)
    out = tmp_path / "out"
    classes = ["--classes", "background,cat,dog"]
    assert main(["import", "torchvision", str(weights), "--out", str(out), *classes, "-q"]) == 0
    assert capsys.readouterr().out == ""
    bundles = list(out.glob("*.safetensors"))
    assert len(bundles) == 1
    assert main(["import", "torchvision", str(weights), "--out", str(tmp_path / "loud"), *classes]) == 0
    assert "wrote" in capsys.readouterr().out


def test_bench_data_quiet_prints_nothing_and_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "data", "--num-images", "2", "--passes", "1", "--json", str(out), "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert json.loads(out.read_text())["images_per_s"] > 0


def test_import_refuses_to_replace_a_bundle_without_overwrite_and_writes_json(tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "tv.pth"
    torch.save(ssd300_vgg16(weights=None, weights_backbone=None, num_classes=3).state_dict(), weights)
    out = tmp_path / "out"
    args = ["import", "torchvision", str(weights), "--out", str(out), "--classes", "background,cat,dog", "-q"]
    assert main([*args, "--json", str(tmp_path / "r.json")]) == 0
    bundle = out / "tv.safetensors"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["bundle"] == "tv.safetensors" and report["class_names"] == ["background", "cat", "dog"]
    before = bundle.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "tv.safetensors exists" in err and "--overwrite" in err
    assert bundle.stat().st_mtime_ns == before
    assert main([*args, "--overwrite"]) == 0
