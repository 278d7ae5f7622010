"""Real servers for tests and demos: a scriptable HTTP/1.1 backend and raw TCP helpers.

:class:`Backend` is a small asyncio HTTP/1.1 server (httptools) whose behaviour per request is a
plain handler function, so tests can make a backend slow, failing, chunked, upgrading or
greeting-first, and count what it really received. :func:`raw_exchange` sends exact bytes and
reads the answer, for malformed-input tests. These are product code (usable by anyone testing
against Weft), not mocks of Weft's own components.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import httptools


@dataclass
class Request:
    """What a backend received."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    version: str = "1.1"

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


@dataclass
class Response:
    """What a handler answers. ``chunks`` (when set) are sent chunked, one write each, with
    ``delay`` seconds between them; ``raw`` bypasses framing entirely."""

    status: int = 200
    body: bytes = b"ok"
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] | None = None
    trailers: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0
    raw: bytes | None = None
    close: bool = False


Handler = Callable[[Request], "Response | Awaitable[Response]"]


def _default(req: Request) -> Response:
    return Response(body=f"{req.method} {req.path}".encode())


class _Conn(asyncio.Protocol):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: asyncio.Queue[Request | None] = asyncio.Queue()
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.task: asyncio.Task[None] | None = None
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.backend.connections += 1
        self.backend.live.add(self)
        if self.backend.greeting is not None:
            self.transport.write(self.backend.greeting)
        self.task = asyncio.get_running_loop().create_task(self.serve())

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            assert self.transport is not None
            self.transport.write(data.upper())  # upgraded protocol: an uppercasing echo
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.backend.live.discard(self)
        self.queue.put_nowait(None)

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.backend.expect_continue and any(k.lower() == "expect" for k, _ in self.headers):
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.backend.body_bytes += len(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        version = self.parser.get_http_version()
        req = Request(
            method, self.url.decode("latin-1"), self.headers, b"".join(self.body), version
        )
        self.backend.requests.append(req)
        self.queue.put_nowait(req)

    async def serve(self) -> None:
        assert self.transport is not None
        while True:
            req = await self.queue.get()
            if req is None:
                return
            result = self.backend.handler(req)
            resp = await result if asyncio.iscoroutine(result) else result
            assert isinstance(resp, Response)
            if resp.delay:
                await asyncio.sleep(resp.delay)
            if self.transport.is_closing():
                return
            if resp.raw is not None:
                self.transport.write(resp.raw)
                if resp.close:
                    self.transport.close()
                    return
                if b" 101 " in resp.raw.split(b"\r\n", 1)[0]:
                    self.upgraded = True
                continue
            head = [f"HTTP/1.1 {resp.status} X"]
            head += [f"{k}: {v}" for k, v in resp.headers]
            if resp.close:
                head.append("connection: close")
            if resp.chunks is None:
                if req.method != "HEAD" or not any(
                    k.lower() == "content-length" for k, _ in resp.headers
                ):
                    head.append(f"content-length: {len(resp.body)}")
                payload = b"" if req.method == "HEAD" else resp.body
                self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            else:
                head.append("transfer-encoding: chunked")
                self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode())
                for chunk in resp.chunks:
                    self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    if self.backend.chunk_delay:
                        await asyncio.sleep(self.backend.chunk_delay)
                trailer = "".join(f"{k}: {v}\r\n" for k, v in resp.trailers)
                self.transport.write(b"0\r\n" + trailer.encode() + b"\r\n")
            if resp.close:
                self.transport.close()
                return


class Backend:
    """A scriptable HTTP/1.1 server on 127.0.0.1; ``async with Backend() as b: b.address``."""

    def __init__(
        self,
        handler: Handler = _default,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        greeting: bytes | None = None,
        expect_continue: bool = True,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.greeting = greeting
        self.expect_continue = expect_continue
        self.chunk_delay = 0.0
        self.requests: list[Request] = []
        self.connections = 0
        self.body_bytes = 0
        self.live: set[_Conn] = set()
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    async def start(self) -> Backend:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in list(self.live):
                if conn.transport is not None:
                    conn.transport.abort()
                if conn.task is not None:
                    conn.task.cancel()
            self.server = None

    def close_idle(self) -> None:
        """Close every connection with no request in progress (a server's idle timeout)."""
        for conn in list(self.live):
            if conn.transport is not None and conn.queue.empty():
                conn.transport.close()

    async def __aenter__(self) -> Backend:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def raw_exchange(
    address: tuple[str, int], data: bytes, *, timeout: float = 5.0, shutdown: bool = False
) -> bytes:
    """Send ``data`` and read until the peer closes (or ``timeout``); returns what was read."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(data)
        await writer.drain()
        if shutdown:
            writer.write_eof()
        out = b""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    out += chunk
        return out
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Reply:
    """A response as a client saw it."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class _ReplyParser:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Reply] = []
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.in_body = False
        self.trailers: list[tuple[str, str]] = []

    def on_message_begin(self) -> None:
        self.headers, self.body, self.trailers, self.in_body = [], [], [], False

    def on_header(self, name: bytes, value: bytes) -> None:
        item = (name.decode("latin-1"), value.decode("latin-1"))
        (self.trailers if self.in_body else self.headers).append(item)

    def on_headers_complete(self) -> None:
        self.in_body = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        self.done.append(Reply(status, self.headers, b"".join(self.body), self.trailers))


class HttpClient:
    """A keep-alive HTTP/1.1 client over one connection, for tests (sequential requests)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._parser = _ReplyParser()

    async def connect(self) -> HttpClient:
        self.reader, self.writer = await asyncio.open_connection(*self.address)
        return self

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        timeout: float = 10.0,
    ) -> Reply:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        hdrs = headers if headers is not None else [("host", "test")]
        framed = any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hdrs)
        if body is not None and not framed:
            hdrs = [*hdrs, ("content-length", str(len(body)))]
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs)
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        return await self.read_reply(timeout=timeout, head=method == "HEAD")

    async def read_reply(self, *, timeout: float = 10.0, head: bool = False) -> Reply:
        assert self.reader is not None
        p = self._parser
        async with asyncio.timeout(timeout):
            while not p.done:
                if head and p.in_body:
                    p.on_message_complete()
                    self._parser = _ReplyParser()
                    break
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("connection closed before a full response")
                p.parser.feed_data(data)
        return p.done.pop(0)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
            self.writer = None

    async def __aenter__(self) -> HttpClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
