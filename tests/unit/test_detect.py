"""Unit, feeding and property tests for weft.core.detect."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weft.core.detect import (
    H2_PREFACE,
    MAX_CLIENT_HELLO,
    Protocol,
    TlsHello,
    detect,
    parse_client_hello,
)

# -- helpers ------------------------------------------------------------------------------------


def real_client_hello(server_hostname: str | None, alpn: list[str] | None) -> bytes:
    """The first flight of a real TLS client (the stdlib's OpenSSL), via memory BIOs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sock = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        sock.do_handshake()
    data = outgoing.read()
    assert data
    return data


def reframe(records: bytes, size: int) -> bytes:
    """Split the handshake bytes of ``records`` over TLS records of at most ``size`` bytes."""
    payload = b""
    pos = 0
    while pos < len(records):
        (length,) = struct.unpack("!H", records[pos + 3 : pos + 5])
        payload += records[pos + 5 : pos + 5 + length]
        pos += 5 + length
    out = b""
    for i in range(0, len(payload), size):
        chunk = payload[i : i + size]
        out += b"\x16\x03\x01" + struct.pack("!H", len(chunk)) + chunk
    return out


def ext(ext_type: int, data: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(data)) + data


def sni_ext(*names: tuple[int, bytes]) -> bytes:
    entries = b"".join(struct.pack("!BH", t, len(n)) + n for t, n in names)
    return ext(0, struct.pack("!H", len(entries)) + entries)


def alpn_ext(*protos: bytes) -> bytes:
    entries = b"".join(bytes([len(p)]) + p for p in protos)
    return ext(16, struct.pack("!H", len(entries)) + entries)


def hello(
    extensions: bytes | None,
    *,
    suites: bytes = b"\x13\x01",
    session_id: bytes = b"",
    trailing: bytes = b"",
) -> bytes:
    """A hand-built ClientHello record (for shapes a real client never sends)."""
    body = b"\x03\x03" + bytes(32)
    body += bytes([len(session_id)]) + session_id
    body += struct.pack("!H", len(suites)) + suites
    body += b"\x01\x00"
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    body += trailing
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(msg)) + msg


TLS_HELLO = real_client_hello("web.emojivoto.svc.cluster.local", ["h2", "http/1.1"])

# (name, bytes, final decision, length of the shortest deciding prefix)
SAMPLES: list[tuple[str, bytes, Protocol, int]] = [
    ("get", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Protocol.HTTP1, 13),
    ("post-path", b"POST /api/v1/x?y=1 HTTP/1.0\r\n", Protocol.HTTP1, 26),
    ("connect", b"CONNECT web:443 HTTP/1.1\r\n", Protocol.HTTP1, 23),
    ("options-star", b"OPTIONS * HTTP/1.1\r\n", Protocol.HTTP1, 17),
    ("absolute", b"GET http://a.b/c HTTP/1.1\r\n", Protocol.HTTP1, 24),
    ("ext-method", b"M-SEARCH * HTTP/1.1\r\n", Protocol.HTTP1, 18),
    ("h2", H2_PREFACE + b"\x00\x00\x12\x04", Protocol.HTTP2, 24),
    ("pri-http1", b"PRI * HTTP/1.1\r\n", Protocol.HTTP1, 13),
    ("tls", TLS_HELLO, Protocol.TLS, 6),
    # server-speaks-first and other opaque protocols' client bytes
    ("postgres-startup", b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Protocol.OPAQUE, 1),
    ("mysql-login", b"\x55\x00\x00\x01\x8d\xa6\xff\x09", Protocol.OPAQUE, 2),
    ("smtp-ehlo", b"EHLO mail.example.com\r\n", Protocol.OPAQUE, 22),
    ("smtp-mail", b"MAIL FROM:<a@b.c>\r\n", Protocol.OPAQUE, 18),
    ("nats-connect", b'CONNECT {"verbose":false}\r\n', Protocol.OPAQUE, 26),
    ("nats-pub", b"PUB foo.bar 5\r\nhello\r\n", Protocol.OPAQUE, 13),
    ("redis-resp", b"*1\r\n$4\r\nPING\r\n", Protocol.OPAQUE, 3),
    ("redis-inline", b"SET key value\r\n", Protocol.OPAQUE, 9),
    ("tls-serverhello", b"\x16\x03\x03\x00\x31\x02", Protocol.OPAQUE, 6),
    ("tls-bad-version", b"\x16\x03\x05\x00\x31\x01", Protocol.OPAQUE, 3),
    ("tls-zero-length", b"\x16\x03\x01\x00\x00\x01", Protocol.OPAQUE, 5),
    ("ssl2", b"\x80\x2e\x01\x00\x02", Protocol.OPAQUE, 1),
    ("http09", b"GET /\r\n", Protocol.OPAQUE, 6),
    ("http2-version", b"GET / HTTP/2\r\n", Protocol.OPAQUE, 12),
    ("long-method", b"ABCDEFGHIJKLMNOPQ / HTTP/1.1\r\n", Protocol.OPAQUE, 17),
    ("double-space", b"GET  / HTTP/1.1\r\n", Protocol.OPAQUE, 5),
    ("ctl-in-target", b"GET /\x01 HTTP/1.1\r\n", Protocol.OPAQUE, 6),
    ("utf8-target", "GET /ä HTTP/1.1\r\n".encode(), Protocol.OPAQUE, 6),
    # RFC 9112 2.2: empty lines before the request line are ignored (a bypass otherwise)
    ("leading-crlf", b"\r\nGET / HTTP/1.1\r\n", Protocol.HTTP1, 15),
    ("only-crlf-then-junk", b"\r\n\r\n\x00junk", Protocol.OPAQUE, 5),
]


