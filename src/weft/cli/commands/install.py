"""``weft install``: print the manifests that install Weft on a cluster, for ``kubectl apply -f -``.

In two steps, as Linkerd does: ``weft install --crds | kubectl apply -f -`` (Weft's CRDs; with
``--gateway-api`` also Gateway API's HTTPRoute and GRPCRoute, which Weft never owns otherwise),
then ``weft install | kubectl apply -f -`` (the control plane in ``weft-system``). Values come
from defaults, then ``-f/--values FILE`` (YAML, the flags' names as keys), then the flags; ``--ha``
runs three replicas of each component, spread over nodes. The identity issuer and the
injector's TLS are generated unless given as files (docs/kubernetes.md). The same values and
certificates print the same bytes.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from weft import __version__
from weft.install import values as values_mod


def add_value_flags(p: argparse.ArgumentParser) -> None:
    """One flag per value (``--proxy-log-level``), unset unless given, and ``-f FILE``."""
    p.add_argument("-f", "--values", metavar="FILE", help="a YAML file of values")
    defaults = values_mod.Values()
    for key in values_mod.value_keys():
        default = getattr(defaults, key.replace("-", "_"))
        if isinstance(default, bool):
            p.add_argument(f"--{key}", action="store_const", const=True, default=None,
                           help="three replicas of each component, spread over nodes")  # fmt: skip
        else:
            p.add_argument(f"--{key}", default=None, metavar="VALUE", help=f"(default {default})")


def add_cert_flags(p: argparse.ArgumentParser) -> None:
    for flag, what in (
        ("identity-trust-anchors-file", "the mesh's trust anchors (PEM bundle)"),
        ("identity-issuer-certificate-file", "the identity issuer's certificate (PEM)"),
        ("identity-issuer-key-file", "the identity issuer's private key (PEM)"),
        ("injector-ca-file", "the injector's CA (PEM; the webhook's caBundle)"),
        ("injector-certificate-file", "the injector's serving certificate (PEM)"),
        ("injector-key-file", "the injector's private key (PEM)"),
    ):
        p.add_argument(f"--{flag}", metavar="FILE", help=what)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "install",
        help="print manifests to install Weft on a cluster (kubectl apply -f -)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--crds", action="store_true", help="print the CRDs (the first step)")
    p.add_argument(
        "--gateway-api",
        action="store_true",
        help="with --crds: also Gateway API's HTTPRoute and GRPCRoute CRDs",
    )
    add_value_flags(p)
    add_cert_flags(p)
    p.set_defaults(func=run)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    return {
        key: getattr(args, key.replace("-", "_"))
        for key in values_mod.value_keys()
        if getattr(args, key.replace("-", "_")) is not None
    }


def file_values(args: argparse.Namespace) -> dict[str, Any]:
    if not args.values:
        return {}
    try:
        with open(args.values, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise values_mod.ValuesError(f"{args.values}: {exc.strerror or exc}") from None
    return values_mod.load_file(text, args.values)


def run(args: argparse.Namespace) -> int:
    from weft.identity.ca import CaError
    from weft.install import certs as certs_mod
    from weft.install import render
    from weft.install.crds import crds
    from weft.install.gatewayapi import gateway_crds

    if args.crds:
        docs = crds() + (gateway_crds() if args.gateway_api else [])
        what = "CustomResourceDefinitions (weft install --crds)"
        sys.stdout.write(render(docs, header=f"Weft {__version__}: {what}"))
        return 0
    if args.gateway_api:
        print("weft install: --gateway-api goes with --crds", file=sys.stderr)
        return 2
    from weft.install import controlplane

    try:
        values = values_mod.resolve(file_values(args), flag_values(args))
        now = time.time()
        certs = certs_mod.make(
            values.trust_domain,
            now=now,
            identity=certs_mod.read_files(
                args.identity_trust_anchors_file,
                args.identity_issuer_certificate_file,
                args.identity_issuer_key_file,
            ),
            injector=certs_mod.read_files(
                args.injector_ca_file, args.injector_certificate_file, args.injector_key_file
            ),
        )
    except (values_mod.ValuesError, CaError) as exc:
        print(f"weft install: {exc}", file=sys.stderr)
        return 2
    header = controlplane.header(values, "the control plane (weft install)")
    sys.stdout.write(render(controlplane.objects(values, certs), header=header))
    return 0
