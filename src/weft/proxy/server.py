"""The proxy process: listeners, lifecycle and graceful shutdown.

A :class:`Listener` is one direction (outbound, inbound): its accept loop, the concretes its
targets resolve to, its HTTP contexts, and what it counts. Each accepted connection is an
:class:`~weft.proxy.accept.Accept` until its protocol is known (:mod:`weft.proxy.accept.conn`).

Shutdown (SIGTERM, or ``POST /shutdown`` on the admin port): stop accepting, close idle keep-alive
connections, let in-flight requests finish within the grace period, then close the rest and exit.

Not for: deciding what a connection is (:mod:`weft.proxy.accept.conn`, :mod:`weft.core.accept`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from weft.addr import Address, format_addr, parse_hostport
from weft.control.client import ControlClient, ControlTLS
from weft.control.follow import ControlStreams
from weft.core.accept import DETECT_MAX, DialGate
from weft.discovery import Discovery, Resolution
from weft.metrics.proxy import LabelItems, ProxyMetrics, TcpSeries, render_family
from weft.proxy.accept.conn import MAX_DIALS, Accept, Acceptor
from weft.proxy.accept.listen import AcceptLoop, ConnCounts, Deadlines, original_dst
from weft.proxy.admin import AdminServer
from weft.proxy.config import ProxyConfig
from weft.proxy.inbound.tls import PeerTls, TlsSource, inbound_tls_labels
from weft.proxy.outbound.concrete import Concrete
from weft.proxy.protocol.http1.server import Http1Context
from weft.proxy.protocol.tcp import Relay

if TYPE_CHECKING:
    from weft.proxy.inbound.policy import InboundPolicyWatch
    from weft.proxy.protocol.http2.context import Http2Context

log = logging.getLogger("weft.proxy")

EVICT_IDLE = 60.0
# after TRIM_AFTER_CLOSES connections closed, give freed memory back to the OS this long after
# the burst began (one trim per burst, not one per close)
TRIM_DELAY = 1.0


class Listener:
    """One direction's listener: resolves targets to concretes and owns its HTTP context."""

    def __init__(
        self,
        direction: str,
        config: ProxyConfig,
        metrics: ProxyMetrics,
        discovery: Discovery | None,
    ) -> None:
        self.direction = direction
        self.config = config
        self.metrics = metrics
        self.discovery = discovery
        self.http = Http1Context(config, metrics, direction)
        # created with the first HTTP/2 connection: a sidecar that never sees one does not load
        # h2 (about 1.5 MB of RSS)
        self.http2: Http2Context | None = None
        self.default_target = (
            config.outbound_target if direction == "outbound" else config.inbound_target
        )
        # its concretes' key, formatted once (not per connection)
        self.default_key = format_addr(self.default_target) if self.default_target else ""
        self.detect_timeout = config.detect_timeout
        # the running loop, once listening (the accept path reads its clock)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connect_timeout = (
            config.connect_timeout_outbound
            if direction == "outbound"
            else config.connect_timeout_inbound
        )
        self.concretes: dict[str, Concrete] = {}
        # open client connections per concrete, when each was last used, closes since a trim
        self.counts = ConnCounts(self._burst)
        self.users = self.counts.users
        self.last_used = self.counts.last_used
        self._pending: dict[str, asyncio.Future[Concrete]] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self.relays: set[Relay] = set()
        self.accepting: set[Accept] = set()
        # detection deadlines of the undecided connections (one timer for all)
        self.deadlines = Deadlines()
        # dials the accept path has under way (early dials, opaque connects): a burst of
        # connections (10,000 reaching the detection timeout together) is no burst of dials
        self.dials = DialGate(MAX_DIALS)
        # connections closed at the detection timeout, never having spoken (no dial made)
        self.silent_closed = 0
        self._trim: asyncio.TimerHandle | None = None
        self.server: AcceptLoop | None = None
        # the peer="src" TCP series by (target, TLS labels); the accept path reads it directly
        self.src_cache: dict[tuple[str, LabelItems], TcpSeries] = {}
        # this proxy's identity (mesh TLS): outbound dials meshed endpoints with it, inbound
        # terminates mesh TLS addressed to it; None when identity is disabled
        self.tls: TlsSource | None = None
        # inbound only: who may call which local port (None: everyone, no accounting)
        self.policy: InboundPolicyWatch | None = None
        self.http.backend = self.backend
        if direction == "outbound":
            metrics.extra.append(self._render_endpoint_states)

    def backend(self, target: str) -> Concrete | asyncio.Future[Concrete]:
        """A route backend's concrete (``name:port`` through discovery): at once when known."""
        concrete = self.concretes.get(target)
        if concrete is not None:
            return concrete
        try:
            addr = parse_hostport(target)
        except ValueError as exc:
            fut: asyncio.Future[Concrete] = asyncio.get_running_loop().create_future()
            fut.set_exception(exc)
            return fut
        return asyncio.ensure_future(self.concrete_for(addr))

    def _render_endpoint_states(self) -> str:
        samples = [s for c in list(self.concretes.values()) for s in c.endpoint_states()]
        if not samples:
            return ""
        return render_family(
            "outbound_endpoint_state",
            "gauge",
            "Failure accrual state of each endpoint (1)",
            samples,
        )

    def listen(self, host: str, port: int) -> AcceptLoop:
        """Start accepting on ``host:port``."""
        self.loop = asyncio.get_running_loop()
        acceptor = Acceptor(self, int(socket.AF_INET))
        server = AcceptLoop(host, port, acceptor.adopt, backlog=1024)
        acceptor.port = server.sock.getsockname()[1]
        acceptor.family = int(server.sock.family)
        self.server = server
        return server

    def target_for(self, orig: Address | None) -> Address | None:
        return orig if orig is not None else self.default_target

    async def concrete_for(self, target: Address) -> Concrete:
        key = format_addr(target)
        concrete = self.concretes.get(key)
        if concrete is not None:
            return concrete
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Concrete] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            concrete = await self._build(key, target)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: concurrent waiters get it through shield
            raise
        finally:
            self._pending.pop(key, None)
        self.concretes[key] = concrete
        fut.set_result(concrete)
        return concrete

    async def _build(self, key: str, target: Address) -> Concrete:
        concrete = Concrete(
            key,
            direction=self.direction,
            metrics=self.metrics,
            connect_timeout=self.connect_timeout,
            pool_max_idle=self.config.pool_max_idle,
            tls=self.tls if self.direction == "outbound" else None,
        )
        if self.direction == "inbound" or self.discovery is None:
            concrete.apply(None, target)
            return concrete
        resolution: Resolution = await self.discovery.resolve(key)
        concrete.apply(resolution.current, target)
        self._unsubscribe[key] = resolution.subscribe(lambda d: concrete.apply(d, target))
        return concrete

    def src_series(self, target: str, tls: LabelItems = ()) -> TcpSeries:
        """The ``peer="src"`` TCP series of connections to ``target`` (``tls``: the client's
        TLS labels on the inbound side; none means ``tls="disabled"``)."""
        key = (target, tls)
        series = self.src_cache.get(key)
        if series is None or series.expired:
            labels = {"direction": self.direction, "peer": "src", "target_addr": target}
            labels.update(tls or (("tls", "disabled"),))
            series = self.src_cache[key] = self.metrics.tcp(tuple(sorted(labels.items())))
        return series

    def peer_labels(self, peer: PeerTls | None) -> LabelItems:
        """TLS labels of an inbound client connection (none when identity is disabled)."""
        if self.tls is None or self.direction != "inbound":
            return ()
        return inbound_tls_labels(peer)

    def _burst(self) -> None:
        """A burst of closes (``counts``): give the memory back shortly."""
        self._trim = asyncio.get_running_loop().call_later(TRIM_DELAY, self._trimmed)

    def _trimmed(self) -> None:
        self._trim = None
        self.counts.trimmed()
        # a full collection also empties the interpreter's free lists (tuples, lists, dicts,
        # frames kept for reuse), which otherwise pin the arenas the burst filled; measured
        # at 10,000 closed keep-alive connections: 78.8 -> 62.8 MB with it, 78.8 without
        gc.collect()
        self._compact()
        trim_heap()

    def _compact(self) -> None:
        """Tables sized for a burst keep that size once emptied (a set or dict never shrinks
        on deletion): copies sized for what is left give the rest back (about 0.8 MB after
        10,000 connections)."""
        self.accepting = set(self.accepting)
        self.relays = set(self.relays)
        self.deadlines.entries = dict(self.deadlines.entries)
        self.http.connections = set(self.http.connections)
        if self.http2 is not None:
            self.http2.connections = set(self.http2.connections)

    def reap(self, now: float) -> None:
        self.http.reap(now)
        if self.http2 is not None:
            self.http2.reap(now)
        for key, concrete in list(self.concretes.items()):
            concrete.sweep(self.config.pool_idle_timeout)
            if self.users.get(key, 0) <= 0 and now - self.last_used.get(key, now) > EVICT_IDLE:
                concrete.close()
                del self.concretes[key]
                self.users.pop(key, None)
                self.last_used.pop(key, None)
                unsubscribe = self._unsubscribe.pop(key, None)
                if unsubscribe is not None:
                    unsubscribe()

    def active_requests(self) -> bool:
        """Whether HTTP connections or undecided connections remain (what a drain waits for)."""
        h2 = self.http2 is not None and bool(self.http2.connections)
        return bool(self.http.connections) or h2 or bool(self.accepting)

    def active(self) -> int:
        h2 = len(self.http2.connections) if self.http2 is not None else 0
        return len(self.http.connections) + h2 + len(self.relays) + len(self.accepting)


