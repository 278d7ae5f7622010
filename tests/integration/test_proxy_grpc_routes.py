"""GRPCRoutes, gRPC retries and ``grpc-timeout`` in the HTTP/2 path, over real sockets: grpcio
clients -> the proxy's HTTP/2 path (wired in-test, as in test_proxy_http2) -> real grpcio
servers. Policies are built from GRPCRoute documents by the control plane's translator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import h2.config
import h2.connection
import h2.events
import pytest

from tests.integration.test_proxy_http2 import H2Proxy, _identity
from weft.addr import Address
from weft.control.policies import build_policy
from weft.discovery import Endpoint
from weft.policy import RetryPolicy, ServicePolicy, Timeouts
from weft.proxy.outbound.concrete import Concrete
from weft.resources.annotations import PolicyAnnotations
from weft.resources.grpcroute import GRPCRoute

pytestmark = pytest.mark.timeout(60)

UNARY = "/test.Svc/Unary"
OTHER = "/test.Svc/Other"
WAIT = "/test.Svc/Wait"
SLOW_STREAM = "/test.Svc/SlowStream"


class Server:
    """A grpcio server whose unary methods answer ``name:request``, or abort with ``code``."""

    def __init__(self, name: str, code: grpc.StatusCode | None = None) -> None:
        self.name = name.encode()
        self.code = code
        self.calls = 0
        self.cancelled = asyncio.Event()
        self.server = grpc.aio.server()
        self.port = 0

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        if self.code is not None:
            await context.abort(self.code, "configured failure")
        return self.name + b":" + request

    async def wait(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"late"

    async def slow_stream(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        self.calls += 1
        yield b"first"
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        yield b"late"

    async def __aenter__(self) -> Server:
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary, _identity, _identity),
            "Other": grpc.unary_unary_rpc_method_handler(self.unary, _identity, _identity),
            "Wait": grpc.unary_unary_rpc_method_handler(self.wait, _identity, _identity),
            "SlowStream": grpc.unary_stream_rpc_method_handler(
                self.slow_stream, _identity, _identity
            ),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Svc", handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(grace=None)

    @property
    def address(self) -> Address:
        return ("127.0.0.1", self.port)


def grpc_route(rules: list[dict[str, Any]]) -> GRPCRoute:
    return GRPCRoute.from_dict(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GRPCRoute",
            "metadata": {"name": "grpc", "namespace": "default"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "svc"}],
                "rules": rules,
            },
        }
    )


def route_policy(route: GRPCRoute) -> ServicePolicy:
    policy = build_policy(PolicyAnnotations(), [(route, PolicyAnnotations())], port=8080)
    assert policy is not None
    return policy


class Backends:
    """Route backends of the in-test proxy: ``name.default.svc.cluster.local:8080`` targets."""

    def __init__(self, proxy: H2Proxy) -> None:
        self.proxy = proxy
        self.concretes: dict[str, Concrete] = {}
        proxy.ctx.backend = self.resolve

    def add(self, name: str, endpoints: list[Address]) -> None:
        target = f"{name}.default.svc.cluster.local:8080"
        concrete = Concrete(
            target,
            direction="outbound",
            metrics=self.proxy.metrics,
            connect_timeout=1.0,
            pool_max_idle=16,
            labels={"service": name},
        )
        concrete.set_endpoints([Endpoint(a) for a in endpoints])
        self.concretes[target] = concrete

    def resolve(self, target: str) -> Concrete:
        return self.concretes[target]

    def close(self) -> None:
        for concrete in self.concretes.values():
            concrete.close()


@contextlib.asynccontextmanager
async def proxied(
    endpoints: list[Address], policy: ServicePolicy | None = None
) -> AsyncIterator[tuple[H2Proxy, Backends, grpc.aio.Channel]]:
    async with H2Proxy(endpoints) as proxy:
        proxy.concrete.set_policy(policy)
        backends = Backends(proxy)
        host, port = proxy.address
        try:
            async with grpc.aio.insecure_channel(f"{host}:{port}") as ch:
                yield proxy, backends, ch
        finally:
            backends.close()


def unary(ch: grpc.aio.Channel, method: str = UNARY) -> Any:
    return ch.unary_unary(method, request_serializer=_identity, response_deserializer=_identity)


async def test_weighted_split_between_two_backends() -> None:
    route = grpc_route(
        [
            {
                "matches": [{"method": {"service": "test.Svc"}}],
                "backendRefs": [
                    {"name": "big", "port": 8080, "weight": 80},
                    {"name": "small", "port": 8080, "weight": 20},
                ],
            }
        ]
    )
    async with Server("svc") as svc, Server("big") as big, Server("small") as small:
        async with proxied([svc.address], route_policy(route)) as (proxy, backends, ch):
            backends.add("big", [big.address])
            backends.add("small", [small.address])
            call = unary(ch)
            answers: list[bytes] = []
            for _ in range(10):
                answers += await asyncio.gather(*(call(b"x") for _ in range(100)))
            assert len(answers) == 1000
            assert 750 <= answers.count(b"big:x") <= 850
            assert 150 <= answers.count(b"small:x") <= 250
            assert svc.calls == 0
            assert proxy.sample("route_request_total", route="default/grpc") == 1000
            assert proxy.sample("route_response_total", route="default/grpc") == 1000


async def test_method_match_routes_one_method_to_another_backend() -> None:
    route = grpc_route(
        [
            {
                "matches": [{"method": {"service": "test.Svc", "method": "Other"}}],
                "backendRefs": [{"name": "other", "port": 8080}],
            },
            {
                "matches": [
                    {
                        "method": {"type": "RegularExpression", "method": "Un.*"},
                        "headers": [{"name": "x-canary", "value": "1"}],
                    }
                ],
                "backendRefs": [{"name": "canary", "port": 8080}],
            },
        ]
    )
    async with Server("svc") as svc, Server("other") as other, Server("canary") as canary:
        async with proxied([svc.address], route_policy(route)) as (proxy, backends, ch):
            backends.add("other", [other.address])
            backends.add("canary", [canary.address])
            assert await unary(ch, OTHER)(b"a") == b"other:a"
            assert await unary(ch)(b"b") == b"svc:b"  # no rule matches: the service itself
            assert await unary(ch)(b"c", metadata=(("x-canary", "1"),)) == b"canary:c"
            assert (svc.calls, other.calls, canary.calls) == (1, 1, 1)
            assert proxy.sample("route_request_total", route="default/grpc") == 2
            assert proxy.sample("route_request_total", route="default") == 1


def retry_policy(*codes: str, limit: int = 2) -> ServicePolicy:
    return ServicePolicy(retry=RetryPolicy(grpc=codes, limit=limit))


async def test_retry_turns_unavailable_into_success_on_another_endpoint() -> None:
    async with Server("bad", grpc.StatusCode.UNAVAILABLE) as bad, Server("good") as good:
        async with proxied([bad.address, good.address], retry_policy("unavailable")) as (
            proxy,
            _,
            ch,
        ):
            call = unary(ch)
            answers = [await call(b"%d" % i) for i in range(60)]
            assert answers == [b"good:%d" % i for i in range(60)]
            assert bad.calls > 0  # some calls went to the failing endpoint, and were retried
            assert (
                proxy.sample("route_response_total", route="default", classification="success")
                == 60
            )
            failures = proxy.sample(
                "route_actual_response_total", route="default", grpc_status_code="14"
            )
            assert failures == bad.calls


async def test_non_retryable_status_is_not_retried() -> None:
    async with Server("bad", grpc.StatusCode.INTERNAL) as bad:
        async with proxied([bad.address], retry_policy("unavailable")) as (proxy, _, ch):
            call = unary(ch)
            for _ in range(10):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(b"x")
                assert info.value.code() == grpc.StatusCode.INTERNAL
            assert bad.calls == 10
            assert proxy.sample("response_total", grpc_status_code="13") == 10


async def test_retries_stop_at_the_limit() -> None:
    async with Server("bad", grpc.StatusCode.UNAVAILABLE) as bad:
        async with proxied([bad.address], retry_policy("unavailable", limit=2)) as (_, _, ch):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await unary(ch)(b"x")
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert bad.calls == 3  # the call and two retries


async def raw_call(
    address: Address, path: str, headers: list[tuple[bytes, bytes]]
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]] | None, float]:
    """One gRPC call (a 1-byte message) with raw h2: (response headers, trailers or None when
    the headers ended the stream, seconds until the stream ended)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    request = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", b"svc"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *headers,
    ]
    conn.send_headers(1, request)
    conn.send_data(1, b"\x00\x00\x00\x00\x01x", end_stream=True)
    reader, writer = await asyncio.open_connection(*address)
    loop = asyncio.get_running_loop()
    started = loop.time()
    head: list[tuple[bytes, bytes]] = []
    trailers: list[tuple[bytes, bytes]] | None = None
    try:
        writer.write(conn.data_to_send())
        async with asyncio.timeout(10):
            while True:
                data = await reader.read(65536)
                assert data, "the proxy closed the connection"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        head = list(event.headers)
                    elif isinstance(event, h2.events.TrailersReceived):
                        trailers = list(event.headers)
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, 1)
                    elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        return head, trailers, loop.time() - started
                writer.write(conn.data_to_send())
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_grpc_timeout_is_enforced_by_the_proxy() -> None:
    async with Server("svc") as svc, H2Proxy([svc.address]) as proxy:
        head, trailers, elapsed = await raw_call(proxy.address, WAIT, [(b"grpc-timeout", b"200m")])
        fields = dict(head)
        assert trailers is None  # trailers-only
        assert fields[b"grpc-status"] == b"4"
        assert fields[b"weft-proxy-error"] == b"response-timeout"
        assert 0.15 < elapsed < 5
        async with asyncio.timeout(5):
            await svc.cancelled.wait()  # the upstream stream was reset
        assert proxy.sample("response_total", grpc_status_code="4") == 1


