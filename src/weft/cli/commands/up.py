"""``weft up``: start the local mesh on this machine (pods as network namespaces).

Checks the host first (root, network namespaces, iptables) and fails at once naming what is
missing; removes leftovers of a crashed run; creates the node namespace ``weft-node``; starts
``weft control`` inside it and ``weft node`` next to it (detached, logs in the state directory);
waits for the control plane's API; applies ``-f`` files if given; returns. On a mesh that is
already up it restarts whichever of the two processes is missing.

Identity and policy: ``--trust-domain`` (cluster.local), user-supplied CA material
(``--trust-anchors``, ``--issuer-cert`` and ``--issuer-key``, together or not at all; without them
the control plane makes its own CA), and ``--default-inbound-policy``; checked before anything
else, passed to ``weft control`` and ``weft node``.

Also the home of what ``down``, ``check``, ``exec``, ``logs`` and ``demo`` share: state directory
flags and the choice of the mesh to talk to.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from weft.identity.names import DEFAULT_TRUST_DOMAIN
from weft.inbound import DEFAULT_POLICIES, DEFAULT_POLICY
from weft.runtime.base import Runtime, RuntimeFailure
from weft.runtime.local.mesh import CONTROL_START_TIMEOUT, LocalMesh
from weft.runtime.local.meshidentity import IssuerFiles, MeshIdentity
from weft.runtime.local.net import DEFAULT_POD_CIDR, DEFAULT_SERVICE_CIDR, MeshNetwork
from weft.runtime.local.state import (
    STATE_DIR_ENV,
    StateDirError,
    read_host_record,
    resolve_state_dir,
)


def add_state_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        default=None,
        help="the mesh's state directory (default: $WEFT_STATE_DIR, else the running mesh's, "
        "else /run/weft)",
    )


def state_dir_for(args: argparse.Namespace, *, running: bool = True) -> Path:
    """``--state-dir``, else ``$WEFT_STATE_DIR``, else (``running``) the state directory of the
    mesh running on this host, else ``/run/weft``."""
    if args.state_dir is None and not os.environ.get(STATE_DIR_ENV) and running:
        record = read_host_record()
        if record is not None:
            return Path(record.state_dir)
    return resolve_state_dir(args.state_dir)


def mesh_for(args: argparse.Namespace, *, running: bool = True) -> Runtime:
    """The mesh a command talks to, through the Runtime seam (``check``, ``exec``, ``logs``)."""
    return local_mesh_for(args, running=running)


def local_mesh_for(args: argparse.Namespace, *, running: bool = True) -> LocalMesh:
    """The local mesh (``up``, ``down``, ``demo``); its ranges come from its record."""
    state = state_dir_for(args, running=running)
    mesh = LocalMesh(state, echo=lambda text: print(text, file=sys.stderr))
    try:
        record = mesh.state.read_record()
    except StateDirError:  # a damaged record: the default ranges are as good for reading
        record = None
    if record is not None:
        mesh.network = record.network
    return mesh


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="start the local mesh", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--state-dir",
        default=None,
        help="where the mesh keeps its files (default: $WEFT_STATE_DIR or /run/weft)",
    )
    p.add_argument(
        "--pod-cidr", default=DEFAULT_POD_CIDR, help=f"pod address range ({DEFAULT_POD_CIDR})"
    )
    p.add_argument(
        "--service-cidr",
        default=DEFAULT_SERVICE_CIDR,
        help=f"service virtual IP range ({DEFAULT_SERVICE_CIDR})",
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        default=[],
        metavar="FILE|DIR",
        help="resources to apply once the mesh is up (repeatable)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=CONTROL_START_TIMEOUT,
        help=f"seconds to wait for the control plane ({CONTROL_START_TIMEOUT:g})",
    )
    p.add_argument(
        "--trust-domain",
        default=DEFAULT_TRUST_DOMAIN,
        help=f"the mesh's identity trust domain ({DEFAULT_TRUST_DOMAIN})",
    )
    p.add_argument(
        "--trust-anchors",
        metavar="FILE",
        help="trust anchors (root CA certificates, PEM) instead of a generated CA; "
        "with --issuer-cert and --issuer-key",
    )
    p.add_argument(
        "--issuer-cert", metavar="FILE", help="issuer (intermediate CA) certificate, PEM"
    )
    p.add_argument("--issuer-key", metavar="FILE", help="issuer private key, PEM")
    p.add_argument(
        "--default-inbound-policy",
        choices=DEFAULT_POLICIES,
        default=DEFAULT_POLICY,
        help=f"who may call pods that no policy covers ({DEFAULT_POLICY})",
    )
    p.set_defaults(func=run)


def identity_from_args(args: argparse.Namespace) -> MeshIdentity:
    """The identity and policy flags, checked (CA files readable PEM, all three or none);
    ValueError saying what is wrong."""
    return MeshIdentity(
        trust_domain=args.trust_domain,
        issuer=IssuerFiles.from_flags(args.trust_anchors, args.issuer_cert, args.issuer_key),
        default_inbound_policy=args.default_inbound_policy,
    )


def bring_up(
    args: argparse.Namespace, prog: str, identity: MeshIdentity | None = None
) -> LocalMesh | None:
    """Start (or repair) the mesh (with default identity settings unless given); prints the
    error and returns None when it cannot."""
    try:
        network = MeshNetwork.parse(args.pod_cidr, args.service_cidr)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None
    mesh = LocalMesh(
        resolve_state_dir(args.state_dir),
        network,
        echo=lambda text: print(f"{prog}: {text}", file=sys.stderr),
        identity=identity,
    )
    try:
        mesh.up(timeout=args.timeout)
    except RuntimeFailure as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None
    return mesh


def apply_files(mesh: LocalMesh, files: list[str]) -> int:
    from weft.cli.commands import apply

    return apply.run(
        argparse.Namespace(filename=files, control=mesh.control_endpoint, state_dir=None)
    )


def run(args: argparse.Namespace) -> int:
    try:
        identity = identity_from_args(args)
    except ValueError as exc:
        print(f"weft up: {exc}", file=sys.stderr)
        return 1
    mesh = bring_up(args, "weft up", identity)
    if mesh is None:
        return 1
    print(
        f"mesh up: control plane {mesh.control_endpoint}, pods {mesh.network.pod_cidr}, "
        f"services {mesh.network.service_cidr}, trust domain {mesh.identity.trust_domain}"
    )
    if args.filename:
        return apply_files(mesh, args.filename)
    return 0
