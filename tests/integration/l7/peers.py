"""The two peers of the L7 suites, each speaking HTTP/1.1 and HTTP/2 (cleartext, prior knowledge).

:class:`DualBackend` is a small asyncio server that speaks both protocols on one port (HTTP/1.1
with httptools; HTTP/2 with ``h2`` when the connection starts with the preface), answers each
request with a :class:`~weft.testing.servers.Response` from a handler, and records the
:class:`~weft.testing.servers.Request` it saw (``version`` ``"1.1"`` or ``"2"``). A handler that
is still working when its client goes away (HTTP/1: the connection closes; HTTP/2: the stream
is reset) is cancelled and counted in ``cancelled``.

:func:`open_client` gives a client of either protocol with one call, ``request(method, path,
headers=..., body=...)``, whose :class:`Reply` has the status, headers, body and trailers, or
the connection error / stream reset (``error``) when there was no complete answer.

Not for: protocol-specific checks (framing, flow control, gRPC); the protocols' own test
modules use ``h2`` and raw sockets directly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import httptools

from weft.addr import Address
from weft.testing.servers import Request, Response

AUTHORITY = "web"  # the Host / :authority a client sends unless told otherwise
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# a handler's answer that closes the connection without a response (the backend broke)
DROP = Response(raw=b"", close=True)

Handler = Callable[[Request], "Response | Awaitable[Response]"]


def _default(req: Request) -> Response:
    return Response(body=f"{req.method} {req.path}".encode())


# -- a backend that speaks both protocols ---------------------------------------------------------


class _H1Parser:
    """httptools request callbacks collecting whole requests."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.done: list[Request] = []
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        url = self.url.decode("latin-1")
        self.done.append(Request(method, url, self.headers, b"".join(self.body), "1.1"))


