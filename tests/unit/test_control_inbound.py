"""Unit tests for the inbound policy service over a real Store: default policies, Servers,
AuthorizationPolicies and their authentications, inbound routes, rate limits, probes, and
notifications exactly when a pod's policy changes. Also the route status and the outbound
policy of routes whose parents are Servers."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest

from weft.control.inbound import InboundPolicies
from weft.control.policies import Policies
from weft.control.routestatus import RouteStatusController
from weft.control.store import Store
from weft.inbound import (
    Authorization,
    InboundPolicy,
    Network,
    PodInboundPolicy,
    RateLimit,
    RateLimitOverride,
    default_authorizations,
)
from weft.policy import PathMatch, RouteMatch
from weft.testing.clock import FakeClock
from weft.testing.cluster import cluster_of

API = "policy.weft.io/v1beta1"
KEY = "config.weft.io/default-inbound-policy"
CLUSTER = ("10.244.0.0/16",)
TD = "cluster.local"


def ident(sa: str, ns: str = "default") -> str:
    return f"{sa}.{ns}.serviceaccount.identity.{TD}"


class Mesh:
    """A store, a clock to order creation times, and the service under test."""

    def __init__(self, **kwargs: Any) -> None:
        self.clock = FakeClock(1_700_000_000.0)
        counter = itertools.count(1)
        self.store = Store(clock=self.clock, uid=lambda: f"uid-{next(counter)}")
        kwargs.setdefault("cluster_networks", CLUSTER)
        self.policies = InboundPolicies(cluster_of(self.store), **kwargs)
        self.seen: list[PodInboundPolicy | None] = []

    def apply(self, *docs: dict[str, Any]) -> None:
        self.store.apply(list(docs))
        self.clock.advance(1.0)  # creationTimestamp has whole seconds: keep "oldest" defined

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        self.store.delete([{"kind": kind, "metadata": {"name": name, "namespace": namespace}}])

    def policy(self, pod: str = "web-1", namespace: str = "default") -> PodInboundPolicy:
        got = self.policies.policy(namespace, pod)
        assert got is not None
        return got

    def port(self, number: int, pod: str = "web-1") -> InboundPolicy:
        for p in self.policy(pod).ports:
            if p.port == number:
                return p
        raise AssertionError(f"no entry for port {number}: {self.policy(pod)}")

    def subscribe(self, pod: str = "web-1", namespace: str = "default") -> None:
        current, _ = self.policies.subscribe(namespace, pod, self.seen.append)
        self.seen.append(current)


def namespace(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "annotations": annotations or {}},
    }


def pod(
    name: str = "web-1",
    *,
    ns: str = "default",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    ports: tuple[tuple[str, int], ...] = (("http", 8080), ("admin", 9990)),
    probes: dict[str, Any] | None = None,
    ip: str = "10.244.0.5",
    ready: bool = True,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "app",
        "command": ["serve"],
        "ports": [{"name": n, "containerPort": p} for n, p in ports],
    }
    container.update(probes or {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels if labels is not None else {"app": "web"},
            "annotations": annotations or {},
        },
        "spec": {"serviceAccountName": "web", "containers": [container]},
        "status": {"phase": "Running", "podIP": ip, "ready": ready},
    }


def server(
    name: str = "web-http",
    port: int | str = "http",
    *,
    ns: str = "default",
    selector: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body = {"podSelector": selector or {"matchLabels": {"app": "web"}}, "port": port, **spec}
    return {
        "apiVersion": API,
        "kind": "Server",
        "metadata": {"name": name, "namespace": ns},
        "spec": body,
    }


def authz(
    name: str,
    target: tuple[str, str],
    refs: list[dict[str, Any]] | None = None,
    *,
    ns: str = "default",
    mode: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "targetRef": {"kind": target[0], "name": target[1]},
        "requiredAuthenticationRefs": refs or [],
    }
    if mode is not None:
        spec["mode"] = mode
    return {
        "apiVersion": API,
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def meshtls(name: str, ns: str = "default", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "MeshTLSAuthentication",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def netauthn(name: str, networks: list[dict[str, Any]], ns: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "NetworkAuthentication",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"networks": networks},
    }


def ratelimit(name: str, target: str = "web-http", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "HTTPLocalRateLimitPolicy",
        "metadata": {"name": name},
        "spec": {"targetRef": {"kind": "Server", "name": target}, **spec},
    }


def inbound_route(name: str, server_name: str = "web-http", path: str = "/api") -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"group": "policy.weft.io", "kind": "Server", "name": server_name}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}]}],
        },
    }


def mesh_ref(name: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "MeshTLSAuthentication", "name": name, **extra}


# -- default policies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("all-unauthenticated", (Authorization("default", "all-unauthenticated"),)),
        ("all-authenticated", (Authorization("default", "all-authenticated", authenticated=True),)),
        (
            "cluster-unauthenticated",
            (
                Authorization(
                    "default", "cluster-unauthenticated", networks=(Network("10.244.0.0/16"),)
                ),
            ),
        ),
        (
            "cluster-authenticated",
            (
                Authorization(
                    "default",
                    "cluster-authenticated",
                    networks=(Network("10.244.0.0/16"),),
                    authenticated=True,
                ),
            ),
        ),
        ("deny", ()),
        ("audit", ()),
    ],
)
def test_each_default_policy_implies_its_authorizations(
    policy: str, expected: tuple[Authorization, ...]
) -> None:
    assert default_authorizations(policy, (Network("10.244.0.0/16"),)) == expected
    mesh = Mesh(default_policy=policy)
    mesh.apply(pod())
    got = mesh.policy()
    for entry in (*got.ports, got.default):
        assert entry.server is None and entry.default_policy == policy
        assert entry.authorizations == expected
        assert entry.audit == (policy == "audit")


def test_a_pod_without_servers_has_one_default_entry_per_declared_port() -> None:
    mesh = Mesh()
    mesh.apply(pod(ports=(("http", 8080), ("admin", 9990))))
    got = mesh.policy()
    assert [p.port for p in got.ports] == [8080, 9990]
    assert got.for_port(8080).default_policy == "all-unauthenticated"
    assert got.for_port(12345) is got.default
    assert mesh.policies.policy("default", "nope") is None


def test_default_policy_from_pod_then_namespace_then_mesh() -> None:
    mesh = Mesh(default_policy="cluster-unauthenticated")
    mesh.apply(namespace("shop", {KEY: "all-authenticated"}), namespace("plain"))
    mesh.apply(
        pod("a", ns="shop"),
        pod("b", ns="shop", annotations={KEY: "deny"}),
        pod("c", ns="plain"),
    )
    assert mesh.policies.policy("shop", "a").default.default_policy == "all-authenticated"  # type: ignore[union-attr]
    assert mesh.policies.policy("shop", "b").default.default_policy == "deny"  # type: ignore[union-attr]
    assert mesh.policies.policy("plain", "c").default.default_policy == "cluster-unauthenticated"  # type: ignore[union-attr]


def test_an_invalid_annotation_falls_back_to_the_mesh_default_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mesh = Mesh(default_policy="all-authenticated")
    mesh.apply(namespace("shop", {KEY: "deny"}))
    mesh.apply(pod(ns="shop", annotations={KEY: "allow-everything"}))
    with caplog.at_level(logging.WARNING, logger="weft.control.inbound"):
        mesh.subscribe(namespace="shop")
        computed = mesh.policies.compute("shop", "web-1")
        mesh.apply(server(ns="shop"))  # recomputes: the same warning is not logged again
    assert computed.policy is not None
    assert computed.policy.default.default_policy == "all-authenticated"
    (warning,) = computed.warnings
    assert "Pod shop/web-1: invalid config.weft.io/default-inbound-policy 'allow-everything'" in (
        warning
    )
    assert "using the mesh default all-authenticated" in warning
    assert [r.getMessage() for r in caplog.records].count(warning) == 1


def test_constructor_refuses_bad_settings() -> None:
    store = Store()
    with pytest.raises(ValueError, match="default inbound policy must be one of"):
        InboundPolicies(cluster_of(store), cluster_networks=CLUSTER, default_policy="allow")
    with pytest.raises(ValueError, match="at least one CIDR"):
        InboundPolicies(cluster_of(store), cluster_networks=())
    with pytest.raises(ValueError, match="at least one CIDR"):
        InboundPolicies(cluster_of(store), cluster_networks="10.0.0.0/8")
    with pytest.raises(ValueError, match="is not a CIDR"):
        InboundPolicies(cluster_of(store), cluster_networks=("10.0.0.1/8",))
    with pytest.raises(ValueError, match="trust domain"):
        InboundPolicies(cluster_of(store), cluster_networks=CLUSTER, trust_domain="Not A Domain")


# -- Servers ------------------------------------------------------------------------------------


def test_a_server_selects_a_port_by_name_or_number() -> None:
    mesh = Mesh()
    mesh.apply(pod())
    mesh.apply(
        server("web-http", "http", proxyProtocol="HTTP/1"),
        server("web-admin", 9990, proxyProtocol="gRPC", accessPolicy="all-authenticated"),
    )
    http, admin = mesh.port(8080), mesh.port(9990)
    assert (http.server, http.protocol, http.default_policy) == (
        "default/web-http",
        "http1",
        "deny",
    )
    assert http.authorizations == ()  # accessPolicy deny, no AuthorizationPolicy
    assert (admin.server, admin.protocol) == ("default/web-admin", "grpc")
    assert admin.authorizations == (
        Authorization("default", "all-authenticated", authenticated=True),
    )
    assert mesh.policy().default.server is None


def test_a_server_applies_only_to_pods_it_selects_and_ports_they_have() -> None:
    mesh = Mesh()
    mesh.apply(pod("web-1"), pod("api-1", labels={"app": "api"}, ports=(("grpc", 9000),)))
    mesh.apply(
        server("web-http"),
        server(
            "by-expr",
            9000,
            selector={"matchExpressions": [{"key": "app", "operator": "In", "values": ["api"]}]},
        ),
        server("named-missing", "metrics"),  # web pods have no port called metrics
    )
    assert mesh.port(8080).server == "default/web-http"
    assert mesh.port(9000, "api-1").server == "default/by-expr"
    assert [p.port for p in mesh.policy("api-1").ports] == [9000]


def test_a_server_port_the_pod_does_not_declare_gets_an_entry() -> None:
    mesh = Mesh()
    mesh.apply(pod(ports=()))
    mesh.apply(server("raw", 7000, proxyProtocol="opaque"))
    (entry,) = mesh.policy().ports
    assert (entry.port, entry.server, entry.protocol) == (7000, "default/raw", "opaque")


def test_two_servers_on_one_port_the_oldest_wins_and_it_is_reported() -> None:
    mesh = Mesh()
    mesh.apply(pod())
    mesh.apply(server("zz-first", "http", accessPolicy="all-unauthenticated"))
    mesh.apply(server("aa-second", 8080, accessPolicy="deny"))
    assert mesh.port(8080).server == "default/zz-first"
    (warning,) = mesh.policies.compute("default", "web-1").warnings
    assert "Servers default/zz-first and default/aa-second both select port 8080" in warning
    mesh.delete("Server", "zz-first")
    assert mesh.port(8080).server == "default/aa-second"
    assert mesh.policies.compute("default", "web-1").warnings == ()


# -- AuthorizationPolicies ----------------------------------------------------------------------


def test_server_and_namespace_targeted_policies_with_mesh_tls_identities() -> None:
    mesh = Mesh()
    mesh.apply(pod())
    mesh.apply(
        server("web-http"),
        server("web-admin", "admin"),
        meshtls(
            "clients",
            identities=[
                "*.shop.serviceaccount.identity.cluster.local",
                "spiffe://cluster.local/ns/default/sa/web",
            ],
        ),
        meshtls(
            "ops",
            identityRefs=[
                {"kind": "ServiceAccount", "name": "ops", "namespace": "ops"},
                {"kind": "Namespace", "name": "tools"},
            ],
        ),
        authz("web-clients", ("Server", "web-http"), [mesh_ref("clients")]),
        authz("ops-everywhere", ("Namespace", "default"), [mesh_ref("ops")]),
    )
    ops = Authorization(
        "authorizationpolicy",
        "ops-everywhere",
        authenticated=True,
        identities=(ident("ops", "ops"), "*.tools.serviceaccount.identity.cluster.local"),
    )
    assert mesh.port(8080).authorizations == (
        ops,
        Authorization(
            "authorizationpolicy",
            "web-clients",
            authenticated=True,
            identities=("*.shop.serviceaccount.identity.cluster.local", ident("web")),
        ),
    )
    assert mesh.port(9990).authorizations == (ops,)  # namespace-wide, on every Server port


def test_namespace_policies_do_not_apply_to_ports_without_a_server() -> None:
    mesh = Mesh(default_policy="deny")
    mesh.apply(pod())
    mesh.apply(authz("everyone", ("Namespace", "default")))
    assert mesh.port(8080).authorizations == () and mesh.policy().default.authorizations == ()


def test_trust_domain_is_used_for_identity_refs() -> None:
    mesh = Mesh(trust_domain="example.org")
    mesh.apply(pod())
    mesh.apply(
        server(),
        meshtls("clients", identityRefs=[{"kind": "ServiceAccount", "name": "web"}]),
        authz("a", ("Server", "web-http"), [mesh_ref("clients")]),
    )
    (a,) = mesh.port(8080).authorizations
    assert a.identities == ("web.default.serviceaccount.identity.example.org",)


def test_network_authentication_with_exceptions_and_an_empty_ref_list() -> None:
    mesh = Mesh()
    mesh.apply(pod())
    mesh.apply(namespace("net"))
    mesh.apply(
        server(),
        netauthn(
            "office",
            [{"cidr": "192.168.0.0/16", "except": ["192.168.7.0/24"]}, {"cidr": "fd00::/8"}],
            ns="net",
        ),
        authz(
            "from-office",
            ("Server", "web-http"),
            [{"kind": "NetworkAuthentication", "name": "office", "namespace": "net"}],
        ),
        authz("anyone", ("Server", "web-http")),
    )
    assert mesh.port(8080).authorizations == (
        Authorization("authorizationpolicy", "anyone"),
        Authorization(
            "authorizationpolicy",
            "from-office",
            networks=(Network("192.168.0.0/16", ("192.168.7.0/24",)), Network("fd00::/8")),
        ),
    )


def test_all_required_refs_combine_and_missing_ones_fail_closed() -> None:
    mesh = Mesh()
    mesh.apply(pod())
    refs = [mesh_ref("clients"), {"kind": "NetworkAuthentication", "name": "cluster"}]
    mesh.apply(server(), authz("strict", ("Server", "web-http"), refs))
    assert mesh.port(8080).authorizations == ()  # neither authentication exists yet
    (warning,) = mesh.policies.compute("default", "web-1").warnings
    assert "AuthorizationPolicy default/strict: MeshTLSAuthentication default/clients does " in (
        warning
    )
    assert "allows nobody until it does" in warning
    mesh.apply(meshtls("clients", identities=["*"]))
    assert mesh.port(8080).authorizations == ()  # the NetworkAuthentication is still missing
    mesh.apply(netauthn("cluster", [{"cidr": "10.244.0.0/16"}]))
    assert mesh.port(8080).authorizations == (
        Authorization(
            "authorizationpolicy",
            "strict",
            networks=(Network("10.244.0.0/16"),),
            authenticated=True,
            identities=("*",),
        ),
    )
    assert mesh.policies.compute("default", "web-1").warnings == ()
    mesh.delete("MeshTLSAuthentication", "clients")
    assert mesh.port(8080).authorizations == ()


def test_a_service_account_ref_narrows_a_mesh_tls_authentication() -> None:
    mesh = Mesh()
    mesh.apply(pod())
    mesh.apply(
        server(),
        meshtls("default-ns", identityRefs=[{"kind": "Namespace", "name": "default"}]),
        authz(
            "web-only",
            ("Server", "web-http"),
            [mesh_ref("default-ns"), {"kind": "ServiceAccount", "name": "web"}],
        ),
        authz(
            "never",
            ("Server", "web-http"),
            [mesh_ref("default-ns"), {"kind": "ServiceAccount", "name": "x", "namespace": "o"}],
        ),
    )
    assert mesh.port(8080).authorizations == (
        Authorization(
            "authorizationpolicy", "web-only", authenticated=True, identities=(ident("web"),)
        ),
    )
    (warning,) = mesh.policies.compute("default", "web-1").warnings
    assert "AuthorizationPolicy default/never" in warning and "allows nobody" in warning


def test_routes_of_a_server_carry_their_own_policies() -> None:
    mesh = Mesh()
    mesh.apply(pod())
    mesh.apply(server(), server("other", "admin"))
    mesh.apply(inbound_route("web-api"))
    mesh.apply(
        inbound_route("web-health", path="/health"),
        inbound_route("other-route", server_name="other"),
        {  # an outbound route: not part of inbound policy
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "outbound"},
            "spec": {"parentRefs": [{"group": "core", "kind": "Service", "name": "web-http"}]},
        },
        authz("health-anyone", ("HTTPRoute", "web-health")),
    )
    http = mesh.port(8080)
    assert [r.name for r in http.routes] == ["default/web-api", "default/web-health"]
    api, health = http.routes
    assert api.matches == (RouteMatch(path=PathMatch("PathPrefix", "/api")),)
    assert api.authorizations == ()
    assert health.authorizations == (Authorization("authorizationpolicy", "health-anyone"),)
    assert [r.name for r in mesh.port(9990).routes] == ["default/other-route"]
    assert http.authorizations == ()  # route policies do not widen the whole port


# -- audit ----------------------------------------------------------------------------------------


def test_audit_access_policy_and_audit_mode_policies() -> None:
    mesh = Mesh()
    mesh.apply(pod())
    mesh.apply(server(), server("web-admin", "admin", accessPolicy="audit"))
    assert not mesh.port(8080).audit
    assert mesh.port(9990).audit and mesh.port(9990).authorizations == ()
    mesh.apply(meshtls("clients", identities=["*"]))
    mesh.apply(authz("trial", ("Server", "web-http"), [mesh_ref("clients")], mode="audit"))
    http = mesh.port(8080)
    # audit mode: the would-be policy is evaluated (its authorization is there), denials are
    # recorded and allowed
    assert http.audit
    assert http.authorizations == (
        Authorization("authorizationpolicy", "trial", authenticated=True, identities=("*",)),
    )
    mesh.delete("AuthorizationPolicy", "trial")
    assert not mesh.port(8080).audit
    mesh.apply(
        inbound_route("web-api"), authz("route-trial", ("HTTPRoute", "web-api"), mode="audit")
    )
    assert mesh.port(8080).audit
    assert mesh.port(8080).routes[0].authorizations == (
        Authorization("authorizationpolicy", "route-trial"),
    )


# -- rate limits, probes ------------------------------------------------------------------------


def test_a_rate_limit_attaches_to_its_server_and_the_oldest_wins() -> None:
    mesh = Mesh()
    mesh.apply(pod())
    mesh.apply(server())
    mesh.apply(
        ratelimit(
            "web-rl",
            total={"requestsPerSecond": 100},
            identity={"requestsPerSecond": 20},
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
    mesh.apply(ratelimit("aa-later", total={"requestsPerSecond": 1}))
    mesh.apply(ratelimit("other", target="nope", total={"requestsPerSecond": 1}))
    assert mesh.port(8080).ratelimit == RateLimit(
        name="default/web-rl",
        total=100.0,
        identity=20.0,
        overrides=(RateLimitOverride(50.0, (ident("batch"), ident("ops", "tools"))),),
    )
    assert mesh.port(9990).ratelimit is None
    (warning,) = mesh.policies.compute("default", "web-1").warnings
    assert "default/web-rl and default/aa-later both target Server default/web-http" in warning


def test_probe_paths_are_listed_on_their_ports() -> None:
    mesh = Mesh(default_policy="deny")
    probes = {
        "readinessProbe": {"httpGet": {"port": "http", "path": "/ready"}},
        "livenessProbe": {"httpGet": {"port": 8080, "path": "live?full=1"}},
        "startupProbe": {"httpGet": {"port": "9991"}},
    }
    mesh.apply(pod(probes=probes))
    mesh.apply(server())
    assert mesh.port(8080).probes == ("/live", "/ready")
    assert mesh.port(8080).server == "default/web-http"
    assert mesh.port(9991).probes == ("/",)  # a probe port nothing declares gets an entry
    assert mesh.port(9990).probes == ()
    tcp_only = Mesh()
    tcp_only.apply(
        pod(
            probes={
                "readinessProbe": {"tcpSocket": {"port": 8080}},
                "livenessProbe": {"httpGet": {"port": "nope"}},
            }
        )
    )
    assert all(p.probes == () for p in tcp_only.policy().ports)


# -- notifications --------------------------------------------------------------------------------


def test_subscribers_are_notified_exactly_when_the_policy_changes() -> None:
    mesh = Mesh()
    mesh.apply(namespace("other"))
    mesh.subscribe()
    assert mesh.seen == [None]  # the pod does not exist yet
    mesh.apply(pod())
    assert len(mesh.seen) == 2 and mesh.seen[-1] is not None
    first = mesh.seen[-1]

    # changes that cannot alter this pod's policy: nothing is sent
    mesh.apply(pod("web-2", ip="10.244.0.6"))
    mesh.apply(server(ns="other"), authz("x", ("Namespace", "other"), ns="other"))
    mesh.store.put_status("Pod", "default", "web-1", {"phase": "Running", "ready": False})
    mesh.apply(server("unrelated", selector={"matchLabels": {"app": "api"}}))
    mesh.apply(meshtls("unused", identities=["*"]))
    assert len(mesh.seen) == 2

    mesh.apply(server())
    assert len(mesh.seen) == 3 and mesh.seen[-1] != first
    mesh.apply(server())  # unchanged apply
    mesh.apply(server(accessPolicy="deny"))  # a different document, the same policy
    assert len(mesh.seen) == 3
    mesh.apply(authz("anyone", ("Server", "web-http")))
    assert len(mesh.seen) == 4
    assert mesh.seen[-1] is not None
    assert mesh.seen[-1].for_port(8080).authorizations == (
        Authorization("authorizationpolicy", "anyone"),
    )
    mesh.apply(namespace("default", {KEY: "deny"}))
    assert len(mesh.seen) == 5 and mesh.seen[-1] is not None
    assert mesh.seen[-1].default.default_policy == "deny"
    mesh.delete("Pod", "web-1")
    assert len(mesh.seen) == 6 and mesh.seen[-1] is None


def test_subscribers_share_one_computation_and_can_leave() -> None:
    mesh = Mesh()
    mesh.apply(pod())
    a: list[PodInboundPolicy | None] = []
    b: list[PodInboundPolicy | None] = []
    first_a, leave_a = mesh.policies.subscribe("default", "web-1", a.append)
    first_b, leave_b = mesh.policies.subscribe("default", "web-1", b.append)
    assert first_a == first_b is not None
    assert "pods=1 subscribers=2" in repr(mesh.policies)
    leave_a()
    mesh.apply(server())
    assert a == [] and len(b) == 1
    leave_b()
    assert "pods=0" in repr(mesh.policies)
    mesh.policies.close()
    mesh.apply(server(accessPolicy="audit"))
    assert len(b) == 1


# -- HTTPRoutes with Server parents elsewhere in the control plane ------------------------------


def test_routes_with_server_parents_get_a_status_and_no_outbound_policy() -> None:
    mesh = Mesh()
    status = RouteStatusController(cluster_of(mesh.store), cluster_of(mesh.store), clock=mesh.clock)
    mesh.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web-http"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}]},
        },
        inbound_route("web-api"),
    )
    obj = mesh.store.get("HTTPRoute", "default", "web-api")
    assert obj is not None
    (parent,) = obj["status"]["parents"]
    assert parent["parentRef"]["kind"] == "Server"
    accepted = {c["type"]: (c["status"], c["message"]) for c in parent["conditions"]}
    assert accepted["Accepted"] == ("False", "Server default/web-http not found")
    assert accepted["ResolvedRefs"][0] == "True"
    mesh.apply(server())
    obj = mesh.store.get("HTTPRoute", "default", "web-api")
    assert obj is not None
    cond = obj["status"]["parents"][0]["conditions"][0]
    assert (cond["status"], cond["message"]) == ("True", "attached to Server default/web-http")
    # a Service of the same name does not pick the inbound route up
    policies = Policies(cluster_of(mesh.store))
    assert policies.attached_routes("default", "web-http") == []
    service = mesh.store.get("Service", "default", "web-http")
    assert service is not None and policies.policy(service, 8080) is None
    status.close()
