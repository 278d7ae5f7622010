"""HTTP/1.1 to an endpoint: one pooled keep-alive client connection, one exchange at a time.

:class:`Http1Upstream` parses the response with httptools and hands its head (end-to-end lines
ready to send, hop-by-hop headers apart), body and trailers to its :class:`~.exchange.Exchange`;
a response it cannot frame safely (a bad transfer coding, an oversized head) is a broken
upstream. It says whether it may go back to the pool (:meth:`Http1Upstream.reusable`).

Not for: choosing or dialing endpoints (the logical and concrete layers), the client side.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

import httptools

from weft.proxy.outbound.concrete import Concrete
from weft.proxy.outbound.endpoint import EndpointState
from weft.proxy.protocol.http1.framing import HOP_BY_HOP, transfer_coding_error

if TYPE_CHECKING:
    from weft.proxy.protocol.http1.exchange import Exchange
    from weft.proxy.protocol.http1.server import Http1Downstream

log = logging.getLogger("weft.proxy")


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
