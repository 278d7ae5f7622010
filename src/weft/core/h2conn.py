"""An HTTP/2 connection (RFC 9113), sans-I/O: frames in, callbacks out, frames to send.

The proxy's HTTP/2 codec, for both of its sides: a server (a client's connection to the proxy)
and a client (the proxy's multiplexed connection to an endpoint, or to the peer proxy inside
mesh TLS). :meth:`H2Conn.receive` takes bytes as they arrive and calls the owner
(:class:`H2Handler`) once per message event; whatever must be sent (acknowledgements, frames
the owner asked for) accumulates until :meth:`H2Conn.take`, so the frames of one read go out in
one write.

Why not ``h2`` (python-hyper), which the proxy first used: measured on this machine, ``h2``
spends 175 us of CPU per request on each side of a connection (a gRPC request, its response and
trailers) and the proxy runs two such sides per request; Envoy proxies the same call for ~40 us in
all. ``h2``'s generality (an event object per frame, a state machine of enums, validation in
generators) is what costs. This module implements what a proxy needs, with plain integers and
dictionaries, compiled by mypyc; ``h2`` remains the reference peer of its tests.

What it does:
- the connection preface, SETTINGS (applied, acknowledged), PING (answered), GOAWAY (reported:
  the streams it covers may finish; new ones are the owner's to refuse), PRIORITY (ignored),
  unknown frame types and flags (ignored), PUSH_PROMISE (refused: push is disabled);
- HEADERS and CONTINUATION through HPACK (:mod:`weft.core.hpack`), with the checks RFC 9113
  8.1-8.3 asks of a message: pseudo-headers first, known and not repeated, the ones a request
  needs present, no connection-specific fields, ``te`` only ``trailers``, trailers with
  END_STREAM and without pseudo-headers, a request's ``content-length`` equal to its DATA;
  client side: 1xx responses are skipped;
- flow control both ways. Receiving: the owner returns what it has passed on (:meth:`ack`); a
  stream's window is reopened once half of it is consumed. The connection's window is reopened
  as DATA arrives as long as the connection holds less than ``hold_limit`` bytes the owner has
  not acknowledged, then only as the owner acknowledges: so a few slow streams cannot starve the
  others of the shared connection window, and memory stays bounded (at most ``hold_limit`` plus
  the connection window per connection). Sending: :meth:`window` says how much a stream may
  send; WINDOW_UPDATE is reported (``h2_window``), a changed initial window with the SETTINGS
  that changed it (``h2_settings``);
- errors: a stream error resets the stream (RST_STREAM; the owner hears ``h2_reset`` if it knew
  the stream); a connection error queues GOAWAY with its code and raises :class:`H2Error`;
- floods (:mod:`weft.core.h2limits`, which lists the limits and their defaults, Envoy's and
  nghttp2's): control frames queued in answer to the peer (at most 1000 unsent: the owner says
  when the peer stops reading, :meth:`H2Conn.output_blocked`), empty frames in a row, PRIORITY
  and WINDOW_UPDATE frames beyond what the streams and the DATA sent justify, SETTINGS frames
  of more than 32 entries, and streams the peer resets within a second, unanswered ("rapid
  reset": half of the recent ones; the owner sets :attr:`H2Conn.now`) end the connection with
  GOAWAY ENHANCE_YOUR_CALM. Counters are plain integers per connection (``guard``); the limits
  are the ``limits`` argument.

Not for: I/O, timers, what streams mean (see :mod:`weft.proxy.protocol.http2`), server push,
priorities.
"""

from __future__ import annotations

from typing import Final, Protocol

from weft.core.h2limits import DEFAULT_LIMITS, FloodGuard, H2Limits
from weft.core.hpack import Decoder, Encoder, HpackError

Headers = list[tuple[bytes, bytes]]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9
# flags
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20
# error codes (RFC 9113 7)
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
SETTINGS_TIMEOUT: Final = 0x4
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB
# settings
_HEADER_TABLE_SIZE: Final = 0x1
_ENABLE_PUSH: Final = 0x2
_MAX_CONCURRENT_STREAMS: Final = 0x3
_INITIAL_WINDOW_SIZE: Final = 0x4
_MAX_FRAME_SIZE: Final = 0x5
_MAX_HEADER_LIST_SIZE: Final = 0x6

