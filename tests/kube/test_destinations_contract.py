"""The destination service on a real cluster: the controller manager's EndpointSlices and the
Pods behind them, read through informers, reach a subscribed proxy's snapshot.

There is no kubelet in the rig: a test plays its part by writing the pods' status (address,
phase, Ready) through the status subresource, on a Node object of its own (the controller
manager leaves out pods whose node does not exist).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.kube.conftest import Cluster
from weft.control.destinations import DestinationService
from weft.control.kube.client import connect
from weft.control.kube.state import CORE_KINDS, KubeState
from weft.discovery import Destination
from weft.testing import wait_until

pytestmark = pytest.mark.timeout(180)


async def kubectl(kube: Cluster, *args: str, input: str | None = None) -> str:
    return await asyncio.to_thread(kube.kubectl, *args, input=input)


def pod(ns: str, name: str, node: str, *, meshed: bool = False) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [
        {
            "name": "app",
            "image": "app",
            "command": ["app"],
            "ports": [{"name": "http", "containerPort": 9000}],
        }
    ]
    if meshed:  # the proxy as the injector adds it: a sidecar with its admin port
        containers.append(
            {
                "name": "weft-proxy",
                "image": "weft",
                "command": ["weft", "proxy"],
                "ports": [{"name": "admin", "containerPort": 4191}],
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": containers},
    }


async def set_status(kube: Cluster, name: str, ip: str, *, ready: bool) -> None:
    status = {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    await kubectl(
        kube, "patch", "pod", name, "-n", kube.namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": status}),
    )  # fmt: skip


@contextlib.asynccontextmanager
async def node_of(kube: Cluster) -> AsyncIterator[str]:
    """A Node for the pods (the real controller manager leaves out pods whose node does not
    exist; the local mesh has one node and no Node objects)."""
    name = f"{kube.namespace}-node"
    if not kube.real:
        yield name
        return
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
    await kubectl(kube, "apply", "-f", "-", input=json.dumps(node))
    try:
        yield name
    finally:
        await kubectl(kube, "delete", "node", name, "--wait=false")


@contextlib.asynccontextmanager
async def cluster_state(kube: Cluster) -> AsyncIterator[KubeState]:
    state = KubeState(connect(kube.kubeconfig), CORE_KINDS, namespace=kube.namespace)
    state.start()
    try:
        await asyncio.wait_for(state.wait_synced(), 30)
        yield state
    finally:
        await state.stop()


def addresses(dest: Destination | None) -> list[str]:
    return [] if dest is None else [f"{e.address[0]}:{e.address[1]}" for e in dest.endpoints]


async def test_endpoint_slice_and_pod_changes_reach_a_subscribed_proxy(cluster: Cluster) -> None:
    kube = cluster
    ns = kube.namespace
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8080,
                                                        "targetPort": "http"}]},
    }  # fmt: skip
    async with node_of(kube) as node, cluster_state(kube) as state:
        destinations = DestinationService(state)
        latest: list[Destination | None] = []
        current, unsubscribe = destinations.subscribe(f"web.{ns}:8080", latest.append)
        assert current is None  # no such Service yet
        docs = [service, pod(ns, "web-1", node, meshed=True), pod(ns, "web-2", node)]
        await kubectl(kube, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1",
                      "kind": "List", "items": docs}))  # fmt: skip
        await set_status(kube, "web-1", "10.244.9.2", ready=True)
        await set_status(kube, "web-2", "10.244.9.3", ready=True)

        def now() -> list[str]:
            return addresses(latest[-1]) if latest else []

        await wait_until(
            lambda: now() == ["10.244.9.2:9000", "10.244.9.3:9000"],
            within=60,
            what=f"both pods as endpoints (have {now()})",
        )
        dest = latest[-1]
        assert dest is not None
        first, second = dest.endpoints
        assert dict(first.labels) == {"pod": "web-1", "namespace": ns, "serviceaccount": "default"}
        assert (
            first.meshed and first.identity == f"default.{ns}.serviceaccount.identity.cluster.local"
        )
        assert not second.meshed and second.identity is None
        # not Ready any more: out; deleted: out
        await set_status(kube, "web-2", "10.244.9.3", ready=False)
        await wait_until(lambda: now() == ["10.244.9.2:9000"], within=60, what="web-2 out")
        await kubectl(kube, "delete", "pod", "web-1", "-n", ns, "--grace-period=0", "--force")
        await wait_until(lambda: now() == [], within=60, what=f"web-1 out (have {now()})")
        # a direct call to a ready pod's address resolves to that pod
        await set_status(kube, "web-2", "10.244.9.3", ready=True)
        await wait_until(lambda: now() == ["10.244.9.3:9000"], within=60, what="web-2 back")
        direct = destinations.resolve("10.244.9.3:9000")
        assert direct is not None and [e.labels["pod"] for e in direct.endpoints] == ["web-2"]
        unsubscribe()
        destinations.close()
