"""Entry point of the ``weft`` command: builds the parser from :mod:`weft.cli.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from weft import __version__
from weft.cli import commands


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``only``) just one command's: a sidecar should not pay in memory and
    start-up time for the modules of every other command."""
    parser = argparse.ArgumentParser(prog="weft", description="Weft service mesh")
    parser.add_argument("--version", action="version", version=f"weft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__))
    if only is not None:
        names = [n for n in names if n.rstrip("_") == only]
    for name in names:
        module = importlib.import_module(f"{commands.__name__}.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argv[0] if argv else None
    only = first if first in _FAST_COMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130


# commands started often or kept running in every pod, parsed without loading the others
_FAST_COMMANDS = frozenset({"proxy", "control", "node"})


if __name__ == "__main__":
    raise SystemExit(main())
