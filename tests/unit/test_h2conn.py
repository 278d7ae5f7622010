"""Tests for weft.core.h2conn, sans-I/O: :class:`H2Conn` against ``h2`` (python-hyper, an
independent implementation) as the peer in both roles, against frames written by hand (with
``hpack``'s encoder) for what ``h2`` would refuse to send, and properties over arbitrary input
and arbitrary splits of valid input."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.core.h2conn import (
    CANCEL,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    H2Conn,
    H2Error,
    Headers,
)
from weft.core.h2limits import H2Limits

pytestmark = pytest.mark.timeout(60)

FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB
# frame types and flags, for frames written by hand
DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)
END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8

GET: Headers = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":path", b"/"),
    (b":authority", b"example"),
]
POST: Headers = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/svc/Call"),
    (b":authority", b"example"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]
OK: Headers = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS: Headers = [(b"grpc-status", b"0"), (b"grpc-message", b"fine")]

Event = tuple[Any, ...]


class Recorder:
    """An :class:`weft.core.h2conn.H2Handler` that records what it hears."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def h2_headers(self, sid: int, headers: Headers, end: bool) -> None:
        self.events.append(("headers", sid, headers, end))

    def h2_data(self, sid: int, data: bytes, end: bool) -> None:
        self.events.append(("data", sid, data, end))

    def h2_reset(self, sid: int, code: int) -> None:
        self.events.append(("reset", sid, code))

    def h2_window(self, sid: int) -> None:
        self.events.append(("window", sid))

    def h2_settings(self) -> None:
        self.events.append(("settings",))

    def h2_goaway(self, last_sid: int, code: int) -> None:
        self.events.append(("goaway", last_sid, code))

    def take(self) -> list[Event]:
        events, self.events = self.events, []
        return events


def frames(data: bytes) -> list[Frame]:
    """``data`` parsed by hyperframe (the reference parser) into frames (after the client
    preface, if it starts with it)."""
    out: list[Frame] = []
    pos = len(PREFACE) if data.startswith(PREFACE) else 0
    while pos < len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[pos : pos + 9]))
        frame.parse_body(memoryview(data[pos + 9 : pos + 9 + length]))
        assert len(data) >= pos + 9 + length, "a truncated frame"
        out.append(frame)
        pos += 9 + length
    return out


def raw(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    """A frame written by hand, valid or not."""
    return (
        len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload
    )


def setting(ident: int, value: int) -> bytes:
    return ident.to_bytes(2, "big") + value.to_bytes(4, "big")


def rst(sid: int, code: int) -> tuple[type[Frame], int, int]:
    return (RstStreamFrame, sid, code)


def summary(data: bytes) -> list[tuple[Any, ...]]:
    """The frames of ``data`` as comparable tuples (type, stream, and what matters of each)."""
    out: list[tuple[Any, ...]] = []
    for f in frames(data):
        if isinstance(f, RstStreamFrame):
            out.append((RstStreamFrame, f.stream_id, f.error_code))
        elif isinstance(f, WindowUpdateFrame):
            out.append((WindowUpdateFrame, f.stream_id, f.window_increment))
        elif isinstance(f, GoAwayFrame):
            out.append((GoAwayFrame, f.last_stream_id, f.error_code))
        elif isinstance(f, PingFrame):
            out.append((PingFrame, sorted(f.flags), f.opaque_data))
        elif isinstance(f, SettingsFrame):
            out.append((SettingsFrame, sorted(f.flags), f.settings))
        else:
            out.append((type(f), f.stream_id, sorted(f.flags)))
    return out


class Peer:
    """The other end written by hand: frames in, what the :class:`H2Conn` answers out. Header
    blocks come from ``hpack``'s encoder (Huffman, indexing), which validates nothing."""

    def __init__(self, *, client: bool = False, **kwargs: Any) -> None:
        self.rec = Recorder()
        self.conn = H2Conn(self.rec, client=client, **kwargs)
        self.conn.start()
        self.encoder = hpack.Encoder()
        hello = raw(SETTINGS, 0, 0)
        self.conn.receive(hello if client else PREFACE + hello)
        self.greeting = self.conn.take()
        assert self.rec.take() == [("settings",)]

    def block(self, headers: Headers) -> bytes:
        return self.encoder.encode(headers, huffman=True)

    def headers(self, sid: int, headers: Headers, end: bool = False) -> bytes:
        flags = END_HEADERS | (END_STREAM if end else 0)
        return raw(HEADERS, flags, sid, self.block(headers))

    def send(self, *chunks: bytes) -> list[tuple[Any, ...]]:
        """Feed ``chunks``; the frames the connection queued in answer."""
        self.conn.receive(b"".join(chunks))
        return summary(self.conn.take())

    def fails(self, code: int, *chunks: bytes) -> None:
        """Feeding ``chunks`` is a connection error ``code``: H2Error, then GOAWAY with it."""
        with pytest.raises(H2Error) as info:
            self.conn.receive(b"".join(chunks))
        assert info.value.code == code
        sent = summary(self.conn.take())
        assert sent[-1] == (GoAwayFrame, self.conn.highest_inbound, code)
        assert self.conn.dead and not self.conn.can_open()
        self.conn.receive(raw(PING, 0, 0, bytes(8)))  # a dead connection ignores the rest
        assert self.conn.take() == b""


def h2_peer(client_side: bool) -> h2.connection.H2Connection:
    return h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=client_side, header_encoding=None)
    )


class Pair:
    """An :class:`H2Conn` and an ``h2`` connection, bytes shuttled between them in memory."""

    def __init__(self, *, ours_client: bool, **kwargs: Any) -> None:
        self.rec = Recorder()
        self.conn = H2Conn(self.rec, client=ours_client, **kwargs)
        self.peer = h2_peer(not ours_client)
        self.peer.initiate_connection()
        self.conn.start()
        self.sent: list[bytes] = []  # what the connection sent, by exchange() round
        self.exchange()
        assert self.rec.take() == [("settings",)]

    def exchange(self) -> list[h2.events.Event]:
        """Shuttle bytes both ways until both sides are quiet: the peer's events (its received
        DATA acknowledged at once)."""
        events: list[h2.events.Event] = []
        for _ in range(50):
            theirs = self.peer.data_to_send()
            if theirs:
                self.conn.receive(theirs)
            mine = self.conn.take()
            if mine:
                self.sent.append(mine)
                for event in self.peer.receive_data(mine):
                    if isinstance(event, h2.events.DataReceived) and event.stream_id:
                        self.peer.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    events.append(event)
            if not mine and not theirs:
                return events
        raise AssertionError("the two sides never went quiet")


def kinds(events: list[h2.events.Event]) -> list[str]:
    return [type(e).__name__ for e in events if not isinstance(e, h2.events.WindowUpdated)]


def blocks(events: list[h2.events.Event]) -> list[list[Any]]:
    """The header blocks (requests, responses, trailers) among the peer's events."""
    out: list[list[Any]] = []
    for e in events:
        if isinstance(
            e, h2.events.RequestReceived | h2.events.ResponseReceived | h2.events.TrailersReceived
        ):
            out.append(list(e.headers))
    return out


def body(events: list[h2.events.Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))


# -- messages ----------------------------------------------------------------------------------


