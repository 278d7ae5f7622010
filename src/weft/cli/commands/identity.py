"""``weft identity``: workload identity and the mesh's CA.

- ``weft identity POD [-n NAMESPACE]``: the pod's identity and each certificate of its proxy's
  chain (subject, SANs, issuer, validity and time left), then the trust anchors the proxy holds.
  Read from the proxy's admin ``/identity`` through the control plane. A pod whose name is one of
  the words below is written ``pod/NAME``.
- ``weft identity status``: trust domain, leaf lifetime, the issuer and the trust anchors, and
  warnings for any of them expiring within 60 days.
- ``weft identity rotate-issuer [--cert FILE --key FILE]``: a new issuer (from the newest trust
  anchor whose key the control plane holds, or the one given); proxies renew at once.
- ``weft identity add-anchor (--generate | --cert FILE)``: add a trust anchor to the bundle.
- ``weft identity remove-anchor FINGERPRINT``: remove one (not while the issuer chains to it).

See docs/identity.md for the rotation procedures. ``-o json`` prints the API's answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.markup import escape

from weft.cli.commands.get import add_control_args, api_error, call, client_for
from weft.control.client import ApiError
from weft.core.durations import human_duration

PROG = "weft identity"
ACTIONS = ("status", "rotate-issuer", "add-anchor", "remove-anchor")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "identity",
        help="a pod's identity and certificate chain; the mesh's CA and its rotation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="POD|" + "|".join(ACTIONS))
    p.add_argument("fingerprint", nargs="?", help="remove-anchor: the anchor's fingerprint")
    p.add_argument("-n", "--namespace", default=None, help="the pod's namespace (default)")
    p.add_argument("--cert", metavar="FILE", help="rotate-issuer, add-anchor: a PEM certificate")
    p.add_argument("--key", metavar="FILE", help="rotate-issuer: the issuer's PEM private key")
    p.add_argument("--generate", action="store_true", help="add-anchor: make a new anchor")
    p.add_argument("-o", "--output", choices=["json"], default=None)
    add_control_args(p)
    p.set_defaults(func=run)


# -- formatting ------------------------------------------------------------------------------


def validity(cert: Mapping[str, Any], now: float) -> str:
    """``2026-01-01T00:00:00Z to 2026-01-02T00:00:00Z (23h59m left)``, or ``... (EXPIRED 2h
    ago)`` in red."""
    span = f"{cert.get('notBefore')} to {cert.get('notAfter')}"
    left = float(cert.get("notAfterEpoch", 0)) - now
    if left <= 0:
        return f"{span} [red](EXPIRED {human_duration(-left)} ago)[/red]"
    if float(cert.get("notBeforeEpoch", 0)) > now:
        return f"{span} [yellow](not valid yet)[/yellow]"
    return f"{span} ({human_duration(left)} left)"


def _cert_lines(cert: Mapping[str, Any], now: float, indent: str) -> list[str]:
    lines = [
        f"{indent}subject      {escape(str(cert.get('subject') or '(empty)'))}",
        f"{indent}issuer       {escape(str(cert.get('issuer', '')))}",
    ]
    sans = cert.get("sans") or []
    if sans:
        lines.append(f"{indent}SANs         {escape(', '.join(str(s) for s in sans))}")
    lines.append(f"{indent}valid        {validity(cert, now)}")
    lines.append(f"{indent}fingerprint  {cert.get('fingerprint', '')}")
    return lines


def pod_lines(answer: Mapping[str, Any], now: float) -> list[str]:
    """The ``weft identity POD`` report (rich markup), from the control plane's answer."""
    view = answer.get("proxy") or {}
    lines = [f"[bold]Pod {escape(str(answer.get('pod', '')))}[/bold]"]
    lines.append(f"  identity  {escape(str(view.get('identity', '')))}")
    lines.append(f"  SPIFFE    {escape(str(view.get('spiffe', '')))}")
    if not view.get("ready"):
        lines.append("  [red]no certificate yet[/red]")
    else:
        renewal = view.get("nextRenewal")
        when = (
            f"next renewal in {human_duration(max(0.0, float(renewal) - now))}"
            if isinstance(renewal, int | float)
            else "no renewal scheduled"
        )
        lines.append(f"  certified {view.get('refreshCount', 0)} time(s); {when}")
    if view.get("lastError"):
        lines.append(f"  [yellow]last error: {escape(str(view['lastError']))}[/yellow]")
    chain: Sequence[Mapping[str, Any]] = view.get("chain") or []
    if chain:
        lines.append("")
        lines.append("[bold]Certificate chain[/bold]")
        for i, cert in enumerate(chain):
            role = "leaf" if i == 0 else "issuer"
            lines.append(rf"  \[{i}] {role}")
            lines += _cert_lines(cert, now, "      ")
    anchors: Sequence[Mapping[str, Any]] = view.get("trustAnchors") or []
    lines.append("")
    lines.append(f"[bold]Trust anchors ({len(anchors)})[/bold]")
    for i, anchor in enumerate(anchors):
        lines.append(rf"  \[{i}]")
        lines += _cert_lines(anchor, now, "      ")
    return lines


