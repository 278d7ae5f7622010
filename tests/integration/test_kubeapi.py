"""The embedded Kubernetes API over a real socket: what clients rely on beyond the contract
tests (tests/kube): Status errors with reasons and causes, conflicts, limits, pages, selector
watches, the 410 of a forgotten version (and an informer's new list), graceful namespace
deletion, and who may use the root-only socket and the TLS port."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.resources.core_v1 import Service
from lightkube.types import PatchType

from weft.control.config import ControlConfig
from weft.control.kube.informer import Informer
from weft.control.kubeapi.server import MAX_OBJECT_BYTES
from weft.control.server import ControlPlane
from weft.runtime.local import kubepki
from weft.runtime.local.kubeport import KubePort
from weft.testing import wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    state = tempfile.mkdtemp(prefix="weft-kapi-", dir="/tmp")
    p = ControlPlane(
        ControlConfig(
            state_dir=state,
            scrape_interval=3600.0,
            http_listen=("127.0.0.1", 0),
            watch_bookmark_s=0.5,
        )
    )
    await p.start()
    try:
        yield p
    finally:
        await p.stop(grace=0.5)
        shutil.rmtree(state, ignore_errors=True)


def port_of(p: ControlPlane) -> int:
    assert p.tcp_address is not None
    return p.tcp_address[1]


async def call(
    p: ControlPlane,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    def go() -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(p), timeout=10)
        data = (
            body
            if isinstance(body, bytes)
            else (None if body is None else json.dumps(body).encode())
        )
        conn.request(method, path, body=data, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw

    return await asyncio.to_thread(go)


def client(p: ControlPlane) -> AsyncClient:
    config = KubeConfig.from_dict(
        {
            "clusters": [{"name": "w", "cluster": {"server": f"http://127.0.0.1:{port_of(p)}"}}],
            "users": [{"name": "w", "user": {}}],
            "contexts": [{"name": "w", "context": {"cluster": "w", "user": "w"}}],
            "current-context": "w",
        }
    )
    return AsyncClient(config)


def svc(name: str, ns: str = "default", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80}]},
    }


async def test_errors_are_statuses_with_reasons(plane: ControlPlane) -> None:
    base = "/api/v1/namespaces/default/services"
    code, body = await call(plane, "GET", f"{base}/nope")
    assert (code, body["kind"], body["reason"]) == (404, "Status", "NotFound")
    assert body["message"] == 'services "nope" not found'
    assert (await call(plane, "POST", base, svc("web")))[0] == 201
    code, body = await call(plane, "POST", base, svc("web"))
    assert (code, body["reason"]) == (409, "AlreadyExists")
    bad = svc("bad")
    bad["spec"]["ports"] = [{"port": 70000}]
    bad["spec"]["bogus"] = 1
    code, body = await call(plane, "POST", base, bad)
    assert (code, body["reason"]) == (422, "Invalid")
    fields = {c["field"] for c in body["details"]["causes"]}
    assert fields == {"spec.ports[0].port", "spec.bogus"}
    # a replace from an old version is a conflict
    code, current = await call(plane, "GET", f"{base}/web")
    old = current["metadata"]["resourceVersion"]
    current["metadata"]["labels"] = {"v": "2"}
    assert (await call(plane, "PUT", f"{base}/web", current))[0] == 200
    current["metadata"]["resourceVersion"] = old
    code, body = await call(plane, "PUT", f"{base}/web", current)
    assert (code, body["reason"]) == (409, "Conflict")
    # limits and media types
    code, body = await call(plane, "POST", base, b"x" * (MAX_OBJECT_BYTES + 1))
    assert (code, body["reason"]) == (413, "RequestEntityTooLarge")
    code, body = await call(plane, "POST", base, b"\x0a\x00", "application/vnd.kubernetes.protobuf")
    assert (code, body["reason"]) == (415, "UnsupportedMediaType")
    code, body = await call(plane, "PATCH", f"{base}/web", {"a": 1}, "application/apply-patch+yaml")
    assert code == 415 and "server-side apply" in body["message"]
    code, body = await call(plane, "GET", f"{base}?labelSelector=a%20in%20b")
    assert (code, body["reason"]) == (400, "BadRequest")
    code, body = await call(plane, "GET", "/apis/apps/v9/deployments")
    assert code == 404


async def test_lists_page_and_selectors_narrow(plane: ControlPlane) -> None:
    c = client(plane)
    for i in range(7):
        await c.create(Service.from_dict(svc(f"s{i}", tier="a" if i % 2 else "b")))
    names = [s.metadata.name async for s in c.list(Service, namespace="default", chunk_size=3)]
    assert names == [f"s{i}" for i in range(7)]
    odd = [s.metadata.name async for s in c.list(Service, namespace="*", labels={"tier": "a"})]
    assert odd == ["s1", "s3", "s5"]
    code, body = await call(plane, "GET", "/api/v1/services?limit=3")
    assert len(body["items"]) == 3 and body["metadata"]["remainingItemCount"] == 4
    code, body = await call(plane, "GET", "/api/v1/services?continue=garbage")
    assert code == 400


async def test_a_selector_watch_sees_objects_enter_and_leave(plane: ControlPlane) -> None:
    c = client(plane)
    await c.create(Service.from_dict(svc("web", tier="a")))
    events: list[tuple[str, str]] = []

    async def watch() -> None:
        async for type_, obj in c.watch(Service, namespace="default", labels={"tier": "a"}):
            events.append((type_, obj.metadata.name))

    task = asyncio.get_running_loop().create_task(watch())
    try:
        await wait_until(lambda: events == [("ADDED", "web")], within=5, what="the initial object")
        await c.patch(
            Service,
            "web",
            {"metadata": {"labels": {"tier": "b"}}},
            namespace="default",
            patch_type=PatchType.MERGE,
        )
        await wait_until(lambda: events[-1:] == [("DELETED", "web")], within=5, what="it left")
        await c.patch(
            Service,
            "web",
            {"metadata": {"labels": {"tier": "a"}}},
            namespace="default",
            patch_type=PatchType.MERGE,
        )
        await wait_until(lambda: events[-1:] == [("ADDED", "web")], within=5, what="it is back")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_forgotten_version_is_410_and_the_informer_lists_again(plane: ControlPlane) -> None:
    c = client(plane)
    await c.create(Service.from_dict(svc("keep")))
    informer = Informer(c, Service, namespace="default")
    task = asyncio.get_running_loop().create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # more changes than the store remembers, while nobody watches
    for n in range(4200):
        plane.store.put_status("Service", "default", "keep", {"n": n})
    await c.create(Service.from_dict(svc("new")))
    code, _ = await call(
        plane,
        "GET",
        f"/api/v1/services?watch=1&resourceVersion={informer.cache.resource_version}&timeoutSeconds=1",
    )
    assert code == 200  # the API server's answer: 200, then an ERROR event with the 410
    task = asyncio.get_running_loop().create_task(informer.run())
    try:
        await wait_until(
            lambda: informer.relists_gone == 1 and "default/new" in informer.cache,
            within=10,
            what="a new list after 410",
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_deleted_namespace_terminates_then_goes(plane: ControlPlane) -> None:
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    assert (await call(plane, "POST", "/api/v1/namespaces", ns))[0] == 201
    assert (await call(plane, "POST", "/api/v1/namespaces/shop/services", svc("web", "shop")))[
        0
    ] == 201
    code, body = await call(plane, "DELETE", "/api/v1/namespaces/shop")
    assert code == 200 and body["status"]["phase"] == "Terminating"
    code, body = await call(plane, "POST", "/api/v1/namespaces/shop/services", svc("api", "shop"))
    assert code == 422 and "being terminated" in body["message"]
    assert (await call(plane, "DELETE", "/api/v1/namespaces/shop/services/web"))[0] == 200
    await wait_until(
        lambda: plane.store.get("Namespace", None, "shop") is None,
        within=10,
        what="the namespace gone",
    )


async def test_a_deployment_gets_replicasets_and_pods_whose_deletion_is_graceful(
    plane: ControlPlane,
) -> None:
    """kube-controller-manager's part, through the API: Deployment -> ReplicaSet -> Pods; a pod
    a node runs is deleted gracefully (DeleteOptions or the query), then for good with 0."""
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "w", "command": ["x"]}]},
            },
        },
    }
    assert (await call(plane, "POST", "/apis/apps/v1/namespaces/default/deployments", dep))[
        0
    ] == 201
    await wait_until(
        lambda: len(plane.store.list("Pod", "default")) == 2, within=5, what="two pods"
    )
    code, rs_list = await call(plane, "GET", "/apis/apps/v1/namespaces/default/replicasets")
    assert code == 200 and [rs["spec"]["replicas"] for rs in rs_list["items"]] == [2]
    first, second = (p["metadata"]["name"] for p in plane.store.list("Pod", "default"))
    path = "/api/v1/namespaces/default/pods/"
    status = {"status": {"phase": "Running", "hostIP": "10.244.0.1"}}
    code, _ = await call(plane, "PATCH", path + first + "/status", status,
                         "application/merge-patch+json")  # fmt: skip
    assert code == 200
    code, body = await call(plane, "DELETE", path + first, {"gracePeriodSeconds": 7})
    assert code == 200 and body["metadata"]["deletionGracePeriodSeconds"] == 7
    assert plane.store.get("Pod", "default", first) is not None  # its node stops it first
    code, body = await call(plane, "DELETE", path + first, {"gracePeriodSeconds": -1})
    assert code == 400 and "gracePeriodSeconds" in body["message"]
    assert (await call(plane, "DELETE", path + first + "?gracePeriodSeconds=0"))[0] == 200
    assert plane.store.get("Pod", "default", first) is None
    # a pod no node has started goes at once
    assert (await call(plane, "DELETE", path + second))[0] == 200
    assert plane.store.get("Pod", "default", second) is None
    # the ReplicaSet replaces both
    await wait_until(
        lambda: len(plane.store.list("Pod", "default")) == 2, within=5, what="replacements"
    )


async def test_the_tls_port_wants_the_admin_certificate(
    plane: ControlPlane, tmp_path: Path
) -> None:
    port = KubePort(("127.0.0.1", 0), Path(plane.config.state_dir) / "kube.sock", tmp_path / "kube")
    assert await port.start()
    assert port._server is not None
    number = port._server.sockets[0].getsockname()[1]
    pki = kubepki.KubePki(tmp_path / "kube")
    try:

        def get(with_cert: bool) -> int:
            ctx = ssl.create_default_context(cafile=str(pki.ca))
            if with_cert:
                ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
            conn = http.client.HTTPSConnection("127.0.0.1", number, context=ctx, timeout=10)
            conn.request("GET", "/api/v1/namespaces")
            status = conn.getresponse().status
            conn.close()
            return status

        assert await asyncio.to_thread(get, True) == 200
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            await asyncio.to_thread(get, False)
    finally:
        await port.close()


async def test_delete_options_are_checked(plane: ControlPlane) -> None:
    path = "/api/v1/namespaces/default/services/web"
    assert (await call(plane, "POST", "/api/v1/namespaces/default/services", svc("web")))[0] == 201
    code, body = await call(plane, "DELETE", path, {"propagationPolicy": "Sideways"})
    assert code == 400 and "propagationPolicy must be one of" in body["message"]
    code, body = await call(plane, "DELETE", path, b"[1]")
    assert code == 400 and "must be an object" in body["message"]
    code, _ = await call(plane, "DELETE", path + "?propagationPolicy=Orphan")
    assert code == 200 and plane.store.get("Service", "default", "web") is None
