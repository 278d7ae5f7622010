"""Integration tests for HTTPRoutes over the real control-plane API (unix socket, real client):
apply and refusal, status, the destination stream carrying the policy, live weight changes,
``weft get httproute``, and per-route stats scraped from fake proxies on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import pytest

from weft.control.client import ApiError, ControlClient
from weft.control.config import ControlConfig
from weft.control.server import ControlPlane
from weft.discovery import Destination
from weft.testing.clock import FakeClock

T = TypeVar("T")
WAIT = 5.0  # generous bound for "arrives"; never asserted as a latency
T0 = 1_700_000_000.0
BOUNDS = [1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000]


@pytest.fixture
def state_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="weft-rt-", dir="/tmp")  # unix socket paths are short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def plane(state_dir: str) -> AsyncIterator[ControlPlane]:
    p = ControlPlane(ControlConfig(state_dir=state_dir, scrape_interval=3600.0, heartbeat=0.2))
    await p.start()
    yield p
    await p.stop(grace=1.0)


@pytest.fixture
def client(plane: ControlPlane) -> ControlClient:
    return ControlClient(plane.endpoint)


async def next_item(it: AsyncIterator[T]) -> T:
    return await asyncio.wait_for(it.__anext__(), WAIT)


def svc(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"selector": {"app": name}, "ports": [{"port": 8080}]},
    }


def route(
    weights: tuple[int, int] = (100, 0),
    annotations: dict[str, str] | None = None,
    filters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
        "backendRefs": [
            {"name": "web", "port": 8080, "weight": weights[0]},
            {"name": "web-canary", "port": 8080, "weight": weights[1]},
        ],
        "timeouts": {"request": "5s"},
    }
    if filters is not None:
        rule["filters"] = filters
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web-api", "annotations": annotations or {}},
        "spec": {
            "parentRefs": [{"group": "core", "kind": "Service", "name": "web", "port": 8080}],
            "rules": [rule],
        },
    }


async def weft(state_dir: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "WEFT_STATE_DIR": state_dir}
    env.pop("WEFT_CONTROL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "weft", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def weights_of(dest: Destination | None) -> list[tuple[str, int]]:
    assert dest is not None and dest.policy is not None
    (r,) = dest.policy.routes
    (rule,) = r.rules
    return [(b.name, b.weight) for b in rule.backends]


async def test_destination_stream_carries_the_policy_and_live_weight_changes(
    client: ControlClient,
) -> None:
    await client.apply([svc("web", {"retry.weft.io/http": "5xx"})])
    stream = client.destinations("web.default.svc.cluster.local:8080")
    first = await next_item(stream)
    assert first is not None and first.policy is not None
    assert first.policy.routes == () and first.policy.retry is not None

    await client.apply([route(annotations={"retry.weft.io/limit": "3"})])
    dest = await next_item(stream)
    assert weights_of(dest) == [("web", 100), ("web-canary", 0)]
    assert dest is not None and dest.policy is not None
    (rule,) = dest.policy.routes[0].rules
    assert dest.policy.routes[0].name == "default/web-api"
    assert [b.target for b in rule.backends] == [
        "web.default.svc.cluster.local:8080",
        "web-canary.default.svc.cluster.local:8080",
    ]
    assert rule.timeouts.request == 5.0
    assert rule.retry is not None and (rule.retry.limit, rule.retry.all_methods) == (3, True)

    for split in ((90, 10), (50, 50), (0, 100)):  # a canary rollout, live
        await client.apply([route(split)])
        got = await next_item(stream)
        # the status write that follows an apply does not produce a snapshot of its own
        assert weights_of(got) == [("web", split[0]), ("web-canary", split[1])]

    await client.delete([route()])
    gone = await next_item(stream)
    assert gone is not None and gone.policy is not None and gone.policy.routes == ()
    await stream.aclose()


async def test_unsupported_features_and_bad_annotations_are_refused_by_name(
    client: ControlClient,
) -> None:
    mirror = [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow"}}}]
    with pytest.raises(ApiError) as info:
        await client.apply([svc("web"), route(filters=mirror)], source="route.yaml")
    assert info.value.status == 422
    assert info.value.details == [
        {
            "path": "spec.rules[0].filters[0].type",
            "message": "RequestMirror is not supported by Weft (supported: "
            "RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect)",
            "document": 1,
            "source": "route.yaml",
        }
    ]
    with pytest.raises(ApiError) as info:
        await client.apply([svc("web", {"retry.weft.io/http": "5xy"})])
    (detail,) = info.value.details
    assert detail["path"] == 'metadata.annotations["retry.weft.io/http"]'
    assert await client.list("Service") == []  # all or nothing


async def test_status_follows_services_and_weft_get_shows_it(
    client: ControlClient, state_dir: str, plane: ControlPlane
) -> None:
    await client.apply([route()])
    obj = await client.get("HTTPRoute", "default", "web-api")
    assert obj is not None
    (parent,) = obj["status"]["parents"]
    accepted, resolved = parent["conditions"]
    assert (accepted["type"], accepted["status"], accepted["reason"]) == (
        "Accepted",
        "False",
        "NoMatchingParent",
    )
    assert (resolved["status"], resolved["reason"]) == ("False", "BackendNotFound")

    code, out, err = await weft(state_dir, "get", "httproute")
    assert code == 0, err
    header, line = out.strip().splitlines()
    assert header.split() == ["NAME", "PARENTS", "ACCEPTED", "REASON", "AGE"]
    assert line.split()[:4] == ["web-api", "web:8080", "False", "NoMatchingParent"]

    await client.apply([svc("web")])
    obj = await client.get("HTTPRoute", "default", "web-api")
    assert obj is not None
    conds = {c["type"]: c for c in obj["status"]["parents"][0]["conditions"]}
    assert conds["Accepted"]["status"] == "True"
    assert conds["ResolvedRefs"]["message"] == (
        "spec.rules[0].backendRefs[1]: Service default/web-canary not found"
    )
    code, out, _ = await weft(state_dir, "get", "httproutes", "web-api")
    assert out.strip().splitlines()[1].split()[:4] == ["web-api", "web:8080", "True",
                                                       "BackendNotFound"]  # fmt: skip
    await client.apply([svc("web-canary")])
    code, out, _ = await weft(state_dir, "get", "httproute", "web-api", "-o", "yaml")
    assert code == 0
    assert "reason: ResolvedRefs" in out and "controllerName: weft.io/control-plane" in out
    assert plane.route_status.writes == 3


# -- weft routes, against fake proxies ----------------------------------------------------------


class FakeProxy:
    """A client proxy's admin server serving route metrics text at /metrics."""

    def __init__(self) -> None:
        self.text = ""
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            body = self.text.encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body)
            )
            await writer.drain()
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def set(self, route: str, ok: int, fail: int, attempts_failed: int, latency_ms: float) -> None:
        base = f'direction="outbound",route="{route}",dst_service="web",dst_namespace="default"'
        n = ok + fail
        lines = [
            "# TYPE route_request_total counter",
            f"route_request_total{{{base}}} {n}",
            "# TYPE route_response_total counter",
            f'route_response_total{{{base},status_code="200",classification="success"}} {ok}',
            f'route_response_total{{{base},status_code="500",classification="failure"}} {fail}',
            "# TYPE route_actual_response_total counter",
            f'route_actual_response_total{{{base},status_code="200",classification="success"}} '
            f"{ok}",
            f'route_actual_response_total{{{base},status_code="500",classification="failure"}} '
            f"{attempts_failed}",
            "# TYPE route_response_latency_ms histogram",
        ]
        for b in BOUNDS:
            lines.append(
                f'route_response_latency_ms_bucket{{{base},le="{b}"}} {n if latency_ms <= b else 0}'
            )
        lines.append(f'route_response_latency_ms_bucket{{{base},le="+Inf"}} {n}')
        lines.append(f"route_response_latency_ms_count{{{base}}} {n}")
        lines.append(f"route_response_latency_ms_sum{{{base}}} {n * latency_ms}")
        self.text = "\n".join(lines) + "\n"


