"""gRPC over HTTP/2, sans-I/O: which requests are gRPC calls, ``grpc-status`` in trailers,
``grpc-message`` encoding, ``grpc-timeout`` values, and the retry policy's gRPC code names.

Not for: deciding what a gRPC error is (:func:`weft.proxy.outbound.logical.grpc_status_for`).
"""

from __future__ import annotations

import re

from weft.proxy.outbound.logical import (
    Headers,
)

# RetryPolicy.grpc names (the retry.weft.io/grpc annotation) -> grpc-status values
GRPC_RETRY_CODES = {
    "cancelled": b"1",
    "deadline-exceeded": b"4",
    "resource-exhausted": b"8",
    "internal": b"13",
    "unavailable": b"14",
}
# grpc-timeout: at most 8 digits and a unit (gRPC over HTTP/2, "Timeout")
_GRPC_TIMEOUT = re.compile(rb"([0-9]{1,8})([HMSmun])")
_GRPC_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def is_grpc(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.startswith(b"application/grpc")
    return False


def grpc_message(text: str) -> bytes:
    """``text`` percent-encoded as gRPC's ``grpc-message`` wants (UTF-8; bytes outside
    printable ASCII, and ``%``, as ``%XX``)."""
    out = bytearray()
    for byte in text.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def trailer_status(headers: Headers) -> bytes | None:
    for name, value in headers:
        if name == b"grpc-status":
            return value
    return None


def parse_grpc_timeout(value: bytes) -> float | None:
    """A ``grpc-timeout`` value (``100m``, ``5S``, ``1H``) in seconds; None when malformed."""
    m = _GRPC_TIMEOUT.fullmatch(value)
    if m is None:
        return None
    return int(m.group(1)) * _GRPC_TIMEOUT_UNITS[m.group(2)]


def grpc_timeout_value(seconds: float) -> bytes:
    """``seconds`` (> 0) as a ``grpc-timeout`` value, in the finest unit that fits 8 digits."""
    for unit, scale in ((b"u", 1e6), (b"m", 1e3), (b"S", 1.0), (b"M", 1 / 60)):
        amount = max(1, int(seconds * scale))
        if amount < 100_000_000:
            return b"%d%s" % (amount, unit)
    return b"%dH" % min(99_999_999, max(1, int(seconds / 3600)))
