"""The concrete layer: one backend as the proxy sees it, a balancer over its endpoints.

A :class:`Concrete` is a destination service (or a route's backend, or a single forwarded
address): P2C peak-EWMA over its :class:`~.endpoint.EndpointState` objects
(:mod:`weft.core.balancer`), failure accrual (:mod:`weft.core.accrual`), the destination's policy
(routes, retries, timeouts, as the logical layer reads them), its retry budgets and its metric
series. Discovery updates change membership at any moment; an endpoint that leaves keeps serving
the requests already on its connections and closes them when they finish (no in-flight request
fails because of an update).

Decide, then do: ``pick`` and ``take_idle`` are synchronous decisions; dialing is the only
await, in a task whose result is handed back through a future.

Not for: per-request decisions (:mod:`.logical`), protocol framing (:mod:`weft.proxy.protocol`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, cast

from weft.addr import Address, format_addr
from weft.core.balancer import Balancer
from weft.discovery import Destination, Endpoint
from weft.metrics.proxy import HttpSeries, LabelItems, ProxyMetrics, TcpSeries
from weft.policy import ServicePolicy

if TYPE_CHECKING:
    # Imported when a policy needs them (set_policy, budget): a sidecar whose destinations have
    # no routes, retries or failure accrual does not carry their code (about 2 MB of RSS).
    from weft.core.accrual import AccrualSet
    from weft.proxy.inbound.tls import TlsSource

from weft.proxy.outbound.endpoint import EndpointState, PooledConn
from weft.proxy.outbound.service import Service

log = logging.getLogger("weft.proxy")


class Concrete:
    """A balanced set of endpoints for one destination (or a single forwarded address).

    ``direction`` is ``"outbound"`` or ``"inbound"``; ``labels`` are the destination's metric
    labels (``dst_service``, ``dst_namespace``...). Waiters are callbacks parked until an endpoint
    appears (fail-fast after ``fail_fast`` seconds is the caller's timer).
    """

    def __init__(
        self,
        name: str,
        *,
        direction: str,
        metrics: ProxyMetrics,
        connect_timeout: float,
        pool_max_idle: int,
        labels: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        tls: TlsSource | None = None,
    ) -> None:
        self.name = name
        self.direction = direction
        self.metrics = metrics
        self.connect_timeout = connect_timeout
        self.pool_max_idle = pool_max_idle
        self.clock = clock
        self.balancer: Balancer[Address] = Balancer(clock=clock)
        self.endpoints: dict[Address, EndpointState] = {}
        self.opaque = False
        self.http_seen = False  # a client spoke HTTP/1 to this destination
        self.waiters: list[Callable[[], None]] = []
        self._base: LabelItems = ()
        # the logical side of this destination: routes, timeouts, budgets, route metrics
        self.service = Service(name, direction=direction, metrics=metrics, clock=clock)
        self.policy: ServicePolicy | None = None
        self.accrual: AccrualSet[Address] | None = None
        # this proxy's identity: meshed endpoints are dialed with mutual TLS (outbound only)
        self.tls: TlsSource | None = tls
        self.set_labels(labels or {})

    def set_labels(self, labels: dict[str, str]) -> None:
        base = {"direction": self.direction, "target_addr": self.name, "tls": "disabled"}
        base.update(labels)
        self._base = tuple(sorted(base.items()))
        self.service.set_labels(self._base)

    # -- membership -----------------------------------------------------------------------------

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """Replace membership; survivors keep their pools and balancer statistics."""
        new: dict[Address, EndpointState] = {}
        for ep in endpoints:
            current = self.endpoints.get(ep.address)
            if current is not None and current.endpoint == ep and not current.closing:
                new[ep.address] = current
            else:
                tls = self.tls
                new[ep.address] = EndpointState(
                    ep, self._base, tls=tls is not None, own=tls.name if tls is not None else ""
                )
        for addr, state in self.endpoints.items():
            if new.get(addr) is not state:
                state.closing = True
                state.close_idle()
        self.endpoints = new
        self.balancer.update(new.keys())
        if self.accrual is not None:
            self.accrual.update(new.keys())
        if new and self.waiters:
            waiters, self.waiters = self.waiters, []
            for wake in waiters:
                wake()

    def apply(self, dest: Destination | None, fallback: Address | None) -> None:
        """Apply a discovery snapshot; ``None`` (unknown) forwards to ``fallback`` as is."""
        if dest is None:
            self.service.known = False
            self.opaque = False
            self.set_policy(None)
            self.set_labels({})
            self.set_endpoints([Endpoint(fallback)] if fallback is not None else [])
            return
        self.service.known = True
        self.opaque = dest.opaque
        self.set_policy(dest.policy)
        labels = {}
        for key in ("service", "namespace"):
            value = dest.labels.get(key)
            if value is not None:
                labels[f"dst_{key}"] = value
        if labels != {k: v for k, v in self._base if k.startswith("dst_")}:
            self.set_labels(labels)
            self.endpoints = {}  # endpoints re-derive their label sets below
        self.set_endpoints(dest.endpoints)

    def set_policy(self, policy: ServicePolicy | None) -> None:
        """Apply a policy snapshot: the service's routes and timeouts (:meth:`Service.set_policy`),
        and failure accrual, whose state is kept while its configuration is unchanged."""
        if policy == self.policy:
            return
        self.policy = policy
        self.service.set_policy(policy)
        accrual = policy.failure_accrual if policy is not None else None
        if accrual is None:
            self.accrual = None
        elif self.accrual is None or self.accrual.config != accrual:
            from weft.core.accrual import AccrualSet

            self.accrual = AccrualSet(accrual, clock=self.clock)
            self.accrual.update(self.endpoints.keys())

    # -- picking and pooling --------------------------------------------------------------------

    def pick(self) -> EndpointState | None:
        """An endpoint for one request: P2C, skipping endpoints failure accrual has ejected.

        ``None`` when there is none (see :meth:`all_ejected` to tell why). Taking an endpoint
        that is probing takes its probe slot: the caller must report the outcome."""
        addr = self.balancer.pick()
        if addr is None:
            return None
        accrual = self.accrual
        if accrual is None or accrual.available(addr):
            return self.endpoints[addr]
        for other in self.endpoints:  # rare: the balancer's choice is ejected
            if accrual.available(other):
                return self.endpoints[other]
        return None

    def all_ejected(self) -> bool:
        return bool(self.endpoints) and self.accrual is not None and self.accrual.all_ejected()

    def record(self, addr: Address, success: bool) -> None:
        """Feed a request's outcome to failure accrual."""
        if self.accrual is not None:
            self.accrual.record(addr, success)

    def cancel(self, addr: Address) -> None:
        """A picked endpoint's request ended without a result (frees a probe slot)."""
        if self.accrual is not None:
            self.accrual.cancel(addr)

    def endpoint_states(self) -> list[tuple[LabelItems, int]]:
        """``outbound_endpoint_state`` samples for failure accrual (none when not enabled)."""
        if self.accrual is None:
            return []
        return [
            ((*self._base, ("endpoint", format_addr(addr)), ("state", state)), 1)
            for addr, state in self.accrual.states().items()
        ]

    def release(self, state: EndpointState, conn: PooledConn) -> None:
        """Return a connection after a completed exchange; close it if it may not be reused."""
        if state.closing or not conn.reusable() or len(state.idle) >= self.pool_max_idle:
            conn.close()
            return
        state.idle.append((conn, self.clock()))

    def sweep(self, max_idle_age: float) -> None:
        """Close pooled connections idle for longer than ``max_idle_age`` seconds."""
        deadline = self.clock() - max_idle_age
        for state in self.endpoints.values():
            idle = state.idle
            if idle and idle[0][1] < deadline:
                keep = [(c, t) for c, t in idle if t >= deadline]
                for c, t in idle:
                    if t < deadline:
                        c.close()
                state.idle = keep

    def connect(
        self,
        state: EndpointState,
        factory: Callable[[], asyncio.Protocol],
        *,
        h2: bool = False,
    ) -> asyncio.Task[tuple[asyncio.Transport, asyncio.Protocol]]:
        """Dial ``state`` with a connect timeout; feeds the outcome to the balancer. ``h2``: the
        connection will speak HTTP/2 (mesh TLS then offers ALPN ``h2``, else ``http/1.1``). A
        meshed endpoint with a ``proxy_port`` is dialed there, with a transport header."""
        return asyncio.get_running_loop().create_task(self._connect(state, factory, h2))

    async def _connect(
        self, state: EndpointState, factory: Callable[[], asyncio.Protocol], h2: bool
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        loop = asyncio.get_running_loop()
        host, port = state.addr
        identity = state.tls_identity
        try:
            async with asyncio.timeout(self.connect_timeout):
                if identity is None:
                    transport, protocol = await loop.create_connection(factory, host, port)
                else:
                    assert self.tls is not None
                    tls_source = self.tls
                    context = tls_source.h2_client_context if h2 else tls_source.client_context
                    if context is None:
                        raise ConnectionError("this proxy has no certificate yet")
                    # SNI and the certificate check both name the identity discovery expects
                    from weft.proxy.inbound.tls import connect

                    preamble = b""
                    proxy_port = state.endpoint.proxy_port
                    if proxy_port is not None:
                        # straight to the server's proxy, which then knows before any byte that
                        # a mesh proxy is calling (no early dial of its app to race our
                        # ClientHello); the header inside TLS names the app's port
                        from weft.core.transport_header import TransportHeader, encode

                        preamble = encode(TransportHeader(port, "http2" if h2 else None))
                        port = proxy_port
                    tls, app = await connect(
                        factory, host, port, context, identity, preamble=preamble
                    )
                    transport = cast(asyncio.Transport, tls)  # duck-typed as one
                    protocol = cast(asyncio.Protocol, app)
        except (OSError, TimeoutError) as exc:  # ssl errors are OSErrors
            self.balancer.failed(state.addr)
            log.debug("connect to %s failed: %r", format_addr(state.addr), exc)
            raise
        self.balancer.succeeded_connect(state.addr)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return transport, protocol

    def http_series(
        self, state: EndpointState, authority: bytes, tls: LabelItems = ()
    ) -> HttpSeries:
        """The series of requests for ``authority`` to ``state`` (``tls``: an inbound client's
        TLS labels, which replace the endpoint's)."""
        key: bytes | tuple[bytes, LabelItems] = (authority, tls) if tls else authority
        series = state.http_series.get(key)
        if series is None or series.expired:
            labels = dict(state.label_items)
            labels["authority"] = authority.decode("latin-1")
            if tls:
                labels.pop("tls", None)
                labels.update(tls)
            series = state.http_series[key] = self.metrics.http(tuple(sorted(labels.items())))
        return series

    def tcp_series(self, state: EndpointState) -> TcpSeries:
        series = state.tcp_series
        if series is None or series.expired:
            labels = (*state.label_items, ("peer", "dst"))
            series = state.tcp_series = self.metrics.tcp(tuple(sorted(labels)))
        return series

    def close(self) -> None:
        for state in self.endpoints.values():
            state.closing = True
            state.close_idle()

    def __repr__(self) -> str:
        eps = ", ".join(repr(s) for s in self.endpoints.values())
        return f"<Concrete {self.direction} {self.name} [{eps}] waiters={len(self.waiters)}>"
