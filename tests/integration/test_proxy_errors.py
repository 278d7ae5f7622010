"""Adversarial HTTP/1.1 through a real proxy: the errors the proxy makes itself, and bad peers.

Every error the proxy answers on its own carries a ``weft-proxy-error`` header naming the reason,
so an operator can tell it from the application's own 5xx: 503 no endpoint, 502 connect failure or
broken upstream, 504 upstream timeout, 400 malformed or smuggling-prone request (and close), 431
oversized head (and close), 408 a head not received in time (and close). Each test asserts the
status, the header and whether the client connection stays open, and, where a peer misbehaves, that
the proxy keeps serving others and leaks no connection on either side.

All traffic is on 127.0.0.1; timeouts in configs are small so the file runs in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from weft.proxy.protocol.http1 import transfer_coding_error
from weft.proxy.server import ProxyServer
from weft.proxy.static_discovery import StaticDiscovery, StaticDiscoveryError
from weft.testing import FakeDiscovery, running_proxy, wait_until
from weft.testing.servers import Backend, HttpClient, Reply, Request, Response

ERROR_HEADER = "weft-proxy-error"


# -- helpers ------------------------------------------------------------------------------------


def unused_port() -> int:
    """A loopback port nothing listens on (bound then released: connecting to it is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def is_closed(client: HttpClient, within: float = 3.0) -> bool:
    """True when the proxy closed (FIN or RST) the client connection within ``within`` s."""
    assert client.reader is not None
    try:
        async with asyncio.timeout(within):
            data = await client.reader.read(65536)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    assert data == b"", f"unexpected bytes after the response: {data!r}"
    return True


async def send_raw(client: HttpClient, data: bytes) -> Reply:
    """Write exact bytes on the client's connection and read one response."""
    if client.writer is None:
        await client.connect()
    assert client.writer is not None
    client.writer.write(data)
    return await client.read_reply(timeout=5.0)


class RawClient(asyncio.Protocol):
    """A client that keeps every byte it receives even when the connection ends in a reset
    (``asyncio`` streams raise on reset and drop what was buffered before it)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.arrived = asyncio.Event()
        self.ended = asyncio.Event()
        self.reset = False

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> RawClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(cls, *address)
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received += data
        self.arrived.set()

    def eof_received(self) -> bool:
        self.ended.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.reset = exc is not None
        self.ended.set()
        self.arrived.set()

    def send(self, data: bytes) -> bool:
        """Write unless the proxy already answered or closed; False when it did."""
        if self.received or self.ended.is_set() or self.transport is None:
            return False
        self.transport.write(data)
        return True

    async def closed(self, within: float = 3.0) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.ended.wait()
        return self.ended.is_set()

    def replies(self) -> list[Reply]:
        """The complete responses received so far."""
        return parse_replies(bytes(self.received))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def parse_replies(data: bytes) -> list[Reply]:
    out: list[Reply] = []
    headers: list[tuple[str, str]] = []
    body: list[bytes] = []

    class Callbacks:
        def on_message_begin(self) -> None:
            headers.clear()
            body.clear()

        def on_header(self, name: bytes, value: bytes) -> None:
            headers.append((name.decode("latin-1"), value.decode("latin-1")))

        def on_body(self, chunk: bytes) -> None:
            body.append(chunk)

        def on_message_complete(self) -> None:
            out.append(Reply(parser.get_status_code(), list(headers), b"".join(body)))

    parser = httptools.HttpResponseParser(Callbacks())
    parser.feed_data(data)
    return out


def assert_proxy_error(reply: Reply, status: int, reason: str) -> None:
    assert reply.status == status, (reply.status, reply.headers, reply.body)
    assert reply.header(ERROR_HEADER) == reason, reply.headers
    assert reply.body.startswith(b"weft proxy: ")


def upstream_pool_sizes(proxy: ProxyServer) -> int:
    return sum(
        len(state.idle)
        for concrete in proxy.outbound.concretes.values()
        for state in concrete.endpoints.values()
    )


def abort_socket(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed client would."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def has_accepted(backend: Backend, count: int) -> Callable[[], bool]:
    return lambda: backend.connections >= count


async def assert_serves(proxy: ProxyServer, path: str = "/alive") -> None:
    """A fresh client still gets a normal answer: the proxy survived what came before."""
    async with HttpClient(proxy.addresses["outbound"]) as client:
        reply = await client.request("GET", path, timeout=5.0)
    assert reply.status == 200
    assert reply.header(ERROR_HEADER) is None


@contextlib.asynccontextmanager
async def discovery_file(tmp_path: Path, text: str) -> AsyncIterator[tuple[Path, StaticDiscovery]]:
    path = tmp_path / "discovery.yaml"
    path.write_text(text)
    discovery = StaticDiscovery(str(path), interval=0.05)
    try:
        yield path, discovery
    finally:
        await discovery.close()


def destinations_yaml(target: str, endpoints: list[tuple[str, int]]) -> str:
    lines = ["destinations:", f"  - target: {target}", "    labels: {service: web}"]
    if not endpoints:
        lines.append("    endpoints: []")
    else:
        lines.append("    endpoints:")
        lines += [f"      - address: {host}:{port}" for host, port in endpoints]
    return "\n".join(lines) + "\n"


# -- the app's errors are not the proxy's -------------------------------------------------------


async def test_application_errors_carry_no_proxy_error_header() -> None:
    def handler(req: Request) -> Response:
        return Response(status=int(req.path.strip("/")), body=b"from the app")

    async with (
        Backend(handler) as backend,
        running_proxy(outbound_target=backend.address) as proxy,
        HttpClient(proxy.addresses["outbound"]) as client,
    ):
        for code in (400, 502, 503, 504):
            reply = await client.request("GET", f"/{code}")
            assert reply.status == code
            assert reply.body == b"from the app"
            assert reply.header(ERROR_HEADER) is None


# -- 503: no endpoint ---------------------------------------------------------------------------


async def test_no_endpoints_fails_fast_with_503_and_keeps_the_connection(tmp_path: Path) -> None:
    port = unused_port()
    target = f"127.0.0.1:{port}"
    async with (
        discovery_file(tmp_path, destinations_yaml(target, [])) as (_, discovery),
        running_proxy(
            discovery, outbound_target=("127.0.0.1", port), fail_fast_outbound=0.2
        ) as proxy,
    ):
        async with HttpClient(proxy.addresses["outbound"]) as client:
            for _ in range(2):  # keep-alive: the request was complete, the connection lives
                reply = await client.request("GET", "/nothing-there")
                assert_proxy_error(reply, 503, "no-endpoints")
                assert reply.header("connection") is None
            reply = await client.request("POST", "/with-body", body=b"x" * 100)
            assert_proxy_error(reply, 503, "no-endpoints")
        assert await wait_until(lambda: not proxy.outbound.http.connections)


async def test_request_waiting_for_endpoints_is_served_when_one_appears() -> None:
    port = unused_port()
    discovery = FakeDiscovery()
    discovery.set_endpoints(("127.0.0.1", port), [], service="web")
    async with (
        Backend() as backend,
        running_proxy(
            discovery, outbound_target=("127.0.0.1", port), fail_fast_outbound=5.0
        ) as proxy,
        HttpClient(proxy.addresses["outbound"]) as client,
    ):
        pending = asyncio.create_task(client.request("GET", "/late"))
        await asyncio.sleep(0.1)
        assert not pending.done()  # parked until discovery has an endpoint
        discovery.set_endpoints(("127.0.0.1", port), [backend.address])
        reply = await asyncio.wait_for(pending, 5.0)
        assert reply.status == 200
        assert reply.body == b"GET /late"


@pytest.mark.parametrize("failure", ["no-endpoints", "connect-failed"])
async def test_error_before_the_body_is_read_closes_the_connection(
    tmp_path: Path, failure: str
) -> None:
    port = unused_port()
    target = f"127.0.0.1:{port}"
    status = 503 if failure == "no-endpoints" else 502
    # no endpoints: discovery lists the target with none; connect failure: nothing listens
    yaml_text = destinations_yaml(target, [] if status == 503 else [("127.0.0.1", port)])
    async with (
        discovery_file(tmp_path, yaml_text) as (_, discovery),
        running_proxy(
            discovery, outbound_target=("127.0.0.1", port), fail_fast_outbound=0.2
        ) as proxy,
    ):
        async with HttpClient(proxy.addresses["outbound"]) as client:
            head = b"POST /upload HTTP/1.1\r\nhost: t\r\ncontent-length: 1000000\r\n\r\n"
            reply = await send_raw(client, head + b"x" * 1000)
            assert_proxy_error(reply, status, failure)
            assert reply.header("connection") == "close"
            assert await is_closed(client, within=2.0)
        assert await wait_until(lambda: not proxy.outbound.http.connections)


async def test_lingering_after_an_early_error_is_time_bounded() -> None:
    async with running_proxy(
        outbound_target=("127.0.0.1", unused_port()), idle_timeout=0.5, header_timeout=0.5
    ) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.addresses["outbound"])
        head = b"POST /upload HTTP/1.1\r\nhost: t\r\ncontent-length: 1000000\r\n\r\n"
        writer.write(head + b"x" * 1000)  # then nothing more, and the socket stays open
        answer = await asyncio.wait_for(reader.read(), 5.0)  # the proxy's error, then its EOF
        assert answer.startswith(b"HTTP/1.1 502 ")
        assert await wait_until(lambda: not proxy.outbound.http.connections, within=4.0)
        writer.close()


# -- 502: connect failure, broken upstream ------------------------------------------------------


async def test_connect_refused_is_502_and_the_connection_stays_usable() -> None:
    async with (
        running_proxy(outbound_target=("127.0.0.1", unused_port())) as proxy,
        HttpClient(proxy.addresses["outbound"]) as client,
    ):
        for _ in range(2):
            reply = await client.request("GET", "/")
            assert_proxy_error(reply, 502, "connect-failed")
            assert b"connect to 127.0.0.1:" in reply.body
            assert reply.header("connection") is None


async def test_proxy_error_to_a_head_request_has_no_body() -> None:
    async with running_proxy(outbound_target=("127.0.0.1", unused_port())) as proxy:
        client = await RawClient.connect(proxy.addresses["outbound"])
        client.send(b"HEAD /h HTTP/1.1\r\nhost: t\r\n\r\nGET /g HTTP/1.1\r\nhost: t\r\n\r\n")
        assert await wait_until(lambda: client.received.count(b"weft-proxy-error") == 2)
        head, _, rest = bytes(client.received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 502 ")
        assert b"weft-proxy-error: connect-failed" in head
        # a HEAD response ends with its head: the next bytes are the next response
        assert rest.startswith(b"HTTP/1.1 502 "), rest[:80]
        client.close()


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"NOT HTTP AT ALL\r\n\r\n", id="garbage-status-line"),
        pytest.param(b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n", id="bad-status-code"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
            id="conflicting-content-length",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n",
            id="content-length-and-chunked",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", id="header-without-colon"),
    ],
)
async def test_malformed_upstream_response_is_502(raw: bytes) -> None:
    def handler(req: Request) -> Response:
        if req.path == "/bad":
            return Response(raw=raw)
        return Response(body=b"good")

    async with (
        Backend(handler) as backend,
        running_proxy(outbound_target=backend.address) as proxy,
        HttpClient(proxy.addresses["outbound"]) as client,
    ):
        reply = await client.request("GET", "/bad")
        assert_proxy_error(reply, 502, "upstream-protocol-error")
        # the out-of-sync upstream connection is dropped, the client's is not
        assert await wait_until(lambda: not backend.live)
        follow = await client.request("GET", "/good")
        assert follow.status == 200 and follow.body == b"good"


async def test_bad_chunk_in_upstream_response_body_aborts_the_client_connection() -> None:
    raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"
    async with (
        Backend(lambda r: Response(raw=raw)) as backend,
        running_proxy(outbound_target=backend.address) as proxy,
    ):
        async with HttpClient(proxy.addresses["outbound"]) as client:
            with pytest.raises(ConnectionError):
                await client.request("GET", "/")
        assert await wait_until(lambda: not backend.live)
        assert await wait_until(lambda: not proxy.outbound.http.connections)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly-ten-b", id="content-length"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\nonly-ten-b\r\n",
            id="chunked",
        ),
    ],
)
async def test_upstream_closing_mid_body_aborts_instead_of_a_truncated_success(raw: bytes) -> None:
    def handler(req: Request) -> Response:
        if req.path == "/cut":
            return Response(raw=raw, close=True)
        return Response(body=b"fine")

    async with Backend(handler) as backend, running_proxy(outbound_target=backend.address) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.addresses["outbound"])
        writer.write(b"GET /cut HTTP/1.1\r\nhost: t\r\n\r\n")
        received = b""
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(5.0):
                while chunk := await reader.read(65536):
                    received += chunk
        writer.close()
        assert received.startswith(b"HTTP/1.1 200")
        assert b"only-ten-b" in received
        # no chunked terminator, no padding: the client cannot mistake this for a full body
        assert not received.endswith(b"0\r\n\r\n")
        _, _, body = received.partition(b"\r\n\r\n")
        if b"content-length: 100" in received.lower():
            assert len(body) < 100
        assert await wait_until(lambda: not proxy.outbound.http.connections)
        await assert_serves(proxy)


async def test_unrequested_switching_protocols_is_502() -> None:
    raw = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: other\r\nconnection: upgrade\r\n\r\n"

    def handler(req: Request) -> Response:
        return Response(raw=raw) if req.path == "/switch" else Response(body=b"plain")

    async with Backend(handler) as backend, running_proxy(outbound_target=backend.address) as proxy:
        client = await RawClient.connect(proxy.addresses["outbound"])
        client.send(b"GET /switch HTTP/1.1\r\nhost: t\r\n\r\n")
        assert await wait_until(lambda: b"\r\n\r\n" in client.received)
        assert client.received.startswith(b"HTTP/1.1 502 "), bytes(client.received)
        (reply,) = client.replies()
        assert_proxy_error(reply, 502, "upstream-protocol-error")
        assert client.transport is not None
        client.transport.write(b"GET /next HTTP/1.1\r\nhost: t\r\n\r\n")
        assert await wait_until(lambda: len(client.replies()) == 2)
        assert client.replies()[1].body == b"plain"
        client.close()


async def test_bytes_after_a_complete_response_do_not_poison_the_pool() -> None:
    def handler(req: Request) -> Response:
        if req.path == "/extra":
            return Response(raw=b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokGARBAGE")
        return Response(body=b"innocent")

    async with (
        Backend(handler) as backend,
        running_proxy(outbound_target=backend.address) as proxy,
        HttpClient(proxy.addresses["outbound"]) as client,
    ):
        first = await client.request("GET", "/extra")
        assert first.status == 200 and first.body == b"ok"
        second = await client.request("GET", "/innocent")
        assert second.status == 200 and second.body == b"innocent", second.body
        assert [r.path for r in backend.requests] == ["/extra", "/innocent"]


async def test_endless_upstream_response_head_is_cut_with_502() -> None:
    streamed = 0
    upstream_closed = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal streamed
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nx-endless: ")
        try:
            while streamed < 4 * 1024 * 1024:  # far above any head limit, then stall
                writer.write(b"a" * 65536)
                await writer.drain()
                streamed += 65536
            await reader.read()  # until the proxy closes
        except ConnectionError:
            pass
        upstream_closed.set()

    server = await asyncio.start_server(endless, "127.0.0.1", 0)
    try:
        async with running_proxy(outbound_target=server.sockets[0].getsockname()[:2]) as proxy:
            client = await RawClient.connect(proxy.addresses["outbound"])
            client.send(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            answered = lambda: bool(client.replies()) or client.ended.is_set()  # noqa: E731
            await wait_until(answered, 3.0, check=False)  # the assert below says what failed
            replies = client.replies()
            assert replies, "no answer while the upstream head grew without bound"
            assert_proxy_error(replies[0], 502, "upstream-protocol-error")
            assert await wait_until(upstream_closed.is_set, 2.0)
            client.close()
    finally:
        server.close()


# -- 504: upstream timeout ----------------------------------------------------------------------


async def test_upstream_that_never_answers_is_504_and_its_connection_is_closed() -> None:
    never = asyncio.Event()

    async def handler(req: Request) -> Response:
        if req.path == "/hang":
            await never.wait()
        return Response(body=b"quick")

    async with (
        Backend(handler) as backend,
        running_proxy(outbound_target=backend.address, response_timeout=0.3) as proxy,
    ):
        async with HttpClient(proxy.addresses["outbound"]) as client:
            reply = await client.request("GET", "/hang")
            assert_proxy_error(reply, 504, "response-timeout")
            assert reply.header("connection") is None
            # the upstream connection carrying the abandoned request is closed, not pooled
            assert await wait_until(lambda: not backend.live)
            assert upstream_pool_sizes(proxy) == 0
            follow = await client.request("GET", "/fast")  # same client connection
            assert follow.status == 200 and follow.body == b"quick"
        assert len(backend.requests) == 2


# -- 400 and close: malformed requests and smuggling attempts ----------------------------------

SMUGGLING_AND_MALFORMED = [
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGPOST / HTTP/1.1\r\nhost: t\r\n\r\n",
        {"smuggling", "malformed-request"},
        id="cl-te",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n"
        b"5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n",
        {"smuggling", "malformed-request"},
        id="te-cl",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        {"bad-content-length", "malformed-request"},
        id="conflicting-content-lengths",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5, 6\r\n\r\nhello!",
        {"bad-content-length", "malformed-request"},
        id="content-length-list",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: -1\r\n\r\n",
        {"bad-content-length", "malformed-request"},
        id="negative-content-length",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 0x10\r\n\r\n",
        {"bad-content-length", "malformed-request"},
        id="hex-content-length",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        {"malformed-request"},
        id="bad-chunk-size",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        {"malformed-request"},
        id="chunk-longer-than-its-size",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
        b"ffffffffffffffffff\r\nx\r\n0\r\n\r\n",
        {"malformed-request"},
        id="chunk-size-overflow",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: gzip\r\n\r\nabc",
        {"bad-transfer-encoding", "malformed-request"},
        id="te-not-ending-in-chunked",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        {"bad-transfer-encoding", "malformed-request"},
        id="te-chunked-twice",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n",
        {"bad-transfer-encoding", "malformed-request"},
        id="te-xchunked",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length : 5\r\n\r\nhello",
        {"malformed-request"},
        id="space-before-colon",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nhost: t\r\nx-folded: a\r\n b\r\n\r\n",
        {"malformed-request"},
        id="obs-fold",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nhost: t\r\nx-nul: a\x00b\r\n\r\n",
        {"malformed-request"},
        id="nul-in-header-value",
    ),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", {"bad-host"}, id="missing-host"),
    pytest.param(b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", {"bad-host"}, id="two-hosts"),
    pytest.param(b"GET / HTTP/1.9\r\nhost: t\r\n\r\n", {"malformed-request"}, id="bad-version"),
]


@pytest.mark.parametrize(("request_bytes", "reasons"), SMUGGLING_AND_MALFORMED)
async def test_malformed_or_smuggling_request_is_400_and_close(
    request_bytes: bytes, reasons: set[str]
) -> None:
    async with (
        Backend() as backend,
        running_proxy(outbound_target=backend.address) as proxy,
        HttpClient(proxy.addresses["outbound"]) as client,
    ):
        reply = await send_raw(client, request_bytes)
        assert reply.status == 400, (reply.status, reply.body)
        assert reply.header(ERROR_HEADER) in reasons, reply.headers
        assert reply.header("connection") == "close"
        assert await is_closed(client)
        # nothing of an ambiguous request reaches the application
        assert backend.requests == []
        await assert_serves(proxy)


async def test_malformed_request_after_a_good_one_on_the_same_connection() -> None:
    async with (
        Backend() as backend,
        running_proxy(outbound_target=backend.address) as proxy,
        HttpClient(proxy.addresses["outbound"]) as client,
    ):
        assert (await client.request("GET", "/first")).status == 200
        reply = await send_raw(
            client,
            b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\n"
            b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        assert reply.status == 400
        assert reply.header(ERROR_HEADER) in {"smuggling", "malformed-request"}
        assert await is_closed(client)
        assert [r.path for r in backend.requests] == ["/first"]


async def test_malformed_pipelined_request_is_not_answered_for_a_forwarded_one() -> None:
    async with Backend() as backend, running_proxy(outbound_target=backend.address) as proxy:
        client = await RawClient.connect(proxy.addresses["outbound"])
        assert client.send(b"GET /warm HTTP/1.1\r\nhost: t\r\n\r\n")  # pools a connection
        assert await wait_until(lambda: len(client.replies()) == 1)
        assert client.transport is not None
        client.transport.write(
            b"POST /pay HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\nGARBAGE\x01\r\n\r\n"
        )
        assert await client.closed()
        await wait_until(lambda: len(backend.requests) == 2, 0.5, check=False)
        replies = client.replies()
        if "/pay" in [r.path for r in backend.requests]:
            # the app processed /pay: the client must get its answer, not a 400 for it
            assert len(replies) >= 2 and replies[1].header(ERROR_HEADER) is None, replies[1:]
            assert replies[1].body == b"POST /pay"
        client.close()


async def test_connect_method_is_refused_with_501_and_close() -> None:
    async with (
        Backend() as backend,
        running_proxy(outbound_target=backend.address) as proxy,
        HttpClient(proxy.addresses["outbound"]) as client,
    ):
        reply = await send_raw(client, b"CONNECT example:443 HTTP/1.1\r\nhost: example\r\n\r\n")
        assert_proxy_error(reply, 501, "connect-not-supported")
        assert await is_closed(client)
        assert backend.requests == []


# -- Transfer-Encoding: chunked, once, in HTTP/1.1, or refused (RFC 9112 6.1, 6.3) -------------


class RecordingUpstream:
    """A raw TCP upstream that keeps every byte the proxy sends it and answers nothing: what a
    refused request must never reach (not even its head)."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.server: asyncio.Server | None = None
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    async def __aenter__(self) -> RecordingUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = self.server.sockets[0].getsockname()[:2]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                self.received += chunk
        writer.close()


def te_request(*values: bytes, version: bytes = b"1.1") -> bytes:
    lines = b"".join(b"Transfer-Encoding: %s\r\n" % v for v in values)
    return b"POST /te HTTP/%s\r\nhost: t\r\n%s\r\n5\r\nhello\r\n0\r\n\r\n" % (version, lines)


BAD_REQUEST_CODINGS = [
    # the reported case: llhttp frames it chunked, and an app behind may not
    pytest.param(te_request(b"identity", b"chunked"), 501, id="identity-line-then-chunked-line"),
    pytest.param(te_request(b"identity, chunked"), 501, id="identity-chunked"),
    pytest.param(te_request(b"gzip, chunked"), 501, id="gzip-chunked"),
    pytest.param(te_request(b"chunked, chunked"), 400, id="chunked-chunked"),
    pytest.param(te_request(b"chunked", b"identity"), 400, id="chunked-line-then-identity-line"),
    pytest.param(te_request(b"chunked", b"chunked"), 400, id="chunked-line-twice"),
    pytest.param(te_request(b""), 400, id="empty"),
    pytest.param(te_request(b"chunked", b""), 400, id="chunked-then-empty-line"),
    pytest.param(te_request(b", chunked"), 400, id="empty-element-then-chunked"),
    pytest.param(te_request(b"chunked\t"), 400, id="chunked-trailing-tab"),
    pytest.param(te_request(b"chunked;x=1"), 400, id="chunked-with-a-parameter"),
    pytest.param(te_request(b"gzip"), 400, id="gzip-alone"),
    pytest.param(te_request(b"chunked", version=b"1.0"), 400, id="http10-chunked"),
    pytest.param(te_request(b"Chunked", version=b"1.0"), 400, id="http10-Chunked"),
]


@pytest.mark.parametrize(("request_bytes", "status"), BAD_REQUEST_CODINGS)
async def test_transfer_coding_other_than_one_chunked_is_refused_and_closed(
    request_bytes: bytes, status: int
) -> None:
    async with (
        RecordingUpstream() as upstream,
        running_proxy(outbound_target=upstream.address) as proxy,
    ):
        client = await RawClient.connect(proxy.addresses["outbound"])
        client.send(request_bytes)
        assert await client.closed(), "the connection was left open"
        (reply,) = client.replies()
        if status == 400:  # llhttp refuses some of these itself, before the proxy looks
            reasons = {"bad-transfer-encoding", "malformed-request"}
        else:
            reasons = {"transfer-coding-not-implemented"}
        assert reply.status == status, (reply.status, reply.body)
        assert reply.header(ERROR_HEADER) in reasons, reply.headers
        assert reply.header("connection") == "close"
        # nothing of it reached the upstream, not even the head (a short bounded look)
        assert not await wait_until(lambda: bool(upstream.received), 0.3, check=False), (
            upstream.received
        )
        client.close()


_FRAMING_FIELDS = {"transfer-encoding", "content-length"}


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([b"chunked"], id="chunked"),
        pytest.param([b"Chunked"], id="Chunked"),
        pytest.param([b"  CHUNKED  "], id="spaces-around"),
    ],
)
async def test_a_single_chunked_coding_is_relayed_as_chunked(values: list[bytes]) -> None:
    async with (
        Backend() as backend,
        running_proxy(outbound_target=backend.address) as proxy,
        HttpClient(proxy.addresses["outbound"]) as client,
    ):
        reply = await send_raw(client, te_request(*values))
        assert reply.status == 200 and reply.body == b"POST /te", (reply.status, reply.body)
        (req,) = backend.requests
        framing = [(k.lower(), v) for k, v in req.headers if k.lower() in _FRAMING_FIELDS]
        assert framing == [("transfer-encoding", "chunked")]
        assert req.body == b"hello"
        follow = await client.request("GET", "/next")  # the connection stays in sync
        assert follow.status == 200 and follow.body == b"GET /next"