def client_pod(name: str, admin_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app": "client"},
            "annotations": {"weft.io/proxy-admin": f"127.0.0.1:{admin_port}"},
        },
        "spec": {"containers": [{"name": "app", "command": ["client"]}]},
        "status": {"phase": "Running", "podIP": "10.244.0.30", "ready": True},
    }


async def test_weft_routes_from_scraped_client_proxies(state_dir: str) -> None:
    clock = FakeClock(T0)
    plane = ControlPlane(ControlConfig(state_dir=state_dir, scrape_interval=3600.0), clock=clock)
    proxies = [FakeProxy(), FakeProxy()]
    for p in proxies:
        await p.start()
    await plane.start()
    client = ControlClient(plane.endpoint)
    try:
        a, b = proxies
        await client.apply(
            [svc("web"), svc("web-canary"), route((90, 10)),
             client_pod("client-a", a.port), client_pod("client-b", b.port)]
        )  # fmt: skip
        clock.advance(100)
        a.set("default/web-api", 0, 0, 0, 3.5)
        b.set("default/web-api", 0, 0, 0, 3.5)
        assert await plane.scraper.scrape_once() == 2
        clock.advance(30)
        # 600 requests over both clients, 6 failed; 120 attempts failed in all (114 retried)
        a.set("default/web-api", 396, 4, 80, 3.5)
        b.set("default/web-api", 198, 2, 40, 3.5)
        assert await plane.scraper.scrape_once() == 2

        rows = await client.routes("web", "default", 60)
        assert [r["route"] for r in rows] == ["default/web-api", "default"]
        api = rows[0]
        assert (api["requests"], api["successes"], api["success"]) == (600, 594, 0.99)
        assert api["rps"] == pytest.approx(10.0)
        assert (api["actual_requests"], api["actual_successes"]) == (714, 594)
        assert api["actual_rps"] == pytest.approx(714 / 60, abs=1e-6)
        assert api["latency_ms_p50"] == pytest.approx(3.5)
        assert rows[1]["requests"] == 0 and rows[1]["success"] is None

        code, out, err = await weft(
            state_dir, "routes", "web", "-o", "wide", "--control", plane.endpoint
        )
        assert code == 0, err
        header, line, default = out.strip().splitlines()
        assert header.split() == [
            "ROUTE", "SERVICE", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99",
            "EFFECTIVE_SUCCESS", "EFFECTIVE_RPS", "ACTUAL_SUCCESS", "ACTUAL_RPS",
        ]  # fmt: skip
        assert line.split() == ["web-api", "web", "99.00%", "10.0rps", "4ms", "4ms", "4ms",
                                "99.00%", "10.0rps", "83.19%", "11.9rps"]  # fmt: skip
        assert default.split() == ["[default]", "web", "-", "-", "-", "-", "-", "-", "-", "-",
                                   "-"]  # fmt: skip

        with pytest.raises(ApiError) as info:
            await client.routes("nope", "default", 60)
        assert info.value.status == 404
        code, _, err = await weft(state_dir, "routes", "nope", "--control", plane.endpoint)
        assert code == 1 and "Service default/nope not found" in err
    finally:
        await plane.stop()
        for p in proxies:
            await p.stop()
