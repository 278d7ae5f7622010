"""Integration tests: the proxy's InboundPolicyWatch against a real control plane.

The control plane runs in-process on a unix socket in a temporary state directory, with the
``inbound`` API group served by :class:`weft.control.inbound.InboundPolicies` (put into
``plane.api.handlers`` here, as ``weft control`` does once wired). Resources go in through the
API, as ``weft apply`` sends them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from weft.control.client import ControlClient
from weft.control.config import ControlConfig
from weft.control.httpserver import Request, Response, Streaming, StreamWriter
from weft.control.inbound import InboundPolicies
from weft.control.server import ControlPlane
from weft.core.backoff import ExponentialBackoff
from weft.inbound import (
    Authorization,
    InboundPolicy,
    InboundRoute,
    PodInboundPolicy,
    RateLimit,
    RateLimitOverride,
)
from weft.metrics import ProxyMetrics
from weft.proxy.inbound.policy import (
    Denial,
    HttpConn,
    InboundPolicyWatch,
    default_authorizations,
    default_pod_policy,
)
from weft.testing import wait_until
from weft.testing.clock import FakeClock

WAIT = 5.0
POLICY = "policy.weft.io/v1beta1"
TD = "serviceaccount.identity.cluster.local"
WEB_ID = f"web.default.{TD}"


@pytest.fixture
def state_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="weft-inbound-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def start_plane(state_dir: str) -> tuple[ControlPlane, InboundPolicies]:
    plane = ControlPlane(ControlConfig(state_dir=state_dir, scrape_interval=3600.0))
    await plane.start()
    policies = InboundPolicies(plane.store, cluster_networks=["10.244.0.0/16"])
    plane.api.handlers["inbound"] = policies.handle
    return plane, policies


async def stop_plane(plane: ControlPlane, policies: InboundPolicies) -> None:
    policies.close()
    await plane.stop(grace=0.5)


@pytest.fixture
async def plane(state_dir: str) -> AsyncIterator[ControlPlane]:
    p, policies = await start_plane(state_dir)
    try:
        yield p
    finally:
        await stop_plane(p, policies)


def fast_backoff() -> ExponentialBackoff:
    return ExponentialBackoff(base=0.02, maximum=0.2, jitter=0.1)


def new_watch(endpoint: str, metrics: ProxyMetrics | None = None, **kw: Any) -> InboundPolicyWatch:
    return InboundPolicyWatch(
        endpoint,
        namespace="default",
        pod="web-1",
        metrics=metrics or ProxyMetrics(process=False),
        backoff=fast_backoff(),
        **kw,
    )


@pytest.fixture
async def watch(plane: ControlPlane) -> AsyncIterator[InboundPolicyWatch]:
    w = new_watch(plane.endpoint)
    w.start()
    try:
        yield w
    finally:
        await w.close()


def no_headers(name: bytes) -> bytes | None:
    return None


def get(conn: HttpConn, path: str = "/", method: bytes = b"GET") -> Denial | None:
    target, _, query = path.partition("?")
    return conn.check(method, target.encode(), query.encode(), no_headers)


def status(conn: HttpConn, path: str = "/", method: bytes = b"GET") -> int:
    denial = get(conn, path, method)
    return 200 if denial is None else denial.status


def samples(metrics: ProxyMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one counter family, by sorted label items."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(metrics.expose().decode()):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


# -- resources --------------------------------------------------------------------------------


def pod(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web-1", "labels": {"app": "web"}}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "command": ["sleep", "1000"],
                    "ports": [{"containerPort": 8080, "name": "http"}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                }
            ]
        },
        "status": {"phase": "Running", "podIP": "10.244.0.2", "ready": True},
    }


def server(access: str = "deny", protocol: str = "HTTP/1") -> dict[str, Any]:
    return {
        "apiVersion": POLICY,
        "kind": "Server",
        "metadata": {"name": "web-http"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "port": "http",
            "proxyProtocol": protocol,
            "accessPolicy": access,
        },
    }


def network(name: str, cidr: str) -> dict[str, Any]:
    return {
        "apiVersion": POLICY,
        "kind": "NetworkAuthentication",
        "metadata": {"name": name},
        "spec": {"networks": [{"cidr": cidr}]},
    }


def allow(
    name: str, network_name: str, kind: str = "Server", target: str = "web-http"
) -> dict[str, Any]:
    group = "gateway.networking.k8s.io" if kind == "HTTPRoute" else "policy.weft.io"
    return {
        "apiVersion": POLICY,
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name},
        "spec": {
            "targetRef": {"group": group, "kind": kind, "name": target},
            "requiredAuthenticationRefs": [
                {"group": "policy.weft.io", "kind": "NetworkAuthentication", "name": network_name}
            ],
        },
    }


def ratelimit(total: float) -> dict[str, Any]:
    return {
        "apiVersion": POLICY,
        "kind": "HTTPLocalRateLimitPolicy",
        "metadata": {"name": "web-rl"},
        "spec": {
            "targetRef": {"group": "policy.weft.io", "kind": "Server", "name": "web-http"},
            "total": {"requestsPerSecond": total},
        },
    }


def inbound_route(name: str, prefix: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"group": "policy.weft.io", "kind": "Server", "name": "web-http"}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": prefix}}]}],
        },
    }


def ref(kind: str, name: str) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name}}


# -- against the control plane ------------------------------------------------------------------


async def test_the_first_policy_is_applied(plane: ControlPlane, watch: InboundPolicyWatch) -> None:
    client = ControlClient(plane.endpoint)
    await client.apply(
        [pod(), server(), network("loopback", "127.0.0.0/8"), allow("lo", "loopback")]
    )
    assert await watch.wait_ready(WAIT)
    assert watch.current is not None
    port = watch.port(8080)
    assert port.policy.server == "default/web-http"
    assert port.protocol == "http1"
    assert status(port.http_connection("127.0.0.1", None, False)) == 200
    denied = get(port.http_connection("10.244.0.9", None, False))
    assert denied is not None
    assert (denied.status, denied.reason) == (403, "unauthorized")
    assert "web-http" in denied.detail
    assert status(port.http_connection("10.244.0.9", None, False), "/ready") == 200  # a probe
    assert port.tcp_allowed("127.0.0.1", None)
    assert not port.tcp_allowed("10.244.0.9", WEB_ID)
    assert port.tcp_connection("127.0.0.1", None, False)
    assert not port.tcp_connection("10.244.0.9", WEB_ID, True)
    # a port no Server selects: the mesh-wide default (all-unauthenticated)
    other = watch.port(9999)
    assert other.policy.server is None
    assert status(other.http_connection("10.244.0.9", None, False)) == 200
    assert watch.port(8080) is port
    assert "connected" in repr(watch)


async def test_a_change_applies_to_open_connections_within_a_second(
    plane: ControlPlane, watch: InboundPolicyWatch
) -> None:
    client = ControlClient(plane.endpoint)
    await client.apply(
        [pod(), server(), network("loopback", "127.0.0.0/8"), allow("lo", "loopback")]
    )
    assert await watch.wait_ready(WAIT)
    conn = watch.port(8080).http_connection("127.0.0.1", None, False)
    assert status(conn) == 200

    await client.delete([ref("AuthorizationPolicy", "lo")])
    await wait_until(lambda: status(conn) == 403, 1.0)  # the open connection
    assert status(watch.port(8080).http_connection("127.0.0.1", None, False)) == 403

    await client.apply([allow("lo", "loopback")])
    await wait_until(lambda: status(conn) == 200, 1.0)

    await client.apply([server(access="all-unauthenticated")])
    stranger = watch.port(8080).http_connection("192.168.1.1", None, False)
    await wait_until(lambda: status(stranger) == 200, 1.0)


async def test_the_last_policy_stays_while_the_control_plane_is_down(state_dir: str) -> None:
    plane, policies = await start_plane(state_dir)
    client = ControlClient(plane.endpoint)
    await client.apply(
        [pod(), server(), network("loopback", "127.0.0.0/8"), allow("lo", "loopback")]
    )
    watch = new_watch(plane.endpoint)
    try:
        assert await watch.wait_ready(WAIT)
        conn = watch.port(8080).http_connection("127.0.0.1", None, False)
        assert status(conn) == 200

        await stop_plane(plane, policies)
        await wait_until(lambda: "disconnected" in repr(watch), WAIT)
        await asyncio.sleep(0.3)  # several failed reconnections
        assert status(conn) == 200  # still the last policy, not the default
        assert status(watch.port(8080).http_connection("10.244.0.9", None, False)) == 403
        assert watch.port(8080).policy.server == "default/web-http"

        # a new control plane on the same state: the stream comes back and changes flow again
        plane, policies = await start_plane(state_dir)
        await wait_until(lambda: "disconnected" not in repr(watch), WAIT)
        await client.delete([ref("AuthorizationPolicy", "lo")])
        await wait_until(lambda: status(conn) == 403, WAIT)
    finally:
        await watch.close()
        await stop_plane(plane, policies)


async def test_rate_limits_answer_429_and_survive_unrelated_updates(
    plane: ControlPlane,
) -> None:
    clock = FakeClock()
    metrics = ProxyMetrics(process=False)
    watch = new_watch(plane.endpoint, metrics, clock=clock)
    watch.start()
    client = ControlClient(plane.endpoint)
    try:
        await client.apply([pod(), server(access="all-unauthenticated"), ratelimit(5)])
        assert await watch.wait_ready(WAIT)
        port = watch.port(8080)
        await wait_until(lambda: port.policy.ratelimit is not None, WAIT)
        conn = port.http_connection("10.244.0.9", WEB_ID, True)
        assert [status(conn) for _ in range(5)] == [200] * 5
        limited = get(conn)
        assert limited is not None
        assert (limited.status, limited.reason) == (429, "rate-limited")
        assert limited.retry_after == pytest.approx(0.2)
        assert limited.headers() == [(b"retry-after", b"1")]
        assert "total rate limit exceeded (5 rps)" in limited.detail
        assert status(conn, "/ready") == 200  # probes are not rate limited

        # an update that leaves the limit as it was keeps its buckets
        await client.apply([network("loopback", "127.0.0.0/8"), allow("lo", "loopback")])
        await wait_until(lambda: len(port.policy.authorizations) == 2, WAIT)
        assert status(conn) == 429
        clock.advance(0.2)
        assert status(conn) == 200
        assert status(conn) == 429

        limited_total = samples(metrics, "inbound_http_local_ratelimit_total")
        assert limited_total == {
            (("limit", "total"), ("ratelimit", "web-rl"), ("srv_name", "web-http")): 3.0
        }
        allowed = samples(metrics, "inbound_http_authz_allow_total")
        key = (
            ("authz_kind", "default"),
            ("authz_name", "all-unauthenticated"),
            ("client_id", WEB_ID),
            ("route_name", "default"),
            ("srv_kind", "server"),
            ("srv_name", "web-http"),
            ("target_port", "8080"),
            ("tls", "true"),
        )
        assert allowed[key] == 6 + 3  # the three rate-limited requests were authorized first
    finally:
        await watch.close()


async def test_inbound_routes_404_and_route_authorizations(
    plane: ControlPlane, watch: InboundPolicyWatch
) -> None:
    client = ControlClient(plane.endpoint)
    await client.apply(
        [
            pod(),
            server(),
            inbound_route("books", "/books"),
            inbound_route("admin", "/admin"),
            network("loopback", "127.0.0.0/8"),
            allow("books-lo", "loopback", kind="HTTPRoute", target="books"),
        ]
    )
    assert await watch.wait_ready(WAIT)
    port = watch.port(8080)
    await wait_until(lambda: len(port.policy.routes) == 2, WAIT)
    conn = port.http_connection("127.0.0.1", None, False)
    assert status(conn, "/books/1?x=1") == 200
    assert status(conn, "/admin") == 403
    denial = get(conn, "/nothing")
    assert denial is not None
    assert (denial.status, denial.reason) == (404, "route-not-found")
    assert status(conn, "/ready") == 200
    assert status(port.http_connection("10.244.0.9", None, False), "/books") == 403
    # a path an app would normalize into /admin does not get /books' rights
    for sneaky in ("/books/../admin", "/books/%2e%2e/admin", "//admin", "/books/.%2E/admin"):
        denial = get(conn, sneaky)
        assert denial is not None and (denial.status, denial.reason) == (
            400,
            "path-not-normalized",
        ), sneaky
    assert status(conn, "/books/a.b/c..d") == 200


async def test_null_policy_keeps_the_default_until_the_pod_exists(
    plane: ControlPlane, watch: InboundPolicyWatch
) -> None:
    assert not await watch.wait_ready(0.3)  # the pod is unknown: {"policy": null}
    await wait_until(lambda: "disconnected" not in repr(watch), WAIT)
    assert watch.current is None
    assert watch.port(8080).policy.default_policy == "all-unauthenticated"
    client = ControlClient(plane.endpoint)
    await client.apply([pod({"config.weft.io/default-inbound-policy": "deny"})])
    assert await watch.wait_ready(WAIT)
    assert status(watch.port(8080).http_connection("127.0.0.1", None, False)) == 403


async def test_invalid_policies_from_the_stream_are_ignored(plane: ControlPlane) -> None:
    # the real inbound service never sends an invalid policy: this handler does, then a valid one
    good = default_pod_policy("deny").to_json()
    sent = asyncio.Event()

    async def pump(writer: StreamWriter) -> None:
        bad = dict(good, ports=[{"port": 8080, "authorizations": [{"kind": "a", "name": "n",
                                 "networks": [{"cidr": "10.0.0.0/33"}]}]}])  # fmt: skip
        for item in ({}, {"policy": {"ports": "x"}}, {"policy": bad}, "noise"):
            await writer.send(json.dumps(item).encode() + b"\n")
        sent.set()
        await asyncio.sleep(0.2)
        await writer.send(json.dumps({"policy": good}).encode() + b"\n")
        await asyncio.sleep(30)

    async def handler(request: Request, rest: list[str]) -> Response | Streaming:
        return Streaming(pump)

    plane.api.handlers["inbound"] = handler
    watch = new_watch(plane.endpoint)
    try:
        watch.start()
        await asyncio.wait_for(sent.wait(), WAIT)
        await asyncio.sleep(0.05)
        assert not watch.ready
        assert watch.port(8080).policy.default_policy == "all-unauthenticated"
        assert await watch.wait_ready(WAIT)
        assert watch.port(8080).policy.default_policy == "deny"
    finally:
        await watch.close()


# -- before any control plane ---------------------------------------------------------------------


async def test_the_default_policy_applies_before_the_first_answer(state_dir: str) -> None:
    metrics = ProxyMetrics(process=False)
    nowhere = f"unix:{state_dir}/absent.sock"
    watch = new_watch(nowhere, metrics, default_policy="deny")
    try:
        assert not await watch.wait_ready(0.2)
        port = watch.port(8080)
        assert port.policy.server is None
        assert not port.tcp_connection("127.0.0.1", WEB_ID, True)
        conn = port.http_connection("127.0.0.1", None, False)
        denial = get(conn)
        assert denial is not None and denial.status == 403
        assert get(conn) is denial  # answers are prepared once per connection
        deny = samples(metrics, "inbound_http_authz_deny_total")
        assert deny == {
            (
                ("route_name", "default"),
                ("srv_kind", "default"),
                ("srv_name", "deny"),
                ("target_port", "8080"),
                ("tls", "no_identity"),
            ): 2.0
        }
        assert not port.tcp_allowed("127.0.0.1", WEB_ID)  # counts nothing
        tcp = samples(metrics, "inbound_tcp_authz_deny_total")
        assert list(tcp.values()) == [1.0]
        assert ("client_id", WEB_ID) in next(iter(tcp))
        assert "policy=default" in repr(watch)
    finally:
        await watch.close()
    assert b"inbound_" not in metrics.expose()  # closed: its families are gone


@pytest.mark.parametrize(
    ("default", "ip", "client_id", "allowed"),
    [
        ("all-unauthenticated", "192.168.1.1", None, True),
        ("all-authenticated", "192.168.1.1", None, False),
        ("all-authenticated", "192.168.1.1", WEB_ID, True),
        ("cluster-unauthenticated", "10.244.3.4", None, True),
        ("cluster-unauthenticated", "8.8.8.8", None, False),
        ("cluster-authenticated", "10.244.3.4", None, False),
        ("cluster-authenticated", "10.244.3.4", WEB_ID, True),
        ("cluster-authenticated", "10.9.0.1", WEB_ID, False),
        ("deny", "127.0.0.1", WEB_ID, False),
        ("audit", "127.0.0.1", None, True),
    ],
)
async def test_each_default_policy(
    state_dir: str, default: str, ip: str, client_id: str | None, allowed: bool
) -> None:
    metrics = ProxyMetrics(process=False)
    watch = new_watch(
        f"unix:{state_dir}/absent.sock",
        metrics,
        default_policy=default,
        cluster_networks=["10.244.0.0/16"],
    )
    port = watch.port(4000)
    assert port.tcp_connection(ip, client_id, client_id is not None) is allowed
    assert (status(port.http_connection(ip, client_id, client_id is not None)) == 200) is allowed
    if default == "audit":
        assert list(samples(metrics, "inbound_http_authz_audit_total").values()) == [1.0]
        assert list(samples(metrics, "inbound_tcp_authz_audit_total").values()) == [1.0]
        assert samples(metrics, "inbound_http_authz_allow_total") == {}
    await watch.close()


def test_cluster_policies_default_to_linkerds_cluster_networks() -> None:
    (a,) = default_authorizations("cluster-unauthenticated")
    assert "10.0.0.0/8" in {n.cidr for n in a.networks}
    assert default_authorizations("deny") == default_authorizations("audit") == ()
    assert default_pod_policy("audit").default.audit


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"default_policy": "allow"}, "unknown default policy 'allow'"),
        ({"cluster_networks": ["10.0.0.0/33"]}, "cluster network '10.0.0.0/33' is not a CIDR"),
        ({"namespace": ""}, "namespace and name"),
        ({"control": "ftp://x"}, "invalid control endpoint"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {
        "control": "unix:/nonexistent.sock",
        "namespace": "default",
        "pod": "web-1",
        "metrics": ProxyMetrics(process=False),
    }
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        InboundPolicyWatch(fields.pop("control"), **fields)


async def test_bad_ports_and_invalid_policies_are_refused(state_dir: str) -> None:
    watch = new_watch(f"unix:{state_dir}/absent.sock")
    for bad in (0, 65536, -1, True, "80"):
        with pytest.raises(ValueError, match="port must be 1-65535"):
            watch.port(bad)  # type: ignore[arg-type]
    port = watch.port(8080)
    conn = port.http_connection("127.0.0.1", None, False)
    invalid = PodInboundPolicy(
        ports=(
            InboundPolicy(port=8080, ratelimit=RateLimit("r", total=-1.0)),
            InboundPolicy(port=8081),
        ),
        default=InboundPolicy(port=1),
    )
    with pytest.raises(ValueError, match="requests per second must be finite and > 0"):
        watch.apply(invalid)
    with pytest.raises(ValueError, match="invalid inbound policy"):
        watch.apply(PodInboundPolicy(ports=(InboundPolicy(port=8080, probes=(["/x"],)),),  # type: ignore[arg-type]
                                     default=InboundPolicy(port=1)))  # fmt: skip
    assert watch.current is None
    assert status(conn) == 200  # the previous policy is still in force
    await watch.close()


async def test_identity_rate_limits_and_overrides_through_the_proxy_api(state_dir: str) -> None:
    clock = FakeClock()
    metrics = ProxyMetrics(process=False)
    watch = new_watch(f"unix:{state_dir}/absent.sock", metrics, clock=clock)
    anyone = Authorization("default", "all-unauthenticated")
    limit = RateLimit("default/rl", identity=2.0, overrides=(RateLimitOverride(4.0, (WEB_ID,)),))
    watch.apply(
        PodInboundPolicy(
            ports=(
                InboundPolicy(
                    port=8080,
                    server="default/web-http",
                    authorizations=(anyone,),
                    routes=(InboundRoute("default/all"),),
                    ratelimit=limit,
                ),
            ),
            default=InboundPolicy(port=1),
        )
    )
    port = watch.port(8080)
    web = port.http_connection("10.244.0.3", WEB_ID, True)
    anon_a = port.http_connection("10.244.0.4", None, False)
    anon_b = port.http_connection("10.244.0.5", None, False)
    assert [status(web) for _ in range(5)] == [200] * 4 + [429]
    assert [status(anon_a) for _ in range(2)] == [200, 200]
    assert status(anon_b) == 429  # clients without identity share one bucket
    by_limit = {
        dict(k)["limit"]: v
        for k, v in samples(metrics, "inbound_http_local_ratelimit_total").items()
    }
    assert by_limit == {"override": 1.0, "identity": 1.0}
    allowed = samples(metrics, "inbound_http_authz_allow_total")
    assert {dict(k)["route_name"] for k in allowed} == {"all"}
    await watch.close()
