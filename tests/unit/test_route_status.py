"""Unit tests for HTTPRoute status: Accepted / ResolvedRefs per parent, following the store."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from weft.control.routestatus import RouteStatusController, summarize
from weft.control.store import Store
from weft.testing.clock import FakeClock
from weft.testing.cluster import cluster_of

T0 = 1_700_000_000.0


def make() -> tuple[Store, FakeClock, RouteStatusController]:
    clock = FakeClock(T0)
    counter = itertools.count(1)
    store = Store(clock=clock, uid=lambda: f"uid-{next(counter)}")
    return store, clock, RouteStatusController(cluster_of(store), cluster_of(store), clock=clock)


def svc(name: str, ports: tuple[int, ...] = (8080,)) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": f"p{p}", "port": p} for p in ports],
        },
    }


def route(
    parents: list[dict[str, Any]], backends: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if backends is not None:
        rule["backendRefs"] = backends
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {
            "parentRefs": [{"group": "core", "kind": "Service", **p} for p in parents],
            "rules": [rule],
        },
    }


def conditions(store: Store, parent: int = 0) -> dict[str, tuple[str, str, str]]:
    obj = store.get("HTTPRoute", "default", "r")
    assert obj is not None
    p = obj["status"]["parents"][parent]
    assert p["controllerName"] == "weft.io/control-plane"
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in p["conditions"]}


def transition(store: Store, type_: str) -> str:
    obj = store.get("HTTPRoute", "default", "r")
    assert obj is not None
    (cond,) = [c for c in obj["status"]["parents"][0]["conditions"] if c["type"] == type_]
    return str(cond["lastTransitionTime"])


def test_parent_missing_then_created_then_deleted() -> None:
    store, clock, _ = make()
    store.apply([route([{"name": "web"}])])
    assert conditions(store)["Accepted"] == (
        "False",
        "NoMatchingParent",
        "Service default/web not found",
    )
    clock.advance(10)
    store.apply([svc("web")])
    assert conditions(store)["Accepted"][:2] == ("True", "Accepted")
    assert transition(store, "Accepted") == "2023-11-14T22:13:30Z"
    store.delete([{"kind": "Service", "metadata": {"name": "web"}}])
    assert conditions(store)["Accepted"][:2] == ("False", "NoMatchingParent")


def test_a_parent_port_the_service_does_not_have() -> None:
    store, _, _ = make()
    store.apply([svc("web", (8080,)), route([{"name": "web", "port": 9999}])])
    assert conditions(store)["Accepted"] == (
        "False",
        "NoMatchingParent",
        "Service default/web has no port 9999",
    )
    store.apply([svc("web", (8080, 9999))])
    assert conditions(store)["Accepted"][0] == "True"


def test_resolved_refs_follow_backend_services() -> None:
    store, _, _ = make()
    backends = [{"name": "web", "weight": 90}, {"name": "web-v2", "port": 8080, "weight": 10}]
    store.apply([svc("web"), route([{"name": "web", "port": 8080}], backends)])
    assert conditions(store)["ResolvedRefs"] == (
        "False",
        "BackendNotFound",
        "spec.rules[0].backendRefs[1]: Service default/web-v2 not found",
    )
    assert summarize(store.get("HTTPRoute", "default", "r")["status"]) == (  # type: ignore[index]
        "True",
        "BackendNotFound",
    )
    store.apply([svc("web-v2", (9000,))])
    assert conditions(store)["ResolvedRefs"][2] == (
        "spec.rules[0].backendRefs[1]: Service default/web-v2 has no port 8080"
    )
    store.apply([svc("web-v2", (8080,))])
    assert conditions(store)["ResolvedRefs"] == (
        "True",
        "ResolvedRefs",
        "all backend references resolved",
    )
    assert summarize(store.get("HTTPRoute", "default", "r")["status"]) == ("True", "-")  # type: ignore[index]


def test_backend_port_falls_back_to_each_parents_port() -> None:
    store, _, _ = make()
    store.apply(
        [
            svc("web", (80, 81)),
            svc("api", (80,)),
            route([{"name": "web", "port": 80}, {"name": "web", "port": 81}], [{"name": "api"}]),
        ]
    )
    assert conditions(store, 0)["ResolvedRefs"][0] == "True"
    assert conditions(store, 1)["ResolvedRefs"][2].endswith("Service default/api has no port 81")


def test_transition_times_and_generation() -> None:
    store, clock, controller = make()
    store.apply([svc("web"), route([{"name": "web"}])])
    first = transition(store, "Accepted")
    writes = controller.writes
    clock.advance(60)
    store.apply([svc("web", (8080, 8081))])  # a Service change that changes no condition
    assert controller.writes == writes  # nothing written
    store.apply([route([{"name": "web"}], [{"name": "web"}])])  # spec change: generation 2
    obj = store.get("HTTPRoute", "default", "r")
    assert obj is not None and obj["metadata"]["generation"] == 2
    conds = obj["status"]["parents"][0]["conditions"]
    assert {c["observedGeneration"] for c in conds} == {2}
    assert transition(store, "Accepted") == first  # status unchanged: time kept


def test_summary_of_no_status_and_of_refused_parents() -> None:
    assert summarize(None) == ("Unknown", "-")
    assert summarize({"parents": []}) == ("Unknown", "-")
    store, _, _ = make()
    store.apply([route([{"name": "web"}])])
    obj = store.get("HTTPRoute", "default", "r")
    assert obj is not None
    assert summarize(obj["status"]) == ("False", "NoMatchingParent")


def test_deferred_writes_run_when_scheduled_and_resync_after_restore() -> None:
    clock = FakeClock(T0)
    store = Store(clock=clock)
    pending: list[Callable[[], None]] = []
    controller = RouteStatusController(
        cluster_of(store), cluster_of(store), clock=clock, schedule=pending.append
    )
    store.apply([svc("web"), route([{"name": "web"}])])
    assert store.get("HTTPRoute", "default", "r")["status"] == {}  # type: ignore[index]
    assert len(pending) == 1  # one run for both events
    pending.pop()()
    assert conditions(store)["Accepted"][0] == "True"

    # a restored store (no events) is brought up to date by resync: here the saved state lost
    # the Service after the status was written
    snapshot = store.snapshot()
    controller.close()
    snapshot["objects"] = [o for o in snapshot["objects"] if o["kind"] != "Service"]
    fresh = Store(clock=clock)
    fresh.restore(snapshot)
    fresh_pending: list[Callable[[], None]] = []
    again = RouteStatusController(
        cluster_of(fresh), cluster_of(fresh), clock=clock, schedule=fresh_pending.append
    )
    assert conditions(fresh)["Accepted"][0] == "True"  # stale
    again.resync()
    fresh_pending.pop()()
    assert conditions(fresh)["Accepted"][0] == "False"
    assert again.writes == 1
