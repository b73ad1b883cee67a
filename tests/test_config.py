"""Typed config: recipes load, overrides apply and are type-checked, YAML round trip, LR schedule values."""

from __future__ import annotations

import math

import pytest

from multibox.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    list_recipes,
    load_config,
)
from multibox.engine.trainer import lr_factor


def test_every_recipe_loads_and_validates():
    names = list_recipes()
    for expected in ("synthetic", "ssd300_vgg16_voc0712", "ssd512_vgg16_voc0712", "ssdlite320_mobilenetv2_voc0712"):
        assert expected in names
    for name in names:
        cfg = load_config(name)
        assert isinstance(cfg, TrainConfig)
        assert cfg.name == name


def test_caffe_ssd300_recipe_matches_the_original_solver():
    cfg = load_config("ssd300_vgg16_voc0712")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 1e-3, 0.9, 5e-4)
    assert cfg.data.batch_size == 32
    assert cfg.schedule.milestones == [80000, 100000] and cfg.steps == 120000
    assert cfg.schedule.warmup_steps > 0


def test_base_inheritance():
    cfg = load_config("ssd512_vgg16_voc0712")
    assert cfg.model.name == "ssd512_vgg16"
    assert cfg.optim.lr == 1e-3 and cfg.schedule.milestones == [80000, 100000]


def test_overrides_apply_with_types():
    cfg = load_config("synthetic", ["optim.lr=0.01", "steps=7", "schedule.milestones=[3, 5]", "data.val=null",
                                    "model.kwargs.image_size=[96, 96]", "optim.weight_decay=0"])
    assert cfg.optim.lr == 0.01 and cfg.steps == 7 and cfg.schedule.milestones == [3, 5]
    assert cfg.data.val is None
    assert cfg.model.kwargs["image_size"] == [96, 96]
    assert isinstance(cfg.optim.weight_decay, float)


def test_exponent_notation_numbers_are_numbers(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-3 (no dot) as a string; `optim.lr=1e-3` and `lr: 5e-4` in a file are numbers.
    cfg = load_config("synthetic", ["optim.lr=1e-3", "optim.weight_decay=5E-4", "schedule.min_lr_ratio=+1e-2"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.schedule.min_lr_ratio) == (1e-3, 5e-4, 1e-2)
    path = tmp_path / "c.yaml"
    path.write_text("base: synthetic\noptim: {lr: 2e-4}\n")
    assert load_config(str(path)).optim.lr == 2e-4
    with pytest.raises(ConfigError, match="optim.lr: expected a number, got '1e-3x'"):
        load_config("synthetic", ["optim.lr=1e-3x"])
    with pytest.raises(ConfigError, match="must be a finite number"):
        load_config("synthetic", ["optim.lr=1e999"])


@pytest.mark.parametrize("override, fragment", [
    ("optim.lrr=1", "no key 'lrr'"),
    ("steps=abc", "steps: expected an integer"),
    ("optim.nesterov=3", "expected true or false"),
    ("precision=fp8", "precision='fp8'"),
    ("noequals", "expected key=value"),
    ("steps=0", "steps=0: must be positive"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        load_config("synthetic", [override])


def test_yaml_round_trip(tmp_path):
    cfg = load_config("synthetic", ["optim.lr=0.02"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(cfg)


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*optim\.learning_rate"):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml: invalid YAML"):
        load_config(bad)


def test_apply_overrides_does_not_mutate_input():
    data = {"optim": {"lr": 1.0}}
    out = apply_overrides(data, ["optim.lr=2"])
    assert data == {"optim": {"lr": 1.0}} and out == {"optim": {"lr": 2}}


def test_lr_schedule_values():
    cfg = config_from_dict({"steps": 100, "schedule": {"name": "multistep", "milestones": [50, 80], "gamma": 0.1,
                                                        "warmup_steps": 10, "warmup_factor": 0.1}})
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(5, cfg) == pytest.approx(0.1 * 0.5 + 0.5)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(49, cfg) == pytest.approx(1.0)
    assert lr_factor(50, cfg) == pytest.approx(0.1)
    assert lr_factor(80, cfg) == pytest.approx(0.01)
    cos = config_from_dict({"steps": 110, "schedule": {"name": "cosine", "warmup_steps": 10, "min_lr_ratio": 0.1}})
    assert lr_factor(10, cos) == pytest.approx(1.0)
    assert lr_factor(60, cos) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(110, cos) == pytest.approx(0.1)


@pytest.mark.parametrize("override, expected", [
    ("steps=abc", "override steps=abc: steps: expected an integer, got 'abc'"),
    ("steps=0", "override steps=0: steps=0: must be positive"),
    ("optim.nesterov=3", "override optim.nesterov=3: optim.nesterov: expected true or false"),
    ("model.kwargs.image_size=[0,0]", "override model.kwargs.image_size=[0,0]: model.kwargs.image_size: "),
    ("optim.lr=.inf", "override optim.lr=.inf: optim.lr=inf: must be a finite number"),
    ("loss.loc_weight=.nan", "override loss.loc_weight=.nan: loss.loc_weight=nan: must be a finite number"),
    ("device=tpu", "override device=tpu: device='tpu': expected auto, cpu, cuda, cuda:N or mps"),
])
def test_override_errors_name_the_override_not_the_recipe(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config("synthetic", [override])
    assert str(info.value).startswith(expected), str(info.value)
    assert "synthetic.yaml" not in str(info.value)


def test_file_errors_still_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("steps: 0\nmodel: {kwargs: {image_size: [100000, 64]}}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: steps=0: must be positive"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"bad\.yaml: model\.kwargs\.image_size: input size \[100000, 64\] exceeds"):
        load_config(path, ["steps=3"])


def test_precision_auto_follows_native_bf16(monkeypatch):
    """``precision: auto`` is bf16 exactly where the device reports native bf16, fp32 elsewhere; explicit values
    are kept as given."""
    import torch

    from multibox.config import resolve_precision

    for explicit in ("fp32", "bf16", "fp16"):
        assert resolve_precision(explicit, torch.device("cpu")) == explicit
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda n=native: n)
        assert resolve_precision("auto", torch.device("cpu")) == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", torch.device("cuda", 0)) == "fp32"
    assert resolve_precision("auto", torch.device("meta")) == "fp32"
    assert load_config("trees").precision == "auto"
