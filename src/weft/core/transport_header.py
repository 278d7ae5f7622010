"""The mesh transport header: what a client proxy tells a server proxy, inside mutual TLS, about
a connection it sent straight to the server proxy's inbound port.

A client proxy that dials a meshed endpoint connects to the server pod's proxy (its inbound port,
4143) instead of the app's port, and writes this header as the first bytes after the TLS
handshake. The header names the app port the connection is for (the server proxy's policy,
metrics and app address all follow from it) and, when the client knows it, the protocol it will
speak. Because the server proxy knows *before any byte* that such a connection comes from a mesh
proxy, it never races an app's greeting against the client's ClientHello (Linkerd's "opaque
transport" header, ``transport.l5d.io/v1``, plays the same part).

Wire form (version 1), 9 bytes::

    b"weft"  version (1)  length (3)  port (u16, big endian, 1..65535)  protocol (0 none,
    1 http1, 2 http2)

``length`` is the size of the body after it, so a later version can grow within
:data:`MAX_HEADER`; version 1 takes exactly 3 bytes. Parsing is strict: any other magic,
version, length, port 0 or protocol code is :class:`TransportHeaderError` (the server closes the
connection). Bytes that may still become a header decode to ``None`` (read more).

Sans-I/O: pure functions over bytes. Not for: deciding which connections carry the header
(the proxy's inbound listener), nor TLS.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MAGIC",
    "MAX_HEADER",
    "PROTOCOLS",
    "VERSION",
    "TransportHeader",
    "TransportHeaderError",
    "decode",
    "encode",
]

MAGIC = b"weft"
VERSION = 1
_BODY_V1 = 3
_PREFIX = len(MAGIC) + 2  # magic, version, length
MAX_HEADER = _PREFIX + 32  # the most a header can ever take: more is malformed
# protocol hints, by wire code (0: not known, detect)
PROTOCOLS: tuple[str | None, ...] = (None, "http1", "http2")


class TransportHeaderError(ValueError):
    """The bytes are not a transport header this proxy understands."""


@dataclass(frozen=True, slots=True)
class TransportHeader:
    """The app port a mesh connection is for, and the protocol the client will speak if it
    knows (``"http1"``, ``"http2"``; ``None``: detect)."""

    port: int
    protocol: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise TransportHeaderError(f"port {self.port} is out of range")
        if self.protocol not in PROTOCOLS:
            raise TransportHeaderError(f"unknown protocol {self.protocol!r}")


def encode(header: TransportHeader) -> bytes:
    """The wire form of ``header`` (version 1)."""
    return (
        MAGIC
        + bytes((VERSION, _BODY_V1))
        + header.port.to_bytes(2, "big")
        + bytes((PROTOCOLS.index(header.protocol),))
    )


def decode(data: bytes) -> tuple[TransportHeader, int] | None:
    """The header at the start of ``data`` and its size, or ``None`` while ``data`` is a proper
    prefix of one; raises :class:`TransportHeaderError` as soon as the bytes cannot be one."""
    n = len(data)
    head = data[: len(MAGIC)]
    if head != MAGIC[: len(head)]:
        raise TransportHeaderError("not a transport header (bad magic)")
    if n > len(MAGIC) and data[len(MAGIC)] != VERSION:
        raise TransportHeaderError(f"unsupported transport header version {data[len(MAGIC)]}")
    if n > len(MAGIC) + 1 and data[len(MAGIC) + 1] != _BODY_V1:
        raise TransportHeaderError(f"bad transport header length {data[len(MAGIC) + 1]}")
    size = _PREFIX + _BODY_V1
    if n < size:
        return None
    port = int.from_bytes(data[_PREFIX : _PREFIX + 2], "big")
    code = data[_PREFIX + 2]
    if code >= len(PROTOCOLS):
        raise TransportHeaderError(f"unknown protocol code {code}")
    return TransportHeader(port, PROTOCOLS[code]), size