def te_response(*values: bytes, version: bytes = b"1.1") -> bytes:
    lines = b"".join(b"Transfer-Encoding: %s\r\n" % v for v in values)
    return b"HTTP/%s 200 OK\r\n%s\r\n5\r\nhello\r\n0\r\n\r\n" % (version, lines)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(te_response(b"identity", b"chunked"), id="identity-line-then-chunked-line"),
        pytest.param(te_response(b"gzip, chunked"), id="gzip-chunked"),
        pytest.param(te_response(b"chunked, chunked"), id="chunked-chunked"),
        pytest.param(te_response(b"chunked", b"chunked"), id="chunked-line-twice"),
        # llhttp reads these three close-delimited: the proxy must not wait for a chunked end
        pytest.param(te_response(b"chunked", b"identity"), id="chunked-line-then-identity-line"),
        pytest.param(te_response(b"chunked\t"), id="chunked-trailing-tab"),
        pytest.param(te_response(b"gzip"), id="gzip-alone"),
        pytest.param(te_response(b", chunked"), id="empty-element-then-chunked"),
        pytest.param(te_response(b"chunked", version=b"1.0"), id="http10-chunked"),
    ],
)
async def test_upstream_response_with_a_coding_other_than_one_chunked_is_502(raw: bytes) -> None:
    def handler(req: Request) -> Response:
        return Response(raw=raw) if req.path == "/bad" else Response(body=b"good")

    async with (
        Backend(handler) as backend,
        running_proxy(outbound_target=backend.address) as proxy,
        HttpClient(proxy.addresses["outbound"]) as client,
    ):
        reply = await client.request("GET", "/bad", timeout=5.0)
        assert_proxy_error(reply, 502, "upstream-protocol-error")
        # a broken upstream connection is closed, never pooled again; the client's stays
        assert await wait_until(lambda: not backend.live)
        assert upstream_pool_sizes(proxy) == 0
        follow = await client.request("GET", "/good", timeout=5.0)
        assert follow.status == 200 and follow.body == b"good"


