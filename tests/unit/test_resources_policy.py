"""Unit and property tests for the inbound policy kinds (Server, AuthorizationPolicy,
MeshTLSAuthentication, NetworkAuthentication, HTTPLocalRateLimitPolicy), HTTPRoutes with Server
parents, and the default-inbound-policy annotation: good documents, every bad field by path."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.inbound import Network
from weft.resources import HTTPRoute, InvalidResources, load_text, parse_resource, resolve_kind
from weft.resources.authn import MeshTLSAuthentication, NetworkAuthentication
from weft.resources.policy import (
    AuthorizationPolicy,
    LabelSelector,
    Ref,
    SelectorRequirement,
    Server,
    identity_name,
    identity_pattern,
    namespace_identities,
    spiffe_identity,
)
from weft.resources.ratelimitpolicy import HTTPLocalRateLimitPolicy

API = "policy.weft.io/v1beta1"


def doc(kind: str, spec: Any, api: str = API, name: str = "p") -> dict[str, Any]:
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }


def server(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"podSelector": {"matchLabels": {"app": "web"}}, "port": "http"}
    body.update(spec)
    return doc("Server", body)


def authz(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "targetRef": {"group": "policy.weft.io", "kind": "Server", "name": "web-http"},
        "requiredAuthenticationRefs": [
            {"group": "policy.weft.io", "kind": "MeshTLSAuthentication", "name": "clients"}
        ],
    }
    body.update(spec)
    return doc("AuthorizationPolicy", body)


def ratelimit(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "targetRef": {"group": "policy.weft.io", "kind": "Server", "name": "web-http"},
        "total": {"requestsPerSecond": 100},
    }
    body.update(spec)
    return doc("HTTPLocalRateLimitPolicy", body)


def errors(document: Any) -> dict[str, str]:
    with pytest.raises(InvalidResources) as info:
        parse_resource(document)
    out: dict[str, str] = {}
    for e in info.value.errors:
        out[e.path] = f"{out[e.path]}; {e.message}" if e.path in out else e.message
    return out


def roundtrip(document: dict[str, Any]) -> Any:
    parsed = parse_resource(document)
    assert parse_resource(parsed.to_dict()) == parsed
    return parsed


# -- Server -------------------------------------------------------------------------------------


def test_server_parses_with_defaults_and_round_trips() -> None:
    s = roundtrip(server())
    assert isinstance(s, Server)
    assert s.key == "shop/p"
    assert (s.spec.port, s.spec.proxy_protocol, s.spec.protocol) == ("http", "unknown", "unknown")
    assert s.spec.access_policy == "deny"
    out = s.to_dict()
    assert out["apiVersion"] == API
    assert out["spec"] == {
        "podSelector": {"matchLabels": {"app": "web"}},
        "port": "http",
        "proxyProtocol": "unknown",
        "accessPolicy": "deny",
    }


@pytest.mark.parametrize(
    ("written", "model"),
    [("unknown", "unknown"), ("HTTP/1", "http1"), ("HTTP/2", "http2"), ("gRPC", "grpc"),
     ("opaque", "opaque"), ("TLS", "tls")],
)  # fmt: skip
def test_server_proxy_protocols_map_to_model_values(written: str, model: str) -> None:
    s = parse_resource(server(proxyProtocol=written))
    assert isinstance(s, Server)
    assert (s.spec.proxy_protocol, s.spec.protocol) == (written, model)


@pytest.mark.parametrize("port", [8080, "8080"])
def test_server_port_by_number(port: Any) -> None:
    s = parse_resource(server(port=port))
    assert isinstance(s, Server) and s.spec.port == 8080


def test_server_selector_expressions_and_empty_selector() -> None:
    s = parse_resource(
        server(
            podSelector={
                "matchLabels": {"app": "web"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["front", "edge"]},
                    {"key": "canary", "operator": "DoesNotExist"},
                    {"key": "env", "operator": "NotIn", "values": ["dev"]},
                    {"key": "app", "operator": "Exists"},
                ],
            }
        )
    )
    assert isinstance(s, Server)
    sel = s.spec.pod_selector
    assert sel.matches({"app": "web", "tier": "front"})
    assert sel.matches({"app": "web", "tier": "edge", "env": "prod"})
    assert not sel.matches({"app": "web", "tier": "back"})
    assert not sel.matches({"app": "web", "tier": "front", "canary": "1"})
    assert not sel.matches({"app": "web", "tier": "front", "env": "dev"})
    assert not sel.matches({"tier": "front"})
    everyone = parse_resource(server(podSelector={}))
    assert isinstance(everyone, Server)
    assert everyone.spec.pod_selector == LabelSelector()
    assert everyone.spec.pod_selector.matches({}) and everyone.spec.pod_selector.matches({"a": "b"})


def test_selector_requirement_semantics() -> None:
    assert SelectorRequirement("a", "NotIn", ("x",)).matches({})  # absent is "not in"
    assert not SelectorRequirement("a", "In", ("x",)).matches({})


SERVER_CASES = [
    ("spec.podSelector", None, "spec.podSelector", "required field is missing"),
    ("spec.podSelector", {"matchLabel": {}}, "spec.podSelector.matchLabel", "unknown field"),
    ("spec.podSelector", {"matchLabels": {"app": 1}}, "spec.podSelector.matchLabels.app",
     "must be a string"),
    ("spec.podSelector", {"matchExpressions": [{"key": "a", "operator": "Near"}]},
     "spec.podSelector.matchExpressions[0].operator", "must be one of In, NotIn"),
    ("spec.podSelector", {"matchExpressions": [{"key": "a"}]},
     "spec.podSelector.matchExpressions[0].operator", "required field is missing"),
    ("spec.podSelector", {"matchExpressions": [{"operator": "Exists"}]},
     "spec.podSelector.matchExpressions[0].key", "required field is missing"),
    ("spec.podSelector", {"matchExpressions": [{"key": "a", "operator": "In"}]},
     "spec.podSelector.matchExpressions[0].values", "at least one value for operator In"),
    ("spec.podSelector", {"matchExpressions": [{"key": "a", "operator": "Exists",
                                                "values": ["x"]}]},
     "spec.podSelector.matchExpressions[0].values", "must be empty for operator Exists"),
    ("spec.podSelector", {"matchExpressions": [{"key": "a", "operator": "In",
                                                "values": ["bad value"]}]},
     "spec.podSelector.matchExpressions[0].values[0]", "invalid label value"),
    ("spec.podSelector", {"matchExpressions": [{"key": "-a", "operator": "Exists"}]},
     "spec.podSelector.matchExpressions[0].key", "invalid key"),
    ("spec.podSelector", {"matchExpressions": ["a"]}, "spec.podSelector.matchExpressions[0]",
     "must be a mapping"),
    ("spec.port", None, "spec.port", "a port number or a container port name"),
    ("spec.port", 0, "spec.port", "must be >= 1"),
    ("spec.port", 70000, "spec.port", "must be <= 65535"),
    ("spec.port", "HTTP!", "spec.port", "invalid port name"),
    ("spec.port", 8.5, "spec.port", "must be an integer"),
    ("spec.proxyProtocol", "http", "spec.proxyProtocol", "must be one of unknown, HTTP/1, HTTP/2"),
    ("spec.accessPolicy", "allow", "spec.accessPolicy", "must be one of all-unauthenticated"),
    ("spec.externalWorkloadSelector", {}, "spec.externalWorkloadSelector",
     "externalWorkloadSelector is not supported by Weft (supported: podSelector)"),
    ("spec.prot", 1, "spec.prot", "unknown field"),
    ("metadata.name", "Web", "metadata.name", "invalid name"),
    ("apiVersion", "policy.linkerd.io/v1beta1", "apiVersion",
     'must be "policy.weft.io/v1beta1" or "policy.linkerd.io/v1beta3" for kind Server'),
]  # fmt: skip


def _set(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``document`` with dotted ``path`` set to ``value`` (None removes it)."""
    out = copy.deepcopy(document)
    node = out
    *head, last = path.split(".")
    for key in head:
        node = node[key]
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(("path", "value", "error_path", "message"), SERVER_CASES)
def test_server_field_errors(path: str, value: Any, error_path: str, message: str) -> None:
    errs = errors(_set(server(), path, value))
    assert error_path in errs, errs
    assert message in errs[error_path]


