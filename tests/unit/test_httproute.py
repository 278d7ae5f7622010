"""Unit and property tests for the HTTPRoute kind: parsing, defaults, refusals named by path."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.policy import HeaderModifier, PathMatch, Redirect, RouteMatch, ValueMatch
from weft.resources import HTTPRoute, InvalidResources, parse_resource, resolve_kind
from weft.resources.httproute import gateway_duration
from weft.resources.routestatus import parse_route_status

SUPPORTED = "RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect"


def route(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "parentRefs": [{"group": "core", "kind": "Service", "name": "web", "port": 8080}],
        "rules": [{"backendRefs": [{"name": "web", "port": 8080}]}],
    }
    body.update(spec)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web-route", "namespace": "shop"},
        "spec": body,
    }


def full_route() -> dict[str, Any]:
    return route(
        hostnames=["web.shop.svc.cluster.local"],
        rules=[
            {
                "name": "canary",
                "matches": [
                    {
                        "path": {"type": "PathPrefix", "value": "/api"},
                        "headers": [{"name": "x-canary", "value": "1"}],
                        "queryParams": [{"type": "RegularExpression", "name": "v", "value": "^2"}],
                        "method": "GET",
                    }
                ],
                "filters": [
                    {
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": {
                            "set": [{"name": "x-route", "value": "canary"}],
                            "add": [{"name": "x-extra", "value": ""}],
                            "remove": ["x-drop"],
                        },
                    },
                    {
                        "type": "ResponseHeaderModifier",
                        "responseHeaderModifier": {"remove": ["server"]},
                    },
                ],
                "backendRefs": [
                    {"name": "web-v1", "port": 8080, "weight": 90},
                    {"group": "", "kind": "Service", "name": "web-v2", "weight": 10},
                ],
                "timeouts": {"request": "10s", "backendRequest": "2s"},
            },
            {
                "matches": [{"path": {"type": "Exact", "value": "/old"}}],
                "filters": [
                    {
                        "type": "RequestRedirect",
                        "requestRedirect": {
                            "scheme": "https",
                            "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"},
                            "statusCode": 301,
                        },
                    }
                ],
            },
        ],
    )


def errors(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidResources) as info:
        parse_resource(doc)
    return {e.path: e.message for e in info.value.errors}


# -- the happy path -----------------------------------------------------------------------------


def test_a_full_route_parses_into_policy_types() -> None:
    r = parse_resource(full_route())
    assert isinstance(r, HTTPRoute)
    assert r.key == "shop/web-route"
    (parent,) = r.spec.parent_refs
    assert (parent.name, parent.namespace, parent.port) == ("web", "shop", 8080)
    canary, redirect = r.spec.rules
    assert canary.name == "canary"
    assert canary.matches == (
        RouteMatch(
            path=PathMatch("PathPrefix", "/api"),
            headers=(ValueMatch("x-canary", "1", "Exact"),),
            query_params=(ValueMatch("v", "^2", "RegularExpression"),),
            method="GET",
        ),
    )
    assert canary.request_headers == HeaderModifier(
        set=(("x-route", "canary"),), add=(("x-extra", ""),), remove=("x-drop",)
    )
    assert canary.response_headers == HeaderModifier(remove=("server",))
    assert [(b.name, b.port, b.weight, b.namespace) for b in canary.backend_refs] == [
        ("web-v1", 8080, 90, "shop"),
        ("web-v2", None, 10, "shop"),
    ]
    seconds = canary.timeouts.seconds()
    assert (seconds.request, seconds.backend_request) == (10.0, 2.0)
    assert redirect.redirect == Redirect(scheme="https", path="/new", status_code=301)
    assert redirect.backend_refs == ()


def test_to_dict_fills_gateway_defaults_and_round_trips() -> None:
    doc = route(rules=[{"matches": [{"headers": [{"name": "x", "value": "y"}]}]}, {}])
    r = parse_resource(doc)
    out = r.to_dict()
    first, second = out["spec"]["rules"]
    assert first["matches"] == [
        {
            "path": {"type": "PathPrefix", "value": "/"},
            "headers": [{"type": "Exact", "name": "x", "value": "y"}],
        }
    ]
    assert second == {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}
    assert out["spec"]["parentRefs"] == [
        {"group": "core", "kind": "Service", "name": "web", "namespace": "shop", "port": 8080}
    ]
    assert parse_resource(out) == r
    full = parse_resource(full_route())
    assert parse_resource(full.to_dict()) == full
    assert full.to_dict()["spec"]["rules"][0]["backendRefs"][1] == {
        "group": "",
        "kind": "Service",
        "name": "web-v2",
        "namespace": "shop",
        "weight": 10,
    }


def test_rules_default_to_one_catch_all_rule() -> None:
    doc = route()
    del doc["spec"]["rules"]
    (rule,) = parse_resource(doc).spec.rules  # type: ignore[attr-defined]
    assert rule.matches == (RouteMatch(path=PathMatch("PathPrefix", "/")),)
    assert rule.backend_refs == ()


def test_kind_is_registered_with_its_plural() -> None:
    assert resolve_kind("httproutes").kind == "HTTPRoute"
    assert resolve_kind("HTTPRoute").api_version == "gateway.networking.k8s.io/v1"
    wrong = route()
    wrong["apiVersion"] = "v1"
    assert "must be" in errors(wrong)["apiVersion"]


# -- refused features, each by name -----------------------------------------------------------


@pytest.mark.parametrize(
    ("ftype", "config"),
    [
        ("URLRewrite", "urlRewrite"),
        ("RequestMirror", "requestMirror"),
        ("ExtensionRef", "extensionRef"),
        ("CORS", "cors"),
    ],
)
def test_unsupported_filters_are_refused_with_their_name(ftype: str, config: str) -> None:
    doc = route()
    doc["spec"]["rules"][0]["filters"] = [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["a"]}},
        {"type": ftype, config: {}},
    ]
    assert errors(doc) == {
        "spec.rules[0].filters[1].type": f"{ftype} is not supported by Weft (supported: "
        f"{SUPPORTED})"
    }


def test_gateway_parents_are_refused() -> None:
    implicit = route(parentRefs=[{"name": "public-gw"}])
    assert errors(implicit) == {
        "spec.parentRefs[0].kind": "Gateway (the default when kind is omitted) is not supported "
        'by Weft (supported: Service, with group "" or "core": Weft routes are for the mesh)'
    }
    explicit = route(
        parentRefs=[{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}]
    )
    errs = errors(explicit)
    assert errs["spec.parentRefs[0].kind"].startswith("Gateway is not supported by Weft")
    assert errs["spec.parentRefs[0].group"].startswith(
        'group "gateway.networking.k8s.io" is not supported by Weft'
    )


@pytest.mark.parametrize("group", ["", "core"])
def test_service_parents_take_the_core_group_either_way(group: str) -> None:
    doc = route(parentRefs=[{"group": group, "kind": "Service", "name": "web"}])
    (parent,) = parse_resource(doc).spec.parent_refs  # type: ignore[attr-defined]
    assert (parent.group, parent.port) == (group, None)


def test_a_service_parent_must_name_its_group() -> None:
    doc = route(parentRefs=[{"kind": "Service", "name": "web"}])
    assert "required for a Service parent" in errors(doc)["spec.parentRefs[0].group"]


@pytest.mark.parametrize(
    ("ref", "path", "text"),
    [
        ({"sectionName": "http"}, "sectionName", "sectionName is not supported by Weft"),
        ({"namespace": "other"}, "namespace", "consumer route"),
        ({"kind": "ServiceImport"}, "kind", "ServiceImport is not supported by Weft"),
        ({"port": 70000}, "port", "must be <= 65535"),
        ({"name": "Web"}, "name", "invalid name"),
    ],
)
def test_parent_ref_refusals(ref: dict[str, Any], path: str, text: str) -> None:
    base = {"group": "core", "kind": "Service", "name": "web", **ref}
    errs = errors(route(parentRefs=[base]))
    assert text in errs[f"spec.parentRefs[0].{path}"]


def test_parent_refs_must_be_present_distinct_and_not_overlap() -> None:
    assert "must list at least one parent" in errors(route(parentRefs=[]))["spec.parentRefs"]
    no_spec_parents = route()
    del no_spec_parents["spec"]["parentRefs"]
    assert errors(no_spec_parents)["spec.parentRefs"] == "required field is missing"
    web = {"group": "core", "kind": "Service", "name": "web"}
    dup = errors(route(parentRefs=[web, dict(web)]))
    assert dup == {"spec.parentRefs[1]": "duplicate of spec.parentRefs[0]"}
    overlap = errors(route(parentRefs=[web, {**web, "port": 80}]))
    assert "overlaps" in overlap["spec.parentRefs[1]"]
    # the same service on two different ports is fine
    two = parse_resource(route(parentRefs=[{**web, "port": 80}, {**web, "port": 81}]))
    assert [p.port for p in two.spec.parent_refs] == [80, 81]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("field", "value", "text"),
    [
        ("retry", {"attempts": 2}, "retry is not supported by Weft (use the retry.weft.io/*"),
        ("sessionPersistence", {"type": "Cookie"}, "sessionPersistence is not supported"),
    ],
)
def test_experimental_rule_fields_are_refused(field: str, value: Any, text: str) -> None:
    doc = route()
    doc["spec"]["rules"][0][field] = value
    assert text in errors(doc)[f"spec.rules[0].{field}"]


def test_backend_refusals() -> None:
    doc = route()
    doc["spec"]["rules"][0]["backendRefs"] = [
        {"name": "a", "filters": [{"type": "RequestHeaderModifier"}]},
        {"name": "b", "kind": "ServiceImport", "group": "multicluster.x-k8s.io"},
        {"name": "c", "weight": -1},
        {"name": "d", "weight": 1_000_001},
        {"name": "e", "port": 0},
    ]
    errs = errors(doc)
    assert errs["spec.rules[0].backendRefs[0].filters"] == (
        "filters on a backendRef is not supported by Weft (supported: filters on the rule)"
    )
    assert (
        "backend kind ServiceImport is not supported" in errs["spec.rules[0].backendRefs[1].kind"]
    )
    assert "is not supported by Weft" in errs["spec.rules[0].backendRefs[1].group"]
    assert errs["spec.rules[0].backendRefs[2].weight"] == "must be >= 0, got -1"
    assert errs["spec.rules[0].backendRefs[3].weight"] == "must be <= 1000000, got 1000001"
    assert errs["spec.rules[0].backendRefs[4].port"] == "must be >= 1, got 0"


def test_replace_prefix_match_redirects_are_refused_by_name() -> None:
    doc = route()
    doc["spec"]["rules"][0]["filters"] = [
        {
            "type": "RequestRedirect",
            "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
        }
    ]
    assert errors(doc) == {
        "spec.rules[0].filters[0].requestRedirect.path.type": (
            "ReplacePrefixMatch is not supported by Weft (supported: ReplaceFullPath)"
        )
    }


# -- validation ---------------------------------------------------------------------------------


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    doc = route(hostnames=["*.ok.example", "Bad_Host"])
    doc["spec"]["rules"][0]["matches"] = [
        {
            "path": {"type": "PathPrefix", "value": "api"},
            "headers": [{"name": "X-A", "value": "1"}, {"name": "x-a", "value": "2"}],
            "method": "FETCH",
        },
        {"path": {"type": "RegularExpression", "value": "(unclosed"}},
        {"path": {"type": "Glob", "value": "/x"}},
        {"headers": [{"name": "bad header", "value": "1"}]},
    ]
    doc["spec"]["rules"][0]["filters"] = [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["a"]}},
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["b"]}},
        {"type": "ResponseHeaderModifier", "requestHeaderModifier": {}},
    ]
    doc["spec"]["rules"][0]["timeouts"] = {"request": "1s", "backendRequest": "2s"}
    errs = errors(doc)
    m = "spec.rules[0].matches"
    assert errs["spec.hostnames[1]"].startswith('invalid hostname "Bad_Host"')
    assert errs[f"{m}[0].path.value"] == (
        "invalid path \"api\": must be an absolute path starting with '/'"
    )
    assert errs[f"{m}[0].headers[1].name"] == 'duplicate header name "x-a" in this match'
    assert errs[f"{m}[0].method"].startswith("must be one of GET, HEAD, POST")
    assert errs[f"{m}[1].path.value"].startswith('invalid regular expression "(unclosed"')
    assert errs[f"{m}[2].path.type"].startswith("must be one of Exact, PathPrefix")
    assert errs[f"{m}[3].headers[0].name"].startswith('invalid header name "bad header"')
    f = "spec.rules[0].filters"
    assert errs[f"{f}[1].type"] == "RequestHeaderModifier may appear only once in a rule's filters"
    assert (
        errs[f"{f}[2].requestHeaderModifier"] == "must not be set with type ResponseHeaderModifier"
    )
    assert errs["spec.rules[0].timeouts.backendRequest"] == (
        "must not be longer than timeouts.request (1s), got 2s"
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0), ("0s", 0.0)],
)
def test_gateway_durations(text: str, seconds: float) -> None:
    assert gateway_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1.5s", "10", "-1s", "1d", "123456s", "1s1s1s1s1s", " 1s"])
def test_gateway_durations_refuse_what_the_gateway_api_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="Gateway API durations"):
        gateway_duration(text)
    doc = route()
    doc["spec"]["rules"][0]["timeouts"] = {"request": text}
    assert "invalid duration" in errors(doc)["spec.rules[0].timeouts.request"]


def test_a_zero_timeout_means_none() -> None:
    doc = route()
    doc["spec"]["rules"][0]["timeouts"] = {"request": "0s"}
    (rule,) = parse_resource(doc).spec.rules  # type: ignore[attr-defined]
    assert rule.timeouts.request == "0s" and rule.timeouts.seconds().request is None


def test_redirect_validation() -> None:
    doc = route()
    doc["spec"]["rules"][0]["filters"] = [
        {
            "type": "RequestRedirect",
            "requestRedirect": {
                "scheme": "ftp",
                "hostname": "*.wild",
                "statusCode": 200,
                "path": {"type": "ReplaceFullPath", "replaceFullPath": "../x"},
            },
        }
    ]
    errs = errors(doc)
    p = "spec.rules[0].filters[0].requestRedirect"
    assert set(errs) == {
        f"{p}.scheme",
        f"{p}.hostname",
        f"{p}.statusCode",
        f"{p}.path.replaceFullPath",
    }


def test_route_annotations_are_validated_and_name_the_annotation() -> None:
    doc = route()
    doc["metadata"]["annotations"] = {
        "retry.weft.io/limit": "many",
        "failure-accrual.weft.io/consecutive": "max-failures=3",
        "retry.weft.io/htp": "5xx",
        "example.com/other": "anything",
    }
    errs = errors(doc)
    assert set(errs) == {
        'metadata.annotations["retry.weft.io/limit"]',
        'metadata.annotations["failure-accrual.weft.io/consecutive"]',
        'metadata.annotations["retry.weft.io/htp"]',
    }
    assert (
        "put failure accrual on the Service"
        in errs['metadata.annotations["failure-accrual.weft.io/consecutive"]']
    )
    assert errs['metadata.annotations["retry.weft.io/htp"]'].startswith(
        "unknown annotation retry.weft.io/htp"
    )


def test_status_shape_is_validated() -> None:
    good = {
        "parents": [
            {
                "parentRef": {"group": "core", "kind": "Service", "name": "web"},
                "controllerName": "weft.io/control-plane",
                "conditions": [
                    {"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""}
                ],
            }
        ]
    }
    assert parse_route_status(good) == good
    bad = copy.deepcopy(good)
    bad["parents"][0]["conditions"][0]["status"] = "Yes"
    with pytest.raises(InvalidResources) as info:
        parse_route_status(bad)
    assert info.value.errors[0].path == "status.parents[0].conditions[0].status"


# -- property: any input parses or is refused with InvalidResources -----------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70_000),
    st.sampled_from(["", "/", "/a", "web", "Service", "core", "Exact", "PathPrefix",
                     "RegularExpression", "RequestRedirect", "RequestHeaderModifier", "10s",
                     "GET", "x-a", "(", "*.a"]),
)  # fmt: skip
_keys = st.sampled_from(
    ["parentRefs", "rules", "hostnames", "matches", "filters", "backendRefs", "timeouts",
     "path", "headers", "queryParams", "method", "type", "value", "name", "kind", "group",
     "port", "weight", "namespace", "request", "backendRequest", "requestRedirect",
     "requestHeaderModifier", "set", "add", "remove", "statusCode", "sectionName"]
)  # fmt: skip
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.dictionaries(_keys, _values, max_size=4))
def test_any_spec_parses_or_raises_invalid_resources(spec: dict[str, Any]) -> None:
    doc = route()
    doc["spec"] = spec
    try:
        r = parse_resource(doc)
    except InvalidResources as exc:
        assert exc.errors
        return
    assert isinstance(r, HTTPRoute)
    assert parse_resource(r.to_dict()) == r