@pytest.mark.parametrize(
    ("status_line", "values"),
    [
        pytest.param(b"200 OK", [b"Chunked"], id="Chunked"),
        pytest.param(b"200 OK", [b"chunked  "], id="trailing-spaces"),
        pytest.param(b"204 No Content", [b"gzip, chunked"], id="no-body-204"),
    ],
)
async def test_upstream_response_with_one_chunked_coding_or_no_body_is_relayed(
    status_line: bytes, values: list[bytes]
) -> None:
    lines = b"".join(b"transfer-encoding: %s\r\n" % v for v in values)
    body = b"5\r\nhello\r\n0\r\n\r\n" if status_line.startswith(b"200") else b""
    raw = b"HTTP/1.1 %s\r\n%s\r\n%s" % (status_line, lines, body)

    async with (
        Backend(lambda r: Response(raw=raw)) as backend,
        running_proxy(outbound_target=backend.address) as proxy,
        HttpClient(proxy.addresses["outbound"]) as client,
    ):
        for _ in range(2):  # the upstream connection stays in sync and is reused
            reply = await client.request("GET", "/", timeout=5.0)
            assert reply.status == int(status_line[:3]), reply
            assert reply.header(ERROR_HEADER) is None
            assert reply.body == (b"hello" if body else b"")
        assert backend.connections == 1


