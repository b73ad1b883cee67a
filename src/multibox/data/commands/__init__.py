"""``multibox data ...`` sub-commands, one module each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["format_argument"]


def format_argument(writable: bool = False) -> Callable[[str], str]:
    """An argparse ``type`` accepting a registered dataset format name (only writable ones with ``writable``).

    The registry is read when the option is parsed, not when the parser is built, so that the command line
    starts without importing the format modules."""
    def parse(text: str) -> str:
        # heavy: importing the registry imports the datasets package and every format (numpy, PIL); keeps
        # 'multibox --help' at ~0.1 s
        from ..datasets.registry import format_names

        names = format_names(writable)
        if text not in names:
            kind = "writable format" if writable else "format"
            raise argparse.ArgumentTypeError(f"unknown {kind} {text!r} (one of {', '.join(names)}; see "
                                             "`multibox data formats`)")
        return text

    parse.__name__ = "format"
    return parse
