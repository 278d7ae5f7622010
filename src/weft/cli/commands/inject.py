"""``weft inject -f FILE|-`` and ``weft uninject -f FILE|-``: mesh or unmesh manifests offline.

Like ``linkerd inject --manual``: every pod template in the input (Pods, Deployments,
StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs, Lists, multi-document YAML) gets the proxy
and its init container (:mod:`weft.install.inject`, the same change the injector makes), and
the result goes to stdout for ``kubectl apply -f -``; what was done to each object, and any
warning about its annotations, goes to stderr. Objects without a pod template pass through
unchanged. Invalid YAML is an error naming the file; nothing is printed then.

The injected proxies verify the control plane's HTTPS API with the mesh's trust anchors, so
``weft inject`` needs them: as ``linkerd inject`` does, it reads the installation from the cluster
(``--kubeconfig``/``--context`` as kubectl takes them: the installed images, trust domain and
anchors), or, offline, takes the anchors from ``--trust-anchors-file`` with the default values.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

import yaml

from weft.install import render
from weft.install.inject import InjectConfig, transform


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, verb in (("inject", "add the Weft proxy to"), ("uninject", "remove it from")):
        p = sub.add_parser(name, help=f"{verb} the pods of manifests (offline)",
                           description=__doc__)  # fmt: skip
        p.add_argument("-f", "--filename", action="append", required=True,
                       help="a manifest file, or - for standard input (repeatable)")  # fmt: skip
        if name == "inject":
            defaults = InjectConfig()
            p.add_argument(
                "--proxy-image",
                default=None,
                help=f"the proxy's image (installed, else {defaults.proxy_image})",
            )
            p.add_argument(
                "--init-image",
                default=None,
                help=f"weft-init's image (installed, else {defaults.init_image})",
            )
            p.add_argument(
                "--trust-anchors-file",
                metavar="FILE",
                default=None,
                help="offline: the mesh's trust anchors (PEM) instead of the "
                "cluster's installation",
            )
            p.add_argument(
                "--kubeconfig", default=None, help="the kubeconfig ($KUBECONFIG, ~/.kube)"
            )
            p.add_argument("--context", default=None, help="the kubeconfig's context")
        p.set_defaults(func=run, uninject=name == "uninject")


def _read(name: str) -> list[Any]:
    text = sys.stdin.read() if name == "-" else open(name, encoding="utf-8").read()  # noqa: SIM115
    return [d for d in yaml.safe_load_all(text) if d is not None]


def _label(doc: Any) -> str:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    kind = doc.get("kind", "object") if isinstance(doc, dict) else "document"
    return f'{str(kind).lower()} "{name or "?"}"'


class _NoConfig(Exception):
    pass


def _inject_config(args: argparse.Namespace) -> InjectConfig:
    """The installation's injection settings (from the cluster, or offline from the anchors
    file), with the image flags applied; _NoConfig saying how to get them otherwise."""
    images = {k: v for k, v in (("proxy_image", args.proxy_image),
                                ("init_image", args.init_image)) if v}  # fmt: skip
    if args.trust_anchors_file:
        try:
            with open(args.trust_anchors_file, encoding="ascii", errors="replace") as f:
                anchors = f.read()
        except OSError as exc:
            raise _NoConfig(f"{args.trust_anchors_file}: {exc.strerror or exc}") from None
        if "-----BEGIN CERTIFICATE-----" not in anchors:
            raise _NoConfig(f"{args.trust_anchors_file}: no PEM certificate in it")
        return dataclasses.replace(InjectConfig(trust_anchors=anchors), **images)
    from weft.install import installed
    from weft.install import values as values_mod
    from weft.install.controlplane import inject_config

    try:
        current = installed.read_from(args.kubeconfig, args.context)
        values = values_mod.resolve(current.values, {}, {})
    except Exception as exc:  # no kubeconfig, the API away, not installed, bad values
        raise _NoConfig(
            f"cannot read Weft's installation from the cluster ({exc}); to inject offline, "
            "give --trust-anchors-file with the mesh's trust anchors"
        ) from None
    config = dataclasses.replace(
        inject_config(values), trust_anchors=current.certs.trust_anchors.decode()
    )
    return dataclasses.replace(config, created_by=f"weft/cli {InjectConfig().version}", **images)


def run(args: argparse.Namespace) -> int:
    command = "uninject" if args.uninject else "inject"
    docs: list[Any] = []
    for name in args.filename:
        try:
            docs += _read(name)
        except (OSError, UnicodeDecodeError) as exc:
            print(f"weft {command}: {name}: {exc}", file=sys.stderr)
            return 1
        except yaml.YAMLError as exc:
            print(f"weft {command}: {name}: not valid YAML: {exc}", file=sys.stderr)
            return 1
    config = InjectConfig()
    if not args.uninject:
        try:
            config = _inject_config(args)
        except _NoConfig as exc:
            print(f"weft inject: {exc}", file=sys.stderr)
            return 1
    done = "uninjected" if args.uninject else "injected"
    for doc in docs:
        if not isinstance(doc, dict):
            print(f"weft {command}: skipped a document that is not an object", file=sys.stderr)
            continue
        outcome = transform(doc, config, uninject=args.uninject)
        for warning in outcome.warnings:
            print(f"weft {command}: {_label(doc)}: warning: {warning}", file=sys.stderr)
        state = done if outcome.changed else f"skipped ({outcome.reason})"
        print(f"{_label(doc)} {state}", file=sys.stderr)
    sys.stdout.write(render(d for d in docs if isinstance(d, dict)))
    return 0
