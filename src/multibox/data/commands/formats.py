"""``multibox data formats``: the registered dataset formats (what ``--format``/``--from``/``--to`` take)."""

from __future__ import annotations

import argparse

from ...commands.options import add_json_option, check_output_file, write_json_output

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``formats`` parser."""
    p = subparsers.add_parser(
        "formats", help="list the dataset formats (read, write, detect)",
        description="List every registered dataset format: its name (what --format, --from and --to take), "
                    "whether `data convert --to` can write it, whether it is recognized from its files, and "
                    "what its files look like.")
    add_json_option(p, "the list")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the table (and the JSON list with ``--json``)."""
    # heavy: the datasets package imports every format (numpy, PIL); keeps 'multibox --help' at ~0.1 s
    from ..datasets import list_formats

    if args.json:
        check_output_file(args.json, "--json")
    rows = [f.to_dict() for f in list_formats()]
    if args.json != "-":
        w = max(len("name"), *(len(r["name"]) for r in rows))
        print(f"{'name':<{w}} {'read':>4} {'write':>5} {'detect':>6}  description")
        for r in rows:
            yes = {True: "yes", False: "-"}
            print(f"{r['name']:<{w}} {yes[r['readable']]:>4} {yes[r['writable']]:>5} {yes[r['detectable']]:>6}  "
                  f"{r['description']}")
    if args.json:
        write_json_output(args.json, rows)
    return 0
