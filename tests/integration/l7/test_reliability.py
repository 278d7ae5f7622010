"""Retries and the retry budget over HTTP/1.1 and HTTP/2: which requests are retried, on what,
how often, and to which endpoint (docs/architecture.md "Outbound HTTP/1", docs/resources.md
"Traffic-policy annotations"; ``weft.core.retry`` decides, each protocol path applies).

The intended behaviour where the two paths differed (issue 15): a retry goes to another endpoint
than the one that just failed whenever there is one (docs/resources.md says so for gRPC; nothing
makes it right to send a retry back to the endpoint that just failed over HTTP/1).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.integration.l7.conftest import (
    DROP,
    DualBackend,
    Request,
    Response,
    mesh,
    sample,
)

GENEROUS = {"ratio": 10.0, "min_per_second": 100.0, "ttl": 10.0}  # never the limiting factor


def failing_every(n: int) -> Any:
    counter = itertools.count(1)

    def handler(req: Request) -> Response:
        if next(counter) % n == 0:
            return Response(status=503, body=b"fail")
        return Response(body=b"ok")

    return handler


def first_then(first: Response | None, then: Response, stall: float = 0.0) -> Any:
    """The first request gets ``first`` (or, when None, a stall of ``stall`` seconds); every
    later one ``then``."""
    calls = itertools.count()

    async def handler(req: Request) -> Response:
        if next(calls) == 0:
            if first is not None:
                return first
            await asyncio.sleep(stall)
        return then

    return handler


def always(status: int) -> Any:
    return lambda req: Response(status=status, body=b"backend says %d" % status)


async def test_retries_on_5xx_hide_a_flaky_backend(tmp_path: Path, protocol: str) -> None:
    async with DualBackend(failing_every(3)) as web:  # a third of the attempts fail
        policy = {"retry": {"statuses": [[500, 599]], "limit": 3, "budget": GENEROUS}}
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            statuses = [(await client.request()).status for _ in range(60)]
            assert statuses == [200] * 60
            assert sample(m.proxy, "route_response_total", route="default") == 60
            actual = sample(m.proxy, "route_actual_response_total", route="default")
            assert actual == len(web.requests) > 60  # every attempt is visible as ACTUAL
            failed = sample(m.proxy, "route_actual_response_total", route="default",
                            status_code="503", classification="failure")  # fmt: skip
            assert failed == len(web.requests) - 60


@pytest.mark.parametrize("failure", ["5xx", "attempt-timeout", "connection-lost"])
async def test_a_retry_goes_to_another_endpoint_than_the_one_that_failed(
    tmp_path: Path, protocol: str, failure: str
) -> None:
    """Two endpoints: ``bad`` fails every ``/x`` (a 503, a stall past the 0.3 s per-attempt
    timeout, or a connection closed without an answer) and answers anything else 503 at once;
    ``slow`` took 2 s for one request (its latency estimate is 2 s), answers at once otherwise.
    The balancer prefers ``bad`` (its failure penalty, 1 s, is cheaper than 2 s), so the first
    attempt of ``/x`` goes there; the retry must go to ``slow``, the other endpoint, not back to
    ``bad``."""

    async def bad_handler(req: Request) -> Response:
        if req.path != "/x" or failure == "5xx":
            return Response(status=503)
        if failure == "connection-lost":
            return DROP
        await asyncio.sleep(3.0)
        return Response(body=b"too late")

    async def slow_once(req: Request) -> Response:
        if req.path == "/warm":
            await asyncio.sleep(2.0)
        return Response(body=b"slow")

    async with DualBackend(bad_handler, "bad") as bad, DualBackend(slow_once, "slow") as slow:
        policy = {
            "retry": {"limit": 1, "budget": GENEROUS},
            "routes": [{"name": "default/x", "rules": [
                {"matches": [{"path": {"type": "Exact", "value": "/x"}}],
                 "retry": {"limit": 1, "timeout": 0.3, "budget": GENEROUS}},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]},
            ]}],
        }  # fmt: skip
        async with mesh(tmp_path, policy, [bad.address, slow.address]) as m:
            async with m.client(protocol) as client:
                warm = await client.request("GET", "/warm", timeout=15)
                assert warm.body == b"slow"  # a first attempt at bad was retried to slow
                assert slow.paths() == ["/warm"]
                reply = await client.request("GET", "/x")
            # the first attempt to the cheaper endpoint, the retry to the other one (also when
            # HTTP/1 takes a kept-alive connection closed with no byte of answer for a
            # keep-alive race: that resend avoids the endpoint too)
            tries = (bad.paths().count("/x"), slow.paths().count("/x"))
            assert tries == (1, 1), f"attempts of /x at (bad, slow): {tries}"
            assert (reply.status, reply.body) == (200, b"slow")


async def test_the_retry_limit_bounds_the_attempts_and_the_last_answer_passes(
    tmp_path: Path, protocol: str
) -> None:
    async with DualBackend(always(503)) as web:
        policy = {"retry": {"limit": 2, "budget": GENEROUS}}
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            replies = [await client.request() for _ in range(5)]
            assert [r.status for r in replies] == [503] * 5
            assert all(r.body == b"backend says 503" for r in replies)  # the backend's answer
            assert all(r.header("weft-proxy-error") is None for r in replies)
            assert len(web.requests) == 15  # 1 + 2 retries each
            assert sample(m.proxy, "route_actual_request_total", route="default") == 15
            assert sample(m.proxy, "route_request_total", route="default") == 5


async def test_only_the_policys_statuses_are_retried(tmp_path: Path, protocol: str) -> None:
    async with DualBackend(always(500)) as e500, DualBackend(always(503)) as e503:
        gateway_errors = {"retry": {"statuses": [[502, 504]], "limit": 1, "budget": GENEROUS}}
        for backend, status, attempts in ((e500, 500, 1), (e503, 503, 2)):
            async with mesh(tmp_path, gateway_errors, [backend.address]) as m:
                async with m.client(protocol) as client:
                    reply = await client.request()
            assert reply.status == status
            assert len(backend.requests) == attempts, status


async def test_a_routes_retry_policy_applies_to_its_requests_only(
    tmp_path: Path, protocol: str
) -> None:
    async with DualBackend(always(503)) as web:
        policy = {"routes": [{"name": "default/retried", "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/r"}}],
             "retry": {"limit": 2, "budget": GENEROUS}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]},
        ]}]}  # fmt: skip
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            assert (await client.request("GET", "/r")).status == 503
            assert (await client.request("GET", "/n")).status == 503
        assert web.paths() == ["/r", "/r", "/r", "/n"]


async def test_the_budget_stops_retries_once_spent(tmp_path: Path, protocol: str) -> None:
    async with DualBackend(always(500)) as web:
        none_left = {"ratio": 0.0, "min_per_second": 0.0, "ttl": 10.0}
        policy = {"retry": {"limit": 3, "budget": none_left}}
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            statuses = [(await client.request()).status for _ in range(20)]
        assert statuses == [500] * 20
        assert len(web.requests) == 20  # an empty budget: not a single retry

    async with DualBackend(always(500)) as web:
        fifth = {"ratio": 0.2, "min_per_second": 0.0, "ttl": 10.0}
        policy = {"retry": {"limit": 3, "budget": fifth}}
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            statuses = [(await client.request()).status for _ in range(100)]
        assert statuses == [500] * 100
        # at most 20% more attempts than requests, whatever the retry limit
        assert 100 < len(web.requests) <= 100 * 1.2 + 1


async def test_non_idempotent_methods_are_retried_only_when_the_route_allows(
    tmp_path: Path, protocol: str
) -> None:
    async with DualBackend(always(503)) as web:
        policy = {"retry": {"limit": 1, "budget": GENEROUS}}  # the Service's: idempotent only
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            for method in ("POST", "PATCH"):
                assert (await client.request(method, "/w", body=b"x")).status == 503
            assert len(web.requests) == 2  # not retried
            for method in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS"):
                body = b"x" if method == "PUT" else None
                assert (await client.request(method, "/i", body=body)).status == 503
            assert len(web.requests) == 2 + 5 * 2  # each retried once

    async with DualBackend(always(503)) as web:
        route_retry = {"routes": [{"name": "default/writes", "rules": [
            {"retry": {"limit": 1, "all_methods": True, "budget": GENEROUS}}]}]}  # fmt: skip
        async with mesh(tmp_path, route_retry, [web.address]) as m, m.client(protocol) as client:
            assert (await client.request("POST", "/w", body=b"x")).status == 503
        assert [r.method for r in web.requests] == ["POST", "POST"]  # the route said it is safe


async def test_a_body_is_replayed_whole_and_a_body_over_64_kib_is_never_retried(
    tmp_path: Path, protocol: str
) -> None:
    small = bytes(range(256)) * 4  # 1 KiB
    large = b"L" * (70 * 1024)  # over the 64 KiB replay buffer
    async with DualBackend(always(503)) as web:
        policy = {"retry": {"limit": 1, "budget": GENEROUS}}
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            assert (await client.request("PUT", "/small", body=small)).status == 503
            assert [r.body for r in web.requests] == [small, small]
            assert (await client.request("PUT", "/large", body=large)).status == 503
        assert web.paths() == ["/small", "/small", "/large"]  # the large one went up once
        assert web.requests[-1].body == large


async def test_a_connection_error_is_retried(tmp_path: Path, protocol: str) -> None:
    async with DualBackend(first_then(DROP, Response(body=b"second"))) as web:
        policy = {"retry": {"limit": 1, "budget": GENEROUS}}
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            reply = await client.request()
        assert (reply.status, reply.body, reply.error) == (200, b"second", None)
        assert len(web.requests) == 2


async def test_the_per_attempt_timeout_retries_a_stalled_attempt(
    tmp_path: Path, protocol: str
) -> None:
    async with DualBackend(first_then(None, Response(body=b"second"), stall=3.0)) as web:
        policy = {"retry": {"limit": 1, "timeout": 0.3, "budget": GENEROUS}}
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            reply = await client.request()
            elapsed = loop.time() - t0
        assert (reply.status, reply.body) == (200, b"second")
        assert elapsed < 2.5  # well before the stalled attempt would have answered
        assert len(web.requests) == 2


async def test_the_request_timeout_bounds_all_attempts_together(
    tmp_path: Path, protocol: str
) -> None:
    async def stall(req: Request) -> Response:
        await asyncio.sleep(5.0)
        return Response()

    async with DualBackend(stall) as web:
        policy = {"retry": {"limit": 10, "timeout": 0.3, "budget": GENEROUS},
                  "timeouts": {"request": 1.0}}  # fmt: skip
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            reply = await client.request()
            elapsed = loop.time() - t0
        assert reply.status == 504
        assert reply.header("weft-proxy-error") == "response-timeout"
        assert elapsed < 3.0  # ten 0.3 s attempts would take longer
        assert 2 <= len(web.requests) <= 4


async def test_a_refused_connect_goes_to_another_endpoint_without_a_retry_policy(
    tmp_path: Path, protocol: str
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        refused = ("127.0.0.1", probe.getsockname()[1])  # nothing listens once closed
    async with DualBackend() as web:
        async with mesh(tmp_path, None, [refused, web.address]) as m, m.client(protocol) as client:
            statuses = [(await client.request()).status for _ in range(20)]
        assert statuses == [200] * 20
        assert len(web.requests) == 20
