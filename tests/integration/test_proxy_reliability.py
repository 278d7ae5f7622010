"""Retries, budgets, timeouts, splits, header routing, filters and circuit breaking, over real
sockets: policies arrive in discovery snapshots (a watched file here, the control plane in a mesh).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
import yaml

from tests.integration.test_proxy_http1 import sample
from tests.integration.test_proxy_http2 import METHOD_UNARY, GrpcServer, _identity
from weft.addr import Address
from weft.proxy.server import ProxyServer
from weft.proxy.static_discovery import StaticDiscovery
from weft.testing import FakeDiscovery, endpoint, running_proxy
from weft.testing.servers import Backend, HttpClient, Request, Response

SERVICE = ("127.0.0.1", 9)  # the address the app dials; only discovery knows it
CANARY = "canary.default.svc.cluster.local:80"
STABLE = "stable.default.svc.cluster.local:80"


def write(path: Path, policy: dict[str, Any] | None, eps: list[tuple[str, int]],
          backends: dict[str, list[tuple[str, int]]] | None = None) -> None:  # fmt: skip
    def dest(target: str, endpoints: list[tuple[str, int]], name: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": target,
            "labels": {"service": name, "namespace": "default"},
            "endpoints": [
                {"address": f"{h}:{p}", "labels": {"pod": f"{name}-{p}"}} for h, p in endpoints
            ],
        }
        return out

    doc = [dest(f"{SERVICE[0]}:{SERVICE[1]}", eps, "web")]
    if policy is not None:
        doc[0]["policy"] = policy
    for target, endpoints in (backends or {}).items():
        doc.append(dest(target, endpoints, target.split(".")[0]))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"destinations": doc}))
    tmp.replace(path)


def failing_every(n: int):  # type: ignore[no-untyped-def]
    counter = itertools.count(1)

    def handler(req: Request) -> Response:
        if next(counter) % n == 0:
            return Response(status=503, body=b"fail")
        return Response(body=b"ok")

    return handler


async def run_requests(proxy: ProxyServer, n: int, *, method: str = "GET", path: str = "/",
                       headers: list[tuple[str, str]] | None = None) -> list[int]:  # fmt: skip
    async with HttpClient(proxy.addresses["outbound"]) as client:
        return [
            (
                await client.request(method, path, headers=headers or [("host", "web")], body=None)
            ).status
            for _ in range(n)
        ]


async def test_retries_hide_a_flaky_backend_within_the_budget(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend(failing_every(3)) as backend:  # a third of requests fail
        write(f, {"retry": {"statuses": [[500, 599]], "limit": 3}}, [backend.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            statuses = await run_requests(proxy, 150)
            assert statuses.count(200) == 150
            effective = sample(proxy, "route_response_total", route="default")
            actual = sample(proxy, "route_actual_response_total", route="default")
            assert effective == 150
            assert actual == len(backend.requests) > 150  # retries are visible as actual traffic
            assert sample(proxy, "route_actual_response_total", classification="failure") > 0


async def test_budget_caps_the_extra_load_of_a_failing_backend(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend(lambda r: Response(status=500)) as backend:
        budget = {"ratio": 0.2, "min_per_second": 0.0, "ttl": 10.0}
        write(f, {"retry": {"limit": 3, "budget": budget}}, [backend.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            statuses = await run_requests(proxy, 200)
            assert set(statuses) == {500}
            # at most 20% more attempts than requests, whatever the retry limit
            assert len(backend.requests) <= 200 * 1.2 + 1


async def test_post_is_not_retried_without_a_route_that_allows_it(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend(lambda r: Response(status=503)) as backend:
        write(f, {"retry": {"limit": 3}}, [backend.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            statuses = await run_requests(proxy, 10, method="POST")
            assert statuses == [503] * 10
            assert len(backend.requests) == 10
            await run_requests(proxy, 10, method="GET")
            assert len(backend.requests) > 20  # GETs were retried


async def test_request_timeout_answers_504_and_cancels_the_attempt(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"

    async def slow(req: Request) -> Response:
        await asyncio.sleep(2)
        return Response()

    async with Backend(slow) as backend:
        write(f, {"timeouts": {"request": 0.2}}, [backend.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            async with HttpClient(proxy.addresses["outbound"]) as client:
                reply = await client.request("GET", "/")
            elapsed = loop.time() - t0
            assert reply.status == 504
            assert reply.header("weft-proxy-error") == "response-timeout"
            assert elapsed < 1.5  # well before the backend would have answered
            await asyncio.sleep(0.05)
            assert not backend.live or all(c.transport.is_closing() for c in backend.live)  # type: ignore[union-attr]


async def test_attempt_timeout_combines_with_retries(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    calls = itertools.count()

    async def first_slow(req: Request) -> Response:
        if next(calls) == 0:
            await asyncio.sleep(2)
        return Response(body=b"second try")

    async with Backend(first_slow) as backend:
        write(f, {"retry": {"limit": 2, "timeout": 0.2}}, [backend.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                reply = await client.request("GET", "/")
            assert reply.status == 200 and reply.body == b"second try"


async def test_weighted_split_and_live_weight_changes() -> None:
    async with Backend(lambda r: Response(body=b"stable")) as stable, \
            Backend(lambda r: Response(body=b"canary")) as canary:  # fmt: skip

        def policy(canary_weight: int) -> dict[str, Any]:
            return {"routes": [{"name": "default/split", "rules": [{"backends": [
                {"target": STABLE, "weight": 100 - canary_weight, "name": "stable"},
                {"target": CANARY, "weight": canary_weight, "name": "canary"},
            ]}]}]}  # fmt: skip

        feed = FakeDiscovery()
        feed.set_endpoints(SERVICE, [endpoint(stable.address)], service="web")
        feed.set_policy(SERVICE, policy(10))
        feed.set_endpoints(STABLE, [stable.address], service="stable")
        feed.set_endpoints(CANARY, [canary.address], service="canary")
        async with running_proxy(feed, outbound_target=SERVICE) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                seen = collections.Counter([(await client.request()).body for _ in range(1000)])
                assert abs(seen[b"canary"] / 1000 - 0.10) <= 0.03
                for weight in (50, 100):
                    feed.set_policy(SERVICE, policy(weight))  # the next request sees it
                    seen = collections.Counter([(await client.request()).body for _ in range(400)])
                    assert abs(seen[b"canary"] / 400 - weight / 100) <= 0.03
                    assert sum(seen.values()) == 400  # no failed request across the change


async def test_header_routing_sends_marked_requests_to_the_canary(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend(lambda r: Response(body=b"stable")) as stable, \
            Backend(lambda r: Response(body=b"canary")) as canary:  # fmt: skip
        policy = {"routes": [{"name": "default/canary", "rules": [{
            "matches": [{"headers": [{"name": "x-canary", "value": "1"}]}],
            "backends": [{"target": CANARY, "name": "canary"}],
        }]}]}  # fmt: skip
        write(f, policy, [stable.address], {CANARY: [canary.address]})
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                assert (await client.request()).body == b"stable"
                marked = await client.request(headers=[("host", "web"), ("x-canary", "1")])
                assert marked.body == b"canary"
            assert sample(proxy, "route_request_total", route="default/canary") == 1
            assert sample(proxy, "route_request_total", route="default") == 1


async def test_redirect_and_header_modifiers(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend() as backend:
        policy = {"routes": [{"name": "default/filters", "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
             "redirect": {"path": "/new", "status_code": 301}},
            {"request_headers": {"set": [["x-env", "mesh"]], "remove": ["x-secret"]},
             "response_headers": {"add": [["x-served-by", "weft"]]}},
        ]}]}  # fmt: skip
        write(f, policy, [backend.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                moved = await client.request("GET", "/old/page", headers=[("host", "web")])
                assert moved.status == 301
                assert moved.header("location") == "http://web:9/new"  # the port it was sent to
                reply = await client.request(
                    "GET", "/x", headers=[("host", "web"), ("x-secret", "s"), ("x-env", "dev")]
                )
                assert reply.header("x-served-by") == "weft"
            seen = backend.requests[-1]
            assert seen.header("x-env") == "mesh"
            assert seen.header("x-secret") is None
            assert [r.path for r in backend.requests] == ["/x"]  # the redirect never went up


async def test_failing_endpoint_is_ejected_then_all_ejected_fails_fast(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    accrual = {"max_failures": 3, "min_penalty": 30.0, "max_penalty": 60.0, "jitter": 0.0}
    async with Backend(lambda r: Response(body=b"good")) as good1, \
            Backend(lambda r: Response(body=b"good")) as good2, \
            Backend(lambda r: Response(status=500)) as bad:  # fmt: skip
        write(f, {"failure_accrual": accrual}, [good1.address, good2.address, bad.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            statuses = await run_requests(proxy, 300)
            # ejected after 3 consecutive failures; here the balancer passes it over already
            # after its first (a failure counts against an endpoint's cost)
            assert len(bad.requests) <= 3
            assert statuses.count(200) >= 297
        # every endpoint failing: once all are ejected, the proxy answers 503 itself, at once
        write(f, {"failure_accrual": accrual}, [bad.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            before = len(bad.requests)
            statuses = await run_requests(proxy, 10)
            assert statuses[:3] == [500, 500, 500]
            assert len(bad.requests) - before == 3
            text = proxy.metrics.expose().decode()
            assert f'endpoint="127.0.0.1:{bad.port}",state="ejected"' in text
            async with HttpClient(proxy.addresses["outbound"]) as client:
                reply = await client.request()
            assert reply.status == 503
            assert reply.header("weft-proxy-error") == "endpoints-ejected"


async def test_idle_timeout_ends_a_stalled_exchange(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"

    async def silent(req: Request) -> Response:
        await asyncio.sleep(10)
        return Response()

    async with Backend(silent) as backend:
        write(f, {"timeouts": {"idle": 1.0}}, [backend.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                reply = await client.request("GET", "/", timeout=5)
            assert reply.status == 504
            assert reply.header("weft-proxy-error") == "idle-timeout"

    # a response that starts, then stalls: the client connection is cut, not left hanging
    async with Backend(lambda r: Response(chunks=[b"first", b"never"])) as backend:
        backend.chunk_delay = 8.0
        write(f, {"timeouts": {"idle": 1.0}}, [backend.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.addresses["outbound"])
            writer.write(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 5)  # EOF well before the 8 s stall
            assert data.startswith(b"HTTP/1.1 200") and b"first" in data
            writer.close()


async def test_a_backend_discovery_does_not_know_answers_500(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    async with Backend() as backend:
        policy = {"routes": [{"name": "default/ghost", "rules": [{
            "backends": [{"target": "ghost.default.svc.cluster.local:80", "name": "ghost"}],
        }]}]}  # fmt: skip
        write(f, policy, [backend.address])  # the ghost service is listed nowhere
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            async with HttpClient(proxy.addresses["outbound"]) as client:
                reply = await client.request()
            assert reply.status == 500
            assert reply.header("weft-proxy-error") == "backend-not-found"
            assert backend.requests == []


# -- a fast-failing endpoint (issue 12) ----------------------------------------------------------

CONCURRENCY = 8
PER_CLIENT = 75  # 600 requests in all


@contextlib.asynccontextmanager
async def h2_backend(status: int, seen: list[int]) -> AsyncIterator[Address]:
    """A prior-knowledge HTTP/2 server answering every request ``status`` at once."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while data := await reader.read(65536):
                for e in conn.receive_data(data):
                    if isinstance(e, h2.events.StreamEnded):
                        seen.append(e.stream_id)
                        head = [(b":status", b"%d" % status), (b"content-length", b"2")]
                        conn.send_headers(e.stream_id, head)
                        conn.send_data(e.stream_id, b"ok", end_stream=True)
                writer.write(conn.data_to_send())
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()


