"""Informers against the real upstream API server (the rig) and the embedded one: list, watch,
resume, 410, bookmarks, outages.

Each test has a namespace of its own (the ``cluster`` fixture runs it against both servers; the
``kube`` fixture, the real one only). Objects are written with ``kubectl``, so what the informer
sees is what a cluster's other clients do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube.resources.core_v1 import Pod, PodTemplate, Service
from lightkube.resources.discovery_v1 import EndpointSlice

from tests.kube.conftest import Cluster, Kube
from weft.control.kube.client import connect
from weft.control.kube.informer import Informer
from weft.core.informer import Change
from weft.testing import wait_until

pytestmark = pytest.mark.timeout(180)


def by_service(slice_: Any) -> list[str]:
    labels = slice_["metadata"].get("labels") or {}
    name = labels.get("kubernetes.io/service-name")
    return [name] if name else []


def slice_manifest(ns: str, name: str, service: str, ips: list[str]) -> str:
    return json.dumps(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": [ip], "conditions": {"ready": True, "serving": True}} for ip in ips
            ],
        }
    )


@contextlib.asynccontextmanager
async def running(informer: Any) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.get_running_loop().create_task(informer.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def kubectl(kube: Cluster, *args: str, input: str | None = None) -> str:
    return await asyncio.to_thread(kube.kubectl, *args, input=input)


async def service(kube: Cluster, name: str) -> None:
    """A Service selecting ``app: <name>`` (applied: ``kubectl create service`` sends protobuf,
    which the embedded API does not read)."""
    doc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": kube.namespace},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    await kubectl(kube, "apply", "-f", "-", input=json.dumps(doc))


async def test_endpoint_slices_are_listed_watched_and_indexed_by_service(cluster: Cluster) -> None:
    kube = cluster
    ns = kube.namespace
    await kubectl(
        kube, "apply", "-f", "-", input=slice_manifest(ns, "web-a", "web", ["10.244.0.5"])
    )
    changes: list[Change[Any]] = []
    informer: Informer = Informer(
        connect(kube.kubeconfig),
        EndpointSlice,
        namespace=ns,
        indexers={"service": by_service},
        on_change=changes.append,
    )
    async with running(informer):
        await asyncio.wait_for(informer.synced.wait(), 30)
        assert [s["metadata"]["name"] for s in informer.cache.by_index("service", "web")] == [
            "web-a"
        ]
        assert [(c.kind, c.key) for c in changes] == [("added", f"{ns}/web-a")]
        # a second slice of the same Service, then a change, then a delete: in order
        await kubectl(
            kube, "apply", "-f", "-", input=slice_manifest(ns, "web-b", "web", ["10.244.0.6"])
        )
        await kubectl(
            kube, "apply", "-f", "-",
            input=slice_manifest(ns, "web-a", "web", ["10.244.0.5", "10.244.0.7"]),
        )  # fmt: skip
        await kubectl(kube, "delete", "endpointslice", "web-b", "-n", ns)
        await wait_until(lambda: len(changes) >= 4, within=30, what="four changes")
        assert [(c.kind, c.key) for c in changes] == [
            ("added", f"{ns}/web-a"),
            ("added", f"{ns}/web-b"),
            ("updated", f"{ns}/web-a"),
            ("deleted", f"{ns}/web-b"),
        ]
        (only,) = informer.cache.by_index("service", "web")
        assert sorted(a for e in only["endpoints"] for a in e["addresses"]) == [
            "10.244.0.5",
            "10.244.0.7",
        ]
        assert informer.lists == 1 and informer.failures == 0


async def test_services_get_their_slice_from_the_controller_manager(cluster: Cluster) -> None:
    """The EndpointSlice controller (the rig's, or the local mesh's) makes a slice for a new
    Service, with no endpoints yet."""
    kube = cluster
    ns = kube.namespace
    slices: Informer = Informer(
        connect(kube.kubeconfig), EndpointSlice, namespace=ns, indexers={"service": by_service}
    )
    services: Informer = Informer(connect(kube.kubeconfig), Service, namespace=ns)
    async with running(slices), running(services):
        await service(kube, "api")
        await wait_until(lambda: f"{ns}/api" in services.cache, within=30, what="the Service")
        await wait_until(
            lambda: slices.cache.by_index("service", "api"), within=60, what="its EndpointSlice"
        )
        (placeholder,) = slices.cache.by_index("service", "api")
        assert not placeholder.get("endpoints")


async def test_a_restarted_informer_resumes_from_its_version(cluster: Cluster) -> None:
    kube = cluster
    ns = kube.namespace
    await service(kube, "one")
    changes: list[Change[Any]] = []
    informer = Informer(connect(kube.kubeconfig), Service, namespace=ns, on_change=changes.append)
    async with running(informer):
        await asyncio.wait_for(informer.synced.wait(), 30)
    # changes while it is stopped reach it from the watch, with no second list
    await service(kube, "two")
    await kubectl(kube, "delete", "service", "one", "-n", ns)
    async with running(informer):
        await wait_until(
            lambda: {c.key for c in changes if c.kind == "deleted"} == {f"{ns}/one"},
            within=30,
            what="the delete made while stopped",
        )
    assert f"{ns}/two" in informer.cache and f"{ns}/one" not in informer.cache
    assert informer.lists == 1


def pod_template(ns: str, name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": name, "namespace": ns},
            "template": {"spec": {"containers": [{"name": "app", "image": "app"}]}},
        }
    )


async def compacted(kube: Kube) -> bool:
    """Whether a PodTemplate watch from version 1 is refused with 410 yet (the rig compacts
    every 10 s and does not cache PodTemplate watches: scripts/k8s-rig.d/run.sh)."""
    from lightkube import ApiError

    from weft.control.kube.client import watch

    client = connect(kube.kubeconfig)
    try:
        async with asyncio.timeout(5):
            async for _ in watch(client, PodTemplate, resource_version="1", timeout_s=1):
                return False
    except ApiError as e:
        return getattr(e.status, "code", None) == 410
    except TimeoutError:
        return False
    return False


async def test_a_version_the_server_no_longer_has_means_a_new_list(kube: Kube) -> None:
    """410 Gone: the informer lists again, and the changes it missed come out of the list,
    the delete of what disappeared included."""
    ns = kube.namespace
    for _ in range(60):
        if await compacted(kube):
            break
        await asyncio.sleep(1)
    else:
        raise AssertionError("the rig never compacted version 1 away (60 s)")
    for name in ("keep", "lost"):
        await kubectl(kube, "apply", "-f", "-", input=pod_template(ns, name))
    changes: list[Change[Any]] = []
    informer: Informer = Informer(
        connect(kube.kubeconfig), PodTemplate, namespace=ns, on_change=changes.append
    )
    async with running(informer):
        await asyncio.wait_for(informer.synced.wait(), 30)
    await kubectl(kube, "delete", "podtemplate", "lost", "-n", ns)
    await kubectl(kube, "apply", "-f", "-", input=pod_template(ns, "new"))
    changes.clear()
    # as after a long outage: a version compacted away long ago
    informer.cache.resource_version = "1"
    async with running(informer):
        await wait_until(
            lambda: informer.lists == 2, within=30, what=f"a second list ({informer.last_error})"
        )
        await wait_until(lambda: len(changes) >= 2, within=10, what="the missed changes")
    assert informer.relists_gone == 1
    assert sorted((c.kind, c.key) for c in changes) == [
        ("added", f"{ns}/new"),
        ("deleted", f"{ns}/lost"),
    ]
    assert sorted(informer.cache) == [f"{ns}/keep", f"{ns}/new"]


async def test_bookmarks_keep_a_quiet_pod_watch_current(cluster: Cluster) -> None:
    """A watch that sees no events still moves its version forward (the server's bookmarks,
    about once a minute on the real one), so a reconnect after a while needs no new list. Pods:
    their bookmarks carry a ``null`` ``spec.containers`` that lightkube's own watch fails to
    decode."""
    kube = cluster
    ns = kube.namespace
    informer = Informer(connect(kube.kubeconfig), Pod, namespace=ns, labels={"app": "none"})
    async with running(informer):
        await asyncio.wait_for(informer.synced.wait(), 30)
        listed = informer.cache.resource_version
        # a pod the selector leaves out moves the pods' version; only a bookmark can tell
        for _ in range(60 if kube.real else 0):  # its ServiceAccount first (the controller
            if await kubectl(kube, "get", "serviceaccount", "-n", ns, "-o", "name"):  # makes it)
                break
            await asyncio.sleep(1)
        other = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "other", "namespace": ns},
            "spec": {"containers": [{"name": "app", "image": "app", "command": ["app"]}]},
        }
        await kubectl(kube, "apply", "-f", "-", input=json.dumps(other))
        await wait_until(
            lambda: informer.cache.resource_version != listed,
            within=120,  # the API server sends one a minute
            interval=0.5,
            what=f"a bookmark ({informer.last_error})",
        )
        assert len(informer.cache) == 0 and informer.lists == 1 and informer.failures == 0


async def test_a_handler_that_fails_does_not_stop_the_informer(cluster: Cluster) -> None:
    kube = cluster
    ns = kube.namespace
    seen: list[str] = []

    def handler(change: Change[Any]) -> None:
        seen.append(change.key)
        raise RuntimeError("a controller bug")

    informer = Informer(connect(kube.kubeconfig), Service, namespace=ns, on_change=handler)
    async with running(informer) as task:
        await asyncio.wait_for(informer.synced.wait(), 30)
        await service(kube, "a")
        await service(kube, "b")
        await wait_until(lambda: len(seen) >= 2, within=30, what="both changes")
        assert not task.done()


async def test_an_api_server_outage_keeps_the_cache_and_the_informer_catches_up(
    cluster: Cluster,
) -> None:
    """The API server stopped: the informer keeps serving what it had and keeps trying (with
    backoff); started again, the changes made after it came back reach the cache."""
    kube = cluster
    ns = kube.namespace
    await service(kube, "before")
    changes: list[Change[Any]] = []
    informer = Informer(connect(kube.kubeconfig), Service, namespace=ns, on_change=changes.append)
    async with running(informer) as task:
        await asyncio.wait_for(informer.synced.wait(), 30)
        async with kube.outage():
            await wait_until(lambda: informer.failures >= 2, within=60, what="failed retries")
            assert not informer.connected and not task.done()
            assert f"{ns}/before" in informer.cache  # the last state, still served
        await service(kube, "after")
        await kubectl(kube, "delete", "service", "before", "-n", ns)
        await wait_until(
            lambda: f"{ns}/after" in informer.cache and f"{ns}/before" not in informer.cache,
            within=90,
            what=f"the changes after the outage: {sorted(informer.cache)} ({informer.last_error})",
        )
        assert informer.connected
    assert [(c.kind, c.key) for c in changes][-2:] == [
        ("added", f"{ns}/after"),
        ("deleted", f"{ns}/before"),
    ]