DEFAULT_WINDOW: Final = 65535
MAX_WINDOW: Final = 2**31 - 1
MIN_FRAME: Final = 16384
MAX_FRAME: Final = 2**24 - 1
MAX_HEADER_BLOCK: Final = 256 * 1024  # encoded bytes of one header block (with CONTINUATIONs)

# RFC 9113 8.2.2: fields that are only about one HTTP/1 connection
_CONNECTION_FIELDS: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
# without :protocol: this side never sends SETTINGS_ENABLE_CONNECT_PROTOCOL, so a request that
# carries it is malformed (RFC 8441 4)
_REQUEST_PSEUDO: Final = frozenset({b":method", b":scheme", b":authority", b":path"})
# not a frame flag (those are 8 bits): a header block whose stream depends on itself
_SELF_DEPENDENT: Final = 0x100


class H2Error(Exception):
    """A connection error: GOAWAY with ``code`` is queued; the connection must close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class H2Handler(Protocol):
    """What the owner of an :class:`H2Conn` hears (called from :meth:`H2Conn.receive`)."""

    def h2_headers(self, sid: int, headers: Headers, end: bool) -> None:
        """A request (server side), the final response (client side), or trailers (a second
        HEADERS; ``end`` is then True)."""

    def h2_data(self, sid: int, data: bytes, end: bool) -> None:
        """Body bytes (never empty unless ``end``); the owner :meth:`H2Conn.ack` s them once
        passed on."""

    def h2_reset(self, sid: int, code: int) -> None:
        """The stream ended abnormally: the peer reset it, or it broke the protocol (then the
        connection reset it)."""

    def h2_window(self, sid: int) -> None:
        """A send window grew: stream ``sid``'s, or (0) the connection's or every stream's."""

    def h2_settings(self) -> None:
        """The peer's SETTINGS were applied (the first one: the connection is established)."""

    def h2_goaway(self, last_sid: int, code: int) -> None:
        """The peer sent GOAWAY: streams above ``last_sid`` were not and will not be processed."""


class _Stream:
    """One stream's state: its windows and which of its halves are closed."""

    __slots__ = (
        "answered",
        "expect_len",
        "got_headers",
        "local_closed",
        "opened_at",
        "received",
        "recv_window",
        "remote_closed",
        "send_window",
        "unacked",
    )

    def __init__(self, send_window: int, recv_window: int) -> None:
        self.send_window = send_window
        self.recv_window = recv_window  # what the peer may still send
        self.unacked = 0  # consumed by the owner, not yet returned to the peer
        self.local_closed = False  # we sent END_STREAM
        self.remote_closed = False  # the peer sent END_STREAM
        self.got_headers = False  # the request / final response arrived (next: trailers)
        self.expect_len = -1  # the request's content-length (server side), -1: none
        self.received = 0  # DATA bytes received (for content-length)
        self.answered = False  # we sent headers on it (a reset is no longer premature)
        self.opened_at = 0.0  # the peer's streams: H2Conn.now when it opened it


def _frame(length: int, ftype: int, flags: int, sid: int) -> bytes:
    return ((length << 48) | (ftype << 40) | (flags << 32) | sid).to_bytes(9, "big")


