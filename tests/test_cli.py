import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from multibox.anchors import PriorBoxGenerator, get_prior_preset
from multibox.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    assert len(blocks) >= 2, "README must start with two set-up commands"
    assert "multibox demo" in blocks[0]
    test_cmd = blocks[1].strip()
    assert "pytest" in test_cmd and "ruff" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("cmd", [[], ["anchors"], ["models"], ["demo"], ["bench"], ["bench", "core"], ["train"],
                                 ["eval"]])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: multibox" in capsys.readouterr().out


def test_anchors_command_writes_caffe_order_priors(tmp_path, capsys):
    out = tmp_path / "p.npy"
    table = tmp_path / "t.json"
    assert main(["anchors", "ssd300-voc", "--out", str(out), "--json", str(table)]) == 0
    text = capsys.readouterr().out
    assert "total priors: 8732" in text
    assert "38x38" in text and "5776" in text
    arr = np.load(out)
    assert arr.shape == (8732, 4) and arr.dtype == np.float32
    cfg = get_prior_preset("ssd300-voc")
    torch.testing.assert_close(torch.from_numpy(arr), PriorBoxGenerator(cfg)(cfg.default_feature_sizes()))
    levels = json.loads(table.read_text())["levels"]
    assert [lv["count"] for lv in levels] == [5776, 2166, 600, 150, 36, 4]
    assert levels[0]["box_sizes_px"][0] == [30, 30]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_anchors_plot(tmp_path):
    png = tmp_path / "priors.png"
    assert main(["anchors", "ssd512-voc", "--plot", str(png), "--level", "2"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_preset_is_an_error(capsys):
    assert main(["anchors", "ssd999"]) == 2
    err = capsys.readouterr().err
    assert "unknown prior preset 'ssd999'" in err and "ssd300-voc" in err


def test_models_command_lists_registered_models(capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "ssd300_vgg16" in text and "8732" in text
    assert "ssd512_vgg16" in text and "24564" in text
    assert "ssd7" in text
    assert main(["models", "--json", "-"]) == 0
    infos = json.loads(capsys.readouterr().out)["models"]
    by_name = {i["name"]: i for i in infos}
    assert by_name["ssd300_vgg16"]["num_priors"] == 8732
    assert by_name["ssd300_vgg16"]["num_parameters"] > 20_000_000


def test_public_api_exports():
    import multibox

    for name in multibox.__all__:
        assert getattr(multibox, name) is not None
    import multibox.data

    for name in multibox.data.__all__:
        assert getattr(multibox.data, name) is not None
    assert multibox.build_model("ssd7").num_priors == 7160


def test_errors_name_the_whole_command(tmp_path, capsys):
    """`multibox data convert: error: ...`, not `multibox data: error: ...`; out-of-range counts are usage errors
    naming the option."""
    from multibox.cli import main

    assert main(["data", "convert", str(tmp_path / "none"), str(tmp_path / "o"), "--to", "voc"]) == 2
    assert capsys.readouterr().err.startswith("multibox data convert: error:")
    for argv in (["data", "synth", str(tmp_path / "s"), "--num-images", "0"],
                 ["data", "pack", str(tmp_path), str(tmp_path / "p"), "--shard-size", "0"],
                 ["data", "check", str(tmp_path), "--montage", "-1"]):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 2
        else:
            raise AssertionError(f"{argv} was accepted")
        err = capsys.readouterr().err
        assert argv[-2] in err and "must be >=" in err, err