def test_missing_or_empty_spec_names_every_required_field() -> None:
    missing = server()
    del missing["spec"]
    assert errors(missing) == {"spec": "required field is missing"}
    assert set(errors(doc("Server", {}))) == {"spec.podSelector", "spec.port"}
    assert set(errors(doc("AuthorizationPolicy", {}))) == {
        "spec.targetRef",
        "spec.requiredAuthenticationRefs",
    }
    assert set(errors(doc("MeshTLSAuthentication", {}))) == {"spec.identities"}
    assert set(errors(doc("NetworkAuthentication", {}))) == {"spec.networks"}
    assert set(errors(doc("HTTPLocalRateLimitPolicy", {}))) == {"spec.targetRef", "spec"}
    assert "must be a mapping" in errors(doc("Server", "web"))["spec"]


# -- AuthorizationPolicy ------------------------------------------------------------------------


def test_authorization_policy_parses_and_round_trips() -> None:
    ap = roundtrip(
        authz(
            requiredAuthenticationRefs=[
                {"group": "policy.weft.io", "kind": "MeshTLSAuthentication", "name": "clients"},
                {"kind": "NetworkAuthentication", "name": "office", "namespace": "net"},
                {"kind": "ServiceAccount", "name": "web"},
            ],
            mode="audit",
        )
    )
    assert isinstance(ap, AuthorizationPolicy)
    assert ap.spec.target_ref == Ref("Server", "web-http", group="policy.weft.io")
    assert [(r.kind, r.name, r.namespace) for r in ap.spec.required_authentication_refs] == [
        ("MeshTLSAuthentication", "clients", None),
        ("NetworkAuthentication", "office", "net"),
        ("ServiceAccount", "web", None),
    ]
    assert ap.spec.mode == "audit"
    assert parse_resource(authz()).spec.mode == "enforce"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "target",
    [
        {"group": "policy.linkerd.io", "kind": "Server", "name": "web-http"},
        {"kind": "Server", "name": "web-http"},
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web-get"},
        {"group": "policy.linkerd.io", "kind": "HTTPRoute", "name": "web-get"},
        {"group": "core", "kind": "Namespace", "name": "shop"},
        {"kind": "Namespace", "name": "shop"},
    ],
)
def test_authorization_policy_targets(target: dict[str, Any]) -> None:
    ap = parse_resource(authz(targetRef=target))
    assert isinstance(ap, AuthorizationPolicy)
    assert (ap.spec.target_ref.kind, ap.spec.target_ref.name) == (target["kind"], target["name"])


