"""Unit tests for the policy translator: Services, annotations and HTTPRoutes -> ServicePolicy,
and the destination service re-sending snapshots when any of them changes."""

from __future__ import annotations

import itertools
from typing import Any

from weft.control.destinations import DestinationService, resolve
from weft.control.policies import Policies, build_policy, translate_route
from weft.control.store import Store
from weft.discovery import Destination
from weft.policy import (
    Backend,
    FailureAccrualConfig,
    PathMatch,
    RetryPolicy,
    RouteMatch,
    ServicePolicy,
    Timeouts,
)
from weft.resources import HTTPRoute, PolicyAnnotations, parse_policy_annotations, parse_resource
from weft.testing.clock import FakeClock
from weft.testing.cluster import cluster_of


def make_store(clock: FakeClock | None = None) -> Store:
    counter = itertools.count(1)
    return Store(clock=clock or FakeClock(1_700_000_000.0), uid=lambda: f"uid-{next(counter)}")


def svc(
    name: str = "web",
    namespace: str = "default",
    annotations: dict[str, str] | None = None,
    ports: tuple[int, ...] = (8080,),
    app_protocol: str | None = None,
) -> dict[str, Any]:
    plist: list[dict[str, Any]] = []
    for i, port in enumerate(ports):
        p: dict[str, Any] = {"name": f"p{i}", "port": port}
        if app_protocol is not None:
            p["appProtocol"] = app_protocol
        plist.append(p)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": {"selector": {"app": name}, "ports": plist},
    }


def httproute(
    name: str = "web-route",
    *,
    parent: str = "web",
    port: int | None = None,
    namespace: str = "default",
    annotations: dict[str, str] | None = None,
    backends: list[dict[str, Any]] | None = None,
    timeouts: dict[str, str] | None = None,
    matches: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "core", "kind": "Service", "name": parent}
    if port is not None:
        ref["port"] = port
    rule: dict[str, Any] = {}
    if backends is not None:
        rule["backendRefs"] = backends
    if timeouts is not None:
        rule["timeouts"] = timeouts
    if matches is not None:
        rule["matches"] = matches
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": {"parentRefs": [ref], "rules": [rule]},
    }


def ann(values: dict[str, str], kind: str = "Service") -> PolicyAnnotations:
    return parse_policy_annotations(values, kind)


def parsed(doc: dict[str, Any]) -> HTTPRoute:
    r = parse_resource(doc)
    assert isinstance(r, HTTPRoute)
    return r


# -- pure translation -------------------------------------------------------------------------


def test_nothing_configured_is_none() -> None:
    assert build_policy(PolicyAnnotations(), [], port=8080) is None


def test_service_annotations_alone_make_a_policy() -> None:
    service = ann(
        {
            "retry.weft.io/http": "5xx",
            "timeout.weft.io/request": "5s",
            "failure-accrual.weft.io/consecutive": "max-failures=3",
        }
    )
    policy = build_policy(service, [], port=8080)
    assert policy == ServicePolicy(
        routes=(),
        retry=RetryPolicy(statuses=((500, 599),)),
        timeouts=Timeouts(request=5.0),
        failure_accrual=FailureAccrualConfig(max_failures=3),
    )


def test_backend_targets_take_the_backend_port_or_the_requested_one() -> None:
    r = parsed(
        httproute(backends=[{"name": "web-v1", "port": 9090, "weight": 90},
                            {"name": "web-v2", "namespace": "canary", "weight": 10}])
    )  # fmt: skip
    out = translate_route(
        r, PolicyAnnotations(), PolicyAnnotations(), port=8080, cluster_domain="mesh.local"
    )
    assert out.name == "default/web-route"
    (rule,) = out.rules
    assert rule.backends == (
        Backend("web-v1.default.svc.mesh.local:9090", 90, "web-v1"),
        Backend("web-v2.canary.svc.mesh.local:8080", 10, "web-v2"),
    )
    assert rule.matches == (RouteMatch(path=PathMatch("PathPrefix", "/")),)
    no_backends = translate_route(
        parsed(httproute()), PolicyAnnotations(), PolicyAnnotations(), port=8080
    )
    assert no_backends.rules[0].backends == ()  # the parent service itself


def test_rule_timeouts_spec_then_route_then_service() -> None:
    service = ann({"timeout.weft.io/request": "30s", "timeout.weft.io/idle": "60s"})
    route_ann = ann({"timeout.weft.io/response": "3s"}, "HTTPRoute")
    only_annotations = translate_route(parsed(httproute()), service, route_ann, port=80)
    assert only_annotations.rules[0].timeouts == Timeouts(request=30.0, response=3.0, idle=60.0)
    spec = parsed(httproute(timeouts={"request": "10s", "backendRequest": "2s"}))
    with_spec = translate_route(spec, service, route_ann, port=80)
    assert with_spec.rules[0].timeouts == Timeouts(
        request=10.0, backend_request=2.0, response=3.0, idle=60.0
    )
    # "0s" in the spec disables the inherited request timeout
    off = translate_route(
        parsed(httproute(timeouts={"request": "0s"})), service, route_ann, port=80
    )
    assert off.rules[0].timeouts.request is None