# -- detect -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "want", "decided_at"), SAMPLES, ids=[s[0] for s in SAMPLES]
)
def test_byte_by_byte(name: str, data: bytes, want: Protocol, decided_at: int) -> None:
    for n in range(len(data) + 1):
        got = detect(data[:n])
        if n < decided_at:
            assert got is None, f"{name}: decided {got} on {data[:n]!r}"
        else:
            assert got is want, f"{name}: {got} on {data[:n]!r}"


def test_empty_needs_more() -> None:
    assert detect(b"") is None


def test_every_prefix_of_the_h2_preface_needs_more() -> None:
    for n in range(len(H2_PREFACE)):
        assert detect(H2_PREFACE[:n]) is None
    assert detect(H2_PREFACE) is Protocol.HTTP2


def test_h2_preface_mismatch_after_shared_part() -> None:
    # "PRI * HTTP/2.0\r\n" followed by something else is neither HTTP/2 nor an HTTP/1 request
    assert detect(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n") is Protocol.OPAQUE


def test_lowercase_method_is_a_token() -> None:
    # methods are case-sensitive tokens; a lowercase one is still a syntactically valid request
    assert detect(b"get / HTTP/1.1\r\n") is Protocol.HTTP1


def test_max_bytes_turns_undecided_into_opaque() -> None:
    long_target = b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n"
    assert detect(long_target[:1023]) is None
    assert detect(long_target[:1024]) is Protocol.OPAQUE
    assert detect(long_target) is Protocol.OPAQUE
    assert detect(b"GET /aaaa", max_bytes=8) is Protocol.OPAQUE
    assert detect(b"GET /", max_bytes=8) is None
    # decisions inside the window are kept
    assert detect(b"GET / HTTP/1.1\r\n" + b"x" * 5000) is Protocol.HTTP1
    assert detect(b"GET / HTTP/1.", max_bytes=13) is Protocol.HTTP1


def test_max_bytes_validated() -> None:
    with pytest.raises(ValueError, match="max_bytes must be >= 1, got 0"):
        detect(b"GET", max_bytes=0)


_HTTPISH = st.sampled_from(
    [b"", b"GET ", b"GET /", b"GET / ", b"GET / HTTP/1", b"PRI * HTTP/2.0\r\n", b"\x16\x03\x01"]
)


@given(head=_HTTPISH, tail=st.binary(max_size=64), max_bytes=st.integers(1, 80))
def test_detect_never_raises(head: bytes, tail: bytes, max_bytes: int) -> None:
    data = head + tail
    got = detect(data, max_bytes=max_bytes)
    assert got is None or isinstance(got, Protocol)
    if got is None:
        assert len(data) < max_bytes


@given(
    head=_HTTPISH,
    tail=st.binary(max_size=64),
    more=st.binary(max_size=32),
    max_bytes=st.integers(1, 1024),
)
def test_detect_is_monotone(head: bytes, tail: bytes, more: bytes, max_bytes: int) -> None:
    prefix = head + tail
    first = detect(prefix, max_bytes=max_bytes)
    if first is not None:
        assert detect(prefix + more, max_bytes=max_bytes) is first
    # and no prefix of a decided input decides differently
    whole = detect(prefix + more, max_bytes=max_bytes)
    for n in range(len(prefix + more) + 1):
        part = detect((prefix + more)[:n], max_bytes=max_bytes)
        assert part is None or part is whole


@given(
    method=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ-_", min_size=1, max_size=16),
    target=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1),
    minor=st.sampled_from("019"),
)
def test_any_valid_request_line_is_http1(method: str, target: str, minor: str) -> None:
    line = f"{method} {target} HTTP/1.{minor}\r\n".encode()
    assert detect(line, max_bytes=len(line)) is Protocol.HTTP1


# -- parse_client_hello -------------------------------------------------------------------------


def test_real_client_hello_sni_and_alpn() -> None:
    assert parse_client_hello(TLS_HELLO) == TlsHello(
        server_name="web.emojivoto.svc.cluster.local", alpn=("h2", "http/1.1")
    )