TRIM_EVERY = 30  # seconds between heap trims (each takes well under a millisecond)


def trim_heap() -> None:
    """Return free heap pages to the OS (glibc ``malloc_trim``); a no-op elsewhere.

    Measured: after start-up this takes the sidecar's RSS from 28.1 to 25.3 MB. CPython's own
    allocator keeps what it uses; this only releases what malloc holds unused.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


class ProxyServer:
    """A running proxy: outbound, inbound and admin listeners around shared metrics."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        metrics: ProxyMetrics | None = None,
        discovery: Discovery | None = None,
        identity: TlsSource | None = None,
        control_streams: ControlStreams | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or ProxyMetrics()
        # every stream this proxy follows from the control plane (discovery, policy, identity)
        self.control_streams = control_streams if control_streams is not None else ControlStreams()
        self.discovery = discovery
        self.identity = identity
        self.outbound = Listener("outbound", config, self.metrics, discovery)
        self.inbound = Listener("inbound", config, self.metrics, None)
        self.outbound.tls = self.inbound.tls = identity
        self.metrics.extra.append(self._render_accept)
        # awaited after the admin listener is up and before the proxy listeners are: the first
        # certificate, the first inbound policy (``/ready`` says 503 meanwhile)
        self.startup: list[Callable[[], Awaitable[None]]] = []
        # stopped on shutdown (identity renewal, policy watch)
        self.closers: list[Callable[[], Awaitable[None]]] = []
        self.admin: AdminServer | None = None
        # GET path -> JSON-able view, served on the admin port (e.g. ``/identity``)
        self.admin_views: dict[str, Callable[[], Any]] = {}
        self.addresses: dict[str, Address] = {}
        self.ready = False
        self.draining = False
        self._stopped = asyncio.Event()
        self._reaper: asyncio.Task[None] | None = None
        self._shutdown_task: asyncio.Task[None] | None = None

    def _render_accept(self) -> str:
        return render_family(
            "tcp_detect_timeout_closed_total",
            "counter",
            "Connections closed at the protocol detection timeout: no byte from the client, "
            "no connection to the server (no dial made)",
            [
                ((("direction", x.direction),), x.silent_closed)
                for x in (self.outbound, self.inbound)
            ],
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.config.admin is not None:
            self.admin = AdminServer(self)
            self.addresses["admin"] = await self.admin.start(self.config.admin)
        for step in self.startup:
            await step()
        for listener, addr in ((self.outbound, self.config.outbound),
                               (self.inbound, self.config.inbound)):  # fmt: skip
            if addr is None:
                continue
            server = listener.listen(addr[0], addr[1])
            sockname = server.sockets[0].getsockname()
            self.addresses[listener.direction] = (sockname[0], sockname[1])
        self._reaper = loop.create_task(self._reap())
        trim_heap()  # start-up's transient allocations (imports, compiling) back to the OS
        self.ready = True
        log.info(
            "proxy ready: %s",
            ", ".join(f"{k}={format_addr(v)}" for k, v in self.addresses.items()),
        )

    async def _reap(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            self.outbound.reap(now)
            self.inbound.reap(now)
            ticks += 1
            if ticks % TRIM_EVERY == 0:
                trim_heap()

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown (idempotent); :meth:`wait` returns when it is over."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(self.shutdown())

    async def shutdown(self, grace: float | None = None) -> None:
        grace = self.config.shutdown_grace if grace is None else grace
        self.draining = True
        listeners = (self.outbound, self.inbound)
        for listener in listeners:
            if listener.server is not None:
                listener.server.close()
            listener.http.drain()
            if listener.http2 is not None:
                listener.http2.drain()
        log.info("draining: %d connections in flight", sum(x.active() for x in listeners))
        deadline = time.monotonic() + grace
        while any(x.active_requests() for x in listeners):
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        for listener in listeners:
            for conn in list(listener.http.connections):
                conn.transport.abort()
            if listener.http2 is not None:
                for conn2 in list(listener.http2.connections):
                    if conn2.transport is not None:
                        conn2.transport.abort()
                for pool in list(listener.http2.pools.values()):
                    for up in list(pool):
                        up.close()
            for relay in list(listener.relays):
                relay.close()
            listener.deadlines.close()
            if listener._trim is not None:
                listener._trim.cancel()
            for acc in list(listener.accepting):
                if acc.task is not None:
                    acc.task.cancel()
                if acc.transport is not None:
                    acc.transport.abort()
            for concrete in listener.concretes.values():
                concrete.close()
        if self._reaper is not None:
            self._reaper.cancel()
        if self.admin is not None:
            await self.admin.close()
        if self.discovery is not None:
            await self.discovery.close()
        for close in self.closers:
            await close()
        self._stopped.set()
        log.info("proxy stopped")

    async def wait(self) -> None:
        await self._stopped.wait()


def control_client(config: ProxyConfig) -> ControlClient | None:
    """The client every stream to the control plane shares; for an ``https://`` control plane,
    verifying it as ``control_identity`` against ``control_trust_anchors`` (PEM text, or a
    file holding it). ValueError naming what is wrong."""
    if not config.control:
        return None
    tls = None
    if config.control_identity and config.control_trust_anchors:
        source = config.control_trust_anchors
        if "-----BEGIN" in source:
            pem = source.encode()
        else:
            try:
                with open(source, "rb") as f:
                    pem = f.read()
            except OSError as exc:
                raise ValueError(
                    f"cannot read the control plane's trust anchors {source}: {exc.strerror or exc}"
                ) from None
        tls = ControlTLS(pem, config.control_identity)
    return ControlClient(config.control, tls=tls)


def _identity(
    config: ProxyConfig,
    metrics: ProxyMetrics,
    streams: ControlStreams,
    control: ControlClient | None,
) -> TlsSource | None:
    """This proxy's identity: certified by the control plane, from files, or none."""
    if config.identity_token_file and control is not None:
        from weft.proxy.identity import ProxyIdentity

        labels = config.labels
        return ProxyIdentity(
            control,
            namespace=labels.get("namespace", "default"),
            service_account=labels.get("serviceaccount", "default"),
            token_file=config.identity_token_file,
            trust_domain=config.trust_domain,
            metrics=metrics,
            streams=streams,
        )
    if config.identity_cert and config.identity_key and config.trust_anchors:
        from weft.proxy.static_identity import StaticIdentity

        return StaticIdentity(
            chain_file=config.identity_cert,
            key_file=config.identity_key,
            anchors_file=config.trust_anchors,
            trust_domain=config.trust_domain,
        )
    return None


async def _first_certificate(identity: Any) -> None:
    """Wait for the first certificate as long as it takes (the proxy is not ready meanwhile:
    serving plaintext to meshed peers instead would defeat mutual TLS)."""
    from weft.proxy.identity import IdentityError

    while True:
        try:
            await identity.start(30.0)
            log.info("identity %s: certified", identity.name)
            return
        except IdentityError as exc:
            log.warning("%s; still trying", exc)


def configure(proxy: ProxyServer, control: ControlClient | None = None) -> None:
    """Attach what the configuration asks for: identity (mutual TLS) and inbound policy
    (from ``control``, the control plane's client)."""
    config = proxy.config
    identity = proxy.identity
    streams = proxy.control_streams
    proxy.admin_views["/control-streams"] = streams.view
    proxy.metrics.extra.append(streams.render)
    if identity is not None:
        view = getattr(identity, "view", None)
        if view is not None:
            proxy.admin_views["/identity"] = view
        if hasattr(identity, "start"):
            proxy.startup.append(lambda: _first_certificate(identity))
            proxy.closers.append(identity.close)  # type: ignore[attr-defined]
    pod, namespace = config.labels.get("pod"), config.labels.get("namespace")
    if control is not None and pod and namespace:
        from weft.proxy.inbound.policy import InboundPolicyWatch

        watch = InboundPolicyWatch(
            control,
            namespace=namespace,
            pod=pod,
            metrics=proxy.metrics,
            default_policy=config.default_inbound_policy,
            cluster_networks=config.cluster_networks,
            streams=streams,
        )
        proxy.inbound.policy = watch

        async def first_policy() -> None:
            watch.start()
            if not await watch.wait_ready(POLICY_WAIT):
                log.warning("no inbound policy from the control plane yet: enforcing the "
                            "default %s meanwhile", config.default_inbound_policy)  # fmt: skip

        proxy.startup.append(first_policy)
        proxy.closers.append(watch.close)


# how long a starting proxy waits for its inbound policy before enforcing the default one
POLICY_WAIT = 5.0


async def run(
    config: ProxyConfig,
    discovery_factory: Callable[
        [ControlStreams, ControlClient | None], Awaitable[Discovery | None]
    ],
) -> int:
    """Run a proxy until SIGTERM/SIGINT or ``POST /shutdown``; returns the exit status.
    ``discovery_factory`` gets the registry its control-plane streams belong to and the
    control plane's client (None without one). ValueError: the configuration cannot run."""
    streams = ControlStreams()
    control = control_client(config)
    discovery = await discovery_factory(streams, control)
    metrics = ProxyMetrics()
    proxy = ProxyServer(
        config,
        metrics=metrics,
        discovery=discovery,
        identity=_identity(config, metrics, streams, control),
        control_streams=streams,
    )
    configure(proxy, control)
    loop = asyncio.get_running_loop()
    starting = loop.create_task(proxy.start())

    def on_signal(sig: signal.Signals) -> None:
        log.warning("%s: draining (grace %.0f s)", sig.name, config.shutdown_grace)
        if not starting.done():
            starting.cancel()
        proxy.request_shutdown()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    # what start-up built lives as long as the process: out of the collector's way (full
    # collections no longer walk it; they ran every few hundred new connections)
    gc.collect()
    gc.freeze()
    await proxy.wait()
    return 0


__all__ = [
    "DETECT_MAX",
    "Accept",
    "Listener",
    "ProxyServer",
    "configure",
    "original_dst",
    "run",
]
