"""``multibox import FORMAT ...``: convert a pretrained SSD of another framework into a detector bundle.

The formats come from the importers registry (:mod:`multibox.interop.registry`): each importer module registers
its name, help, arguments and run function (``caffe``: :mod:`multibox.interop.caffe`, ``tf-od``:
:mod:`multibox.interop.tensorflow`). ``multibox import --list [--json FILE]`` lists them;
``multibox import FORMAT --help`` shows a format's arguments.

Every importer writes ``DIR/<name>.safetensors`` (load it with :func:`multibox.interop.bundle.load_bundle`) and a
JSON report ``DIR/<name>.json``. The importer modules (torch, protobuf) are imported only when a format runs, so
``multibox --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..interop.registry import IMPORTER_MODULES, get_importer, list_importers, parse_classes, parse_floats
from .options import (
    UsageError,
    add_json_option,
    add_overwrite_option,
    check_output_file,
    quiet_output,
    write_json_output,
)

__all__ = ["register", "run", "parse_floats", "parse_classes"]


def _print_summary(path: Path) -> None:
    report = path.with_suffix(".json")
    print(f"wrote {path}")
    if report.is_file():
        info = json.loads(report.read_text())
        priors = info.get("num_priors")
        classes = info.get("class_names")
        print(f"wrote {report}" + (f": {priors} priors" if priors is not None else "")
              + (f", classes {classes}" if classes else ""))


def _list(args: argparse.Namespace) -> int:
    if args.json:
        check_output_file(args.json, "--json")
    rows = [get_importer(n).to_json() for n in list_importers()]
    if args.json != "-":
        w = max([len("format"), *(len(r["name"]) for r in rows)])
        print(f"{'format':<{w}}  {'builders':<10}  description")
        for r in rows:
            print(f"{r['name']:<{w}}  {','.join(r['builders']) or '-':<10}  {r['help']}")
    if args.json:
        write_json_output(args.json, rows)
    return 0


def run(args: argparse.Namespace) -> int:
    """``multibox import --list`` or ``multibox import FORMAT ARGS...`` (the format's own parser reads ARGS)."""
    if args.list:
        return _list(args)
    if not args.format:
        raise ValueError(f"give a FORMAT ({', '.join(IMPORTER_MODULES)}) or --list")
    if args.json:
        raise ValueError("--json goes with --list")
    importer = get_importer(args.format)
    parser = argparse.ArgumentParser(prog=f"multibox import {importer.name}", description=importer.description)
    importer.add_arguments(parser)
    add_overwrite_option(parser, "an existing bundle OUT/NAME.safetensors (and its report)")
    add_json_option(parser, "the conversion report")
    parser.add_argument("-q", "--quiet", action="store_true", help="no informational lines")
    format_args = parser.parse_args(args.args)
    if format_args.json:
        check_output_file(format_args.json, "--json")
    target = _target(importer, format_args)
    if target is not None and target.exists() and not format_args.overwrite:
        raise UsageError(f"{target} exists; pass --overwrite to replace it")
    with quiet_output(format_args):
        path = importer.run(format_args)
        _print_summary(Path(path))
    if format_args.json:
        report = Path(path).with_suffix(".json")
        write_json_output(format_args.json, json.loads(report.read_text()) if report.is_file() else
                          {"bundle": str(path)})
    return 0


def _target(importer: Any, args: argparse.Namespace) -> Path | None:  # noqa: ANN401
    """``OUT/<name>.safetensors`` the importer will write (``None`` where it does not say)."""
    out, source = getattr(args, "out", None), getattr(args, importer.source_arg, None) if importer.source_arg else None
    if out is None or (source is None and not getattr(args, "name", None)):
        return None
    return Path(out) / f"{getattr(args, 'name', None) or Path(source).stem}.safetensors"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``import`` parser: ``FORMAT`` and its arguments, or ``--list``."""
    formats = ", ".join(IMPORTER_MODULES)
    p = subparsers.add_parser(
        "import", help="convert a pretrained SSD (Caffe, TF OD API, torchvision, Keras, TF-Slim) into a bundle",
        description="Convert another framework's pretrained SSD into a multibox detector bundle (.safetensors, "
                    "plus a JSON report). Neither Caffe nor TensorFlow nor Keras is needed. "
                    f"Formats: {formats} (--list shows every registered one; `multibox import FORMAT --help` its "
                    "arguments). See docs/importers.md.")
    p.add_argument("--list", action="store_true", help="list the registered import formats and exit")
    add_json_option(p, "the --list table")
    p.add_argument("format", nargs="?", metavar="FORMAT", help=f"the source format: {formats}, ...")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="the format's arguments (see `multibox import FORMAT --help`)")
    p.set_defaults(func=run)
