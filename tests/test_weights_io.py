"""Inference loading (multibox.weights_io): neutral module, bounds on what a file asks for before building, and
.pt / .safetensors pairs left one save apart by a kill between the two writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

import multibox.engine.checkpoint as checkpoint_mod
import multibox.weights_io as weights_io
from multibox.engine.checkpoint import CheckpointManager, save_checkpoint, save_weights
from multibox.limits import LimitError
from multibox.models import build_model
from multibox.weights_io import CheckpointError, load_model

NAMES = ["background", "cat", "dog"]
KWARGS = {"image_size": [64, 64]}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("ssd7", num_classes=3, class_names=NAMES, **KWARGS)


def test_load_model_lives_outside_the_engine():
    assert not hasattr(checkpoint_mod, "load_model")
    code = ("import sys, multibox.weights_io as w; assert callable(w.load_model); "
            "print(sorted(m for m in sys.modules if m.startswith('multibox.engine')))")
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _hostile_safetensors(path: Path, num_classes: int, kwargs: dict) -> Path:
    names = ["background"] + [f"c{i}" for i in range(num_classes - 1)]
    meta = {"format": "multibox-weights", "format_version": "1", "model_name": "ssd7",
            "num_classes": str(num_classes), "class_names": json.dumps(names), "model_kwargs": json.dumps(kwargs),
            "config": "{}", "step": "1"}
    safetensors.torch.save_file({"x": torch.zeros(1)}, str(path), metadata=meta)
    return path


@pytest.fixture()
def no_real_build(monkeypatch):
    """build_model may only run on the meta device (no memory); a real build fails the test."""
    real = weights_io.build_model

    def guarded(*args, **kwargs):
        if torch.empty(0).device.type != "meta":
            raise AssertionError("the model was built before its metadata was checked")
        return real(*args, **kwargs)

    monkeypatch.setattr(weights_io, "build_model", guarded)


@pytest.mark.parametrize("classes, kwargs, fragment", [
    (3, {"image_size": [60000, 60000]}, "exceeds 4096 pixels"),
    (100001, {"image_size": [64, 64]}, "100001 classes exceed"),
])
def test_hostile_safetensors_metadata_is_refused_before_building(tmp_path, no_real_build, classes, kwargs, fragment):
    path = _hostile_safetensors(tmp_path / "evil.safetensors", classes, kwargs)
    with pytest.raises(LimitError, match=fragment) as info:
        load_model(path)
    assert "evil.safetensors" in str(info.value)


@pytest.mark.parametrize("key", ["model_kwargs", "class_names", "config"])
def test_deeply_nested_safetensors_metadata_is_a_clear_error(tmp_path, no_real_build, key):
    path = _hostile_safetensors(tmp_path / "deep.safetensors", 3, KWARGS)
    with safetensors.safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    meta[key] = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError, not JSONDecodeError
    safetensors.torch.save_file({"x": torch.zeros(1)}, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match=rf"deep\.safetensors: metadata entry {key!r} is nested too deeply"):
        load_model(path)


def test_hostile_checkpoint_and_too_many_priors(tmp_path, no_real_build, monkeypatch):
    pt = save_checkpoint(tmp_path / "evil.pt", {"model": {"x": torch.zeros(1)}, "step": 1, "model_name": "ssd7",
                                                "class_names": NAMES, "model_kwargs": {"image_size": [0, 5]}})
    with pytest.raises(LimitError, match=r"evil\.pt.*sides must be >= 1"):
        load_model(pt)
    monkeypatch.setenv("MULTIBOX_MAX_PRIORS", "100")  # ssd7 at 64x64 has 4 * (64 + 16 + 4 + 1) = 340 priors
    ok = save_weights(tmp_path / "w.safetensors", _model(), model_name="ssd7", class_names=NAMES,
                      model_kwargs=KWARGS, config={}, step=0)
    with pytest.raises(LimitError, match=r"w\.safetensors: 340 prior boxes exceed the bound of 100"):
        load_model(ok)


def test_hostile_file_is_refused_under_a_memory_cap(tmp_path):
    """In a subprocess whose address space may grow by 2 GB at most: the refusal needs no memory."""
    path = _hostile_safetensors(tmp_path / "evil.safetensors", 3, {"image_size": [60000, 60000]})
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    code = ("import resource, sys\n"
            "from multibox.weights_io import load_model\n"
            "vm = [int(ln.split()[1]) * 1024 for ln in open('/proc/self/status') if ln.startswith('VmSize:')][0]\n"
            "resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 30), vm + (2 << 30)))\n"
            "try:\n    load_model(sys.argv[1])\nexcept ValueError as e:\n    print('refused:', e); sys.exit(2)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "evil.safetensors" in out.stdout and "exceeds 4096" in out.stdout


def test_pair_killed_between_writes_is_refused_then_repaired(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    mgr = CheckpointManager(folder, keep_last=0)
    model = _model()

    def state(step: int) -> dict:
        with torch.no_grad():
            model.head.regression[0].bias.fill_(float(step))
        return {"model": model.state_dict(), "step": step, "model_name": "ssd7", "class_names": NAMES,
                "model_kwargs": KWARGS}

    mgr.save(state(1), step=1, metric=0.5)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed between last.pt and last.safetensors (simulated)")

    monkeypatch.setattr(checkpoint_mod, "save_weights", killed)
    with pytest.raises(KeyboardInterrupt):
        mgr.save(state(2), step=2, metric=0.9)
    monkeypatch.undo()
    assert checkpoint_mod.load_checkpoint(folder / "last.pt")["step"] == 2
    with pytest.raises(CheckpointError, match=r"last\.safetensors holds step 1 but last\.pt beside it holds step 2"):
        load_model(folder / "last.safetensors")
    assert torch.all(load_model(folder / "best.safetensors").head.regression[0].bias == 1.0)  # untouched pair

    repaired = CheckpointManager(folder, keep_last=0)  # what a resume does
    assert repaired.repair_pairs() == []  # construction already rewrote last.safetensors
    loaded = load_model(folder / "last.safetensors")
    assert torch.all(loaded.head.regression[0].bias == 2.0)
    assert weights_io.load_weights_file(folder / "last.safetensors")[1]["step"] == 2