def test_server_request_with_body_and_trailers_response_with_trailers() -> None:
    p = Pair(ours_client=False)
    p.peer.send_headers(1, POST)
    p.peer.send_data(1, b"hello")
    p.peer.send_data(1, b" world")
    p.peer.send_headers(1, [(b"x-checksum", b"abc")], end_stream=True)
    p.exchange()
    assert p.rec.take() == [
        ("headers", 1, POST, False),
        ("data", 1, b"hello", False),
        ("data", 1, b" world", False),
        ("headers", 1, [(b"x-checksum", b"abc")], True),
    ]
    assert 1 in p.conn.streams  # our half is open
    assert p.conn.send_headers(1, OK, False)
    assert p.conn.send_data(1, b"reply")
    assert p.conn.send_headers(1, TRAILERS, True)
    events = p.exchange()
    assert kinds(events) == ["ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    assert blocks(events) == [OK, TRAILERS]
    assert body(events) == b"reply"
    assert p.conn.streams == {}
    # the stream is gone: nothing more can be sent on it
    assert not p.conn.send_headers(1, OK, True)
    assert not p.conn.send_data(1, b"x")
    assert p.conn.window(1) == -1


def test_server_trailers_only_response_and_stream_ids() -> None:
    p = Pair(ours_client=False)
    for sid in (1, 3, 5):
        p.peer.send_headers(sid, GET, end_stream=True)
    p.exchange()
    assert [e[:2] for e in p.rec.take()] == [("headers", 1), ("headers", 3), ("headers", 5)]
    assert p.conn.highest_inbound == 5
    answer = [(b":status", b"200"), (b"grpc-status", b"12")]
    for sid in (5, 1, 3):
        assert p.conn.send_headers(sid, answer, True)
    events = p.exchange()
    assert kinds(events) == ["ResponseReceived", "StreamEnded"] * 3
    assert [e.stream_id for e in events if isinstance(e, h2.events.ResponseReceived)] == [5, 1, 3]
    assert p.conn.streams == {}


def test_server_response_before_the_request_ends() -> None:
    """Our half closes first: the stream stays until the client's END_STREAM."""
    p = Pair(ours_client=False)
    p.peer.send_headers(1, POST)
    p.exchange()
    p.conn.send_headers(1, [(b":status", b"413")], True)
    p.exchange()
    assert 1 in p.conn.streams and p.conn.window(1) == -1
    p.peer.send_data(1, b"late", end_stream=True)
    p.exchange()
    assert p.rec.take()[-1] == ("data", 1, b"late", True)
    assert p.conn.streams == {}


def test_client_request_with_trailers_informational_responses_skipped() -> None:
    p = Pair(ours_client=True)
    assert p.conn.can_open()
    sid = p.conn.open(POST, False)
    assert sid == 1
    assert p.conn.send_data(sid, b"ask")
    assert p.conn.send_headers(sid, [(b"x-sum", b"1")], True)
    events = p.exchange()
    assert kinds(events) == ["RequestReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    assert blocks(events) == [POST, [(b"x-sum", b"1")]]
    assert body(events) == b"ask"
    assert p.conn.window(sid) == -1  # our half is closed
    p.peer.send_headers(1, [(b":status", b"100")])
    p.peer.send_headers(1, [(b":status", b"103"), (b"link", b"</a>")])
    p.peer.send_headers(1, OK)
    p.peer.send_data(1, b"answer")
    p.peer.send_headers(1, TRAILERS, end_stream=True)
    p.exchange()
    assert p.rec.take() == [
        ("headers", 1, OK, False),
        ("data", 1, b"answer", False),
        ("headers", 1, TRAILERS, True),
    ]
    assert p.conn.streams == {}
    assert p.conn.open(GET, True) == 3
    assert p.conn.open(GET, True) == 5
    p.exchange()
    assert sorted(p.conn.streams) == [3, 5]
    p.peer.send_headers(5, [(b":status", b"204")], end_stream=True)
    p.exchange()
    assert p.rec.take() == [("headers", 5, [(b":status", b"204")], True)]
    assert sorted(p.conn.streams) == [3]


def test_client_can_open_follows_max_concurrent_streams() -> None:
    p = Pair(ours_client=True)
    p.peer.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    p.exchange()
    assert p.rec.take() == [("settings",)]
    assert p.conn.remote_max_streams == 2
    p.conn.open(GET, True)
    assert p.conn.can_open()
    p.conn.open(GET, True)
    assert not p.conn.can_open()
    p.exchange()
    p.peer.send_headers(1, [(b":status", b"200")], end_stream=True)
    p.exchange()
    assert p.conn.can_open()
    p.peer.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    p.exchange()
    assert not p.conn.can_open()  # stream 3 is still open


def test_server_refuses_streams_above_max_streams() -> None:
    peer = Peer(max_streams=2)
    assert peer.send(peer.headers(1, POST), peer.headers(3, POST)) == []
    assert peer.send(peer.headers(5, POST)) == [rst(5, REFUSED_STREAM)]
    assert [e[:2] for e in peer.rec.take()] == [("headers", 1), ("headers", 3)]
    assert sorted(peer.conn.streams) == [1, 3]
    peer.send(raw(DATA, END_STREAM, 1))
    peer.conn.send_headers(1, OK, True)
    peer.conn.take()
    assert sorted(peer.conn.streams) == [3]
    assert peer.send(peer.headers(7, GET, True)) == []
    assert peer.rec.take() == [("data", 1, b"", True), ("headers", 7, GET, True)]
    # DATA for the refused stream: ignored (it is closed, not idle)
    assert peer.send(raw(DATA, 0, 5, b"x")) == []
    assert peer.rec.take() == []


def test_goaway_received_and_sent() -> None:
    p = Pair(ours_client=True)
    p.conn.open(GET, True)
    p.conn.open(GET, True)
    p.exchange()
    p.peer.close_connection(error_code=ENHANCE_YOUR_CALM, last_stream_id=1)
    p.exchange()
    assert p.rec.take() == [("goaway", 1, ENHANCE_YOUR_CALM)]
    assert p.conn.goaway_received and not p.conn.can_open()

    q = Pair(ours_client=False)
    q.peer.send_headers(1, GET, end_stream=True)
    q.peer.send_headers(3, GET, end_stream=True)
    q.exchange()
    q.conn.goaway(NO_ERROR)
    events = q.exchange()
    assert isinstance(events[0], h2.events.ConnectionTerminated)
    assert (events[0].last_stream_id, events[0].error_code) == (3, NO_ERROR)
    # the streams below it may still finish (h2 itself, having read GOAWAY, accepts no more)
    assert q.conn.send_headers(3, OK, True)
    assert [type(f) for f in frames(q.conn.take())] == [HeadersFrame]


def test_ping_answered_and_acks_not() -> None:
    peer = Peer()
    assert peer.send(raw(PING, 0, 0, b"12345678")) == [(PingFrame, ["ACK"], b"12345678")]
    assert peer.send(raw(PING, 1, 0, b"12345678")) == []
    p = Pair(ours_client=True)
    p.peer.ping(b"abcdefgh")
    events = p.exchange()
    assert len(events) == 1 and isinstance(events[0], h2.events.PingAckReceived)
    assert events[0].ping_data == b"abcdefgh"


def test_settings_acknowledged_priority_and_unknown_frames_ignored() -> None:
    peer = Peer()
    assert peer.greeting[-9:] == raw(SETTINGS, 1, 0)  # the ACK of the peer's SETTINGS
    ours = frames(peer.greeting)[0]
    assert isinstance(ours, SettingsFrame)
    assert ours.settings == {2: 0, 4: 65535, 3: 100, 6: 65536}
    assert peer.send(peer.headers(1, POST)) == []
    assert peer.send(raw(PRIORITY, 0, 1, bytes(5)), raw(PRIORITY, 0, 9, bytes(5))) == []
    assert peer.send(raw(0x42, 0xFF, 1, b"extension"), raw(0x42, 0, 0, b"")) == []
    assert peer.send(raw(SETTINGS, 1, 0)) == []  # our SETTINGS acknowledged
    assert peer.rec.take() == [("headers", 1, POST, False)]
    # a bad PRIORITY length on a stream is that stream's error
    assert peer.send(raw(PRIORITY, 0, 1, bytes(4))) == [rst(1, FRAME_SIZE_ERROR)]
    assert peer.rec.take() == [("reset", 1, FRAME_SIZE_ERROR)]


# -- flow control ------------------------------------------------------------------------------


def test_send_windows_follow_window_update_and_initial_window_size() -> None:
    peer = Peer()
    conn = peer.conn
    peer.send(peer.headers(1, POST))
    assert conn.window(1) == 65535
    peer.send(raw(WINDOW, 0, 0, (100000).to_bytes(4, "big")))
    assert conn.window(1) == 65535  # the stream's window is the smaller
    peer.send(raw(WINDOW, 0, 1, (1000).to_bytes(4, "big")))
    assert conn.window(1) == 66535
    assert peer.rec.take() == [("headers", 1, POST, False), ("window", 0), ("window", 1)]
    conn.send_headers(1, OK, False)
    conn.send_data(1, b"x" * 60000)
    conn.take()
    assert conn.window(1) == 6535
    # a smaller initial window: the stream's window goes negative (RFC 9113 6.9.2)
    answer = peer.send(raw(SETTINGS, 0, 0, setting(4, 1000)))
    assert answer == [(SettingsFrame, ["ACK"], {})]
    assert conn.streams[1].send_window == 6535 - 64535
    assert conn.window(1) == 0
    peer.send(raw(WINDOW, 0, 1, (58500).to_bytes(4, "big")))
    assert conn.window(1) == 500
    conn.send_data(1, b"x" * 500)
    assert conn.window(1) == 0
    # a new stream starts with the new initial window; the connection's is unchanged
    peer.send(peer.headers(3, POST))
    conn.send_headers(3, OK, False)
    assert conn.window(3) == 1000
    assert conn.send_window == 65535 + 100000 - 60500
    peer.send(raw(SETTINGS, 0, 0, setting(4, 3000)))
    assert (conn.window(1), conn.window(3)) == (2000, 3000)
    assert peer.rec.take() == [
        ("settings",),
        ("window", 1),
        ("headers", 3, POST, False),
        ("settings",),
    ]
    # the connection's window limits every stream
    conn.send_data(3, b"y" * 3000)
    conn.send_data(1, b"y" * 2000)
    peer.send(raw(WINDOW, 0, 1, (2**20).to_bytes(4, "big")))
    assert conn.window(1) == 65535 + 100000 - 65500


def test_client_windows_follow_an_h2_server() -> None:
    p = Pair(ours_client=True)
    sid = p.conn.open(POST, False)
    assert p.conn.window(sid) == 65535
    p.exchange()
    p.peer.increment_flow_control_window(1000, stream_id=1)
    p.peer.increment_flow_control_window(5000)
    p.exchange()
    assert p.rec.take() == [("window", 1), ("window", 0)]
    assert p.conn.window(sid) == 66535
    p.peer.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    p.exchange()
    assert p.conn.window(sid) == 1000
    p.conn.send_data(sid, b"z" * 1000)
    assert p.conn.window(sid) == 0
    assert body(p.exchange()) == b"z" * 1000


def test_window_update_errors_on_a_stream() -> None:
    peer = Peer()
    peer.send(peer.headers(1, POST), peer.headers(3, POST))
    assert peer.send(raw(WINDOW, 0, 1, bytes(4))) == [rst(1, PROTOCOL_ERROR)]
    assert peer.send(raw(WINDOW, 0, 3, (2**31 - 1).to_bytes(4, "big"))) == [
        rst(3, FLOW_CONTROL_ERROR)
    ]
    assert peer.rec.take()[2:] == [("reset", 1, PROTOCOL_ERROR), ("reset", 3, FLOW_CONTROL_ERROR)]
    assert peer.conn.streams == {}
    assert peer.send(raw(WINDOW, 0, 1, (5).to_bytes(4, "big"))) == []  # closed: ignored


def test_initial_window_above_the_maximum_for_an_open_stream() -> None:
    peer = Peer()
    peer.send(peer.headers(1, POST), raw(WINDOW, 0, 1, (2**31 - 65536).to_bytes(4, "big")))
    peer.fails(FLOW_CONTROL_ERROR, raw(SETTINGS, 0, 0, setting(4, 65537)))


def test_data_beyond_the_stream_window_resets_the_stream() -> None:
    # a connection window of 200 (reopened by 100s): what the reset stream consumed is given
    # back at once
    peer = Peer(stream_window=100, connection_window=200)
    assert peer.send(peer.headers(1, POST), raw(DATA, 0, 1, b"a" * 100)) == [
        (WindowUpdateFrame, 0, 100)
    ]
    assert peer.send(raw(DATA, 0, 1, b"b" * 100)) == [
        (WindowUpdateFrame, 0, 100),
        rst(1, FLOW_CONTROL_ERROR),
    ]
    assert peer.rec.take() == [
        ("headers", 1, POST, False),
        ("data", 1, b"a" * 100, False),
        ("reset", 1, FLOW_CONTROL_ERROR),
    ]
    # the connection goes on
    assert peer.send(peer.headers(3, GET, True)) == []
    assert peer.rec.take() == [("headers", 3, GET, True)]


def test_data_beyond_the_connection_window_is_a_connection_error() -> None:
    peer = Peer(stream_window=2**20, hold_limit=0)  # nothing reopened until acknowledged
    peer.send(peer.headers(1, POST), *[raw(DATA, 0, 1, b"d" * 16384)] * 3)
    assert len(peer.rec.take()) == 4
    assert peer.conn.recv_window == 65535 - 3 * 16384
    peer.send(raw(DATA, 0, 1, b"d" * 16383))
    peer.fails(FLOW_CONTROL_ERROR, raw(DATA, 0, 1, b"d"))


def test_ack_reopens_the_stream_window_after_half() -> None:
    peer = Peer(stream_window=1000)
    peer.send(peer.headers(1, POST), raw(DATA, 0, 1, b"a" * 400))
    peer.conn.ack(1, 400)
    assert summary(peer.conn.take()) == []
    peer.send(raw(DATA, 0, 1, b"b" * 100))
    peer.conn.ack(1, 100)
    assert summary(peer.conn.take()) == [(WindowUpdateFrame, 1, 500)]
    # 1,000 may be in flight again, not one more byte
    assert peer.send(raw(DATA, 0, 1, b"c" * 1000)) == []
    assert peer.send(raw(DATA, 0, 1, b"d")) == [rst(1, FLOW_CONTROL_ERROR)]
    assert peer.rec.take()[-1] == ("reset", 1, FLOW_CONTROL_ERROR)
    assert peer.conn.held == 1000
    peer.conn.ack(1, 1000)  # acknowledged after the reset: the connection's count only
    assert peer.conn.held == 0
    assert summary(peer.conn.take()) == []


def test_padding_is_credited_at_once() -> None:
    peer = Peer(stream_window=1000)
    peer.send(peer.headers(1, POST))
    padded = raw(DATA, PADDED, 1, bytes([89]) + b"p" * 10 + bytes(89))  # 100 bytes, 10 of data
    for _ in range(5):
        assert peer.send(padded) == []
    assert peer.send(padded) == [(WindowUpdateFrame, 1, 6 * 90)]
    assert peer.conn.held == 60
    assert peer.rec.take()[1:] == [("data", 1, b"p" * 10, False)] * 6
    # padding only, with END_STREAM
    assert peer.send(raw(DATA, PADDED | END_STREAM, 1, bytes([3, 0, 0, 0]))) == []
    assert peer.rec.take() == [("data", 1, b"", True)]


def test_hold_limit_holds_the_connection_window() -> None:
    """Connection window 65,535 (reopened in steps of >= 32,767), hold_limit 40,000."""
    peer = Peer(stream_window=2**20, hold_limit=40000)
    conn = peer.conn
    peer.send(peer.headers(1, POST))
    chunk = raw(DATA, 0, 1, b"x" * 10000)
    assert peer.send(chunk, chunk, chunk) == []
    # 40,000 arrived and held, not above the limit: reopened as it arrives
    assert peer.send(chunk) == [(WindowUpdateFrame, 0, 40000)]
    # held 80,000: the 40,000 above the limit wait for the owner
    assert peer.send(chunk, chunk, chunk, chunk) == []
    assert (conn.held, conn.recv_window) == (80000, 65535 + 40000 - 80000)
    conn.ack(1, 30000)  # held 50,000: 30,000 could be reopened, less than a half window
    assert summary(conn.take()) == []
    conn.ack(1, 5000)  # held 45,000: 35,000
    assert summary(conn.take()) == [(WindowUpdateFrame, 0, 35000)]
    conn.ack(1, 45000)
    assert summary(conn.take()) == []
    assert (conn.held, conn.recv_window) == (0, 65535 + 40000 - 80000 + 35000)


def test_connection_window_advertised_and_reopened_by_halves() -> None:
    peer = Peer(stream_window=2**20, connection_window=2**20)
    assert summary(peer.greeting)[1] == (WindowUpdateFrame, 0, 2**20 - 65535)
    peer.send(peer.headers(1, POST))
    big = raw(DATA, 0, 1, b"x" * 16384)
    assert peer.send(*[big] * 31) == []  # 507,904: less than half the window
    assert peer.send(big) == [(WindowUpdateFrame, 0, 32 * 16384)]


def test_data_for_a_stream_we_reset_is_credited_and_ignored() -> None:
    peer = Peer(stream_window=2**20)
    peer.send(peer.headers(1, POST))
    assert peer.conn.reset(1, CANCEL)
    assert summary(peer.conn.take()) == [rst(1, CANCEL)]
    assert not peer.conn.reset(1, CANCEL)
    late = [raw(DATA, 0, 1, b"x" * 16384), raw(DATA, 0, 1, b"x" * 16384), raw(DATA, 0, 1, b"x")]
    assert peer.send(*late) == [(WindowUpdateFrame, 0, 32768)]
    assert peer.send(peer.headers(1, [(b"grpc-status", b"0")], True)) == []  # kept HPACK in step
    assert peer.rec.take() == [("headers", 1, POST, False)]
    assert peer.conn.held == 0
    # the header table is still in step: a new request reusing indexed fields decodes
    peer.send(peer.headers(3, [*POST, (b"grpc-status", b"0")], True))
    assert peer.rec.take() == [("headers", 3, [*POST, (b"grpc-status", b"0")], True)]


def test_data_after_end_stream_is_stream_closed() -> None:
    peer = Peer()
    peer.send(peer.headers(1, POST, True))
    assert peer.send(raw(DATA, 0, 1, b"x")) == [rst(1, STREAM_CLOSED)]
    peer.send(peer.headers(3, POST, True))
    assert peer.send(peer.headers(3, TRAILERS, True)) == [rst(3, STREAM_CLOSED)]
    assert [e[0] for e in peer.rec.take()] == ["headers", "reset", "headers", "reset"]


# -- CONTINUATION ------------------------------------------------------------------------------

BIG: Headers = [(f"x-big-{i}".encode(), bytes(range(33, 127)) * 160) for i in range(3)]
LARGE = (b"x-large", b"~" * 11000)  # 13 bits each in Huffman code: more than one frame


def test_continuation_received_from_h2() -> None:
    p = Pair(ours_client=False)
    p.peer.send_headers(1, [*GET, *BIG], end_stream=True)
    data = p.peer.data_to_send()
    assert any(isinstance(f, ContinuationFrame) for f in frames(data))
    p.conn.receive(data)
    assert p.rec.take() == [("headers", 1, [*GET, *BIG], True)]


@pytest.mark.parametrize("ours_client", [False, True])
def test_continuation_sent_within_the_peer_frame_size(ours_client: bool) -> None:
    p = Pair(ours_client=ours_client)
    p.peer.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 20000})
    p.exchange()
    if ours_client:
        p.conn.open([*POST, *BIG], False)
        p.conn.send_headers(1, BIG, True)  # trailers as large
    else:
        p.peer.send_headers(1, GET, end_stream=True)
        p.exchange()
        p.conn.send_headers(1, [*OK, *BIG], False)
        p.conn.send_headers(1, BIG, True)
    events = p.exchange()
    sent = frames(b"".join(p.sent))
    sizes = [len(f.data) for f in sent if isinstance(f, HeadersFrame | ContinuationFrame)]
    assert max(sizes) == 20000 and len(sizes) >= 6
    assert blocks(events) == [[*POST, *BIG] if ours_client else [*OK, *BIG], BIG]


