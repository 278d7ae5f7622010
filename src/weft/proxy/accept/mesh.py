"""The accept path's mesh-only steps: a mesh proxy's connection to the inbound port.

A connection to the inbound port itself comes from another mesh proxy: :func:`mesh_connection`
waits (as long as a TLS handshake may take) for a ClientHello naming this proxy, with no early
dial, and has it terminated; the decrypted side starts with a transport header, which
:func:`transport_target` reads to learn the app's port. :func:`client_identity` is the identity
a terminated client proved. Anything else on that port is closed: it serves no plaintext and no
one else's TLS.

Not for: TLS itself (:mod:`weft.proxy.inbound.tls`), detection (:mod:`.conn`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from weft.addr import Address
from weft.core.accept import mesh_hello
from weft.core.transport_header import TransportHeaderError
from weft.core.transport_header import decode as decode_header
from weft.proxy.inbound.tls import HANDSHAKE_TIMEOUT, TlsSource

if TYPE_CHECKING:
    from weft.proxy.accept.conn import Accept

log = logging.getLogger("weft.proxy")


async def mesh_connection(acc: Accept) -> None:
    """A mesh proxy's connection to the inbound port: wait (as long as a TLS handshake may
    take) for a ClientHello naming this proxy, with no early dial, then terminate TLS; the
    inner side reads the transport header. Anything else is closed: the inbound port
    serves no plaintext and no one else's TLS."""
    tls = acc.listener.tls
    event = acc.event
    assert tls is not None and acc.transport is not None and event is not None
    why = "no ClientHello in time"
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            while True:
                if acc.buffer:
                    ours = acc.buffer[0] == 0x16 and mesh_hello(acc.buffer, tls.name)
                    if ours:
                        acc._terminate(None, transported=True)
                        return
                    if ours is False:
                        why = "not mesh TLS for this proxy"
                        break
                if acc.client_lost or acc.client_eof:
                    why = "closed before a ClientHello"
                    break
                event.clear()
                await event.wait()
    log.info("connection from %s to the inbound port closed: %s", acc.peer_name(), why)
    acc.transport.abort()


async def transport_target(acc: Accept) -> Address | None:
    """The decrypted side of a mesh connection to the inbound port: its transport header,
    and so its target (this pod's address, at the header's port); None: closed."""
    transport = acc.transport
    event = acc.event
    assert transport is not None and event is not None
    why = "no transport header in time"
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            while True:
                try:
                    decoded = decode_header(acc.buffer)
                except TransportHeaderError as exc:
                    why = str(exc)
                    break
                if decoded is not None:
                    header, size = decoded
                    acc.buffer = acc.buffer[size:]
                    acc.client_first = header.protocol is not None
                    local = transport.get_extra_info("sockname")
                    return (local[0], header.port)
                if acc.client_lost or acc.client_eof:
                    why = "closed before a transport header"
                    break
                event.clear()
                await event.wait()
    log.info("mesh connection from %s closed: %s", acc.peer_name(), why)
    transport.abort()
    return None


def client_identity(transport: asyncio.BaseTransport, tls: TlsSource | None) -> str | None:
    """The mesh identity a terminated TLS client proved with its certificate, if any."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None or tls is None:
        return None
    from weft.identity.names import peer_identity

    identity: str | None = peer_identity(ssl_object.getpeercert(), tls.trust_domain)
    return identity


def addr_key(addr: tuple[Any, ...]) -> str:
    """``host:port`` (``[v6]:port``): :func:`weft.addr.format_addr`, compiled, of a socket
    address (an IPv6 one has four fields), for the per-connection paths."""
    host: str = addr[0]
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


__all__ = ["addr_key", "client_identity", "mesh_connection", "transport_target"]
