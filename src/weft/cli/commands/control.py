"""``weft control``: run the control plane (store, API, destinations, metrics aggregation).

Listens on ``<state dir>/control.sock`` (and ``--http-listen``, default 127.0.0.1:8086; empty to
disable), persists the store in ``<state dir>/store.db``, scrapes the proxies' metrics every
``--scrape-interval``. ``weft up`` starts it inside the node network namespace; it stops on
SIGTERM/SIGINT.

Identity: the CA lives in ``<state dir>/identity`` (generated at first start), or comes from
``--trust-anchors``, ``--issuer-cert`` and ``--issuer-key`` (all three: the user's own CA; read at
every start, and kept with any rotation made since when the files have not changed). Leaves last
``--leaf-lifetime`` (24h) and name identities in ``--trust-domain`` (cluster.local).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from weft.addr import Address, parse_hostport
from weft.cli.commands.stat import parse_duration
from weft.control.client import DEFAULT_STATE_DIR
from weft.identity.names import DEFAULT_TRUST_DOMAIN

if TYPE_CHECKING:
    from weft.control.identity import IdentitySettings


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
    p.add_argument(
        "--trust-domain",
        default=DEFAULT_TRUST_DOMAIN,
        help=f"the identities' trust domain ({DEFAULT_TRUST_DOMAIN})",
    )
    p.add_argument(
        "--trust-anchors", metavar="FILE", help="your own CA: trust anchors (PEM bundle)"
    )
    p.add_argument("--issuer-cert", metavar="FILE", help="your own CA: issuer certificate (PEM)")
    p.add_argument("--issuer-key", metavar="FILE", help="your own CA: issuer private key (PEM)")
    p.add_argument("--leaf-lifetime", default="24h", help="proxies' certificate lifetime (24h)")
    p.add_argument(
        "--default-inbound-policy",
        default="all-unauthenticated",
        help="mesh-wide default inbound policy (all-unauthenticated)",
    )
    p.add_argument(
        "--cluster-networks",
        default="",
        help="comma-separated CIDRs cluster-* policies trust (default: the pod network)",
    )
    p.add_argument(
        "--kubeconfig",
        default=None,
        help="read a Kubernetes cluster instead of keeping a store: a kubeconfig file, or "
        "'in-cluster' (the pod's service account); resources are then managed with kubectl",
    )
    p.add_argument("--context", default=None, help="the kubeconfig's context (its current one)")
    p.add_argument(
        "--leader-elect",
        action="store_true",
        help="with --kubeconfig: run as one of several replicas; only the one holding the "
        "Lease weft-control (in $WEFT_POD_NAMESPACE) writes statuses",
    )
    p.add_argument(
        "--http-tls",
        action="store_true",
        help="with --kubeconfig: serve --http-listen over TLS as this control plane's mesh "
        "identity (the service account $WEFT_POD_SERVICE_ACCOUNT in $WEFT_POD_NAMESPACE), which "
        "proxies verify against their trust anchors",
    )
    p.add_argument("--log-level", default=os.environ.get("WEFT_LOG", "info"))
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weft import logs
    from weft.control.config import ControlConfig
    from weft.control.server import serve

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
            identity=identity_settings(args),  # bad identity flags fail here, before start
            default_inbound_policy=args.default_inbound_policy,
            cluster_networks=tuple(
                c.strip() for c in str(args.cluster_networks).split(",") if c.strip()
            ),
            kubeconfig=args.kubeconfig,
            kube_context=args.context,
            leader_elect=args.leader_elect,
            http_tls=args.http_tls,
            tls_namespace=os.environ.get("WEFT_POD_NAMESPACE") or "weft-system",
            tls_service_account=os.environ.get("WEFT_POD_SERVICE_ACCOUNT") or "weft-control",
        )
    except ValueError as exc:
        print(f"weft control: {exc}", file=sys.stderr)
        return 2
    import uvloop

    from weft.identity.ca import CaError

    try:
        uvloop.run(serve(config))
    except (OSError, CaError) as exc:  # CaError: the CA material cannot be used
        print(f"weft control: {exc}", file=sys.stderr)
        return 1
    return 0


def identity_settings(args: argparse.Namespace) -> IdentitySettings:
    """The identity flags, validated; the CA files must be readable (ValueError naming them)."""
    from weft.control.identity import IdentitySettings  # cryptography: only when running

    files = {
        "trust-anchors": args.trust_anchors,
        "issuer-cert": args.issuer_cert,
        "issuer-key": args.issuer_key,
    }
    for flag, path in files.items():
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"--{flag} {path}: {exc.strerror or exc}") from None
    return IdentitySettings(
        trust_domain=args.trust_domain,
        leaf_lifetime=parse_duration(args.leaf_lifetime),
        trust_anchors=_absolute(args.trust_anchors),
        issuer_cert=_absolute(args.issuer_cert),
        issuer_key=_absolute(args.issuer_key),
    )


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(path)