def test_data_sent_within_the_peer_frame_size() -> None:
    p = Pair(ours_client=True)
    sid = p.conn.open(POST, False)
    p.conn.send_data(sid, b"q" * 40000, True)
    sent = [f for f in frames(bytes(p.conn.out)) if isinstance(f, DataFrame)]
    assert [len(f.data) for f in sent] == [16384, 16384, 40000 - 2 * 16384]
    assert [sorted(f.flags) for f in sent] == [[], [], ["END_STREAM"]]
    assert body(p.exchange()) == b"q" * 40000


def test_continuation_by_hand_with_end_stream_on_the_headers() -> None:
    peer = Peer()
    block = peer.block(GET)
    assert (
        peer.send(
            raw(HEADERS, END_STREAM, 1, block[:2]),
            raw(CONT, 0, 1, block[2:4]),
            raw(CONT, 0, 1, b""),
            raw(CONT, END_HEADERS, 1, block[4:]),
        )
        == []
    )
    assert peer.rec.take() == [("headers", 1, GET, True)]


@pytest.mark.parametrize(
    "interruption",
    [
        raw(PING, 0, 0, bytes(8)),
        raw(DATA, 0, 1, b"x"),
        raw(0x42, 0, 0, b"unknown"),
        raw(CONT, END_HEADERS, 3, b"\x82"),
        raw(HEADERS, END_HEADERS, 3, b"\x82"),
    ],
    ids=["PING", "DATA", "unknown type", "CONTINUATION of another stream", "HEADERS"],
)
def test_header_block_interrupted(interruption: bytes) -> None:
    peer = Peer()
    block = peer.block(GET)
    peer.fails(PROTOCOL_ERROR, raw(HEADERS, 0, 1, block[:3]), interruption)