class DualBackend:
    """An HTTP/1.1 and HTTP/2 (h2c prior knowledge) server on 127.0.0.1; ``name`` tags it."""

    def __init__(self, handler: Handler = _default, name: str = "backend") -> None:
        self.handler = handler
        self.name = name
        self.chunk_delay = 0.0  # seconds after each chunk of a chunked answer
        self.requests: list[Request] = []
        self.connections = 0
        self.cancelled = 0  # requests whose answer was abandoned (stream reset, connection lost)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> Address:
        return ("127.0.0.1", self.port)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def __aenter__(self) -> DualBackend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)

    async def _answer(self, req: Request) -> Response:
        self.requests.append(req)
        result = self.handler(req)
        resp = await result if isinstance(result, Awaitable) else result
        if resp.delay:
            await asyncio.sleep(resp.delay)
        return resp

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            first = b""
            while len(first) < len(PREFACE) and PREFACE.startswith(first):
                data = await reader.read(65536)
                if not data:
                    return
                first += data
            if first.startswith(PREFACE):
                await self._serve_h2(first, reader, writer)
            else:
                await self._serve_h1(first, reader, writer)
        except (ConnectionError, asyncio.CancelledError, h2.exceptions.ProtocolError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort()

    async def _serve_h1(
        self, data: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        p = _H1Parser()
        eof = False
        while data:
            p.parser.feed_data(data)
            data = b""
            while p.done:
                # read on while the handler works: a client that leaves cancels its answer
                req = p.done.pop(0)
                answer = asyncio.ensure_future(self._answer(req))
                while not answer.done() and not eof:
                    peek = asyncio.ensure_future(reader.read(65536))
                    await asyncio.wait({answer, peek}, return_when=asyncio.FIRST_COMPLETED)
                    if not peek.done():
                        peek.cancel()  # (it may have read meanwhile: keep what it read)
                        with contextlib.suppress(asyncio.CancelledError):
                            got = await peek
                            data += got
                            eof = not got
                        break
                    got = peek.result()
                    data += got
                    eof = not got
                if not answer.done():
                    answer.cancel()
                    self.cancelled += 1
                    return
                if not await self._answer_h1(req, answer.result(), writer) or eof:
                    return
            if not data:
                data = await reader.read(65536)

    async def _answer_h1(self, req: Request, resp: Response, writer: asyncio.StreamWriter) -> bool:
        if resp.raw is not None:
            writer.write(resp.raw)
            return not resp.close
        head = [f"HTTP/1.1 {resp.status} X", *(f"{k}: {v}" for k, v in resp.headers)]
        if resp.close:
            head.append("connection: close")
        if resp.chunks is None:
            head.append(f"content-length: {len(resp.body)}")
            body = b"" if req.method == "HEAD" else resp.body
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        else:
            head.append("transfer-encoding: chunked")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
            for chunk in resp.chunks:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            trailer = "".join(f"{k}: {v}\r\n" for k, v in resp.trailers)
            writer.write(b"0\r\n" + trailer.encode() + b"\r\n")
        await writer.drain()
        return not resp.close

    async def _serve_h2(
        self, data: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        conn.initiate_connection()
        pending: dict[int, tuple[list[tuple[bytes, bytes]], list[bytes]]] = {}
        answering: dict[int, asyncio.Task[None]] = {}
        try:
            while data:
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        pending[event.stream_id] = (list(event.headers or ()), [])
                    elif isinstance(event, h2.events.DataReceived):
                        pending[event.stream_id][1].append(event.data or b"")
                        conn.acknowledge_received_data(
                            event.flow_controlled_length or 0, event.stream_id or 0
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        sid = event.stream_id or 0
                        headers, body = pending.pop(sid)
                        answering[sid] = asyncio.ensure_future(
                            self._answer_h2(conn, writer, sid, headers, b"".join(body))
                        )
                    elif isinstance(event, h2.events.StreamReset):
                        task = answering.pop(event.stream_id or 0, None)
                        if task is not None and not task.done():
                            task.cancel()
                            self.cancelled += 1
                writer.write(conn.data_to_send())
                data = await reader.read(65536)
        finally:
            for task in answering.values():
                if not task.done():
                    task.cancel()
                    self.cancelled += 1

    async def _answer_h2(
        self,
        conn: h2.connection.H2Connection,
        writer: asyncio.StreamWriter,
        sid: int,
        raw: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        fields = {k.decode(): v.decode("latin-1") for k, v in raw if k.startswith(b":")}
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw
                   if not k.startswith(b":")]  # fmt: skip
        headers.insert(0, ("host", fields.get(":authority", "")))
        req = Request(fields.get(":method", ""), fields.get(":path", ""), headers, body, "2")
        resp = await self._answer(req)
        if resp.raw is not None:
            writer.transport.abort()  # the whole connection breaks, as an HTTP/1 DROP does
            return
        out = [(b":status", b"%d" % resp.status)]
        out += [(k.lower().encode(), v.encode()) for k, v in resp.headers]
        try:
            if resp.chunks is None:
                out.append((b"content-length", b"%d" % len(resp.body)))
                payload = b"" if req.method == "HEAD" else resp.body
                conn.send_headers(sid, out, end_stream=not payload)
                if payload:
                    conn.send_data(sid, payload, end_stream=True)
                writer.write(conn.data_to_send())
                return
            conn.send_headers(sid, out)
            for chunk in resp.chunks:
                conn.send_data(sid, chunk)
                writer.write(conn.data_to_send())
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            if resp.trailers:
                trailers = [(k.lower().encode(), v.encode()) for k, v in resp.trailers]
                conn.send_headers(sid, trailers, end_stream=True)
            else:
                conn.end_stream(sid)
            writer.write(conn.data_to_send())
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.cancelled += 1  # the proxy reset the stream meanwhile


# -- clients --------------------------------------------------------------------------------------


@dataclass
class Reply:
    """What a client saw: ``error`` says why there is no complete answer (``closed``: the
    connection ended; ``reset:N``: the stream was reset with code N; ``goaway:N``; ``timeout``:
    nothing complete within the request's ``timeout``)."""

    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name.lower():
                return v
        return None


class _H1Reply:
    def __init__(self, head_only: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.reply = Reply()
        self.in_body = False
        self.complete = False
        self.head_only = head_only

    def on_header(self, name: bytes, value: bytes) -> None:
        item = (name.decode("latin-1").lower(), value.decode("latin-1"))
        (self.reply.trailers if self.in_body else self.reply.headers).append(item)

    def on_headers_complete(self) -> None:
        self.in_body = True
        self.reply.status = self.parser.get_status_code()
        if self.head_only:
            self.complete = True

    def on_body(self, body: bytes) -> None:
        self.reply.body += body

    def on_message_complete(self) -> None:
        self.complete = True


class H1Client:
    """Sequential HTTP/1.1 requests on a keep-alive connection (a new one after a close)."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str = "GET", path: str = "/", *,
                      headers: list[tuple[str, str]] | None = None, body: bytes | None = None,
                      timeout: float = 10.0) -> Reply:  # fmt: skip
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(*self.address)
        assert self.reader is not None
        hdrs = list(headers or ())
        if not any(k.lower() == "host" for k, _ in hdrs):
            hdrs.insert(0, ("host", AUTHORITY))
        if body is not None:
            hdrs.append(("content-length", str(len(body))))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs)
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        p = _H1Reply(head_only=method == "HEAD")
        try:
            async with asyncio.timeout(timeout):
                while not p.complete:
                    data = await self.reader.read(65536)
                    if not data:
                        p.reply.error = "closed"
                        break
                    try:
                        p.parser.feed_data(data)
                    except httptools.HttpParserError as exc:
                        p.reply.error = f"invalid: {exc}"
                        break
        except TimeoutError:
            p.reply.error = f"timeout: no complete answer within {timeout} s"
        if p.reply.error or (p.reply.header("connection") or "").lower() == "close":
            await self.aclose()
        return p.reply

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
            self.writer = None


@dataclass
class _H2Stream:
    reply: Reply = field(default_factory=Reply)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class H2Client:
    """HTTP/2 with prior knowledge over cleartext, one connection (a new one after it ends);
    requests may run concurrently."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.conn: h2.connection.H2Connection | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reading: asyncio.Task[None] | None = None
        self.streams: dict[int, _H2Stream] = {}
        self.window = asyncio.Event()

    async def _connect(self) -> h2.connection.H2Connection:
        reader, self.writer = await asyncio.open_connection(*self.address)
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.initiate_connection()
        self.writer.write(conn.data_to_send())
        self.conn = conn
        self.reading = asyncio.ensure_future(self._read(conn, reader, self.writer))
        return conn

    async def _read(self, conn: h2.connection.H2Connection, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:  # fmt: skip
        why = "closed"
        try:
            while data := await reader.read(65536):
                for e in conn.receive_data(data):
                    self._event(conn, e)
                    if isinstance(e, h2.events.ConnectionTerminated):
                        why = f"goaway:{e.error_code}"
                writer.write(conn.data_to_send())
        except (ConnectionError, h2.exceptions.ProtocolError) as exc:
            why = f"closed: {exc}"
        finally:
            if self.conn is conn:
                self.conn = None
            for stream in self.streams.values():
                if not stream.done.is_set():
                    stream.reply.error = stream.reply.error or why
                    stream.done.set()
            self.window.set()

    def _event(self, conn: h2.connection.H2Connection, e: h2.events.Event) -> None:
        if isinstance(e, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.window.set()
            return
        stream = self.streams.get(getattr(e, "stream_id", 0) or 0)
        if stream is None:
            return
        reply = stream.reply
        if isinstance(e, h2.events.ResponseReceived):
            for k, v in e.headers or ():
                if k == b":status":
                    reply.status = int(v)
                elif not k.startswith(b":"):
                    reply.headers.append((k.decode("latin-1"), v.decode("latin-1")))
        elif isinstance(e, h2.events.DataReceived):
            reply.body += e.data or b""
            conn.acknowledge_received_data(e.flow_controlled_length or 0, e.stream_id or 0)
        elif isinstance(e, h2.events.TrailersReceived):
            reply.trailers = [(k.decode("latin-1"), v.decode("latin-1"))
                              for k, v in e.headers or ()]  # fmt: skip
        elif isinstance(e, h2.events.StreamEnded):
            stream.done.set()
        elif isinstance(e, h2.events.StreamReset):
            reply.error = f"reset:{int(e.error_code or 0)}"
            stream.done.set()

    async def request(self, method: str = "GET", path: str = "/", *,
                      headers: list[tuple[str, str]] | None = None, body: bytes | None = None,
                      timeout: float = 10.0) -> Reply:  # fmt: skip
        conn = self.conn or await self._connect()
        assert self.writer is not None
        authority = AUTHORITY
        rest: list[tuple[str, str]] = []
        for k, v in headers or ():
            if k.lower() == "host":
                authority = v
            else:
                rest.append((k.lower(), v))
        if body is not None:
            rest.append(("content-length", str(len(body))))
        head = [(":method", method), (":scheme", "http"), (":authority", authority),
                (":path", path), *rest]  # fmt: skip
        sid = conn.get_next_available_stream_id()
        stream = self.streams[sid] = _H2Stream()
        try:
            async with asyncio.timeout(timeout):
                conn.send_headers(sid, head, end_stream=not body)
                self.writer.write(conn.data_to_send())
                await self._send_body(conn, sid, body or b"", stream)
                await stream.done.wait()
        except TimeoutError:
            stream.reply.error = f"timeout: no complete answer within {timeout} s"
        del self.streams[sid]
        return stream.reply

    async def _send_body(self, conn: h2.connection.H2Connection, sid: int, body: bytes,
                         stream: _H2Stream) -> None:  # fmt: skip
        assert self.writer is not None
        while body and not stream.done.is_set() and self.conn is conn:
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if room <= 0:
                self.window.clear()
                await self.window.wait()
                continue
            piece, body = body[:room], body[room:]
            conn.send_data(sid, piece, end_stream=not body)
            self.writer.write(conn.data_to_send())

    async def aclose(self) -> None:
        if self.reading is not None:
            self.reading.cancel()
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.conn = self.writer = self.reading = None


Client = H1Client | H2Client


@contextlib.asynccontextmanager
async def open_client(protocol: str, address: Address) -> AsyncIterator[Client]:
    client: Client = H1Client(address) if protocol == "http1" else H2Client(address)
    try:
        yield client
    finally:
        await client.aclose()
