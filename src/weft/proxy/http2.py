"""HTTP/2 proxying, per stream: the client-facing server side and multiplexed upstream connections.

:class:`Http2Downstream` is the ``asyncio.Protocol`` of a client's HTTP/2 connection (prior
knowledge h2c, or h2 inside mesh TLS), driven by the proxy's own codec,
:class:`weft.core.h2conn.H2Conn` (the module says why not ``h2``).
Every stream is one request, a :class:`H2Stream`: it picks its own endpoint from the
:class:`~weft.proxy.endpoints.Concrete` (so the calls of one long-lived gRPC connection spread
over every endpoint) and opens a stream on an :class:`Http2Upstream` to that endpoint: one
multiplexed connection per endpoint, dialed on demand, more when the server's
``MAX_CONCURRENT_STREAMS`` is reached (:class:`Http2Context` keeps these pools).

Callbacks only (no task per stream): the codec's callbacks (``h2_headers``, ``h2_data``...)
drive the streams; only dialing awaits, in the
Concrete's connect task. Frames produced while handling the reads of one turn of the event loop
and of its next poll are written with one ``write`` per connection
(:meth:`Http2Context.flush_soon`).

Flow control is the backpressure: DATA received on one side is acknowledged to its sender
(:meth:`~weft.core.h2conn.H2Conn.ack`, which reopens the stream's window) only once it was handed
to the other side, which happens only while that side's flow-control window is open and its
transport is not paused. So a stream whose reader is slow holds at most its stream window
(``STREAM_WINDOW``) in the proxy and stalls nobody else. The connection's window is reopened as
DATA arrives until the connection holds ``hold_limit`` (4 MiB) for its slow readers; then only
as they read: a connection holds at most that plus its window (8 MiB). An upstream connection
over its hold limit takes no new stream (:meth:`Http2Upstream.has_room`): new calls get another
connection instead of waiting behind stalled ones.

Fields a peer sent "never indexed" (RFC 7541 7.1.3) are sent on never indexed, in headers and
trailers both ways (``req_never``/``resp_never`` of a stream, from
:attr:`~weft.core.h2conn.H2Conn.never_indexed`). Trailers (``grpc-status``, ``grpc-message``)
pass through; RST_STREAM is carried both ways (a client's cancel resets the upstream stream, an
upstream reset resets the client's); long-lived streams are never cut (the idle timeout applies
only to a connection with no open stream); drain sends GOAWAY and closes each connection once
its streams finish.

Errors the proxy makes carry ``weft-proxy-error``: 503 no endpoint, 502 connect failure or
upstream lost before answering. For gRPC requests (``content-type: application/grpc...``) these
are HTTP 200 trailers-only answers with ``grpc-status: 14`` (UNAVAILABLE) and ``grpc-message``.
A malformed request is reset (RST_STREAM PROTOCOL_ERROR); malformed framing ends the client
connection with GOAWAY and the error's code.

Policy (the destination's :class:`~weft.policy.ServicePolicy`), per stream as HTTP/1 applies it:
the routes (HTTPRoutes and GRPCRoutes, whose method matches are path matches) pick a rule, whose
weighted backend is resolved through ``Http2Context.backend``; header filters and redirects
apply. Retries: a stream whose request was fully received with a body within ``REPLAY_LIMIT`` is
sent again, after a jittered backoff, on a fresh pick, while the retry limit and the destination's
retry budget (:mod:`weft.core.retry`) allow it, when its attempt fails before anything of the
response went to the client: a gRPC call that ends with a status the policy's ``grpc`` names
(trailers-only, or headers then trailers with no message: for such calls the proxy holds the
response headers until the first DATA or the trailers), a non-gRPC request with a retryable HTTP
status and an idempotent method, a connection error, or the per-attempt timeout. A stream the
server never processed (RST_STREAM REFUSED_STREAM, or above a GOAWAY's last stream id: RFC 9113
8.7) is sent again at once on another connection, whatever the method and the retry policy and
outside the retry budget, while its body fits ``REPLAY_LIMIT`` (kept for every stream until its
response starts), at most ``MAX_REFUSED_RETRIES`` times: then it is answered 502 (gRPC: 14
UNAVAILABLE) with ``weft-proxy-error: upstream-refused``. Timeouts: the
request timeout (``timeouts.request`` / ``response``, until the response headers go out), the
per-attempt timeout, and for gRPC the request's ``grpc-timeout``, which bounds the whole call (the
smaller wins; a retry forwards what is left of it). On expiry the proxy answers (trailers-only)
``grpc-status: 4`` DEADLINE_EXCEEDED with ``weft-proxy-error``, or, once the response has started,
ends it with those trailers; either way the upstream stream is reset. A malformed
``grpc-timeout`` is answered ``grpc-status: 13`` INTERNAL (as grpc-go does).

Metrics: per request through ``concrete.http_series`` as HTTP/1 does, recorded when the stream
ends (gRPC classification needs the trailers): failure when the status is 5xx, when the stream
was reset, or when ``grpc-status`` is non-zero; the latency is to the response headers. Per route
(``concrete.route_series``): the effective series counts what the client saw, the actual series
every attempt.

Not for: choosing the destination (the caller hands a Concrete), TLS, HTTP/1.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from weft.addr import format_addr
from weft.core.h2conn import (
    CANCEL,
    INTERNAL_ERROR,
    NO_ERROR,
    REFUSED_STREAM,
    H2Conn,
    H2Error,
)
from weft.metrics.proxy import LabelItems, ProxyMetrics, TcpSeries
from weft.policy import HeaderModifier
from weft.proxy.endpoints import Concrete, EndpointState
from weft.proxy.outbound.logical import (
    ERROR_HEADER,
    GRPC_DEADLINE_EXCEEDED,
    GRPC_ENDPOINT_FAILURES,
    GRPC_UNAVAILABLE,
    REPLAY_LIMIT,
    Call,
    Headers,
    L7Context,
)

if TYPE_CHECKING:
    from weft.proxy.config import ProxyConfig
    from weft.proxy.inbound_policy import HttpConn

# weft.core.routes is imported where a policy is applied (as in the logical layer)

log = logging.getLogger("weft.proxy")

STREAM_WINDOW = 256 * 1024  # bytes one stream may have in flight into the proxy, per direction
CONNECTION_WINDOW = 4 * 1024 * 1024  # the same, all streams of one connection together
MAX_CONCURRENT_STREAMS = 1000  # streams a client may open on one connection
# times a stream the server never processed is sent again (outside any retry policy): a server
# closing a connection refuses a stream once; one that refuses everything must not loop
MAX_REFUSED_RETRIES = 3
# RetryPolicy.grpc names (the retry.weft.io/grpc annotation) -> grpc-status values
GRPC_RETRY_CODES = {
    "cancelled": b"1",
    "deadline-exceeded": b"4",
    "resource-exhausted": b"8",
    "internal": b"13",
    "unavailable": b"14",
}
# grpc-timeout: at most 8 digits and a unit (gRPC over HTTP/2, "Timeout")
_GRPC_TIMEOUT = re.compile(rb"([0-9]{1,8})([HMSmun])")
_GRPC_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}

_monotonic = time.monotonic


class Http2Context(L7Context):
    """What every HTTP/2 connection of one listener shares: config, metrics, live client
    connections, and the upstream connection pools (per endpoint)."""

    def __init__(self, config: ProxyConfig, metrics: ProxyMetrics, direction: str) -> None:
        super().__init__(config, metrics, direction)
        self.connections: set[Http2Downstream] = set()
        self.pools: dict[EndpointState, list[Http2Upstream]] = {}
        self._dirty: list[_Peer] = []
        self._flush_pending = False

    def upstream(
        self, concrete: Concrete, state: EndpointState, avoid: Http2Upstream | None = None
    ) -> Http2Upstream:
        """A connection to ``state`` with room for one more stream (dialed when none has),
        other than ``avoid`` (which refused a stream)."""
        conns = self.pools.get(state)
        if conns is None:
            conns = self.pools[state] = []
        for up in conns:
            if up is not avoid and up.has_room():
                return up
        up = Http2Upstream(self, concrete, state)
        conns.append(up)
        up.dial()
        return up

    def forget(self, up: Http2Upstream) -> None:
        conns = self.pools.get(up.state)
        if conns is not None and up in conns:
            conns.remove(up)
            if not conns:
                del self.pools[up.state]

    def flush(self) -> None:
        """Write what the connections touched since the last flush have to send."""
        self._flush_pending = False
        dirty = self._dirty
        while dirty:
            peer = dirty.pop()
            peer.dirty = False
            peer.write_out()

    def flush_soon(self) -> None:
        """:meth:`flush` after the event loop has polled once more: the frames that the reads
        of this turn and of the next poll produce for one connection go out in one write.

        Fewer, larger writes mean fewer wake-ups for the peers, whose CPU per call grows with
        the reads they do (measured with grpcio clients and nginx behind the proxy: with the
        flush at the end of the same turn, about 0.37 writes per call to each side at
        saturation; with it after one more poll, about 0.28; Envoy's, 0.12).
        This is what Envoy does (a write is activated for the next event-loop iteration). The
        cost is one poll that does not block, a few microseconds, at any load; no timer waits.
        """
        if self._dirty and not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush_after_next_poll)

    def _flush_after_next_poll(self) -> None:
        # A callback scheduled from a ready callback runs on the loop's next turn, after its
        # poll (asyncio and uvloop run only the callbacks that were ready when a turn began).
        if self._flush_pending:
            asyncio.get_running_loop().call_soon(self.flush)

    def reap(self, now: float) -> None:
        """Idle timeouts (about once a second, by the server): a client connection with no open
        stream for ``idle_timeout`` gets GOAWAY; an upstream connection with none for
        ``pool_idle_timeout`` (or whose endpoint left) is closed. Open streams are never cut."""
        idle_deadline = now - self.config.idle_timeout
        for down in list(self.connections):
            if not down.streams:
                if down.last_active < idle_deadline:
                    down.drain()
                continue
            for stream in list(down.streams.values()):
                if stream.idle_expired(now):  # a route's idle timeout (1 s granularity)
                    stream.idle_timeout()
        pool_deadline = now - self.config.pool_idle_timeout
        for conns in list(self.pools.values()):
            for up in list(conns):
                idle = not up.streams and not up.queued and up.connected
                if idle and (up.state.closing or up.last_active < pool_deadline):
                    up.close()
        self.flush()

    def drain(self) -> None:
        """Graceful shutdown: GOAWAY to every client; each connection closes once its streams
        have finished (the server aborts what is left after the grace period)."""
        self.draining = True
        for down in list(self.connections):
            down.drain()
        for conns in list(self.pools.values()):
            for up in list(conns):
                if not up.streams and not up.queued:
                    up.close()
        self.flush()


class _Peer(asyncio.Protocol):
    """One HTTP/2 connection of the proxy (either side): its protocol state and transport."""

    conn: H2Conn

    def __init__(self, ctx: Http2Context) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.dirty = False
        self.paused = False  # the transport's write buffer is full
        self.last_active = _monotonic()
        # streams with data waiting for this connection's window (or its transport)
        self.blocked: dict[H2Stream, None] = {}
        self.tcp: TcpSeries | None = None

    def mark(self) -> None:
        if not self.dirty:
            self.dirty = True
            self.ctx._dirty.append(self)

    def write_out(self) -> None:
        data = self.conn.take()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            if self.tcp is not None:
                self.tcp.write_bytes += len(data)
            transport.write(data)

    def pause_writing(self) -> None:
        self.paused = True
        self.conn.output_blocked(True)  # the peer does not read: its floods count (h2limits)

    def resume_writing(self) -> None:
        self.paused = False
        self.conn.output_blocked(False)
        for stream in list(self.blocked):
            stream.pump_to(self)
        self.ctx.flush()


def _pump(buf: deque[bytes], dst: _Peer, dst_sid: int, src: _Peer | None, src_sid: int) -> bool:
    """Send what ``buf`` holds on ``dst``'s stream as far as its window allows and acknowledge
    it to ``src`` (reopening the sender's window); True when ``buf`` is empty."""
    if dst.paused:
        return not buf
    conn = dst.conn
    window = conn.window(dst_sid)
    if window < 0:  # the stream is gone: nothing more can go
        buf.clear()
        return True
    sent = 0
    while buf and window > 0:
        data = buf[0]
        size = len(data)
        if size > window:
            size = window
            conn.send_data(dst_sid, data[:size])
            buf[0] = data[size:]
        else:
            conn.send_data(dst_sid, data)
            buf.popleft()
        sent += size
        window -= size
    if sent:
        dst.mark()
        if src is not None:
            src.conn.ack(src_sid, sent)
            src.mark()
    return not buf


def _is_grpc(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.startswith(b"application/grpc")
    return False


def grpc_message(text: str) -> bytes:
    """``text`` percent-encoded as gRPC's ``grpc-message`` wants (UTF-8; bytes outside
    printable ASCII, and ``%``, as ``%XX``)."""
    out = bytearray()
    for byte in text.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def _trailer_status(headers: Headers) -> bytes | None:
    for name, value in headers:
        if name == b"grpc-status":
            return value
    return None


def parse_grpc_timeout(value: bytes) -> float | None:
    """A ``grpc-timeout`` value (``100m``, ``5S``, ``1H``) in seconds; None when malformed."""
    m = _GRPC_TIMEOUT.fullmatch(value)
    if m is None:
        return None
    return int(m.group(1)) * _GRPC_TIMEOUT_UNITS[m.group(2)]


def grpc_timeout_value(seconds: float) -> bytes:
    """``seconds`` (> 0) as a ``grpc-timeout`` value, in the finest unit that fits 8 digits."""
    for unit, scale in ((b"u", 1e6), (b"m", 1e3), (b"S", 1.0), (b"M", 1 / 60)):
        amount = max(1, int(seconds * scale))
        if amount < 100_000_000:
            return b"%d%s" % (amount, unit)
    return b"%dH" % min(99_999_999, max(1, int(seconds / 3600)))


def _modified(mod: HeaderModifier, headers: Headers) -> Headers:
    """``headers`` with a header filter applied to the regular fields (pseudo-headers first and
    untouched; names lower-cased, as HTTP/2 requires)."""
    from weft.core.routes import apply_header_modifier

    pseudo = [(n, v) for n, v in headers if n[:1] == b":"]
    regular = [(n, v) for n, v in headers if n[:1] != b":"]
    return pseudo + [(n.lower(), v) for n, v in apply_header_modifier(mod, regular)]


class H2Stream(Call):
    """One request and its response: a client stream and the upstream stream it maps to (the
    policy, retries, timeouts and accounting are :class:`~weft.proxy.outbound.logical.Call`'s)."""

    __slots__ = (
        "deadline_at", "down", "held", "refusals", "refused_by", "replay_size", "req_buf",
        "req_closed", "req_never", "req_trailers", "resend", "resp_buf", "resp_closed", "resp_end",
        "resp_never", "resp_trailers", "sid", "up", "up_sid",
    )  # fmt: skip

    def __init__(self, down: Http2Downstream, sid: int, headers: Headers) -> None:
        super().__init__(down.ctx, down.concrete, down.tls_labels, headers)
        self.down = down
        self.sid = sid
        self.grpc = _is_grpc(headers)
        self.up: Http2Upstream | None = None
        self.up_sid = 0
        self.req_buf: deque[bytes] = deque()
        self.req_trailers: Headers | None = None
        # fields the client sent "never indexed" (headers and trailers), passed on the same way
        self.req_never: Headers | None = None
        self.req_closed = False  # the request's end went upstream (or the request was dropped)
        self.resp_buf: deque[bytes] = deque()
        self.resp_end = False  # the upstream ended its response
        self.resp_trailers: Headers | None = None
        self.resp_never: Headers | None = None  # as req_never, from the upstream
        self.resp_closed = False  # the response's end went to the client
        self.replay_size = 0
        self.resend: deque[bytes] = deque()  # replayed bytes to send first (acknowledged already)
        self.refusals = 0  # attempts the server never processed (RFC 9113 8.7)
        self.refused_by: Http2Upstream | None = None  # the connection that refused the last one
        self.held: Headers | None = None  # response headers held until a retry is ruled out
        self.deadline_at = 0.0  # the grpc-timeout's end (monotonic), 0: none

    # -- policy ---------------------------------------------------------------------------------

    def decide_call(self, path: bytes) -> bool:
        """The request's ``grpc-timeout``, then the destination's policy (:meth:`Call.decide`).
        False when the stream was answered here or waits for a backend's discovery."""
        deadline: float | None = None
        if self.grpc:
            raw = self.header(b"grpc-timeout")
            if raw is not None:
                deadline = parse_grpc_timeout(raw)
                if deadline is None:
                    detail = f"malformed grpc-timeout {raw.decode('latin-1')!r}"
                    self.fail(400, "invalid-grpc-timeout", detail)
                    return False
                self.deadline_at = self.started + deadline
        return self.decide(path, deadline=deadline)

    def _deadline_left(self) -> float:
        return self.deadline_at - _monotonic() if self.deadline_at else 0.0

    def _modify_request(self, mod: HeaderModifier) -> None:
        self.headers = _modified(mod, self.headers)

    def flush(self) -> None:
        self.down.ctx.flush()

    # -- the endpoint layer ---------------------------------------------------------------------

    def _open(self, state: EndpointState) -> None:
        refused_by, self.refused_by = self.refused_by, None
        self.down.ctx.upstream(self.concrete, state, refused_by).add(self)

    def opened(self, up: Http2Upstream, up_sid: int) -> None:
        """The upstream stream exists (its headers are queued): send what the client sent."""
        self.up = up
        self.up_sid = up_sid
        if self.state is not None:
            self.count(self.state)
        self.pump_request()

    def on_request_data(self, data: bytes) -> None:
        if self.req_closed:  # answered already, or the upstream gave up on it: drop
            self.down.ack(len(data), self.sid)
            return
        if self.idle is not None:
            self.last_io = _monotonic()
        replay = self.replay
        if replay is not None:
            self.replay_size += len(data)
            if self.replay_size <= REPLAY_LIMIT:
                replay.append(data)
            else:
                self.replay = None
        self.req_buf.append(data)
        if self.up is not None:
            self.pump_request()

    def on_request_end(self, trailers: Headers | None) -> None:
        self.req_end = True
        self.req_trailers = trailers
        if self.up is not None:
            self.pump_request()
        elif self.req_closed:
            self._maybe_finish()

    def pump_request(self) -> None:
        up = self.up
        if up is None or self.req_closed:
            return
        resend = self.resend
        if resend and not _pump(resend, up, self.up_sid, None, self.sid):
            up.blocked[self] = None
            return
        if self.req_buf and not _pump(self.req_buf, up, self.up_sid, self.down, self.sid):
            up.blocked[self] = None
            return
        up.blocked.pop(self, None)
        if self.req_end:
            self.req_closed = True
            # (either is a no-op when the upstream stream was reset meanwhile)
            if self.req_trailers:
                up.conn.send_headers(self.up_sid, self.req_trailers, True, self.req_never)
            else:
                up.conn.end_stream(self.up_sid)
            up.mark()
            self._maybe_finish()

    def pump_to(self, peer: _Peer) -> None:
        """``peer``'s window (or transport) has room again."""
        if peer is self.up:
            self.pump_request()
        else:
            self.pump_response()

    # -- retries --------------------------------------------------------------------------------

    def _may_hold(self) -> bool:
        """A gRPC call that could still be retried on its status: hold the response headers."""
        retry = self.retry
        return (
            retry is not None
            and self.grpc
            and bool(retry.grpc)
            and self.retries < retry.limit
            and self.req_end
            and self.replay is not None
        )

    def _retryable_grpc(self) -> bool:
        retry = self.retry
        code = self.grpc_status
        if retry is None or code is None:
            return False
        return any(GRPC_RETRY_CODES.get(name) == code for name in retry.grpc)

    def _refused_retryable(self) -> bool:
        """Whether an attempt the server never processed can be sent again: nothing of its
        response came, its body can be replayed, and it was not refused too often already."""
        return (
            not self.status
            and not self.resp_started
            and self.replay is not None
            and self.refusals < MAX_REFUSED_RETRIES
            and not self.ctx.draining
        )

    def _retry_refused(self, up: Http2Upstream | None) -> None:
        """Send again, at once and on another connection than ``up``, an attempt the server did
        not process (RFC 9113 8.7: safe for any method, as Envoy and Linkerd do): neither the
        retry policy's limit nor its budget is spent on it."""
        self.refusals += 1
        self._abandon(refused=True)
        self.refused_by = up
        self.backoff = asyncio.get_running_loop().call_later(0, self._redispatch)

    def _fail_refused(self) -> None:
        """Refused again and again, or not replayable: a 502 (gRPC: 14) when the proxy gave up
        after its attempts, else REFUSED_STREAM passed on (the client may send it again)."""
        if self.refusals >= MAX_REFUSED_RETRIES:
            n = self.refusals + 1
            self.fail(502, "upstream-refused", f"upstream refused the stream {n} times")
        else:
            self.failed = True
            self._reset_client(REFUSED_STREAM)

    def _drop_attempt(self) -> None:
        up = self.up
        self.held = None
        if up is not None:
            self._drop_response()
            up.reset(self, CANCEL)
            up.stream_done()
            self.up = None
        self.resp_buf.clear()

    def _rewind(self) -> None:
        self.resp_end = self.resp_closed = False
        self.resp_trailers = None
        # bytes the old attempt never took: the client's window gets them back now, since the
        # replay (which holds them too) is sent without acknowledging again; bytes the client
        # sends from now on are acknowledged as they go
        pending = sum(len(b) for b in self.req_buf)
        if pending:
            self.down.ack(pending, self.sid)
        self.req_buf.clear()
        assert self.replay is not None
        self.resend = deque(self.replay)
        self.req_closed = False
        if self.deadline_at:
            left = self.deadline_at - _monotonic()
            value = grpc_timeout_value(max(left, 0.001))
            self.headers = [(n, value if n == b"grpc-timeout" else v) for n, v in self.headers]

    def _deadline_passed(self) -> None:
        """The gRPC deadline passed mid-response: end it with DEADLINE_EXCEEDED trailers and
        reset the upstream stream."""
        if self.resp_closed:
            return
        self.failed = True
        self.grpc_status = GRPC_DEADLINE_EXCEEDED
        self._drop_response()
        up = self.up
        if up is not None:
            up.reset(self, CANCEL)
        down = self.down
        trailers: Headers = [
            (b"grpc-status", GRPC_DEADLINE_EXCEEDED),
            (b"grpc-message", b"deadline exceeded (grpc-timeout)"),
            (ERROR_HEADER, b"deadline-exceeded"),
        ]
        down.conn.send_headers(self.sid, trailers, True)
        if not self.req_end:  # the client is still sending: it need not
            down.conn.reset(self.sid, NO_ERROR)
        down.mark()
        self.resp_end = True
        self._drop_request()
        self._finish()

    # -- response side --------------------------------------------------------------------------

    def on_response(self, headers: Headers, ended: bool) -> None:
        status = 0
        for name, value in headers:
            if name == b":status":
                status = int(value) if value.isdigit() else 0
                break
        if self.idle is not None:
            self.last_io = _monotonic()
        # the endpoint's latency is to its response headers, as Linkerd's peak-EWMA takes it:
        # a stream that stays open for hours must not make its endpoint look slow; a failure
        # counts against it: a 5xx, or a failing grpc-status already here (trailers-only)
        ok = status < 500
        if ended:  # trailers-only (gRPC errors): one HEADERS frame with END_STREAM
            self.grpc_status = _trailer_status(headers)
            self.resp_end = True
            ok = ok and self.grpc_status not in GRPC_ENDPOINT_FAILURES
        if self.response_head(status, ok):
            return  # retried on its status
        if self.grpc and self.retry is not None and not self.resp_started:
            if ended and self._retryable_grpc() and self.retryable():
                self._retry_later()
                return
            if not ended and self._may_hold():
                self.held = headers
                return
        self._commit(headers, ended)

    def _commit(self, headers: Headers, ended: bool) -> None:
        """Send the response headers: from here on, this attempt's response is the answer."""
        self.commit(ended)
        self.held = None
        if self.resp_mod is not None:
            headers = _modified(self.resp_mod, headers)
        if ended:
            self.resp_closed = True
        down = self.down
        if not down.conn.send_headers(self.sid, headers, ended, self.resp_never):
            return  # the client reset it meanwhile
        down.mark()
        if ended:
            self._maybe_finish()

    def on_response_data(self, data: bytes) -> None:
        held = self.held
        if held is not None:
            self._commit(held, False)
        if self.idle is not None:
            self.last_io = _monotonic()
        self.resp_buf.append(data)
        self.pump_response()

    def on_response_end(self, trailers: Headers | None) -> None:
        if self.resp_end:
            return
        self.resp_end = True
        self.resp_trailers = trailers
        if trailers is not None:
            self.grpc_status = _trailer_status(trailers)
        held = self.held
        if held is not None:
            if self._retryable_grpc() and self.retryable():
                self._retry_later()
                return
            self._commit(held, False)
        self.pump_response()

    def pump_response(self) -> None:
        if self.resp_closed:
            return
        down = self.down
        if self.resp_buf and not _pump(self.resp_buf, down, self.sid, self.up, self.up_sid):
            down.blocked[self] = None
            return
        down.blocked.pop(self, None)
        if self.resp_end:
            self.resp_closed = True
            if self.resp_trailers:
                down.conn.send_headers(self.sid, self.resp_trailers, True, self.resp_never)
            else:
                down.conn.end_stream(self.sid)
            down.mark()
            self._maybe_finish()

    # -- the proxy's own answers ----------------------------------------------------------------

    def _send_error(self, status: int, reason: str, detail: str, extra: Headers) -> None:
        """A proxy error; a gRPC request gets HTTP 200 with its ``grpc-status``
        (trailers-only)."""
        if self.grpc:
            self.status = 200
            headers: Headers = [
                (b":status", b"200"),
                (b"content-type", b"application/grpc"),
                (b"grpc-status", self.grpc_status or GRPC_UNAVAILABLE),
                (b"grpc-message", grpc_message(detail)),
                (ERROR_HEADER, reason.encode()),
                *extra,
            ]
            body = b""
        else:
            body = f"weft proxy: {detail}\n".encode()
            headers = [
                (b":status", b"%d" % status),
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
                (ERROR_HEADER, reason.encode()),
                *extra,
            ]
            if self.method == b"HEAD":
                body = b""  # the length a GET would have, no content (RFC 9110 9.3.2)
        self._answer(headers, body)

    def _send_redirect(self, status: int, location: bytes) -> None:
        self._answer([(b":status", b"%d" % status), (b"location", location)], b"")

    def _answer(self, headers: Headers, body: bytes) -> None:
        """A complete answer of the proxy's own."""
        self.resp_end = True
        self.resp_closed = False  # closed to the upstream's answer, open to ours
        self._drop_request()
        down = self.down
        if not down.conn.send_headers(self.sid, headers, not body):
            self.resp_closed = True
            self._maybe_finish()
            return
        down.mark()
        if body:
            self.resp_buf.append(body)
            self.pump_response()
        else:
            self.resp_closed = True
            self._maybe_finish()

    def _drop_request(self) -> None:
        """The request will not go upstream: acknowledge what is buffered, drop the rest."""
        if self.req_closed:
            return
        self.req_closed = True
        pending = sum(len(b) for b in self.req_buf)
        self.req_buf.clear()
        self.resend.clear()
        if pending:
            self.down.ack(pending, self.sid)
        if self.up is not None:
            self.up.blocked.pop(self, None)

    def _drop_response(self) -> None:
        """The response will not reach the client: give its buffered bytes' window back."""
        self.resp_closed = True
        pending = sum(len(b) for b in self.resp_buf)
        self.resp_buf.clear()
        up = self.up
        if pending and up is not None and not up.closed:
            up.conn.ack(self.up_sid, pending)
            up.mark()

    # -- resets and losses ----------------------------------------------------------------------

    def on_client_reset(self, code: int) -> None:
        """The client reset the stream (a gRPC cancel): reset the upstream stream too."""
        if self.finished:
            return
        self.failed = True
        self._timed(True)  # the client gave up: no failure of the endpoint's
        self._drop_request()
        self._drop_response()
        if self.up is not None:
            self.up.reset(self, code)
        self._finish()

    def on_upstream_reset(self, code: int) -> None:
        if self.finished:
            return
        if self.resp_end and code == NO_ERROR:
            # a complete response, and the server wants no more of the request: send the rest
            # of the response, then tell the client the same (RFC 9113 8.1)
            self._drop_request()
            self.pump_response()
            return
        if code == REFUSED_STREAM and self._refused_retryable():
            self._retry_refused(self.up)
            return
        if not self.resp_started and self.retryable():
            self._retry_later()
            return
        if code == REFUSED_STREAM and not self.status and not self.resp_started:
            self._fail_refused()
            return
        self.failed = True
        self._reset_client(code)

    def on_upstream_lost(self, why: str, *, processed: bool = True) -> None:
        """The upstream connection ended (or refused the stream with GOAWAY) before the stream
        completed: an error answer if nothing was answered yet, else a reset."""
        if self.finished:
            return
        self.up = None
        if not self.resp_started:
            if not processed and self._refused_retryable():
                self._retry_refused(None)
                return
            if self.retryable():
                self._retry_later()
                return
            if not processed:
                self._fail_refused()
                return
            self.fail(502, "upstream-closed", why)
            return
        self.failed = True
        self._reset_client(INTERNAL_ERROR)

    def idle_timeout(self) -> None:
        """The route's idle timeout passed: a 504 before the response, else a reset."""
        if not self.resp_started:
            self.fail(504, "idle-timeout", "no bytes either way within the idle timeout")
            return
        self.failed = True
        if self.up is not None:
            self.up.reset(self, CANCEL)
        self._reset_client(CANCEL)

    def _reset_client(self, code: int) -> None:
        self._drop_request()
        self._drop_response()
        down = self.down
        down.conn.reset(self.sid, code)
        down.mark()
        self._finish()

    def _maybe_finish(self) -> None:
        if self.finished or not self.resp_closed:
            return
        if not self.req_closed:
            if self.req_end:
                return  # the request's end still waits for the upstream's window
            # the response is complete while the client still sends: stop both sides
            down = self.down
            down.conn.reset(self.sid, NO_ERROR)
            down.mark()
            if self.up is not None:
                self.up.reset(self, CANCEL)
            self._drop_request()
        self._finish()

    def _finish(self) -> None:
        self._account()
        down = self.down
        down.streams.pop(self.sid, None)
        down.blocked.pop(self, None)
        up = self.up
        if up is not None:
            up.streams.pop(self.up_sid, None)
            up.blocked.pop(self, None)
            up.stream_done()
        down.stream_done()


class Http2Downstream(_Peer):
    """The server side of one client's HTTP/2 connection."""

    def __init__(
        self,
        ctx: Http2Context,
        concrete: Concrete,
        transport: asyncio.Transport,
        peer: str,
    ) -> None:
        super().__init__(ctx)
        self.concrete = concrete
        self.transport = transport
        self.peer = peer
        self.conn = H2Conn(
            self,
            client=False,
            stream_window=STREAM_WINDOW,
            connection_window=CONNECTION_WINDOW,
            max_streams=MAX_CONCURRENT_STREAMS,
        )
        self.streams: dict[int, H2Stream] = {}
        self.closing = False  # GOAWAY sent or received: close once the streams are done
        self.tls_labels: LabelItems = ()  # inbound: the client's TLS labels (client_id...)
        self.authz: HttpConn | None = None  # inbound: the port's policy for this client
        self.on_close: Callable[[Http2Downstream], None] | None = None
        self._new: list[H2Stream] = []  # requests of this read, sent upstream after it
        ctx.connections.add(self)

    def start(self, buffered: bytes = b"") -> None:
        """Send our preface (SETTINGS) and handle what was already read (part of the client's
        preface, perhaps more)."""
        self.conn.start()
        self.mark()
        if buffered:
            self.data_received(buffered)
        else:
            self.ctx.flush()

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.tcp is not None:
            self.tcp.read_bytes += len(data)
        self.last_active = self.conn.now = _monotonic()  # (now: how old a reset stream is)
        try:
            self.conn.receive(data)
        except H2Error as exc:
            # GOAWAY with the error's code is queued: send it and close
            log.info("HTTP/2 protocol error from %s: %s", self.peer, exc)
            self._new.clear()
            self._broken()
            return
        new = self._new
        if new:
            # only now, so that a RST_STREAM read with its HEADERS (a "rapid reset") wins:
            # such a stream is never opened upstream and costs the server nothing
            self._new = []
            for stream in new:
                if not stream.finished:
                    stream.dispatch()
        self.mark()  # settings and ping acknowledgements, window updates
        self.ctx.flush_soon()

    def eof_received(self) -> bool:
        return False  # HTTP/2 has no half-close: the connection ends

    def connection_lost(self, exc: Exception | None) -> None:
        ctx = self.ctx
        ctx.connections.discard(self)
        for stream in list(self.streams.values()):
            stream.on_client_reset(CANCEL)
        self.streams.clear()
        if self.on_close is not None:
            self.on_close(self)
        ctx.flush()

    # -- HTTP/2 events (weft.core.h2conn.H2Handler) ---------------------------------------------

    def h2_headers(self, sid: int, headers: Headers, end: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            self._on_request(sid, headers, end)
        elif not stream.req_end:  # trailers
            if self.conn.never_indexed:
                stream.req_never = (stream.req_never or []) + self.conn.never_indexed
            stream.on_request_end(headers)

    def _on_request(self, sid: int, headers: Headers, end: bool) -> None:
        if self.closing:
            self.conn.reset(sid, REFUSED_STREAM)
            return
        stream = H2Stream(self, sid, headers)
        self.streams[sid] = stream
        if self.conn.never_indexed:
            stream.req_never = self.conn.never_indexed
        authority = b""
        method = path = b""
        for name, value in headers:
            if name[:1] != b":":
                break
            if name == b":authority":
                authority = value
            elif name == b":method":
                method = value
            elif name == b":path":
                path = value
        stream.authority = authority or self.concrete.name.encode()
        stream.method = method
        if end:
            stream.req_end = True
        authz = self.authz
        if authz is not None:
            target, _, query = path.partition(b"?")
            denial = authz.check(method, target, query, _lookup(headers))
            if denial is not None:
                stream.fail(denial.status, denial.reason, denial.detail, denial.headers())
                return
        if stream.decide_call(path):
            self._new.append(stream)  # dispatched at the end of the read (data_received)

    def h2_data(self, sid: int, data: bytes, end: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None:  # finished already (answered, or reset): drop
            if data:
                self.ack(len(data), sid)
            return
        if data:
            stream.on_request_data(data)
        if end:
            stream = self.streams.get(sid)
            if stream is not None and not stream.req_end:
                stream.on_request_end(None)

    def h2_reset(self, sid: int, code: int) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            stream.on_client_reset(code)

    def h2_window(self, sid: int) -> None:
        if sid == 0:
            for stream in list(self.blocked):
                stream.pump_response()
        else:
            one = self.streams.get(sid)
            if one is not None and one in self.blocked:
                one.pump_response()

    def h2_settings(self) -> None:
        for stream in list(self.blocked):
            stream.pump_response()

    def h2_goaway(self, last_sid: int, code: int) -> None:
        self.closing = True
        if not self.streams and self.transport is not None:
            self.write_out()
            self.transport.close()

    # -- helpers --------------------------------------------------------------------------------

    def ack(self, size: int, sid: int) -> None:
        """Give ``size`` bytes of window back to the client (data dropped, not forwarded)."""
        self.conn.ack(sid, size)
        self.mark()

    def stream_done(self) -> None:
        if self.closing and not self.streams and self.transport is not None:
            self.write_out()
            self.transport.close()

    def drain(self) -> None:
        """GOAWAY (no new streams); close once the open ones have finished."""
        transport = self.transport
        if not self.closing and transport is not None and not transport.is_closing():
            self.closing = True
            self.conn.goaway(NO_ERROR)
            self.write_out()
        self.closing = True
        if not self.streams and self.transport is not None:
            self.write_out()
            self.transport.close()

    def _broken(self) -> None:
        self.closing = True
        self.write_out()
        transport = self.transport
        if transport is not None:
            # a peer that has not read what was sent already may never read: close() would
            # wait for it forever (with what it holds), so cut it (its GOAWAY may not arrive)
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()
        for stream in list(self.streams.values()):
            stream.on_client_reset(CANCEL)
        self.ctx.flush()

    def __repr__(self) -> str:
        return f"<Http2Downstream {self.peer} streams={len(self.streams)} closing={self.closing}>"


def _lookup(headers: Headers) -> Callable[[bytes], bytes | None]:
    def header(name: bytes) -> bytes | None:
        for key, value in headers:
            if key == name:
                return value
        return None

    return header


class Http2Upstream(_Peer):
    """A multiplexed client connection to one endpoint (prior-knowledge h2c, or h2 inside mesh
    TLS)."""

    def __init__(self, ctx: Http2Context, concrete: Concrete, state: EndpointState) -> None:
        super().__init__(ctx)
        self.concrete = concrete
        self.state = state
        self.conn = H2Conn(
            self, client=True, stream_window=STREAM_WINDOW, connection_window=CONNECTION_WINDOW
        )
        self.streams: dict[int, H2Stream] = {}
        self.queued: list[H2Stream] = []  # waiting for the connection and the server's SETTINGS
        self.connected = False  # the server's first SETTINGS arrived: its limits are known
        self.goaway = False
        self.closed = False

    def dial(self) -> None:
        task = self.concrete.connect(self.state, lambda: self, h2=True)
        task.add_done_callback(self._dialed)

    def _dialed(self, task: asyncio.Task[tuple[asyncio.Transport, asyncio.Protocol]]) -> None:
        if not task.cancelled() and task.exception() is None:
            return  # connection_made did the rest
        exc = None if task.cancelled() else task.exception()
        self.closed = True
        self.ctx.forget(self)
        queued, self.queued = self.queued, []
        for stream in queued:
            if not stream.finished:
                stream.connect_failed(exc)
        self.ctx.flush()

    def has_room(self) -> bool:
        if self.closed or self.goaway:
            return False
        if not self.connected:
            return True  # queued until the server says how many streams it takes
        conn = self.conn
        # a connection holding more than its limit for slow readers takes no new stream: its
        # window may run out, and the new stream would wait behind the stalled ones
        return conn.held <= conn.hold_limit and conn.can_open()

    def add(self, stream: H2Stream) -> None:
        if self.connected:
            self._open(stream)
        else:
            self.queued.append(stream)

    def _open(self, stream: H2Stream) -> None:
        conn = self.conn
        if not conn.can_open():
            # the server lowered its limit: another connection takes it
            self.ctx.upstream(self.concrete, self.state).add(stream)
            return
        end = (
            stream.req_end and not stream.req_buf and not stream.resend and not stream.req_trailers
        )
        sid = conn.open(stream.headers, end, stream.req_never)
        self.streams[sid] = stream
        if end:
            stream.req_closed = True
        self.mark()
        stream.opened(self, sid)

    def reset(self, stream: H2Stream, code: int) -> None:
        """Reset ``stream``'s upstream stream (the client cancelled it, or it was answered)."""
        if self.streams.pop(stream.up_sid, None) is None:
            return
        self.blocked.pop(stream, None)
        self.conn.reset(stream.up_sid, code)
        self.mark()

    def stream_done(self) -> None:
        self.last_active = _monotonic()
        if self.streams or self.queued:
            return
        if self.goaway or self.state.closing or self.ctx.draining:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ctx.forget(self)
        if self.transport is not None:
            if not self.goaway:
                self.conn.goaway(NO_ERROR)
            self.write_out()
            self.transport.close()

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.conn.start()
        self.write_out()

    def data_received(self, data: bytes) -> None:
        self.last_active = _monotonic()
        try:
            self.conn.receive(data)
        except H2Error as exc:
            log.info("HTTP/2 protocol error from upstream %s: %s",
                     format_addr(self.state.addr), exc)  # fmt: skip
            self.goaway = True
            self.write_out()
            self._lost(f"invalid HTTP/2 from upstream: {exc}")
            if self.transport is not None:
                self.transport.close()
            self.ctx.flush()
            return
        self.mark()
        self.ctx.flush_soon()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.forget(self)
        self._lost(f"upstream closed the connection: {exc or 'EOF'}")
        self.ctx.flush()

    def _lost(self, why: str) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        self.blocked.clear()
        queued, self.queued = self.queued, []
        for stream in streams:
            stream.on_upstream_lost(why)
        for stream in queued:
            if not stream.finished:
                stream.connect_failed(ConnectionError(why))

    # -- HTTP/2 events (weft.core.h2conn.H2Handler) ---------------------------------------------

    def h2_settings(self) -> None:
        if not self.connected:
            self.connected = True
            queued, self.queued = self.queued, []
            for stream in queued:
                if stream.finished:
                    continue
                if self.has_room():
                    self._open(stream)
                else:  # more than the server takes on one connection
                    self.ctx.upstream(self.concrete, self.state).add(stream)
        else:
            for stream in list(self.blocked):
                stream.pump_request()

    def h2_headers(self, sid: int, headers: Headers, end: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        if self.conn.never_indexed:
            stream.resp_never = (stream.resp_never or []) + self.conn.never_indexed
        if not stream.status:  # this attempt's response
            stream.on_response(headers, end)
        else:  # trailers
            stream.on_response_end(headers)

    def h2_data(self, sid: int, data: bytes, end: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None or stream.resp_closed:
            if data:
                self.conn.ack(sid, len(data))
            return
        if data:
            stream.on_response_data(data)
        if end:
            stream = self.streams.get(sid)
            if stream is not None and not stream.resp_end:
                stream.on_response_end(None)

    def h2_reset(self, sid: int, code: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self.blocked.pop(stream, None)
            stream.on_upstream_reset(code)

    def h2_window(self, sid: int) -> None:
        if sid == 0:
            for stream in list(self.blocked):
                stream.pump_request()
        else:
            one = self.streams.get(sid)
            if one is not None and one in self.blocked:
                one.pump_request()

    def h2_goaway(self, last_sid: int, code: int) -> None:
        """No new streams here; those above ``last_sid`` were not processed."""
        self.goaway = True
        for sid, stream in list(self.streams.items()):
            if sid > last_sid:
                del self.streams[sid]
                self.blocked.pop(stream, None)
                stream.on_upstream_lost("upstream went away", processed=False)
        self.stream_done()

    def __repr__(self) -> str:
        return f"<Http2Upstream {format_addr(self.state.addr)} streams={len(self.streams)}>"


__all__ = [
    "ERROR_HEADER",
    "H2Stream",
    "Http2Context",
    "Http2Downstream",
    "Http2Upstream",
    "grpc_message",
]
