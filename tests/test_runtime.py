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
