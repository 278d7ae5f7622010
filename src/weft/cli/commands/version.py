"""``weft version``: this build's version (``--short``: the number alone).

The same as ``weft --version``; a command of its own so that images and scripts can run
``weft version`` as they run ``linkerd version --client``.
"""

from __future__ import annotations

import argparse
import platform

from weft import __version__


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("version", help="print the version", description=__doc__)
    p.add_argument("--short", action="store_true", help="the version number alone")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.short:
        print(__version__)
    else:
        print(f"weft {__version__} (Python {platform.python_version()})")
    return 0
