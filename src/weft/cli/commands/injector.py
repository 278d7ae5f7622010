"""``weft injector``: run the proxy injector, the admission webhook that meshes new pods.

What ``weft install`` deploys as ``weft-injector`` in ``weft-system``: HTTPS on ``--listen`` with
the certificate the webhook configuration's ``caBundle`` trusts (read again when the files
change), namespaces read through ``--kubeconfig`` (``in-cluster``: the pod's service account).
The flags after ``--tls-key`` say what every meshed pod gets (weft.install.inject).
"""

from __future__ import annotations

import argparse
import os
import sys

from weft.addr import parse_hostport
from weft.install.inject import LOG_LEVELS, InjectConfig


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("injector", help="run the proxy injector (admission webhook)",
                       description=__doc__)  # fmt: skip
    p.add_argument("--kubeconfig", default="in-cluster",
                   help="a kubeconfig file, or in-cluster (the default)")  # fmt: skip
    p.add_argument("--context", default=None, help="the kubeconfig's context")
    p.add_argument("--listen", default="0.0.0.0:8443", help="HTTPS address (0.0.0.0:8443)")
    p.add_argument("--tls-cert", required=True, metavar="FILE", help="serving certificate (PEM)")
    p.add_argument("--tls-key", required=True, metavar="FILE", help="its private key (PEM)")
    d = InjectConfig()
    p.add_argument("--proxy-image", default=d.proxy_image)
    p.add_argument("--init-image", default=d.init_image)
    p.add_argument("--image-pull-policy", default=d.image_pull_policy,
                   choices=["Always", "IfNotPresent", "Never"])  # fmt: skip
    p.add_argument("--control", default=d.control, help="the control plane's API for proxies")
    p.add_argument("--control-trust-anchors-file", metavar="FILE", default=None,
                   help="the mesh's trust anchors (PEM), which proxies verify an https control "
                        "plane with; read again when the file changes")  # fmt: skip
    p.add_argument(
        "--reload-interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how often the certificate and anchor files are checked (30)",
    )
    p.add_argument("--control-namespace", default=d.control_namespace)
    p.add_argument("--trust-domain", default=d.trust_domain)
    p.add_argument("--proxy-version", default=d.version)
    p.add_argument("--proxy-log-level", default=d.log_level, choices=LOG_LEVELS)
    p.add_argument("--log-level", default=os.environ.get("WEFT_LOG", "info"))
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import ssl

    import uvloop

    from weft import logs
    from weft.control.injector import InjectorSettings, serve

    try:
        logs.configure(args.log_level, args.log_format)
        listen = parse_hostport(args.listen, default_host="0.0.0.0")
    except ValueError as exc:
        print(f"weft injector: {exc}", file=sys.stderr)
        return 2
    settings = InjectorSettings(
        inject=InjectConfig(
            proxy_image=args.proxy_image,
            init_image=args.init_image,
            control=args.control,
            control_namespace=args.control_namespace,
            trust_domain=args.trust_domain,
            created_by=f"weft/injector {args.proxy_version}",
            version=args.proxy_version,
            log_level=args.proxy_log_level,
            image_pull_policy=args.image_pull_policy,
        ),
        kubeconfig=None if args.kubeconfig == "in-cluster" else args.kubeconfig,
        context=args.context,
        listen=listen,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        trust_anchors_file=args.control_trust_anchors_file,
        reload_s=args.reload_interval,
    )
    try:
        uvloop.run(serve(settings))
    except (OSError, ssl.SSLError, ValueError) as exc:
        print(f"weft injector: {exc}", file=sys.stderr)
        return 1
    return 0
