"""``weft down``: stop the local mesh and remove everything it created.

Stops the node agent (which stops supervising the control plane, then drains its pods: SIGTERM,
grace period), then the control plane (which nothing restarts any more), then removes whatever
is left: processes, network namespaces (and with them links, the bridge and the
pods' iptables rules), ``/etc/netns/weft-*``, the host's blackhole routes, the state directory.
Also works after a crash, and when nothing is running (then it only cleans).
"""

from __future__ import annotations

import argparse
import os
import sys

from weft.cli.commands.up import add_state_arg, local_mesh_for
from weft.runtime.base import RuntimeFailure


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "down", help="stop the local mesh and remove all it created", description=__doc__
    )
    add_state_arg(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds pods get to drain before they are killed (30)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("weft down: needs root (it removes network namespaces): use sudo", file=sys.stderr)
        return 1
    mesh = local_mesh_for(args)
    try:
        removed = mesh.down(timeout=args.timeout)
    except RuntimeFailure as exc:
        print(f"weft down: {exc}", file=sys.stderr)
        return 1
    if removed:
        print("mesh down: removed " + ", ".join(_summary(removed)))
    else:
        print("nothing to remove: no mesh on this host")
    return 0


def _summary(removed: list[str]) -> list[str]:
    netns = [r for r in removed if r.startswith("netns ")]
    others = [r for r in removed if not r.startswith("netns ") and not r.startswith("/etc/netns")]
    out = list(others)
    if netns:
        out.append(f"{len(netns)} network namespaces")
    return out