def test_an_empty_ref_list_is_allowed_and_means_every_client() -> None:
    ap = parse_resource(authz(requiredAuthenticationRefs=[]))
    assert isinstance(ap, AuthorizationPolicy)
    assert ap.spec.required_authentication_refs == ()


AUTHZ_CASES = [
    ("spec.targetRef", None, "spec.targetRef", "required field is missing"),
    ("spec.targetRef", {"kind": "Deployment", "name": "web"}, "spec.targetRef.kind",
     "must be one of Server, HTTPRoute, Namespace"),
    ("spec.targetRef", {"group": "apps", "kind": "Server", "name": "web"},
     "spec.targetRef.group", 'must be "policy.weft.io" or "policy.linkerd.io" for kind Server'),
    ("spec.targetRef", {"kind": "Namespace", "name": "other"}, "spec.targetRef.name",
     "must be the policy's own namespace \"shop\""),
    ("spec.targetRef", {"kind": "Server"}, "spec.targetRef.name", "required field is missing"),
    ("spec.targetRef", {"kind": "Server", "name": "web", "namespace": "shop"},
     "spec.targetRef.namespace", "unknown field"),
    ("spec.requiredAuthenticationRefs", None, "spec.requiredAuthenticationRefs",
     "required field is missing (an empty list allows every client)"),
    ("spec.requiredAuthenticationRefs", "all", "spec.requiredAuthenticationRefs",
     "must be a list"),
    ("spec.requiredAuthenticationRefs", [{"kind": "Secret", "name": "x"}],
     "spec.requiredAuthenticationRefs[0].kind",
     "must be one of MeshTLSAuthentication, NetworkAuthentication, ServiceAccount"),
    ("spec.requiredAuthenticationRefs", [{"kind": "ServiceAccount", "name": "Web"}],
     "spec.requiredAuthenticationRefs[0].name", "invalid name"),
    ("spec.requiredAuthenticationRefs", [{"kind": "ServiceAccount", "name": "a",
                                          "group": "policy.weft.io"}],
     "spec.requiredAuthenticationRefs[0].group", 'must be "" or "core" for kind ServiceAccount'),
    ("spec.requiredAuthenticationRefs", [{"kind": "ServiceAccount", "name": "a",
                                          "namespace": "Bad_ns"}],
     "spec.requiredAuthenticationRefs[0].namespace", "invalid name"),
    ("spec.requiredAuthenticationRefs",
     [{"kind": "ServiceAccount", "name": "a"}, {"kind": "ServiceAccount", "name": "b"}],
     "spec.requiredAuthenticationRefs[1]",
     "at most one ServiceAccount may be required (the first is "
     "spec.requiredAuthenticationRefs[0]): a client has one service account"),
    ("spec.requiredAuthenticationRefs",
     [{"kind": "MeshTLSAuthentication", "name": "a"},
      {"kind": "NetworkAuthentication", "name": "n"},
      {"kind": "MeshTLSAuthentication", "name": "b"}],
     "spec.requiredAuthenticationRefs[2]",
     "at most one MeshTLSAuthentication may be required (the first is "
     "spec.requiredAuthenticationRefs[0]): a client must satisfy every ref"),
    ("spec.requiredAuthenticationRefs",
     [{"kind": "NetworkAuthentication", "name": "a"},
      {"kind": "NetworkAuthentication", "name": "b"}],
     "spec.requiredAuthenticationRefs[1]", "at most one NetworkAuthentication"),
    ("spec.mode", "dry-run", "spec.mode", "must be one of enforce, audit"),
    ("spec.mode", True, "spec.mode", "must be a string"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "error_path", "message"), AUTHZ_CASES)
