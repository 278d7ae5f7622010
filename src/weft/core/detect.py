"""Protocol detection on the first bytes a client sends, and ClientHello inspection.

:func:`detect` classifies a connection's prefix as HTTP/2 (the exact client preface), HTTP/1 (a
request line), TLS (a ClientHello record) or opaque, or returns ``None`` when more bytes are
needed. It decides as early as the bytes allow and is monotone: once a prefix is decided, every
extension of it decides the same, so the caller can feed the bytes it has read so far and stop
reading at the first decision. At ``max_bytes`` (Linkerd reads up to 1024) an undecided prefix is
opaque.

:func:`parse_client_hello` extracts the SNI server name and the ALPN protocols from a complete
ClientHello (possibly split over several TLS records), for the inbound TLS path.

Sans-I/O: pure functions over bytes. Not for: reading from sockets or timeouts (the proxy's detect
timeout lives in the shell), nor parsing HTTP beyond the first request line.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "H2_PREFACE",
    "MAX_CLIENT_HELLO",
    "Protocol",
    "TlsHello",
    "detect",
    "h2_server_greeting",
    "parse_client_hello",
]


class Protocol(enum.Enum):
    HTTP1 = "http1"
    HTTP2 = "http2"
    TLS = "tls"
    OPAQUE = "opaque"


@dataclass(frozen=True, slots=True)
class TlsHello:
    """What a ClientHello asks for: the SNI host name and the ALPN protocols, in client order."""

    server_name: str | None
    alpn: tuple[str, ...]


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HTTP1_VERSION = b"HTTP/1."
_MAX_METHOD = 16

# RFC 9110 tchar: "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" /
# "|" / "~" / DIGIT / ALPHA
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# request-target bytes: visible ASCII (no SP, no controls, no DEL, no obs-text)
_TARGET = frozenset(range(0x21, 0x7F))

_TLS_HANDSHAKE = 0x16
_TLS_CLIENT_HELLO = 0x01
_TLS_MAX_RECORD = 1 << 14  # TLSPlaintext.length limit (RFC 8446 5.1)

# Real ClientHellos are a few KiB (post-quantum key shares included); refusing larger ones keeps
# the bytes a proxy buffers before deciding bounded.
MAX_CLIENT_HELLO = 1 << 16

_EXT_SERVER_NAME = 0
_EXT_ALPN = 16


def detect(prefix: bytes, *, max_bytes: int = 1024) -> Protocol | None:
    """Classify the first bytes of a connection, or ``None`` if more bytes are needed.

    Only the first ``max_bytes`` bytes are looked at; if they do not decide, the connection is
    ``OPAQUE``.
    """
    if max_bytes < 1:
        raise ValueError(f"detect max_bytes must be >= 1, got {max_bytes!r}")
    data = prefix[:max_bytes]
    if not data:
        return None
    decision = _detect_tls(data) if data[0] == _TLS_HANDSHAKE else _detect_http(data)
    if decision is None and len(data) >= max_bytes:
        return Protocol.OPAQUE
    return decision


def h2_server_greeting(greeting: bytes) -> bool | None:
    """Whether a server's first bytes are an HTTP/2 server preface (a SETTINGS frame on stream 0,
    not an ACK), which an h2c server such as grpcio sends as soon as it accepts, before the
    client's preface: no sign that the server speaks first. None: too few bytes to tell."""
    head = greeting[:9]
    # length (3 bytes: a multiple of 6, at most a few dozen settings), type 0x4, flags 0,
    # stream id 0
    expected = (0x00, None, None, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00)
    for byte, want in zip(head, expected, strict=False):
        if want is not None and byte != want:
            return False
    if len(head) >= 3 and ((head[1] << 8) | head[2]) % 6:
        return False
    return True if len(head) == 9 else None


def _detect_tls(data: bytes) -> Protocol | None:
    # record: type(1)=0x16, legacy_version(2)=0x03 0x00..0x04, length(2), then the handshake
    # message's type(1)=0x01 ClientHello.
    n = len(data)
    if n >= 2 and data[1] != 0x03:
        return Protocol.OPAQUE
    if n >= 3 and data[2] > 0x04:
        return Protocol.OPAQUE
    if n >= 5:
        length = (data[3] << 8) | data[4]
        if length == 0 or length > _TLS_MAX_RECORD:
            return Protocol.OPAQUE
    if n >= 6:
        return Protocol.TLS if data[5] == _TLS_CLIENT_HELLO else Protocol.OPAQUE
    return None


def _detect_http(data: bytes) -> Protocol | None:
    n = len(data)
    # HTTP/2 preface first: it is also a (non-HTTP/1) request line prefix, "PRI * HTTP/2.0".
    k = min(n, len(H2_PREFACE))
    if data[:k] == H2_PREFACE[:k]:
        return Protocol.HTTP2 if k == len(H2_PREFACE) else None

    # Empty lines before the request line are ignored by HTTP/1 servers (RFC 9112 2.2, llhttp
    # does): a client that sends them still speaks HTTP, and must get HTTP's policy (routes,
    # authorization per request, rate limits), not an opaque relay that bypasses it.
    skipped = 0
    while skipped < n and data[skipped] in b"\r\n":
        skipped += 1
    if skipped == n:
        return None
    if skipped:
        data = data[skipped:]
        n -= skipped

    # method = 1*tchar, at most _MAX_METHOD long, then SP
    i = 0
    while i < n and data[i] in _TCHAR:
        i += 1
        if i > _MAX_METHOD:
            return Protocol.OPAQUE
    if i == n:
        return None
    if i == 0 or data[i] != 0x20:
        return Protocol.OPAQUE
    i += 1

    # request-target = 1*visible, then SP
    start = i
    while i < n and data[i] in _TARGET:
        i += 1
    if i == n:
        return None
    if i == start or data[i] != 0x20:
        return Protocol.OPAQUE
    i += 1

    # "HTTP/1." decides
    got = data[i : i + len(_HTTP1_VERSION)]
    if got != _HTTP1_VERSION[: len(got)]:
        return Protocol.OPAQUE
    return Protocol.HTTP1 if len(got) == len(_HTTP1_VERSION) else None


