"""``weft control --kubeconfig``: the control plane's controllers on the real API server.

The same API the proxies use (destinations over the control plane's socket, identity), served
from informers of a real cluster: a subscribed target follows the controller manager's
EndpointSlices and the Pods, a proxy's projected token is reviewed with TokenReview, and the
resource endpoints say to use kubectl.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.kube.conftest import Kube
from weft.control.client import ApiError, ControlClient
from weft.control.config import ControlConfig
from weft.control.incluster import ClusterControlPlane
from weft.identity import ca
from weft.identity.names import dns_identity, spiffe_id
from weft.testing import wait_until

pytestmark = pytest.mark.timeout(180)


async def kubectl(kube: Kube, *args: str, input: str | None = None) -> str:
    return await asyncio.to_thread(kube.kubectl, *args, input=input)


@pytest.fixture
async def plane(kube: Kube) -> AsyncIterator[ClusterControlPlane]:
    state = tempfile.mkdtemp(prefix="weft-cluster-", dir="/tmp")
    p = ClusterControlPlane(ControlConfig(state_dir=state, kubeconfig=str(kube.kubeconfig)))
    await p.start()
    try:
        yield p
    finally:
        await p.stop(grace=0.5)
        shutil.rmtree(state, ignore_errors=True)


async def test_destinations_and_identity_from_the_cluster(
    kube: Kube, plane: ClusterControlPlane
) -> None:
    ns = kube.namespace
    node = f"{ns}-node"
    await kubectl(
        kube,
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}),
    )
    try:
        await kubectl(kube, "create", "serviceaccount", "web", "-n", ns)
        docs: list[dict[str, Any]] = [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "namespace": ns},
                "spec": {
                    "selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 8080, "targetPort": 9000}],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "web-1", "namespace": ns, "labels": {"app": "web"}},
                "spec": {
                    "nodeName": node,
                    "serviceAccountName": "web",
                    "containers": [{"name": "app", "image": "app"}],
                },
            },
        ]
        await kubectl(
            kube,
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
        )
        status = {
            "phase": "Running",
            "podIP": "10.244.7.2",
            "podIPs": [{"ip": "10.244.7.2"}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        await kubectl(
            kube,
            "patch",
            "pod",
            "web-1",
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": status}),
        )
        client = ControlClient(plane.endpoint)
        seen: list[list[str]] = []

        async def follow() -> None:
            async for item in client.stream(f"/api/v1/destinations?target=web.{ns}:8080"):
                dest = item.get("destination") if isinstance(item, dict) else None
                if "destination" in item:
                    seen.append(
                        [
                            f"{e['address'][0]}:{e['address'][1]}"
                            if isinstance(e.get("address"), list)
                            else str(e.get("address"))
                            for e in (dest or {}).get("endpoints", [])
                        ]
                    )

        task = asyncio.get_running_loop().create_task(follow())
        try:
            await wait_until(
                lambda: bool(seen) and len(seen[-1]) == 1,
                within=60,
                what=f"the pod as an endpoint (seen {seen[-3:]})",
            )
            assert "10.244.7.2" in seen[-1][0] and "9000" in seen[-1][0]
        finally:
            task.cancel()
        # the proxy's identity, from a projected token reviewed by the API server
        uid = (
            await kubectl(kube, "get", "pod", "web-1", "-n", ns, "-o", "jsonpath={.metadata.uid}")
        ).strip()
        token = (
            await kubectl(
                kube,
                "create",
                "token",
                "web",
                "-n",
                ns,
                "--audience",
                "identity.weft.io",
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                "web-1",
                "--bound-object-uid",
                uid,
            )
        ).strip()
        csr = ca.make_csr(ca.new_key(), dns_identity(ns, "web"), spiffe_id(ns, "web")).decode()
        leaf = await client.call("POST", "/api/v1/identity/certify", {"token": token, "csr": csr})
        assert leaf["identity"] == dns_identity(ns, "web")
        # resources are the cluster's: kubectl's job
        with pytest.raises(ApiError) as info:
            await client.call("GET", "/api/v1/resources/Service")
        assert info.value.status == 404 and "kubectl" in str(info.value)
    finally:
        await kubectl(kube, "delete", "node", node, "--wait=false")
