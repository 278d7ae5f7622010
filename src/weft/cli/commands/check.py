"""``weft check``: can this host run the mesh, and is the running mesh healthy?

Host: root, ``ip``/``setpriv``, network namespaces, an iptables whose nat table works in a
namespace, ``/proc/sys/net``. Mesh (when one is up): the node agent runs, the control plane
answers and is supervised by the node agent (its restarts; a warning when it is crash-looping, a
failure when nothing would restart it), every running pod's proxy answers ``/ready``, and the
mesh's trust anchors and issuer
are valid (a warning when one expires within 60 days: an expired CA stops every meshed
connection), and a warning listing the pods that run containers as root (``runAsUser: 0`` or
``privileged: true``: on the local runtime they can administer the mesh and read its secrets).
One line per check, ✔ or ✘ with a hint, ⚠ for a warning; exit status 1 when any check fails
(warnings do not fail). ``-o json`` prints the same as one JSON document.

With ``--kubeconfig`` or ``--context``: Weft on that Kubernetes cluster instead (API and version,
``--pre`` before ``weft install``, CRDs, control plane, webhook, certificates, data plane:
:mod:`weft.install.checks`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console

from weft.cli.commands.up import add_state_arg, mesh_for
from weft.control.client import ApiError, ControlClient, ControlUnavailable, run_sync
from weft.core.durations import human_duration
from weft.resources.security import root_containers_of
from weft.runtime.base import Check, CheckWarning

STATUS_PATH = "/api/v1/identity/status"
ROTATE_HINT = {
    "issuer": "rotate the issuer: weft identity rotate-issuer (docs/identity.md)",
    "trust anchor": "rotate the trust anchor: add a new one first (docs/identity.md)",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check", help="check the host and the running mesh", description=__doc__)
    add_state_arg(p)
    p.add_argument(
        "--pre", action="store_true", help="only what must hold before weft up (or install)"
    )
    p.add_argument(
        "--kubeconfig", default=None, help="check Weft on this cluster (weft.install.checks)"
    )
    p.add_argument("--context", default=None, help="the kubeconfig's context (a cluster too)")
    p.add_argument("-o", "--output", default="text", choices=["text", "json"])
    p.set_defaults(func=run)


def show(console: Console, title: str, checks: list[Check]) -> bool:
    console.print(f"[bold]{title}[/bold]")
    ok = True
    for c in checks:
        detail = f" [dim]({c.detail})[/dim]" if c.detail else ""
        if isinstance(c, CheckWarning):
            console.print(f"  [yellow]⚠[/yellow] {c.name}{detail}", highlight=False)
            if c.hint:
                console.print(f"      [yellow]→ {c.hint}[/yellow]", highlight=False)
        elif c.ok:
            console.print(f"  [green]✔[/green] {c.name}{detail}", highlight=False)
        else:
            ok = False
            console.print(f"  [red]✘[/red] {c.name}{detail}", highlight=False)
            if c.hint:
                console.print(f"      [yellow]→ {c.hint}[/yellow]", highlight=False)
    return ok


def run(args: argparse.Namespace) -> int:
    if args.kubeconfig or args.context:
        categories = cluster_categories(args)
    else:
        mesh = mesh_for(args)
        categories = [("host", mesh.host_checks())]
        if not args.pre:
            checks = mesh.mesh_checks()
            checks += identity_checks(mesh.control_endpoint)
            checks += privileged_checks(mesh.control_endpoint)
            categories.append((f"mesh ({mesh.location})", checks))
    ok = all(c.ok for _, checks in categories for c in checks)
    if args.output == "json":
        print(json.dumps(as_json(categories, ok), indent=2))
        return 0 if ok else 1
    console = Console(highlight=False, soft_wrap=True)
    for title, checks in categories:
        show(console, title, checks)
    console.print("[green]all checks passed[/green]" if ok else "[red]some checks failed[/red]")
    return 0 if ok else 1


def cluster_categories(args: argparse.Namespace) -> list[tuple[str, list[Check]]]:
    """The checks of Weft on the cluster of ``--kubeconfig``/``--context``."""
    import asyncio

    from lightkube import ConfigError

    from weft.control.kube.client import connect
    from weft.install.checks import run_checks

    try:
        client = connect(args.kubeconfig, context=args.context)
    except (ConfigError, OSError, ValueError) as exc:
        hint = "give a readable kubeconfig (--kubeconfig) and an existing --context"
        return [("kubernetes-api", [Check("can initialize the client", False, str(exc), hint)])]

    async def go() -> list[tuple[str, list[Check]]]:
        try:
            return await run_checks(client, pre=args.pre)
        finally:
            await client.close()

    return asyncio.run(go())


def as_json(categories: list[tuple[str, list[Check]]], ok: bool) -> dict[str, Any]:
    return {
        "success": ok,
        "categories": [
            {
                "categoryName": title,
                "checks": [
                    {
                        "description": c.name,
                        "result": "warning" if isinstance(c, CheckWarning)
                        else "success" if c.ok else "error",
                        "detail": c.detail,
                        "hint": c.hint,
                    }
                    for c in checks
                ],
            }
            for title, checks in categories
        ],
    }  # fmt: skip


def identity_checks(endpoint: str) -> list[Check]:
    """One line per trust anchor and for the issuer, from ``/api/v1/identity/status``: ✔ valid,
    ⚠ expiring within 60 days, ✘ expired. Nothing when the control plane cannot be reached
    (the mesh checks already say so)."""
    try:
        status = run_sync(ControlClient(endpoint, timeout=3.0).call("GET", STATUS_PATH))
    except ControlUnavailable:
        return []
    except ApiError as exc:
        return [
            Check("identity service answers", False, exc.message, "see the control plane's log")
        ]
    return ca_checks(status, time.time())


def ca_checks(status: Mapping[str, Any], now: float) -> list[Check]:
    """The checks for a status answer; which CA warns or fails is the control plane's call
    (its ``warnings``)."""
    flagged = {
        (w.get("kind"), w.get("fingerprint")): bool(w.get("expired"))
        for w in status.get("warnings") or []
    }
    items = [("trust anchor", a) for a in status.get("anchors") or []]
    items.append(("issuer", status.get("issuer") or {}))
    checks: list[Check] = []
    for kind, info in items:
        fp = str(info.get("fingerprint", ""))
        name = f"{kind} {fp[:16]} valid"
        left = float(info.get("notAfterEpoch", 0)) - now
        key = (kind, fp)
        if flagged.get(key):
            detail = f"expired at {info.get('notAfter')}"
            checks.append(Check(name, False, detail, ROTATE_HINT[kind]))
        elif key in flagged:
            detail = f"expires at {info.get('notAfter')}, in {human_duration(max(left, 0.0))}"
            checks.append(CheckWarning(name, True, detail, ROTATE_HINT[kind]))
        else:
            detail = f"until {info.get('notAfter')}, {human_duration(max(left, 0.0))} left"
            checks.append(Check(name, True, detail))
    return checks


def privileged_checks(endpoint: str) -> list[Check]:
    """⚠ listing the pods that run containers as root; nothing when there are none or the
    control plane cannot be reached (the mesh checks already say so)."""
    try:
        pods = run_sync(ControlClient(endpoint, timeout=3.0).list("Pod"))
    except (ControlUnavailable, ApiError):
        return []
    check = privileged_check(pods)
    return [check] if check is not None else []


def privileged_check(pods: Sequence[Mapping[str, Any]]) -> Check | None:
    """The warning for these Pod objects, or None when no pod runs as root."""
    refs = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if root_containers_of(pod.get("spec")):
            refs.append(f"{meta.get('namespace') or 'default'}/{meta.get('name')}")
    if not refs:
        return None
    return CheckWarning(
        f"privileged pods (run as root): {', '.join(sorted(refs))}",
        True,
        "root in a pod can administer the mesh and read every token and key",
        "drop runAsUser: 0 / privileged: true unless the pod needs it (docs/local-runtime.md)",
    )