# -- ClientHello ------------------------------------------------------------------------------


class _Reader:
    """Bounds-checked big-endian reads over a ClientHello body; errors are ValueError."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes, what: str) -> None:
        self.buf = buf
        self.pos = 0
        self.what = what

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, field: str) -> bytes:
        if n > self.remaining():
            raise ValueError(
                f"malformed {self.what}: {field} needs {n} bytes, {self.remaining()} left"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "big")

    def vector(self, len_size: int, field: str) -> bytes:
        return self.take(self.uint(len_size, f"{field} length"), field)


def parse_client_hello(data: bytes) -> TlsHello | None:
    """SNI and ALPN from the TLS records at the start of ``data``.

    Returns ``None`` while the ClientHello is incomplete; raises ``ValueError`` when the bytes are
    not a well-formed ClientHello. Bytes after the ClientHello are ignored.
    """
    handshake = bytearray()
    pos = 0
    msg_len: int | None = None
    while msg_len is None or len(handshake) < 4 + msg_len:
        if len(data) - pos < 5:
            return None
        ctype, major, minor = data[pos], data[pos + 1], data[pos + 2]
        length = (data[pos + 3] << 8) | data[pos + 4]
        if ctype != _TLS_HANDSHAKE:
            raise ValueError(f"malformed TLS record: content type {ctype:#04x}, want handshake")
        if major != 0x03 or minor > 0x04:
            raise ValueError(f"malformed TLS record: version {major:#04x} {minor:#04x}")
        if length == 0 or length > _TLS_MAX_RECORD:
            raise ValueError(f"malformed TLS record: length {length}")
        if len(data) - pos - 5 < length:
            return None
        handshake += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if msg_len is None and len(handshake) >= 4:
            if handshake[0] != _TLS_CLIENT_HELLO:
                raise ValueError(f"malformed TLS handshake: type {handshake[0]}, want ClientHello")
            msg_len = int.from_bytes(handshake[1:4], "big")
            if msg_len > MAX_CLIENT_HELLO:
                raise ValueError(
                    f"ClientHello length {msg_len} exceeds the limit of {MAX_CLIENT_HELLO}"
                )
    return _parse_client_hello_body(bytes(handshake[4 : 4 + msg_len]))


def _parse_client_hello_body(body: bytes) -> TlsHello:
    r = _Reader(body, "ClientHello")
    r.take(2, "legacy_version")
    r.take(32, "random")
    session_id = r.vector(1, "legacy_session_id")
    if len(session_id) > 32:
        raise ValueError(f"malformed ClientHello: legacy_session_id length {len(session_id)}")
    suites = r.vector(2, "cipher_suites")
    if not suites or len(suites) % 2:
        raise ValueError(f"malformed ClientHello: cipher_suites length {len(suites)}")
    if not r.vector(1, "legacy_compression_methods"):
        raise ValueError("malformed ClientHello: empty legacy_compression_methods")
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    if r.remaining() == 0:  # no extensions at all (SSL 3.0 style)
        return TlsHello(server_name=None, alpn=())
    exts = _Reader(r.vector(2, "extensions"), "ClientHello extensions")
    if r.remaining():
        raise ValueError(f"malformed ClientHello: {r.remaining()} trailing bytes")
    seen: set[int] = set()
    while exts.remaining():
        ext_type = exts.uint(2, "extension type")
        ext_data = exts.vector(2, f"extension {ext_type}")
        if ext_type in seen:
            raise ValueError(f"malformed ClientHello: duplicate extension {ext_type}")
        seen.add(ext_type)
        if ext_type == _EXT_SERVER_NAME:
            server_name = _parse_sni(ext_data)
        elif ext_type == _EXT_ALPN:
            alpn = _parse_alpn(ext_data)
    return TlsHello(server_name=server_name, alpn=alpn)


def _parse_sni(ext_data: bytes) -> str | None:
    outer = _Reader(ext_data, "server_name extension")
    names = _Reader(outer.vector(2, "server_name_list"), "server_name_list")
    if outer.remaining():
        raise ValueError(f"malformed server_name extension: {outer.remaining()} trailing bytes")
    host: str | None = None
    while names.remaining():
        name_type = names.uint(1, "name_type")
        name = names.vector(2, "host_name")
        if name_type != 0:
            continue
        if host is not None:
            raise ValueError("malformed server_name extension: two host_name entries")
        if not name:
            raise ValueError("malformed server_name extension: empty host_name")
        try:
            host = name.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"malformed server_name extension: host_name {name!r}") from None
    return host


def _parse_alpn(ext_data: bytes) -> tuple[str, ...]:
    outer = _Reader(ext_data, "ALPN extension")
    protos = _Reader(outer.vector(2, "protocol_name_list"), "protocol_name_list")
    if outer.remaining():
        raise ValueError(f"malformed ALPN extension: {outer.remaining()} trailing bytes")
    out: list[str] = []
    while protos.remaining():
        name = protos.vector(1, "protocol_name")
        if not name:
            raise ValueError("malformed ALPN extension: empty protocol_name")
        try:
            out.append(name.decode("ascii"))
        except UnicodeDecodeError:
            raise ValueError(f"malformed ALPN extension: protocol_name {name!r}") from None
    if not out:
        raise ValueError("malformed ALPN extension: empty protocol_name_list")
    return tuple(out)