class H2Conn:
    """One HTTP/2 connection's protocol state (either side)."""

    def __init__(
        self,
        handler: H2Handler,
        *,
        client: bool,
        stream_window: int = DEFAULT_WINDOW,
        connection_window: int = DEFAULT_WINDOW,
        max_streams: int = 100,
        hold_limit: int = 4 * 1024 * 1024,
        max_header_list: int = 65536,
        limits: H2Limits | None = None,
    ) -> None:
        self.handler = handler
        self.client = client
        self.out = bytearray()
        self._inbuf = b""
        self._preface = client  # the server waits for the client's preface
        self._got_settings = False
        self.dead = False  # a connection error happened
        self.streams: dict[int, _Stream] = {}
        self.next_sid = 1 if client else 2
        self.highest_inbound = 0
        self.goaway_received = False
        self.goaway_last = MAX_WINDOW
        # ours
        self.local_window = stream_window  # SETTINGS_INITIAL_WINDOW_SIZE we advertise
        self.local_max_streams = max_streams
        self.local_max_frame = MIN_FRAME
        self.connection_window = connection_window
        self.recv_window = DEFAULT_WINDOW  # the connection's: what the peer may still send
        self.held = 0  # bytes received, not yet acknowledged by the owner
        self.owed = 0  # bytes received whose connection window is not yet reopened
        self.hold_limit = hold_limit
        # the peer's
        self.remote_window = DEFAULT_WINDOW
        self.remote_max_streams = MAX_WINDOW
        self.remote_max_frame = MIN_FRAME
        self.send_window = DEFAULT_WINDOW  # the connection's
        self.decoder = Decoder(max_list_size=max_header_list)
        self.encoder = Encoder()
        # a header block in CONTINUATIONs: its stream, flags and fragments so far
        self._cont_sid = 0
        self._cont_flags = 0
        self._cont = bytearray()
        self.guard = FloodGuard(DEFAULT_LIMITS if limits is None else limits)
        # the time (seconds) of the bytes being received, set by the owner (it has the clock):
        # how long a stream the peer resets lived (h2limits: ``min_stream_life``); 0 if never set
        self.now = 0.0

    # -- sending ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Queue our preface: (client) the magic, SETTINGS, and the connection window's
        increase."""
        out = self.out
        if self.client:
            out += PREFACE
        settings = bytearray()
        for ident, value in (
            (_ENABLE_PUSH, 0),
            (_INITIAL_WINDOW_SIZE, self.local_window),
            (_MAX_CONCURRENT_STREAMS, self.local_max_streams),
            (_MAX_HEADER_LIST_SIZE, self.decoder.max_list_size),
        ):
            if ident == _MAX_CONCURRENT_STREAMS and self.client:
                continue
            settings += ident.to_bytes(2, "big") + value.to_bytes(4, "big")
        out += _frame(len(settings), SETTINGS, 0, 0)
        out += settings
        grow = self.connection_window - DEFAULT_WINDOW
        if grow > 0:
            self.recv_window += grow
            out += _frame(4, WINDOW_UPDATE, 0, 0)
            out += grow.to_bytes(4, "big")

    def take(self) -> bytes:
        """What is queued to send (and forget it): unless :meth:`output_blocked`, the control
        frames in it are no longer counted as unsent."""
        if not self.guard.blocked:
            self.guard.control_out = 0
        if not self.out:
            return b""
        data = bytes(self.out)
        self.out.clear()
        return data

    def output_blocked(self, blocked: bool) -> None:
        """Whether the peer stopped reading (the transport's buffer is full): while it is
        blocked, what :meth:`take` returns is still counted against ``max_control_out`` until
        the peer reads again."""
        guard = self.guard
        guard.blocked = blocked
        if not blocked:
            guard.control_out = 0

    def can_open(self) -> bool:
        """Whether a new stream may be opened (client side): under the peer's limit, no
        GOAWAY, stream ids left."""
        return (
            not self.goaway_received
            and not self.dead
            and len(self.streams) < self.remote_max_streams
            and self.next_sid <= MAX_WINDOW
        )

    def open(self, headers: Headers, end: bool, never: Headers | None = None) -> int:
        """Open a stream with a request (client side): its id. ``never``: fields to send "never
        indexed" (those the request came with: :attr:`never_indexed`)."""
        sid = self.next_sid
        self.next_sid = sid + 2
        stream = _Stream(self.remote_window, self.local_window)
        self.streams[sid] = stream
        self.guard.header_blocks += 1
        self._headers(sid, headers, end, never)
        if end:
            stream.local_closed = True
        return sid

    def send_headers(
        self, sid: int, headers: Headers, end: bool, never: Headers | None = None
    ) -> bool:
        """A response or trailers on ``sid`` (``never``: as for :meth:`open`); False when the
        stream is gone or closed on our side."""
        stream = self.streams.get(sid)
        if stream is None or stream.local_closed:
            return False
        stream.answered = True
        self._headers(sid, headers, end, never)
        if end:
            self._close_local(sid, stream)
        return True

    @property
    def never_indexed(self) -> Headers:
        """The fields of the header block just received that the peer sent "never indexed"
        (RFC 7541 7.1.3; usually none), valid during ``h2_headers``: a proxy passes them to
        :meth:`open` or :meth:`send_headers` on the other side, which sends them the same way
        (RFC 7541 6.2.3)."""
        return self.decoder.never_indexed

    def _headers(self, sid: int, headers: Headers, end: bool, never: Headers | None) -> None:
        block = self.encoder.encode(headers, never)
        out = self.out
        size = len(block)
        limit = self.remote_max_frame
        flags = END_STREAM if end else 0
        if size <= limit:
            out += _frame(size, HEADERS, flags | END_HEADERS, sid)
            out += block
            return
        out += _frame(limit, HEADERS, flags, sid)
        out += block[:limit]
        pos = limit
        while pos < size:
            chunk = block[pos : pos + limit]
            pos += len(chunk)
            out += _frame(len(chunk), CONTINUATION, END_HEADERS if pos >= size else 0, sid)
            out += chunk

    def window(self, sid: int) -> int:
        """How many DATA bytes ``sid`` may send now; -1 when the stream cannot send any more."""
        stream = self.streams.get(sid)
        if stream is None or stream.local_closed:
            return -1
        window = stream.send_window
        if self.send_window < window:
            window = self.send_window
        return window if window > 0 else 0

    def send_data(self, sid: int, data: bytes, end: bool = False) -> bool:
        """DATA on ``sid`` (the caller keeps to :meth:`window`); False when the stream is gone."""
        stream = self.streams.get(sid)
        if stream is None or stream.local_closed:
            return False
        size = len(data)
        out = self.out
        limit = self.remote_max_frame
        guard = self.guard
        if size <= limit:
            out += _frame(size, DATA, END_STREAM if end else 0, sid)
            out += data
            guard.data_sent += 1
        else:
            pos = 0
            while pos < size:
                chunk = data[pos : pos + limit]
                pos += len(chunk)
                out += _frame(len(chunk), DATA, END_STREAM if end and pos >= size else 0, sid)
                out += chunk
                guard.data_sent += 1
        stream.send_window -= size
        self.send_window -= size
        if end:
            self._close_local(sid, stream)
        return True

    def end_stream(self, sid: int) -> bool:
        """End our side of ``sid`` (an empty DATA with END_STREAM)."""
        return self.send_data(sid, b"", True)

    def reset(self, sid: int, code: int) -> bool:
        """RST_STREAM ``sid`` with ``code``; False when the stream was already gone."""
        stream = self.streams.pop(sid, None)
        if stream is None:
            return False
        self.out += _frame(4, RST_STREAM, 0, sid)
        self.out += code.to_bytes(4, "big")
        return True

    def goaway(self, code: int = NO_ERROR, last_sid: int = -1) -> None:
        """GOAWAY: no stream above ``last_sid`` (default: the highest the peer opened) will be
        processed. The connection stays usable for the streams below it."""
        last = self.highest_inbound if last_sid < 0 else last_sid
        self.out += _frame(8, GOAWAY, 0, 0)
        self.out += last.to_bytes(4, "big") + code.to_bytes(4, "big")

    def ack(self, sid: int, size: int) -> None:
        """The owner passed ``size`` bytes of ``sid``'s DATA on: reopen the windows."""
        self.held -= size
        stream = self.streams.get(sid)
        if stream is not None and not stream.remote_closed:
            self._reopen_stream(sid, stream, size)
        if self.owed:
            self._reopen()

    def _reopen(self) -> None:
        """Reopen the connection window for what arrived, except what is held beyond
        ``hold_limit``; in steps of at least half the window."""
        over = self.held - self.hold_limit
        give = self.owed - over if over > 0 else self.owed
        if give >= self.connection_window >> 1:
            self.owed -= give
            self.recv_window += give
            self.out += _frame(4, WINDOW_UPDATE, 0, 0)
            self.out += give.to_bytes(4, "big")

    def _close_local(self, sid: int, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self.streams[sid]

    def _close_remote(self, sid: int, stream: _Stream) -> None:
        stream.remote_closed = True
        if stream.local_closed:
            del self.streams[sid]

    # -- receiving -------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Handle bytes from the peer; raises :class:`H2Error` on a connection error."""
        if self.dead:
            return
        if self._inbuf:
            data = self._inbuf + data
            self._inbuf = b""
        pos = 0
        end = len(data)
        if not self._preface:
            if end < 24:
                if not PREFACE.startswith(data):
                    self._fail(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self._inbuf = data
                return
            if data[:24] != PREFACE:
                self._fail(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self._preface = True
            pos = 24
        limit = self.local_max_frame
        while end - pos >= 9:
            length = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
            if length > limit:
                self._fail(FRAME_SIZE_ERROR, f"frame of {length} bytes above {limit}")
            start = pos + 9
            if end - start < length:
                break
            ftype = data[pos + 3]
            flags = data[pos + 4]
            sid = (
                ((data[pos + 5] & 0x7F) << 24)
                | (data[pos + 6] << 16)
                | (data[pos + 7] << 8)
                | data[pos + 8]
            )
            pos = start + length
            if not self._got_settings and ftype != SETTINGS:
                self._fail(PROTOCOL_ERROR, "the first frame is not SETTINGS")
            if self._cont_sid and ftype != CONTINUATION:
                self._fail(PROTOCOL_ERROR, "a header block interrupted")
            if ftype == DATA:
                self._on_data(data, start, length, flags, sid)
            elif ftype == HEADERS:
                self._on_headers(data, start, length, flags, sid)
            elif ftype == WINDOW_UPDATE:
                self._on_window_update(data, start, length, sid)
            elif ftype == RST_STREAM:
                self._on_rst(data, start, length, sid)
            elif ftype == SETTINGS:
                self._on_settings(data, start, length, flags, sid)
            elif ftype == PING:
                if length != 8 or sid:
                    self._fail(FRAME_SIZE_ERROR if length != 8 else PROTOCOL_ERROR, "bad PING")
                if not flags & ACK:
                    if self.guard.control():
                        self._fail(ENHANCE_YOUR_CALM, "PING flood")
                    self.out += _frame(8, PING, ACK, 0)
                    self.out += data[start:pos]
            elif ftype == CONTINUATION:
                self._on_continuation(data, start, length, flags, sid)
            elif ftype == GOAWAY:
                self._on_goaway(data, start, length, sid)
            elif ftype == PRIORITY:
                if not sid:
                    self._fail(PROTOCOL_ERROR, "PRIORITY on stream 0")
                if self.guard.priority():
                    self._fail(ENHANCE_YOUR_CALM, "PRIORITY flood")
                elif length != 5:
                    self._stream_error(sid, FRAME_SIZE_ERROR)
                elif _dependency(data, start) == sid and sid in self.streams:
                    self._stream_error(sid, PROTOCOL_ERROR)  # RFC 9113 5.3.1
            elif ftype == PUSH_PROMISE:
                self._fail(PROTOCOL_ERROR, "PUSH_PROMISE, and push is disabled")
            # unknown frame types are ignored (RFC 9113 5.5)
            if self.dead:
                return
        if pos < end:
            self._inbuf = data[pos:]

    def _fail(self, code: int, message: str) -> None:
        """A connection error: GOAWAY, and raise."""
        if not self.dead:
            self.dead = True
            self.goaway(code)
        raise H2Error(code, message)

    def _stream_error(self, sid: int, code: int) -> None:
        """Reset ``sid`` (it broke the protocol) and tell the owner."""
        if self.guard.control():
            self._fail(ENHANCE_YOUR_CALM, "RST_STREAM flood (streams reset for their errors)")
        known = sid in self.streams
        self.streams.pop(sid, None)
        self.out += _frame(4, RST_STREAM, 0, sid)
        self.out += code.to_bytes(4, "big")
        if known:
            self.handler.h2_reset(sid, code)

    def _is_idle(self, sid: int) -> bool:
        """Whether ``sid`` was never opened (by either side)."""
        if (sid & 1) == (1 if self.client else 0):  # ours
            return sid >= self.next_sid
        return sid > self.highest_inbound

    def _on_data(self, data: bytes, start: int, length: int, flags: int, sid: int) -> None:
        if not sid:
            self._fail(PROTOCOL_ERROR, "DATA on stream 0")
        if length > self.recv_window:
            self._fail(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self.recv_window -= length
        stream = self.streams.get(sid)
        payload = start
        size = length
        if flags & PADDED:
            if not length:
                self._fail(FRAME_SIZE_ERROR, "padded DATA without its pad length")
            pad = data[start]
            if pad >= length:
                self._fail(PROTOCOL_ERROR, "padding longer than the frame")
            payload += 1
            size -= 1 + pad
        if size or flags & END_STREAM:
            self.guard.empty_frames = 0
        elif self.guard.empty():
            self._fail(ENHANCE_YOUR_CALM, "empty DATA frames in a row")
        if stream is None or stream.remote_closed:
            if stream is None and self._is_idle(sid):
                self._fail(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            self._credit(length)  # the connection's window is ours to give back
            if stream is not None:
                self._stream_error(sid, STREAM_CLOSED)
            return
        if length > stream.recv_window:
            self._credit(length)
            self._stream_error(sid, FLOW_CONTROL_ERROR)
            return
        stream.recv_window -= length
        if not stream.got_headers:
            self._credit(length)
            self._stream_error(sid, PROTOCOL_ERROR)
            return
        end = bool(flags & END_STREAM)
        stream.received += size
        if stream.expect_len >= 0 and (
            stream.received > stream.expect_len or (end and stream.received != stream.expect_len)
        ):
            self._credit(length)
            self._stream_error(sid, PROTOCOL_ERROR)
            return
        self.held += size
        self.owed += size
        if length != size:  # the padding: consumed at once
            self._credit(length - size, sid, stream)
        elif self.owed >= self.connection_window >> 1:
            self._reopen()
        if end:
            self._close_remote(sid, stream)
        if size or end:
            self.handler.h2_data(sid, data[payload : payload + size], end)

    def _credit(self, size: int, sid: int = 0, stream: _Stream | None = None) -> None:
        """Reopen the windows for ``size`` bytes the owner never sees (padding, DATA of a
        finished stream)."""
        if not size:
            return
        self.owed += size
        if stream is not None:
            self._reopen_stream(sid, stream, size)
        self._reopen()

    def _reopen_stream(self, sid: int, stream: _Stream, size: int) -> None:
        """``size`` more of the stream's bytes are done with: reopen its window once that adds
        up to half of it."""
        unacked = stream.unacked + size
        if unacked >= self.local_window >> 1:
            stream.unacked = 0
            stream.recv_window += unacked
            self.out += _frame(4, WINDOW_UPDATE, 0, sid)
            self.out += unacked.to_bytes(4, "big")
        else:
            stream.unacked = unacked

    def _on_headers(self, data: bytes, start: int, length: int, flags: int, sid: int) -> None:
        if not sid:
            self._fail(PROTOCOL_ERROR, "HEADERS on stream 0")
        pos = start
        end = start + length
        if flags & PADDED:
            if not length:
                self._fail(FRAME_SIZE_ERROR, "padded HEADERS without its pad length")
            end -= data[start]
            pos += 1
        if flags & PRIORITY_FLAG:
            if pos + 4 <= end and _dependency(data, pos) == sid:
                flags |= _SELF_DEPENDENT  # the block is decoded still: HPACK stays in step
            pos += 5
        if pos > end:
            self._fail(PROTOCOL_ERROR, "HEADERS padding longer than the frame")
        if pos < end or flags & END_STREAM:
            self.guard.empty_frames = 0
        elif self.guard.empty():
            self._fail(ENHANCE_YOUR_CALM, "empty HEADERS frames in a row")
        if not flags & END_HEADERS:
            self._cont_sid = sid
            self._cont_flags = flags
            self._cont = bytearray(data[pos:end])
            return
        self._header_block(sid, flags, data[pos:end])

    def _on_continuation(self, data: bytes, start: int, length: int, flags: int, sid: int) -> None:
        if not self._cont_sid or sid != self._cont_sid:
            self._fail(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        if length:
            self.guard.empty_frames = 0
        elif self.guard.empty():
            self._fail(ENHANCE_YOUR_CALM, "empty CONTINUATION frames in a row")
        self._cont += data[start : start + length]
        if len(self._cont) > MAX_HEADER_BLOCK:
            self._fail(ENHANCE_YOUR_CALM, "header block above 256 KiB")
        if flags & END_HEADERS:
            block = bytes(self._cont)
            self._cont = bytearray()
            self._cont_sid = 0
            self._header_block(sid, self._cont_flags, block)

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        self.guard.header_blocks += 1
        try:
            headers = self.decoder.decode(block)
        except HpackError as exc:
            self._fail(COMPRESSION_ERROR, str(exc))
            return
        end = bool(flags & END_STREAM)
        decoder = self.decoder
        stream = self.streams.get(sid)
        if stream is None:
            if self.client or not self._is_idle(sid):
                if self._is_idle(sid):
                    self._fail(PROTOCOL_ERROR, f"HEADERS on stream {sid}, which we never opened")
                return  # a stream we reset or finished: its header block kept HPACK in step
            if not sid & 1:
                self._fail(PROTOCOL_ERROR, f"a client opened the even stream {sid}")
            self.highest_inbound = sid
            if len(self.streams) >= self.local_max_streams:
                self._stream_error(sid, REFUSED_STREAM)
                return
            # registered once its request is valid: the owner never hears of a malformed one
            stream = _Stream(self.remote_window, self.local_window)
        elif stream.remote_closed:
            self._stream_error(sid, STREAM_CLOSED)
            return
        if decoder.too_large or decoder.malformed is not None or flags & _SELF_DEPENDENT:
            self._stream_error(sid, PROTOCOL_ERROR)
            return
        if stream.got_headers:  # trailers
            if (
                not end
                or not _valid_trailers(headers)
                or (stream.expect_len >= 0 and stream.received != stream.expect_len)
            ):
                self._stream_error(sid, PROTOCOL_ERROR)
                return
        else:
            if self.client:
                status = _response_status(headers)
                if status < 0:
                    self._stream_error(sid, PROTOCOL_ERROR)
                    return
                if status < 200:  # informational: skipped (the final response follows)
                    if end:
                        self._stream_error(sid, PROTOCOL_ERROR)
                    return
            else:
                expect = _request_checks(headers)
                if expect < -1 or (end and expect > 0):
                    self._stream_error(sid, PROTOCOL_ERROR)
                    return
                stream.expect_len = expect
                self.streams[sid] = stream
                stream.opened_at = self.now
                self.guard.opened += 1
            stream.got_headers = True
        if end:
            self._close_remote(sid, stream)
        self.handler.h2_headers(sid, headers, end)

    def _on_window_update(self, data: bytes, start: int, length: int, sid: int) -> None:
        if length != 4:
            self._fail(FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes long")
        if self.guard.window_update():
            self._fail(ENHANCE_YOUR_CALM, "WINDOW_UPDATE flood")
        grow = int.from_bytes(data[start : start + 4], "big") & 0x7FFFFFFF
        if not sid:
            if not grow:
                self._fail(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += grow
            if self.send_window > MAX_WINDOW:
                self._fail(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            self.handler.h2_window(0)
            return
        stream = self.streams.get(sid)
        if stream is None:
            if self._is_idle(sid):
                self._fail(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            return
        if not grow:
            self._stream_error(sid, PROTOCOL_ERROR)
            return
        stream.send_window += grow
        if stream.send_window > MAX_WINDOW:
            self._stream_error(sid, FLOW_CONTROL_ERROR)
            return
        self.handler.h2_window(sid)

    def _on_rst(self, data: bytes, start: int, length: int, sid: int) -> None:
        if length != 4:
            self._fail(FRAME_SIZE_ERROR, "RST_STREAM not 4 bytes long")
        if not sid:
            self._fail(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        code = int.from_bytes(data[start : start + 4], "big")
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self.handler.h2_reset(sid, code)
            # a stream the peer opened and reset soon, before we answered: "rapid reset" if it
            # keeps doing it (it cost us the request's work and nothing to the peer)
            guard = self.guard
            if (
                not self.client
                and not stream.answered
                and self.now - stream.opened_at < guard.limits.min_stream_life
                and guard.reset_early(len(self.streams))
            ):
                self._fail(ENHANCE_YOUR_CALM, "streams reset before their answer (rapid reset)")
        elif self._is_idle(sid):
            self._fail(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")

    def _on_settings(self, data: bytes, start: int, length: int, flags: int, sid: int) -> None:
        if sid:
            self._fail(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if length:
                self._fail(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            if not self._got_settings:
                self._fail(PROTOCOL_ERROR, "the first frame is a SETTINGS ACK")
            return
        if length % 6:
            self._fail(FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
        if length > 6 * self.guard.limits.max_settings:
            # each entry may walk every stream (a changed initial window): CVE-2020-11080
            self._fail(ENHANCE_YOUR_CALM, f"SETTINGS of {length // 6} entries")
        self._got_settings = True
        pos = start
        end = start + length
        while pos < end:
            ident = (data[pos] << 8) | data[pos + 1]
            value = int.from_bytes(data[pos + 2 : pos + 6], "big")
            pos += 6
            if ident == _INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self._fail(FLOW_CONTROL_ERROR, "initial window above 2^31-1")
                delta = value - self.remote_window
                self.remote_window = value
                if delta:
                    for stream in self.streams.values():
                        stream.send_window += delta
                        if stream.send_window > MAX_WINDOW:
                            self._fail(FLOW_CONTROL_ERROR, "a stream window above 2^31-1")
            elif ident == _MAX_FRAME_SIZE:
                if value < MIN_FRAME or value > MAX_FRAME:
                    self._fail(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self.remote_max_frame = value
            elif ident == _MAX_CONCURRENT_STREAMS:
                self.remote_max_streams = value
            elif ident == _HEADER_TABLE_SIZE:
                self.encoder.set_max_table_size(value)
            elif ident == _ENABLE_PUSH and (value > 1 or (value and self.client)):
                # a server must not announce push (RFC 9113 6.5.2)
                self._fail(PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
            # MAX_HEADER_LIST_SIZE is advisory; unknown settings are ignored
        if self.guard.control():
            self._fail(ENHANCE_YOUR_CALM, "SETTINGS flood")
        self.out += _frame(0, SETTINGS, ACK, 0)
        self.handler.h2_settings()

    def _on_goaway(self, data: bytes, start: int, length: int, sid: int) -> None:
        if sid:
            self._fail(PROTOCOL_ERROR, "GOAWAY on a stream")
        if length < 8:
            self._fail(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        last = int.from_bytes(data[start : start + 4], "big") & 0x7FFFFFFF
        code = int.from_bytes(data[start + 4 : start + 8], "big")
        self.goaway_received = True
        if last < self.goaway_last:
            self.goaway_last = last
        self.handler.h2_goaway(last, code)


def _response_status(headers: Headers) -> int:
    """The ``:status`` of a response's headers, -1 when they are malformed."""
    status = -1
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if regular or name != b":status" or status >= 0:
                return -1
            if len(value) != 3 or not value.isdigit():
                return -1
            status = int(value)
            if status < 100 or status == 101:  # HTTP/2 has no 101 (RFC 9113 8.6)
                return -1
        else:
            regular = True
            if name in _CONNECTION_FIELDS:
                return -1
    return status


def _dependency(data: bytes, pos: int) -> int:
    """The stream a priority block at ``pos`` depends on (the exclusive bit dropped)."""
    return ((data[pos] & 0x7F) << 24) | (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]


def _request_checks(headers: Headers) -> int:
    """Check a request's headers (RFC 9113 8.3.1): -2 when malformed, else its content-length
    (-1 when it has none)."""
    regular = False
    seen: set[bytes] = set()
    method = b""
    length = -1
    for name, value in headers:
        if name[:1] == b":":
            if regular or name not in _REQUEST_PSEUDO or name in seen:
                return -2
            seen.add(name)
            if name == b":method":
                method = value
            elif name == b":path" and not value:
                return -2
        else:
            regular = True
            if name in _CONNECTION_FIELDS:
                return -2
            if name == b"te" and value != b"trailers":
                return -2
            if name == b"content-length":
                # more than 18 digits: no body is that long (and int() refuses 4,300 digits)
                if not value.isdigit() or len(value) > 18 or (length >= 0 and int(value) != length):
                    return -2
                length = int(value)
    if method == b"CONNECT":
        if b":scheme" in seen or b":path" in seen or b":authority" not in seen:
            return -2
    elif not method or b":scheme" not in seen or b":path" not in seen:
        return -2
    return length


def _valid_trailers(headers: Headers) -> bool:
    return all(not (name[:1] == b":" or name in _CONNECTION_FIELDS) for name, _ in headers)


__all__ = [
    "CANCEL",
    "INTERNAL_ERROR",
    "NO_ERROR",
    "PREFACE",
    "PROTOCOL_ERROR",
    "REFUSED_STREAM",
    "H2Conn",
    "H2Error",
    "H2Handler",
]