async def test_route_timeout_smaller_than_grpc_timeout_wins() -> None:
    policy = ServicePolicy(timeouts=Timeouts(request=0.2))
    async with Server("svc") as svc, H2Proxy([svc.address]) as proxy:
        proxy.concrete.set_policy(policy)
        head, _, elapsed = await raw_call(proxy.address, WAIT, [(b"grpc-timeout", b"20S")])
        assert dict(head)[b"grpc-status"] == b"4"
        assert elapsed < 5


async def test_grpc_deadline_ends_a_started_response_with_deadline_exceeded() -> None:
    async with Server("svc") as svc, H2Proxy([svc.address]) as proxy:
        head, trailers, elapsed = await raw_call(
            proxy.address, SLOW_STREAM, [(b"grpc-timeout", b"300m")]
        )
        assert dict(head)[b":status"] == b"200"
        assert b"grpc-status" not in dict(head)  # the response had started
        assert trailers is not None and dict(trailers)[b"grpc-status"] == b"4"
        assert dict(trailers)[b"weft-proxy-error"] == b"deadline-exceeded"
        assert elapsed < 5
        async with asyncio.timeout(5):
            await svc.cancelled.wait()


async def test_malformed_grpc_timeout_is_answered_internal() -> None:
    async with Server("svc") as svc, H2Proxy([svc.address]) as proxy:
        head, trailers, _ = await raw_call(proxy.address, UNARY, [(b"grpc-timeout", b"soon")])
        fields = dict(head)
        assert trailers is None
        assert fields[b"grpc-status"] == b"13"
        assert fields[b"weft-proxy-error"] == b"invalid-grpc-timeout"
        assert svc.calls == 0
