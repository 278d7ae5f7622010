"""This machine as a cluster's Node: registered, its status kept and its heartbeat sent, as the
kubelet does it, so that the scheduler binds pods to it and the controllers see it alive.

:func:`node_object` and :func:`node_status` build the Node (sans-I/O): the name, the standard
labels (``kubernetes.io/hostname``, ``/os``, ``/arch``), ``spec.podCIDR(s)`` (the range the agent
gives pods addresses from), and a status with this machine's capacity (CPUs, memory, 110 pods),
the ``Ready`` condition and the pressure conditions, the node's address on the pod network
(``InternalIP``: the bridge's, which is also every pod's ``hostIP``), and ``nodeInfo`` naming Weft
as the runtime. :class:`NodeHeartbeat` creates the Node (keeping one that exists), writes the
status through the status subresource, renews the node's Lease in ``kube-node-lease`` every 10 s
(what the node lifecycle controller watches) and writes the status again every minute, retrying
with backoff while the API is away. On a clean stop it says ``Ready: False`` (the agent stopped
its pods), so nothing is scheduled to a node that is gone.

Not for: pods (:mod:`weft.runtime.local.agent`), nor scheduling (the cluster's scheduler).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import platform
from collections.abc import Callable
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Node

from weft import __version__
from weft.control.kube.client import merge_patch
from weft.core.backoff import ExponentialBackoff

log = logging.getLogger("weft.node")

LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40  # the kubelet's default
RENEW_S = 10.0
STATUS_S = 60.0
MAX_PODS = 110
AGENT_LABEL = "node.weft.io/agent"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def node_object(name: str, pod_cidr: str) -> dict[str, Any]:
    """The Node as the agent registers it."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": _arch(),
                AGENT_LABEL: "weft",
            },
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
    }


def _memory_kib() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 1024 * 1024


def node_status(name: str, address: str, *, ready: bool, now: str | None = None) -> dict[str, Any]:
    """The Node's status: capacity, conditions, addresses, nodeInfo."""
    now = now or _now()
    capacity = {"cpu": str(os.cpu_count() or 1), "memory": f"{_memory_kib()}Ki",
                "pods": str(MAX_PODS), "ephemeral-storage": "10Gi"}  # fmt: skip

    def condition(kind: str, status: bool, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": kind,
            "status": "True" if status else "False",
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }

    uname = os.uname()
    return {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            condition("MemoryPressure", False, "KubeletHasSufficientMemory", "enough memory"),
            condition("DiskPressure", False, "KubeletHasNoDiskPressure", "no disk pressure"),
            condition("PIDPressure", False, "KubeletHasSufficientPID", "enough PIDs"),
            condition(
                "Ready",
                ready,
                "KubeletReady" if ready else "KubeletNotReady",
                "weft node is running pods" if ready else "weft node stopped",
            ),
        ],
        "addresses": [
            {"type": "InternalIP", "address": address},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
            "kernelVersion": uname.release,
            "osImage": "Weft node agent",
            "containerRuntimeVersion": f"weft://{__version__}",
            "kubeletVersion": f"weft-{__version__}",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": _arch(),
        },
    }


class NodeHeartbeat:
    """Registers the node and keeps it alive (see the module docstring)."""

    def __init__(
        self,
        client: AsyncClient,
        name: str,
        *,
        address: str,
        pod_cidr: str,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.name = name
        self.address = address
        self.pod_cidr = pod_cidr
        self._sleep = sleep
        self.registered = asyncio.Event()
        self.last_error: str | None = None
        self._backoff = ExponentialBackoff(base=0.5, maximum=10.0, jitter=0.2)

    def __repr__(self) -> str:
        return f"<NodeHeartbeat {self.name} registered={self.registered.is_set()}>"

    async def register(self) -> None:
        """Create the Node (an existing one is kept: a restarted agent) and write its status."""
        try:
            await self.client.create(Node.from_dict(node_object(self.name, self.pod_cidr)))  # type: ignore[call-overload]
            log.info("registered node %s", self.name)
        except ApiError as exc:
            if exc.status.code != 409:
                raise
        await self.write_status(ready=True)
        self.registered.set()

    async def write_status(self, *, ready: bool) -> None:
        status = node_status(self.name, self.address, ready=ready)
        await merge_patch(self.client, Node.Status, self.name, None, {"status": status})

    async def renew_lease(self) -> None:
        now = dt.datetime.now(dt.UTC)
        try:
            lease = await self.client.get(Lease, self.name, namespace=LEASE_NAMESPACE)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            spec = LeaseSpec(holderIdentity=self.name, leaseDurationSeconds=LEASE_SECONDS,
                             renewTime=now)  # fmt: skip
            meta = ObjectMeta(name=self.name, namespace=LEASE_NAMESPACE)
            await self.client.create(Lease(metadata=meta, spec=spec))
            return
        if lease.spec is None:
            lease.spec = LeaseSpec()
        lease.spec.holderIdentity = self.name
        lease.spec.leaseDurationSeconds = LEASE_SECONDS
        lease.spec.renewTime = now
        await self.client.replace(lease)

    async def run(self) -> None:
        """Register, then renew every 10 s and write the status every minute, forever
        (cancelled when the agent stops); API failures are retried with backoff."""
        attempt = 0
        since_status = 0.0
        while True:
            try:
                if not self.registered.is_set():
                    await self.register()
                    since_status = 0.0
                await self.renew_lease()
                if since_status >= STATUS_S:
                    await self.write_status(ready=True)
                    since_status = 0.0
                attempt = 0
                self.last_error = None
                await self._sleep(RENEW_S)
                since_status += RENEW_S
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API away or refusing: said, and tried again
                if self.last_error != str(exc):
                    log.warning("node %s: cannot reach the API: %s", self.name, exc)
                self.last_error = str(exc)
                attempt += 1
                await self._sleep(self._backoff.delay(attempt))

    async def stopped(self) -> None:
        """The agent stopped its pods: the node is not ready (best effort, bounded)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.write_status(ready=False), 5.0)


__all__ = ["AGENT_LABEL", "NodeHeartbeat", "node_object", "node_status"]
