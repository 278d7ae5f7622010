"""``weft proxy-init``: mesh the network namespace it runs in (the ``weft-init`` container).

Installs the iptables rules that send the pod's TCP traffic through its proxy, as Linkerd's
proxy-init does, from the one generator every runtime uses (:func:`weft.core.proxyinit.
proxy_init_rules`): the injected init container runs it in the pod's namespace with NET_ADMIN
and NET_RAW. Run again in a namespace that has the rules (a restarted init container), it
leaves them as they are. ``--dry-run`` prints the rules instead.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

from weft.core.proxyinit import DEFAULT_SKIP_PORTS, parse_ports, proxy_init_rules

IPTABLES = ("iptables-nft", "iptables-legacy", "iptables")
MARK = "weft/proxy-init"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "proxy-init", help="redirect this network namespace's TCP through its proxy",
        description=__doc__,
    )  # fmt: skip
    p.add_argument("--inbound-skip-ports", default=DEFAULT_SKIP_PORTS,
                   help="ports (and ranges, e.g. 25,5000-5010) inbound traffic keeps")  # fmt: skip
    p.add_argument("--outbound-skip-ports", default=DEFAULT_SKIP_PORTS,
                   help="ports outbound traffic keeps")  # fmt: skip
    choices = ", ".join(IPTABLES)
    p.add_argument("--iptables", help=f"the iptables binary (default: the first of {choices})")
    p.add_argument("--dry-run", action="store_true", help="print the rules, change nothing")
    p.set_defaults(func=run)


def _binary(wanted: str | None) -> str | None:
    for name in (wanted,) if wanted else IPTABLES:
        if shutil.which(f"{name}-restore") and shutil.which(name):
            return name
    return None


def run(args: argparse.Namespace) -> int:
    try:
        rules = proxy_init_rules(
            skip_inbound=parse_ports(args.inbound_skip_ports, "--inbound-skip-ports"),
            skip_outbound=parse_ports(args.outbound_skip_ports, "--outbound-skip-ports"),
        )
    except ValueError as exc:
        print(f"weft proxy-init: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        sys.stdout.write(rules)
        return 0
    binary = _binary(args.iptables)
    if binary is None:
        print(f"weft proxy-init: no iptables found ({args.iptables or ', '.join(IPTABLES)})",
              file=sys.stderr)  # fmt: skip
        return 1
    current = subprocess.run([binary, "-t", "nat", "-S"], capture_output=True, text=True,
                             check=False)  # fmt: skip
    if current.returncode != 0:
        print(f"weft proxy-init: {binary} -t nat -S: {current.stderr.strip()}", file=sys.stderr)
        return 1
    if MARK in current.stdout:
        print("weft proxy-init: the rules are in place already", file=sys.stderr)
        return 0
    done = subprocess.run([f"{binary}-restore", "--noflush"], input=rules, capture_output=True,
                          text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        print(f"weft proxy-init: {binary}-restore: {done.stderr.strip()}", file=sys.stderr)
        return 1
    print(f"weft proxy-init: traffic redirected through the proxy ({binary})", file=sys.stderr)
    return 0