def test_authorization_policy_field_errors(
    path: str, value: Any, error_path: str, message: str
) -> None:
    errs = errors(_set(authz(), path, value))
    assert error_path in errs, errs
    assert message in errs[error_path]


# -- MeshTLSAuthentication ----------------------------------------------------------------------


def test_identity_helpers() -> None:
    assert identity_name("web", "shop", "cluster.local") == (
        "web.shop.serviceaccount.identity.cluster.local"
    )
    assert namespace_identities("shop", "example.org") == (
        "*.shop.serviceaccount.identity.example.org"
    )
    assert spiffe_identity("spiffe://cluster.local/ns/shop/sa/web") == (
        "web.shop.serviceaccount.identity.cluster.local"
    )
    assert identity_pattern("*") == "*"
    assert identity_pattern("*.shop.serviceaccount.identity.cluster.local").startswith("*.")
    for bad in ("spiffe://cluster.local/web", "spiffe://td/ns/Shop/sa/web", "a..b", "*a.b",
                "web.*.x", "UPPER.case"):  # fmt: skip
        with pytest.raises(ValueError):
            identity_pattern(bad)


def test_mesh_tls_identities_are_kept_as_written_and_resolved_to_dns_form() -> None:
    m = roundtrip(
        doc(
            "MeshTLSAuthentication",
            {
                "identities": [
                    "*",
                    "web.shop.serviceaccount.identity.cluster.local",
                    "*.ops.serviceaccount.identity.cluster.local",
                    "spiffe://cluster.local/ns/shop/sa/batch",
                ]
            },
        )
    )
    assert isinstance(m, MeshTLSAuthentication)
    assert m.to_dict()["spec"]["identities"][3] == "spiffe://cluster.local/ns/shop/sa/batch"
    assert m.spec.patterns("shop", "cluster.local") == (
        "*",
        "web.shop.serviceaccount.identity.cluster.local",
        "*.ops.serviceaccount.identity.cluster.local",
        "batch.shop.serviceaccount.identity.cluster.local",
    )


def test_mesh_tls_identity_refs_resolve_with_the_trust_domain() -> None:
    m = roundtrip(
        doc(
            "MeshTLSAuthentication",
            {
                "identityRefs": [
                    {"kind": "ServiceAccount", "name": "web"},
                    {"kind": "ServiceAccount", "name": "api", "namespace": "backend"},
                    {"group": "", "kind": "Namespace", "name": "ops"},
                    {"kind": "ServiceAccount", "namespace": "batch"},  # every account there
                ]
            },
        )
    )
    assert isinstance(m, MeshTLSAuthentication)
    assert m.spec.patterns("shop", "example.org") == (
        "web.shop.serviceaccount.identity.example.org",
        "api.backend.serviceaccount.identity.example.org",
        "*.ops.serviceaccount.identity.example.org",
        "*.batch.serviceaccount.identity.example.org",
    )


MESHTLS_CASES = [
    ({"identities": ["*"], "identityRefs": [{"kind": "Namespace", "name": "a"}]}, "spec",
     "set exactly one of identities and identityRefs, not both"),
    ({"identities": []}, "spec.identities", "must list at least one entry"),
    ({"identityRefs": []}, "spec.identityRefs", "must list at least one entry"),
    ({"identities": ["Web.shop"]}, "spec.identities[0]", "invalid identity \"Web.shop\""),
    ({"identities": ["spiffe://cluster.local/ns/shop/pod/web"]}, "spec.identities[0]",
     "invalid SPIFFE ID"),
    ({"identities": [3]}, "spec.identities[0]", "must be a string"),
    ({"identities": "*"}, "spec.identities", "must be a list"),
    ({"identityRefs": [{"kind": "Pod", "name": "a"}]}, "spec.identityRefs[0].kind",
     "must be one of ServiceAccount, Namespace"),
    ({"identityRefs": [{"kind": "Namespace"}]}, "spec.identityRefs[0].name",
     "required field is missing"),
    ({"identityRefs": [{"kind": "Namespace", "name": "a", "namespace": "b"}]},
     "spec.identityRefs[0].namespace", "must not be set on a Namespace reference"),
    ({"identityRefs": [{"kind": "ServiceAccount", "name": "a", "extra": 1}]},
     "spec.identityRefs[0].extra", "unknown field"),
    ({"identityRefs": [{"kind": "ServiceAccount", "name": "a"}], "ids": []}, "spec.ids",
     "unknown field"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "error_path", "message"), MESHTLS_CASES)