# the rule itself (a pure function), against the parser the proxy and the tests' apps use

TE_CASES = [
    (b"chunked", True, None),
    (b"Chunked", True, None),
    (b"chunked  ", True, None),
    (b"chunked", False, 400),
    (b"identity, chunked", True, 501),
    (b"gzip;level=1, chunked", True, 501),
    (b"x-gzip, deflate, chunked", True, 501),
    (b"chunked, chunked", True, 400),
    (b"chunked, identity", True, 400),
    (b"gzip", True, 400),
    (b"identity", True, 400),
    (b"", True, 400),
    (b" ", True, 400),
    (b"chunked, ", True, 400),
    (b", chunked", True, 400),
    (b"gzip, , chunked", True, 400),
    (b"chunked\t", True, 400),
    (b"chunked;x=1", True, 400),
    (b"xchunked", True, 400),
    (b"g(zip), chunked", True, 400),
]


@pytest.mark.parametrize(("te", "http11", "status"), TE_CASES)
def test_transfer_coding_rule(te: bytes, http11: bool, status: int | None) -> None:
    problem = transfer_coding_error(te, http11=http11)
    assert (problem[0] if problem is not None else None) == status, problem
    if problem is not None:
        assert problem[1] == (
            "bad-transfer-encoding" if status == 400 else "transfer-coding-not-implemented"
        )


