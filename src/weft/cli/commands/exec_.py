"""``weft exec POD -- COMMAND [ARGS...]``: run a command inside a pod, as its app runs.

The command joins the pod's network namespace through ``ip netns exec`` (so its connections are
redirected to the pod's proxy and service names resolve from the pod's hosts file), with the
pod's base environment. Its exit status is the command's.
"""

from __future__ import annotations

import argparse
import os
import sys

from weft.cli.commands.up import add_state_arg, mesh_for
from weft.runtime.base import RuntimeFailure


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "exec",
        help="run a command inside a pod",
        description=__doc__,
        usage="weft exec [-n NAMESPACE] POD -- COMMAND [ARGS...]",
    )
    p.add_argument("pod", help="pod name")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    p.add_argument("-n", "--namespace", default=None, help="the pod's namespace")
    add_state_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("weft exec: nothing to run: weft exec POD -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("weft exec: needs root (it enters a network namespace): use sudo", file=sys.stderr)
        return 1
    mesh = mesh_for(args)
    try:
        ref, _ = mesh.find_pod(args.pod, args.namespace)
        return mesh.exec(ref, argv)
    except RuntimeFailure as exc:
        print(f"weft exec: {exc}", file=sys.stderr)
        return 1
