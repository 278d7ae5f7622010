"""Mutual TLS between proxies: what the data path needs from the workload identity, and the
server side's termination of a connection whose first bytes were already read.

The inbound listener detects the protocol on the bytes a client sends first, so by the time it
sees a TLS ClientHello (whose SNI names this proxy's identity: mesh TLS) those bytes have been
consumed. :func:`terminate` hands the raw transport and those bytes to the event loop's own TLS
protocol (uvloop's, implemented in C, or asyncio's), so the handshake and every record after it
run in the loop's native TLS code; the application protocol it is given (an inner
:class:`~weft.proxy.server.Accept`) sees the decrypted stream as any other connection.

The client side needs nothing special: ``loop.create_connection(ssl=..., server_hostname=...)``
with the identity's client context, and the expected server identity as ``server_hostname`` (the
SNI the server proxy recognises, and the name OpenSSL checks the certificate against).

Not for: certificates and their renewal (:mod:`weft.proxy.identity`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("weft.proxy.tls")

HANDSHAKE_TIMEOUT = 10.0


class TlsSource(Protocol):
    """The proxy's current identity as the data path uses it (a ``ProxyIdentity``)."""

    @property
    def name(self) -> str: ...

    @property
    def trust_domain(self) -> str: ...

    @property
    def server_context(self) -> ssl.SSLContext | None: ...

    @property
    def client_context(self) -> ssl.SSLContext | None: ...


@dataclass(frozen=True, slots=True)
class PeerTls:
    """What the server side knows of a mesh TLS client: its identity, if it presented one."""

    client_id: str | None


def _ssl_protocol_class(loop: asyncio.AbstractEventLoop) -> Any:
    try:
        import uvloop

        if isinstance(loop, uvloop.Loop):
            import uvloop.loop

            return uvloop.loop.SSLProtocol  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass
    from asyncio.sslproto import SSLProtocol

    return SSLProtocol


def terminate(
    transport: asyncio.Transport,
    app_protocol: asyncio.Protocol,
    context: ssl.SSLContext,
    pre_read: bytes,
    *,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> asyncio.Future[None]:
    """Run the server side of TLS on ``transport``, whose first ``pre_read`` bytes were read
    already; ``app_protocol.connection_made`` gets the decrypted transport after the handshake.

    Returns the handshake's future (its exception, if any, is consumed and logged here; the
    transport is closed by the TLS protocol when the handshake fails)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    cls = _ssl_protocol_class(loop)
    proto = cls(
        loop,
        app_protocol,
        context,
        waiter,
        server_side=True,
        ssl_handshake_timeout=handshake_timeout,
    )
    transport.pause_reading()
    transport.set_protocol(proto)
    proto.connection_made(transport)
    if pre_read:
        view = proto.get_buffer(len(pre_read))
        n = min(len(view), len(pre_read))
        view[:n] = pre_read[:n]
        proto.buffer_updated(n)
        rest = pre_read[n:]
        while rest:  # the TLS protocol's buffer is smaller than what was read (rare)
            view = proto.get_buffer(len(rest))
            n = min(len(view), len(rest))
            view[:n] = rest[:n]
            proto.buffer_updated(n)
            rest = rest[n:]
    transport.resume_reading()

    def done(fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            peer = transport.get_extra_info("peername")
            log.info("mesh TLS handshake from %s failed: %s", peer, fut.exception())

    waiter.add_done_callback(done)
    return waiter


def outbound_tls_labels(identity: str | None) -> dict[str, str]:
    """The ``tls`` labels of an outbound endpoint when this proxy has an identity."""
    if identity:
        return {"tls": "true", "server_id": identity}
    return {"tls": "no_identity", "no_tls_reason": "not_provided_by_service_discovery"}


def inbound_tls_labels(peer: PeerTls | None) -> tuple[tuple[str, str], ...]:
    """The ``tls`` labels of an inbound connection (Linkerd's values)."""
    if peer is None:
        return (("no_tls_reason", "no_tls_from_remote"), ("tls", "no_identity"))
    if peer.client_id is None:
        return (("no_tls_reason", "no_client_certificate"), ("tls", "true"))
    return (("client_id", peer.client_id), ("tls", "true"))


__all__ = [
    "HANDSHAKE_TIMEOUT",
    "PeerTls",
    "TlsSource",
    "inbound_tls_labels",
    "outbound_tls_labels",
    "terminate",
]