def llhttp_body(message: bytes, *, response: bool) -> bytes | None:
    """The body llhttp frames in ``message``, or None when it does not read it as complete."""
    body: list[bytes] = []
    done: list[bool] = []

    class Callbacks:
        def on_body(self, chunk: bytes) -> None:
            body.append(chunk)

        def on_message_complete(self) -> None:
            done.append(True)

    cls = httptools.HttpResponseParser if response else httptools.HttpRequestParser
    try:
        cls(Callbacks()).feed_data(message)
    except httptools.HttpParserError:
        return None
    return b"".join(body) if done else None


TE_ELEMENTS = [b"chunked", b"Chunked", b"identity", b"gzip", b"", b" ", b"\t", b";x=1"]


@given(
    values=st.lists(
        st.lists(st.sampled_from(TE_ELEMENTS), min_size=1, max_size=3).map(b", ".join),
        min_size=1,
        max_size=3,
    ),
    version=st.sampled_from([b"1.0", b"1.1"]),
)
def test_what_the_rule_accepts_llhttp_frames_chunked(values: list[bytes], version: bytes) -> None:
    # the proxy joins repeated lines with ", " and relays one "chunked": the parser that read the
    # body must have read it chunked too, in a request and in a response
    joined = b", ".join(v.lstrip(b" \t") for v in values)  # llhttp strips leading whitespace
    if transfer_coding_error(joined, http11=version == b"1.1") is not None:
        return
    assert len(values) == 1
    assert llhttp_body(te_request(*values, version=version), response=False) == b"hello"
    assert llhttp_body(te_response(*values, version=version), response=True) == b"hello"


