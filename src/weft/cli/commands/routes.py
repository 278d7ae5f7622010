"""``weft routes SVC``: per-route golden metrics of a service, as ``linkerd viz routes`` shows them.

Columns: ROUTE SERVICE SUCCESS RPS LATENCY_P50 LATENCY_P95 LATENCY_P99, one row per HTTPRoute
attached to the service and ``[default]`` for requests no route handled. SUCCESS and RPS are
EFFECTIVE (what clients saw: one per request, retries hidden); ``-o wide`` adds EFFECTIVE_SUCCESS
EFFECTIVE_RPS ACTUAL_SUCCESS ACTUAL_RPS (ACTUAL: what the servers saw, every attempt, retries
included); ``-o json`` prints the rows. Computed by the control plane from the outbound route
metrics of the clients' proxies over ``--window`` (default 1m). ``-`` means no traffic.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from weft.cli.commands.get import add_control_args, api_error, call, client_for, print_table
from weft.cli.commands.stat import fmt_latency, parse_duration
from weft.control.client import ApiError

COLUMNS = ["ROUTE", "SERVICE", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"]
WIDE_COLUMNS = ["EFFECTIVE_SUCCESS", "EFFECTIVE_RPS", "ACTUAL_SUCCESS", "ACTUAL_RPS"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "routes",
        help="per-route success rate, RPS and latencies of a service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("service", help="the Service whose routes to show")
    p.add_argument("-n", "--namespace", default=None, help="namespace (default: default)")
    p.add_argument("-t", "--window", default="1m", help="time window, e.g. 30s, 1m, 10m (1m)")
    p.add_argument("-o", "--output", choices=["wide", "json"], default=None)
    add_control_args(p)
    p.set_defaults(func=run)


def _percent(value: Any) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _rps(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}rps"


def route_name(route: str) -> str:
    """``shop/web-api`` -> ``web-api`` (routes are in the service's namespace); ``default`` ->
    ``[default]``."""
    if route == "default":
        return "[default]"
    return route.rpartition("/")[2]


def fmt_row(row: Mapping[str, Any], wide: bool = False) -> list[str]:
    """``web-api web 99.50% 20.0rps 2ms 5ms 9ms`` (+ effective and actual columns when wide)."""
    cells = [
        route_name(str(row.get("route", ""))),
        str(row.get("service", "")),
        _percent(row.get("success")),
        _rps(row.get("rps")),
        fmt_latency(row.get("latency_ms_p50")),
        fmt_latency(row.get("latency_ms_p95")),
        fmt_latency(row.get("latency_ms_p99")),
    ]
    if wide:
        cells += [
            _percent(row.get("success")),
            _rps(row.get("rps")),
            _percent(row.get("actual_success")),
            _rps(row.get("actual_rps")),
        ]
    return cells


def table(rows: Sequence[Mapping[str, Any]], *, wide: bool) -> tuple[list[str], list[list[str]]]:
    return COLUMNS + (WIDE_COLUMNS if wide else []), [fmt_row(r, wide) for r in rows]


def run(args: argparse.Namespace) -> int:
    try:
        window = parse_duration(args.window)
    except ValueError as exc:
        print(f"weft routes: --window: {exc}", file=sys.stderr)
        return 2
    namespace = args.namespace or "default"
    client = client_for(args)
    try:
        rows = call("weft routes", client, client.routes(args.service, namespace, window))
    except ApiError as exc:
        print(api_error("weft routes", exc), file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    columns, cells = table(rows, wide=args.output == "wide")
    print_table(columns, cells)
    return 0
