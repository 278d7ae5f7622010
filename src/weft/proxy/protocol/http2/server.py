"""HTTP/2 from the client: the server side of one client connection (prior-knowledge h2c, or h2
inside mesh TLS): a stream per request, dispatched after the read that opened it (so a
RST_STREAM read with its HEADERS costs the upstream nothing), authorization per stream, GOAWAY
drain.

Not for: a stream's policy and relay (:mod:`.stream`), upstream connections (:mod:`.client`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from weft.core.h2conn import (
    CANCEL,
    NO_ERROR,
    REFUSED_STREAM,
    H2Conn,
    H2Error,
)
from weft.metrics.proxy import LabelItems
from weft.proxy.outbound.concrete import Concrete
from weft.proxy.outbound.logical import (
    Headers,
)
from weft.proxy.protocol.http2.peer import (
    CONNECTION_WINDOW,
    MAX_CONCURRENT_STREAMS,
    STREAM_WINDOW,
    Peer,
)
from weft.proxy.protocol.http2.stream import H2Stream

if TYPE_CHECKING:
    from weft.proxy.accept.listen import ConnCounts
    from weft.proxy.inbound.policy import HttpConn
    from weft.proxy.protocol.http2.context import Http2Context

log = logging.getLogger("weft.proxy")
_monotonic = time.monotonic


class Http2Downstream(Peer):
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
        # the listener's open connections per concrete (released when this one ends)
        self.counts: ConnCounts | None = None
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
        counts, self.counts = self.counts, None
        if counts is not None:
            counts.connection_closed(self.concrete.name, self.tcp)
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
