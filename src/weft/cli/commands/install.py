"""``weft install --crds``: print Weft's CustomResourceDefinitions for ``kubectl apply -f -``.

The output is deterministic. The control plane's own manifests are not printed by this version:
without ``--crds`` the command says so and exits 1, rather than print something partial.
"""

from __future__ import annotations

import argparse
import sys

from weft import __version__
from weft.install import render
from weft.install.crds import crds


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "install",
        help="print manifests to install Weft on a cluster (kubectl apply -f -)",
        description=__doc__,
    )
    p.add_argument("--crds", action="store_true", help="print Weft's CRDs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.crds:
        print(
            "weft install: this version prints the CRDs only: weft install --crds | "
            "kubectl apply -f -",
            file=sys.stderr,
        )
        return 1
    header = f"Weft {__version__}: CustomResourceDefinitions (weft install --crds)"
    sys.stdout.write(render(crds(), header=header))
    return 0
