"""``weft uninstall``: print what to delete to remove Weft, for ``kubectl delete -f -``.

The webhook first (so no pod creation waits on an injector about to go), then the cluster-wide
RBAC, the ``weft-system`` namespace (and everything in it), and Weft's CRDs, which deletes every
Weft policy object in the cluster (``--keep-crds`` to keep them). Gateway API's CRDs are never
included. Meshed pods keep their proxies until they are restarted: remove the
``weft.io/inject`` annotations first, or ``weft uninject`` the manifests.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "uninstall",
        help="print what to delete to remove Weft (kubectl delete -f -)",
        description=__doc__,
    )
    p.add_argument("--keep-crds", action="store_true", help="leave Weft's CRDs (and policies)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from weft import __version__
    from weft.install import certs, controlplane, render
    from weft.install.crds import crds
    from weft.install.values import resolve

    # the names do not depend on values or certificates; any render gives them
    objs = controlplane.objects(resolve({}), certs.make("cluster.local", now=time.time()))
    cluster_wide = [o for o in objs if "namespace" not in o["metadata"]]
    order = {"MutatingWebhookConfiguration": 0, "ClusterRoleBinding": 1, "ClusterRole": 2,
             "Namespace": 3}  # fmt: skip
    cluster_wide.sort(key=lambda o: order[o["kind"]])
    targets = cluster_wide + ([] if args.keep_crds else crds())
    docs = [
        {"apiVersion": o["apiVersion"], "kind": o["kind"],
         "metadata": {"name": o["metadata"]["name"]}}
        for o in targets
    ]  # fmt: skip
    sys.stdout.write(
        render(docs, header=f"Weft {__version__}: weft uninstall | kubectl delete -f -")
    )
    if not args.keep_crds:
        print(
            "weft uninstall: this deletes Weft's CRDs and every Weft policy object", file=sys.stderr
        )
    return 0
