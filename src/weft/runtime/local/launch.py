"""How a pod's processes are started and checked on this node: the seams of
:class:`~weft.runtime.local.pod.PodRunner` and their network-namespace implementations.

- :class:`NetnsLauncher`: a container's argv inside the pod's network namespace (``ip netns
  exec``, which also bind-mounts the pod's hosts file), as its user (:mod:`weft.runtime.local.
  users`), the sidecar as the proxy's uid, every process with ``PR_SET_PDEATHSIG``;
- :class:`NetnsProbes`: the proxy's ``/ready`` and the apps' readiness probes, as the kubelet
  runs them;
- :func:`base_env`: the environment every pod process starts from.

Not for: supervising the processes (:mod:`weft.runtime.local.pod`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from weft.runtime.local import net, netrun, users
from weft.runtime.local.podplan import Probe
from weft.runtime.local.procs import MESH_ENV
from weft.runtime.local.users import RunAs

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Launcher(Protocol):
    """How a container's argv becomes a process's argv (namespace entry, user, parent-death)."""

    def wrap(self, argv: Sequence[str], *, proxy: bool, user: RunAs | None = None) -> list[str]:
        """``user``: an app container's (None: as this process)."""
        ...


class Probes(Protocol):
    """Readiness checks of one pod, wherever it runs."""

    async def proxy_ready(self) -> bool: ...

    async def check(self, probe: Probe) -> bool: ...


@dataclass(frozen=True, slots=True)
class NetnsLauncher:
    """Runs containers inside network namespace ``netns`` with ``ip netns exec``; the sidecar
    as ``proxy_uid`` with only CAP_DAC_OVERRIDE (to read a virtualenv and the control socket
    wherever they are), an app as its ``user`` (:func:`weft.runtime.local.users.app_argv`:
    Weft's ``python`` made reachable with the ``reach`` plan, by default computed for it),
    every process with ``PR_SET_PDEATHSIG=KILL``. ``netns=None`` runs in this process's
    namespace (how the unit tests run real processes without root)."""

    netns: str | None
    proxy_uid: int | None = net.PROXY_UID
    python: str = sys.executable
    reach: tuple[tuple[str, str], ...] | None = None

    def wrap(self, argv: Sequence[str], *, proxy: bool, user: RunAs | None = None) -> list[str]:
        out: list[str] = []
        if self.netns is not None:
            out += ["ip", "netns", "exec", self.netns]
        if not proxy:
            reach = users.python_reach(self.python) if self.reach is None else self.reach
            return out + users.app_argv(argv, user, python=self.python, reach=reach)
        out += ["setpriv"]
        if proxy and self.proxy_uid is not None:
            uid = str(self.proxy_uid)
            out += [
                "--reuid", uid, "--regid", uid, "--clear-groups",
                "--inh-caps=-all,+dac_override", "--ambient-caps=+dac_override",
                "--bounding-set=-all,+dac_override", "--no-new-privs",
            ]  # fmt: skip
        out += ["--pdeathsig=KILL", "--", *argv]
        return out


@dataclass(frozen=True, slots=True)
class NetnsProbes:
    """Probes as the kubelet runs them: the proxy's ``/ready`` on ``ip:4191`` from ``probe_netns``
    (the node namespace), app probes on ``ip:port`` from inside the pod (over loopback, so not
    redirected to the proxy)."""

    pod_netns: str | None
    ip: str
    probe_netns: str | None
    admin_port: int = net.PROXY_ADMIN_PORT

    async def proxy_ready(self) -> bool:
        return await netrun.http_probe(self.probe_netns, self.ip, self.admin_port, "/ready")

    async def check(self, probe: Probe) -> bool:
        if probe.kind == "http":
            return await netrun.http_probe(
                self.pod_netns, self.ip, probe.port, probe.path, time_limit=probe.timeout
            )
        return await netrun.tcp_probe(self.pod_netns, self.ip, probe.port, time_limit=probe.timeout)


def base_env(*, state_dir: str, python: str) -> dict[str, str]:
    """The environment every pod process starts from (Kubernetes containers do not inherit the
    node's): a PATH that finds this Python first, so ``python -m ...`` commands run in Weft's
    environment, and the mesh marker cleanup uses to find stray processes."""
    bindir = os.path.dirname(python)
    return {
        "PATH": f"{bindir}:{SYSTEM_PATH}",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        MESH_ENV: state_dir,
    }