# -- 431: oversized heads -----------------------------------------------------------------------


async def test_oversized_head_dribbled_in_pieces_is_431_and_close() -> None:
    async with (
        Backend() as backend,
        running_proxy(outbound_target=backend.address, max_header_bytes=2048) as proxy,
    ):
        client = await RawClient.connect(proxy.addresses["outbound"])
        client.send(b"GET / HTTP/1.1\r\nhost: t\r\n")
        lines = 0
        while lines < 40 and client.send(b"x-filler: " + b"a" * 190 + b"\r\n"):
            lines += 1
            await asyncio.sleep(0.01)
        assert lines < 40, "the proxy kept reading a head far beyond max_header_bytes"
        assert await client.closed()
        (reply,) = client.replies()
        assert_proxy_error(reply, 431, "headers-too-large")
        assert reply.header("connection") == "close"
        assert backend.requests == []
        await assert_serves(proxy)


async def test_oversized_head_in_one_write_is_431_and_close() -> None:
    async with (
        Backend() as backend,
        running_proxy(outbound_target=backend.address, max_header_bytes=2048) as proxy,
    ):
        async with HttpClient(proxy.addresses["outbound"]) as client:
            head = b"GET / HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 8000 + b"\r\n\r\n"
            reply = await send_raw(client, head)
            assert_proxy_error(reply, 431, "headers-too-large")
            assert await is_closed(client)
        assert backend.requests == []


async def test_body_bytes_do_not_count_against_the_next_head() -> None:
    async with (
        Backend() as backend,
        running_proxy(outbound_target=backend.address, max_header_bytes=2048) as proxy,
        HttpClient(proxy.addresses["outbound"]) as client,
    ):
        assert client.writer is not None
        body = b"b" * 8000
        client.writer.write(
            b"POST /one HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % len(body)
            + body
            + b"GET /two HTTP/1.1\r\n"  # the next head is not complete yet
        )
        first = await client.read_reply(timeout=5.0)
        assert first.status == 200 and first.header(ERROR_HEADER) is None
        client.writer.write(b"host: t\r\n\r\n")
        second = await client.read_reply(timeout=5.0)
        assert second.status == 200 and second.body == b"GET /two"
        assert [r.path for r in backend.requests] == ["/one", "/two"]


def big_head(first_line: bytes) -> bytes:
    """A head of about 1.2 KB: well under a 2 KB limit."""
    fields = b"".join(b"x-h%02d: %s\r\n" % (i, b"v" * 80) for i in range(13))
    return first_line + b"\r\n" + fields


