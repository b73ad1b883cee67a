"""``multibox train`` / ``demo`` on the command line: resume from the run's own config, used --out, overrides after
options, errors as messages (exit 2) instead of tracebacks, mAP printed as fractions, plot labels, quiet."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.figure
import pytest
import torch

from multibox.cli import build_parser, main
from multibox.config import load_config
from multibox.engine.trainer import Trainer, write_training_plots

TINY = [
    "name=tiny", "seed=3", "steps=4", "threads=2", "log_every=1",
    "model.name=ssd7", "model.kwargs={image_size: [64, 64]}",
    "data.train=synthetic", "data.val=synthetic",
    "data.synthetic={profile: hard, num_train: 16, num_test: 4, size: 64, seed: 0}",
    "data.batch_size=4", "data.augment=ssd", "optim.lr=0.01", "eval.at_end=false", "checkpoint.every_steps=2",
]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.getbasetemp() / "multibox-cache"
    monkeypatch.setenv("MULTIBOX_CACHE", str(root))
    return root


def _rows(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _rows(run) if r["kind"] == "train"}


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_overrides_after_options_are_accepted(capsys):
    assert main(["train", "synthetic", "--print-config", "steps=3", "optim.lr=0.5"]) == 0
    cfg = capsys.readouterr().out
    assert "steps: 3\n" in cfg and "lr: 0.5\n" in cfg
    args = build_parser().parse_args(["demo", "--no-progress", "steps=3", "--num-images", "2", "-q", "log_every=1"])
    assert args.overrides == ["steps=3", "log_every=1"] and args.num_images == 2 and args.quiet


@pytest.mark.parametrize("override, message", [
    ("steps=abc", "multibox train: error: override steps=abc: steps: expected an integer, got 'abc'"),
    ("device=tpu", "multibox train: error: override device=tpu: device='tpu': expected auto, cpu, cuda"),
    ("model.kwargs.image_size=[0,0]", "multibox train: error: override model.kwargs.image_size=[0,0]: "
                                      "model.kwargs.image_size: input size [0, 0]: sides must be >= 1"),
    ("optim.lr=.inf", "multibox train: error: override optim.lr=.inf: optim.lr=inf: must be a finite number"),
])
def test_bad_values_are_messages_naming_the_override(tmp_path, capsys, override, message):
    assert main(["train", "synthetic", override, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = _error(capsys)
    assert message in err and "synthetic.yaml" not in err


def test_cuda_without_a_gpu_is_a_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", *TINY, "device=cuda", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "multibox train: error: device=cuda: no CUDA GPU is available here" in _error(capsys)
    assert not (tmp_path / "r").exists()  # refused before any work


def test_nonfinite_loss_stop_is_a_message(tmp_path, capsys, monkeypatch):
    original = Trainer._criterion

    def nan_criterion(self):
        inner = original(self)
        return lambda *a, **k: inner(*a, **k)._replace(total=torch.tensor(float("nan")))

    monkeypatch.setattr(Trainer, "_criterion", nan_criterion)
    assert main(["train", *TINY, "--out", str(tmp_path / "r"), "--no-progress"]) == 1
    err = _error(capsys)
    assert "multibox train: error: non-finite loss at step 1" in err


def test_resume_uses_the_runs_own_config_and_stays_exact(tmp_path, capsys):
    custom = ["data.batch_size=2", "optim.lr=0.02", "checkpoint.every_steps=3"]  # what the first run changed
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(["train", *TINY, *custom, "steps=5", "--out", str(straight), "--no-progress"]) == 0
    assert main(["train", *TINY, *custom, "--out", str(broken), "--no-progress", "steps=3"]) == 0
    last = broken / "checkpoints" / "last.pt"
    capsys.readouterr()
    # only the new step count on the command line: everything else comes from the checkpoint
    assert main(["train", f"resume={last}", "steps=5", "--no-progress"]) == 0, capsys.readouterr().err
    assert _losses(broken) == _losses(straight)
    a = torch.load(last, weights_only=True)
    b = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == 5 and a["config"]["data"]["batch_size"] == 2 and a["config"]["steps"] == 5
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_resume_refusals(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run), "--no-progress"]) == 0
    last = run / "checkpoints" / "last.pt"
    capsys.readouterr()
    assert main(["train", f"resume={last}", "steps=2", "--no-progress"]) == 2
    assert "steps=2 is below the checkpoint's step 4" in _error(capsys)
    assert main(["train", "ssdlite320_mobilenetv2_voc0712", f"resume={last}", "--no-progress"]) == 2
    err = _error(capsys)
    assert f"resume={last}: the checkpoint is a ssd7 model" in err and "ssdlite320_mobilenetv2" in err
    # the Python API says the same when the config names another architecture
    cfg = load_config(None, [*TINY, "model.name=ssd300_mobilenetv2", f"resume={last}", "steps=6"])
    with pytest.raises(ValueError, match="the checkpoint is a ssd7 model"):
        Trainer(cfg, None, progress=False).run()
    cfg = load_config(None, [*TINY, f"resume={last}", "steps=3"])
    with pytest.raises(ValueError, match="steps=3 is below the checkpoint's step 4"):
        Trainer(cfg, None, progress=False).run()


def test_used_out_is_refused_unless_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run), "--no-progress"]) == 0
    (run / "notes.txt").write_text("mine")
    before = (run / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(run), "--no-progress"]) == 2
    err = _error(capsys)
    assert f"{run} already holds a run" in err and "--overwrite" in err
    assert (run / "metrics.jsonl").read_bytes() == before
    assert main(["train", *TINY, "steps=2", "--out", str(run), "--no-progress", "--overwrite"]) == 0
    assert [r["step"] for r in _rows(run) if r["kind"] == "train"] == [1, 2]  # not appended to the old run
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files are removed


def test_out_that_is_a_file_is_refused_before_work(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["train", *TINY, "--out", str(f), "--no-progress"]) == 2
    assert "--out" in _error(capsys) and f.read_text() == "x"


def test_map_printed_as_fractions_and_quiet(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "eval.every_steps=2", "eval.at_end=true", "--out", str(run), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --quiet: no informational lines, no bar
    maps = [r["mAP"] for r in _rows(run) if r["kind"] == "eval"]
    line = next(ln for ln in captured.out.splitlines() if ln.startswith("mAP "))
    assert line.split()[1] == f"{maps[0]:.4f}" and line.split()[-1] == f"{maps[-1]:.4f}"


def test_plots_name_their_axes(tmp_path, monkeypatch):
    saved: list = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: saved.append([(ax.get_xlabel(), ax.get_ylabel(), ax.get_title())
                                                           for ax in fig.axes]))
    history = [{"kind": "train", "step": s, "loss": 3.0 / s, "loc": 1.0 / s, "conf": 2.0 / s} for s in (1, 2, 3)]
    history += [{"kind": "eval", "step": 3, "mAP": 0.25}]
    write_training_plots(history, tmp_path, metric="coco")
    (loss_axes,), (map_axes,) = saved
    assert loss_axes[0] == "training step" and "loss (smooth L1 + CE)" in loss_axes[1] and loss_axes[2]
    assert map_axes[0] == "training step" and "COCO mAP@[0.5:0.95]" in map_axes[1] and "COCO" in map_axes[2]


def test_demo_refuses_a_used_run_folder_before_any_work(tmp_path, capsys, monkeypatch):
    import multibox.demo as demo

    monkeypatch.setattr(demo, "run_pretrained_detectors", lambda *a, **k: pytest.fail("step 0 ran"))
    out = tmp_path / "demo"
    (out / "run").mkdir(parents=True)
    (out / "run" / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 1.0}\n')
    assert main(["demo", "--out", str(out), "-q", "steps=2", "model.pretrained_backbone=null"]) == 2
    err = _error(capsys)
    assert f"{out / 'run'} already holds a run" in err and "--overwrite" in err
