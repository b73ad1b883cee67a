"""Registries: importers and bundle builders (interop.registry), backbones (models.backbones), and the commands
that read them (`multibox import --list`, `multibox models`)."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from multibox.cli import main
from multibox.interop.bundle import DetectorBundle, load_bundle, save_bundle
from multibox.interop.registry import get_builder, list_builders, list_importers, register_builder, register_importer
from multibox.models import build_model

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _tiny(class_names=("background", "a", "b")):
    torch.manual_seed(0)
    return build_model("ssd7", num_classes=len(class_names), class_names=list(class_names), image_size=(64, 64))


def test_builtin_importers_and_builders():
    assert {"caffe", "tf-od"} <= set(list_importers())
    assert {"multibox", "caffe", "tf-od"} <= set(list_builders())
    with pytest.raises(ValueError, match="no bundle builder named 'nope'; known: .*caffe"):
        get_builder("nope")


class _Doubled(nn.Module):
    """A builder's network: ssd7 whose box deltas are doubled (a different network, same weights)."""

    def __init__(self, spec):
        super().__init__()
        self.inner = build_model("ssd7", num_classes=spec["num_classes"], image_size=tuple(spec["image_size"]))

    def forward(self, x):
        out = self.inner(x)
        return type(out)(cls_logits=out.cls_logits, box_deltas=2 * out.box_deltas)


def test_a_builder_registered_here_loads_bundles_without_touching_bundle_py(tmp_path):
    register_builder("test-doubled", _Doubled)
    model = _Doubled({"num_classes": 3, "image_size": [64, 64]}).eval()
    bundle = DetectorBundle(model=model, priors=model.inner.priors, input_spec=model.inner.input_spec,
                            class_names=["background", "a", "b"], builder="test-doubled",
                            spec={"num_classes": 3, "image_size": [64, 64]})
    loaded = load_bundle(save_bundle(bundle, tmp_path / "d.safetensors"))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref, got = model(x), loaded.model(x)
        plain = model.inner(x)
    torch.testing.assert_close(got.box_deltas, ref.box_deltas)
    torch.testing.assert_close(got.box_deltas, 2 * plain.box_deltas)


def _fake_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("classes")
    p.add_argument("--out", required=True)


def _fake_run(args: argparse.Namespace) -> Path:
    names = ["background", *args.classes.split(",")]
    model = _tiny(names).eval()
    spec = {"name": "ssd7", "num_classes": len(names), "class_names": names, "kwargs": {"image_size": [64, 64]}}
    bundle = DetectorBundle(model=model, priors=model.priors, input_spec=model.input_spec, class_names=names,
                            builder="multibox", spec=spec)
    return save_bundle(bundle, Path(args.out) / "fake.safetensors")