def test_real_client_hello_without_sni_or_alpn() -> None:
    data = real_client_hello(None, None)
    assert detect(data) is Protocol.TLS
    assert parse_client_hello(data) == TlsHello(server_name=None, alpn=())


def test_every_proper_prefix_is_incomplete() -> None:
    for n in range(len(TLS_HELLO)):
        assert parse_client_hello(TLS_HELLO[:n]) is None


def test_trailing_bytes_after_the_hello_are_ignored() -> None:
    assert parse_client_hello(TLS_HELLO + b"\x17\x03\x03garbage") == parse_client_hello(TLS_HELLO)


@pytest.mark.parametrize("size", [1, 3, 100, 511])
def test_hello_split_over_records(size: int) -> None:
    data = reframe(TLS_HELLO, size)
    assert data != TLS_HELLO
    assert parse_client_hello(data) == parse_client_hello(TLS_HELLO)
    for n in range(0, len(data), 7):
        assert parse_client_hello(data[:n]) is None


def test_hand_built_hello() -> None:
    exts = sni_ext((0, b"a.example")) + ext(0x000A, b"\x00\x02\x00\x1d") + alpn_ext(b"h2")
    assert parse_client_hello(hello(exts)) == TlsHello(server_name="a.example", alpn=("h2",))
    assert parse_client_hello(hello(None)) == TlsHello(server_name=None, alpn=())
    assert parse_client_hello(hello(b"")) == TlsHello(server_name=None, alpn=())
    # unknown SNI name types are skipped
    assert parse_client_hello(hello(sni_ext((7, b"x"), (0, b"b")))) == TlsHello("b", ())


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\x17\x03\x03\x00\x05hello", "content type 0x17"),
        (b"\x16\x02\x00\x00\x05hello", "version"),
        (b"\x16\x03\x01\x00\x00", "length 0"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "want ClientHello"),
        (b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "exceeds the limit"),
        (hello(ext(10, b"") + ext(10, b"")), "duplicate extension 10"),
        (hello(alpn_ext()), "empty protocol_name_list"),
        (hello(alpn_ext(b"")), "empty protocol_name"),
        (hello(alpn_ext(b"h\xff")), "protocol_name"),
        (hello(sni_ext((0, b""))), "empty host_name"),
        (hello(sni_ext((0, b"a"), (0, b"b"))), "two host_name"),
        (hello(sni_ext((0, "ä".encode()))), "host_name"),
        (hello(b"", suites=b""), "cipher_suites length 0"),
        (hello(b"", suites=b"\x13"), "cipher_suites length 1"),
        (hello(b"", session_id=bytes(33)), "legacy_session_id length 33"),
        (hello(b"", trailing=b"\x00"), "1 trailing bytes"),
        (hello(ext(0, b"\x00")), "server_name_list length"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_malformed_hello_raises_value_error(data: bytes, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_client_hello(data)


def test_max_client_hello_is_generous() -> None:
    assert len(TLS_HELLO) < MAX_CLIENT_HELLO


@given(st.binary(max_size=600))
def test_parse_random_bytes_only_value_error(data: bytes) -> None:
    try:
        got = parse_client_hello(data)
    except ValueError:
        return
    assert got is None or isinstance(got, TlsHello)


@given(pos=st.integers(0, len(TLS_HELLO) - 1), value=st.integers(0, 255))
def test_parse_mutated_hello_only_value_error(pos: int, value: int) -> None:
    data = bytearray(TLS_HELLO)
    data[pos] = value
    try:
        got = parse_client_hello(bytes(data))
    except ValueError:
        return
    assert got is None or isinstance(got, TlsHello)


def test_an_http2_servers_settings_greeting_is_recognized_byte_by_byte() -> None:
    from weft.core.detect import h2_server_greeting

    # grpcio's greeting: SETTINGS with 4 settings (24 bytes), flags 0, stream 0
    settings = bytes([0, 0, 24, 4, 0, 0, 0, 0, 0]) + b"\x00" * 24
    assert h2_server_greeting(settings) is True
    for n in range(1, 9):
        assert h2_server_greeting(settings[:n]) is None, n
    assert h2_server_greeting(bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])) is True  # empty SETTINGS
    # not a SETTINGS preface: a MySQL handshake, an SMTP banner, a SETTINGS ACK, stream 1,
    # a length that is no multiple of 6, a huge length
    assert h2_server_greeting(b"\x4a\x00\x00\x00\x0a8.0.36") is False
    assert h2_server_greeting(b"220 mail.example ESMTP\r\n") is False
    assert h2_server_greeting(bytes([0, 0, 0, 4, 1, 0, 0, 0, 0])) is False
    assert h2_server_greeting(bytes([0, 0, 6, 4, 0, 0, 0, 0, 1])) is False
    assert h2_server_greeting(bytes([0, 0, 7, 4, 0, 0, 0, 0, 0])) is False
    assert h2_server_greeting(bytes([1, 0, 6, 4, 0, 0, 0, 0, 0])) is False