def status_lines(status: Mapping[str, Any], now: float) -> list[str]:
    """The ``weft identity status`` report (rich markup)."""
    lines = [
        f"trust domain   {escape(str(status.get('trustDomain', '')))}",
        f"leaf lifetime  {human_duration(float(status.get('leafLifetime', 0)))}",
        "",
        "[bold]Issuer[/bold]",
    ]
    issuer = status.get("issuer") or {}
    lines += _cert_lines(issuer, now, "  ")
    lines.append(f"  anchor       {issuer.get('anchor', '')}")
    anchors: Sequence[Mapping[str, Any]] = status.get("anchors") or []
    lines.append("")
    lines.append(f"[bold]Trust anchors ({len(anchors)})[/bold]")
    for anchor in anchors:
        held = "key held here" if anchor.get("hasKey") else "key not held here"
        lines.append(f"  {anchor.get('fingerprint', '')} ({held})")
        lines += _cert_lines(anchor, now, "    ")
    warnings: Sequence[Mapping[str, Any]] = status.get("warnings") or []
    if warnings:
        lines.append("")
        lines.append("[bold]Warnings[/bold]")
        for w in warnings:
            color = "red" if w.get("expired") else "yellow"
            lines.append(f"  [{color}]⚠ {escape(str(w.get('message', '')))}[/{color}]")
    return lines


# -- commands --------------------------------------------------------------------------------


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SystemExit(f"{PROG}: cannot read the {what} {path}: {reason}") from None


def _request(args: argparse.Namespace) -> tuple[str, str, Any]:
    """``(method, path, body)`` for the command line; SystemExit(2) on a bad combination."""
    action = args.target
    used = {
        "--cert": args.cert is not None,
        "--key": args.key is not None,
        "--generate": args.generate,
        "FINGERPRINT": args.fingerprint is not None,
        "-n": args.namespace is not None,
    }
    allowed = {
        "status": set(),
        "rotate-issuer": {"--cert", "--key"},
        "add-anchor": {"--cert", "--generate"},
        "remove-anchor": {"FINGERPRINT"},
    }.get(action, {"-n"})
    extra = [flag for flag, on in used.items() if on and flag not in allowed]
    if extra:
        what = "a pod" if action not in ACTIONS else action
        raise _usage(f"{', '.join(extra)} cannot be used with {what}")
    base = "/api/v1/identity"
    if action == "status":
        return "GET", f"{base}/status", None
    if action == "rotate-issuer":
        if (args.cert is None) != (args.key is None):
            raise _usage("rotate-issuer takes --cert and --key together, or neither")
        if args.cert is None:
            return "POST", f"{base}/issuer", {}
        body = {"certificate": _read(args.cert, "certificate"), "key": _read(args.key, "key")}
        return "POST", f"{base}/issuer", body
    if action == "add-anchor":
        if args.generate == (args.cert is not None):
            raise _usage("add-anchor takes --generate or --cert FILE")
        if args.generate:
            return "POST", f"{base}/anchors", {"generate": True}
        return "POST", f"{base}/anchors", {"certificate": _read(args.cert, "certificate")}
    if action == "remove-anchor":
        if not args.fingerprint:
            raise _usage("remove-anchor needs the anchor's FINGERPRINT (weft identity status)")
        return "DELETE", f"{base}/anchors/{quote(args.fingerprint, safe='')}", None
    name = action.split("/", 1)[1] if action.startswith(("pod/", "po/")) else action
    namespace = args.namespace or "default"
    return "GET", f"{base}/pods/{quote(namespace, safe='')}/{quote(name, safe='')}", None


def _usage(message: str) -> SystemExit:
    print(f"{PROG}: {message}", file=sys.stderr)
    return SystemExit(2)


def _done(action: str, answer: Mapping[str, Any]) -> str:
    if action == "rotate-issuer":
        issuer = answer.get("issuer") or {}
        return (
            f"issuer rotated: {issuer.get('fingerprint', '')} valid until "
            f"{issuer.get('notAfter', '')}; proxies renew their certificates now"
        )
    if action == "add-anchor":
        if not answer.get("added"):
            return f"trust anchor {answer.get('fingerprint', '')} is already in the bundle"
        return f"trust anchor {answer.get('fingerprint', '')} added; proxies now trust it too"
    return f"trust anchor {answer.get('fingerprint', '')} removed from the bundle"


def run(args: argparse.Namespace) -> int:
    method, path, body = _request(args)
    client = client_for(args)
    try:
        answer = call(PROG, client, client.call(method, path, body))
    except ApiError as exc:
        print(api_error(PROG, exc), file=sys.stderr)
        if exc.status == 502:
            print(
                "  (the control plane could not read the pod's proxy: is the pod running "
                "with a sidecar? see weft logs POD -c proxy)",
                file=sys.stderr,
            )
        return 1
    if args.output == "json":
        print(json.dumps(answer, indent=2))
        return 0
    console = Console(highlight=False, soft_wrap=True)
    now = time.time()
    if args.target == "status":
        lines = status_lines(answer, now)
    elif args.target in ACTIONS:
        lines = [escape(_done(args.target, answer))]
    else:
        lines = pod_lines(answer, now)
    for line in lines:
        console.print(line)
    return 0
