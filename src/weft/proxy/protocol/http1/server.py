"""HTTP/1.1 from the client: the server side of one client connection.

:class:`Http1Downstream` is the ``asyncio.Protocol`` of an accepted client connection, parsed with
httptools (llhttp). Each request head becomes an :class:`~.exchange.Exchange`; pipelined requests
are parsed ahead, queued (reading pauses above 16) and answered in order. Requests that cannot be
framed safely are answered here and the connection closed: 400 malformed or smuggling-prone
(both Content-Length and Transfer-Encoding, several Hosts, ...), 501 CONNECT or a transfer coding
other than chunked, 431 oversized headers, 408 a head (or a body) that stops arriving. The
listener's reaper (:meth:`Http1Context.reap`) enforces the header, idle and route idle timeouts.

Not for: the request's policy (:mod:`weft.proxy.outbound.logical`), its relay
(:mod:`.exchange`), the upstream side (:mod:`.client`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import httptools

from weft.metrics.proxy import LabelItems, ProxyMetrics, TcpSeries
from weft.proxy.outbound.concrete import Concrete
from weft.proxy.outbound.logical import Headers, L7Context
from weft.proxy.protocol.http1.exchange import Exchange
from weft.proxy.protocol.http1.framing import (
    HOP_BY_HOP,
    REQUEST_SPECIAL,
    STANDARD_CONNECTION_TOKENS,
    error_response,
    transfer_coding_error,
)

if TYPE_CHECKING:
    from weft.proxy.accept.listen import ConnCounts
    from weft.proxy.config import ProxyConfig
    from weft.proxy.inbound.policy import HttpConn

log = logging.getLogger("weft.proxy")
_monotonic = time.monotonic


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


# With more client connections than this, one that goes idle drops its parser (about 900 bytes;
# a new one costs about 0.5 us and eight objects for the collector). With fewer, memory is no
# concern and each connection keeps its parser: at 2,000 requests per second over 16 connections,
# a new parser per request put HTTP/1 p99 about 10% higher (docs/benchmarks.md, issue 15's gate).
SHED_PARSERS_ABOVE = 64
# Why reading is paused (bits of Http1Downstream._paused): a connection needs no set for this.
_PAUSE_BITS = {"request-buffer": 1, "pipeline": 2, "broken": 4, "upstream-write": 8}
# The head's scratch lists between requests: an idle connection keeps none of its own (these are
# never appended to: on_message_begin gives each request fresh ones, and trailers get theirs).
_NO_BYTES: list[bytes] = []
_NO_HEADERS: Headers = []


class Http1Downstream(asyncio.Protocol):
    """The server side of one client connection.

    Memory matters here: a sidecar holds one per client connection, most of them idle. Between
    requests a connection keeps no queue storage and none of the last head's lists and, when
    its listener has more than :data:`SHED_PARSERS_ABOVE` connections, no parser (httptools'
    parser, its C state and its bound callbacks are about 900 bytes; one is made with a
    request's first bytes, about 0.5 us); what pauses its reading is a bit set.
    """

    __slots__ = (
        "_begun", "_broken", "_corked", "_head_bytes", "_head_read_bytes", "_head_started",
        "_headers", "_in_head", "_last_active", "_lines", "_paused", "_special", "_url",
        "_write_paused", "authz", "closing", "concrete", "counts", "ctx", "parser", "parsing",
        "queue", "tcp", "tls_labels", "transport", "upgraded", "version",
    )  # fmt: skip

    def __init__(self, ctx: Http1Context, concrete: Concrete, transport: asyncio.Transport) -> None:
        self.ctx = ctx
        self.concrete = concrete
        self.transport = transport
        self.parser: httptools.HttpRequestParser | None = None
        self.version = b"1.1"
        self.queue: list[Exchange] = []
        self.parsing: Exchange | None = None
        self.closing = False
        self.upgraded = False
        self._paused = 0
        self._write_paused = False
        self._url = _NO_BYTES
        self._headers = _NO_HEADERS
        self._lines = _NO_BYTES
        self._special = _NO_HEADERS
        self._head_bytes = 0
        self._head_read_bytes = 0
        self._in_head = False
        self._head_started = 0.0
        self._last_active = _monotonic()
        self.tcp: TcpSeries | None = None  # this connection's (peer=src) byte counters
        self.tls_labels: LabelItems = ()  # inbound: the client's TLS labels (client_id...)
        self.authz: HttpConn | None = None  # inbound: the port's policy for this client
        self._corked: list[bytes] | None = None
        # the listener's open connections per concrete (released when this one ends)
        self.counts: ConnCounts | None = None
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
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
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
        self.release()
        for exchange in self.queue:
            exchange.on_client_gone()
        self.queue.clear()
        self.parser = None  # its bound callbacks refer back here: no cycle for the collector

    def release(self) -> None:
        """The connection's accounting ends (once): its ``peer="src"`` series and the
        listener's count of connections to its concrete."""
        counts, self.counts = self.counts, None
        if counts is not None:
            counts.connection_closed(self.concrete.name, self.tcp)

    @property
    def peer(self) -> str:
        """The client's ``host:port``, read when needed (logs): an idle connection keeps no
        string for it."""
        name = self.transport.get_extra_info("peername")
        if not name:
            return "-"
        host = str(name[0])
        return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"

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
            if self._headers is _NO_HEADERS:
                self._headers = []
            self._headers.append((name, value))
            return
        # one pass per header: lowercased for lookups (routing), end-to-end lines pre-formatted
        lname = name.lower()
        self._headers.append((lname, value))
        if lname in REQUEST_SPECIAL:
            self._special.append((lname, value))
            if lname in HOP_BY_HOP:
                return
        self._lines.append(name + b": " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_bytes > self.ctx.max_header_bytes:
            raise _Reject(431, "headers-too-large", "request headers too large")
        parser = self.parser
        assert parser is not None
        version = parser.get_http_version()
        self.version = b"1.0" if version == "1.0" else b"1.1"
        method: bytes = parser.get_method()
        url = b"".join(self._url) if len(self._url) != 1 else self._url[0]
        headers = self._headers
        special, lines = self._special, self._lines
        # the idle connection keeps none of this head's lists (or the bytes they hold)
        self._headers = self._special = _NO_HEADERS
        self._url = self._lines = _NO_BYTES
        authority = b""
        lengths: list[bytes] = []
        te: bytes | None = None
        connection_tokens: list[bytes] = []
        expect_continue = False
        upgrade_value: bytes | None = None
        hosts = 0
        for lname, value in special:
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
        if connection_tokens:
            listed = set(connection_tokens) - STANDARD_CONNECTION_TOKENS
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
        trailers, self._headers = self._headers, _NO_HEADERS
        exchange.on_request_end(trailers)

    # -- exchange lifecycle ---------------------------------------------------------------------

    def exchange_finished(self, exchange: Exchange) -> None:
        queue = self.queue
        if not queue or queue[0] is not exchange:
            return
        del queue[0]
        self._last_active = _monotonic()
        if (
            not queue
            and not self._in_head
            and not self.upgraded
            and len(self.ctx.connections) > SHED_PARSERS_ABOVE
        ):
            # idle until the client's next request, among many connections: the parser goes (a
            # new one comes with the next bytes)
            self.parser = None
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
        series = self.concrete.service.unrouted_series(b"", self.tls_labels)
        series.requests += 1
        series.response(status, False).observe(0.0)
        self.write(error_response(status, reason, close=True, detail=detail))
        self.close()

    def pause(self, reason: str) -> None:
        if not self._paused:
            self.transport.pause_reading()
        self._paused |= _PAUSE_BITS[reason]

    def resume(self, reason: str) -> None:
        bit = _PAUSE_BITS[reason]
        if self._paused & bit:
            self._paused &= ~bit
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
            f"paused={sorted(r for r, bit in _PAUSE_BITS.items() if self._paused & bit)}>"
        )


class _Reject(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
