"""Metrics over HTTP/1.1 and HTTP/2: the same request is counted the same way, in the same series
with the same labels, whatever protocol carries it (docs/architecture.md "Metrics" and "Per-route
metrics": Linkerd's names and labels; the route series count what the client saw once per
request, the ``route_actual_*`` series every attempt)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.integration.l7.conftest import (
    DROP,
    SERVICE,
    DualBackend,
    Request,
    Response,
    mesh,
    sample,
    samples,
)

TARGET = f"{SERVICE[0]}:{SERVICE[1]}"
GENEROUS = {"ratio": 10.0, "min_per_second": 100.0, "ttl": 10.0}
COMPARED = (
    "request_total",
    "response_total",
    "response_latency_ms_count",
    "route_request_total",
    "route_response_total",
    "route_response_latency_ms_count",
    "route_actual_request_total",
    "route_actual_response_total",
)


def endpoint_labels(backend: DualBackend) -> dict[str, str]:
    return {
        "authority": "web",
        "direction": "outbound",
        "dst_namespace": "default",
        "dst_pod": f"web-{backend.port}",
        "dst_service": "web",
        "target_addr": TARGET,
        "tls": "disabled",
    }


ROUTE_LABELS = {
    "direction": "outbound",
    "dst_namespace": "default",
    "dst_service": "web",
    "target_addr": TARGET,
    "tls": "disabled",
}


async def test_a_request_is_counted_once_in_the_endpoints_series(
    tmp_path: Path, protocol: str
) -> None:
    async with DualBackend() as web:
        async with mesh(tmp_path, None, [web.address]) as m, m.client(protocol) as client:
            for _ in range(3):
                assert (await client.request()).status == 200
            labels = endpoint_labels(web)
            assert samples(m.proxy, "request_total") == [(labels, 3)]
            ok = {**labels, "status_code": "200", "classification": "success"}
            assert samples(m.proxy, "response_total") == [(ok, 3)]
            latency = {**labels, "status_code": "200"}
            assert samples(m.proxy, "response_latency_ms_count") == [(latency, 3)]
            route = {**ROUTE_LABELS, "route": "default"}
            assert samples(m.proxy, "route_request_total") == [(route, 3)]
            route_ok = {**route, "status_code": "200", "classification": "success"}
            assert samples(m.proxy, "route_response_total") == [(route_ok, 3)]


async def test_a_backend_5xx_is_a_failure(tmp_path: Path, protocol: str) -> None:
    async with DualBackend(lambda r: Response(status=500)) as web:
        async with mesh(tmp_path, None, [web.address]) as m, m.client(protocol) as client:
            assert (await client.request()).status == 500
            failed = {**endpoint_labels(web), "status_code": "500", "classification": "failure"}
            assert samples(m.proxy, "response_total") == [(failed, 1)]
            assert sample(m.proxy, "route_response_total", route="default",
                          status_code="500", classification="failure") == 1  # fmt: skip


async def test_an_answer_with_no_endpoint_is_counted_without_endpoint_labels(
    tmp_path: Path, protocol: str
) -> None:
    async with mesh(tmp_path, None, [], fail_fast_outbound=0.3) as m, m.client(protocol) as client:
        assert (await client.request()).status == 503
        labels = {"authority": "web", "direction": "outbound", "target_addr": TARGET,
                  "tls": "disabled"}  # fmt: skip
        assert samples(m.proxy, "request_total") == [(labels, 1)]
        failed = {**labels, "status_code": "503", "classification": "failure"}
        assert samples(m.proxy, "response_total") == [(failed, 1)]
        route = {**ROUTE_LABELS, "route": "default"}
        assert samples(m.proxy, "route_request_total") == [(route, 1)]
        assert samples(m.proxy, "route_response_total") == [
            ({**route, "status_code": "503", "classification": "failure"}, 1)
        ]


async def test_a_timeout_is_counted_against_the_endpoint_as_a_504(
    tmp_path: Path, protocol: str
) -> None:
    async def stall(req: Request) -> Response:
        await asyncio.sleep(3.0)
        return Response()

    async with DualBackend(stall) as web:
        policy = {"timeouts": {"request": 0.3}}
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            assert (await client.request()).status == 504
            labels = endpoint_labels(web)
            assert samples(m.proxy, "request_total") == [(labels, 1)]
            failed = {**labels, "status_code": "504", "classification": "failure"}
            assert samples(m.proxy, "response_total") == [(failed, 1)]


async def test_retries_are_hidden_in_the_route_series_and_counted_in_the_actual_series(
    tmp_path: Path, protocol: str
) -> None:
    seen = 0

    def first_fails(req: Request) -> Response:
        nonlocal seen
        seen += 1
        return Response(status=503 if seen == 1 else 200)

    async with DualBackend(first_fails) as web:
        policy = {"retry": {"limit": 1, "budget": GENEROUS}}
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            assert (await client.request()).status == 200
            route = {**ROUTE_LABELS, "route": "default"}
            assert samples(m.proxy, "route_request_total") == [(route, 1)]
            assert samples(m.proxy, "route_response_total") == [
                ({**route, "status_code": "200", "classification": "success"}, 1)
            ]
            assert samples(m.proxy, "route_actual_request_total") == [(route, 2)]
            assert sorted(samples(m.proxy, "route_actual_response_total"), key=str) == sorted([
                ({**route, "status_code": "503", "classification": "failure"}, 1),
                ({**route, "status_code": "200", "classification": "success"}, 1),
            ], key=str)  # fmt: skip


# -- the same traffic over both protocols, compared series by series ----------------------------


def _snapshot(m: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    return {
        name: {tuple(sorted(labels.items())): value for labels, value in samples(m.proxy, name)}
        for name in COMPARED
    }


async def test_the_same_traffic_gives_the_same_series_over_both_protocols(
    tmp_path: Path,
) -> None:
    """One sequence of requests (a success, a retried failure, a redirect, a timeout, an unknown
    backend, a non-idempotent failure, a broken upstream, attempts that time out, a HEAD)
    through a fresh proxy over HTTP/1.1, then over HTTP/2, to the same backend: every series
    (names, label sets, counts) must be identical."""
    flaky = 0

    async def handler(req: Request) -> Response:
        nonlocal flaky
        if req.path == "/flaky":
            flaky += 1
            return Response(status=503 if flaky % 2 else 200)  # each first attempt fails
        if req.path == "/slow":
            await asyncio.sleep(3.0)
        if req.path == "/fail":
            return Response(status=500)
        if req.path == "/drop":
            return DROP
        if req.path == "/stall":
            await asyncio.sleep(3.0)
        return Response()

    policy = {
        "retry": {"limit": 1, "budget": GENEROUS},
        "routes": [{"name": "default/app", "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
             "redirect": {"path": "/new", "status_code": 301}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}],
             "timeouts": {"request": 0.3}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/stall"}}],
             "retry": {"limit": 1, "timeout": 0.3, "budget": GENEROUS}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/ghost"}}],
             "backends": [{"target": "ghost.default.svc.cluster.local:80", "name": "ghost"}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]},
        ]}],
    }  # fmt: skip
    traffic = [("GET", "/ok"), ("GET", "/flaky"), ("GET", "/old"), ("GET", "/slow"),
               ("GET", "/ghost"), ("POST", "/fail"), ("GET", "/drop"), ("GET", "/stall"),
               ("HEAD", "/ok"), ("GET", "/ok")]  # fmt: skip
    expected = [200, 200, 301, 504, 500, 500, 502, 504, 200, 200]
    seen: dict[str, Any] = {}
    async with DualBackend(handler) as web:
        for protocol in ("http1", "http2"):
            async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
                statuses = []
                for method, path in traffic:
                    body = b"x" if method == "POST" else None
                    statuses.append((await client.request(method, path, body=body)).status)
                assert statuses == expected, protocol
                seen[protocol] = _snapshot(m)
    h1, h2 = seen["http1"], seen["http2"]
    differences = []
    for name in COMPARED:
        for labels in sorted(set(h1[name]) | set(h2[name])):
            a, b = h1[name].get(labels), h2[name].get(labels)
            if a != b:
                differences.append(f"{name}{dict(labels)}: http1={a} http2={b}")
    assert not differences, "\n".join(differences)