def test_route_retries_override_service_retries_and_allow_every_method() -> None:
    service = ann({"retry.weft.io/http": "gateway-error", "retry.weft.io/limit": "1"})
    inherited = translate_route(parsed(httproute()), service, PolicyAnnotations(), port=80)
    retry = inherited.rules[0].retry
    assert retry is not None
    assert (retry.statuses, retry.limit, retry.all_methods) == (((502, 504),), 1, False)
    own = translate_route(
        parsed(httproute()), service, ann({"retry.weft.io/limit": "3"}, "HTTPRoute"), port=80
    )
    retry = own.rules[0].retry
    assert retry is not None
    assert (retry.statuses, retry.limit, retry.all_methods) == (((502, 504),), 3, True)
    none = translate_route(parsed(httproute()), PolicyAnnotations(), PolicyAnnotations(), port=80)
    assert none.rules[0].retry is None


# -- from the store -----------------------------------------------------------------------------


def test_routes_attach_by_service_and_port_oldest_first() -> None:
    clock = FakeClock(1_700_000_000.0)
    store = make_store(clock)
    store.apply([svc(ports=(8080, 9090)), svc("other")])
    store.apply([httproute("zeta")])
    clock.advance(5)
    store.apply(
        [
            httproute("alpha"),  # younger than zeta: after it despite the name
            httproute("only-9090", port=9090),
            httproute("elsewhere", parent="other"),
        ]
    )
    policies = Policies(cluster_of(store))
    web = store.get("Service", "default", "web")
    assert web is not None
    p8080 = policies.policy(web, 8080)
    p9090 = policies.policy(web, 9090)
    assert p8080 is not None and p9090 is not None
    assert [r.name for r in p8080.routes] == ["default/zeta", "default/alpha"]
    assert [r.name for r in p9090.routes] == [
        "default/zeta",
        "default/alpha",
        "default/only-9090",
    ]
    assert [o["metadata"]["name"] for o, _ in policies.attached_routes("default", "web")] == [
        "zeta",
        "alpha",
        "only-9090",
    ]


def test_resolve_carries_the_policy_and_opaque_ports_none() -> None:
    store = make_store()
    store.apply([svc(annotations={"retry.weft.io/http": "5xx"}), svc("db", app_protocol="tcp")])
    store.apply([httproute(parent="db")])
    dest = resolve(cluster_of(store), "web:8080")
    assert dest is not None and dest.policy is not None
    assert dest.policy.retry == RetryPolicy()
    assert Destination.from_json(dest.to_json()) == dest  # the wire form keeps the policy
    db = resolve(cluster_of(store), "db:8080")
    assert db is not None and db.opaque and db.policy is None


def test_destination_watchers_get_every_policy_change() -> None:
    store = make_store()
    store.apply([svc(), svc("web-v2")])
    service = DestinationService(cluster_of(store))
    seen: list[Destination | None] = []
    current, _ = service.subscribe("web.default.svc.cluster.local:8080", seen.append)
    assert current is not None and current.policy is None

    def weights() -> list[int]:
        dest = seen[-1]
        assert dest is not None and dest.policy is not None
        return [b.weight for b in dest.policy.routes[0].rules[0].backends]

    canary = [{"name": "web", "weight": 100}, {"name": "web-v2", "weight": 0}]
    store.apply([httproute(backends=canary)])
    assert len(seen) == 1 and weights() == [100, 0]
    for split in ((90, 10), (50, 50), (0, 100)):
        canary = [{"name": "web", "weight": split[0]}, {"name": "web-v2", "weight": split[1]}]
        store.apply([httproute(backends=canary)])
        assert weights() == list(split)
    assert len(seen) == 4
    # a status write changes nothing the proxy sees: no snapshot
    store.put_status("HTTPRoute", "default", "web-route", {"parents": []})
    assert len(seen) == 4
    # service annotations change the policy too
    store.apply([svc(annotations={"timeout.weft.io/request": "2s"})])
    dest = seen[-1]
    assert dest is not None and dest.policy is not None
    assert dest.policy.timeouts.request == 2.0
    assert dest.policy.routes[0].rules[0].timeouts.request == 2.0  # inherited by the rule
    # a route in another namespace cannot change this destination
    store.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}])
    store.apply([svc(namespace="other"), httproute(namespace="other")])
    assert len(seen) == 5
    store.delete([{"kind": "HTTPRoute", "metadata": {"name": "web-route"}}])
    dest = seen[-1]
    assert dest is not None and dest.policy is not None and dest.policy.routes == ()
    store.apply([svc()])  # annotations removed: nothing configured any more
    assert seen[-1] is not None and seen[-1].policy is None


def test_parse_cache_reparses_only_changed_objects() -> None:
    store = make_store()
    store.apply([svc(), httproute()])
    policies = Policies(cluster_of(store))
    obj = store.get("HTTPRoute", "default", "web-route")
    assert obj is not None
    first = policies.cache.route(obj)
    assert first is not None and policies.cache.route(obj) is first
    store.apply([httproute(backends=[{"name": "web", "weight": 2}])])
    changed = store.get("HTTPRoute", "default", "web-route")
    assert changed is not None
    second = policies.cache.route(changed)
    assert second is not None and second is not first
    assert second.spec.rules[0].backend_refs[0].weight == 2
