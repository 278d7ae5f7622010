"""``weft kubeconfig``: a kubeconfig for the local mesh, so that ``kubectl`` works against it.

The local mesh serves the Kubernetes API on this machine's loopback (the node agent's TLS port,
127.0.0.1:8086, relayed to the control plane): ``sudo weft kubeconfig > ~/.kube/weft.yaml`` and
then ``kubectl --kubeconfig ~/.kube/weft.yaml get pods -A``, or ``KUBECONFIG=...``. The port
requires the mesh's admin client certificate, which this command reads from the state directory
(so it needs root, as the rest of the mesh's administration does) and embeds with its key: keep
the file private. The mesh's workloads cannot reach the port (their network namespaces have
their own loopback).

Not for: a real cluster (its kubeconfig comes from the cluster).
"""

from __future__ import annotations

import argparse
import base64
import sys

import yaml

from weft.cli.commands.up import add_state_arg, state_dir_for
from weft.runtime.local.kubepki import KubePki

DEFAULT_SERVER = "https://127.0.0.1:8086"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "kubeconfig",
        help="print a kubeconfig for kubectl against the local mesh",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        help=f"the control plane's HTTP address ({DEFAULT_SERVER})",
    )
    p.add_argument("--context", default="weft-local", help="the context's name (weft-local)")
    add_state_arg(p)
    p.set_defaults(func=run)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(server: str, context: str, pki: KubePki) -> dict[str, object]:
    """A kubeconfig trusting the port's CA and presenting the admin certificate (OSError when
    a file cannot be read)."""
    cluster = {"server": server, "certificate-authority-data": _b64(pki.ca.read_bytes())}
    user = {
        "client-certificate-data": _b64(pki.admin_cert.read_bytes()),
        "client-key-data": _b64(pki.admin_key.read_bytes()),
    }
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": cluster}],
        "users": [{"name": context, "user": user}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
        "current-context": context,
    }


def run(args: argparse.Namespace) -> int:
    if not args.server.startswith(("http://", "https://")):
        print(
            f"weft kubeconfig: --server must be an http(s) URL, got {args.server!r}",
            file=sys.stderr,
        )
        return 2
    pki = KubePki(state_dir_for(args) / "kube")
    try:
        config = kubeconfig(args.server, args.context, pki)
    except PermissionError:
        print(
            f"weft kubeconfig: cannot read {pki.directory}: run it as root (sudo)", file=sys.stderr
        )
        return 1
    except FileNotFoundError:
        print(
            f"weft kubeconfig: no certificates in {pki.directory}: is the mesh up (weft up)?",
            file=sys.stderr,
        )
        return 1
    sys.stdout.write(yaml.safe_dump(config, sort_keys=False))
    return 0
