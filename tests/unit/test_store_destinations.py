"""Unit tests for the destination service: store state -> Destination snapshots and changes."""

from __future__ import annotations

import itertools
from typing import Any

from weft.control.destinations import DestinationService, resolve
from weft.control.store import Store
from weft.discovery import Destination, Endpoint
from weft.runtime.local import net
from weft.testing.clock import FakeClock
from weft.testing.cluster import cluster_of


def make_store() -> Store:
    counter = itertools.count(1)
    return Store(clock=FakeClock(1_700_000_000.0), uid=lambda: f"uid-{next(counter)}")


def svc(name: str = "web", namespace: str = "default", **port: Any) -> dict[str, Any]:
    p = {"name": "http", "port": 8080, "targetPort": "http", **port}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": name}, "ports": [p]},
    }


def pod(
    name: str,
    ip: str,
    *,
    app: str = "web",
    namespace: str = "default",
    ready: bool = True,
    meshed: bool = True,
) -> dict[str, Any]:
    annotations = {"weft.io/deployment": app}
    if meshed:
        annotations["weft.io/proxy-admin"] = f"{ip}:4191"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": app, "pod-template-hash": "abc"},
            "annotations": annotations,
        },
        "spec": {
            "serviceAccountName": "web-sa",
            "containers": [
                {
                    "name": "app",
                    "command": ["x"],
                    "ports": [{"name": "http", "containerPort": 9000}],
                }
            ],
        },
        "status": {"phase": "Running", "podIP": ip, "ready": ready},
    }


def addresses(dest: Destination | None) -> list[str]:
    assert dest is not None
    return [f"{e.address[0]}:{e.address[1]}" for e in dest.endpoints]


def test_resolves_by_cluster_ip_and_every_name_form() -> None:
    store = make_store()
    store.apply([svc(), pod("web-2", "10.244.0.3"), pod("web-1", "10.244.0.2")])
    ip = store.get("Service", "default", "web")["spec"]["clusterIP"]  # type: ignore[index]
    for target in (
        f"{ip}:8080",
        "web.default.svc.cluster.local:8080",
        "web.default.svc:8080",
        "web.default:8080",
        "web:8080",
        "WEB.default.svc.cluster.local.:8080",
    ):
        dest = resolve(cluster_of(store), target)
        assert addresses(dest) == ["10.244.0.2:9000", "10.244.0.3:9000"], target
        assert dest is not None and dest.target == target
        assert dict(dest.labels) == {"service": "web", "namespace": "default"}
    e = resolve(cluster_of(store), "web:8080").endpoints[0]  # type: ignore[union-attr]
    assert dict(e.labels) == {
        "pod": "web-1",
        "namespace": "default",
        "serviceaccount": "web-sa",
        "deployment": "web",
    }
    assert e.meshed and e.protocol is None
    # other proxies dial its proxy's inbound port (the local runtime's), not the app's port
    assert e.proxy_port == net.PROXY_INBOUND_PORT == 4143
    assert Endpoint.from_json(e.to_json()) == e


def test_unknown_targets_resolve_to_none() -> None:
    store = make_store()
    store.apply([svc()])
    for target in ("web:9999", "10.96.9.9:8080", "api:8080", "web.other:8080", "a.b.c.d:80", "x"):
        assert resolve(cluster_of(store), target) is None, target


def test_name_in_the_callers_namespace() -> None:
    store = make_store()
    store.apply(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
            svc("web", "shop"),
        ]
    )
    assert resolve(cluster_of(store), "web:8080") is None
    assert resolve(cluster_of(store), "web:8080", "shop") is not None


def test_only_ready_running_not_terminating_pods_of_the_selector() -> None:
    store = make_store()
    leaving = pod("web-3", "10.244.0.4")
    leaving["status"]["terminating"] = True
    pending = pod("web-4", "10.244.0.5")
    pending["status"].update(phase="Pending", ready=False)  # as on a cluster: not yet Ready
    store.apply(
        [
            svc(),
            pod("web-1", "10.244.0.2"),
            pod("web-2", "10.244.0.3", ready=False),
            leaving,
            pending,
            pod("api-1", "10.244.0.9", app="api"),
        ]
    )
    assert addresses(resolve(cluster_of(store), "web:8080")) == ["10.244.0.2:9000"]


def test_numeric_target_port_opaque_protocol_and_unmeshed() -> None:
    store = make_store()
    store.apply([svc(targetPort=7000, appProtocol="tcp"), pod("web-1", "10.244.0.2", meshed=False)])
    dest = resolve(cluster_of(store), "web:8080")
    assert dest is not None and dest.opaque
    (e,) = dest.endpoints
    assert e.address == ("10.244.0.2", 7000)
    assert e.protocol == "opaque" and not e.meshed and e.proxy_port is None


def test_pod_without_the_named_port_is_left_out() -> None:
    store = make_store()
    p = pod("web-1", "10.244.0.2")
    p["spec"]["containers"][0]["ports"] = []
    store.apply([svc(), p])
    assert addresses(resolve(cluster_of(store), "web:8080")) == []


def test_subscribers_get_each_change_once() -> None:
    store = make_store()
    service = DestinationService(cluster_of(store))
    store.apply([svc()])
    seen: list[list[str]] = []
    current, unsubscribe = service.subscribe("web:8080", lambda d: seen.append(addresses(d)))
    assert addresses(current) == []
    store.apply([pod("web-1", "10.244.0.2", ready=False)])
    assert seen == []  # not ready: the snapshot did not change
    store.put_status(
        "Pod", "default", "web-1", {"phase": "Running", "podIP": "10.244.0.2", "ready": True}
    )
    assert seen == [["10.244.0.2:9000"]]
    store.apply([pod("api-1", "10.244.0.9", app="api")])  # unrelated
    store.put_status(
        "Pod",
        "default",
        "web-1",
        {"phase": "Running", "podIP": "10.244.0.2", "ready": True, "terminating": True},
    )
    assert seen == [["10.244.0.2:9000"], []]
    unsubscribe()
    store.delete([svc()])
    assert len(seen) == 2
    assert "targets=0" in repr(service)


def test_subscription_to_a_service_that_appears_later() -> None:
    store = make_store()
    service = DestinationService(cluster_of(store))
    got: list[Destination | None] = []
    current, _ = service.subscribe("web.default.svc.cluster.local:8080", got.append)
    assert current is None
    store.apply([pod("web-1", "10.244.0.2")])
    assert got == []
    store.apply([svc()])
    assert addresses(got[-1]) == ["10.244.0.2:9000"]
    store.delete([svc()])
    assert got[-1] is None


def test_shared_translator_and_pods_elsewhere_ignored() -> None:
    store = make_store()
    store.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}, svc()])
    service = DestinationService(cluster_of(store))
    a: list[Destination | None] = []
    b: list[Destination | None] = []
    service.subscribe("web:8080", a.append)
    service.subscribe("web:8080", b.append)
    assert "targets=1 subscribers=2" in repr(service)
    store.apply([pod("web-1", "10.244.0.2", namespace="shop")])
    assert a == b == []
    store.apply([pod("web-1", "10.244.0.2")])
    assert len(a) == len(b) == 1
