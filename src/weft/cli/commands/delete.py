"""``weft delete -f FILE|DIR`` or ``weft delete KIND NAME...``: remove resources.

Deleting a Deployment makes the local runtime drain and remove its pods; deleting a Namespace
removes everything in it. Absent resources are an error (exit 1) unless ``--ignore-not-found``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from weft.cli.commands.apply import print_errors
from weft.cli.commands.get import add_control_args, api_error, call, client_for, kind_arg, ref_name
from weft.control.client import ApiError
from weft.resources.errors import InvalidResources
from weft.resources.loader import load_paths


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("delete", help="delete resources", description=__doc__)
    p.add_argument("kind", nargs="?", help="kind, when deleting by name")
    p.add_argument("names", nargs="*", help="names, when deleting by name")
    p.add_argument("-f", "--filename", action="append", metavar="FILE|DIR", help="(repeatable)")
    p.add_argument("-n", "--namespace", default=None, help="namespace (default: default)")
    p.add_argument("--ignore-not-found", action="store_true", help="absent resources are fine")
    add_control_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    refs: list[dict[str, Any]] = []
    if args.filename:
        if args.kind:
            print("weft delete: give either -f or KIND NAME, not both", file=sys.stderr)
            return 2
        try:
            docs = load_paths(args.filename)
        except InvalidResources as exc:
            print_errors("weft delete", exc.errors)
            return 1
        for d in docs:
            meta: dict[str, Any] = {"name": d.resource.metadata.name}
            if d.resource.metadata.namespace:
                meta["namespace"] = args.namespace or d.resource.metadata.namespace
            refs.append({"kind": d.kind, "metadata": meta})
    elif args.kind and args.names:
        info = kind_arg("weft delete", args.kind)
        for name in args.names:
            meta = {"name": name}
            if info.namespaced:
                meta["namespace"] = args.namespace or "default"
            refs.append({"kind": info.kind, "metadata": meta})
    else:
        print("weft delete: give -f FILE|DIR or KIND NAME...", file=sys.stderr)
        return 2
    client = client_for(args)
    try:
        results = call("weft delete", client, client.delete_actions(refs))
    except ApiError as exc:
        print(api_error("weft delete", exc), file=sys.stderr)
        return 1
    missing = 0
    for action, obj in results:
        if action == "deleted":
            print(f"{ref_name(obj)} deleted")
        elif not args.ignore_not_found:
            missing += 1
            print(f"weft delete: {ref_name(obj)} not found", file=sys.stderr)
    return 1 if missing else 0