def test_continuation_without_headers() -> None:
    peer = Peer()
    peer.send(peer.headers(1, GET))
    peer.fails(PROTOCOL_ERROR, raw(CONT, END_HEADERS, 1, b"\x82"))


def test_header_block_above_256_kib() -> None:
    peer = Peer()
    chunk = bytes(16384)
    peer.send(raw(HEADERS, 0, 1, chunk), *[raw(CONT, 0, 1, chunk)] * 14)
    assert peer.send(raw(CONT, 0, 1, chunk)) == []  # 256 KiB exactly
    peer.fails(ENHANCE_YOUR_CALM, raw(CONT, 0, 1, b"\x82"))


# -- malformed messages: stream errors ---------------------------------------------------------

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")]
MALFORMED_REQUESTS: dict[str, Headers] = {
    "upper-case name": [*BASE, (b"X-Trace", b"1")],
    "upper-case pseudo": [(b":Method", b"GET"), *BASE[1:]],
    "space in name": [*BASE, (b"x trace", b"1")],
    "CR in value": [*BASE, (b"x-a", b"1\r2")],
    "LF in value": [*BASE, (b"x-a", b"1\n2")],
    "NUL in value": [*BASE, (b"x-a", b"1\x002")],
    "leading space": [*BASE, (b"x-a", b" 1")],
    "trailing tab": [*BASE, (b"x-a", b"1\t")],
    "connection": [*BASE, (b"connection", b"keep-alive")],
    "keep-alive": [*BASE, (b"keep-alive", b"5")],
    "proxy-connection": [*BASE, (b"proxy-connection", b"close")],
    "transfer-encoding": [*BASE, (b"transfer-encoding", b"chunked")],
    "upgrade": [*BASE, (b"upgrade", b"h2c")],
    "te not trailers": [*BASE, (b"te", b"gzip")],
    "no :method": BASE[1:],
    "no :scheme": [BASE[0], BASE[2]],
    "no :path": BASE[:2],
    "empty :path": [*BASE[:2], (b":path", b"")],
    "pseudo after regular": [*BASE[:2], (b"x-a", b"1"), BASE[2]],
    "repeated pseudo": [*BASE, (b":path", b"/again")],
    "unknown pseudo": [*BASE, (b":foo", b"bar")],
    "response pseudo": [*BASE, (b":status", b"200")],
    "CONNECT without authority": [(b":method", b"CONNECT")],
    "CONNECT with a path": [(b":method", b"CONNECT"), (b":authority", b"a:1"), (b":path", b"/")],
    "content-length not a number": [*BASE, (b"content-length", b"1x")],
    "content-lengths differ": [*BASE, (b"content-length", b"1"), (b"content-length", b"2")],
    "content-length with END_STREAM": [*BASE, (b"content-length", b"3")],
    "content-length of 5,000 digits": [*BASE, (b"content-length", b"9" * 5000)],
    # we never send SETTINGS_ENABLE_CONNECT_PROTOCOL, so extended CONNECT is not allowed
    "extended CONNECT": [
        (b":method", b"CONNECT"),
        (b":protocol", b"websocket"),
        *BASE[1:],
        (b":authority", b"a"),
    ],
    ":protocol on a GET": [*BASE, (b":protocol", b"websocket")],
}


@pytest.mark.parametrize("headers", MALFORMED_REQUESTS.values(), ids=MALFORMED_REQUESTS.keys())
def test_malformed_request_is_reset_and_the_connection_goes_on(headers: Headers) -> None:
    peer = Peer()
    assert peer.send(peer.headers(1, headers, True)) == [rst(1, PROTOCOL_ERROR)]
    assert peer.rec.take() == []  # the handler never hears of it
    assert peer.conn.streams == {}
    # its DATA, had it any, is dropped; the next request (same header table) goes through
    assert peer.send(raw(DATA, END_STREAM, 1, b"zz")) == []
    assert peer.send(peer.headers(3, GET, True)) == []
    assert peer.rec.take() == [("headers", 3, GET, True)]


