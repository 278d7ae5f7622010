"""``weft proxy``: run the sidecar proxy. Every flag also reads ``WEFT_PROXY_<FLAG>``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from weft.addr import Address, parse_hostport
from weft.control.client import ControlClient
from weft.control.follow import ControlStreams
from weft.discovery import Discovery
from weft.proxy.config import DEFAULT_OPAQUE_PORTS, ProxyConfig


def _env(flag: str, default: Any) -> Any:
    return os.environ.get("WEFT_PROXY_" + flag.upper().replace("-", "_"), default)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("proxy", help="run the sidecar proxy", description=__doc__)
    p.add_argument(
        "--outbound", default=_env("outbound", "127.0.0.1:4140"), help="outbound listener"
    )
    p.add_argument(
        "--inbound",
        default=_env("inbound", "0.0.0.0:4143"),
        help="inbound listener ('' to disable)",
    )
    p.add_argument(
        "--admin", default=_env("admin", "0.0.0.0:4191"), help="admin listener ('' to disable)"
    )
    p.add_argument(
        "--outbound-target",
        default=_env("outbound-target", None),
        help="target of outbound connections that were not redirected",
    )
    p.add_argument(
        "--inbound-target",
        default=_env("inbound-target", None),
        help="the app, for inbound connections that were not redirected",
    )
    p.add_argument(
        "--discovery-file",
        default=_env("discovery-file", None),
        help="static discovery: a YAML file, watched for changes",
    )
    p.add_argument(
        "--control",
        default=_env("control", None),
        help="the control plane's API: unix:PATH, http://HOST:PORT or https://HOST:PORT",
    )
    p.add_argument(
        "--control-identity",
        default=_env("control-identity", None),
        help="https: the identity the control plane's certificate must name",
    )
    p.add_argument(
        "--control-trust-anchors",
        default=_env("control-trust-anchors", None),
        help="https: the trust anchors to verify it with: PEM text or a file",
    )
    p.add_argument(
        "--opaque-ports",
        default=_env("opaque-ports", ",".join(map(str, sorted(DEFAULT_OPAQUE_PORTS)))),
        help="comma-separated ports relayed as TCP with no detection",
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="this workload's labels (pod, namespace, deployment, serviceaccount)",
    )
    p.add_argument(
        "--response-timeout",
        type=float,
        default=_env("response-timeout", None),
        help="seconds to wait for a response's headers before 504 (default: none)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=float(_env("shutdown-grace", 30.0)),
        help="seconds in-flight requests get to finish on shutdown",
    )
    p.add_argument(
        "--identity-token-file",
        default=_env("identity-token-file", None),
        help="this pod's token: with --control, certify an identity and speak mutual TLS",
    )
    p.add_argument(
        "--trust-domain", default=_env("trust-domain", "cluster.local"), help="identity domain"
    )
    p.add_argument(
        "--identity-cert",
        default=_env("identity-cert", None),
        help="an identity from files instead: certificate chain (PEM)",
    )
    p.add_argument(
        "--identity-key", default=_env("identity-key", None), help="its private key (PEM)"
    )
    p.add_argument(
        "--trust-anchors", default=_env("trust-anchors", None), help="trust anchors (PEM bundle)"
    )
    p.add_argument(
        "--default-inbound-policy",
        default=_env("default-inbound-policy", "all-unauthenticated"),
        help="inbound policy until the control plane's arrives (or without one)",
    )
    p.add_argument(
        "--cluster-networks",
        default=_env("cluster-networks", ""),
        help="comma-separated CIDRs the cluster-* default policies trust",
    )
    p.add_argument("--log-level", default=_env("log-level", os.environ.get("WEFT_LOG", "info")))
    p.add_argument("--log-format", default=_env("log-format", "text"), choices=["text", "json"])
    p.add_argument(
        "--access-log", default=_env("access-log", None), help="'-' for stdout, or a file"
    )
    p.set_defaults(func=run)  # fmt: skip


def _addr(text: str | None, what: str) -> Address | None:
    if text is None or text == "":
        return None
    try:
        return parse_hostport(text, default_host="0.0.0.0")
    except ValueError as exc:
        raise SystemExit(f"weft proxy: --{what}: {exc}") from None


def build_config(args: argparse.Namespace) -> ProxyConfig:
    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"weft proxy: --label {item!r}: expected KEY=VALUE")
        labels[key] = value
    try:
        ports = frozenset(int(p) for p in str(args.opaque_ports).split(",") if p.strip())
    except ValueError:
        raise SystemExit(
            f"weft proxy: --opaque-ports {args.opaque_ports!r}: not a list of ports"
        ) from None
    outbound = _addr(args.outbound, "outbound")
    if outbound is None:
        raise SystemExit("weft proxy: --outbound is required")
    try:
        return ProxyConfig(
            outbound=outbound,
            inbound=_addr(args.inbound, "inbound"),
            admin=_addr(args.admin, "admin"),
            outbound_target=_addr(args.outbound_target, "outbound-target"),
            inbound_target=_addr(args.inbound_target, "inbound-target"),
            discovery_file=args.discovery_file,
            control=args.control,
            control_identity=args.control_identity or None,
            control_trust_anchors=args.control_trust_anchors or None,
            opaque_ports=ports,
            labels=labels,
            response_timeout=None
            if args.response_timeout is None
            else float(args.response_timeout),
            shutdown_grace=args.shutdown_grace,
            log_level=args.log_level,
            log_format=args.log_format,
            access_log=args.access_log,
            identity_token_file=args.identity_token_file or None,
            trust_domain=args.trust_domain,
            identity_cert=args.identity_cert or None,
            identity_key=args.identity_key or None,
            trust_anchors=args.trust_anchors or None,
            default_inbound_policy=args.default_inbound_policy,
            cluster_networks=tuple(
                c.strip() for c in str(args.cluster_networks).split(",") if c.strip()
            ),
        )
    except ValueError as exc:
        raise SystemExit(f"weft proxy: {exc}") from None


async def make_discovery(
    config: ProxyConfig, streams: ControlStreams | None = None, control: ControlClient | None = None
) -> Discovery | None:
    if config.discovery_file:
        from weft.proxy.static_discovery import StaticDiscovery

        return StaticDiscovery(config.discovery_file)
    if config.control:
        from weft.proxy.control_discovery import ControlDiscovery

        return ControlDiscovery(
            control or config.control, namespace=config.labels.get("namespace"), streams=streams
        )
    return None


def run(args: argparse.Namespace) -> int:
    from weft import logs
    from weft.proxy.server import run as run_proxy

    config = build_config(args)
    try:
        logs.configure(config.log_level, config.log_format, config.access_log)
    except ValueError as exc:
        print(f"weft proxy: {exc}", file=sys.stderr)
        return 2
    import uvloop

    try:
        return uvloop.run(
            run_proxy(config, lambda streams, control: make_discovery(config, streams, control))
        )
    except OSError as exc:
        print(f"weft proxy: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # e.g. an invalid discovery file at start
        print(f"weft proxy: {exc}", file=sys.stderr)
        return 1