def test_mesh_tls_field_errors(spec: dict[str, Any], error_path: str, message: str) -> None:
    errs = errors(doc("MeshTLSAuthentication", spec))
    assert error_path in errs, errs
    assert message in errs[error_path]


# -- NetworkAuthentication ----------------------------------------------------------------------


def test_network_authentication_ipv4_and_ipv6_with_exceptions() -> None:
    n = roundtrip(
        doc(
            "NetworkAuthentication",
            {
                "networks": [
                    {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.3.4"]},
                    {"cidr": "fd00::/8", "except": ["fd00:1::/32"]},
                    {"cidr": "192.168.1.7"},
                ]
            },
        )
    )
    assert isinstance(n, NetworkAuthentication)
    assert n.spec.networks == (
        Network("10.0.0.0/8", ("10.1.0.0/16", "10.2.3.4/32")),
        Network("fd00::/8", ("fd00:1::/32",)),
        Network("192.168.1.7/32"),
    )


NETWORK_CASES = [
    ({"networks": []}, "spec.networks", "must list at least one network"),
    ({"networks": [{}]}, "spec.networks[0].cidr", "required field is missing"),
    ({"networks": [{"cidr": "10.0.0.1/8"}]}, "spec.networks[0].cidr", "has host bits set"),
    ({"networks": [{"cidr": "10.0.0.0/33"}]}, "spec.networks[0].cidr", "must be a CIDR"),
    ({"networks": [{"cidr": "web"}]}, "spec.networks[0].cidr", "must be a CIDR"),
    ({"networks": [{"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}]},
     "spec.networks[0].except[0]", "11.0.0.0/16 must lie within the cidr 10.0.0.0/8"),
    ({"networks": [{"cidr": "10.0.0.0/16", "except": ["10.0.0.0/8"]}]},
     "spec.networks[0].except[0]", "must lie within"),
    ({"networks": [{"cidr": "10.0.0.0/8", "except": ["fd00::/8"]}]},
     "spec.networks[0].except[0]", "must lie within"),
    ({"networks": [{"cidr": "10.0.0.0/8", "except": "10.1.0.0/16"}]},
     "spec.networks[0].except", "must be a list"),
    ({"networks": [{"cidr": "10.0.0.0/8", "exclude": []}]}, "spec.networks[0].exclude",
     "unknown field"),
    ({"networks": ["10.0.0.0/8"]}, "spec.networks[0]", "must be a mapping"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "error_path", "message"), NETWORK_CASES)
def test_network_authentication_field_errors(
    spec: dict[str, Any], error_path: str, message: str
) -> None:
    errs = errors(doc("NetworkAuthentication", spec))
    assert error_path in errs, errs
    assert message in errs[error_path]


# -- HTTPLocalRateLimitPolicy -------------------------------------------------------------------


def test_rate_limit_parses_and_round_trips() -> None:
    r = roundtrip(
        ratelimit(
            total={"requestsPerSecond": 100},
            identity={"requestsPerSecond": 20.5},
            overrides=[
                {
                    "requestsPerSecond": 50,
                    "clientRefs": [
                        {"kind": "ServiceAccount", "name": "batch"},
                        {"kind": "ServiceAccount", "name": "ops", "namespace": "tools"},
                    ],
                }
            ],
        )
    )
    assert isinstance(r, HTTPLocalRateLimitPolicy)
    assert (r.spec.total, r.spec.identity) == (100, 20.5)
    (o,) = r.spec.overrides
    assert o.requests_per_second == 50
    assert [(c.name, c.namespace) for c in o.client_refs] == [("batch", None), ("ops", "tools")]


@pytest.mark.parametrize(
    "spec",
    [
        {"identity": {"requestsPerSecond": 5}},
        {"overrides": [{"requestsPerSecond": 5, "clientRefs": [{"kind": "ServiceAccount",
                                                                "name": "a"}]}]},
    ],
)  # fmt: skip
def test_any_one_limit_is_enough(spec: dict[str, Any]) -> None:
    body = {"targetRef": {"kind": "Server", "name": "web-http"}, **spec}
    assert isinstance(
        parse_resource(doc("HTTPLocalRateLimitPolicy", body)), HTTPLocalRateLimitPolicy
    )


RATELIMIT_CASES = [
    ("spec.total", None, "spec", "set at least one limit: total, identity or overrides"),
    ("spec.total", {"requestsPerSecond": 0}, "spec.total.requestsPerSecond",
     "must be a positive number, got 0"),
    ("spec.total", {"requestsPerSecond": -1}, "spec.total.requestsPerSecond", "positive"),
    ("spec.total", {"requestsPerSecond": "10"}, "spec.total.requestsPerSecond",
     "must be a number"),
    ("spec.total", {"requestsPerSecond": True}, "spec.total.requestsPerSecond",
     "must be a number"),
    ("spec.total", {"requestsPerSecond": float("inf")}, "spec.total.requestsPerSecond",
     "positive"),
    ("spec.total", {}, "spec.total.requestsPerSecond", "required field is missing"),
    ("spec.total", 10, "spec.total", "must be a mapping"),
    ("spec.total", {"rps": 1}, "spec.total.rps", "unknown field"),
    ("spec.identity", {"requestsPerSecond": 101}, "spec.identity.requestsPerSecond",
     "must not be greater than spec.total.requestsPerSecond (100), got 101"),
    ("spec.overrides", [{"requestsPerSecond": 200, "clientRefs": [{"kind": "ServiceAccount",
                                                                  "name": "a"}]}],
     "spec.overrides[0].requestsPerSecond", "must not be greater than"),
    ("spec.overrides", [{"requestsPerSecond": 5}], "spec.overrides[0].clientRefs",
     "required field is missing"),
    ("spec.overrides", [{"requestsPerSecond": 5, "clientRefs": []}],
     "spec.overrides[0].clientRefs", "must list at least one client"),
    ("spec.overrides", [{"requestsPerSecond": 5, "clientRefs": [{"kind": "Namespace",
                                                                "name": "a"}]}],
     "spec.overrides[0].clientRefs[0].kind", "must be one of ServiceAccount"),
    ("spec.overrides", [{"clientRefs": [{"kind": "ServiceAccount", "name": "a"}]}],
     "spec.overrides[0].requestsPerSecond", "required field is missing"),
    ("spec.overrides",
     [{"requestsPerSecond": 5, "clientRefs": [{"kind": "ServiceAccount", "name": "a"}]},
      {"requestsPerSecond": 6, "clientRefs": [{"kind": "ServiceAccount", "name": "a",
                                               "namespace": "shop"}]}],
     "spec.overrides[1].clientRefs[0]",
     "ServiceAccount shop/a already has an override (spec.overrides[0].clientRefs[0])"),
    ("spec.targetRef", {"kind": "HTTPRoute", "name": "r"}, "spec.targetRef.kind",
     "must be one of Server"),
    ("spec.targetRef", None, "spec.targetRef", "required field is missing"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "error_path", "message"), RATELIMIT_CASES)
def test_rate_limit_field_errors(path: str, value: Any, error_path: str, message: str) -> None:
    errs = errors(_set(ratelimit(), path, value))
    assert error_path in errs, errs
    assert message in errs[error_path]


# -- kinds, Linkerd manifests, annotations ------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "kind"),
    [("srv", "Server"), ("servers", "Server"), ("authzpolicy", "AuthorizationPolicy"),
     ("authorizationpolicies", "AuthorizationPolicy"), ("meshtlsauthn", "MeshTLSAuthentication"),
     ("netauthn", "NetworkAuthentication"), ("ratelimit", "HTTPLocalRateLimitPolicy"),
     ("httplocalratelimitpolicies", "HTTPLocalRateLimitPolicy")],
)  # fmt: skip
def test_kinds_are_registered_with_their_names(alias: str, kind: str) -> None:
    info = resolve_kind(alias)
    assert (info.kind, info.api_version, info.namespaced) == (kind, API, True)


LINKERD_MANIFESTS = """\
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: web-http, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  port: http
  proxyProtocol: HTTP/1
  accessPolicy: all-authenticated
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-authz, namespace: shop}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: web-http}
  requiredAuthenticationRefs:
    - {name: web-clients, kind: MeshTLSAuthentication, group: policy.linkerd.io}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: web-clients, namespace: shop}
spec:
  identities: ["*.shop.serviceaccount.identity.linkerd.cluster.local"]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: office, namespace: shop}
spec:
  networks: [{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}, {cidr: "::/0"}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: {name: web-rl, namespace: shop}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: web-http}
  total: {requestsPerSecond: 100}
  identity: {requestsPerSecond: 20}
  overrides:
    - requestsPerSecond: 25
      clientRefs: [{kind: ServiceAccount, namespace: shop, name: special-client}]
---
apiVersion: policy.linkerd.io/v1beta2
kind: HTTPRoute
metadata: {name: web-get, namespace: shop}
spec:
  parentRefs: [{name: web-http, kind: Server, group: policy.linkerd.io}]
  rules:
    - matches: [{path: {value: /authors.json}, method: GET}]
"""


def test_linkerd_manifests_load_and_are_stored_under_weft_api_versions() -> None:
    docs = load_text(LINKERD_MANIFESTS, "linkerd.yaml")
    assert [d.kind for d in docs] == [
        "Server",
        "AuthorizationPolicy",
        "MeshTLSAuthentication",
        "NetworkAuthentication",
        "HTTPLocalRateLimitPolicy",
        "HTTPRoute",
    ]
    assert [d.resource.to_dict()["apiVersion"] for d in docs] == [API] * 5 + [
        "gateway.networking.k8s.io/v1"
    ]


def test_default_inbound_policy_annotation_is_validated_on_namespaces_and_templates() -> None:
    key = "config.weft.io/default-inbound-policy"
    ok = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": "shop", "annotations": {key: "cluster-authenticated"}}}  # fmt: skip
    parse_resource(ok)
    bad = copy.deepcopy(ok)
    bad["metadata"]["annotations"][key] = "allow-all"
    assert errors(bad) == {
        f'metadata.annotations["{key}"]': 'invalid default inbound policy "allow-all": must be '
        "one of all-unauthenticated, all-authenticated, cluster-unauthenticated, "
        "cluster-authenticated, deny, audit"
    }
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {key: "denied"}},
                "spec": {"containers": [{"name": "web", "command": ["x"]}]},
            },
        },
    }
    assert f'spec.template.metadata.annotations["{key}"]' in errors(deploy)
    deploy["spec"]["template"]["metadata"]["annotations"][key] = "deny"
    parse_resource(deploy)
    # Pods are the runtime's: not refused, the control plane falls back with a warning
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "web-1", "annotations": {key: "denied"}},
           "spec": {"containers": [{"name": "web", "command": ["x"]}]}}  # fmt: skip
    parse_resource(pod)