def test_valid_request_forms() -> None:
    peer = Peer()
    forms: list[Headers] = [
        [(b":method", b"CONNECT"), (b":authority", b"db:5432")],
        [*BASE, (b"content-length", b"0")],
        [*BASE, (b"content-length", b"2"), (b"content-length", b"2")],
        [*BASE, (b"te", b"trailers"), (b"x-a", b"")],
        [*BASE, (b"cookie", b"a=1"), (b"cookie", b"b=2")],
    ]
    for i, headers in enumerate(forms):
        assert peer.send(peer.headers(2 * i + 1, headers, i != 2)) == []
    peer.send(raw(DATA, END_STREAM, 5, b"ok"))
    assert [e[1] for e in peer.rec.take()] == [1, 3, 5, 7, 9, 5]


def test_malformed_trailers_and_content_length_mismatch() -> None:
    peer = Peer()
    cl5 = [*POST, (b"content-length", b"5")]
    cases: list[list[bytes]] = [
        [peer.headers(1, POST), peer.headers(1, TRAILERS)],  # trailers without END_STREAM
        [peer.headers(3, POST), peer.headers(3, [(b":status", b"200")], True)],
        [peer.headers(5, POST), peer.headers(5, [(b"connection", b"close")], True)],
        [peer.headers(7, cl5), raw(DATA, END_STREAM, 7, b"abc")],  # shorter
        [peer.headers(9, cl5), raw(DATA, 0, 9, b"abc"), raw(DATA, 0, 9, b"def")],  # longer
        [peer.headers(11, cl5), raw(DATA, 0, 11, b"abc"), peer.headers(11, TRAILERS, True)],
    ]
    for case in cases:
        sid = int.from_bytes(case[0][5:9], "big")
        assert peer.send(*case) == [rst(sid, PROTOCOL_ERROR)]
        events = peer.rec.take()
        assert events[0] == ("headers", sid, POST if sid < 7 else cl5, False)
        assert events[-1] == ("reset", sid, PROTOCOL_ERROR)
    assert peer.conn.streams == {}
    # content-length met, then trailers: fine
    peer.send(peer.headers(13, cl5), raw(DATA, 0, 13, b"abcde"), peer.headers(13, TRAILERS, True))
    assert peer.rec.take()[-1] == ("headers", 13, TRAILERS, True)


def test_header_list_above_the_limit_is_reset_and_the_table_stays_in_step() -> None:
    peer = Peer(max_header_list=1000)
    big = [*GET, (b"x-big", b"b" * 1000)]
    assert peer.send(peer.headers(1, big, True)) == [rst(1, PROTOCOL_ERROR)]
    assert peer.rec.take() == []
    small = [*GET, (b"x-big", b"s")]  # its name: the entry the too-large block added
    peer.send(peer.headers(3, small, True))
    assert peer.rec.take() == [("headers", 3, small, True)]


def test_malformed_responses() -> None:
    peer = Peer(client=True)
    conn = peer.conn
    responses: list[Headers] = [
        [(b"content-type", b"text/plain")],  # no :status
        [(b":status", b"2000")],
        [(b":status", b"abc")],
        [(b"x-a", b"1"), (b":status", b"200")],
        [(b":status", b"200"), (b":status", b"200")],
        [(b":status", b"200"), (b":path", b"/")],
        [(b":status", b"200"), (b"transfer-encoding", b"chunked")],
        [(b":status", b"200"), (b"X-Upper", b"1")],
        [(b":status", b"101")],  # HTTP/2 has no Switching Protocols (RFC 9113 8.6)
        [(b":status", b"099")],
        [(b":status", b"000")],
    ]
    for headers in responses:
        sid = conn.open(GET, True)
        conn.take()
        assert peer.send(peer.headers(sid, headers)) == [rst(sid, PROTOCOL_ERROR)]
        assert peer.rec.take() == [("reset", sid, PROTOCOL_ERROR)]  # the owner knew the stream
    sid = conn.open(GET, True)
    conn.take()
    assert peer.send(peer.headers(sid, [(b":status", b"100")], True)) == [rst(sid, PROTOCOL_ERROR)]
    sid = conn.open(GET, True)
    conn.take()
    assert peer.send(raw(DATA, 0, sid, b"early")) == [rst(sid, PROTOCOL_ERROR)]  # before HEADERS
    peer.rec.take()
    assert conn.streams == {}


# -- connection errors -------------------------------------------------------------------------

Builder = Callable[[Peer], bytes]
CONNECTION_ERRORS: dict[str, tuple[int, Builder]] = {
    "DATA on stream 0": (PROTOCOL_ERROR, lambda p: raw(DATA, 0, 0, b"x")),
    "HEADERS on stream 0": (PROTOCOL_ERROR, lambda p: raw(HEADERS, END_HEADERS, 0, b"\x82")),
    "frame above the max frame size": (
        FRAME_SIZE_ERROR,
        lambda p: (16385).to_bytes(3, "big") + bytes([DATA, 0, 0, 0, 0, 1]),
    ),
    "PUSH_PROMISE": (PROTOCOL_ERROR, lambda p: raw(PUSH, END_HEADERS, 1, bytes(4) + b"\x82")),
    "SETTINGS initial window 2^31": (
        FLOW_CONTROL_ERROR,
        lambda p: raw(SETTINGS, 0, 0, setting(4, 2**31)),
    ),
    "SETTINGS max frame size 16383": (
        PROTOCOL_ERROR,
        lambda p: raw(SETTINGS, 0, 0, setting(5, 16383)),
    ),
    "SETTINGS max frame size 2^24": (
        PROTOCOL_ERROR,
        lambda p: raw(SETTINGS, 0, 0, setting(5, 2**24)),
    ),
    "SETTINGS enable push 2": (PROTOCOL_ERROR, lambda p: raw(SETTINGS, 0, 0, setting(2, 2))),
    "SETTINGS length 5": (FRAME_SIZE_ERROR, lambda p: raw(SETTINGS, 0, 0, bytes(5))),
    "SETTINGS ACK with a payload": (FRAME_SIZE_ERROR, lambda p: raw(SETTINGS, 1, 0, bytes(6))),
    "SETTINGS on a stream": (PROTOCOL_ERROR, lambda p: raw(SETTINGS, 0, 1)),
    "WINDOW_UPDATE overflow": (
        FLOW_CONTROL_ERROR,
        lambda p: raw(WINDOW, 0, 0, (2**31 - 65535).to_bytes(4, "big")),
    ),
    "WINDOW_UPDATE of 0": (PROTOCOL_ERROR, lambda p: raw(WINDOW, 0, 0, bytes(4))),
    "WINDOW_UPDATE length 3": (FRAME_SIZE_ERROR, lambda p: raw(WINDOW, 0, 0, bytes(3))),
    "WINDOW_UPDATE on an idle stream": (
        PROTOCOL_ERROR,
        lambda p: raw(WINDOW, 0, 9, (1).to_bytes(4, "big")),
    ),
    "HEADERS on an even stream": (PROTOCOL_ERROR, lambda p: p.headers(2, GET, True)),
    "DATA on an idle stream": (PROTOCOL_ERROR, lambda p: raw(DATA, 0, 1, b"x")),
    "DATA on an idle even stream": (PROTOCOL_ERROR, lambda p: raw(DATA, 0, 2, b"x")),
    "PING length 7": (FRAME_SIZE_ERROR, lambda p: raw(PING, 0, 0, bytes(7))),
    "PING on a stream": (PROTOCOL_ERROR, lambda p: raw(PING, 0, 1, bytes(8))),
    "HPACK index 0": (COMPRESSION_ERROR, lambda p: raw(HEADERS, END_HEADERS, 1, b"\x80")),
    "HPACK truncated": (COMPRESSION_ERROR, lambda p: raw(HEADERS, END_HEADERS, 1, b"\x82\x41")),
    "RST_STREAM on an idle stream": (PROTOCOL_ERROR, lambda p: raw(RST, 0, 1, bytes(4))),
    "RST_STREAM on stream 0": (PROTOCOL_ERROR, lambda p: raw(RST, 0, 0, bytes(4))),
    "RST_STREAM length 5": (FRAME_SIZE_ERROR, lambda p: raw(RST, 0, 1, bytes(5))),
    "GOAWAY on a stream": (PROTOCOL_ERROR, lambda p: raw(GOAWAY, 0, 1, bytes(8))),
    "GOAWAY length 7": (FRAME_SIZE_ERROR, lambda p: raw(GOAWAY, 0, 0, bytes(7))),
    "PRIORITY on stream 0": (PROTOCOL_ERROR, lambda p: raw(PRIORITY, 0, 0, bytes(5))),
    "PRIORITY on stream 0, length 4": (PROTOCOL_ERROR, lambda p: raw(PRIORITY, 0, 0, bytes(4))),
    "padded DATA without its pad length": (
        FRAME_SIZE_ERROR,
        lambda p: p.headers(1, POST) + raw(DATA, PADDED, 1),
    ),
    "DATA padding as long as the frame": (
        PROTOCOL_ERROR,
        lambda p: p.headers(1, POST) + raw(DATA, PADDED, 1, bytes([4]) + b"abc"),
    ),
    "HEADERS padding longer than the frame": (
        PROTOCOL_ERROR,
        lambda p: raw(HEADERS, END_HEADERS | PADDED, 1, bytes([5]) + b"\x82\x86\x84"),
    ),
    "HEADERS with priority, too short": (
        PROTOCOL_ERROR,
        lambda p: raw(HEADERS, END_HEADERS | 0x20, 1, bytes(4)),
    ),
    "WINDOW_UPDATE above the highest stream": (
        PROTOCOL_ERROR,
        lambda p: p.headers(5, GET, True) + raw(WINDOW, 0, 7, (1).to_bytes(4, "big")),
    ),
}