async def test_head_under_the_limit_arriving_in_many_pieces_is_served() -> None:
    head = big_head(b"GET /pieces HTTP/1.1") + b"host: t\r\nconnection: close\r\n\r\n"
    assert len(head) < 2048 * 0.7
    async with (
        Backend() as backend,
        running_proxy(outbound_target=backend.address, max_header_bytes=2048) as proxy,
    ):
        client = await RawClient.connect(proxy.addresses["outbound"])
        for i in range(0, len(head), 50):
            if not client.send(head[i : i + 50]):
                break
            await asyncio.sleep(0.02)  # separate reads on the proxy's side
        assert await client.closed()
        (reply,) = client.replies()
        assert reply.status == 200 and reply.body == b"GET /pieces", reply


async def test_response_head_under_the_limit_arriving_in_many_pieces_is_relayed() -> None:
    head = big_head(b"HTTP/1.1 200 OK") + b"content-length: 2\r\n\r\nok"

    async def slow_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for i in range(0, len(head), 50):
            writer.write(head[i : i + 50])
            await writer.drain()
            await asyncio.sleep(0.02)
        await reader.read()

    server = await asyncio.start_server(slow_head, "127.0.0.1", 0)
    try:
        address = server.sockets[0].getsockname()[:2]
        async with (
            running_proxy(outbound_target=address, max_header_bytes=2048) as proxy,
            HttpClient(proxy.addresses["outbound"]) as client,
        ):
            reply = await client.request("GET", "/")
            assert reply.status == 200 and reply.body == b"ok", reply
    finally:
        server.close()


# -- 408: slowloris -----------------------------------------------------------------------------


async def test_head_dribbled_byte_by_byte_gets_408_and_close() -> None:
    async with (
        Backend() as backend,
        running_proxy(outbound_target=backend.address, header_timeout=0.3) as proxy,
    ):
        client = await RawClient.connect(proxy.addresses["outbound"])
        client.send(b"GET /slow HTTP/1.1\r\n")
        dribble = b"host: t\r\nx-slow: " + b"z" * 200
        sent = 0
        # a byte every 50 ms, for far longer than the header timeout: the proxy must cut in
        while sent < len(dribble) and client.send(dribble[sent : sent + 1]):
            sent += 1
            await asyncio.sleep(0.05)
        assert sent < len(dribble), "the proxy let a head dribble in for 10 s"
        assert await client.closed()
        (reply,) = client.replies()
        assert_proxy_error(reply, 408, "header-timeout")
        assert reply.header("connection") == "close"
        assert backend.requests == []
        await assert_serves(proxy)


# -- clients that go away -----------------------------------------------------------------------


async def test_client_reset_mid_request_body_closes_the_upstream() -> None:
    async with Backend() as backend, running_proxy(outbound_target=backend.address) as proxy:
        _, writer = await asyncio.open_connection(*proxy.addresses["outbound"])
        writer.write(b"POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: 100000\r\n\r\n" + b"x" * 500)
        await writer.drain()
        assert await wait_until(lambda: backend.body_bytes >= 500)
        abort_socket(writer)
        assert await wait_until(lambda: not backend.live)
        assert await wait_until(lambda: not proxy.outbound.http.connections)
        assert upstream_pool_sizes(proxy) == 0
        assert backend.requests == []  # the truncated request never completed upstream
        await assert_serves(proxy)


async def test_client_closing_mid_request_body_closes_the_upstream() -> None:
    async with Backend() as backend, running_proxy(outbound_target=backend.address) as proxy:
        _, writer = await asyncio.open_connection(*proxy.addresses["outbound"])
        writer.write(b"POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: 100000\r\n\r\n" + b"x" * 500)
        await writer.drain()
        assert await wait_until(lambda: backend.body_bytes >= 500)
        writer.close()  # FIN: the rest of the body will never come
        assert await wait_until(lambda: not backend.live, within=2.0)
        assert await wait_until(lambda: not proxy.outbound.http.connections, within=1.0)


async def test_client_fin_after_a_complete_and_a_partial_request_gets_the_first_answer() -> None:
    async with Backend() as backend, running_proxy(outbound_target=backend.address) as proxy:
        async with HttpClient(proxy.addresses["outbound"]) as warm:
            await warm.request("GET", "/warm")  # a pooled connection: /1 is forwarded at once
        client = await RawClient.connect(proxy.addresses["outbound"])
        assert client.transport is not None
        client.transport.write(
            b"POST /1 HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nok"
            b"GET /2 HTTP/1.1\r\nhost"  # this one can never complete
        )
        client.transport.write_eof()
        assert await client.closed()
        replies = client.replies()
        assert [r.body for r in replies] == [b"POST /1"], (replies, backend.requests)
        assert [r.path for r in backend.requests] == ["/warm", "/1"]