# -- HTTPRoute with Server parents --------------------------------------------------------------


def inbound_route(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "parentRefs": [{"group": "policy.weft.io", "kind": "Server", "name": "web-http"}],
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}]}],
    }
    body.update(spec)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web-api", "namespace": "shop"},
        "spec": body,
    }


def test_a_route_with_server_parents_is_inbound() -> None:
    r = roundtrip(inbound_route())
    assert isinstance(r, HTTPRoute) and r.inbound
    (parent,) = r.spec.parent_refs
    assert (parent.kind, parent.group, parent.name, parent.port) == (
        "Server",
        "policy.weft.io",
        "web-http",
        None,
    )
    assert not parent.service and parent.describe() == "Server web-http"
    assert r.to_dict()["spec"]["parentRefs"] == [
        {"group": "policy.weft.io", "kind": "Server", "name": "web-http", "namespace": "shop"}
    ]
    linkerd = parse_resource(
        inbound_route(parentRefs=[{"group": "policy.linkerd.io", "kind": "Server", "name": "s"}])
    )
    assert isinstance(linkerd, HTTPRoute) and linkerd.inbound
    outbound = parse_resource(
        inbound_route(parentRefs=[{"group": "core", "kind": "Service", "name": "web"}])
    )
    assert isinstance(outbound, HTTPRoute) and not outbound.inbound


