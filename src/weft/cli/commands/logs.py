"""``weft logs POD [-c proxy|app|CONTAINER] [-f]``: print a pod's container log.

``-c proxy`` is the sidecar (``weft-proxy``); ``-c app`` (the default) is the pod's first app
container. Logs live under ``<state dir>/pods/<namespace>/<pod>/``; ``-f`` follows until the pod is
gone or Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys

from weft.cli.commands.up import add_state_arg, mesh_for
from weft.runtime.base import RuntimeFailure


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("logs", help="print a pod's logs", description=__doc__)
    p.add_argument("pod", help="pod name")
    p.add_argument(
        "-c", "--container", default=None, help="proxy, app (default) or a container name"
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", "--namespace", default=None, help="the pod's namespace")
    add_state_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    mesh = mesh_for(args)
    try:
        ref, _ = mesh.find_pod(args.pod, args.namespace)
        return mesh.logs(ref, args.container, follow=args.follow, out=sys.stdout.buffer)
    except RuntimeFailure as exc:
        print(f"weft logs: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
