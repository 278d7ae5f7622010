"""HTTP/1.1 message framing, sans-I/O: hop-by-hop headers, chunked coding, the proxy's own
answers, and the transfer-coding check that keeps proxy and app agreeing on where a message ends.

Not for: parsing (httptools does it in :mod:`.server` and :mod:`.client`), deciding anything
about a request (:mod:`weft.proxy.outbound.logical`).
"""

from __future__ import annotations

from weft.policy import HeaderModifier
from weft.proxy.outbound.logical import ERROR_HEADER

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
STANDARD_CONNECTION_TOKENS = frozenset({b"keep-alive", b"close", b"upgrade", b""})
# request headers the proxy looks at (the hop-by-hop ones are also not forwarded)
REQUEST_SPECIAL = HOP_BY_HOP | {b"host", b"content-length", b"expect"}

REASONS = {
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def error_response(
    status: int,
    reason: str,
    *,
    close: bool,
    detail: str = "",
    head: bool = False,
    extra: bytes = b"",
) -> bytes:
    """A complete response the proxy sends on its own behalf (no body for a HEAD request);
    ``extra``: more header lines, each ending in CRLF (``retry-after``...)."""
    body = f"weft proxy: {detail or reason}\n".encode()
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Error")),
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(body),
        ERROR_HEADER + b": " + reason.encode() + b"\r\n",
        extra,
    ]
    if close:
        lines.append(b"connection: close\r\n")
    return b"".join(lines) + b"\r\n" + (b"" if head else body)


REDIRECT_REASONS = {301: b"Moved Permanently", 302: b"Found", 303: b"See Other",
                     307: b"Temporary Redirect", 308: b"Permanent Redirect"}  # fmt: skip
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"upgrade"})


def modify_lines(mod: HeaderModifier, lines: list[bytes]) -> list[bytes]:
    from weft.core.routes import apply_header_modifier

    pairs = [tuple(ln[:-2].split(b": ", 1)) for ln in lines]
    modified = apply_header_modifier(mod, pairs)  # type: ignore[arg-type]
    return [b"%s: %s\r\n" % kv for kv in modified]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def trailer_block(trailers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(b"%s: %s\r\n" % kv for kv in trailers)


_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def transfer_coding_error(te: bytes, *, http11: bool) -> tuple[int, str, str] | None:
    """Check a message's ``Transfer-Encoding`` (its field lines joined with ``", "``): None when
    it is ``chunked`` once and alone in an HTTP/1.1 message, the only coding the proxy relays;
    otherwise the answer a request gets (status, ``weft-proxy-error`` reason, detail). A response
    with any problem is a broken upstream (502) instead.

    Why this strict: a coding before ``chunked`` (``identity, chunked``, ``gzip, chunked``), empty
    elements, a repeated ``chunked``, or ``chunked`` in HTTP/1.0 are read differently by
    different parsers (llhttp itself frames several of them chunked and others close-delimited),
    so a proxy that relays them lets the next hop disagree about where the message ends. RFC 9112
    6.3: a request whose final coding is not chunked is 400 and close; 6.1: a coding the server
    does not implement may be 501; Transfer-Encoding in an HTTP/1.0 message is faulty framing.

    Not for: Content-Length (checked apart), the chunked body itself (the parser checks it).
    """
    if not http11:
        return 400, "bad-transfer-encoding", "Transfer-Encoding in an HTTP/1.0 message"
    # llhttp has stripped leading whitespace; it frames trailing spaces as chunked, a tab not
    if te.rstrip(b" ").lower() == b"chunked":
        return None
    codings = [c.strip(b" \t").lower() for c in te.split(b",")]
    if b"" in codings:
        return 400, "bad-transfer-encoding", "empty Transfer-Encoding element"
    if len(codings) == 1 or codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
        return 400, "bad-transfer-encoding", "Transfer-Encoding must be chunked, once and last"
    names = [c.split(b";", 1)[0].rstrip(b" \t") for c in codings[:-1]]
    if not all(name and _TCHAR.issuperset(name) for name in names):
        return 400, "bad-transfer-encoding", "malformed transfer coding"
    listed = b", ".join(names).decode("latin-1")
    return 501, "transfer-coding-not-implemented", f"transfer coding not implemented: {listed}"
