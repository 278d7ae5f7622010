"""``weft upgrade``: print this version's manifests for the installation on the cluster.

Reads the installed configuration (the values given at install or at the last upgrade) and the
certificates from the cluster (``--kubeconfig``/``--context`` as kubectl takes them), applies any
value flags given now on top, and prints the control plane as this version renders it, for
``kubectl apply -f -``. Identities are kept: the trust anchors, the issuer and the injector's
certificate are the cluster's own. With ``--crds``, this version's CRDs (apply them first).
The same cluster state prints the same bytes. Meshed pods get the new proxy when they restart
(``kubectl rollout restart``).
"""

from __future__ import annotations

import argparse
import sys
import time

from weft import __version__
from weft.cli.commands.install import add_value_flags, file_values, flag_values


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "upgrade",
        help="print this version's manifests for the installed configuration",
        description=__doc__,
    )
    p.add_argument("--crds", action="store_true", help="print this version's CRDs")
    p.add_argument("--kubeconfig", default=None, help="the kubeconfig ($KUBECONFIG, ~/.kube)")
    p.add_argument("--context", default=None, help="the kubeconfig's context")
    add_value_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lightkube import ApiError, ConfigError

    from weft.identity.ca import CaError
    from weft.install import controlplane, installed, render
    from weft.install import values as values_mod
    from weft.install.crds import crds

    if args.crds:
        header = f"Weft {__version__}: CustomResourceDefinitions (weft upgrade --crds)"
        sys.stdout.write(render(crds(), header=header))
        return 0

    try:
        current = installed.read_from(args.kubeconfig, args.context)
        values = values_mod.resolve(current.values, file_values(args), flag_values(args))
        current.certs.check(now=time.time())
    except installed.NotInstalled as exc:
        print(f"weft upgrade: {exc}", file=sys.stderr)
        return 1
    except (ApiError, ConfigError, OSError) as exc:
        print(f"weft upgrade: cannot read the installation: {exc}", file=sys.stderr)
        return 1
    except (values_mod.ValuesError, CaError) as exc:
        print(f"weft upgrade: {exc}", file=sys.stderr)
        return 2
    if current.version and current.version != values.image_tag:
        print(f"weft upgrade: {current.version} -> {values.image_tag}", file=sys.stderr)
    header = controlplane.header(values, "the control plane (weft install)")
    sys.stdout.write(render(controlplane.objects(values, current.certs), header=header))
    return 0
