"""A small HTTP/1.1 server for the control-plane API: an asyncio Protocol around httptools.

One :class:`_Connection` per client: httptools parses requests (keep-alive and pipelining; requests
are answered in order), a handler coroutine answers each with a :class:`Response` (JSON) or a
:class:`Streaming` body (chunked transfer encoding, for NDJSON watches). Limits are explicit: header
bytes, body bytes, pipelined requests, an idle keep-alive timeout, and a bound on how long a stream
may wait for a slow reader (then it is cut, not buffered). The server listens on unix sockets and
TCP, and closes gracefully: stop accepting, end streams, let in-flight requests finish within a
grace period, then abort.

Not for: routing or the API itself (:mod:`weft.control.api`), nor HTTP clients
(:mod:`weft.control.client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import stat
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl, unquote

import httptools

log = logging.getLogger("weft.control.http")

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_PIPELINED = 16
# connections the kernel queues before they are accepted: a reconnect storm (every proxy of a
# node at once after a restart) waits in the queue instead of being refused (asyncio: 100)
BACKLOG = 4096
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class HttpError(Exception):
    """Answer with ``status`` and ``{"error": message, "details": [...]}``."""

    def __init__(self, status: int, message: str, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    keep_alive: bool = True
    # whether the caller may use every endpoint: root or the control plane's own user on the
    # unix socket (SO_PEERCRED), or a TCP client (the listener is loopback of the control
    # plane's namespace); other local users (the proxies' uid) only get what a workload needs
    privileged: bool = True

    def json(self) -> Any:
        """The body as JSON; HttpError 400 when it is not."""
        if not self.body:
            raise HttpError(400, "request body is empty; expected JSON")
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"request body is not valid JSON: {exc}") from None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, data: Any) -> Response:
        return cls(status, json.dumps(data, separators=(",", ":")).encode() + b"\n")


@dataclass(frozen=True, slots=True)
class Streaming:
    """A response body produced over time: ``produce(writer)`` sends chunks until it returns."""

    produce: Callable[[StreamWriter], Awaitable[None]]
    status: int = 200
    content_type: str = "application/x-ndjson"


Handler = Callable[[Request], Awaitable[Response | Streaming]]


class StreamWriter:
    """Sends the chunks of one streaming response, with flow control.

    :meth:`send` waits while the socket's buffer is above the high-water mark, at most
    ``stall_timeout`` seconds; a reader slower than that is cut off (ConnectionError).
    ``closed`` is set when the client goes away or the server shuts down.
    """

    def __init__(self, conn: _Connection, stall_timeout: float) -> None:
        self._conn = conn
        self._stall_timeout = stall_timeout
        self.closed = asyncio.Event()

    async def send(self, data: bytes) -> None:
        if self.closed.is_set():
            raise ConnectionError("stream closed")
        if data:
            self._conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        if not self._conn.writable.is_set():
            try:
                await asyncio.wait_for(self._conn.writable.wait(), self._stall_timeout)
            except TimeoutError:
                self._conn.abort()
                raise ConnectionError("stream reader too slow; cut off") from None
        if self.closed.is_set():
            raise ConnectionError("stream closed")


_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _privileged_peer(sock: Any) -> bool:
    """Root or our own user at the other end of a unix socket; True for TCP clients."""
    if sock is None or sock.family != socket.AF_UNIX:
        return True
    try:
        _, uid, _ = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
    except OSError:
        return False
    return uid in (0, os.geteuid())


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_name = b""
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._pending: deque[Request] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._keep_alive = True
        self._eof = False
        self._tls = False
        self._stream: StreamWriter | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = False
        self._privileged = True
        self._no_upgrade = False

    # -- transport callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        self._privileged = _privileged_peer(transport.get_extra_info("socket"))
        self._tls = transport.get_extra_info("sslcontext") is not None
        self._server._connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self._cancel_idle()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._worker is None and not self._pending:
                self._fail(400, "protocol upgrades are not supported")
            else:
                # the request asked to switch protocols: it is answered as plain HTTP (an error,
                # or what the handler says), and then the connection closes
                self._no_upgrade = True
        except httptools.HttpParserError as exc:
            # errors raised in our callbacks arrive wrapped, with the original as the context
            inner = exc.__context__
            if isinstance(inner, HttpError):
                self._fail(inner.status, inner.message)
            else:
                self._fail(400, f"malformed HTTP request: {exc}")

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._worker is None and not self._pending:
            self.abort()
        # keep the transport open to answer what was already received (TLS cannot half-close:
        # asyncio then ignores the answer, and warns when it is True)
        return None if self._tls else True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_idle()
        self._server._connections.discard(self)
        self.writable.set()
        if self._stream is not None:
            self._stream.closed.set()
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header(len(name) + len(value))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._server.max_body:
            raise HttpError(413, f"request body larger than {self._server.max_body} bytes")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._server.max_body:
            raise HttpError(413, f"request body larger than {self._server.max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        parsed = httptools.parse_url(self._url)
        path = unquote(parsed.path.decode("latin-1"))
        query = dict(parse_qsl(parsed.query.decode("latin-1"))) if parsed.query else {}
        method = self._parser.get_method().decode("latin-1")
        keep = bool(self._parser.should_keep_alive())
        body = b"".join(self._body)
        self._pending.append(
            Request(
                method, path, query, dict(self._headers), body, keep, privileged=self._privileged
            )
        )
        if len(self._pending) > MAX_PIPELINED:
            raise HttpError(429, f"more than {MAX_PIPELINED} pipelined requests")
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            raise HttpError(431, f"request headers larger than {MAX_HEADER_BYTES} bytes")

    # -- answering ---------------------------------------------------------------------------

    async def _work(self) -> None:
        try:
            while self._pending and not self.closed:
                request = self._pending.popleft()
                self._keep_alive = request.keep_alive and not self._no_upgrade
                await self._answer(request)
                if not self._keep_alive or self._server.closing:
                    self.close()
                    return
            if self._eof:
                self.close()  # the client sent all it will: nothing more to answer
        except asyncio.CancelledError:
            self.abort()
            raise
        finally:
            self._worker = None
            self._server._quiet.set()
            if not self.closed:
                self._arm_idle()

    async def _answer(self, request: Request) -> None:
        try:
            result = await self._server.handler(request)
        except HttpError as exc:
            result = error_response(exc.status, exc.message, exc.details)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("error answering %s %s", request.method, request.path)
            result = error_response(500, "internal error; see the control plane's log")
        if isinstance(result, Response):
            self._write_head(result.status, result.content_type, len(result.body))
            self.write(result.body)
            return
        self._write_head(result.status, result.content_type, None)
        writer = StreamWriter(self, self._server.stall_timeout)
        self._stream = writer
        try:
            await result.produce(writer)
        except ConnectionError:
            self.abort()
            return
        finally:
            self._stream = None
        if writer.closed.is_set():
            self.abort()  # the stream was cut mid-way: the reader must see the connection end
            return
        self.write(b"0\r\n\r\n")

    def _write_head(self, status: int, content_type: str, length: int | None) -> None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}"]
        if length is None:
            lines.append("Transfer-Encoding: chunked")
            lines.append("Cache-Control: no-store")
        else:
            lines.append(f"Content-Length: {length}")
        if not self._keep_alive or self._server.closing:
            lines.append("Connection: close")
        self.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self.closed:
            self._transport.write(data)

    def _fail(self, status: int, message: str) -> None:
        self._keep_alive = False
        if self._worker is None:
            resp = error_response(status, message)
            self._write_head(resp.status, resp.content_type, len(resp.body))
            self.write(resp.body)
            self.close()
        else:
            self.abort()

    # -- lifecycle ---------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        self._cancel_idle()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self._server.idle_timeout, self.close)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def end_stream(self) -> None:
        """Cut a streaming response short (shutdown): its producer may be waiting for news."""
        if self._stream is not None:
            self._stream.closed.set()
            if self._worker is not None:
                self._worker.cancel()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def error_response(status: int, message: str, details: list[Any] | None = None) -> Response:
    body: dict[str, Any] = {"error": message}
    if details:
        body["details"] = details
    return Response.json(status, body)


@dataclass
class HttpServer:
    """Serves ``handler`` on unix sockets and TCP addresses."""

    handler: Handler
    max_body: int = MAX_BODY_BYTES
    idle_timeout: float = 75.0
    stall_timeout: float = 30.0
    closing: bool = False
    _servers: list[asyncio.AbstractServer] = field(default_factory=list)
    _connections: set[_Connection] = field(default_factory=set)
    _unix_paths: list[str] = field(default_factory=list)
    _quiet: asyncio.Event = field(default_factory=asyncio.Event)

    def __repr__(self) -> str:
        return f"<HttpServer listeners={len(self._servers)} connections={len(self._connections)}>"

    async def listen_unix(self, path: str, *, mode: int = 0o666) -> None:
        """Listen on a unix socket at ``path``, replacing a stale socket file left by a crash;
        ``mode``: who may connect (by default everyone: pods' proxies run as another uid)."""
        _prepare_socket_path(path)
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: _Connection(self), path, backlog=BACKLOG)
        os.chmod(path, mode)
        self._servers.append(server)
        self._unix_paths.append(path)

    async def listen_tcp(
        self, host: str, port: int, *, tls: ssl.SSLContext | None = None
    ) -> tuple[str, int]:
        """Listen on ``host:port`` (with ``tls``: HTTPS, e.g. the injector's webhook)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=BACKLOG, ssl=tls
        )
        self._servers.append(server)
        sockname = server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, end streams, give requests ``grace`` seconds, then abort the rest."""
        self.closing = True
        for server in self._servers:
            server.close()
        for conn in list(self._connections):
            conn.end_stream()
            if not conn.busy:
                conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(c.busy for c in self._connections) and loop.time() < deadline:
            self._quiet.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), deadline - loop.time())
        for conn in list(self._connections):
            conn.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        for path in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._servers.clear()
        self._unix_paths.clear()


def _prepare_socket_path(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            if _socket_alive(path):
                raise OSError(f"another server is already listening on {path}")
            os.unlink(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def _socket_alive(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect(path)
    except OSError:
        return False
    finally:
        s.close()
    return True
