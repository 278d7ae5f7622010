"""``weft check``: can this host run the mesh, and is the running mesh healthy?

Host: root, ``ip``/``setpriv``, network namespaces, an iptables whose nat table works in a
namespace, ``/proc/sys/net``. Mesh (when one is up): the node agent runs, the control plane
answers, every running pod's proxy answers ``/ready``. One line per check, ✔ or ✘ with a hint;
exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from weft.cli.commands.up import add_state_arg, mesh_for
from weft.runtime.base import Check


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
        if c.ok:
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
        ok = show(console, f"mesh ({mesh.state.root})", mesh.mesh_checks()) and ok
    console.print("[green]all checks passed[/green]" if ok else "[red]some checks failed[/red]")
    return 0 if ok else 1