async def h2_requests(address: Address, n: int) -> list[int]:
    """``n`` GETs in turn on one prior-knowledge h2c connection; their statuses."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    reader, writer = await asyncio.open_connection(*address)
    statuses: list[int] = []
    try:
        writer.write(conn.data_to_send())
        for _ in range(n):
            sid = conn.get_next_available_stream_id()
            head = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "web")]
            conn.send_headers(sid, head, end_stream=True)
            writer.write(conn.data_to_send())
            status = 0
            ended = False
            async with asyncio.timeout(10):
                while not ended:
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionError("the proxy closed the connection")
                    for e in conn.receive_data(data):
                        if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
                            status = int(dict(e.headers)[b":status"])
                        elif isinstance(e, h2.events.DataReceived):
                            conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                        elif isinstance(e, h2.events.StreamEnded | h2.events.StreamReset):
                            ended = ended or e.stream_id == sid
                    writer.write(conn.data_to_send())
            statuses.append(status)
    finally:
        writer.close()
    return statuses


class FailingGrpc(GrpcServer):
    """A gRPC endpoint whose every call fails at once with UNAVAILABLE (trailers-only), as a
    pod's proxy answers when the app behind it is gone."""

    calls = 0

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the app is gone")
        return b""  # not reached


async def _load(proxy: ProxyServer, protocol: str) -> list[int]:
    """CONCURRENCY clients, PER_CLIENT requests each; the statuses (gRPC: its codes)."""
    address = proxy.addresses["outbound"]
    if protocol == "http1":

        async def client() -> list[int]:
            async with HttpClient(address) as c:
                return [(await c.request(headers=[("host", "web")])).status
                        for _ in range(PER_CLIENT)]  # fmt: skip

        runs = await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    elif protocol == "http2":
        runs = await asyncio.gather(*(h2_requests(address, PER_CLIENT) for _ in range(CONCURRENCY)))
    else:
        async with grpc.aio.insecure_channel(f"{address[0]}:{address[1]}") as ch:
            unary = ch.unary_unary(
                METHOD_UNARY, request_serializer=_identity, response_deserializer=_identity
            )

            async def calls() -> list[int]:
                codes = []
                for _ in range(PER_CLIENT):
                    try:
                        await unary(b"x", timeout=10)
                        codes.append(0)
                    except grpc.aio.AioRpcError as exc:
                        codes.append(exc.code().value[0])
                return codes

            runs = await asyncio.gather(*(calls() for _ in range(CONCURRENCY)))
    return [status for run in runs for status in run]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", ["http1", "http2", "grpc"])
