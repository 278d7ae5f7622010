"""What an accepted connection becomes once its protocol is known: HTTP/1, HTTP/2 or an
opaque TCP relay (:mod:`weft.proxy.accept.conn` decides), and the early upstream connection's
bookkeeping (its probe protocol, the balancer's view of it, the dial gate).

Not for: deciding (:mod:`weft.core.accept`), accepting (:mod:`weft.proxy.accept.listen`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from weft.addr import Address
from weft.core.accept import DialGate
from weft.proxy.outbound.concrete import Concrete
from weft.proxy.outbound.endpoint import EndpointState, PooledConn
from weft.proxy.protocol.http1.client import Http1Upstream
from weft.proxy.protocol.http1.server import Http1Downstream
from weft.proxy.protocol.tcp import Relay

if TYPE_CHECKING:
    from collections.abc import Callable

    from weft.metrics.proxy import LabelItems, TcpSeries
    from weft.proxy.accept.conn import Accept
    from weft.proxy.server import Listener

log = logging.getLogger("weft.proxy")

Dial = asyncio.Task[tuple[asyncio.Transport, asyncio.Protocol]]


class Probe(asyncio.Protocol):
    """The early upstream connection while the protocol is not known: buffers what arrives."""

    __slots__ = ("_on_data", "buffer", "eof", "lost")

    def __init__(self, on_data: Callable[[], None]) -> None:
        self.buffer = b""
        self.eof = False
        self.lost = False
        self._on_data = on_data

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._on_data()

    def rebind(self, on_data: Callable[[], None]) -> None:
        """Report to another waiter (the inner side of a terminated mesh TLS connection)."""
        self._on_data = on_data
        if self.buffer or self.eof or self.lost:
            on_data()

    def eof_received(self) -> bool:
        self.eof = True
        self._on_data()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._on_data()


def nothing() -> None:
    pass


def _state_of(concrete: Concrete, upstream: asyncio.Transport) -> EndpointState | None:
    peer = upstream.get_extra_info("peername")
    if not peer:
        return None
    return concrete.endpoints.get((peer[0], peer[1]))


async def _gated_connect(
    gate: DialGate, concrete: Concrete, state: EndpointState
) -> asyncio.Transport | None:
    """Connect to ``state`` when the gate gives a dial slot; None when the connect failed."""
    await gate_turn(gate)
    try:
        upstream, _ = await concrete.connect(state, lambda: Probe(nothing))
    except (OSError, TimeoutError):
        return None
    finally:
        gate.release()
    return upstream


async def gate_turn(gate: DialGate) -> None:
    """Wait for a dial slot (the caller releases it)."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start() -> None:
        if not fut.done():
            fut.set_result(None)

    ticket = gate.acquire(start)
    try:
        await fut
    except BaseException:
        if ticket[0] is not None:
            DialGate.cancel(ticket)
        elif fut.done() and not fut.cancelled():
            gate.release()  # granted, but the dial will not happen
        raise


def released(gate: DialGate) -> Callable[[object], None]:
    def release(_: object) -> None:
        gate.release()

    return release


def account_dial(concrete: Concrete, addr: Address, dial: Dial) -> None:
    """Tell the balancer about an early dial: one more pending on the endpoint until the dial
    is done, and no latency observed. The requests that follow are observed on their own; the
    time until the client speaks is its think time, not the endpoint's latency (peak EWMA would
    keep such a slow observation for tens of seconds), and an endpoint that was only dialed
    stays unobserved, so the balancer tries it before one it has measured. A dial that failed
    backed the endpoint off (as any failed connect does), with no latency penalty on top."""
    balancer = concrete.balancer
    started = balancer.start(addr)

    def done(_: Dial) -> None:
        balancer.finish(addr, started, observe=False)

    dial.add_done_callback(done)


def discard(dial: Dial) -> None:
    """Give up an early connection: cancel the dial, or close what it connected."""

    def done(task: Dial) -> None:
        if not task.cancelled() and task.exception() is None:
            task.result()[0].close()

    dial.cancel()
    dial.add_done_callback(done)


def src_series(listener: Listener, target: str, tls: LabelItems) -> TcpSeries:
    """The listener's ``peer="src"`` series (:meth:`~weft.proxy.server.Listener.src_series`),
    read from its cache here when it is there (a call into the listener is interpreted)."""
    series = listener.src_cache.get((target, tls))
    if series is None or series.expired:
        series = listener.src_series(target, tls)
    return series


def hand_over(acc: Accept, down: Any, concrete: Concrete) -> bytes:
    """Give the connection to an HTTP protocol (HTTP/1 or HTTP/2): its client's TLS labels
    and policy, its ``peer="src"`` accounting; returns the bytes already read."""
    transport = acc.transport
    assert transport is not None
    listener = acc.listener
    down.tls_labels = acc.tls_labels
    if acc.port_policy is not None:
        down.authz = acc.port_policy.http_connection(
            acc.client_ip(), acc._client_id(), acc.terminated
        )
    series = src_series(listener, concrete.name, acc.tls_labels)
    series.opened()
    down.tcp = series
    counts = listener.counts
    counts.acquire(concrete.name)
    down.counts = counts  # released by the connection's end (no closure per connection)
    transport.set_protocol(down)
    buffered, acc.buffer = acc.buffer, b""
    transport.resume_reading()
    return buffered


