"""One HTTP/2 connection of the proxy, either side: its codec, its transport, batched writes, and
the flow-control pump that moves a stream's bytes from one side to the other.

Not for: streams' policy (:mod:`.stream`), either side's events (:mod:`.server`, :mod:`.client`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

from weft.core.h2conn import (
    H2Conn,
)
from weft.metrics.proxy import TcpSeries

if TYPE_CHECKING:
    from weft.proxy.protocol.http2.context import Http2Context
    from weft.proxy.protocol.http2.stream import H2Stream

_monotonic = time.monotonic

STREAM_WINDOW = 256 * 1024  # bytes one stream may have in flight into the proxy, per direction
CONNECTION_WINDOW = 4 * 1024 * 1024  # the same, all streams of one connection together
MAX_CONCURRENT_STREAMS = 1000  # streams a client may open on one connection


class Peer(asyncio.Protocol):
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


def pump(buf: deque[bytes], dst: Peer, dst_sid: int, src: Peer | None, src_sid: int) -> bool:
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