@pytest.mark.parametrize(
    ("code", "build"), CONNECTION_ERRORS.values(), ids=CONNECTION_ERRORS.keys()
)
def test_connection_errors(code: int, build: Builder) -> None:
    peer = Peer()
    peer.fails(code, build(peer))


@pytest.mark.parametrize(
    "start",
    [
        b"GET / HTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + raw(SETTINGS, 0, 0),
        b"\x16\x03\x01",
    ],
)
def test_bad_preface(start: bytes) -> None:
    conn = H2Conn(Recorder(), client=False)
    conn.start()
    conn.take()
    with pytest.raises(H2Error) as info:
        conn.receive(start)
    assert info.value.code == PROTOCOL_ERROR
    assert summary(conn.take()) == [(GoAwayFrame, 0, PROTOCOL_ERROR)]


def test_preface_in_pieces_then_first_frame_not_settings() -> None:
    rec = Recorder()
    conn = H2Conn(rec, client=False)
    for i in range(0, 24, 5):
        conn.receive(PREFACE[i : i + 5])
    with pytest.raises(H2Error) as info:
        conn.receive(raw(PING, 0, 0, bytes(8)))
    assert info.value.code == PROTOCOL_ERROR
    assert rec.events == []


def test_settings_ack_as_the_first_frame() -> None:
    """The preface's SETTINGS must come first; an acknowledgement of ours is not it."""
    conn = H2Conn(Recorder(), client=False)
    conn.start()
    conn.take()
    with pytest.raises(H2Error) as info:
        conn.receive(PREFACE + raw(SETTINGS, 1, 0))  # flags: ACK
    assert info.value.code == PROTOCOL_ERROR
    assert summary(conn.take()) == [(GoAwayFrame, 0, PROTOCOL_ERROR)]


def test_a_stream_that_depends_on_itself_is_reset() -> None:
    """RFC 9113 5.3.1: a stream error, in a PRIORITY frame or in HEADERS; the header block is
    still decoded, so the next request (same HPACK table) goes through."""
    peer = Peer()
    self_dep = (1).to_bytes(4, "big") + b"\x10"
    block = peer.block([*GET, (b"x-new", b"indexed")])
    assert peer.send(raw(HEADERS, END_HEADERS | END_STREAM | 0x20, 1, self_dep + block)) == [
        rst(1, PROTOCOL_ERROR)
    ]
    assert peer.rec.take() == []
    again = [*GET, (b"x-new", b"indexed")]
    assert peer.send(peer.headers(3, again, True)) == []
    assert peer.rec.take() == [("headers", 3, again, True)]
    assert peer.send(peer.headers(5, POST)) == []
    peer.rec.take()
    on_five = (5).to_bytes(4, "big") + b"\x10"
    assert peer.send(raw(PRIORITY, 0, 5, on_five)) == [rst(5, PROTOCOL_ERROR)]
    assert peer.rec.take() == [("reset", 5, PROTOCOL_ERROR)]
    # depending on another stream is fine, as is a PRIORITY frame for an idle stream
    assert peer.send(raw(PRIORITY, 0, 9, (3).to_bytes(4, "big") + b"\x10")) == []
    assert peer.send(raw(PRIORITY, 0, 11, (11).to_bytes(4, "big") + b"\x10")) == []


def test_a_server_that_announces_push_is_a_connection_error() -> None:
    """RFC 9113 6.5.2: a server never sends SETTINGS_ENABLE_PUSH 1; from a client it is fine."""
    peer = Peer(client=True)
    peer.fails(PROTOCOL_ERROR, raw(SETTINGS, 0, 0, setting(2, 1)))
    server = Peer()
    assert server.send(raw(SETTINGS, 0, 0, setting(2, 1))) == [(SettingsFrame, ["ACK"], {})]


CLIENT_SIDE_ERRORS: dict[str, Builder] = {
    "HEADERS on an even stream": lambda p: p.headers(2, [(b":status", b"200")]),
    "HEADERS on a stream we never opened": lambda p: p.headers(3, [(b":status", b"200")]),
    "PUSH_PROMISE": lambda p: raw(PUSH, END_HEADERS, 1, (2).to_bytes(4, "big") + b"\x82"),
    "DATA on a stream we never opened": lambda p: raw(DATA, 0, 3, b"x"),
}


@pytest.mark.parametrize("build", CLIENT_SIDE_ERRORS.values(), ids=CLIENT_SIDE_ERRORS.keys())
def test_client_side_connection_errors(build: Builder) -> None:
    peer = Peer(client=True)
    peer.conn.open(GET, True)
    peer.conn.take()
    peer.fails(PROTOCOL_ERROR, build(peer))


def test_client_side_server_reset_and_late_frames() -> None:
    peer = Peer(client=True)
    sid = peer.conn.open(POST, False)
    peer.conn.take()
    assert peer.send(raw(RST, 0, sid, (CANCEL).to_bytes(4, "big"))) == []
    assert peer.rec.take() == [("reset", sid, CANCEL)]
    assert peer.conn.streams == {} and not peer.conn.send_data(sid, b"x")
    # late frames of the reset stream are ignored, its header block still decoded
    assert (
        peer.send(peer.headers(sid, OK), raw(DATA, 0, sid, b"x"), raw(RST, 0, sid, bytes(4))) == []
    )
    sid = peer.conn.open(GET, True)
    peer.send(peer.headers(sid, OK, True))
    assert peer.rec.take() == [("headers", sid, OK, True)]


# -- floods (weft.core.h2limits) ---------------------------------------------------------------

CONTROL = (PingFrame, SettingsFrame, RstStreamFrame)


def pings(n: int) -> bytes:
    return b"".join(raw(PING, 0, 0, i.to_bytes(8, "big")) for i in range(n))


def controls(data: bytes) -> int:
    """Control frames (PING, SETTINGS, RST_STREAM) in ``data``."""
    return sum(isinstance(f, CONTROL) for f in frames(data))


@pytest.mark.parametrize(
    "flood",
    [pings, lambda n: raw(SETTINGS, 0, 0) * n],
    ids=["PING", "SETTINGS"],
)
def test_ping_and_settings_floods_are_answered_up_to_1000_unsent_acks(
    flood: Callable[[int], bytes],
) -> None:
    """1000 at once are answered; once taken (sent), 1000 more; 20,000 are a flood."""
    peer = Peer()
    for _ in range(2):
        peer.conn.receive(flood(1000))
        assert controls(peer.conn.take()) == 1000
    peer.fails(ENHANCE_YOUR_CALM, flood(20_000))


def test_a_peer_that_does_not_read_gets_at_most_1000_control_frames_queued() -> None:
    peer = Peer(limits=H2Limits(max_control_out=300))
    conn = peer.conn
    conn.output_blocked(True)  # the transport's buffer is full: what take() gives stays unsent
    for _ in range(3):
        conn.receive(pings(100))
        assert controls(conn.take()) == 100
    conn.output_blocked(False)  # it read: the count starts again
    conn.output_blocked(True)
    for _ in range(3):
        conn.receive(pings(100))
        conn.take()
    peer.fails(ENHANCE_YOUR_CALM, pings(1))