def to_http1(acc: Accept, concrete: Concrete) -> None:
    transport = acc.transport
    assert transport is not None
    down = Http1Downstream(acc.listener.http, concrete, transport)
    buffered = hand_over(acc, down, concrete)
    if buffered:
        down.data_received(buffered)
    if acc.client_eof and not down.eof_received():
        transport.close()


def to_http2(acc: Accept, concrete: Concrete) -> None:
    """Prior-knowledge HTTP/2 (h2c, or h2 inside mesh TLS): each stream is a request."""
    from weft.proxy.protocol.http2.context import Http2Context
    from weft.proxy.protocol.http2.server import Http2Downstream

    transport = acc.transport
    assert transport is not None
    listener = acc.listener
    if listener.http2 is None:
        listener.http2 = Http2Context(listener.config, listener.metrics, listener.direction)
        listener.http2.backend = listener.backend
    down = Http2Downstream(listener.http2, concrete, transport, acc.peer_name())
    down.start(hand_over(acc, down, concrete))
    if acc.client_eof:
        transport.close()


def pool_probe(acc: Accept, concrete: Concrete, state: EndpointState, dial: Dial) -> None:
    """Turn the early connection into a pooled HTTP/1 upstream (or hand it to a request)."""
    spare: asyncio.Future[PooledConn | None] = asyncio.get_running_loop().create_future()
    limit = acc.listener.config.max_header_bytes
    offered = False  # whether requests could claim it as state.spare

    def done(task: Dial) -> None:
        up: Http1Upstream | None = None
        if not task.cancelled() and task.exception() is None:
            t, probe = task.result()
            assert isinstance(probe, Probe)
            if probe.buffer or probe.eof or probe.lost:
                t.close()
            else:
                up = Http1Upstream(concrete, state, limit)
                t.set_protocol(up)
                up.connection_made(t)
        if offered and state.spare is not spare:
            spare.set_result(up)  # a request claimed it and waits for it
            return
        if offered:
            state.spare = None
        if up is not None:  # unclaimed: pool it, unless the pool has spares already
            if state.idle:
                up.close()
            else:
                concrete.release(state, up)

    if not dial.done() and state.spare is None:
        state.spare = spare
        offered = True
    if dial.done():
        done(dial)
    else:
        dial.add_done_callback(done)


async def opaque(
    acc: Accept,
    concrete: Concrete,
    early: tuple[asyncio.Transport, asyncio.Protocol] | None,
    early_state: EndpointState | None = None,
) -> None:
    transport = acc.transport
    assert transport is not None
    if early is not None:
        probe = early[1]
        assert isinstance(probe, Probe)
        relay(acc, concrete, early[0], early_state, probe)
        return
    transport.pause_reading()
    upstream = None
    state: EndpointState | None = None
    tried: set[Address] = set()
    gate = acc.listener.dials
    for _ in range(3):
        state = concrete.pick()
        if state is None or state.addr in tried:
            break
        tried.add(state.addr)
        upstream = await _gated_connect(gate, concrete, state)
        if upstream is not None:
            break
    if upstream is None or state is None:
        log.info("opaque connection from %s to %s: no reachable endpoint",
                 acc.peer_name(), concrete.name)  # fmt: skip
        transport.abort()
        return
    if acc.client_lost:
        upstream.close()
        return
    relay(acc, concrete, upstream, state, None)


def relay(
    acc: Accept,
    concrete: Concrete,
    upstream: asyncio.Transport,
    state: EndpointState | None,
    probe: Probe | None,
) -> None:
    """Relay the connection as TCP to ``upstream`` (``probe``: the early connection's, with
    what the server said already)."""
    transport = acc.transport
    assert transport is not None
    listener = acc.listener
    server_rest = b""
    if probe is not None:
        server_rest = probe.buffer
        # the endpoint dialed (its proxy's port, for the mesh transport, is not its address)
        state = state or _state_of(concrete, upstream)
    src = src_series(listener, concrete.name, acc.tls_labels)
    src.opened()
    counts = listener.counts
    name = concrete.name
    counts.acquire(name)
    dst = concrete.tcp_series(state) if state is not None else None
    relays = listener.relays

    def closed(relay: Relay) -> None:
        relays.discard(relay)
        src.closed()
        counts.release(name)

    buffered, acc.buffer = acc.buffer, b""
    relay = Relay(
        transport,
        upstream,
        dst,
        src=src,
        client_rest=buffered,
        server_rest=server_rest,
        on_close=closed,
    )
    relays.add(relay)
    if acc.client_eof:
        relay.eof(0)
    if probe is not None and probe.eof:
        relay.eof(1)
