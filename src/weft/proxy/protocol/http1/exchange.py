"""One HTTP/1.1 request and its response: the HTTP/1 adapter of the logical layer.

:class:`Exchange` inherits :class:`~weft.proxy.outbound.logical.Call` (route, timeouts,
retries, endpoint choice, error rules, accounting) and does what is HTTP/1's own: it streams the
request and response bodies with backpressure (a full write buffer on one side pauses reading on
the other; request bytes waiting for a connection are bounded by ``buffer_high``), keeps the
body for a replay (up to ``REPLAY_LIMIT``), re-frames both messages (RFC 9112: hop-by-hop
headers dropped, chunked bodies re-chunked with their trailers, close-delimited responses sent
chunked), takes a keep-alive connection from its endpoint's pool (or the accept path's early
connection, or dials one), and turns a 101 into a TCP tunnel.

Not for: parsing the client's bytes or the connection's life (:mod:`.server`), the upstream
parser (:mod:`.client`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

from weft.addr import format_addr
from weft.policy import HeaderModifier
from weft.proxy.outbound.endpoint import EndpointState, PooledConn
from weft.proxy.outbound.logical import REPLAY_LIMIT, Call, Headers
from weft.proxy.protocol.http1.client import Http1Upstream
from weft.proxy.protocol.http1.framing import (
    FRAMING,
    REDIRECT_REASONS,
    STANDARD_CONNECTION_TOKENS,
    chunk,
    error_response,
    modify_lines,
    trailer_block,
)

if TYPE_CHECKING:
    from weft.proxy.protocol.http1.server import Http1Downstream

log = logging.getLogger("weft.proxy")
access_log = logging.getLogger("weft.access")

DISCARD_LIMIT = 1024 * 1024  # request body read and dropped after an early answer, at most
_monotonic = time.monotonic


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
        up.transport.write(chunk(data) if self.chunked_in and data else data)

    def _send_end(self, up: Http1Upstream) -> None:
        if self.chunked_in:
            up.transport.write(b"0\r\n" + trailer_block(self.trailers) + b"\r\n")

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
        framing = [(n, v) for n, v in pairs if n.lower() in FRAMING]
        others = [(n, v) for n, v in pairs if n.lower() not in FRAMING]
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
            lines = modify_lines(self.resp_mod, lines)
        if not keep_alive:
            self.closing_up = True
        out = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        if hop:
            listed: set[bytes] = set()
            for lname, value in hop:
                if lname == b"connection":
                    listed.update(t.strip().lower() for t in value.split(b","))
            listed -= STANDARD_CONNECTION_TOKENS
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
        self.down.write(chunk(data) if self.chunked_out else data)

    def on_response_end(self, trailers: Headers) -> None:
        if self.interim:
            self.interim = False
            return
        if self.finished or (self.status == 101 and self.upgrade):
            return  # a 101 ends in on_upgraded
        if self.chunked_out:
            self.down.write(b"0\r\n" + trailer_block(trailers) + b"\r\n")
        self._complete()

    def on_upgraded(self, upstream_rest: bytes) -> None:
        """The upstream said 101: both connections become one TCP tunnel."""
        from weft.proxy.protocol.tcp import Relay

        up, state = self.up, self.state
        assert up is not None and state is not None
        self.down.uncork()  # the 101 goes out before any tunnelled byte
        self._account()
        up.exchange = None
        self.up = None
        down = self.down
        down.ctx.connections.discard(down)
        series = self.concrete.tcp_series(state)

        def closed(_: Relay) -> None:  # the client connection's own accounting ends with it
            down.release()

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
                REDIRECT_REASONS.get(status, b"Redirect"),
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
