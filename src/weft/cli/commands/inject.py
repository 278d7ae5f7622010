"""``weft inject -f FILE|-`` and ``weft uninject -f FILE|-``: mesh or unmesh manifests offline.

Like ``linkerd inject --manual``: every pod template in the input (Pods, Deployments,
StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs, Lists, multi-document YAML) gets the proxy
and its init container (:mod:`weft.install.inject`, the same change the injector makes), and
the result goes to stdout for ``kubectl apply -f -``; what was done to each object, and any
warning about its annotations, goes to stderr. Objects without a pod template pass through
unchanged. Invalid YAML is an error naming the file; nothing is printed then.
"""

from __future__ import annotations

import argparse
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
            p.add_argument("--proxy-image", default=defaults.proxy_image)
            p.add_argument("--init-image", default=defaults.init_image)
        p.set_defaults(func=run, uninject=name == "uninject")


def _read(name: str) -> list[Any]:
    text = sys.stdin.read() if name == "-" else open(name, encoding="utf-8").read()  # noqa: SIM115
    return [d for d in yaml.safe_load_all(text) if d is not None]


def _label(doc: Any) -> str:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    kind = doc.get("kind", "object") if isinstance(doc, dict) else "document"
    return f'{str(kind).lower()} "{name or "?"}"'


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
    config = InjectConfig(
        **(
            {}
            if args.uninject
            else {"proxy_image": args.proxy_image, "init_image": args.init_image}
        )
    )
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
