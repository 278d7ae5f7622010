"""``weft apply -f FILE|DIR``: create or update resources, all of them or none.

Every file is read and validated here first (errors name the file, the document with its line, and
the field path); then all documents go to the control plane in one request, which applies them all
or nothing (and checks what only it can: namespaces, cluster IPs). Prints kubectl's
``deployment.apps/web created|configured|unchanged``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from weft.cli.commands.get import add_control_args, call, client_for, ref_name
from weft.control.client import ApiError
from weft.resources.errors import FieldError, InvalidResources
from weft.resources.loader import Document, load_paths


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("apply", help="create or update resources from files", description=__doc__)
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE|DIR",
        help="a YAML/JSON file, a directory of them, or - for stdin (repeatable)",
    )
    add_control_args(p)
    p.set_defaults(func=run)


def print_errors(prog: str, errors: Sequence[FieldError]) -> None:
    n = len(errors)
    print(
        f"{prog}: {n} error{'s' if n != 1 else ''}; nothing was applied:",
        file=sys.stderr,
    )
    for e in errors:
        print(f"  {e}", file=sys.stderr)


def locate(details: Sequence[Any], docs: Sequence[Document]) -> list[FieldError]:
    """Server error details (index into the request) -> errors naming file, document and line."""
    out: list[FieldError] = []
    for raw in details:
        err = FieldError.from_json(raw)
        if err.document is not None and 0 <= err.document < len(docs):
            d = docs[err.document]
            err = FieldError(err.path, err.message, document=d.index, source=d.source, line=d.line)
        out.append(err)
    return out


def run(args: argparse.Namespace) -> int:
    try:
        docs = load_paths(args.filename)
    except InvalidResources as exc:
        print_errors("weft apply", exc.errors)
        return 1
    if not docs:
        print("weft apply: no documents found", file=sys.stderr)
        return 1
    client = client_for(args)
    payload: list[Mapping[str, Any]] = [d.data for d in docs]
    sources = sorted({d.source for d in docs})
    try:
        results = call("weft apply", client, client.apply_actions(payload, ", ".join(sources)))
    except ApiError as exc:
        if exc.details:
            print_errors("weft apply", locate(exc.details, docs))
        else:
            print(f"weft apply: {exc.message}", file=sys.stderr)
        return 1
    for action, obj in results:
        print(f"{ref_name(obj)} {action}")
    return 0
