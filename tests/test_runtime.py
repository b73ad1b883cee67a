"""multibox.runtime.keep_freed_memory: applied once on glibc, switched off by the environment, never fatal."""

import platform
import subprocess
import sys

import pytest


def _run(code: str, env_value: str | None) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k != "MULTIBOX_MALLOC"}
    if env_value is not None:
        env["MULTIBOX_MALLOC"] = env_value
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_applies_once_and_can_be_turned_off():
    code = ("from multibox.runtime import keep_freed_memory as k\n"
            "a = k(); b = k(); print(a == b, a is not None and a['trim_threshold'] == 1 << 30)")
    assert _run(code, None).split() == ["True", "True"]
    assert _run("from multibox.runtime import keep_freed_memory as k; print(k())", "default").strip() == "None"


# ----------------------------------------------------------------------------------------------- runtimes
def test_registry_lists_the_builtin_runtimes_and_auto_order():
    from multibox.runtime import auto_runtimes, get_runtime, list_runtimes

    assert {"eager", "jit", "jit+channels_last", "channels_last", "onnxruntime"} <= set(list_runtimes())
    assert get_runtime("jit").name == "jit"
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'.*onnxruntime"):
        get_runtime("tensorrt")
    cpu = auto_runtimes("cpu")
    assert cpu[-1] == "eager" and cpu[-3:] == ["jit+channels_last", "jit", "eager"]
    assert cpu[0] == ("onnxruntime" if get_runtime("onnxruntime").available(__import__("torch").device("cpu"))
                      else "jit+channels_last")
    assert auto_runtimes("meta") == ["jit", "eager"]  # ONNX Runtime and channels_last are CPU choices


def test_importing_multibox_runtime_loads_no_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, multibox.runtime as r; r.keep_freed_memory; "
                          "print('torch' in sys.modules)"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _tiny_bundle():
    from test_detect import make_bundle

    return make_bundle()


def test_a_new_runtime_is_one_registration_and_is_checked_against_eager(monkeypatch):
    import torch

    from multibox.detector import Detector
    from multibox.models.outputs import TupleOutput
    from multibox.runtime import base
    from multibox.runtime.base import Runtime, register_runtime
    from test_detect import assert_same, photo

    class Doubled(Runtime):  # a broken runtime: outputs twice the logits
        name = "doubled"
        auto_rank = {"cpu": 100}

        def build(self, model, example):
            net = TupleOutput(model)
            return lambda x: tuple(t * 2 for t in net(x))

    class Plain(Runtime):
        name = "plain"

        def build(self, model, example):
            return TupleOutput(model)

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # registrations end with the test
    register_runtime(Doubled())
    register_runtime(Plain())
    with pytest.raises(ValueError, match="already registered"):
        register_runtime(Plain())
    img = photo()
    eager = Detector(_tiny_bundle(), runtime="eager")(img)
    det = Detector(_tiny_bundle(), runtime="plain")
    assert_same(det(img), eager)
    assert det.runtime_name == "plain"
    # asked for by name, a runtime whose outputs differ from eager mode is an error ...
    with pytest.raises(RuntimeError, match="doubled network gives other outputs"):
        Detector(_tiny_bundle(), runtime="doubled")(img)
    # ... under "auto" it is skipped with a warning (it ranks first on the CPU here)
    det = Detector(_tiny_bundle())
    with pytest.warns(UserWarning, match="doubled"):
        got = det(img)
    assert_same(got, eager)
    assert det.runtime_name not in ("doubled", "undecided")
    assert torch.get_num_threads() >= 1


def test_runtime_errors_are_clear():
    from multibox.detector import Detector

    with pytest.raises(ValueError, match="unknown runtime 'fast'"):
        Detector(_tiny_bundle(), runtime="fast")
    with pytest.raises(ValueError, match="CPU only"):
        Detector(_tiny_bundle(), runtime="onnxruntime", device="meta")
