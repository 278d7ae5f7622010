"""One HTTP/2 stream's request and response: the HTTP/2 adapter of the logical layer.

:class:`H2Stream` inherits :class:`~weft.proxy.outbound.logical.Call` (route, timeouts,
retries, endpoint choice, error rules, accounting) and does what is HTTP/2's own: it opens a
stream on a multiplexed upstream connection, pumps DATA both ways within flow control, replays a
refused stream (RFC 9113 8.7) on another connection outside the retry budget, holds a gRPC
call's response headers while a retry on its status is possible, carries RST_STREAM both ways,
and ends a call whose ``grpc-timeout`` passed with DEADLINE_EXCEEDED trailers.

Not for: the connections (:mod:`.server`, :mod:`.client`), the policy (the logical layer).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

from weft.core.h2conn import (
    CANCEL,
    INTERNAL_ERROR,
    NO_ERROR,
    REFUSED_STREAM,
)
from weft.policy import HeaderModifier
from weft.proxy.outbound.endpoint import EndpointState
from weft.proxy.outbound.logical import (
    ERROR_HEADER,
    GRPC_DEADLINE_EXCEEDED,
    GRPC_ENDPOINT_FAILURES,
    GRPC_UNAVAILABLE,
    REPLAY_LIMIT,
    Call,
    Headers,
)
from weft.proxy.protocol.http2.grpc import (
    GRPC_RETRY_CODES,
    grpc_message,
    grpc_timeout_value,
    is_grpc,
    parse_grpc_timeout,
    trailer_status,
)
from weft.proxy.protocol.http2.peer import Peer, pump

if TYPE_CHECKING:
    from weft.proxy.protocol.http2.client import Http2Upstream
    from weft.proxy.protocol.http2.server import Http2Downstream

_monotonic = time.monotonic

# times a stream the server never processed is sent again (outside any retry policy): a server
# closing a connection refuses a stream once; one that refuses everything must not loop
MAX_REFUSED_RETRIES = 3


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
        self.grpc = is_grpc(headers)
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
        if resend and not pump(resend, up, self.up_sid, None, self.sid):
            up.blocked[self] = None
            return
        if self.req_buf and not pump(self.req_buf, up, self.up_sid, self.down, self.sid):
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

    def pump_to(self, peer: Peer) -> None:
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
            self.grpc_status = trailer_status(headers)
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
            self.grpc_status = trailer_status(trailers)
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
        if self.resp_buf and not pump(self.resp_buf, down, self.sid, self.up, self.up_sid):
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
