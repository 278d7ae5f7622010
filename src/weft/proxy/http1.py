"""HTTP/1.1 proxying, per request: the client-facing server side and the upstream client side.

:class:`Http1Downstream` is the ``asyncio.Protocol`` of an accepted client connection, parsed with
httptools (llhttp). Each request becomes an :class:`Exchange`, which picks an endpoint of its
:class:`~weft.proxy.endpoints.Concrete` through the balancer, takes a pooled
:class:`Http1Upstream` connection (or dials one), and streams the request and response through
with backpressure: a full write buffer on one side pauses reading on the other, and request bytes
waiting for a connection are bounded (reading pauses above ``buffer_high``).

The fast path is callbacks only (no task or future per request): parser callbacks drive the
exchange, and only dialing awaits. Pipelined requests are parsed ahead, queued, and answered in
order. Message framing is re-derived on each side (RFC 9112): hop-by-hop headers are dropped,
Content-Length is kept, chunked bodies are re-chunked (trailers forwarded), close-delimited
responses go chunked to HTTP/1.1 clients. ``Upgrade`` requests become a TCP tunnel after a 101.

Errors the proxy makes itself carry a ``weft-proxy-error`` header: 503 no endpoint, 502 connect
failure or broken upstream, 504 upstream timeout, 400 malformed or smuggling-prone request (and
close), 501 CONNECT or a transfer coding other than chunked (and close), 431 oversized headers
(and close), 408 a request head not received in time.

Not for: choosing the destination (the caller hands a Concrete), TLS, HTTP/2.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools

from weft.addr import format_addr
from weft.metrics.proxy import LabelItems, ProxyMetrics, TcpSeries
from weft.policy import HeaderModifier
from weft.proxy.endpoints import Concrete, EndpointState, PooledConn
from weft.proxy.outbound.logical import ERROR_HEADER, REPLAY_LIMIT, Call, Headers, L7Context

if TYPE_CHECKING:
    from weft.proxy.config import ProxyConfig
    from weft.proxy.inbound_policy import HttpConn

# weft.core.routes is imported where a policy is applied, not here (see endpoints.py).

log = logging.getLogger("weft.proxy")
access_log = logging.getLogger("weft.access")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_STANDARD_CONNECTION_TOKENS = frozenset({b"keep-alive", b"close", b"upgrade", b""})
# request headers the proxy looks at (the hop-by-hop ones are also not forwarded)
_REQUEST_SPECIAL = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
DISCARD_LIMIT = 1024 * 1024  # request body read and dropped after an early answer, at most
_monotonic = time.monotonic

_REASONS = {
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


class Http1Context(L7Context):
    """What every HTTP/1 connection of one listener shares: config, metrics, live connections."""

    def __init__(self, config: ProxyConfig, metrics: ProxyMetrics, direction: str) -> None:
        super().__init__(config, metrics, direction)
        self.connections: set[Http1Downstream] = set()
        self.max_header_bytes = config.max_header_bytes
        self.buffer_high = config.buffer_high

    def reap(self, now: float) -> None:
        """Enforce header and idle timeouts; called about once a second by the server."""
        header_deadline = now - self.config.header_timeout
        idle_deadline = now - self.config.idle_timeout
        for conn in list(self.connections):
            conn.check_timeouts(now, header_deadline, idle_deadline)

    def drain(self) -> None:
        """Graceful shutdown: close idle connections now, the others after their response."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()


def error_response(
    status: int,
    reason: str,
    *,
    close: bool,
    detail: str = "",
    head: bool = False,
    extra: bytes = b"",
) -> bytes:
    """A complete response the proxy sends on its own behalf (no body for a HEAD request);
    ``extra``: more header lines, each ending in CRLF (``retry-after``...)."""
    body = f"weft proxy: {detail or reason}\n".encode()
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(body),
        ERROR_HEADER + b": " + reason.encode() + b"\r\n",
        extra,
    ]
    if close:
        lines.append(b"connection: close\r\n")
    return b"".join(lines) + b"\r\n" + (b"" if head else body)


_REDIRECT_REASONS = {301: b"Moved Permanently", 302: b"Found", 303: b"See Other",
                     307: b"Temporary Redirect", 308: b"Permanent Redirect"}  # fmt: skip
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"upgrade"})


