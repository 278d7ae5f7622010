"""The answers the proxy makes itself, over HTTP/1.1 and HTTP/2: the 502/503/504 rules, the
timeouts that produce them and the ``weft-proxy-error`` header that names the reason.

The rules (docs/architecture.md, ``weft.proxy.outbound.logical``): no
endpoint is 503 ``no-endpoints`` after waiting ``fail_fast`` for one (an endpoint that appears
meanwhile serves the request); every endpoint ejected by failure accrual is 503
``endpoints-ejected`` at once; a refused connect is 502 ``connect-failed``; an upstream that
closes before answering is 502 ``upstream-closed``; the request timeout (``timeouts.request`` /
``response``, and the proxy's ``--response-timeout``) is 504 ``response-timeout``; the
per-attempt timeout with no retry left is 504 ``attempt-timeout``; the idle timeout (no bytes
either way) is 504 ``idle-timeout`` before the response, and ends the response once it started.
An error answer is ``text/plain`` with a body that starts ``weft proxy:``; a backend's own 5xx
passes untouched.

Where the two paths differed (issue 15) the intended behaviour is the one documented for every
request: ``--response-timeout`` ("seconds to wait for a response's headers before 504") and
``timeout.weft.io/idle`` ("no bytes either way", on a Service or HTTPRoute) apply to HTTP/2
requests as to HTTP/1 ones.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tests.integration.l7.conftest import (
    DROP,
    DualBackend,
    Reply,
    Request,
    Response,
    mesh,
    sample,
)


def stalling(seconds: float, body: bytes = b"late") -> object:
    async def handler(req: Request) -> Response:
        await asyncio.sleep(seconds)
        return Response(body=body)

    return handler


def assert_proxy_error(reply: Reply, status: int, reason: str) -> None:
    assert (reply.status, reply.header("weft-proxy-error"), reply.error) == (status, reason, None)
    assert (reply.header("content-type") or "").startswith("text/plain")
    assert reply.body.startswith(b"weft proxy: ")


async def timed(coro: object) -> tuple[Reply, float]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    reply = await coro  # type: ignore[misc]
    return reply, loop.time() - t0


async def test_no_endpoints_is_503_after_waiting_for_one(tmp_path: Path, protocol: str) -> None:
    async with mesh(tmp_path, None, [], fail_fast_outbound=0.5) as m, m.client(protocol) as client:
        reply, elapsed = await timed(client.request())
        assert_proxy_error(reply, 503, "no-endpoints")
        assert 0.4 <= elapsed < 5.0  # it waited for an endpoint first
        assert sample(m.proxy, "response_total", status_code="503", classification="failure") == 1
        assert sample(m.proxy, "request_total", authority="web") == 1


async def test_an_endpoint_that_appears_while_waiting_serves_the_request(
    tmp_path: Path, protocol: str
) -> None:
    async with DualBackend() as web:
        async with mesh(tmp_path, None, [], fail_fast_outbound=20.0) as m:
            async with m.client(protocol) as client:
                pending = asyncio.ensure_future(client.request("GET", "/late", timeout=15))
                await asyncio.sleep(0.3)
                assert not pending.done()
                m.update(None, [web.address])
                reply = await pending
        assert (reply.status, reply.body) == (200, b"GET /late")


async def test_every_endpoint_ejected_is_503_at_once(tmp_path: Path, protocol: str) -> None:
    accrual = {"max_failures": 1, "min_penalty": 30.0, "max_penalty": 60.0, "jitter": 0.0}
    async with DualBackend(lambda r: Response(status=500)) as web:
        policy = {"failure_accrual": accrual}
        async with mesh(tmp_path, policy, [web.address], fail_fast_outbound=10.0) as m:
            async with m.client(protocol) as client:
                first = await client.request()
                assert (first.status, first.header("weft-proxy-error")) == (500, None)
                reply, elapsed = await timed(client.request())
            assert_proxy_error(reply, 503, "endpoints-ejected")
            assert elapsed < 5.0  # no waiting for the fail-fast timeout
        assert len(web.requests) == 1


@pytest.mark.parametrize("retry", [False, True], ids=["no-retry", "retry"])
async def test_a_refused_connect_is_502(tmp_path: Path, protocol: str, retry: bool) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        refused = ("127.0.0.1", probe.getsockname()[1])
    policy = {"retry": {"limit": 2}} if retry else None
    async with mesh(tmp_path, policy, [refused]) as m, m.client(protocol) as client:
        reply = await client.request()
        assert_proxy_error(reply, 502, "connect-failed")
        assert sample(m.proxy, "response_total", status_code="502", classification="failure") == 1


async def test_an_upstream_that_closes_before_answering_is_502(
    tmp_path: Path, protocol: str
) -> None:
    async with DualBackend(lambda r: DROP) as web:
        async with mesh(tmp_path, None, [web.address]) as m, m.client(protocol) as client:
            reply = await client.request()
            assert_proxy_error(reply, 502, "upstream-closed")
            again = await client.request()  # the client's connection is still good
            assert_proxy_error(again, 502, "upstream-closed")


async def test_a_proxy_error_to_a_head_request_has_no_body(tmp_path: Path, protocol: str) -> None:
    async with mesh(tmp_path, None, [], fail_fast_outbound=0.3) as m, m.client(protocol) as client:
        reply = await client.request("HEAD", "/")
        assert (reply.status, reply.header("weft-proxy-error")) == (503, "no-endpoints")
        assert (reply.body, reply.error) == (b"", None)
        again = await client.request("HEAD", "/")  # and the connection goes on
        assert (again.status, again.error) == (503, None)


async def test_a_backends_own_5xx_passes_untouched(tmp_path: Path, protocol: str) -> None:
    answer = Response(status=503, body=b"busy", headers=[("retry-after", "1")])
    async with DualBackend(lambda r: answer) as web:
        async with mesh(tmp_path, None, [web.address]) as m, m.client(protocol) as client:
            reply = await client.request()
        assert (reply.status, reply.body, reply.header("retry-after")) == (503, b"busy", "1")
        assert reply.header("weft-proxy-error") is None


async def test_the_request_timeout_is_504(tmp_path: Path, protocol: str) -> None:
    async with DualBackend(stalling(3.0)) as web:
        policy = {"timeouts": {"request": 0.3}}
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            reply, elapsed = await timed(client.request())
            assert_proxy_error(reply, 504, "response-timeout")
            assert elapsed < 2.5  # well before the backend would have answered
            assert sample(m.proxy, "route_response_total", route="default",
                          status_code="504", classification="failure") == 1  # fmt: skip


async def test_the_request_timeout_also_bounds_waiting_for_an_endpoint(
    tmp_path: Path, protocol: str
) -> None:
    policy = {"timeouts": {"request": 0.3}}
    async with mesh(tmp_path, policy, [], fail_fast_outbound=10.0) as m:
        async with m.client(protocol) as client:
            reply, elapsed = await timed(client.request())
    assert_proxy_error(reply, 504, "response-timeout")
    assert elapsed < 5.0  # not the 10 s of waiting for an endpoint


async def test_the_response_timeout_of_a_route_is_504(tmp_path: Path, protocol: str) -> None:
    async with DualBackend(stalling(3.0)) as web:
        policy = {"routes": [{"name": "default/slow", "rules": [
            {"timeouts": {"response": 0.3}}]}]}  # fmt: skip
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            reply, elapsed = await timed(client.request())
        assert_proxy_error(reply, 504, "response-timeout")
        assert elapsed < 2.5


async def test_the_proxys_response_timeout_applies_to_every_request(
    tmp_path: Path, protocol: str
) -> None:
    """``--response-timeout``: seconds to wait for a response's headers before 504, with no
    policy at all (issue 15: HTTP/2 requests ignored it)."""
    async with DualBackend(stalling(3.0)) as web:
        async with mesh(tmp_path, None, [web.address], response_timeout=0.3) as m:
            async with m.client(protocol) as client:
                reply, elapsed = await timed(client.request(timeout=10))
        assert_proxy_error(reply, 504, "response-timeout")
        assert elapsed < 2.5


async def test_the_attempt_timeout_with_no_retry_left_is_504(tmp_path: Path, protocol: str) -> None:
    async with DualBackend(stalling(3.0)) as web:
        policy = {"timeouts": {"backend_request": 0.3}}  # no retry policy
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            reply, elapsed = await timed(client.request())
        assert_proxy_error(reply, 504, "attempt-timeout")
        assert elapsed < 2.5
        assert len(web.requests) == 1


async def test_the_idle_timeout_before_the_response_is_504(tmp_path: Path, protocol: str) -> None:
    """``timeout.weft.io/idle``: no bytes either way (issue 15: HTTP/2 requests ignored it)."""
    async with DualBackend(stalling(6.0)) as web:
        policy = {"timeouts": {"idle": 1.0}}
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            reply, elapsed = await timed(client.request(timeout=10))
        assert_proxy_error(reply, 504, "idle-timeout")
        assert elapsed < 4.5  # 1 s, checked about once a second; the backend takes 6


async def test_the_idle_timeout_ends_a_response_that_stalls(tmp_path: Path, protocol: str) -> None:
    """A response that starts, then stalls: the client sees it end in an error (HTTP/1: the
    connection is cut; HTTP/2: the stream is reset), not hang until the backend goes on."""
    async with DualBackend(lambda r: Response(chunks=[b"first", b"never"])) as web:
        web.chunk_delay = 8.0
        policy = {"timeouts": {"idle": 1.0}}
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            reply, elapsed = await timed(client.request(timeout=7))
        assert reply.status == 200 and reply.body == b"first"
        assert reply.error is not None  # ended, not completed
        assert not reply.error.startswith("timeout"), reply.error  # by the proxy, not the client
        assert elapsed < 6.0  # well before the 8 s stall ends


async def test_a_timed_out_attempt_is_cancelled_upstream(tmp_path: Path, protocol: str) -> None:
    """The proxy gives up on the upstream request when its timeout fires (HTTP/1: closes the
    connection; HTTP/2: resets the stream), so the backend does not work for nobody."""
    gone = asyncio.Event()

    async def watch(req: Request) -> Response:
        try:
            await asyncio.sleep(5.0)
        except asyncio.CancelledError:
            gone.set()
            raise
        return Response()

    async with DualBackend(watch) as web:
        policy = {"timeouts": {"request": 0.3}}
        async with mesh(tmp_path, policy, [web.address]) as m, m.client(protocol) as client:
            reply = await client.request()
            assert reply.status == 504
            await asyncio.wait_for(gone.wait(), 4)
        assert web.cancelled == 1
