"""HTTP/2 and gRPC through :mod:`weft.proxy.protocol.http2` over real sockets: grpcio client -> an
in-test listener handing connections to ``Http2Downstream`` -> real grpcio servers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from hpack import NeverIndexedHeaderTuple
from prometheus_client.parser import text_string_to_metric_families

from weft.addr import Address
from weft.discovery import Endpoint
from weft.metrics.proxy import ProxyMetrics
from weft.policy import RetryBudgetConfig, RetryPolicy, ServicePolicy, Timeouts
from weft.proxy.config import ProxyConfig
from weft.proxy.outbound.concrete import Concrete
from weft.proxy.outbound.logical import REPLAY_LIMIT
from weft.proxy.protocol.http2 import Http2Context, Http2Downstream
from weft.proxy.protocol.http2.peer import STREAM_WINDOW
from weft.proxy.protocol.http2.stream import MAX_REFUSED_RETRIES

pytestmark = pytest.mark.timeout(60)

METHOD_UNARY = "/test.Svc/Unary"
METHOD_SERVER = "/test.Svc/ServerStream"
METHOD_CLIENT = "/test.Svc/ClientStream"
METHOD_BIDI = "/test.Svc/Bidi"
METHOD_WAIT = "/test.Svc/Wait"
METHOD_FAIL = "/test.Svc/Fail"
METHOD_BIG = "/test.Svc/Big"


def _identity(b: bytes) -> bytes:
    return b


class GrpcServer:
    """A real grpcio (asyncio) server with generic handlers; ``name`` tags its answers."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.cancelled = asyncio.Event()
        self.deadlines: list[float | None] = []
        self.started = asyncio.Event()
        self.server = grpc.aio.server()
        self.port = 0

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return self.name + b":" + request

    async def server_stream(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield b"%s:%d" % (self.name, i)

    async def client_stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> bytes:
        total = 0
        count = 0
        slow = dict(context.invocation_metadata() or ()).get("slow") == "1"
        async for message in requests:
            total += len(message)
            count += 1
            if slow and total % (1024 * 1024) == 0:
                await asyncio.sleep(0.01)  # a slow reader
        return b"%d:%d" % (count, total)

    async def bidi(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for message in requests:
            yield message.upper()

    async def wait(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.deadlines.append(context.time_remaining())
        self.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"late"

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request == b"after-data":
            await context.send_initial_metadata(())
        await context.abort(grpc.StatusCode.NOT_FOUND, "nothing here")
        return b""  # not reached

    async def big(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        chunk = b"x" * (64 * 1024)
        for _ in range(int(request)):
            yield chunk

    async def __aenter__(self) -> GrpcServer:
        rpc = grpc
        handlers = {
            "Unary": rpc.unary_unary_rpc_method_handler(self.unary, _identity, _identity),
            "ServerStream": rpc.unary_stream_rpc_method_handler(
                self.server_stream, _identity, _identity
            ),
            "ClientStream": rpc.stream_unary_rpc_method_handler(
                self.client_stream, _identity, _identity
            ),
            "Bidi": rpc.stream_stream_rpc_method_handler(self.bidi, _identity, _identity),
            "Wait": rpc.unary_unary_rpc_method_handler(self.wait, _identity, _identity),
            "Fail": rpc.unary_unary_rpc_method_handler(self.fail, _identity, _identity),
            "Big": rpc.unary_stream_rpc_method_handler(self.big, _identity, _identity),
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


class _Handoff(asyncio.Protocol):
    """Accepts like the proxy's ``Accept``: reads the first bytes (part of the preface), then
    hands the transport and those bytes to an ``Http2Downstream``."""

    def __init__(self, proxy: H2Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        down = Http2Downstream(self.proxy.ctx, self.proxy.concrete, self.transport, "test")
        self.transport.set_protocol(down)
        down.start(data)


class H2Proxy:
    """The HTTP/2 path of the proxy on a loopback port, over ``endpoints``."""

    def __init__(self, endpoints: list[Address], **config: Any) -> None:
        self.metrics = ProxyMetrics(process=False)
        self.config = ProxyConfig(**config)
        self.ctx = Http2Context(self.config, self.metrics, "outbound")
        self.concrete = Concrete(
            "svc.test:8080",
            direction="outbound",
            metrics=self.metrics,
            connect_timeout=1.0,
            pool_max_idle=16,
            labels={"service": "svc"},
        )
        self.concrete.set_endpoints([Endpoint(a) for a in endpoints])
        self.server: asyncio.Server | None = None
        self.address: Address = ("127.0.0.1", 0)

    async def __aenter__(self) -> H2Proxy:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Handoff(self), "127.0.0.1", 0)
        self.address = self.server.sockets[0].getsockname()[:2]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for down in list(self.ctx.connections):
            if down.transport is not None:
                down.transport.abort()
        for conns in list(self.ctx.pools.values()):
            for up in list(conns):
                up.close()
        self.concrete.close()
        await asyncio.sleep(0)

    def sample(self, name: str, **labels: str) -> float:
        total = 0.0
        for fam in text_string_to_metric_families(self.metrics.expose().decode()):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def buffered(self) -> int:
        """Bytes the proxy holds for its streams (stream buffers and transport write buffers)."""
        total = 0
        for down in self.ctx.connections:
            for stream in down.streams.values():
                total += sum(len(b) for b in stream.req_buf) + sum(len(b) for b in stream.resp_buf)
            if down.transport is not None:
                total += down.transport.get_write_buffer_size()
        for conns in self.ctx.pools.values():
            for up in conns:
                if up.transport is not None:
                    total += up.transport.get_write_buffer_size()
        return total


@asynccontextmanager
async def channel(proxy: H2Proxy) -> AsyncIterator[grpc.aio.Channel]:
    host, port = proxy.address
    async with grpc.aio.insecure_channel(f"{host}:{port}") as ch:
        yield ch


@asynccontextmanager
async def servers(n: int) -> AsyncIterator[list[GrpcServer]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(GrpcServer(f"s{i}")) for i in range(n)]


def _unary(ch: grpc.aio.Channel, method: str = METHOD_UNARY) -> Callable[..., Any]:
    return ch.unary_unary(method, request_serializer=_identity, response_deserializer=_identity)


async def test_all_four_streaming_kinds() -> None:
    async with servers(1) as (srv,), H2Proxy([srv.address]) as proxy, channel(proxy) as ch:
        assert await _unary(ch)(b"hello") == b"s0:hello"
        stream = ch.unary_stream(
            METHOD_SERVER, request_serializer=_identity, response_deserializer=_identity
        )
        got = [m async for m in stream(b"5")]
        assert got == [b"s0:%d" % i for i in range(5)]
        client = ch.stream_unary(
            METHOD_CLIENT, request_serializer=_identity, response_deserializer=_identity
        )

        async def messages() -> AsyncIterator[bytes]:
            for i in range(10):
                yield b"m" * i

        assert await client(messages()) == b"10:45"
        bidi = ch.stream_stream(
            METHOD_BIDI, request_serializer=_identity, response_deserializer=_identity
        )
        call = bidi()
        for word in (b"ab", b"cd", b"ef"):
            await call.write(word)
            assert await call.read() == word.upper()
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
        assert proxy.sample("request_total", authority=f"127.0.0.1:{proxy.address[1]}") == 4
        assert proxy.sample("response_total", classification="success", status_code="200") == 4


async def test_1000_concurrent_streams_on_one_connection_spread_over_3_endpoints() -> None:
    async with servers(3) as srvs, H2Proxy([s.address for s in srvs]) as proxy:
        async with channel(proxy) as ch:
            call = _unary(ch)
            replies = await asyncio.gather(*(call(b"%d" % i) for i in range(1000)))
        assert len(proxy.ctx.connections) <= 1  # closed by now, or the one connection
        served = Counter(r.split(b":")[0] for r in replies)
        assert set(served) == {b"s0", b"s1", b"s2"}
        assert min(served.values()) > 100, served
        assert all(r.endswith(b":%d" % i) for i, r in enumerate(replies))
        assert proxy.sample("response_total", classification="success") == 1000


async def test_nonzero_grpc_status_is_a_failure_in_metrics() -> None:
    async with servers(1) as (srv,), H2Proxy([srv.address]) as proxy, channel(proxy) as ch:
        for request in (b"trailers-only", b"after-data"):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _unary(ch, METHOD_FAIL)(request)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert info.value.details() == "nothing here"
        assert await _unary(ch)(b"ok") == b"s0:ok"
        assert proxy.sample("response_total", classification="failure", status_code="200") == 2
        assert proxy.sample("response_total", classification="success") == 1


async def test_client_cancellation_reaches_the_server() -> None:
    async with servers(1) as (srv,), H2Proxy([srv.address]) as proxy, channel(proxy) as ch:
        call = _unary(ch, METHOD_WAIT)(b"")
        await asyncio.wait_for(srv.started.wait(), 10)
        call.cancel()
        await asyncio.wait_for(srv.cancelled.wait(), 10)
        # the connection and the upstream connection both stay usable
        assert await _unary(ch)(b"again") == b"s0:again"
        assert all(not d.streams for d in proxy.ctx.connections)


async def test_deadline_is_forwarded_and_expiry_reaches_the_server() -> None:
    async with servers(1) as (srv,), H2Proxy([srv.address]) as proxy, channel(proxy) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _unary(ch, METHOD_WAIT)(b"", timeout=1.0)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        remaining = srv.deadlines[0]
        # grpc-c rounds the timeout it sends up to a coarser value (a 5 s deadline goes out as
        # "5010m"), so the server may see a little more than the second the client set
        assert remaining is not None and 0 < remaining <= 1.05
        await asyncio.wait_for(srv.cancelled.wait(), 10)


async def test_32_mib_to_a_slow_reader_through_bounded_memory() -> None:
    async with servers(1) as (srv,), H2Proxy([srv.address]) as proxy, channel(proxy) as ch:
        big = ch.unary_stream(
            METHOD_BIG, request_serializer=_identity, response_deserializer=_identity
        )
        peak = 0
        received = 0
        call = big(b"512")  # 512 x 64 KiB = 32 MiB
        async for message in call:
            received += len(message)
            if received % (1024 * 1024) == 0:
                await asyncio.sleep(0.01)  # a slow reader
                peak = max(peak, proxy.buffered())
                # another stream on the same connection is not stalled by it
                assert await asyncio.wait_for(_unary(ch)(b"x"), 10) == b"s0:x"
        assert received == 32 * 1024 * 1024
        # the proxy held a few windows' worth at most, never the stream
        assert peak <= 4 * STREAM_WINDOW + 1024 * 1024, peak


async def test_32_mib_request_stream_to_a_slow_server_through_bounded_memory() -> None:
    async with servers(1) as (srv,), H2Proxy([srv.address]) as proxy, channel(proxy) as ch:
        client = ch.stream_unary(
            METHOD_CLIENT, request_serializer=_identity, response_deserializer=_identity
        )
        peak = 0

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, proxy.buffered())
                await asyncio.sleep(0.002)

        async def messages() -> AsyncIterator[bytes]:
            chunk = b"y" * (64 * 1024)
            for _ in range(512):
                yield chunk

        sampler = asyncio.ensure_future(sample())
        try:
            reply = await client(messages(), metadata=(("slow", "1"),))
        finally:
            sampler.cancel()
        assert reply == b"512:%d" % (32 * 1024 * 1024)
        assert 0 < peak <= 4 * STREAM_WINDOW + 1024 * 1024, peak


async def test_no_endpoint_answers_grpc_unavailable() -> None:
    async with H2Proxy([], fail_fast_outbound=0.2) as proxy, channel(proxy) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _unary(ch)(b"x")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no endpoints" in (info.value.details() or "")
        metadata = dict(info.value.trailing_metadata() or ())
        assert metadata.get("weft-proxy-error") == "no-endpoints"
        assert proxy.sample("response_total", classification="failure", status_code="200") == 1


async def test_calls_that_give_up_waiting_for_endpoints_leave_no_waiter() -> None:
    """Calls whose deadline ends (the client resets the stream) while no endpoint exists must
    not pile up in the destination's waiters."""
    async with H2Proxy([], fail_fast_outbound=30.0) as proxy, channel(proxy) as ch:
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _unary(ch)(b"x", timeout=0.05)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(100):  # the resets reach the proxy a moment after the client gives up
            if not proxy.concrete.waiters:
                break
            await asyncio.sleep(0.02)
        assert proxy.concrete.waiters == []


def _closed_port() -> Address:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return ("127.0.0.1", s.getsockname()[1])


async def test_connect_failure_answers_502_or_grpc_unavailable() -> None:
    async with H2Proxy([_closed_port()]) as proxy:
        async with channel(proxy) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _unary(ch)(b"x")
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            metadata = dict(info.value.trailing_metadata() or ())
            assert metadata.get("weft-proxy-error") == "connect-failed"
        # plain HTTP/2 (not gRPC): a 502
        events = await _raw_request(
            proxy.address,
            [
                (b":method", b"GET"),
                (b":path", b"/"),
                (b":scheme", b"http"),
                (b":authority", b"svc"),
            ],
        )
        responses = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        assert responses and dict(responses[0].headers)[b":status"] == b"502"
        assert dict(responses[0].headers)[b"weft-proxy-error"] == b"connect-failed"


async def _raw_request(
    address: Address, headers: list[tuple[bytes, bytes]], *, garbage: bytes = b""
) -> list[h2.events.Event]:
    """One raw HTTP/2 request (headers not validated: they may be malformed) or garbage after
    the preface; the events read back until the stream or the connection ends."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
        )
    )
    conn.initiate_connection()
    reader, writer = await asyncio.open_connection(*address)
    events: list[h2.events.Event] = []
    try:
        if garbage:
            writer.write(conn.data_to_send() + garbage)
        else:
            conn.send_headers(1, headers, end_stream=True)
            writer.write(conn.data_to_send())
        async with asyncio.timeout(10):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    new = conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                events.extend(new)
                writer.write(conn.data_to_send())
                ended = (h2.events.StreamEnded, h2.events.StreamReset,
                         h2.events.ConnectionTerminated)  # fmt: skip
                if any(isinstance(e, ended) for e in new):
                    break
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return events


async def test_malformed_input_gets_goaway_or_reset_and_the_proxy_keeps_serving() -> None:
    async with servers(1) as (srv,), H2Proxy([srv.address]) as proxy:
        # garbage after the preface: a connection error
        events = await _raw_request(proxy.address, [], garbage=b"\x00\x00\x04\x09" + b"\xff" * 30)
        goaways = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        assert goaways and goaways[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        # a HEADERS frame with bad pseudo-headers (no :path, an unknown one)
        bad = [(b":method", b"GET"), (b":scheme", b"http"), (b":bogus", b"1")]
        events = await _raw_request(proxy.address, bad)
        assert any(
            isinstance(e, h2.events.ConnectionTerminated | h2.events.StreamReset) for e in events
        )
        async with channel(proxy) as ch:
            assert await _unary(ch)(b"still") == b"s0:still"


async def test_drain_sends_goaway_and_lets_open_streams_finish() -> None:
    async with servers(1) as (srv,), H2Proxy([srv.address]) as proxy, channel(proxy) as ch:
        bidi = ch.stream_stream(
            METHOD_BIDI, request_serializer=_identity, response_deserializer=_identity
        )
        call = bidi()
        await call.write(b"before")
        assert await call.read() == b"BEFORE"
        proxy.ctx.drain()
        await call.write(b"during")  # the open stream keeps going after GOAWAY
        assert await call.read() == b"DURING"
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
        for _ in range(100):  # the drained connection closes once its stream is done
            if not proxy.ctx.connections:
                break
            await asyncio.sleep(0.05)
        assert not proxy.ctx.connections


async def test_upstream_graceful_shutdown_lets_its_streams_finish() -> None:
    async with servers(1) as (srv,), H2Proxy([srv.address]) as proxy, channel(proxy) as ch:
        bidi = ch.stream_stream(
            METHOD_BIDI, request_serializer=_identity, response_deserializer=_identity
        )
        call = bidi()
        await call.write(b"a")
        assert await call.read() == b"A"
        stopping = asyncio.ensure_future(srv.server.stop(grace=5))  # GOAWAY, then waits
        for _ in range(100):
            if any(up.goaway for conns in proxy.ctx.pools.values() for up in conns):
                break
            await asyncio.sleep(0.02)
        assert any(up.goaway for conns in proxy.ctx.pools.values() for up in conns)
        await call.write(b"b")
        assert await call.read() == b"B"
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
        await stopping


async def test_frames_wait_one_more_poll_to_share_a_write_with_the_next_reads() -> None:
    """What a read makes the proxy send waits until the event loop has polled once more, so the
    answers to the reads of that poll go out in the same write (fewer wake-ups for the peer);
    it does not wait longer than that."""
    loop = asyncio.get_running_loop()
    async with servers(1) as (srv,), H2Proxy([srv.address]) as proxy:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, proxy.address)
            await loop.sock_sendall(sock, conn.data_to_send())
            settled = False
            async with asyncio.timeout(5):
                while not settled:  # the server's SETTINGS, and its ACK of ours
                    events = conn.receive_data(await loop.sock_recv(sock, 65536))
                    await loop.sock_sendall(sock, conn.data_to_send())
                    settled = any(isinstance(e, h2.events.SettingsAcknowledged) for e in events)
            await asyncio.sleep(0.05)  # our ACK of its SETTINGS reached the proxy
            (down,) = proxy.ctx.connections

            def ping(opaque: bytes) -> bytes:
                conn.ping(opaque)
                return conn.data_to_send()

            # a read (as the transport hands it), then one turn of the loop: nothing written
            down.data_received(ping(b"first..."))
            await asyncio.sleep(0)
            with pytest.raises(BlockingIOError):
                sock.recv(65536)
            # the read of the next poll, then the write: both answers
            down.data_received(ping(b"second.."))
            acks: list[bytes] = []
            async with asyncio.timeout(5):
                while len(acks) < 2:
                    for e in conn.receive_data(await loop.sock_recv(sock, 65536)):
                        if isinstance(e, h2.events.PingAckReceived):
                            acks.append(e.ping_data)
            assert acks == [b"first...", b"second.."]
        finally:
            sock.close()


@asynccontextmanager
async def _h2_server(
    seen: list[h2.events.Event],
) -> AsyncIterator[Address]:
    """A python-hyper h2 server: records the events of each request (h2 reports a field sent
    "never indexed" as a ``NeverIndexedHeaderTuple``) and answers with a response header and a
    trailer both sent never indexed."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        while data := await reader.read(65536):
            for e in conn.receive_data(data):
                seen.append(e)
                if isinstance(e, h2.events.StreamEnded):
                    reply = [(b":status", b"200"), NeverIndexedHeaderTuple(b"x-reply-key", b"r")]
                    conn.send_headers(e.stream_id, reply)
                    conn.send_data(e.stream_id, b"ok")
                    trailers = [NeverIndexedHeaderTuple(b"x-trailer-key", b"t")]
                    conn.send_headers(e.stream_id, trailers, end_stream=True)
            writer.write(conn.data_to_send())
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()


async def test_fields_sent_never_indexed_are_passed_on_never_indexed_both_ways() -> None:
    """RFC 7541 6.2.3: an intermediary passes a field that came "never indexed" on the same way
    (a secret in a custom header must not enter the next hop's compression tables), in the
    request's headers and trailers and in the response's."""
    seen: list[h2.events.Event] = []
    async with _h2_server(seen) as address, H2Proxy([address]) as proxy:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        reader, writer = await asyncio.open_connection(*proxy.address)
        got: list[h2.events.Event] = []
        try:
            request = [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b"/"),
                (b":authority", b"svc"),
                NeverIndexedHeaderTuple(b"x-api-key", b"s3cret"),
                (b"x-plain", b"1"),
            ]
            conn.send_headers(1, request)
            conn.send_data(1, b"body")
            conn.send_headers(1, [NeverIndexedHeaderTuple(b"x-sig", b"abc")], end_stream=True)
            writer.write(conn.data_to_send())
            async with asyncio.timeout(10):
                while not any(isinstance(e, h2.events.StreamEnded) for e in got):
                    data = await reader.read(65536)
                    assert data, "the proxy closed the connection"
                    got += conn.receive_data(data)
                    writer.write(conn.data_to_send())
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def fields(events: list[h2.events.Event], kind: type) -> dict[bytes, bool]:
        """name -> sent never indexed, over the header blocks of ``kind``"""
        out: dict[bytes, bool] = {}
        for e in events:
            if isinstance(e, kind):
                for f in e.headers:  # type: ignore[attr-defined]
                    out[f[0]] = isinstance(f, NeverIndexedHeaderTuple)
        return out

    request_seen = fields(seen, h2.events.RequestReceived)
    assert request_seen[b"x-api-key"] and not request_seen[b"x-plain"]
    assert fields(seen, h2.events.TrailersReceived) == {b"x-sig": True}
    response = fields(got, h2.events.ResponseReceived)
    assert response[b"x-reply-key"] and not response[b":status"]
    assert fields(got, h2.events.TrailersReceived) == {b"x-trailer-key": True}


async def test_streams_stalled_by_a_slow_client_do_not_starve_other_calls_to_the_endpoint() -> None:
    """40 streams whose client never reads fill their buffers in the proxy (40 x 256 KiB, more
    than one upstream connection's window and hold limit together); calls from another client
    to the same endpoint still complete, on another upstream connection."""
    async with servers(1) as (srv,), H2Proxy([srv.address]) as proxy:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        _reader, writer = await asyncio.open_connection(*proxy.address)
        try:
            for _ in range(40):
                sid = conn.get_next_available_stream_id()
                headers = [
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", METHOD_BIG),
                    (":authority", "svc"),
                    ("content-type", "application/grpc"),
                    ("te", "trailers"),
                ]
                conn.send_headers(sid, headers)
                conn.send_data(sid, b"\x00\x00\x00\x00\x0216", end_stream=True)  # 16 x 64 KiB
            writer.write(conn.data_to_send())
            # the proxy buffers what the slow client does not take, up to its limits
            held = 0
            for _ in range(200):
                held = sum(up.conn.held for ups in proxy.ctx.pools.values() for up in ups)
                if held > 7 * 1024 * 1024:
                    break
                await asyncio.sleep(0.05)
            assert held > 7 * 1024 * 1024, held
            async with channel(proxy) as ch:
                assert await asyncio.wait_for(_unary(ch)(b"x"), 10) == b"s0:x"
                big = ch.unary_stream(
                    METHOD_BIG, request_serializer=_identity, response_deserializer=_identity
                )
                got = [m async for m in big(b"16", timeout=10)]
                assert sum(len(m) for m in got) == 16 * 64 * 1024
            # bounded: each upstream connection holds at most its hold limit and its window
            for ups in proxy.ctx.pools.values():
                for up in ups:
                    assert up.conn.held <= up.conn.hold_limit + up.conn.connection_window
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def test_a_stream_open_for_hours_is_never_cut_while_idle_connections_are() -> None:
    """The idle timeouts apply to connections with no open stream: reaping as if five hours had
    passed leaves a quiet bidi stream working, and then closes the connections once it ended."""
    import time

    five_hours = 5 * 3600.0
    async with (
        servers(1) as (srv,),
        H2Proxy([srv.address], idle_timeout=60.0, pool_idle_timeout=60.0) as proxy,
        channel(proxy) as ch,
    ):
        bidi = ch.stream_stream(
            METHOD_BIDI, request_serializer=_identity, response_deserializer=_identity
        )
        call = bidi()
        await call.write(b"a")
        assert await call.read() == b"A"
        proxy.ctx.reap(time.monotonic() + five_hours)
        await asyncio.sleep(0.1)
        await call.write(b"b")
        assert await call.read() == b"B"
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
        assert proxy.ctx.connections and proxy.ctx.pools
        # no stream open now: the same reaping closes both sides' connections
        await asyncio.sleep(0.05)
        proxy.ctx.reap(time.monotonic() + five_hours)
        for _ in range(100):
            if not proxy.ctx.connections and not proxy.ctx.pools:
                break
            await asyncio.sleep(0.02)
        assert not proxy.ctx.connections and not proxy.ctx.pools


async def test_a_long_stream_does_not_make_its_endpoint_look_slow() -> None:
    """The balancer takes a call's latency to its response headers: a stream that stays open
    (here 1 s, in life hours) must not keep its endpoint from getting its share afterwards."""
    async with servers(3) as srvs, H2Proxy([s.address for s in srvs]) as proxy:
        async with channel(proxy) as ch:
            for _ in range(30):
                await _unary(ch)(b"warm")
            bidi = ch.stream_stream(
                METHOD_BIDI, request_serializer=_identity, response_deserializer=_identity
            )
            call = bidi()
            await call.write(b"a")
            assert await call.read() == b"A"
            await asyncio.sleep(1.0)
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK
            # Measured at the end of the stream, its endpoint's estimate would be the stream's
            # second (and P2C would pass it over for tens of seconds); measured at the response
            # headers it is a unary call's. 0.5 s separates the two even on a loaded machine.
            stats = proxy.concrete.balancer.stats()
            assert all(pending == 0 for _, pending, _, _ in stats), stats
            assert max(estimate for _, _, estimate, _ in stats) < 0.5, stats
            served: Counter[bytes] = Counter()
            for _ in range(30):
                replies = await asyncio.gather(*(_unary(ch)(b"x") for _ in range(10)))
                served.update(r.split(b":")[0] for r in replies)
        assert set(served) == {b"s0", b"s1", b"s2"}, served


async def test_a_call_repicked_after_a_failed_connect_counts_against_its_endpoint() -> None:
    async with servers(1) as (srv,), H2Proxy([]) as proxy:
        proxy.concrete.set_endpoints(
            [Endpoint(_closed_port(), {"pod": "dead"}), Endpoint(srv.address, {"pod": "live"})]
        )
        async with channel(proxy) as ch:
            for i in range(20):
                assert await _unary(ch)(b"%d" % i) == b"s0:%d" % i
        assert proxy.sample("request_total", dst_pod="live") == 20
        assert proxy.sample("response_total", dst_pod="live", classification="success") == 20
        assert proxy.sample("request_total", dst_pod="dead") == 0


class RefusingH2Server:
    """A python-hyper h2 server answering each request 200 with ``<method> <path> <body>``,
    that refuses streams as told: ``refuse(conn, rank)`` (the connection's and the stream's rank
    on it, from 0) resets a stream REFUSED_STREAM as its headers arrive (with ``refuse_after``:
    once its body passed that many bytes); ``accepted`` counts the others. With ``goaway_after``,
    the first connection waits for that many requests, answers the first, then sends GOAWAY
    naming it as the last stream processed and closes (as nginx after ``keepalive_requests``);
    with ``answer=False`` it never answers. ``processed`` records (connection, method, path,
    body) of what it answered."""

    def __init__(
        self,
        refuse: Callable[[int, int], bool] = lambda c, r: False,
        goaway_after: int = 0,
        *,
        answer: bool = True,
        refuse_after: int = 0,
    ) -> None:
        self.refuse = refuse
        self.goaway_after = goaway_after
        self.answer = answer
        self.refuse_after = refuse_after
        self.connections = 0
        self.refused = 0
        self.accepted = 0
        self.processed: list[tuple[int, bytes, bytes, bytes]] = []
        self.server: asyncio.Server | None = None
        self._open: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def __aenter__(self) -> RefusingH2Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self._open.values():
            writer.close()
        if self._open:  # the handlers end at their connection's EOF
            await asyncio.wait(list(self._open), timeout=5)

    @property
    def address(self) -> Address:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[:2]  # type: ignore[no-any-return]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._open[task] = writer
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        heads: dict[int, dict[bytes, bytes]] = {}
        bodies: dict[int, bytes] = {}
        ended: list[int] = []
        doomed: set[int] = set()  # to refuse once their body passed refuse_after
        rank = 0
        refused = h2.errors.ErrorCodes.REFUSED_STREAM
        try:
            while data := await reader.read(65536):
                for e in conn.receive_data(data):
                    sid = e.stream_id if isinstance(e, h2.events.RequestReceived) else 0
                    if isinstance(e, h2.events.RequestReceived) and self.refuse(number, rank):
                        if self.refuse_after:
                            doomed.add(sid)
                            heads[sid], bodies[sid] = dict(e.headers), b""
                        else:
                            self.refused += 1
                            conn.reset_stream(sid, refused)
                        rank += 1
                    elif isinstance(e, h2.events.RequestReceived):
                        self.accepted += 1
                        heads[sid], bodies[sid] = dict(e.headers), b""
                        rank += 1
                    elif isinstance(e, h2.events.DataReceived) and e.stream_id in heads:
                        bodies[e.stream_id] += e.data
                        conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                        if e.stream_id in doomed and len(bodies[e.stream_id]) > self.refuse_after:
                            doomed.discard(e.stream_id)
                            del heads[e.stream_id]
                            self.refused += 1
                            conn.reset_stream(e.stream_id, refused)
                    elif isinstance(e, h2.events.StreamEnded) and e.stream_id in heads:
                        ended.append(e.stream_id)
                if not self.answer:
                    ended.clear()
                if self.goaway_after and number == 0:
                    if len(ended) >= self.goaway_after:
                        self._answer(conn, number, ended[0], heads, bodies)
                        conn.close_connection(last_stream_id=ended[0])
                        writer.write(conn.data_to_send())
                        break
                else:
                    for sid in ended:
                        self._answer(conn, number, sid, heads, bodies)
                    ended.clear()
                writer.write(conn.data_to_send())
        finally:
            writer.close()
            self._open.pop(task, None)

    def _answer(
        self,
        conn: h2.connection.H2Connection,
        number: int,
        sid: int,
        heads: dict[int, dict[bytes, bytes]],
        bodies: dict[int, bytes],
    ) -> None:
        method, path = heads[sid][b":method"], heads[sid][b":path"]
        self.processed.append((number, method, path, bodies[sid]))
        conn.send_headers(sid, [(b":status", b"200")])
        conn.send_data(sid, b"%s %s %s" % (method, path, bodies[sid]), end_stream=True)


Answer = tuple[dict[bytes, bytes], bytes, int | None]


def _req(method: bytes, path: bytes, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", method),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"svc"),
        *extra,
    ]


async def _exchange(
    address: Address, requests: list[tuple[list[tuple[bytes, bytes]], bytes]]
) -> list[Answer]:
    """``requests`` (headers, body) sent at once on one HTTP/2 connection; per request, in
    order: its response's headers and trailers (one dict), its body, and the code of the
    RST_STREAM that ended it (None when none did)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    reader, writer = await asyncio.open_connection(*address)
    writer.write(conn.data_to_send())
    settings = False
    async with asyncio.timeout(10):
        # the proxy's SETTINGS and windows first: a body may be larger than 64 KiB
        while not settings or conn.outbound_flow_control_window <= 65535:
            for e in conn.receive_data(await reader.read(65536)):
                settings = settings or isinstance(e, h2.events.RemoteSettingsChanged)
    sids = []
    for headers, body in requests:
        sid = conn.get_next_available_stream_id()
        sids.append(sid)
        conn.send_headers(sid, headers, end_stream=not body)
        step = conn.max_outbound_frame_size
        for pos in range(0, len(body), step):
            conn.send_data(sid, body[pos : pos + step], end_stream=pos + step >= len(body))
    writer.write(conn.data_to_send())
    fields: dict[int, dict[bytes, bytes]] = {sid: {} for sid in sids}
    bodies = dict.fromkeys(sids, b"")
    resets: dict[int, int] = {}
    pending = set(sids)
    try:
        async with asyncio.timeout(20):
            while pending:
                data = await reader.read(65536)
                assert data, "the proxy closed the connection"
                for e in conn.receive_data(data):
                    if isinstance(e, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        fields[e.stream_id].update(e.headers)
                    elif isinstance(e, h2.events.DataReceived):
                        bodies[e.stream_id] += e.data
                        conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                    elif isinstance(e, h2.events.StreamEnded):
                        pending.discard(e.stream_id)
                    elif isinstance(e, h2.events.StreamReset):
                        resets[e.stream_id] = e.error_code
                        pending.discard(e.stream_id)
                writer.write(conn.data_to_send())
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return [(fields[sid], bodies[sid], resets.get(sid)) for sid in sids]


NO_RETRIES = ServicePolicy(
    retry=RetryPolicy(limit=0, budget=RetryBudgetConfig(ratio=0.0, min_per_second=0.0))
)


@pytest.mark.parametrize("policy", [None, NO_RETRIES], ids=["no-policy", "no-retries-no-budget"])
async def test_streams_refused_by_the_server_are_sent_again_on_another_connection(
    policy: ServicePolicy | None,
) -> None:
    """RST_STREAM REFUSED_STREAM: the server did not process the stream (RFC 9113 8.7), so the
    proxy sends it again on another connection, a POST too, whatever the retry policy (here
    none, or one that allows no retry and has an empty budget)."""
    async with (
        RefusingH2Server(refuse=lambda conn, rank: rank == 0) as srv,
        H2Proxy([srv.address]) as proxy,
    ):
        if policy is not None:
            proxy.concrete.set_policy(policy)
        requests = [(_req(b"GET", b"/%d" % i), b"") for i in range(4)]
        requests.append((_req(b"POST", b"/post", (b"content-length", b"7")), b"payload"))
        answers = await _exchange(proxy.address, requests)
        for (fields, body, reset), (headers, sent) in zip(answers, requests, strict=True):
            method, path = headers[0][1], headers[2][1]
            assert reset is None and fields[b":status"] == b"200", (path, fields, reset)
            assert body == b"%s %s %s" % (method, path, sent)
        assert srv.refused >= 1 and srv.connections >= 2
        assert sorted(p for _, _, p, _ in srv.processed) == [b"/0", b"/1", b"/2", b"/3", b"/post"]
        # what the client saw: five successes; the attempts: the refused ones too
        assert proxy.sample("route_response_total", classification="success") == 5
        assert proxy.sample("route_response_total", classification="failure") == 0
        assert proxy.sample("route_actual_request_total") == 5 + srv.refused
        assert proxy.sample("response_total", classification="success") == 5
        # a refusal says nothing of the endpoint: no failure penalty on the balancer
        ((_, pending, estimate, _),) = proxy.concrete.balancer.stats()
        assert pending == 0 and estimate < 0.5, estimate


async def test_streams_above_the_last_stream_id_of_a_goaway_are_sent_again() -> None:
    """A server closing a connection (nginx after ``keepalive_requests``) sends GOAWAY naming
    the last stream it processed, then closes: the streams above it, a POST among them, were
    not processed and go to a new connection."""
    async with (
        RefusingH2Server(goaway_after=3) as srv,
        H2Proxy([srv.address]) as proxy,
    ):
        requests = [
            (_req(b"GET", b"/a"), b""),
            (_req(b"GET", b"/b"), b""),
            (_req(b"POST", b"/c", (b"content-length", b"4")), b"body"),
        ]
        answers = await _exchange(proxy.address, requests)
        for (fields, body, reset), (headers, sent) in zip(answers, requests, strict=True):
            method, path = headers[0][1], headers[2][1]
            assert reset is None and fields[b":status"] == b"200", (path, fields, reset)
            assert body == b"%s %s %s" % (method, path, sent)
        # each processed once: the first on the connection that went away, the others after
        by_path = {path: (conn, body) for conn, _, path, body in srv.processed}
        assert len(srv.processed) == 3 and set(by_path) == {b"/a", b"/b", b"/c"}
        assert [conn for conn, _ in by_path.values()].count(0) == 1
        assert by_path[b"/c"][1] == b"body"
        assert proxy.sample("response_total", classification="success") == 3
        assert proxy.sample("response_total", classification="failure") == 0


async def test_a_server_that_refuses_every_stream_gets_a_bounded_number_of_attempts() -> None:
    """Refused again and again, a stream gets a clear error after a few attempts (not a loop):
    plain HTTP/2 a 502 and gRPC a trailers-only UNAVAILABLE, both with ``weft-proxy-error:
    upstream-refused`` (not REFUSED_STREAM passed on, which would invite the client to send it
    again at once), counted as failures."""
    async with (
        RefusingH2Server(refuse=lambda conn, rank: True) as srv,
        H2Proxy([srv.address]) as proxy,
    ):
        grpc_headers = (
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        )
        requests = [
            (_req(b"GET", b"/plain"), b""),
            (_req(b"POST", METHOD_UNARY.encode(), *grpc_headers), b"\x00\x00\x00\x00\x01x"),
        ]
        (plain, call) = await _exchange(proxy.address, requests)
        fields, body, reset = plain
        assert reset is None and fields[b":status"] == b"502", (fields, reset)
        assert fields[b"weft-proxy-error"] == b"upstream-refused"
        assert b"refused the stream %d times" % (1 + MAX_REFUSED_RETRIES) in body
        fields, _, reset = call
        assert reset is None and fields[b":status"] == b"200", (fields, reset)
        assert fields[b"grpc-status"] == b"14"
        assert fields[b"weft-proxy-error"] == b"upstream-refused"
        assert srv.refused == 2 * (1 + MAX_REFUSED_RETRIES)
        assert not srv.processed
        assert proxy.sample("response_total", classification="success") == 0
        assert proxy.sample("response_total", classification="failure", status_code="502") == 1
        assert proxy.sample("response_total", classification="failure", grpc_status_code="14") == 1
        assert proxy.sample("route_response_total", classification="failure") == 2


async def test_a_plain_http2_error_answered_while_the_upstream_stream_is_open_ends() -> None:
    """A proxy error for an attempt whose upstream stream is open (here the request timeout)
    reaches a plain HTTP/2 client whole: its body and the end of the stream, not only the
    headers (the 502 after refused attempts takes the same path)."""
    async with (
        RefusingH2Server(answer=False) as srv,
        H2Proxy([srv.address]) as proxy,
    ):
        proxy.concrete.set_policy(ServicePolicy(timeouts=Timeouts(request=0.2)))
        ((fields, body, reset),) = await _exchange(proxy.address, [(_req(b"GET", b"/"), b"")])
        assert reset is None and fields[b":status"] == b"504"
        assert body == b"weft proxy: upstream did not respond in time\n"


async def test_a_refused_stream_is_sent_again_while_its_body_fits_the_replay_buffer() -> None:
    """A stream refused while its client is still sending goes again with what came so far and
    then the rest; one whose body outgrew the replay buffer (64 KiB) before the refusal cannot
    be replayed: REFUSED_STREAM is passed on (the client still has its body to send again)."""
    async with (
        RefusingH2Server(refuse=lambda conn, rank: rank == 0) as srv,
        H2Proxy([srv.address]) as proxy,
    ):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        reader, writer = await asyncio.open_connection(*proxy.address)
        try:
            conn.send_headers(1, _req(b"POST", b"/stream"))
            conn.send_data(1, b"part1-" * 1000)
            writer.write(conn.data_to_send())
            for _ in range(200):  # refused, then taken by another connection, still open
                if srv.refused and srv.accepted:
                    break
                await asyncio.sleep(0.02)
            assert srv.refused and srv.accepted and not srv.processed
            conn.send_data(1, b"part2", end_stream=True)
            writer.write(conn.data_to_send())
            body = b""
            async with asyncio.timeout(10):
                while True:
                    data = await reader.read(65536)
                    assert data, "the proxy closed the connection"
                    events = conn.receive_data(data)
                    for e in events:
                        if isinstance(e, h2.events.DataReceived):
                            body += e.data
                        assert not isinstance(e, h2.events.StreamReset), e
                    writer.write(conn.data_to_send())
                    if any(isinstance(e, h2.events.StreamEnded) for e in events):
                        break
            assert body == b"POST /stream " + b"part1-" * 1000 + b"part2"
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    async with (
        RefusingH2Server(refuse=lambda conn, rank: True, refuse_after=REPLAY_LIMIT + 1) as srv,
        H2Proxy([srv.address]) as proxy,
    ):
        big = b"z" * (REPLAY_LIMIT + 16 * 1024)
        ((fields, _, reset),) = await _exchange(proxy.address, [(_req(b"PUT", b"/big"), big)])
        assert reset == h2.errors.ErrorCodes.REFUSED_STREAM and not fields
        assert srv.refused == 1


# -- floods (weft.core.h2limits) ---------------------------------------------------------------

_GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"svc")]


@asynccontextmanager
async def _counting_h2_server(requests: list[int]) -> AsyncIterator[Address]:
    """An h2 server that notes every request it receives (``requests``: their stream ids, reset
    ones too) and answers those still open with a 200."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for e in conn.receive_data(data):
                    if isinstance(e, h2.events.RequestReceived):
                        requests.append(e.stream_id)
                    elif isinstance(e, h2.events.StreamEnded):
                        with contextlib.suppress(h2.exceptions.ProtocolError):  # reset already
                            conn.send_headers(e.stream_id, [(b":status", b"200")], end_stream=True)
                writer.write(conn.data_to_send())
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()


async def test_a_rapid_reset_client_gets_goaway_and_costs_the_upstream_nothing() -> None:
    """CVE-2023-44487: a client sends 10,000 requests and resets each at once. A request reset in
    the read that brought it is never sent upstream, and once the resets before an answer are
    half of the connection's streams the proxy ends it with GOAWAY ENHANCE_YOUR_CALM; other
    clients are served as before."""
    loop = asyncio.get_running_loop()
    seen: list[int] = []
    async with _counting_h2_server(seen) as address, H2Proxy([address]) as proxy:
        # a first request: the upstream connection is up, so a stream would be sent at once
        events = await _raw_request(proxy.address, _GET)
        assert any(isinstance(e, h2.events.ResponseReceived) for e in events)
        assert len(seen) == 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        for sid in range(1, 20_000, 2):
            conn.send_headers(sid, _GET, end_stream=True)
            conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        sock = socket.socket()
        sock.setblocking(False)
        goaway: list[h2.events.ConnectionTerminated] = []
        try:
            await loop.sock_connect(sock, proxy.address)
            with contextlib.suppress(ConnectionError):  # cut before it read it all
                await loop.sock_sendall(sock, conn.data_to_send())
            async with asyncio.timeout(10):
                while not goaway:
                    try:
                        data = await loop.sock_recv(sock, 65536)
                    except ConnectionError:
                        break
                    if not data:
                        break
                    events = conn.receive_data(data)
                    goaway += [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        finally:
            sock.close()
        assert goaway and goaway[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert goaway[0].last_stream_id < 1000  # it stopped reading at once
        # what the proxy sent upstream has arrived once the next request's answer is back
        events = await _raw_request(proxy.address, _GET)
        assert any(isinstance(e, h2.events.ResponseReceived) for e in events)
        # the two requests, and at most a few rapid ones (a request and its reset split by a
        # read); without the limit and the order, 10,000 or at least the 250 before the GOAWAY
        assert 2 <= len(seen) <= 5, len(seen)


async def test_a_ping_flood_from_a_client_that_never_reads_is_cut_with_bounded_memory() -> None:
    """A client floods PINGs and never reads the acknowledgements: once the socket's and the
    transport's buffers are full, at most 1000 more are queued, then the connection is cut. The
    proxy's buffers stay bounded, and a client on another connection is served throughout."""
    loop = asyncio.get_running_loop()
    async with servers(1) as (srv,), H2Proxy([srv.address]) as proxy, channel(proxy) as ch:
        assert await _unary(ch)(b"before") == b"s0:before"
        (grpc_client,) = proxy.ctx.connections
        stop = asyncio.Event()
        served = 0

        async def other_client() -> None:
            nonlocal served
            while not stop.is_set():
                assert await _unary(ch)(b"%d" % served) == b"s0:%d" % served
                served += 1
                await asyncio.sleep(0.005)

        calls = asyncio.ensure_future(other_client())
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        # 20 PINGs a millisecond: fewer than 1000 are read at once, so only the answers that
        # cannot be written are counted (a faster flood is cut as soon as it is read)
        burst = b"".join(bytes.fromhex("000008060000000000") + b"%08d" % i for i in range(20))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        sent = peak = 0
        cut = False
        try:
            await loop.sock_connect(sock, proxy.address)
            await loop.sock_sendall(sock, conn.data_to_send())
            for _ in range(500):  # the proxy took the connection
                if len(proxy.ctx.connections) == 2:
                    break
                await asyncio.sleep(0.01)
            (flooded,) = proxy.ctx.connections - {grpc_client}
            assert flooded.transport is not None
            # small socket buffers on both ends (the kernel's would hold megabytes first)
            flooded.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
            async with asyncio.timeout(40):
                while sent < 2 * 1024 * 1024:  # (cut after about 100 KiB)
                    try:
                        await loop.sock_sendall(sock, burst)
                    except ConnectionError:
                        cut = True
                        break
                    sent += len(burst)
                    peak = max(peak, proxy.buffered())
                    await asyncio.sleep(0.001)
        finally:
            sock.close()
            stop.set()
            await calls
        assert cut, f"{sent} bytes of PINGs sent, the connection still open"
        # the transport's buffer up to its high-water mark, and 1000 acknowledgements
        assert peak < 256 * 1024
        assert served > 0
        assert await _unary(ch)(b"after") == b"s0:after"
        assert proxy.ctx.connections == {grpc_client}
