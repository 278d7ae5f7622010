"""``weft edges deploy|pod``: which connections between workloads are mutual TLS.

As ``linkerd viz edges``: one row per (source, destination) with traffic in ``--window`` (default
1m), HTTP and opaque TCP alike. Columns SRC DST SRC_NS DST_NS SECURED (``√`` when all of the
edge's traffic was mutual TLS, ``✗`` otherwise); ``-o wide`` adds CLIENT_ID (the source's
identity) and SERVER_ID (the identity the source's proxy verified); a MSG column says why an edge
is not secured. ``-o json`` prints the rows. Computed by the control plane from the outbound
metrics of the source pods' proxies.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from weft.cli.commands.get import add_control_args, api_error, call, client_for, print_table
from weft.cli.commands.stat import parse_duration
from weft.control.client import ApiError

_KINDS = {
    "deploy": "deploy", "deployment": "deploy", "deployments": "deploy",
    "po": "pod", "pod": "pod", "pods": "pod",
}  # fmt: skip
SECURED = "√"
NOT_SECURED = "✗"
COLUMNS = ["SRC", "DST", "SRC_NS", "DST_NS", "SECURED"]
WIDE_COLUMNS = ["CLIENT_ID", "SERVER_ID"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "edges", help="connections between workloads and whether they are mutual TLS",
        description=__doc__,
    )  # fmt: skip
    p.add_argument("kind", help="deploy or pod")
    p.add_argument("-n", "--namespace", default=None, help="namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument("-t", "--window", default="1m", help="time window, e.g. 30s, 1m, 10m (1m)")
    p.add_argument("-o", "--output", choices=["wide", "json"], default=None)
    add_control_args(p)
    p.set_defaults(func=run)


def message(row: Mapping[str, Any]) -> str:
    """Why an edge is not secured (empty when it is)."""
    if row.get("secured"):
        return ""
    reasons = row.get("reasons") or []
    return "; ".join(str(r) for r in reasons) or "not mutual TLS"


def table(rows: Sequence[Mapping[str, Any]], *, wide: bool) -> tuple[list[str], list[list[str]]]:
    """Columns and cells; MSG only when some edge is not secured."""
    columns = COLUMNS + (WIDE_COLUMNS if wide else [])
    with_msg = any(not r.get("secured") for r in rows)
    if with_msg:
        columns = [*columns, "MSG"]
    cells = []
    for r in rows:
        row = [
            str(r.get("src", "")),
            str(r.get("dst", "")),
            str(r.get("src_namespace", "")),
            str(r.get("dst_namespace", "")),
            SECURED if r.get("secured") else NOT_SECURED,
        ]
        if wide:
            row += [str(r.get("client_id") or "-"), str(r.get("server_id") or "-")]
        if with_msg:
            row.append(message(r))
        cells.append(row)
    return columns, cells


def run(args: argparse.Namespace) -> int:
    kind = _KINDS.get(args.kind.lower())
    if kind is None:
        print(f"weft edges: kind must be deploy or pod, got {args.kind!r}", file=sys.stderr)
        return 2
    try:
        window = parse_duration(args.window)
    except ValueError as exc:
        print(f"weft edges: --window: {exc}", file=sys.stderr)
        return 2
    query = {"kind": kind, "window": f"{window:g}"}
    if not args.all_namespaces:
        query["namespace"] = args.namespace or "default"
    client = client_for(args)
    try:
        data = call("weft edges", client, client.call("GET", "/api/v1/edges?" + urlencode(query)))
    except ApiError as exc:
        print(api_error("weft edges", exc), file=sys.stderr)
        return 1
    rows = data.get("rows", []) if isinstance(data, dict) else []
    if args.output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No edges found.", file=sys.stderr)
        return 0
    columns, cells = table(rows, wide=args.output == "wide")
    print_table(columns, cells)
    return 0