async def test_client_gone_mid_response_closes_the_upstream_and_others_are_served() -> None:
    async def handler(req: Request) -> Response:
        if req.path == "/stream":
            return Response(chunks=[b"c" * 1024] * 400)
        return Response(body=b"other")

    async with Backend(handler) as backend, running_proxy(outbound_target=backend.address) as proxy:
        backend.chunk_delay = 0.01  # a slow stream: the client leaves while it flows
        reader, writer = await asyncio.open_connection(*proxy.addresses["outbound"])
        writer.write(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        assert head.startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(reader.readexactly(1024), 5.0)
        abort_socket(writer)
        assert await wait_until(lambda: not backend.live)
        assert await wait_until(lambda: not proxy.outbound.http.connections)
        assert upstream_pool_sizes(proxy) == 0
        await assert_serves(proxy, "/other")


async def test_client_fin_mid_response_closes_the_upstream() -> None:
    async def handler(req: Request) -> Response:
        return Response(chunks=[b"c" * 1024] * 400)

    async with Backend(handler) as backend, running_proxy(outbound_target=backend.address) as proxy:
        backend.chunk_delay = 0.01
        reader, writer = await asyncio.open_connection(*proxy.addresses["outbound"])
        writer.write(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        writer.close()  # FIN, then the kernel answers further proxy writes with RST
        assert await wait_until(lambda: not backend.live)
        assert await wait_until(lambda: not proxy.outbound.http.connections)


async def test_many_clients_vanishing_leave_nothing_behind() -> None:
    never = asyncio.Event()

    async def handler(req: Request) -> Response:
        await never.wait()
        return Response()

    async with Backend(handler) as backend, running_proxy(outbound_target=backend.address) as proxy:
        writers = []
        for i in range(20):
            _, writer = await asyncio.open_connection(*proxy.addresses["outbound"])
            writer.write(b"GET /%d HTTP/1.1\r\nhost: t\r\n\r\n" % i)
            writers.append(writer)
        assert await wait_until(lambda: len(backend.requests) == 20)
        for writer in writers:
            abort_socket(writer)
        assert await wait_until(lambda: not backend.live)
        assert await wait_until(lambda: not proxy.outbound.http.connections)
        assert upstream_pool_sizes(proxy) == 0


# -- connection hygiene -------------------------------------------------------------------------


async def test_early_upstream_connection_of_an_idle_client_is_not_leaked() -> None:
    async with Backend() as backend, running_proxy(outbound_target=backend.address) as proxy:
        client = await RawClient.connect(proxy.addresses["outbound"])
        # a new destination may greet first, so the proxy dials it at accept: let that dial
        # finish before the client speaks
        assert await wait_until(has_accepted(backend, 1))
        await asyncio.sleep(0.05)
        client.send(b"GET /late HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        assert await client.closed()
        assert client.replies()[0].body == b"GET /late"
        assert await wait_until(lambda: not proxy.outbound.http.connections)
        # every upstream connection still open must be idle in the pool, owned by someone
        assert await wait_until(lambda: len(backend.live) <= upstream_pool_sizes(proxy), 1.0), (
            len(backend.live),
            upstream_pool_sizes(proxy),
        )


async def test_half_closed_pipeline_says_close_only_last() -> None:
    async with Backend() as backend, running_proxy(outbound_target=backend.address) as proxy:
        client = await RawClient.connect(proxy.addresses["outbound"])
        assert client.transport is not None
        client.transport.write(
            b"GET /1 HTTP/1.1\r\nhost: t\r\n\r\nGET /2 HTTP/1.1\r\nhost: t\r\n\r\n"
        )
        client.transport.write_eof()  # all requests sent; the answers must still all come
        assert await client.closed()
        received = bytes(client.received)
        assert received.count(b"HTTP/1.1 200") == 2, received
        first, _, second = received.partition(b"GET /1")
        assert b"connection: close" not in first.lower(), first
        assert second.endswith(b"GET /2")
        assert [r.path for r in backend.requests] == ["/1", "/2"]


# -- upstreams that answer early ----------------------------------------------------------------


async def test_early_response_before_the_body_does_not_deadlock_the_client() -> None:
    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Too Big\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(early, "127.0.0.1", 0)
    try:
        addr = server.sockets[0].getsockname()[:2]
        async with running_proxy(outbound_target=addr, buffer_high=65536) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.addresses["outbound"])
            size = 64 * 1024 * 1024
            writer.write(b"POST /big HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % size)

            async def upload() -> None:
                block = b"u" * (1024 * 1024)
                for _ in range(size // len(block)):
                    writer.write(block)
                    await writer.drain()

            sending = asyncio.create_task(upload())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            assert head.startswith(b"HTTP/1.1 413")
            # the proxy either drains the body or closes: the upload must not block forever
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(sending, 3.0)
            writer.close()
    finally:
        server.close()


# -- static discovery file errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("destinations: [\n  - target: {oops\n", id="invalid-yaml"),
        pytest.param(
            "destinations:\n  - target: 127.0.0.1:1\n    endpoints:\n      - address: nope\n",
            id="bad-endpoint-address",
        ),
        pytest.param("- just\n- a list\n", id="not-a-mapping"),
    ],
)
def test_invalid_discovery_file_at_start_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken-discovery.yaml"
    path.write_text(text)
    with pytest.raises(StaticDiscoveryError) as info:
        StaticDiscovery(str(path))
    assert str(path) in str(info.value)


def test_missing_discovery_file_at_start_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(StaticDiscoveryError, match=r"absent\.yaml"):
        StaticDiscovery(str(path))


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param("destinations: [\n  - target: {oops\n", id="invalid-yaml"),
        pytest.param("destinations:\n  - endpoints: []\n", id="entry-without-target"),
    ],
)
async def test_invalid_discovery_file_after_start_keeps_the_last_good_content(
    tmp_path: Path, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="weft.discovery")

    def complained() -> bool:
        return any("keeping the last good discovery" in r.getMessage() for r in caplog.records)

    port = unused_port()
    target = f"127.0.0.1:{port}"
    async with Backend() as first, Backend() as second:
        good = destinations_yaml(target, [first.address])
        async with (
            discovery_file(tmp_path, good) as (path, discovery),
            running_proxy(discovery, outbound_target=("127.0.0.1", port)) as proxy,
        ):
            async with HttpClient(proxy.addresses["outbound"]) as client:
                assert (await client.request("GET", "/a")).status == 200
                path.write_text(broken)
                assert await wait_until(complained)  # the watcher saw the bad file and said so
                reply = await client.request("GET", "/b")
                assert reply.status == 200 and reply.header(ERROR_HEADER) is None
                # a later good edit is still picked up: the watcher survived the bad one
                path.write_text(destinations_yaml(target, [second.address]))
                assert await wait_until(
                    lambda: list(proxy.outbound.concretes[target].endpoints) == [second.address]
                )
            async with HttpClient(proxy.addresses["outbound"]) as client:
                assert (await client.request("GET", "/c")).status == 200
        assert [r.path for r in first.requests] == ["/a", "/b"]
        assert [r.path for r in second.requests] == ["/c"]