async def test_an_endpoint_that_fails_fast_draws_only_a_few_requests(
    tmp_path: Path, protocol: str
) -> None:
    """One of three endpoints answers every request at once with an error (HTTP: 502; gRPC:
    UNAVAILABLE), as a pod's proxy does when its app died. Latency alone made it the cheapest
    endpoint, so it drew most of the traffic; a failure now counts against it, so it gets about
    the requests in flight when its first failure came back, and the rest go elsewhere."""
    f = tmp_path / "d.yaml"
    ok = 0 if protocol == "grpc" else 200
    async with contextlib.AsyncExitStack() as stack:
        if protocol == "http1":
            good = [await stack.enter_async_context(Backend()) for _ in range(2)]
            bad_backend = await stack.enter_async_context(Backend(lambda r: Response(status=502)))
            addresses = [g.address for g in good] + [bad_backend.address]

            def bad_count() -> int:
                return len(bad_backend.requests)
        elif protocol == "http2":
            seen: list[int] = []
            good_seen: list[int] = []
            addresses = [await stack.enter_async_context(h2_backend(200, good_seen))
                         for _ in range(2)]  # fmt: skip
            addresses.append(await stack.enter_async_context(h2_backend(502, seen)))

            def bad_count() -> int:
                return len(seen)
        else:
            good_grpc = [await stack.enter_async_context(GrpcServer(f"s{i}")) for i in range(2)]
            failing = await stack.enter_async_context(FailingGrpc("dead"))
            addresses = [g.address for g in good_grpc] + [failing.address]

            def bad_count() -> int:
                return failing.calls

        write(f, None, addresses)
        proxy = await stack.enter_async_context(
            running_proxy(StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE)
        )
        statuses = await _load(proxy, protocol)
    total = CONCURRENCY * PER_CLIENT
    assert len(statuses) == total
    failed = bad_count()
    # the requests in flight when its first failure came back, and a few more at most (its
    # penalty decays for tens of seconds before it is probed again); before: a third or more
    assert failed <= 2 * CONCURRENCY, (failed, collections.Counter(statuses))
    assert statuses.count(ok) == total - failed, collections.Counter(statuses)


