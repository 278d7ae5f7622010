"""GRPCRoute: validation (errors name the field), compilation to path matches the proxy's
RouteTable evaluates, translation into a ServicePolicy, route status; grpc-timeout values."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weft.control.policies import build_policy
from weft.control.routestatus import RouteStatusController, route_status
from weft.control.store import Store
from weft.core.routes import RouteTable
from weft.policy import ServicePolicy
from weft.proxy.protocol.http2.grpc import grpc_timeout_value, parse_grpc_timeout
from weft.resources.annotations import PolicyAnnotations
from weft.resources.errors import InvalidResources
from weft.resources.grpcroute import GRPCRoute
from weft.resources.registry import parse_resource
from weft.testing.cluster import cluster_of


def doc(rules: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": "r", "namespace": "shop"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
            "rules": rules,
            **spec,
        },
    }


def errors(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidResources) as info:
        GRPCRoute.from_dict(document)
    return {e.path: e.message for e in info.value.errors}


def table(route: GRPCRoute) -> RouteTable:
    policy = build_policy(PolicyAnnotations(), [(route, PolicyAnnotations())], port=80)
    assert policy is not None
    return RouteTable(policy)


def match(t: RouteTable, path: str, headers: dict[str, str] | None = None) -> int | None:
    h = {k.encode(): v.encode() for k, v in (headers or {}).items()}
    found = t.match(b"POST", path.encode(), b"", h.get)
    return None if found is None else found.rule_index


def test_parse_resource_knows_the_kind_and_round_trips() -> None:
    d = doc(
        [
            {
                "matches": [
                    {"method": {"service": "pkg.Svc", "method": "Get"}},
                    {"headers": [{"name": "x-v", "value": "2"}]},
                ],
                "filters": [
                    {
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}]},
                    }
                ],
                "backendRefs": [{"name": "web-v2", "port": 8080, "weight": 3}],
            }
        ]
    )
    route = parse_resource(d)
    assert isinstance(route, GRPCRoute)
    assert route.key == "shop/r"
    again = GRPCRoute.from_dict(route.to_dict())
    assert again == route


def test_validation_errors_name_the_field() -> None:
    bad = doc(
        [
            {
                "matches": [
                    {"method": {}},
                    {"method": {"service": "no-dashes"}},
                    {"method": {"method": "a.b"}},
                    {"method": {"type": "RegularExpression", "service": "("}},
                    {"method": {"type": "Prefix", "service": "a"}},
                    {"path": {"value": "/"}},
                ],
                "filters": [{"type": "RequestMirror"}, {"type": "URLRewrite"}],
                "backendRefs": [{"name": "b", "filters": []}],
                "timeouts": {"request": "1s"},
                "sessionPersistence": {},
            }
        ],
        hostnames=["Bad_Host"],
    )
    bad["spec"]["parentRefs"].append({"group": "policy.weft.io", "kind": "Server", "name": "s"})
    bad["metadata"]["annotations"] = {"retry.weft.io/limit": "eleven"}
    found = errors(bad)
    m = "spec.rules[0].matches"
    assert "one or both of service and method" in found[f"{m}[0].method"]
    assert "invalid service" in found[f"{m}[1].method.service"]
    assert "invalid method" in found[f"{m}[2].method.method"]
    assert "regular expression" in found[f"{m}[3].method.service"]
    assert "must be one of Exact, RegularExpression" in found[f"{m}[4].method.type"]
    assert "unknown field" in found[f"{m}[5].path"]
    assert "RequestMirror is not supported" in found["spec.rules[0].filters[0].type"]
    assert "not a GRPCRoute filter" in found["spec.rules[0].filters[1].type"]
    assert "filters on a backendRef" in found["spec.rules[0].backendRefs[0].filters"]
    assert "timeout.weft.io" in found["spec.rules[0].timeouts"]
    assert "sessionPersistence" in found["spec.rules[0].sessionPersistence"]
    assert "invalid hostname" in found["spec.hostnames[0]"]
    assert "Server on a GRPCRoute" in found["spec.parentRefs[1].kind"]
    assert "retry.weft.io/limit" in found['metadata.annotations["retry.weft.io/limit"]']


def test_garbage_gets_errors_not_crashes() -> None:
    specs: list[Any] = [None, [], "x", {"rules": "x"}, {"parentRefs": [1], "rules": [None, 3]}]
    for spec in specs:
        d = doc([])
        d["spec"] = spec
        assert errors(d)


def test_compiled_matches_route_grpc_paths() -> None:
    route = GRPCRoute.from_dict(
        doc(
            [
                {"matches": [{"method": {"service": "pkg.Svc", "method": "Get"}}]},
                {"matches": [{"method": {"service": ".pkg.Svc"}}]},
                {"matches": [{"method": {"method": "Put"}}]},
                {"matches": [{"method": {"type": "RegularExpression", "service": "other\\..*"}}]},
                {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}]},
            ]
        )
    )
    t = table(route)
    assert match(t, "/pkg.Svc/Get") == 0
    assert match(t, "/pkg.Svc/List") == 1
    assert match(t, "/pkg.Svcs/List") is None
    assert match(t, "/any.Svc/Put") == 2
    assert match(t, "/other.Thing/X") == 3
    assert match(t, "/z.Z/Y", {"x-canary": "yes"}) == 4
    assert match(t, "/z.Z/Y") is None


def test_a_rule_without_matches_matches_every_call() -> None:
    t = table(GRPCRoute.from_dict(doc([{"backendRefs": [{"name": "b", "port": 9}]}])))
    assert match(t, "/a.B/C") == 0


def test_translation_backends_and_annotation_policy() -> None:
    d = doc(
        [
            {
                "matches": [{"method": {"service": "pkg.Svc"}}],
                "backendRefs": [
                    {"name": "a", "weight": 80},
                    {"name": "b", "port": 81, "weight": 20},
                ],
            }
        ]
    )
    d["metadata"]["annotations"] = {"retry.weft.io/limit": "3", "timeout.weft.io/request": "2s"}
    route = GRPCRoute.from_dict(d)
    service = PolicyAnnotations({"timeout.weft.io/idle": "1m"})
    from weft.resources.annotations import parse_policy_annotations

    ann = parse_policy_annotations(route.metadata.annotations, "GRPCRoute")
    policy = build_policy(service, [(route, ann)], port=8080)
    assert policy is not None
    (rule,) = policy.routes[0].rules
    assert policy.routes[0].name == "shop/r"
    assert [(b.target, b.weight) for b in rule.backends] == [
        ("a.shop.svc.cluster.local:8080", 80),
        ("b.shop.svc.cluster.local:81", 20),
    ]
    assert rule.retry is not None and rule.retry.limit == 3
    assert rule.timeouts.request == 2.0
    assert ServicePolicy.from_json(policy.to_json()) == policy  # the proxy receives it as JSON


def test_status_like_httproutes() -> None:
    store = Store()
    store.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}])
    controller = RouteStatusController(cluster_of(store), cluster_of(store))
    route_doc = doc([{"backendRefs": [{"name": "missing", "port": 80}]}])
    store.apply([route_doc])
    status = store.get("GRPCRoute", "shop", "r")["status"]  # type: ignore[index]
    conds = {c["type"]: c for c in status["parents"][0]["conditions"]}
    assert conds["Accepted"]["reason"] == "NoMatchingParent"
    assert "spec.rules[0].backendRefs[0]" in conds["ResolvedRefs"]["message"]
    for name in ("web", "missing"):
        store.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": name, "namespace": "shop"},
                    "spec": {"selector": {"app": name}, "ports": [{"port": 80}]},
                }
            ]
        )
    status = store.get("GRPCRoute", "shop", "r")["status"]  # type: ignore[index]
    assert {c["status"] for c in status["parents"][0]["conditions"]} == {"True"}
    controller.close()
    fresh = route_status(GRPCRoute.from_dict(route_doc), lambda *_: None, generation=1, now="t")
    assert fresh["parents"][0]["conditions"][0]["status"] == "False"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"100m", 0.1), (b"5S", 5.0), (b"2M", 120.0), (b"1H", 3600.0), (b"10u", 1e-5)],
)
def test_parse_grpc_timeout(value: bytes, seconds: float) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"5", b"5s", b"123456789S", b"-1S", b"1.5S", b"S"])
def test_malformed_grpc_timeout(value: bytes) -> None:
    assert parse_grpc_timeout(value) is None


@given(st.floats(min_value=1e-6, max_value=1e7))
def test_grpc_timeout_value_round_trips_within_a_unit(seconds: float) -> None:
    value = grpc_timeout_value(seconds)
    parsed = parse_grpc_timeout(value)
    assert parsed is not None
    # never longer than asked; shorter by less than one unit of the finest unit that fits
    assert -1e-9 <= seconds - parsed <= max(1.01e-6, seconds * 1e-5)