def test_the_owners_own_resets_are_not_counted() -> None:
    """A client going away with its streams makes the proxy reset as many upstream at once: the
    shared upstream connection must not end for it."""
    peer = Peer(client=True, limits=H2Limits(max_control_out=10))
    sids = [peer.conn.open(GET, True) for _ in range(50)]
    for sid in sids:
        peer.conn.reset(sid, CANCEL)
    sent = peer.send(pings(10))  # in the same write as the 50 resets
    assert sent[-10:] == [(PingFrame, ["ACK"], i.to_bytes(8, "big")) for i in range(10)]
    assert [f for f in sent if f[0] is RstStreamFrame] == [rst(sid, CANCEL) for sid in sids]
    assert not peer.conn.dead


def test_streams_reset_for_their_errors_count_as_control_frames() -> None:
    peer = Peer(limits=H2Limits(max_control_out=100), max_streams=1000)
    bad = peer.block([*BASE, (b"x-a", b" 1")])  # malformed: a stream error each
    assert (
        len(
            peer.send(*[raw(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, bad) for i in range(100)])
        )
        == 100
    )
    peer.fails(
        ENHANCE_YOUR_CALM,
        *[raw(HEADERS, END_HEADERS | END_STREAM, 2 * i + 201, bad) for i in range(101)],
    )


def test_settings_of_more_than_32_entries() -> None:
    peer = Peer()
    assert peer.send(raw(SETTINGS, 0, 0, setting(4, 70000) * 32)) == [(SettingsFrame, ["ACK"], {})]
    peer.fails(ENHANCE_YOUR_CALM, raw(SETTINGS, 0, 0, setting(4, 70000) * 33))


def rapid_resets(first: int, n: int, block: bytes) -> bytes:
    """``n`` requests (GET, END_STREAM), each reset at once, on streams from ``first``."""
    return b"".join(
        raw(HEADERS, END_HEADERS | END_STREAM, sid, block)
        + raw(RST, 0, sid, CANCEL.to_bytes(4, "big"))
        for sid in range(first, first + 2 * n, 2)
    )


def test_rapid_reset_ends_the_connection() -> None:
    """CVE-2023-44487: 10,000 requests reset as soon as sent. The first 249 are heard (and reset:
    the owner sends them nowhere); the 250th reset, half of a first window of 500 streams, ends
    the connection."""
    peer = Peer(max_streams=1000)
    block = peer.block(GET)
    assert peer.send(rapid_resets(1, 249, block)) == []
    events = peer.rec.take()
    assert len(events) == 2 * 249 and events[-1] == ("reset", 497, CANCEL)
    peer.fails(ENHANCE_YOUR_CALM, rapid_resets(499, 10_000, block))
    assert len(peer.rec.take()) == 2


def test_resets_after_the_answer_or_amid_completed_streams_are_not_rapid() -> None:
    peer = Peer(max_streams=1000)
    conn = peer.conn
    block = peer.block(GET)
    sid = 1
    # cancelled after their answer started (a client that read enough): any number
    for _ in range(600):
        peer.send(raw(HEADERS, END_HEADERS | END_STREAM, sid, block))
        conn.send_headers(sid, OK, False)
        peer.send(raw(RST, 0, sid, CANCEL.to_bytes(4, "big")))
        sid += 2
    # 900 completed, 400 reset before their answer (44%): allowed
    for i in range(1300):
        peer.send(raw(HEADERS, END_HEADERS | END_STREAM, sid, block))
        if i % 13 < 4:
            peer.send(raw(RST, 0, sid, CANCEL.to_bytes(4, "big")))
        else:
            conn.send_headers(sid, OK, True)
        sid += 2
    conn.take()
    assert not conn.dead
    # from then on, only resets: once they are half of the recent streams, GOAWAY
    peer.fails(ENHANCE_YOUR_CALM, rapid_resets(sid, 2000, block))
    resets = [e for e in peer.rec.take() if e[0] == "reset" and e[1] >= sid]
    assert 100 < len(resets) < 1000


def test_resets_a_second_or_more_after_the_start_are_not_rapid() -> None:
    """Long polls that end at their deadline, unanswered, are no flood (Envoy's rule: a
    premature reset comes within a second of the stream's start); the owner gives the time of
    each read (``now``)."""
    peer = Peer(max_streams=1000)
    conn = peer.conn
    block = peer.block(GET)
    cancel = CANCEL.to_bytes(4, "big")
    for sid in range(1, 4000, 2):
        conn.now = 10.0 * sid
        peer.send(raw(HEADERS, END_HEADERS | END_STREAM, sid, block))
        conn.now += 1.0
        peer.send(raw(RST, 0, sid, cancel))
    assert not conn.dead and len(peer.rec.take()) == 4000
    peer.fails(ENHANCE_YOUR_CALM, rapid_resets(4001, 1000, block))  # all at the same time


def test_empty_frames_in_a_row() -> None:
    peer = Peer()
    peer.send(peer.headers(1, POST), peer.headers(3, POST))
    # one empty DATA at a time, or with END_STREAM: fine
    assert (
        peer.send(raw(DATA, 0, 1), raw(DATA, 0, 1, b"x"), raw(DATA, 0, 1), raw(DATA, 0, 1, b"y"))
        == []
    )
    assert peer.send(raw(DATA, 0, 3), raw(DATA, END_STREAM, 3)) == []
    peer.fails(ENHANCE_YOUR_CALM, raw(DATA, 0, 1), raw(DATA, 0, 1))


def test_empty_continuations_in_a_row() -> None:
    peer = Peer()
    block = peer.block(GET)
    peer.fails(ENHANCE_YOUR_CALM, raw(HEADERS, 0, 1, block[:2]), *[raw(CONT, 0, 1)] * 10_000)


def test_empty_headers_in_a_row() -> None:
    peer = Peer()
    peer.fails(ENHANCE_YOUR_CALM, raw(HEADERS, 0, 1), raw(CONT, 0, 1), raw(CONT, END_HEADERS, 1))


def test_priority_flood() -> None:
    peer = Peer()
    assert peer.send(*[raw(PRIORITY, 0, 1, bytes(5))] * 100) == []  # 100 for the connection
    assert peer.send(peer.headers(1, POST), *[raw(PRIORITY, 0, 3, bytes(5))] * 100) == []
    peer.fails(ENHANCE_YOUR_CALM, raw(PRIORITY, 0, 5, bytes(5)))


def test_window_update_flood() -> None:
    peer = Peer()
    conn = peer.conn
    one = (1).to_bytes(4, "big")
    peer.send(peer.headers(1, POST))  # 1 + 2 * 1 WINDOW_UPDATEs allowed so far
    assert peer.send(*[raw(WINDOW, 0, 0, one)] * 3) == []
    conn.send_headers(1, OK, False)
    conn.send_data(1, b"x" * 10)  # each DATA frame sent allows 20 more
    conn.take()
    assert peer.send(*[raw(WINDOW, 0, 1, one)] * 20) == []
    peer.rec.take()
    peer.fails(ENHANCE_YOUR_CALM, *[raw(WINDOW, 0, 0, one)] * 20_000)


def test_a_heavy_normal_workload_never_trips_the_limits() -> None:
    """10,000 requests from an h2 client on one connection, with a PING every 100 requests, a
    tenth of them cancelled before their answer and a tenth after it, answers with a body the
    client acknowledges (WINDOW_UPDATE), some PRIORITY frames, and the client's own SETTINGS."""
    p = Pair(ours_client=False, max_streams=1000)
    peer, conn = p.peer, p.conn
    answered = 0
    for batch in range(100):
        first = peer.get_next_available_stream_id()
        sids = [first + 2 * i for i in range(100)]
        before, after = set(sids[::10]), set(sids[5::10])  # cancelled before / after the answer
        for i, sid in enumerate(sids):
            if i % 3:
                peer.send_headers(sid, POST)
                peer.send_data(sid, b"request", end_stream=True)
            else:
                peer.send_headers(sid, GET, end_stream=True)
        for sid in before:
            peer.reset_stream(sid, CANCEL)
        peer.prioritize(sids[1], weight=32)
        peer.ping(b"%08d" % batch)
        if batch % 10 == 0:
            peer.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 16384 + batch})
        p.exchange()
        requests = [e[1] for e in p.rec.take() if e[0] == "headers"]
        assert len(requests) == 100
        for sid in requests:
            if sid in conn.streams:
                conn.send_headers(sid, OK, False)
                conn.send_data(sid, b"answer" * 16, end=sid not in after)
                answered += 1
        p.exchange()
        for sid in after:
            peer.reset_stream(sid, CANCEL)
        p.exchange()
        p.rec.take()
    assert not conn.dead and answered == 9000


# -- properties --------------------------------------------------------------------------------