async def test_an_upstream_that_breaks_counts_as_a_failure_and_ends_its_request(
    tmp_path: Path,
) -> None:
    """A request answered 502 by the proxy because its upstream closed without a response ends
    its outstanding count on the balancer (it used to stay pending forever, skewing the
    endpoint's cost) and costs the endpoint the failure penalty."""
    f = tmp_path / "d.yaml"
    async with Backend(lambda r: Response(raw=b"", close=True)) as broken:
        write(f, None, [broken.address])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            statuses = await run_requests(proxy, 5)
            assert statuses == [502] * 5
            (concrete,) = proxy.outbound.concretes.values()
            ((_, pending, estimate, _),) = concrete.balancer.stats()
            assert pending == 0
            assert estimate > 0.5  # the 1 s penalty, hardly decayed


class NotFoundGrpc(GrpcServer):
    """A gRPC endpoint whose every call is answered NOT_FOUND at once: an answer about the
    call, not a sign that the endpoint is broken."""

    calls = 0

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such book")
        return b""  # not reached


@pytest.mark.timeout(120)
async def test_grpc_answers_about_the_call_do_not_count_against_the_endpoint(
    tmp_path: Path,
) -> None:
    """Only server-error statuses (UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS) cost an endpoint
    the balancer's failure penalty; NOT_FOUND keeps it in the rotation with its real latency."""
    f = tmp_path / "d.yaml"
    async with contextlib.AsyncExitStack() as stack:
        good = await stack.enter_async_context(GrpcServer("s0"))
        answering = await stack.enter_async_context(NotFoundGrpc("nf"))
        write(f, None, [good.address, answering.address])
        proxy = await stack.enter_async_context(
            running_proxy(StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE)
        )
        statuses = await _load(proxy, "grpc")
        (concrete,) = proxy.outbound.concretes.values()
        estimates = {addr: est for addr, _, est, _ in concrete.balancer.stats()}
    assert statuses.count(5) == answering.calls > CONCURRENCY * PER_CLIENT // 10
    assert estimates[answering.address] < 0.5, estimates  # no 1 s penalty


async def test_a_refused_connect_backs_the_endpoint_off_without_a_latency_penalty(
    tmp_path: Path,
) -> None:
    """Connection refused: the endpoint leaves the ready set for its connect backoff and the
    request goes elsewhere; no failure penalty is observed, so once the app accepts again (a
    restart) it is back in the rotation at once instead of a minute of decay later."""
    f = tmp_path / "d.yaml"
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    refused = probe.getsockname()[:2]
    probe.close()  # nothing listens there now: connects are refused
    async with Backend() as good:
        write(f, None, [good.address, refused])
        async with running_proxy(
            StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE
        ) as proxy:
            assert await run_requests(proxy, 20) == [200] * 20
            (concrete,) = proxy.outbound.concretes.values()
            stats = {addr: (pending, est) for addr, pending, est, _ in concrete.balancer.stats()}
            assert stats[refused][0] == 0
            assert stats[refused][1] < 0.5, stats  # the default estimate, no 1 s penalty
            assert not concrete.balancer.ready(refused)  # backed off
