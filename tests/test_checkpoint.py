"""Checkpoints: round trips (state, RNG, weights + metadata), atomic writes, kill -9 safety, clear errors."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from multibox.engine.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    save_weights,
)
from multibox.models import build_model
from multibox.weights_io import load_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NAMES = ["background", "cat", "dog"]
KWARGS = {"image_size": [64, 64]}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("ssd7", num_classes=3, class_names=NAMES, **KWARGS)


def _state(model, step=7, **extra):
    state = {
        "model": model.state_dict(),
        "optimizer": None,
        "scheduler": None,
        "scaler": None,
        "step": step,
        "epoch": 2,
        "sampler": {"epoch": 2, "batch_in_epoch": 5},
        "config": {"lr": 0.01, "milestones": (10, 20), "data": {"root": Path("/tmp/x")}},
        "class_names": NAMES,
        "model_name": "ssd7",
        "model_kwargs": KWARGS,
        "metrics": {"mAP": np.float64(0.5)},
    }
    state.update(extra)
    return state


def _draws():
    return (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), np.random.randn())


def test_rng_state_round_trips_through_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's legacy state
    rng = capture_rng_state()
    expected = _draws()
    save_checkpoint(tmp_path / "c.pt", _state(_model(), rng=rng))
    _draws(), _draws()  # move every generator on
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # the plain loader accepts the file
    restore_rng_state(raw["rng"])
    assert _draws() == expected


def test_full_state_round_trip_with_optimizer_scheduler_scaler(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    model(torch.randn(2, 3, 64, 64)).cls_logits.sum().backward()
    opt.step()
    sched.step()
    path = save_checkpoint(tmp_path / "ckpt.pt", _state(model, optimizer=opt.state_dict(), scheduler=sched,
                                                         scaler=scaler.state_dict()))
    assert path == tmp_path / "ckpt.pt"
    ck = load_checkpoint(path)
    assert ck["format_version"] == FORMAT_VERSION
    assert ck["step"] == 7 and ck["epoch"] == 2 and ck["sampler"] == {"epoch": 2, "batch_in_epoch": 5}
    assert ck["class_names"] == NAMES and ck["model_name"] == "ssd7" and ck["model_kwargs"] == KWARGS
    assert ck["config"] == {"lr": 0.01, "milestones": [10, 20], "data": {"root": "/tmp/x"}}
    assert ck["metrics"] == {"mAP": 0.5} and type(ck["metrics"]["mAP"]) is float
    for k, v in model.state_dict().items():
        assert torch.equal(ck["model"][k], v), k
    opt2 = torch.optim.SGD(_model(1).parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt2.load_state_dict(ck["optimizer"])
    buf = opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], buf)
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, milestones=[2, 4], gamma=0.1)
    sched2.load_state_dict(ck["scheduler"])  # the scheduler object was replaced by its state_dict()
    assert sched2.last_epoch == 1
    assert ck["scaler"]["scale"] == 1024.0


def test_unloadable_values_are_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"state\['metrics'\]\['fn'\]"):
        save_checkpoint(tmp_path / "c.pt", _state(_model(), metrics={"fn": lambda x: x}))
    with pytest.raises(TypeError, match="model_kwargs"):
        save_checkpoint(tmp_path / "c.pt", _state(_model(), model_kwargs={"spec": object()}))
    with pytest.raises(KeyError, match="model_name"):
        save_checkpoint(tmp_path / "c.pt", {"model": {}, "step": 0, "class_names": NAMES})
    assert list(tmp_path.iterdir()) == []


def test_weights_file_metadata_and_load_model(tmp_path):
    model = _model().eval()
    path = save_weights(tmp_path / "w.safetensors", model, model_name="ssd7", class_names=NAMES,
                        model_kwargs=KWARGS, config={"a": 1}, step=42)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert keys == set(model.state_dict())
    assert meta["model_name"] == "ssd7" and meta["num_classes"] == "3" and meta["step"] == "42"
    assert json.loads(meta["class_names"]) == NAMES and json.loads(meta["model_kwargs"]) == KWARGS
    assert json.loads(meta["config"]) == {"a": 1} and meta["format_version"] == str(FORMAT_VERSION)

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    save_checkpoint(tmp_path / "c.pt", _state(model))
    for p in (path, tmp_path / "c.pt"):
        loaded = load_model(p)
        assert loaded.class_names == NAMES and not loaded.training
        assert loaded.prior_config.image_size == (64, 64)
        with torch.no_grad():
            out = loaded(x)
        assert torch.equal(out.cls_logits, ref.cls_logits) and torch.equal(out.box_deltas, ref.box_deltas)


def test_wrapped_model_is_saved_without_prefix(tmp_path):
    model = _model()
    wrapped = torch.nn.DataParallel(model)
    save_weights(tmp_path / "w.safetensors", wrapped, model_name="ssd7", class_names=NAMES, model_kwargs=KWARGS,
                 config={}, step=0)
    assert all(k.startswith("module.") for k in wrapped.state_dict())
    save_checkpoint(tmp_path / "c.pt", {**_state(model), "model": wrapped.state_dict()})
    assert set(load_checkpoint(tmp_path / "c.pt")["model"]) == set(model.state_dict())
    assert isinstance(load_model(tmp_path / "w.safetensors"), type(model))


def test_clear_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(missing)
    good = save_checkpoint(tmp_path / "good.pt", _state(_model()))
    data = good.read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.pt.*truncated or corrupt"):
        load_checkpoint(trunc)
    plain = tmp_path / "plain.pt"
    torch.save({"conv.weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match=r"plain\.pt is not a multibox checkpoint"):
        load_checkpoint(plain)
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "x": Path("a")}, evil)  # a class the weights_only loader refuses
    with pytest.raises(CheckpointError, match=r"evil\.pt is not a multibox checkpoint"):
        load_checkpoint(evil)
    newer = tmp_path / "newer.pt"
    torch.save({**torch.load(good, weights_only=True), "format_version": FORMAT_VERSION + 1}, newer)
    with pytest.raises(CheckpointError, match=r"newer\.pt.*newer"):
        load_checkpoint(newer)
    w = save_weights(tmp_path / "w.safetensors", _model(), model_name="ssd7", class_names=NAMES,
                     model_kwargs=KWARGS, config={}, step=0)
    tw = tmp_path / "tw.safetensors"
    tw.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"tw\.safetensors"):
        load_model(tw)
    with pytest.raises(CheckpointError, match="weights only"):
        load_checkpoint(w)
    bare = tmp_path / "bare.safetensors"
    safetensors.torch.save_file(_model().state_dict(), str(bare))
    with pytest.raises(CheckpointError, match=r"bare\.safetensors does not record 'model_name'"):
        load_model(bare)


def _half_then_raise(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half a checkpoint")
    raise OSError("disk full (simulated)")


def test_failed_save_keeps_previous_file_and_removes_temporary(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", _state(_model(), step=1))
    wpath = save_weights(tmp_path / "last.safetensors", _model(), model_name="ssd7", class_names=NAMES,
                         model_kwargs=KWARGS, config={}, step=1)
    monkeypatch.setattr(torch, "save", _half_then_raise)

    def bad_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"garbage")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(safetensors.torch, "save_file", bad_save_file)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, _state(_model(), step=2))
    with pytest.raises(OSError, match="simulated"):
        save_weights(wpath, _model(), model_name="ssd7", class_names=NAMES, model_kwargs=KWARGS, config={}, step=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    with safe_open(str(wpath), framework="pt") as f:
        assert f.metadata()["step"] == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.safetensors"]


def test_manager_last_best_and_step_files(tmp_path):
    folder = tmp_path / "checkpoints"
    mgr = CheckpointManager(folder, keep_last=2)
    model = _model()
    for step, metric in [(1, 0.5), (2, 0.4), (3, 0.7), (4, 0.6)]:
        with torch.no_grad():
            model.head.regression[0].bias.fill_(float(step))
        written = mgr.save(_state(model, step=step), step=step, metric=metric)
        assert ("best" in written) == (step in (1, 3))
    assert load_checkpoint(folder / "last.pt")["step"] == 4
    best = load_checkpoint(folder / "best.pt")
    assert best["step"] == 3 and best["best"] == {"metric": 0.7, "step": 3, "higher_is_better": True}
    assert torch.all(best["model"]["head.regression.0.bias"] == 3.0)
    assert torch.all(load_model(folder / "best.safetensors").head.regression[0].bias == 3.0)
    assert torch.all(load_model(folder / "last.safetensors").head.regression[0].bias == 4.0)
    assert json.loads((folder / "best.json").read_text()) == {"metric": 0.7, "step": 3, "higher_is_better": True}
    assert [p.name for p in mgr.step_paths()] == ["step-000003.pt", "step-000004.pt"]
    assert load_checkpoint(folder / "step-000003.pt")["step"] == 3

    # a resumed run remembers the best value through best.json and cleans temporaries of a killed save
    (folder / ".last.pt.abc123.tmp").write_bytes(b"partial")
    mgr2 = CheckpointManager(folder, keep_last=2)
    assert not (folder / ".last.pt.abc123.tmp").exists()
    assert mgr2.best_metric == 0.7 and mgr2.latest() == folder / "last.pt"
    assert "best" not in mgr2.save(_state(model, step=5), step=5, metric=0.65)
    assert "best" in mgr2.save(_state(model, step=6), step=6, metric=0.71)
    with pytest.raises(ValueError, match="higher_is_better"):
        mgr2.save(_state(model, step=7), step=7, metric=0.1, higher_is_better=False)
    with pytest.raises(ValueError, match="step"):
        mgr2.save(_state(model, step=8), step=9)


def test_manager_lower_is_better_and_no_step_files(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=0)
    model = _model()
    for step, loss in [(1, 2.0), (2, 1.0), (3, 1.5), (4, float("nan"))]:
        mgr.save(_state(model, step=step), step=step, metric=loss, higher_is_better=False)
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 2
    assert mgr.step_paths() == []
    (tmp_path / "best.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="best.json"):
        CheckpointManager(tmp_path)


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from multibox.engine.checkpoint import save_checkpoint

    folder = sys.argv[1]
    step = 0
    while True:
        step += 1
        state = {"model": {"w": torch.full((4_000_000,), float(step))}, "step": step, "model_name": "ssd7",
                 "class_names": ["background", "a"]}
        save_checkpoint(folder + "/last.pt", state)
        if step == 1:
            print("saved", flush=True)
    """
)


def test_kill_9_during_saves_leaves_a_loadable_last_checkpoint(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(_KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, env=env)
        try:
            assert proc.stdout.readline().strip() == b"saved"
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        ck = load_checkpoint(tmp_path / "last.pt")
        assert ck["step"] >= 1 and torch.all(ck["model"]["w"] == float(ck["step"]))