HEADER_BLOCKS = [
    b"\x82\x86\x84\x41\x07example",  # GET (adds :authority to the table)
    b"\x83\x86\x84\x5c\x013",  # POST, content-length: 3
    b"\x88",  # :status 200
    b"\x48\x03100",  # :status 100
    b"\x40\x0bgrpc-status\x010",  # trailers
    b"\x40\x07X-Upper\x011",  # malformed
    b"\xbe",  # the newest table entry
    b"\x80",  # HPACK error
]
chunks = st.one_of(
    st.binary(max_size=30),
    st.builds(
        raw,
        st.integers(0, 11),
        st.integers(0, 255),
        st.sampled_from([0, 1, 2, 3, 5, 7]),
        st.binary(max_size=24),
    ),
    st.builds(
        raw,
        st.sampled_from([HEADERS, CONT]),
        st.sampled_from([0, END_HEADERS, END_HEADERS | END_STREAM, END_STREAM]),
        st.sampled_from([1, 3, 5]),
        st.sampled_from(HEADER_BLOCKS),
    ),
    st.builds(
        raw,
        st.just(DATA),
        st.sampled_from([0, END_STREAM]),
        st.sampled_from([1, 3]),
        st.binary(max_size=5),
    ),
)


def _check_events(events: list[Event]) -> None:
    """Per stream, the handler hears headers first, and nothing after a reset or an end."""
    state: dict[int, str] = {}
    for event in events:
        kind, sid = event[0], event[1] if len(event) > 1 else 0
        if kind == "headers":
            assert state.get(sid, "open") == "open", event
            state[sid] = "ended" if event[3] else "open"
        elif kind == "data":
            assert state.get(sid) == "open", event
            if event[3]:
                state[sid] = "ended"
        elif kind == "reset":
            assert state.get(sid, "open") in ("open", "ended"), event
            state[sid] = "reset"


@settings(max_examples=150, deadline=None)
@given(st.booleans(), st.lists(chunks, max_size=12), st.data())
def test_arbitrary_input_raises_only_h2error(
    client: bool, parts: list[bytes], data: st.DataObject
) -> None:
    peer = Peer(client=client)
    if client:
        peer.conn.open(POST, False)
        peer.conn.open(GET, True)
    stream = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    for piece in pieces:
        try:
            peer.conn.receive(piece)
        except H2Error as exc:
            assert peer.conn.dead
            assert summary(peer.conn.take())[-1] == (
                GoAwayFrame,
                peer.conn.highest_inbound,
                exc.code,
            )
            break
        summary(peer.conn.take())  # whatever it queued parses as frames
    _check_events(peer.rec.events)


def _client_exchange(streams: list[tuple[int, bool, bool]], pings: int) -> bytes:
    """What an h2 client sends for ``streams`` (body size, trailers, large headers)."""
    client = h2_peer(True)
    client.initiate_connection()
    for i, (size, trailers, large) in enumerate(streams):
        sid = 2 * i + 1
        headers = [*POST, *([LARGE] if large else []), (b"x-i", str(i).encode())]
        client.send_headers(sid, headers, end_stream=not size and not trailers)
        if size:
            client.send_data(sid, bytes([i]) * size, end_stream=not trailers)
        if trailers:
            client.send_headers(sid, TRAILERS, end_stream=True)
    for i in range(pings):
        client.ping(bytes([i]) * 8)
    client.increment_flow_control_window(1000)
    return client.data_to_send()


def _server_run(pieces: list[bytes]) -> tuple[list[Event], bytes]:
    rec = Recorder()
    conn = H2Conn(rec, client=False, stream_window=4000, connection_window=9000)
    conn.start()
    for piece in pieces:
        conn.receive(piece)
    return rec.events, conn.take()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4000), st.booleans(), st.booleans()), min_size=1, max_size=4),
    st.integers(0, 2),
    st.data(),
)
def test_any_split_of_a_valid_exchange_gives_the_same_events(
    streams: list[tuple[int, bool, bool]], pings: int, data: st.DataObject
) -> None:
    stream = _client_exchange(streams, pings)
    if any(large for _, _, large in streams):
        assert any(isinstance(f, ContinuationFrame) for f in frames(stream))
    whole_events, whole_out = _server_run([stream])
    # the exchange is valid: every request arrives, nothing is reset
    assert [e[1] for e in whole_events if e[0] == "headers" and e[2][0] == POST[0]] == [
        2 * i + 1 for i in range(len(streams))
    ]
    assert not any(e[0] == "reset" for e in whole_events)
    assert sum(len(e[2]) for e in whole_events if e[0] == "data") == sum(s for s, _, _ in streams)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    events, out = _server_run(pieces)
    assert events == whole_events
    assert out == whole_out


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=20), st.integers(0, 3))
def test_any_split_of_a_server_answer_gives_the_same_events(cuts: list[int], n: int) -> None:
    """Client side: an h2 server's answers (1xx, response, body, trailers) fed whole and in
    pieces to two identical connections."""

    def client() -> tuple[H2Conn, Recorder]:
        rec = Recorder()
        conn = H2Conn(rec, client=True)
        conn.start()
        for _ in range(n + 1):
            conn.open(GET, True)
        return conn, rec

    conn, _ = client()
    server = h2_peer(False)
    server.initiate_connection()
    server.receive_data(conn.take())
    for i in range(n + 1):
        sid = 2 * i + 1
        if i % 2:
            server.send_headers(sid, [(b":status", b"103")])
        server.send_headers(sid, [*OK, *(BIG[:1] if i == 2 else [])])
        server.send_data(sid, bytes([i]) * (100 * i))
        server.send_headers(sid, TRAILERS, end_stream=True)
    answer = server.data_to_send()
    whole, rec_whole = client()
    whole.receive(answer)
    split, rec_split = client()
    pos = 0
    for cut in cuts:
        split.receive(answer[pos : pos + cut])
        pos += cut
    split.receive(answer[pos:])
    assert rec_split.events == rec_whole.events
    assert len(rec_whole.events) == 1 + sum(3 if i else 2 for i in range(n + 1))  # + SETTINGS
    assert whole.take() == split.take()
    assert whole.streams == split.streams == {}


def _flood_input(items: list[tuple[bytes, int]], block: bytes) -> list[bytes]:
    """The reads of a peer: each item a frame repeated, or (``b""``) that many rapid resets."""
    reads = []
    sid = 101
    for frame, n in items:
        if frame:
            reads.append(frame * n)
        else:
            reads.append(rapid_resets(sid, n, block))
            sid += 2 * n
    return reads


flood_items = st.tuples(
    st.one_of(
        chunks,
        st.just(b""),  # rapid resets
        st.builds(raw, st.just(PING), st.sampled_from([0, 1]), st.just(0), st.just(bytes(8))),
        st.builds(
            raw,
            st.just(SETTINGS),
            st.sampled_from([0, 1]),
            st.just(0),
            st.sampled_from([b"", setting(4, 70000), setting(1, 0) * 40]),
        ),
        st.builds(
            raw,
            st.just(PRIORITY),
            st.just(0),
            st.sampled_from([1, 3]),
            st.sampled_from([bytes(5), bytes(4)]),
        ),
        st.builds(
            raw, st.just(WINDOW), st.just(0), st.sampled_from([0, 1]), st.just(b"\x00\x00\x00\x01")
        ),
        st.builds(raw, st.just(RST), st.just(0), st.sampled_from([1, 3, 5]), st.just(bytes(4))),
    ),
    st.integers(1, 2500),
)


@settings(max_examples=60, deadline=None)
@given(st.booleans(), st.lists(flood_items, max_size=6))
def test_output_stays_bounded_whatever_the_peer_sends(
    reads_back: bool, items: list[tuple[bytes, int]]
) -> None:
    """Whatever frames a peer sends (floods of any kind among them), what the connection queues
    stays bounded: at most ``max_control_out`` control frames between two takes (or, for a peer
    that does not read, in all), and never more than twice the bytes received (plus a GOAWAY)."""
    peer = Peer(max_streams=1000)
    conn = peer.conn
    if not reads_back:
        conn.output_blocked(True)
    received = sent = control = 0
    for data in _flood_input(items, peer.block(GET)):
        received += len(data)
        with contextlib.suppress(H2Error):
            conn.receive(data)
        out = conn.take()
        sent += len(out)
        control = controls(out) if reads_back else control + controls(out)
        assert control <= 1000
        assert sent <= 2 * received + 17
        if conn.dead:
            break
