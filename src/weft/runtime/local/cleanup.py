"""Find and remove everything the local runtime created, also after everything was SIGKILLed.

What Weft creates on a host, and how each is found without trusting any state it wrote:

- processes: every process inside a ``weft-*`` network namespace (``ip netns pids``), every
  process carrying the mesh marker environment variable (:data:`~weft.runtime.local.procs.MESH_ENV`)
  of the mesh being cleaned or of a mesh whose state directory is gone, and the recorded
  control-plane and node-agent processes;
- network namespaces named ``weft-*`` (deleting one deletes its veth pair, addresses, routes and
  iptables rules; the node namespace holds the bridge);
- ``/etc/netns/weft-*`` directories (pods' hosts files);
- host routes tagged with :data:`~weft.runtime.local.net.ROUTE_PROTO` (the blackhole routes);
- the state directory (only when it carries Weft's marker), with everything in it (pods' logs
  and identity tokens, the control plane's CA and token key), and ``/run/weft-mesh.json``.

Weft adds no iptables rules, links or addresses in the host namespace: nothing else to remove.

Not for: a graceful stop (``weft down`` first asks the node agent to drain its pods; see
:mod:`weft.runtime.local.mesh`), which ends with :func:`remove` for whatever is left.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from weft.runtime.local import net, netrun, procs
from weft.runtime.local.state import (
    COMPONENTS,
    HOST_RECORD,
    StateDir,
    read_host_record,
)


@dataclass(frozen=True, slots=True)
class Leftovers:
    """Everything of Weft's found on this host."""

    processes: tuple[int, ...] = ()
    netns: tuple[str, ...] = ()
    etc_netns: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    state_dirs: tuple[Path, ...] = ()
    host_record: bool = False

    @property
    def empty(self) -> bool:
        return not (
            self.processes
            or self.netns
            or self.etc_netns
            or self.routes
            or self.state_dirs
            or self.host_record
        )

    def describe(self) -> list[str]:
        out: list[str] = []
        if self.processes:
            out.append(f"{len(self.processes)} processes")
        if self.netns:
            out.append(f"network namespaces {', '.join(self.netns)}")
        if self.etc_netns:
            out.append(f"/etc/netns entries {', '.join(self.etc_netns)}")
        if self.routes:
            out.append(f"host routes {', '.join(self.routes)}")
        for d in self.state_dirs:
            out.append(f"state directory {d}")
        if self.host_record:
            out.append(str(HOST_RECORD))
        return out


def _etc_netns(etc_dir: Path) -> list[str]:
    try:
        return sorted(p.name for p in etc_dir.iterdir() if net.is_weft_netns(p.name))
    except FileNotFoundError:
        return []


def find_leftovers(
    state_dirs: Iterable[Path] = (),
    *,
    host_record: Path = HOST_RECORD,
    etc_netns: Path = net.ETC_NETNS_DIR,
) -> Leftovers:
    """What a mesh (with state in ``state_dirs``, plus the one the host record names) left."""
    dirs = {Path(d) for d in state_dirs}
    record = read_host_record(host_record)
    if record is not None:
        dirs.add(Path(record.state_dir))
    namespaces = [n for n in netrun.list_netns() if net.is_weft_netns(n)]
    pids: set[int] = set()
    for name in namespaces:
        pids.update(p for p in netrun.netns_pids(name) if procs.running(p))
    for pid, owner in procs.mesh_pids().items():
        owner_dir = StateDir(Path(owner)) if owner.startswith("/") else None
        if Path(owner) in dirs or owner_dir is None or not owner_dir.is_weft():
            pids.add(pid)
    for d in dirs:
        state = StateDir(d)
        for component in COMPONENTS:
            rec = procs.read_record(state.pid_path(component))
            if rec is not None and rec.alive():
                pids.add(rec.pid)
    return Leftovers(
        processes=tuple(sorted(pids)),
        netns=tuple(sorted(namespaces, key=lambda n: (n == net.NODE_NETNS, n))),
        etc_netns=tuple(_etc_netns(etc_netns)),
        routes=tuple(netrun.weft_host_routes()),
        state_dirs=tuple(sorted(d for d in dirs if StateDir(d).is_weft())),
        host_record=host_record.exists(),
    )


def remove(
    leftovers: Leftovers,
    *,
    grace: float = 0.0,
    host_record: Path = HOST_RECORD,
    etc_netns: Path = net.ETC_NETNS_DIR,
) -> list[str]:
    """Remove everything in ``leftovers``: processes first (SIGTERM and ``grace`` seconds, or
    straight SIGKILL with ``grace=0``), then namespaces (pods before the node), ``/etc/netns``
    entries, host routes, state directories and the host record. Returns what was removed;
    errors are collected, not raised, so one stuck item does not keep the rest."""
    removed: list[str] = []
    errors: list[str] = []
    if leftovers.processes:
        sig = signal.SIGTERM if grace > 0 else signal.SIGKILL
        procs.terminate(leftovers.processes, timeout=grace, sig=sig)
        removed.append(f"{len(leftovers.processes)} processes")
    for name in leftovers.netns:
        # processes that appeared since (a pod being started) must not keep a namespace alive
        stragglers = [p for p in netrun.netns_pids(name) if procs.running(p)]
        if stragglers:
            procs.terminate(stragglers, timeout=0.0, sig=signal.SIGKILL)
        try:
            netrun.run_plan(net.netns_delete_plan(name))
            removed.append(f"netns {name}")
        except net.NetError as exc:
            errors.append(str(exc))
    for name in _etc_netns(etc_netns):
        net.remove_pod_etc(name, etc_netns=etc_netns)
        removed.append(f"{etc_netns / name}")
    if net.remove_etc_netns_if_empty(etc_netns):
        removed.append(str(etc_netns))
    if leftovers.routes:
        try:
            netrun.run_plan(net.host_routes_delete_plan(leftovers.routes))
            removed += [f"route blackhole {r}" for r in leftovers.routes]
        except net.NetError as exc:
            errors.append(str(exc))
    for d in leftovers.state_dirs:
        if StateDir(d).remove():
            removed.append(f"state directory {d}")
    if host_record.exists():
        host_record.unlink(missing_ok=True)
        removed.append(str(host_record))
    if errors:
        raise CleanupError(removed, errors)
    return removed


class CleanupError(Exception):
    """Some leftovers could not be removed; ``removed`` lists what was."""

    def __init__(self, removed: list[str], errors: list[str]) -> None:
        self.removed = removed
        self.errors = errors
        super().__init__("could not remove everything: " + "; ".join(errors))
