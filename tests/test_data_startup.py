"""Start-up cost of the ``multibox data`` command modules: building their parsers must not load the formats."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from multibox.data.commands import format_argument

SRC = Path(__file__).resolve().parents[1] / "src"


def test_data_command_parsers_do_not_import_dataset_formats():
    # `multibox --help` imports every command module; the data commands' --format options read the format
    # registry only when parsed, so numpy, PIL and the format modules must stay unloaded.
    code = (
        "import sys\n"
        "import multibox.data.commands.check, multibox.data.commands.convert, multibox.data.commands.pack\n"
        "import multibox.data.commands.formats, multibox.data.commands.synth\n"
        "heavy = [m for m in ('numpy', 'PIL', 'torch', 'multibox.data.datasets') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_format_option_still_checks_the_registry():
    parse = format_argument()
    assert parse("voc") == "voc"
    assert format_argument(writable=True)("coco") == "coco"
    with pytest.raises(argparse.ArgumentTypeError, match="unknown writable format 'shards'"):
        format_argument(writable=True)("shards")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown format 'nope'"):
        parse("nope")


def test_multibox_help_loads_no_numpy_or_torch():
    # `multibox --help` imports every command module; none may load numpy or torch at import time (start-up
    # stays near 0.1 s; `multibox eval` once imported the metrics registry, and with it numpy, at module top).
    code = (
        "import sys\n"
        "from multibox.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('numpy', 'PIL', 'torch') if m in sys.modules]\n"
        "print(','.join(heavy), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stderr.strip() == ""