INBOUND_ROUTE_CASES = [
    ({"parentRefs": [{"kind": "Server", "name": "s"}]}, "spec.parentRefs[0].group",
     "required for a Server parent: policy.weft.io or policy.linkerd.io"),
    ({"parentRefs": [{"group": "core", "kind": "Server", "name": "s"}]},
     "spec.parentRefs[0].group", 'group "core" is not supported by Weft'),
    ({"parentRefs": [{"group": "policy.weft.io", "kind": "Server", "name": "s", "port": 80}]},
     "spec.parentRefs[0].port", "port on a Server parent is not supported by Weft"),
    ({"parentRefs": [{"group": "policy.weft.io", "kind": "Server", "name": "s"},
                     {"group": "core", "kind": "Service", "name": "web"}]},
     "spec.parentRefs", "mixes Service and Server parents"),
    ({"parentRefs": [{"group": "policy.weft.io", "kind": "Server", "name": "s"},
                     {"group": "policy.linkerd.io", "kind": "Server", "name": "s"}]},
     "spec.parentRefs[1]", "duplicate of spec.parentRefs[0]"),
    ({"parentRefs": [{"group": "policy.weft.io", "kind": "Server", "name": "S"}]},
     "spec.parentRefs[0].name", "invalid name"),
    ({"parentRefs": [{"group": "policy.weft.io", "kind": "Gadget", "name": "s"}]},
     "spec.parentRefs[0].kind", "Server, with group policy.weft.io or policy.linkerd.io"),
    ({"hostnames": ["web.shop"]}, "spec.hostnames",
     "hostnames on an inbound route (parentRef kind Server) is not supported by Weft"),
    ({"rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}, "spec.rules[0].backendRefs",
     "backendRefs on an inbound route (parentRef kind Server) is not supported by Weft "
     "(supported: matches only)"),
    ({"rules": [{"filters": [{"type": "RequestHeaderModifier",
                              "requestHeaderModifier": {"remove": ["a"]}}]}]},
     "spec.rules[0].filters", "filters on an inbound route"),
    ({"rules": [{"timeouts": {"request": "1s"}}]}, "spec.rules[0].timeouts",
     "timeouts on an inbound route"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "error_path", "message"), INBOUND_ROUTE_CASES)
def test_inbound_route_refusals(spec: dict[str, Any], error_path: str, message: str) -> None:
    errs = errors(inbound_route(**spec))
    assert error_path in errs, errs
    assert message in errs[error_path]


def test_inbound_routes_refuse_traffic_policy_annotations() -> None:
    route = inbound_route()
    route["metadata"]["annotations"] = {"retry.weft.io/limit": "2", "other.io/x": "y"}
    assert errors(route) == {
        'metadata.annotations["retry.weft.io/limit"]': "retry.weft.io/limit on an inbound route "
        "(parentRef kind Server) is not supported by Weft (supported: matches only)"
    }


# -- property: any input parses or is refused with InvalidResources -----------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "*", "web", "http", "Server", "Namespace", "HTTPRoute", "ServiceAccount",
                     "MeshTLSAuthentication", "NetworkAuthentication", "policy.weft.io", "core",
                     "In", "Exists", "HTTP/1", "deny", "audit", "10.0.0.0/8", "10.1.0.0/16",
                     "::/0", "spiffe://td/ns/a/sa/b", "*.a.b", "shop"]),
)  # fmt: skip
_keys = st.sampled_from(
    ["podSelector", "matchLabels", "matchExpressions", "key", "operator", "values", "port",
     "proxyProtocol", "accessPolicy", "targetRef", "requiredAuthenticationRefs", "mode", "group",
     "kind", "name", "namespace", "identities", "identityRefs", "networks", "cidr", "except",
     "total", "identity", "overrides", "requestsPerSecond", "clientRefs", "app"]
)  # fmt: skip
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=20,
)
_KINDS = ["Server", "AuthorizationPolicy", "MeshTLSAuthentication", "NetworkAuthentication",
          "HTTPLocalRateLimitPolicy"]  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(_KINDS), spec=st.dictionaries(_keys, _values, max_size=4))
