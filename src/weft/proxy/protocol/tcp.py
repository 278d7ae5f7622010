"""Opaque TCP: a bidirectional relay between two transports.

Bytes read from one side are written to the other. A full write buffer on one side pauses reading
on the other (backpressure, so memory stays bounded whatever the peers' speeds). A FIN from one
side is passed on as a half-close (``write_eof``) and the other direction keeps flowing; the relay
closes when both directions are done or either side fails. Byte counts go to the destination's
:class:`~weft.metrics.proxy.TcpSeries` when the relay ends.

Used for opaque connections and for HTTP ``Upgrade`` tunnels (a relay can take over transports
that already carry another protocol). Not for: choosing where to connect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from weft.metrics.proxy import TcpSeries


class _Side(asyncio.Protocol):
    __slots__ = ("index", "relay")

    def __init__(self, relay: Relay, index: int) -> None:
        self.relay = relay
        self.index = index

    def data_received(self, data: bytes) -> None:
        self.relay.forward(self.index, data)

    def eof_received(self) -> bool:
        return self.relay.eof(self.index)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.lost(self.index, exc)

    def pause_writing(self) -> None:
        self.relay.transports[1 - self.index].pause_reading()

    def resume_writing(self) -> None:
        other = self.relay.transports[1 - self.index]
        if not other.is_closing():
            other.resume_reading()


class Relay:
    """Relay bytes between ``client`` and ``server`` until both directions are done."""

    def __init__(
        self,
        client: asyncio.Transport,
        server: asyncio.Transport,
        series: TcpSeries | None,
        *,
        src: TcpSeries | None = None,
        client_rest: bytes = b"",
        server_rest: bytes = b"",
        on_close: Callable[[Relay], None] | None = None,
    ) -> None:
        self.transports = (client, server)
        self.series = series
        self.src = src
        self.on_close = on_close
        self.counts = [0, 0]  # bytes read from client, bytes read from server
        self._eof = [False, False]
        self._closed = False
        if series is not None:
            series.opened()
        client.set_protocol(_Side(self, 0))
        server.set_protocol(_Side(self, 1))
        if client_rest:
            self.forward(0, client_rest)
        if server_rest:
            self.forward(1, server_rest)
        for t in self.transports:
            if not t.is_closing():
                t.resume_reading()

    def forward(self, index: int, data: bytes) -> None:
        n = len(data)
        self.counts[index] += n
        # live byte counts: dst read = what the server sent, src read = what the client sent
        if self.series is not None:
            if index:
                self.series.read_bytes += n
            else:
                self.series.write_bytes += n
        if self.src is not None:
            if index:
                self.src.write_bytes += n
            else:
                self.src.read_bytes += n
        target = self.transports[1 - index]
        if not target.is_closing():
            target.write(data)

    def eof(self, index: int) -> bool:
        self._eof[index] = True
        target = self.transports[1 - index]
        if self._eof[1 - index]:
            self.close()
            return False
        if not target.is_closing() and target.can_write_eof():
            target.write_eof()
        return True

    def lost(self, index: int, exc: Exception | None) -> None:
        if exc is not None:
            self.transports[1 - index].abort()
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for t in self.transports:
            t.close()
        if self.series is not None:
            self.series.closed()
        if self.on_close is not None:
            self.on_close(self)

    def __repr__(self) -> str:
        return f"<Relay client->server={self.counts[0]}B server->client={self.counts[1]}B>"