def test_an_importer_registered_here_is_a_multibox_import_format(tmp_path, capsys):
    register_importer("test-fake", help="a fake format (test)", description="makes an ssd7", add_arguments=_fake_args,
                      run=_fake_run, builders=("multibox",))
    assert main(["import", "test-fake", "x,y", "--out", str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert load_bundle(tmp_path / "fake.safetensors").class_names == ["background", "x", "y"]
    assert main(["import", "--list", "--json", "-"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"caffe", "tf-od", "test-fake"} <= set(rows)
    assert rows["caffe"]["builders"] == ["caffe"] and rows["test-fake"]["module"] == __name__
    with pytest.raises(SystemExit) as e:
        main(["import", "test-fake", "--help"])
    assert e.value.code == 0 and "usage: multibox import test-fake" in capsys.readouterr().out


def test_unknown_import_format_is_a_usage_error(capsys):
    assert main(["import", "onnx", "x"]) == 2
    err = capsys.readouterr().err
    assert "multibox import onnx: error: unknown import format 'onnx'" in err and "caffe" in err


def test_help_does_not_import_torch():
    code = "import sys; from multibox.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": SRC}, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


# ----------------------------------------------------------------------------------------------- backbones


def test_backbones_registry_builds_what_the_ssd_builders_use():
    from multibox.models.backbones import backbone_info, build_backbone, list_backbones
    from multibox.models.backbones.mobilenet import MobileNetV1Backbone, MobileNetV2Backbone
    from multibox.models.backbones.vgg import VGG16Backbone
    from multibox.models.ssd7 import SSD7Backbone

    assert {"vgg16", "mobilenet_v1", "mobilenet_v2", "ssd7"} <= set(list_backbones())
    for name, cls in (("vgg16", VGG16Backbone), ("mobilenet_v1", MobileNetV1Backbone),
                      ("mobilenet_v2", MobileNetV2Backbone), ("ssd7", SSD7Backbone)):
        with torch.device("meta"):
            assert type(build_backbone(name)) is cls
    info = backbone_info("vgg16")
    assert info["out_channels"] == [512, 1024] and info["strides"] == [8, 16]
    with pytest.raises(KeyError, match="unknown backbone 'resnet9'; registered: .*vgg16"):
        build_backbone("resnet9")


@pytest.mark.parametrize("model, backbone", [("ssd300_vgg16", "vgg16"), ("ssd7", "ssd7"),
                                             ("ssdlite320_mobilenetv2", "mobilenet_v2"),
                                             ("ssd300_mobilenetv1", "mobilenet_v1")])
def test_builders_build_their_backbone_through_the_registry(model, backbone, monkeypatch):
    from multibox.models.backbones import registry
    from multibox.models.registry import model_info

    built = []
    real = registry.build_backbone

    def spy(name, **kw):
        built.append(name)
        return real(name, **kw)

    monkeypatch.setattr(registry, "build_backbone", spy)
    for mod in ("multibox.models.ssd_vgg", "multibox.models.ssd7", "multibox.models.ssdlite",
                "multibox.models.ssd_mobilenet"):
        monkeypatch.setattr(f"{mod}.build_backbone", spy)
    assert model_info(model)["backbone"] == backbone
    assert built == [backbone]


def test_models_json_file_and_stdout(tmp_path, capsys):
    assert main(["models", "--json", str(tmp_path / "m.json")]) == 0
    text = capsys.readouterr().out
    assert "ssd300_vgg16" in text and "mobilenet_v2" in text  # the tables are still printed
    doc = json.loads((tmp_path / "m.json").read_text())
    assert {m["name"]: m["backbone"] for m in doc["models"]}["ssd300_vgg16"] == "vgg16"
    assert {b["name"] for b in doc["backbones"]} >= {"vgg16", "mobilenet_v1", "mobilenet_v2", "ssd7"}
    assert main(["models", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out) == doc
    assert main(["models", "--json", str(tmp_path)]) == 2
    assert "--json" in capsys.readouterr().err


def test_models_json_into_a_pipe_closed_early():
    r = subprocess.run(f"'{sys.executable}' -m multibox models --json - | head -1", shell=True, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
    assert r.returncode == 0 and r.stdout == "{\n"
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


@pytest.mark.parametrize("args, message", [(["--level", "99", "--plot", "p.png"], "--level 99"),
                                           (["--level", "-1", "--plot", "p.png"], "--level -1"),
                                           (["--feature-sizes", "38x"], "--feature-sizes"),
                                           (["--feature-sizes", "38", "19"], "6 feature maps")])
def test_anchors_bad_options_are_usage_errors(tmp_path, capsys, args, message):
    args = [str(tmp_path / a) if a.endswith(".png") else a for a in args]
    assert main(["anchors", "ssd300-voc", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multibox anchors: error: ") and message in err
    assert not list(tmp_path.iterdir())


def test_zoo_list_json_file_and_fetch_overwrite(tmp_path, capsys):
    assert main(["zoo", "list", "--json", str(tmp_path / "z.json")]) == 0
    rows = json.loads((tmp_path / "z.json").read_text())
    assert "face-res10-300" in {r["name"] for r in rows}
    assert "face-res10-300" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["zoo", "fetch", "face-res10-300", "--force"])
    assert e.value.code == 2
    from multibox.cli import build_parser

    ns = build_parser().parse_args(["zoo", "fetch", "face-res10-300", "--overwrite"])
    assert ns.overwrite is True


def test_torchvision_box_iou_differs_on_degenerate_boxes():
    """Why matching keeps its own IoU (see multibox.matching.pairwise_iou): same numbers on proper boxes, but
    torchvision's box_iou gives NaN for an empty union and counts inverted boxes with a negative area."""
    from torchvision.ops import box_iou

    from multibox.matching import pairwise_iou

    proper = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 4.0]])
    assert torch.equal(pairwise_iou(proper, proper), box_iou(proper, proper))
    empty = torch.zeros(1, 4)
    assert box_iou(empty, empty).isnan().all() and pairwise_iou(empty, empty).item() == 0.0
    inverted = torch.tensor([[0.0, 2.0, 2.0, 0.0]])  # y2 < y1: Caffe's BBoxSize is 0, box_iou's area is -4
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    assert pairwise_iou(inverted, box).item() == 0.0
    assert box_iou(inverted, box).isnan().all()  # 0 / (-4 + 4 - 0)


def test_import_torchvision_weights(tmp_path, capsys):
    """`multibox import torchvision W.pth`: the bundle runs like torchvision's own network on the same input."""
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=3).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    assert main(["import", "torchvision", str(tmp_path / "tv.pth"), "--out", str(tmp_path / "out"),
                 "--classes", "background,cat,dog"]) == 0
    bundle = load_bundle(tmp_path / "out" / "tv.safetensors")
    assert bundle.builder == "torchvision" and bundle.class_names == ["background", "cat", "dog"]
    x = torch.rand(1, 3, 300, 300)
    with torch.no_grad():
        feats = list(tv.backbone(x).values())
        ref = tv.head(feats)
        got = bundle.model(x)
    torch.testing.assert_close(got.cls_logits, ref["cls_logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.box_deltas, ref["bbox_regression"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cmd", [["bench", "core", "--quick"], ["bench", "data", "--num-images", "2"],
                                 ["anchors", "ssd300-voc"]])
def test_json_into_a_folder_fails_before_work(tmp_path, capsys, cmd):
    assert main([*cmd, "--json", str(tmp_path)]) == 2
    cap = capsys.readouterr()
    assert "error: --json" in cap.err and "is a folder" in cap.err and not cap.out


def test_bench_counts_are_range_checked(capsys):
    for args in (["bench", "data", "--num-images", "0"], ["bench", "core", "--repeats", "0"],
                 ["bench", "data", "--images", "4"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
    capsys.readouterr()
