"""HTTP/2 to an endpoint: one multiplexed client connection (prior-knowledge h2c, or h2 inside
mesh TLS) carrying many streams; streams wait for the server's first SETTINGS; GOAWAY and a lost
connection hand each stream back to be answered, retried or replayed.

Not for: pooling (:mod:`.context`), a stream's policy (:mod:`.stream`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from weft.addr import format_addr
from weft.core.h2conn import (
    NO_ERROR,
    H2Conn,
    H2Error,
)
from weft.proxy.outbound.concrete import Concrete
from weft.proxy.outbound.endpoint import EndpointState
from weft.proxy.outbound.logical import (
    Headers,
)
from weft.proxy.protocol.http2.peer import CONNECTION_WINDOW, STREAM_WINDOW, Peer

if TYPE_CHECKING:
    from weft.proxy.protocol.http2.context import Http2Context
    from weft.proxy.protocol.http2.stream import H2Stream

log = logging.getLogger("weft.proxy")
_monotonic = time.monotonic


class Http2Upstream(Peer):
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