def test_any_spec_parses_or_raises_invalid_resources(kind: str, spec: dict[str, Any]) -> None:
    try:
        parsed = parse_resource(doc(kind, spec))
    except InvalidResources as exc:
        assert exc.errors
        return
    assert parse_resource(parsed.to_dict()) == parsed


_route_keys = st.sampled_from(
    ["parentRefs", "rules", "hostnames", "matches", "filters", "backendRefs", "timeouts", "path",
     "headers", "method", "type", "value", "name", "kind", "group", "port", "namespace"]
)  # fmt: skip
_route_values = st.recursive(
    st.one_of(st.none(), st.integers(-1, 70_000),
              st.sampled_from(["", "/", "/a", "web", "Server", "Service", "policy.weft.io",
                               "policy.linkerd.io", "core", "PathPrefix", "GET", "1s"])),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_route_keys, inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parent=st.dictionaries(_route_keys, _route_values, max_size=3),
    spec=st.dictionaries(_route_keys, _route_values, max_size=3),
)
def test_any_inbound_route_parses_or_raises_invalid_resources(
    parent: dict[str, Any], spec: dict[str, Any]
) -> None:
    document = inbound_route(**spec)
    document["spec"].setdefault("parentRefs", [])
    if isinstance(document["spec"]["parentRefs"], list):
        document["spec"]["parentRefs"].append(
            {"group": "policy.weft.io", "kind": "Server", "name": "s", **parent}
        )
    try:
        parsed = parse_resource(document)
    except InvalidResources as exc:
        assert exc.errors
        return
    assert isinstance(parsed, HTTPRoute)
    assert parse_resource(parsed.to_dict()) == parsed