def _modify_lines(mod: HeaderModifier, lines: list[bytes]) -> list[bytes]:
    from weft.core.routes import apply_header_modifier

    pairs = [tuple(ln[:-2].split(b": ", 1)) for ln in lines]
    modified = apply_header_modifier(mod, pairs)  # type: ignore[arg-type]
    return [b"%s: %s\r\n" % kv for kv in modified]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _trailer_block(trailers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(b"%s: %s\r\n" % kv for kv in trailers)


class Exchange(Call):
    """One request and its response over HTTP/1.1, from head parsed to response complete (the
    policy, retries, timeouts and accounting are :class:`~weft.proxy.outbound.logical.Call`'s)."""

    __slots__ = (
        "body_sent", "chunked_in", "chunked_out", "close_after", "closing_up", "down",
        "expect_continue", "head", "interim", "is_head", "req_buf", "req_buf_size", "req_length",
        "trailers", "tunnel_buf", "up", "upgrade", "url",
    )  # fmt: skip

    def __init__(
        self,
        down: Http1Downstream,
        method: bytes,
        url: bytes,
        head: bytes,
        authority: bytes,
        headers: Headers,
        *,
        chunked: bool,
        expect_continue: bool,
        upgrade: bool,
        close_after: bool,
    ) -> None:
        super().__init__(down.ctx, down.concrete, down.tls_labels, headers)
        self.down = down
        self.method = method
        self.authority = authority
        self.req_length: int | None = 0  # declared body length; None: chunked
        self.close_after = close_after
        self.url = url
        self.head = head
        self.chunked_in = chunked
        self.expect_continue = expect_continue
        self.upgrade = upgrade
        self.is_head = method == b"HEAD"
        self.req_buf: list[bytes] = []
        self.req_buf_size = 0
        self.trailers: Headers = []
        self.body_sent = 0
        self.tunnel_buf = b""
        self.up: Http1Upstream | None = None
        self.chunked_out = False
        self.interim = False
        self.closing_up = False

    # -- request side ---------------------------------------------------------------------------

    def on_request_body(self, data: bytes) -> None:
        if self.finished:
            # answered already (an early response or a proxy error): read and drop the rest of
            # the body so the client can finish sending and read the answer, within a bound
            self.body_sent += len(data)
            if self.body_sent > DISCARD_LIMIT:
                self.down.close()
            return
        if self.idle is not None:
            self.last_io = _monotonic()
        up = self.up
        if up is not None and not self.req_buf:
            self._send_body(up, data)
            return
        self.req_buf.append(data)
        self.req_buf_size += len(data)
        if self.req_buf_size > self.down.ctx.buffer_high:
            self.down.pause("request-buffer")

    def on_request_end(self, trailers: Headers) -> None:
        self.req_end = True
        self.trailers = trailers
        up = self.up
        if up is not None and not self.req_buf:
            self._send_end(up)
        if self.finished:
            self.down.exchange_finished(self)

    def _send_body(self, up: Http1Upstream, data: bytes) -> None:
        if self.replay is not None:
            if self.body_sent + len(data) <= REPLAY_LIMIT:
                self.replay.append(data)
            else:
                self.replay = None
        self.body_sent += len(data)
        up.transport.write(_chunk(data) if self.chunked_in and data else data)

    def _send_end(self, up: Http1Upstream) -> None:
        if self.chunked_in:
            up.transport.write(b"0\r\n" + _trailer_block(self.trailers) + b"\r\n")

    def start(self) -> None:
        """The request is first in its connection's queue: authorize, decide, dispatch."""
        self.started = _monotonic()
        authz = self.down.authz
        if authz is not None:
            path, _, query = self.url.partition(b"?")
            denial = authz.check(self.method, path, query, self.header)
            if denial is not None:
                self.fail(denial.status, denial.reason, denial.detail, denial.headers())
                return
        if self.decide(self.url, routable=not self.upgrade):
            self.dispatch()

    def _modify_request(self, mod: HeaderModifier) -> None:
        from weft.core.routes import apply_header_modifier

        lines = self.head.split(b"\r\n")
        request_line, fields = lines[0], [ln for ln in lines[1:] if ln]
        pairs = [tuple(ln.split(b": ", 1)) for ln in fields]
        framing = [(n, v) for n, v in pairs if n.lower() in _FRAMING]
        others = [(n, v) for n, v in pairs if n.lower() not in _FRAMING]
        modified = apply_header_modifier(mod, others)
        out = [request_line, *(b"%s: %s" % kv for kv in (*modified, *framing))]
        self.head = b"\r\n".join(out) + b"\r\n\r\n"
        self.headers = [(n.lower(), v) for n, v in modified]

    def _body_pending(self) -> bool:
        """Request body bytes are still to come (a request with no body is never pending,
        even before the parser reports its end)."""
        return not self.req_end and self.req_length != 0

    # -- the endpoint layer: keep-alive connections ---------------------------------------------

    def _open(self, state: EndpointState) -> None:
        conn = state.take_idle()
        if conn is not None:
            assert isinstance(conn, Http1Upstream)
            self.attach(conn, reused=True)
            return
        spare = state.spare
        if spare is not None:
            state.spare = None
            spare.add_done_callback(self._spare_ready)
            return
        self._dial(state)

    def _dial(self, state: EndpointState) -> None:
        concrete = self.concrete
        limit = self.down.ctx.max_header_bytes
        task = concrete.connect(state, lambda: Http1Upstream(concrete, state, limit))
        task.add_done_callback(self._connected)

    def _spare_ready(self, fut: asyncio.Future[PooledConn | None]) -> None:
        state = self.state
        up = None if fut.cancelled() or fut.exception() is not None else fut.result()
        if self.finished or state is None:
            if up is not None and state is not None:
                self.concrete.release(state, up)
            elif up is not None:
                up.close()
            return
        if isinstance(up, Http1Upstream) and up.reusable():
            self.attach(up, reused=False)
        else:
            self._dial(state)

    def _connected(self, task: asyncio.Task[tuple[asyncio.Transport, asyncio.Protocol]]) -> None:
        if task.cancelled() or task.exception() is not None:
            if not self.finished and self.state is not None:
                self.connect_failed(None if task.cancelled() else task.exception())
            return
        _, proto = task.result()
        assert isinstance(proto, Http1Upstream)
        if self.finished or self.state is None or self.state is not proto.state:
            proto.close()
            return
        self.attach(proto, reused=False)

    def attach(self, up: Http1Upstream, *, reused: bool) -> None:
        state = self.state
        assert state is not None
        if not reused:
            self.sent_at = _monotonic()  # dialing time is not the endpoint's latency
        self.count(state)
        self.up = up
        up.exchange = self
        up.reused = reused
        up.transport.write(self.head)
        if self.req_buf:
            buf, self.req_buf = self.req_buf, []
            self.req_buf_size = 0
            for data in buf:
                self._send_body(up, data)
            self.down.resume("request-buffer")
        if self.req_end:
            self._send_end(up)
        if self.upgrade and self.tunnel_buf:
            up.transport.write(self.tunnel_buf)
            self.tunnel_buf = b""

    def _drop_attempt(self) -> None:
        up = self.up
        if up is not None:
            up.exchange = None
            up.close()
            self.up = None

    def _rewind(self) -> None:
        self.interim = False
        self.closing_up = False
        assert self.replay is not None
        self.req_buf = self.replay + self.req_buf
        self.req_buf_size = sum(len(b) for b in self.req_buf)
        self.replay, self.body_sent = [], 0

    # -- response side --------------------------------------------------------------------------

    def on_response_head(
        self,
        status: int,
        reason: bytes,
        lines: list[bytes],
        hop: Headers,
        has_length: bool,
        keep_alive: bool,
    ) -> None:
        """Relay a response head: ``lines`` are the end-to-end header lines, ready to send;
        ``hop`` the hop-by-hop headers (lowercased names), which are not forwarded."""
        down = self.down
        if 100 <= status < 200 and status != 101:
            self.interim = True
            if (status != 100 or self.expect_continue) and down.version == b"1.1":
                down.write(b"HTTP/1.1 %d %s\r\n\r\n" % (status, reason))
            return
        if status == 101 and not self.upgrade:
            self.on_upstream_error("101 Switching Protocols to a request that asked for none")
            return
        self.interim = False
        if self.response_head(status, status < 500):
            return  # retried on its status
        self.commit(False)
        if self.resp_mod is not None:
            lines = _modify_lines(self.resp_mod, lines)
        if not keep_alive:
            self.closing_up = True
        out = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        if hop:
            listed: set[bytes] = set()
            for lname, value in hop:
                if lname == b"connection":
                    listed.update(t.strip().lower() for t in value.split(b","))
            listed -= _STANDARD_CONNECTION_TOKENS
            if listed:  # headers the Connection header names are hop-by-hop too
                lines = [ln for ln in lines if ln.split(b":", 1)[0].lower() not in listed]
        out += lines
        append = out.append
        if status == 101 and self.upgrade:
            for lname, value in hop:
                if lname == b"upgrade":
                    append(b"upgrade: %s\r\n" % value)
            append(b"connection: upgrade\r\n\r\n")
            down.write(b"".join(out))
            return
        no_body = self.is_head or status in (204, 304)
        if not has_length and not no_body:
            if down.version == b"1.1":
                self.chunked_out = True
                append(b"transfer-encoding: chunked\r\n")
            else:
                self.close_after = True
        if self.upgrade or not self.req_end:
            # a refused upgrade, or a response before the request body: this client connection
            # cannot be trusted to be in sync, and neither can the upstream one
            self.close_after = True
            self.closing_up = True
        if self.close_after or down.closing_now():
            append(b"connection: close\r\n\r\n")
        elif down.version == b"1.0":
            append(b"connection: keep-alive\r\n\r\n")
        else:
            append(b"\r\n")
        down.write(b"".join(out))
        if self.is_head:
            self.closing_up = True  # the response parser cannot skip a HEAD body; don't reuse
            self.on_response_end([])

    def on_response_body(self, data: bytes) -> None:
        if self.finished:
            return
        if self.idle is not None:
            self.last_io = _monotonic()
        self.down.write(_chunk(data) if self.chunked_out else data)

    def on_response_end(self, trailers: Headers) -> None:
        if self.interim:
            self.interim = False
            return
        if self.finished or (self.status == 101 and self.upgrade):
            return  # a 101 ends in on_upgraded
        if self.chunked_out:
            self.down.write(b"0\r\n" + _trailer_block(trailers) + b"\r\n")
        self._complete()

    def on_upgraded(self, upstream_rest: bytes) -> None:
        """The upstream said 101: both connections become one TCP tunnel."""
        from weft.proxy.tcp import Relay

        up, state = self.up, self.state
        assert up is not None and state is not None
        self.down.uncork()  # the 101 goes out before any tunnelled byte
        self._account()
        up.exchange = None
        self.up = None
        down = self.down
        down.ctx.connections.discard(down)
        series = self.concrete.tcp_series(state)
        on_close = down.on_close

        def closed(_: Relay) -> None:  # the client connection's own accounting ends with it
            if on_close is not None:
                on_close(down)

        Relay(
            down.transport,
            up.transport,
            series,
            src=down.tcp,
            client_rest=down.take_tunnel_bytes(self),
            server_rest=upstream_rest,
            on_close=closed,
        )

    def on_upstream_lost(self, exc: BaseException | None) -> None:
        """The upstream connection closed before the response completed."""
        if self.finished:
            return
        up = self.up
        if up is not None and up.close_delimited and self.resp_started:
            self.on_response_end([])
            return
        if self.resp_started:
            self._abort("upstream closed mid-response")
            return
        if up is not None and up.reused and self.replay is not None and not up.got_bytes:
            # a pooled connection the server had closed: nothing was processed; send it again
            # (a keep-alive race, neither a failure nor a latency of the endpoint's)
            up.exchange = None
            self.up = None
            self._timed(True, observe=False)
            if self.state is not None:
                self.concrete.cancel(self.state.addr)
                # the server may also have dropped it on purpose: another endpoint, if any
                self.avoid = self.state.addr
            self.state = None
            self._rewind()
            self.dispatch()
            return
        if self.retryable():
            self._retry_later()
            return
        self.fail(502, "upstream-closed", f"upstream closed the connection: {exc or 'EOF'}")

    def on_upstream_error(self, message: str, up: Http1Upstream | None = None) -> None:
        if self.finished or (up is not None and up is not self.up):
            return  # an abandoned attempt's connection (a retry is under way)
        if self.up is not None:
            self.up.close()
        if not self.resp_started:
            self.fail(502, "upstream-protocol-error", f"invalid response from upstream: {message}")
        else:
            self._abort(f"invalid response from upstream: {message}")

    def _deadline_passed(self) -> None:
        self._abort("response timeout")

    def idle_timeout(self) -> None:
        """The route's idle timeout passed: a 504 before the response, else an abort."""
        if self.resp_started:
            self._abort("idle timeout")
        else:
            self.fail(504, "idle-timeout", "no bytes either way within the idle timeout")

    def on_client_gone(self) -> None:
        """The client connection closed with this exchange unfinished."""
        if self.finished:
            return
        self.failed = True
        self._timed(True)  # the client left: no failure of the endpoint's
        self._drop_attempt()
        self._account()

    # -- the proxy's own answers and endings ----------------------------------------------------

    def _send_error(self, status: int, reason: str, detail: str, extra: Headers) -> None:
        down = self.down
        if self._body_pending():
            self.close_after = True
        close = self.close_after or down.closing_now()
        lines = b"".join(b"%s: %s\r\n" % kv for kv in extra)
        down.write(
            error_response(
                status, reason, close=close, detail=detail, head=self.is_head, extra=lines
            )
        )
        self._complete()

    def _send_redirect(self, status: int, location: bytes) -> None:
        close = self.close_after or self.down.closing_now() or self._body_pending()
        self.down.write(
            b"HTTP/1.1 %d %s\r\nlocation: %s\r\ncontent-length: 0\r\n%s\r\n"
            % (
                status,
                _REDIRECT_REASONS.get(status, b"Redirect"),
                location,
                b"connection: close\r\n" if close else b"",
            )
        )
        if close:
            self.close_after = True
        self._complete()

    def _abort(self, why: str) -> None:
        log.info("aborting %s %s: %s", self.method.decode(), self.url.decode("latin-1"), why)
        self.status = self.status or 502
        self.failed = True
        self.closing_up = True
        down = self.down
        down.closing = True
        self._complete()
        down.transport.abort()

    def _complete(self) -> None:
        self._account()
        down = self.down
        state, up = self.state, self.up
        if up is not None:
            up.exchange = None
            self.up = None
            if self.closing_up or not self.req_end or state is None:
                up.close()
            else:
                self.concrete.release(state, up)
            up.resume_from(down)
        if self._body_pending():
            self.req_buf = []
            self.req_buf_size = 0
            down.shutdown_write()
            down.resume("request-buffer")
        if down.ctx.access_log:
            self._log_access()
        if self.req_end:
            down.exchange_finished(self)

    def _log_access(self) -> None:
        down = self.down
        access_log.info(
            json.dumps(
                {
                    "ts": time.time(),
                    "direction": down.ctx.direction,
                    "client": down.peer,
                    "method": self.method.decode("latin-1"),
                    "authority": self.authority.decode("latin-1"),
                    "path": self.url.decode("latin-1"),
                    "status": self.status,
                    "upstream": None if self.state is None else format_addr(self.state.addr),
                    "duration_ms": round((_monotonic() - self.started) * 1000.0, 3),
                    "request_bytes": self.body_sent,
                }
            )
        )


class Http1Downstream(asyncio.Protocol):
    """The server side of one client connection."""

    def __init__(
        self, ctx: Http1Context, concrete: Concrete, transport: asyncio.Transport, peer: str
    ) -> None:
        self.ctx = ctx
        self.concrete = concrete
        self.transport = transport
        self.peer = peer
        self.parser = httptools.HttpRequestParser(self)
        self.version = b"1.1"
        self.queue: deque[Exchange] = deque()
        self.parsing: Exchange | None = None
        self.closing = False
        self.upgraded = False
        self._paused: set[str] = set()
        self._write_paused = False
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._lines: list[bytes] = []
        self._special: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._head_read_bytes = 0
        self._in_head = False
        self._head_started = 0.0
        self._last_active = _monotonic()
        self.tcp: TcpSeries | None = None  # this connection's (peer=src) byte counters
        self.tls_labels: LabelItems = ()  # inbound: the client's TLS labels (client_id...)
        self.authz: HttpConn | None = None  # inbound: the port's policy for this client
        self._corked: list[bytes] | None = None
        self.on_close: Callable[[Http1Downstream], None] | None = None
        self._broken: tuple[int, str, str] | None = None
        self._begun = 0
        ctx.connections.add(self)

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        tcp = self.tcp
        if tcp is not None:
            tcp.write_bytes += len(data)
        if self._corked is not None:
            self._corked.append(data)
        else:
            self.transport.write(data)

    def close(self) -> None:
        """Close after what is written (corked writes included) has been sent."""
        self.uncork()
        self.transport.close()

    def cork(self) -> None:
        """Collect writes until :meth:`uncork`: one send for a response's head and body."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        out = self._corked
        self._corked = None
        if out and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def data_received(self, data: bytes) -> None:
        tcp = self.tcp
        if tcp is not None:
            tcp.read_bytes += len(data)
        if self.upgraded:
            exchange = self.queue[0] if self.queue else None
            if exchange is not None and exchange.up is not None:
                exchange.up.transport.write(data)
            elif exchange is not None:
                exchange.tunnel_buf += data
            return
        if self._broken is not None or (self.closing and not self.queue):
            return
        self._last_active = _monotonic()
        spanning = self._in_head
        self._begun = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._on_upgrade_bytes(data[int(exc.args[0]) :] if exc.args else b"")
        except httptools.HttpParserCallbackError as exc:
            inner = exc.__cause__ or exc.__context__
            if isinstance(inner, _Reject):
                self._reject(inner.status, inner.reason, inner.detail)
            else:
                log.error("internal error while parsing a request: %r", inner)
                self._reject(500, "internal-error", "internal proxy error")
        except httptools.HttpParserError as exc:
            self._reject(400, "malformed-request", f"malformed request: {exc}")
        else:
            # A head still incomplete after a read that began inside it: the whole read was head
            # bytes. This bounds a header that never ends (httptools would buffer it whole);
            # complete heads are measured exactly in on_header/on_headers_complete.
            if self._in_head and spanning and not self._begun:
                self._head_read_bytes += len(data)
                if self._head_read_bytes > self.ctx.max_header_bytes:
                    self._reject(431, "headers-too-large", "request headers too large")

    def eof_received(self) -> bool:
        # Half-close from the client: answer the complete requests, then close. A request that
        # is still incomplete can never complete: close now.
        self.closing = True
        if self.upgraded:
            exchange = self.queue[0] if self.queue else None
            if exchange is not None and exchange.up is not None:
                exchange.up.transport.write_eof()
                return True
            return False
        incomplete = self.parsing
        if incomplete is not None and self.queue and incomplete is not self.queue[0]:
            # complete requests before it are still answered; the incomplete one is dropped
            self.queue.remove(incomplete)
            incomplete.finished = True
            self.parsing = None
        elif incomplete is not None:
            return False
        self._in_head = False
        return bool(self.queue)

    def closing_now(self) -> bool:
        """Whether the response being written is this connection's last."""
        if self._broken is not None:
            return False  # the rejection that follows is the last response
        if self.closing or self.ctx.draining:
            return len(self.queue) <= 1 and self.parsing is None
        return False

    def shutdown_write(self) -> None:
        """Lingering close: our side is done (corked writes flushed); keep reading to the end."""
        self.uncork()
        if not self.transport.is_closing() and self.transport.can_write_eof():
            self.transport.write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.connections.discard(self)
        if self.on_close is not None:
            self.on_close(self)
        for exchange in self.queue:
            exchange.on_client_gone()
        self.queue.clear()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.queue and self.queue[0].up is not None:
            self.queue[0].up.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.queue and self.queue[0].up is not None:
            self.queue[0].up.transport.resume_reading()

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = []
        self._headers = []
        self._lines = []
        self._special = []
        self._in_head = True
        self._begun += 1
        self._head_bytes = 0
        self._head_read_bytes = 0
        self._head_started = _monotonic()
        self.parsing = None

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.ctx.max_header_bytes:
            raise _Reject(431, "headers-too-large", "request headers (or trailers) too large")
        if not self._in_head:  # a trailer
            self._headers.append((name, value))
            return
        # one pass per header: lowercased for lookups (routing), end-to-end lines pre-formatted
        lname = name.lower()
        self._headers.append((lname, value))
        if lname in _REQUEST_SPECIAL:
            self._special.append((lname, value))
            if lname in HOP_BY_HOP:
                return
        self._lines.append(name + b": " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_bytes > self.ctx.max_header_bytes:
            raise _Reject(431, "headers-too-large", "request headers too large")
        parser = self.parser
        version = parser.get_http_version()
        self.version = b"1.0" if version == "1.0" else b"1.1"
        method: bytes = parser.get_method()
        url = b"".join(self._url) if len(self._url) != 1 else self._url[0]
        headers = self._headers
        self._headers = []
        authority = b""
        lengths: list[bytes] = []
        te: bytes | None = None
        connection_tokens: list[bytes] = []
        expect_continue = False
        upgrade_value: bytes | None = None
        hosts = 0
        for lname, value in self._special:
            if lname == b"host":
                hosts += 1
                authority = value
            elif lname == b"content-length":
                lengths.append(value)
            elif lname == b"transfer-encoding":
                te = value if te is None else te + b", " + value
            elif lname == b"connection":
                connection_tokens.extend(t.strip().lower() for t in value.split(b","))
            elif lname == b"upgrade":
                upgrade_value = value
            elif lname == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
        lines = self._lines
        if connection_tokens:
            listed = set(connection_tokens) - _STANDARD_CONNECTION_TOKENS
            if listed:  # headers the Connection header names are hop-by-hop too
                lines = [ln for ln in lines if ln.split(b":", 1)[0].lower() not in listed]
        out = [b"%s %s HTTP/1.1\r\n" % (method, url), *lines]
        append = out.append
        if method == b"CONNECT":
            raise _Reject(501, "connect-not-supported", "CONNECT is not supported")
        if hosts > 1 or (hosts == 0 and self.version == b"1.1"):
            raise _Reject(400, "bad-host", "exactly one Host header is required")
        if te is not None and lengths:
            raise _Reject(400, "smuggling", "both Transfer-Encoding and Content-Length")
        if len(set(lengths)) > 1 or any(not v.strip().isdigit() for v in lengths):
            raise _Reject(400, "bad-content-length", "conflicting or invalid Content-Length")
        chunked = False
        if te is not None:
            if te != b"chunked" or self.version != b"1.1":  # the common case costs one compare
                problem = transfer_coding_error(te, http11=self.version == b"1.1")
                if problem is not None:
                    raise _Reject(*problem)
            chunked = True
            append(b"transfer-encoding: chunked\r\n")
        upgrade = upgrade_value is not None and b"upgrade" in connection_tokens
        if upgrade:
            append(b"connection: upgrade\r\nupgrade: %s\r\n" % upgrade_value)
        if not authority:
            authority = self.concrete.name.encode()
        if self.version == b"1.0":
            close_after = b"keep-alive" not in connection_tokens
        else:
            close_after = b"close" in connection_tokens
        append(b"\r\n")
        exchange = Exchange(
            self,
            method,
            url,
            b"".join(out),
            authority,
            headers,
            chunked=chunked,
            expect_continue=expect_continue,
            upgrade=upgrade,
            close_after=close_after,
        )
        exchange.req_length = int(lengths[0]) if lengths else (None if chunked else 0)
        self.parsing = exchange
        self.queue.append(exchange)
        if len(self.queue) == 1:
            exchange.start()
        elif len(self.queue) > 16:
            self.pause("pipeline")

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.on_request_body(body)

    def on_message_complete(self) -> None:
        exchange = self.parsing
        if exchange is None:
            return
        self.parsing = None
        # headers seen after the head are trailers (chunked requests only)
        trailers, self._headers = self._headers, []
        exchange.on_request_end(trailers)

    # -- exchange lifecycle ---------------------------------------------------------------------

    def exchange_finished(self, exchange: Exchange) -> None:
        if not self.queue or self.queue[0] is not exchange:
            return
        self.queue.popleft()
        self._last_active = _monotonic()
        if exchange.close_after:
            self.close()
            return
        if self._broken is not None and not self.queue:
            self._send_rejection(*self._broken)
            return
        if self.queue:
            if len(self.queue) <= 16:
                self.resume("pipeline")
            self.queue[0].start()
        elif self.closing or self.ctx.draining:
            self.close()

    def take_tunnel_bytes(self, exchange: Exchange) -> bytes:
        rest, exchange.tunnel_buf = exchange.tunnel_buf, b""
        self.queue.clear()
        return rest

    def _on_upgrade_bytes(self, rest: bytes) -> None:
        exchange = self.queue[-1] if self.queue else None
        if exchange is None or not exchange.upgrade:
            self._reject(400, "malformed-request", "unexpected protocol upgrade")
            return
        self.upgraded = True
        if exchange.up is not None:
            if rest:
                exchange.up.transport.write(rest)
        else:
            exchange.tunnel_buf += rest

    def _reject(self, status: int, reason: str, detail: str) -> None:
        """Answer a bad request, then close. Earlier pipelined requests are answered first; the
        bad one (and nothing after it) is never forwarded."""
        self._broken = (status, reason, detail)
        self.closing = True
        self.pause("broken")
        bad = self.parsing
        self.parsing = None
        if bad is not None and bad in self.queue:
            if bad is self.queue[0]:
                # its head was forwarded and its body is broken: it cannot complete
                if bad.resp_started:
                    bad._abort(detail)
                    return
                bad.close_after = True
                bad.fail(status, reason, detail)
                self.close()
                return
            self.queue.remove(bad)
            bad.finished = True
        if not self.queue:
            self._send_rejection(status, reason, detail)

    def _send_rejection(self, status: int, reason: str, detail: str) -> None:
        log.info("rejecting request from %s: %d %s", self.peer, status, detail)
        series = self.concrete.unrouted_series(b"", self.tls_labels)
        series.requests += 1
        series.response(status, False).observe(0.0)
        self.write(error_response(status, reason, close=True, detail=detail))
        self.close()

    def pause(self, reason: str) -> None:
        if not self._paused:
            self.transport.pause_reading()
        self._paused.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and not self.transport.is_closing():
                self.transport.resume_reading()

    def check_timeouts(self, now: float, header_deadline: float, idle_deadline: float) -> None:
        first = self.queue[0] if self.queue else None
        if first is not None and first.idle_expired(now):  # a route's (1 s granularity)
            first.idle_timeout()
            return
        if self._in_head and self._head_started < header_deadline:
            self._reject(408, "header-timeout", "request head not received in time")
        elif not self.queue:
            if not self._in_head and self._last_active < idle_deadline:
                self.close()
        elif first is not None and not first.req_end:
            if first.finished:
                # answered early, lingering for the rest of the body: not for long
                if self._last_active < header_deadline:
                    self.close()
            elif self._last_active < idle_deadline and self.parsing is first:
                # a request body that stopped arriving
                if first.resp_started:
                    first._abort("request body stalled")
                else:
                    first.close_after = True
                    first.fail(408, "body-timeout", "request body not received in time")
                    self.close()

    def drain(self) -> None:
        if not self.queue and not self._in_head:
            self.close()
        else:
            self.closing = True

    def __repr__(self) -> str:
        return (
            f"<Http1Downstream {self.peer} queue={len(self.queue)} closing={self.closing} "
            f"paused={sorted(self._paused)}>"
        )


_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def transfer_coding_error(te: bytes, *, http11: bool) -> tuple[int, str, str] | None:
    """Check a message's ``Transfer-Encoding`` (its field lines joined with ``", "``): None when
    it is ``chunked`` once and alone in an HTTP/1.1 message, the only coding the proxy relays;
    otherwise the answer a request gets (status, ``weft-proxy-error`` reason, detail). A response
    with any problem is a broken upstream (502) instead.

    Why this strict: a coding before ``chunked`` (``identity, chunked``, ``gzip, chunked``), empty
    elements, a repeated ``chunked``, or ``chunked`` in HTTP/1.0 are read differently by
    different parsers (llhttp itself frames several of them chunked and others close-delimited),
    so a proxy that relays them lets the next hop disagree about where the message ends. RFC 9112
    6.3: a request whose final coding is not chunked is 400 and close; 6.1: a coding the server
    does not implement may be 501; Transfer-Encoding in an HTTP/1.0 message is faulty framing.

    Not for: Content-Length (checked apart), the chunked body itself (the parser checks it).
    """
    if not http11:
        return 400, "bad-transfer-encoding", "Transfer-Encoding in an HTTP/1.0 message"
    # llhttp has stripped leading whitespace; it frames trailing spaces as chunked, a tab not
    if te.rstrip(b" ").lower() == b"chunked":
        return None
    codings = [c.strip(b" \t").lower() for c in te.split(b",")]
    if b"" in codings:
        return 400, "bad-transfer-encoding", "empty Transfer-Encoding element"
    if len(codings) == 1 or codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
        return 400, "bad-transfer-encoding", "Transfer-Encoding must be chunked, once and last"
    names = [c.split(b";", 1)[0].rstrip(b" \t") for c in codings[:-1]]
    if not all(name and _TCHAR.issuperset(name) for name in names):
        return 400, "bad-transfer-encoding", "malformed transfer coding"
    listed = b", ".join(names).decode("latin-1")
    return 501, "transfer-coding-not-implemented", f"transfer coding not implemented: {listed}"


class _Reject(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


class _UpstreamError(Exception):
    """Raised in a response parser callback: the upstream broke the protocol."""


class Http1Upstream(asyncio.Protocol):
    """A pooled client connection to one endpoint; one exchange at a time."""

    def __init__(self, concrete: Concrete, state: EndpointState, max_head: int = 65536) -> None:
        self.concrete = concrete
        self.state = state
        self.max_head = max_head
        self._head_bytes = 0
        self._head_read_bytes = 0
        self._in_head = False
        self._begun = 0
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.alive = False
        self.reused = False
        self.got_bytes = False
        self.close_delimited = False
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._lines: list[bytes] = []
        self._hop: list[tuple[bytes, bytes]] = []
        self._has_len = False
        self._te: bytes | None = None  # the response's Transfer-Encoding lines, joined
        self._in_body = False
        self._paused_by: Http1Downstream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.alive = True

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            self.close()  # bytes nobody asked for: the connection is out of sync
            return
        self.got_bytes = True
        down = exchange.down
        down.cork()
        spanning = self._in_head
        self._begun = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            if exchange.upgrade and exchange.status == 101:
                exchange.on_upgraded(data[offset:])
            else:
                self.close()
                exchange.on_upstream_error("unexpected upgrade", self)
        except httptools.HttpParserCallbackError as exc:
            self.close()
            inner = exc.__cause__ or exc.__context__
            if isinstance(inner, _UpstreamError):
                exchange.on_upstream_error(str(inner), self)
            else:
                log.error("internal error while relaying a response: %r", inner)
                exchange.on_upstream_error("internal error", self)
        except httptools.HttpParserError as exc:
            self.close()  # never pooled again, even if its exchange is already over
            exchange.on_upstream_error(str(exc), self)
        else:
            if self._in_head and spanning and not self._begun:
                self._head_read_bytes += len(data)
                if self._head_read_bytes > self.max_head:
                    self.close()
                    exchange.on_upstream_error("response headers too large", self)
        finally:
            down.uncork()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.on_upstream_lost(exc)
        elif self._paused_by is not None:
            self._paused_by.resume("upstream-write")

    def pause_writing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            self._paused_by = exchange.down
            exchange.down.pause("upstream-write")

    def resume_writing(self) -> None:
        if self._paused_by is not None:
            self._paused_by.resume("upstream-write")
            self._paused_by = None

    def resume_from(self, down: Http1Downstream) -> None:
        """Undo any pause this connection put on ``down`` (its exchange is over)."""
        if self._paused_by is down:
            down.resume("upstream-write")
            self._paused_by = None
        if down._write_paused and self.alive:
            self.transport.resume_reading()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.exchange is None:
            raise _UpstreamError("bytes after a complete response")
        self._headers = []
        self._lines = []
        self._hop = []
        self._has_len = False
        self._te = None
        self._reason = b""
        self._in_body = False
        self._in_head = True
        self._head_bytes = 0
        self._head_read_bytes = 0
        self._begun += 1

    def on_status(self, status: bytes) -> None:
        self._reason += status
        self._head_bytes += len(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.max_head:
            raise _UpstreamError("response headers too large")
        if self._in_body:  # a trailer
            self._headers.append((name, value))
            return
        # one pass per header: hop-by-hop set aside, the rest pre-formatted for the client
        lname = name.lower()
        if lname in HOP_BY_HOP:
            self._hop.append((lname, value))
            if lname == b"transfer-encoding":  # its lines, joined as one list
                te = self._te
                self._te = value if te is None else te + b", " + value
        else:
            if lname == b"content-length":
                self._has_len = True
            self._lines.append(name + b": " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        parser = self.parser
        status: int = parser.get_status_code()
        self._in_body = True
        self._in_head = False
        hop = self._hop
        te = self._te
        if (
            te is not None
            and (te != b"chunked" or parser.get_http_version() != "1.1")
            and not (exchange.is_head or status in (204, 304) or 100 <= status < 200)
        ):
            # framing the parser might read otherwise than the proxy does: a broken upstream (a
            # response with no body may name the coding it would have had, RFC 9112 6.1)
            problem = transfer_coding_error(te, http11=parser.get_http_version() == "1.1")
            if problem is not None:
                raise _UpstreamError(problem[2])
        self.close_delimited = (
            not self._has_len
            and te is None
            and status not in (204, 304)
            and not 100 <= status < 200
        )
        exchange.on_response_head(
            status,
            self._reason or b"-",
            self._lines,
            hop,
            self._has_len,
            bool(parser.should_keep_alive()),
        )

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.on_response_body(body)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            trailers, self._headers = self._headers, []
            exchange.on_response_end(trailers)

    # pool interface

    def reusable(self) -> bool:
        return self.alive and self.exchange is None and not self.transport.is_closing()

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()

    def __repr__(self) -> str:
        busy = "busy" if self.exchange is not None else "idle"
        return f"<Http1Upstream {self.state.addr[0]}:{self.state.addr[1]} {busy}>"
