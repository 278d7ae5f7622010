"""The endpoint layer: one endpoint of a concrete backend, its metric labels and its pool of
idle keep-alive connections (HTTP/1; HTTP/2's multiplexed connections are pooled per endpoint by
:class:`weft.proxy.protocol.http2.context.Http2Context`), and the connection an accepted client
had dialed early for detection (``spare``), which the first request may claim.

Not for: choosing an endpoint (the concrete layer, :mod:`.concrete`), dialing (also there).
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Protocol

from weft.addr import format_addr
from weft.discovery import Endpoint
from weft.metrics.proxy import HttpSeries, LabelItems, TcpSeries

if TYPE_CHECKING:
    # Imported when a policy needs them (set_policy, budget): a sidecar whose destinations have
    # no routes, retries or failure accrual does not carry their code (about 2 MB of RSS).
    pass


class PooledConn(Protocol):
    """What a pool keeps: an upstream connection that can say whether it may be reused."""

    def reusable(self) -> bool: ...

    def close(self) -> None: ...


def _is_local(ip: str) -> bool:
    """Whether ``ip`` is an address of this network namespace (it can be bound)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((ip, 0))
    except OSError:
        return False
    return True


class EndpointState:
    """One endpoint of a concrete: metric labels, series cache and idle connections."""

    __slots__ = (
        "addr", "closing", "endpoint", "http_series", "idle", "label_items", "spare", "tcp_series",
        "tls_identity",
    )  # fmt: skip

    def __init__(
        self, endpoint: Endpoint, base_labels: LabelItems, *, tls: bool = False, own: str = ""
    ) -> None:
        self.endpoint = endpoint
        self.addr = endpoint.address
        # mesh TLS to this endpoint: it is meshed and discovery names the identity to expect;
        # not to this very pod (a call to its own service): that connection reaches the app
        # directly, not through the inbound proxy
        identity = endpoint.identity if tls and endpoint.meshed else None
        loopback = identity is not None and identity == own and _is_local(self.addr[0])
        self.tls_identity = None if loopback else identity
        self.idle: list[tuple[PooledConn, float]] = []
        self.closing = False
        # a connection being dialed ahead of need (at accept, for detection) that the next
        # request may claim instead of dialing its own
        self.spare: asyncio.Future[PooledConn | None] | None = None
        labels = dict(base_labels)
        for key in ("pod", "deployment", "namespace", "serviceaccount"):
            value = endpoint.labels.get(key)
            if value is not None:
                labels[f"dst_{key}"] = value
        if tls:
            from weft.proxy.inbound.tls import outbound_tls_labels

            labels.update(outbound_tls_labels(self.tls_identity, loopback=loopback))
        self.label_items: LabelItems = tuple(sorted(labels.items()))
        self.http_series: dict[bytes | tuple[bytes, LabelItems], HttpSeries] = {}
        self.tcp_series: TcpSeries | None = None

    def take_idle(self) -> PooledConn | None:
        """An idle connection that may be reused, most recently used first."""
        idle = self.idle
        while idle:
            conn, _ = idle.pop()
            if conn.reusable():
                return conn
            conn.close()
        return None

    def close_idle(self) -> None:
        for conn, _ in self.idle:
            conn.close()
        self.idle.clear()

    def __repr__(self) -> str:
        state = " closing" if self.closing else ""
        return f"<Endpoint {format_addr(self.addr)} idle={len(self.idle)}{state}>"
