"""The real API server stopped and started under load: the proxies keep serving, and after it
comes back an endpoint change reaches them with no failed request.

``weft control --kubeconfig`` (in this process) reads the rig's API; two proxies follow it
through the control plane's socket and carry a steady load to three backends listening on
addresses the test puts on the loopback interface for its duration (192.0.2.0/24, a range for
documentation that nothing routes; EndpointSlices refuse 127.0.0.0/8). There is no kubelet: the
test writes the pods' status. The
API server is stopped for several seconds (the informers keep their caches and retry), started
again, and the pods replaced by two new ones: every proxy must converge, and no request may fail
at any moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.integration.test_control_chaos import Load, endpoint_ips
from tests.kube.conftest import Kube
from weft.control.config import ControlConfig
from weft.control.follow import ControlStreams
from weft.control.incluster import ClusterControlPlane
from weft.metrics import ProxyMetrics
from weft.proxy.config import ProxyConfig
from weft.proxy.control_discovery import ControlDiscovery
from weft.proxy.server import ProxyServer, configure
from weft.testing.servers import Backend, Request, Response

pytestmark = pytest.mark.timeout(300)
CONVERGE = 30.0  # the controller manager's slice, then the informer, then the stream


NET = "192.0.2"


@contextlib.contextmanager
def on_loopback(addresses: list[str]) -> Iterator[None]:
    """``addresses`` on ``lo`` for the block (removed after, whatever happens)."""
    added = []
    try:
        for a in addresses:
            subprocess.run(["ip", "addr", "add", f"{a}/32", "dev", "lo"], check=True)
            added.append(a)
        yield
    finally:
        for a in added:
            subprocess.run(["ip", "addr", "del", f"{a}/32", "dev", "lo"], check=False)


async def kubectl(kube: Kube, *args: str, input: str | None = None) -> str:
    return await asyncio.to_thread(kube.kubectl, *args, input=input)


async def running_pod(kube: Kube, name: str, ip: str, node: str) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": kube.namespace, "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app"}]},
    }
    await kubectl(kube, "apply", "-f", "-", input=json.dumps(doc))
    status = {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    await kubectl(
        kube,
        "patch",
        "pod",
        name,
        "-n",
        kube.namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


@contextlib.asynccontextmanager
async def cluster_plane(kube: Kube) -> AsyncIterator[ClusterControlPlane]:
    state = tempfile.mkdtemp(prefix="weft-outage-", dir="/tmp")
    plane = ClusterControlPlane(ControlConfig(state_dir=state, kubeconfig=str(kube.kubeconfig)))
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop(grace=0.5)
        shutil.rmtree(state, ignore_errors=True)


async def test_an_api_server_outage_under_load_fails_no_request(kube: Kube) -> None:
    with on_loopback([f"{NET}.{i}" for i in (2, 3, 4, 5, 6)]):
        await outage_under_load(kube)


async def outage_under_load(kube: Kube) -> None:
    ns = kube.namespace
    node = f"{ns}-node"
    target = (f"web.{ns}.svc.cluster.local", 8080)

    def ok(_req: Request) -> Response:
        return Response(200, body=b"ok\n")

    first = await Backend(ok, host=f"{NET}.2").start()
    backends = {2: first}
    for i in (3, 4, 5, 6):
        backends[i] = await Backend(ok, host=f"{NET}.{i}", port=first.port).start()
    await kubectl(
        kube,
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}),
    )
    proxies: list[ProxyServer] = []
    discoveries: list[ControlDiscovery] = []
    load: Load | None = None
    try:
        service: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "selector": {"app": "web"},
                "ports": [{"port": 8080, "targetPort": first.port}],
            },
        }
        await kubectl(kube, "apply", "-f", "-", input=json.dumps(service))
        for i in (1, 2, 3):
            await running_pod(kube, f"web-{i}", f"{NET}.{i + 1}", node)
        async with cluster_plane(kube) as plane:
            for _ in range(2):
                streams = ControlStreams()
                disc = ControlDiscovery(plane.endpoint, streams=streams)
                proxy = ProxyServer(
                    ProxyConfig(
                        outbound=("127.0.0.1", 0),
                        inbound=None,
                        admin=("127.0.0.1", 0),
                        outbound_target=target,
                        shutdown_grace=1.0,
                    ),
                    metrics=ProxyMetrics(process=False),
                    discovery=disc,
                    control_streams=streams,
                )
                configure(proxy)
                await proxy.start()
                proxies.append(proxy)
                discoveries.append(disc)
            load = Load(proxies)  # the proxies resolve the target at their first request
            load.start()
            want = {f"{NET}.2", f"{NET}.3", f"{NET}.4"}
            deadline = time.monotonic() + CONVERGE
            while not all(endpoint_ips(d, target) == want for d in discoveries):
                assert time.monotonic() < deadline, (
                    f"proxies never resolved the service: the control plane has "
                    f"{plane.destinations.resolve(f'{target[0]}:{target[1]}')}, slices "
                    f"{plane.state.list('EndpointSlice', ns)}; the proxies "
                    f"{[sorted(endpoint_ips(d, target)) for d in discoveries]}"
                )
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            async with kube.outage():
                await asyncio.sleep(5.0)  # the proxies serve the last state meanwhile
                failing = [i for i in plane.state.informers.values() if i.failures]
                assert failing, "no informer noticed the outage"
            # back: a rolling update; the old backends stay up until every proxy has seen it
            await running_pod(kube, "web-4", f"{NET}.5", node)
            await running_pod(kube, "web-5", f"{NET}.6", node)
            for i in (1, 2, 3):
                await kubectl(
                    kube, "delete", "pod", f"web-{i}", "-n", ns, "--grace-period=0", "--force"
                )
            changed = time.monotonic()
            want = {f"{NET}.5", f"{NET}.6"}
            while not all(endpoint_ips(d, target) == want for d in discoveries):
                took = time.monotonic() - changed
                assert took < CONVERGE, f"not converged after {took:.1f}s: " + str(
                    [sorted(endpoint_ips(d, target)) for d in discoveries]
                )
                await asyncio.sleep(0.05)
            for i in (2, 3, 4):
                await backends[i].stop()
            await asyncio.sleep(1.0)
            await load.finish()
            assert load.failures() == [], "failed requests"
            assert len(load.outcomes) > 300  # the load really ran throughout
            assert len(backends[5].requests) + len(backends[6].requests) > 0
    finally:
        if load is not None:
            with contextlib.suppress(Exception):
                await load.finish()
        for proxy in proxies:
            await proxy.shutdown(grace=0.2)
        for b in backends.values():
            with contextlib.suppress(Exception):
                await b.stop()
        await kubectl(kube, "delete", "node", node, "--wait=false")
