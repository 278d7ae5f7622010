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
(warnings do not fail).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from weft.cli.commands.get import human_duration
from weft.cli.commands.up import add_state_arg, mesh_for
from weft.control.client import ApiError, ControlClient, ControlUnavailable, run_sync
from weft.resources.security import root_containers_of
from weft.runtime.base import Check
from weft.runtime.local.mesh import LocalMesh
from weft.runtime.local.procs import ProcRecord
from weft.runtime.local.supervisor import ControlStatus, read_status

STATUS_PATH = "/api/v1/identity/status"
ROTATE_HINT = {
    "issuer": "rotate the issuer: weft identity rotate-issuer (docs/identity.md)",
    "trust anchor": "rotate the trust anchor: add a new one first (docs/identity.md)",
}


@dataclass(frozen=True, slots=True)
class CheckWarning(Check):
    """A check that holds for now but needs attention soon: printed ⚠ with its hint."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check", help="check the host and the running mesh", description=__doc__)
    add_state_arg(p)
    p.add_argument("--pre", action="store_true", help="only the host checks (before weft up)")
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
    console = Console(highlight=False, soft_wrap=True)
    mesh = mesh_for(args)
    ok = show(console, "host", mesh.host_checks())
    if not args.pre:
        checks = [*mesh.mesh_checks(), supervision_check_of(mesh)]
        checks += identity_checks(mesh.control_endpoint)
        checks += privileged_checks(mesh.control_endpoint)
        ok = show(console, f"mesh ({mesh.state.root})", checks) and ok
    console.print("[green]all checks passed[/green]" if ok else "[red]some checks failed[/red]")
    return 0 if ok else 1


def supervision_check_of(mesh: LocalMesh) -> Check:
    """The control plane's supervision, from the node agent's record of it."""
    return supervision_check(
        read_status(mesh.state.control_status),
        mesh.running_components().get("node"),
        time.time(),
        log_path=str(mesh.state.log_path("control")),
    )


def supervision_check(
    status: ControlStatus | None, agent: ProcRecord | None, now: float, *, log_path: str
) -> Check:
    """✔ with the restart count while the running node agent supervises the control plane, ⚠
    when the control plane is crash-looping, ✘ when nothing would restart it."""
    name = "control plane supervised by the node agent"
    detail = f"restarts: {status.restarts if status else 0}"
    if status is not None and status.restarts and status.last_exit_at is not None:
        ago = human_duration(max(now - status.last_exit_at, 0.0))
        detail += f", last {ago} ago ({status.last_exit or 'exited'})"
    if agent is None or status is None or status.supervisor != agent:
        if agent is None:
            why, hint = "the node agent is not running", "weft up (starts the node agent again)"
        else:
            why = "the running node agent does not supervise it"
            hint = "weft node supervises the control plane unless --control is given"
        return Check(
            name, False, f"{why}: nothing restarts the control plane if it exits; {detail}", hint
        )
    if status.crash_looping(now):
        if status.state == "waiting" and status.backoff is not None:
            left = (status.last_exit_at or now) + status.backoff - now
            detail += f"; crash-looping, next start in {human_duration(max(left, 0.0))}"
        else:
            detail += "; crash-looping"
        return CheckWarning(name, True, detail, f"see why in its log: {log_path}")
    return Check(name, True, detail)


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
