"""``weft stat deploy|svc|pod [NAME]``: golden metrics, as ``linkerd viz stat`` shows them.

Columns: NAME MESHED SUCCESS RPS LATENCY_P50 LATENCY_P95 LATENCY_P99 TCP_CONN (``-o wide`` adds
READ_BYTES/SEC WRITE_BYTES/SEC; ``-o json`` prints the rows), computed by the control plane from
the inbound metrics of the pods' proxies over ``--window`` (default 1m). ``-`` means no traffic.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from weft.cli.commands.get import add_control_args, api_error, call, client_for, print_table
from weft.control.client import ApiError

_KINDS = {
    "deploy": "deploy", "deployment": "deploy", "deployments": "deploy",
    "svc": "svc", "service": "svc", "services": "svc",
    "po": "pod", "pod": "pod", "pods": "pod",
}  # fmt: skip
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``1m``, ``1m30s``, ``2h``, ``500ms`` -> seconds (> 0). ValueError else."""
    raw = text.strip()
    try:
        value = float(raw)
    except ValueError:
        pos, value = 0, 0.0
        for m in _DURATION.finditer(raw):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(raw) or not raw:
            raise ValueError(
                f"invalid duration {text!r}: expected e.g. 30s, 1m, 1m30s, 2h"
            ) from None
    if not value > 0:
        raise ValueError(f"invalid duration {text!r}: must be positive")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "stat", help="golden metrics: success rate, RPS, latencies", description=__doc__
    )
    p.add_argument("kind", help="deploy, svc or pod")
    p.add_argument("name", nargs="?", help="one resource by name")
    p.add_argument("-n", "--namespace", default=None, help="namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument("-t", "--window", default="1m", help="time window, e.g. 30s, 1m, 10m (1m)")
    p.add_argument("-o", "--output", choices=["wide", "json"], default=None)
    add_control_args(p)
    p.set_defaults(func=run)


def fmt_latency(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1:
        return f"{ms:.1f}ms".replace(".0ms", "ms")
    return f"{int(ms + 0.5)}ms"


def fmt_row(row: Mapping[str, Any], wide: bool = False) -> list[str]:
    """One table row in Linkerd's format: ``web 1/1 96.67% 2.0rps 2ms 3ms 5ms 1``."""
    success = row.get("success")
    rps = row.get("rps")
    conns = row.get("tcp_open_connections")
    cells = [
        str(row.get("name", "")),
        str(row.get("meshed", "-")),
        "-" if success is None else f"{success * 100:.2f}%",
        "-" if rps is None else f"{rps:.1f}rps",
        fmt_latency(row.get("latency_ms_p50")),
        fmt_latency(row.get("latency_ms_p95")),
        fmt_latency(row.get("latency_ms_p99")),
        "-" if conns is None else str(conns),
    ]
    if wide:
        for key in ("tcp_read_bytes_rate", "tcp_write_bytes_rate"):
            v = row.get(key)
            cells.append("-" if v is None else f"{v:.1f}B/s")
    return cells


COLUMNS = ["NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99",
           "TCP_CONN"]  # fmt: skip
WIDE_COLUMNS = ["READ_BYTES/SEC", "WRITE_BYTES/SEC"]


def table(
    rows: Sequence[Mapping[str, Any]], *, wide: bool, namespaces: bool
) -> tuple[list[str], list[list[str]]]:
    columns = COLUMNS + (WIDE_COLUMNS if wide else [])
    cells = [fmt_row(r, wide) for r in rows]
    if namespaces:
        columns = ["NAMESPACE", *columns]
        cells = [[str(r.get("namespace", "")), *c] for r, c in zip(rows, cells, strict=True)]
    return columns, cells


def run(args: argparse.Namespace) -> int:
    kind = _KINDS.get(args.kind.lower())
    if kind is None:
        print(f"weft stat: kind must be deploy, svc or pod, got {args.kind!r}", file=sys.stderr)
        return 2
    try:
        window = parse_duration(args.window)
    except ValueError as exc:
        print(f"weft stat: --window: {exc}", file=sys.stderr)
        return 2
    namespace = None if args.all_namespaces else (args.namespace or "default")
    client = client_for(args)
    try:
        rows = call("weft stat", client, client.stat(kind, args.name, namespace, window))
    except ApiError as exc:
        print(api_error("weft stat", exc), file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        if args.name:
            print(
                f"weft stat: {kind} {args.name!r} not found in namespace {namespace}",
                file=sys.stderr,
            )
            return 1
        print("No resources found.", file=sys.stderr)
        return 0
    columns, cells = table(rows, wide=args.output == "wide", namespaces=namespace is None)
    print_table(columns, cells)
    return 0
