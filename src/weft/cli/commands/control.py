"""``weft control``: run the control plane (store, API, destinations, metrics aggregation).

Listens on ``<state dir>/control.sock`` (and ``--http-listen``, default 127.0.0.1:8086; empty to
disable), persists the store in ``<state dir>/store.json``, scrapes the proxies' metrics every
``--scrape-interval``. ``weft up`` starts it inside the node network namespace; it stops on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import os
import sys

from weft.addr import Address, parse_hostport
from weft.cli.commands.stat import parse_duration
from weft.control.client import DEFAULT_STATE_DIR


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("control", help="run the control plane", description=__doc__)
    p.add_argument(
        "--state-dir",
        default=os.environ.get("WEFT_STATE_DIR", DEFAULT_STATE_DIR),
        help="where the socket and the store live (default: $WEFT_STATE_DIR or /run/weft)",
    )
    p.add_argument("--service-cidr", default="10.96.0.0/16", help="service virtual IP range")
    p.add_argument(
        "--pod-cidr",
        default="10.244.0.0/16",
        help="pod range: proxies' metrics are only scraped there (and on loopback)",
    )
    p.add_argument("--scrape-interval", default="2s", help="metrics scrape interval (2s)")
    p.add_argument(
        "--http-listen",
        default="127.0.0.1:8086",
        metavar="ADDR",
        help="also serve the API on this TCP address ('' to disable)",
    )
    p.add_argument("--log-level", default=os.environ.get("WEFT_LOG", "info"))
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weft import logs
    from weft.control.server import ControlConfig, serve

    try:
        logs.configure(args.log_level, args.log_format)
        listen: Address | None = None
        if args.http_listen:
            listen = parse_hostport(args.http_listen, default_host="127.0.0.1")
        interval = parse_duration(args.scrape_interval)
        config = ControlConfig(
            state_dir=args.state_dir,
            service_cidr=args.service_cidr,
            pod_cidr=args.pod_cidr,
            scrape_interval=interval,
            scrape_timeout=min(interval, 1.5),
            http_listen=listen,
        )
    except ValueError as exc:
        print(f"weft control: {exc}", file=sys.stderr)
        return 2
    import uvloop

    try:
        uvloop.run(serve(config))
    except OSError as exc:
        print(f"weft control: {exc}", file=sys.stderr)
        return 1
    return 0
