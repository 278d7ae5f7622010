"""The proxy process: listeners, accept and protocol detection, lifecycle and graceful shutdown.

Every accepted connection goes through :class:`Accept`:

1. its target is the original destination (``SO_ORIGINAL_DST`` after an iptables REDIRECT), or the
   configured ``--*-target`` when the connection was not redirected;
2. the target resolves to a :class:`~weft.proxy.endpoints.Concrete` (discovery for outbound, the
   local app for inbound);
3. opaque ports (and destinations discovery marks opaque) are relayed as TCP at once;
4. otherwise the proxy dials the upstream *as soon as it accepts* and detects the protocol on the
   first bytes of whichever side speaks first. A server that greets first (MySQL, SMTP, NATS) is
   opaque TCP immediately, with no detection timeout; a client's HTTP/1 request line hands the
   connection to :mod:`weft.proxy.http1` (and the early connection joins the endpoint's pool);
   anything else (TLS, HTTP/2 for now, unknown bytes) is relayed as opaque TCP.

A connection to the inbound port itself (not redirected) of a proxy that intercepts (no
``--inbound-target``) comes from a mesh proxy (an endpoint's ``proxy_port``): no early dial; it
must be mutual TLS for this proxy's identity, then a transport header
(:mod:`weft.core.transport_header`) names the app port, and the decrypted side goes on as a
connection redirected to that port would. Knowing this before any byte is what keeps a greeting
app from racing the client proxy's ClientHello.

Shutdown (SIGTERM, or ``POST /shutdown`` on the admin port): stop accepting, close idle keep-alive
connections, let in-flight requests finish within the grace period, then close the rest and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from weft.addr import Address, format_addr, parse_hostport
from weft.control.follow import ControlStreams
from weft.core.detect import Protocol as Detected
from weft.core.detect import detect, h2_server_greeting, parse_client_hello
from weft.core.transport_header import TransportHeaderError
from weft.core.transport_header import decode as decode_header
from weft.discovery import Discovery, Resolution
from weft.metrics.proxy import LabelItems, ProxyMetrics, TcpSeries
from weft.proxy.admin import AdminServer
from weft.proxy.config import ProxyConfig
from weft.proxy.endpoints import Concrete, EndpointState, PooledConn
from weft.proxy.http1 import Http1Context, Http1Downstream, Http1Upstream
from weft.proxy.tcp import Relay
from weft.proxy.tls import HANDSHAKE_TIMEOUT, PeerTls, TlsSource, inbound_tls_labels, terminate

if TYPE_CHECKING:
    from weft.proxy.http2 import Http2Context
    from weft.proxy.inbound_policy import InboundPolicyWatch, PortPolicy

log = logging.getLogger("weft.proxy")

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
DETECT_MAX = 1024
EVICT_IDLE = 60.0
# how long a client gets to speak first once every endpoint refused the early connection
UNREACHABLE_GRACE = 1.0


def original_dst(sock: socket.socket) -> Address | None:
    """The pre-REDIRECT destination of an accepted socket, or None when it was not redirected."""
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack_from("!H", raw, 2)[0]
            addr: Address = (socket.inet_ntoa(raw[4:8]), port)
        elif sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            addr = (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port)
        else:
            return None
    except OSError:
        return None
    local = sock.getsockname()
    if (addr[0], addr[1]) == (local[0], local[1]):
        return None
    return addr


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
        self.connect_timeout = (
            config.connect_timeout_outbound
            if direction == "outbound"
            else config.connect_timeout_inbound
        )
        self.concretes: dict[str, Concrete] = {}
        self.users: dict[str, int] = {}
        self.last_used: dict[str, float] = {}
        self._pending: dict[str, asyncio.Future[Concrete]] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self.relays: set[Relay] = set()
        self.accepting: set[Accept] = set()
        self.server: asyncio.Server | None = None
        self._src_series: dict[tuple[str, LabelItems], TcpSeries] = {}
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
        body = "".join(c.render_states() for c in list(self.concretes.values()))
        if not body:
            return ""
        return (
            "# HELP outbound_endpoint_state Failure accrual state of each endpoint (1)\n"
            "# TYPE outbound_endpoint_state gauge\n" + body
        )

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
        series = self._src_series.get(key)
        if series is None or series.expired:
            labels = {"direction": self.direction, "peer": "src", "target_addr": target}
            labels.update(tls or (("tls", "disabled"),))
            series = self._src_series[key] = self.metrics.tcp(tuple(sorted(labels.items())))
        return series

    def peer_labels(self, peer: PeerTls | None) -> LabelItems:
        """TLS labels of an inbound client connection (none when identity is disabled)."""
        if self.tls is None or self.direction != "inbound":
            return ()
        return inbound_tls_labels(peer)

    def acquire(self, concrete: Concrete) -> None:
        self.users[concrete.name] = self.users.get(concrete.name, 0) + 1

    def release(self, concrete: Concrete) -> None:
        n = self.users.get(concrete.name, 1) - 1
        self.users[concrete.name] = n
        self.last_used[concrete.name] = time.monotonic()

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


class _Probe(asyncio.Protocol):
    """The early upstream connection while the protocol is not known: buffers what arrives."""

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


# (concrete, endpoint, dial, probe): an early connection passed from the outer to the inner side
_Handoff = tuple[
    Concrete, EndpointState, "asyncio.Task[tuple[asyncio.Transport, asyncio.Protocol]]", _Probe
]


class Accept(asyncio.Protocol):
    """An accepted connection until its protocol is known."""

    def __init__(
        self, listener: Listener, *, terminated: bool = False, transported: bool = False
    ) -> None:
        self.listener = listener
        # the decrypted side of a mesh TLS connection this proxy terminated
        self.terminated = terminated
        # ... sent to the inbound port itself: a transport header comes first
        self.transported = transported
        # the transport header says the client speaks first (HTTP): no early dial
        self.client_first = False
        self.peer_tls: PeerTls | None = None
        self.tls_labels: LabelItems = ()
        self.port_policy: PortPolicy | None = None
        self.peer_ip: str | None = None
        # the outer side's early connection to the app, for the inner side of mesh TLS
        self.handoff: _Handoff | None = None
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.client_eof = False
        self.client_lost = False
        self.event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.peer = "-"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = format_addr((peer[0], peer[1]))
            self.peer_ip = peer[0]
        orig = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            orig = original_dst(sock)
        if self.terminated:
            self.peer_tls = PeerTls(_client_identity(transport, self.listener.tls))
        self.tls_labels = self.listener.peer_labels(self.peer_tls)
        self.listener.accepting.add(self)
        self.task = asyncio.get_running_loop().create_task(self._run(orig))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > 65536 and self.transport is not None:
            self.transport.pause_reading()
        self.event.set()

    def eof_received(self) -> bool:
        self.client_eof = True
        self.event.set()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_lost = True
        self.event.set()
        self.listener.accepting.discard(self)

    async def _run(self, orig: Address | None) -> None:
        transport = self.transport
        assert transport is not None
        listener = self.listener
        try:
            if self.transported:
                target = await self._transport_target()
                if target is None:
                    return
            elif orig is None and self._mesh_only():
                await self._mesh_connection()
                return
            else:
                target = listener.target_for(orig)
            if target is None:
                log.warning("connection from %s has no target (not redirected, no --%s-target)",
                            self.peer, listener.direction)  # fmt: skip
                transport.abort()
                return
            concrete = await listener.concrete_for(target)
            if self.client_lost:
                return
            policy = listener.policy
            pp = self.port_policy = policy.port(target[1]) if policy is not None else None
            opaque = (
                target[1] in listener.config.opaque_ports
                or concrete.opaque
                or (pp is not None and pp.protocol in ("opaque", "tls"))
            )
            if opaque and not self._may_terminate():
                if self._tcp_authorized():
                    await self._opaque(concrete, await self._take_handoff(concrete))
                return
            # an opaque port still carries mesh TLS from meshed clients: only that is detected
            await self._detect(concrete, opaque=opaque)
        except Exception:
            log.exception("error handling connection from %s", self.peer)
            transport.abort()
        finally:
            listener.accepting.discard(self)

    async def _detect(self, concrete: Concrete, *, opaque: bool = False) -> None:
        """Decide the protocol (``opaque``: only mesh TLS, or opaque TCP at once)."""
        listener = self.listener
        loop = asyncio.get_running_loop()
        # Dial early only while the destination might greet first: once a client has spoken
        # HTTP to it, later connections just wait for the client (still no timeout for a
        # server that greets, since the detect timeout then falls back to opaque TCP).
        pp = self.port_policy
        refused = pp is not None and not pp.tcp_allowed(self.peer_ip, self._client_id())
        probe: _Probe | None = None
        dial: asyncio.Task[tuple[asyncio.Transport, asyncio.Protocol]] | None = None
        state: EndpointState | None = None
        handoff = self.handoff if self.handoff is not None and self.handoff[0] is concrete else None
        self.handoff = None
        if handoff is not None:  # the connection the outer side dialed before it saw mesh TLS
            # the outer side accounted for this dial with the balancer
            _, state, dial, probe = handoff
            probe.rebind(self.event.set)
            dial.add_done_callback(lambda _: self.event.set())
        else:
            state = None if concrete.http_seen or refused or self.client_first else concrete.pick()
        if state is not None and handoff is None:
            probe = _Probe(self.event.set)
            p = probe
            dial = concrete.connect(state, lambda: p)
            _account_dial(concrete, state.addr, dial)
            dial.add_done_callback(lambda _: self.event.set())
        decided: Detected | None = None
        deadline = loop.time() + listener.config.detect_timeout
        unreachable = False
        dials = 1
        failed: set[Address] = {state.addr} if state is not None else set()
        server_first = False
        mesh_tls = False
        may_terminate = self._may_terminate()
        while True:
            hello_pending = False
            if self.buffer:
                if may_terminate and self.buffer[0] == 0x16:
                    assert listener.tls is not None
                    ours = _mesh_hello(self.buffer, listener.tls.name)
                    if ours is None:
                        hello_pending = True  # a ClientHello, not complete yet
                    else:
                        mesh_tls = ours
                        decided = Detected.TLS
                        break
                else:
                    decided = (
                        Detected.OPAQUE
                        if opaque
                        else detect(self.buffer[:DETECT_MAX], max_bytes=DETECT_MAX)
                    )
                    if decided is not None:
                        break
            # a server that greets while a mesh ClientHello is still arriving must wait: the
            # client is a proxy, and the greeting goes to it inside TLS; an HTTP/2 server's
            # SETTINGS (grpcio sends them at accept) is not a greeting: wait for the client
            if (
                probe is not None
                and (probe.eof or (probe.buffer and h2_server_greeting(probe.buffer) is False))
                and not hello_pending
            ):
                server_first = True
                break
            if self.client_lost:
                break
            if self.client_eof:
                decided = Detected.OPAQUE
                break
            if (
                dial is not None
                and dial.done()
                and dial.exception() is not None
                and not self.buffer
            ):
                # the early dial failed: try another endpoint, else give a client that speaks
                # first (HTTP) a moment to do so, for a specific error, then close
                dial = probe = None
                state = concrete.pick() if dials < 3 else None
                if state is not None and state.addr not in failed:
                    failed.add(state.addr)
                    dials += 1
                    probe = _Probe(self.event.set)
                    dial = concrete.connect(state, lambda p2=probe: p2)  # type: ignore[misc]
                    _account_dial(concrete, state.addr, dial)
                    dial.add_done_callback(lambda _: self.event.set())
                else:
                    state = None
                    unreachable = True
                    deadline = min(deadline, loop.time() + UNREACHABLE_GRACE)
            remaining = deadline - loop.time()
            if remaining <= 0:
                if unreachable and not self.buffer:
                    log.info("connection from %s to %s: no reachable endpoint",
                             self.peer, concrete.name)  # fmt: skip
                    assert self.transport is not None
                    self.transport.abort()
                    return
                decided = Detected.OPAQUE
                break
            self.event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.event.wait()
        if self.client_lost:
            if dial is not None:
                dial.cancel()
                with contextlib.suppress(BaseException):
                    t, _ = await dial
                    t.close()
            return
        if mesh_tls and not server_first:
            handed = None
            if dial is not None and state is not None and probe is not None:
                handed = (concrete, state, dial, probe)
            self._terminate(handed)
            return
        if decided is Detected.HTTP2 and not server_first:
            concrete.http_seen = True
            if dial is not None:
                _discard(dial)
            self._to_http2(concrete)
            return
        if decided is Detected.HTTP1 and not server_first:
            concrete.http_seen = True
            if dial is not None and state is not None:
                self._pool_probe(concrete, state, dial)
            self._to_http1(concrete)
            return
        if not self._tcp_authorized():
            if dial is not None:
                _discard(dial)
            return
        early = None
        if dial is not None:
            try:
                early = await dial
            except (OSError, TimeoutError):
                early = None
        await self._opaque(concrete, early, state)

    def _client_id(self) -> str | None:
        return self.peer_tls.client_id if self.peer_tls is not None else None

    def _tcp_authorized(self) -> bool:
        """Inbound policy for an opaque connection (counted); closes it when denied."""
        pp = self.port_policy
        if pp is None or pp.tcp_connection(self.peer_ip, self._client_id(), self.terminated):
            return True
        log.info("connection from %s denied by policy", self.peer)
        assert self.transport is not None
        self.transport.abort()
        return False

    def _may_terminate(self) -> bool:
        return (
            not self.terminated
            and self.listener.direction == "inbound"
            and self.listener.tls is not None
        )

    def _mesh_only(self) -> bool:
        """Whether a connection that was not redirected can only be a mesh proxy's: this proxy
        intercepts (no ``--inbound-target``: an app's clients reach it through iptables, with an
        original destination) and has an identity."""
        return self._may_terminate() and self.listener.default_target is None

    async def _mesh_connection(self) -> None:
        """A mesh proxy's connection to the inbound port: wait (as long as a TLS handshake may
        take) for a ClientHello naming this proxy, with no early dial, then terminate TLS; the
        inner side reads the transport header. Anything else is closed: the inbound port
        serves no plaintext and no one else's TLS."""
        tls = self.listener.tls
        assert tls is not None and self.transport is not None
        why = "no ClientHello in time"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                while True:
                    if self.buffer:
                        ours = self.buffer[0] == 0x16 and _mesh_hello(self.buffer, tls.name)
                        if ours:
                            self._terminate(None, transported=True)
                            return
                        if ours is False:
                            why = "not mesh TLS for this proxy"
                            break
                    if self.client_lost or self.client_eof:
                        why = "closed before a ClientHello"
                        break
                    self.event.clear()
                    await self.event.wait()
        log.info("connection from %s to the inbound port closed: %s", self.peer, why)
        self.transport.abort()

    async def _transport_target(self) -> Address | None:
        """The decrypted side of a mesh connection to the inbound port: its transport header,
        and so its target (this pod's address, at the header's port); None: closed."""
        transport = self.transport
        assert transport is not None
        why = "no transport header in time"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                while True:
                    try:
                        decoded = decode_header(self.buffer)
                    except TransportHeaderError as exc:
                        why = str(exc)
                        break
                    if decoded is not None:
                        header, size = decoded
                        self.buffer = self.buffer[size:]
                        self.client_first = header.protocol is not None
                        local = transport.get_extra_info("sockname")
                        return (local[0], header.port)
                    if self.client_lost or self.client_eof:
                        why = "closed before a transport header"
                        break
                    self.event.clear()
                    await self.event.wait()
        log.info("mesh connection from %s closed: %s", self.peer, why)
        transport.abort()
        return None

    def _terminate(self, handoff: _Handoff | None, *, transported: bool = False) -> None:
        """Mesh TLS addressed to this proxy: decrypt, then detect again on the inner stream,
        which takes over the connection dialed early to the app (one connection per client)."""
        transport = self.transport
        tls = self.listener.tls
        assert transport is not None and tls is not None
        context = tls.server_context
        if context is None:
            if handoff is not None:
                _discard(handoff[2])
            transport.abort()
            return
        buffered, self.buffer = self.buffer, b""
        inner = Accept(self.listener, terminated=True, transported=transported)
        inner.handoff = handoff
        tls_conn = terminate(transport, inner, context, buffered)
        if handoff is not None:

            def failed(fut: asyncio.Future[None]) -> None:
                ok = not fut.cancelled() and fut.exception() is None
                if not ok and inner.handoff is not None:  # nobody will take it over
                    _discard(inner.handoff[2])
                    inner.handoff = None

            tls_conn.handshake.add_done_callback(failed)

    async def _take_handoff(
        self, concrete: Concrete
    ) -> tuple[asyncio.Transport, asyncio.Protocol] | None:
        """For an opaque inner connection: the early connection to the app, once it is up."""
        handoff, self.handoff = self.handoff, None
        if handoff is None:
            return None
        owner, _, dial, _ = handoff
        if owner is not concrete:
            _discard(dial)
            return None
        try:
            return await dial
        except (OSError, TimeoutError):
            return None

    def _hand_over(self, down: Any, concrete: Concrete) -> bytes:
        """Give the connection to an HTTP protocol (HTTP/1 or HTTP/2): its client's TLS labels
        and policy, its ``peer="src"`` accounting; returns the bytes already read."""
        transport = self.transport
        assert transport is not None
        listener = self.listener
        down.tls_labels = self.tls_labels
        if self.port_policy is not None:
            down.authz = self.port_policy.http_connection(
                self.peer_ip, self._client_id(), self.terminated
            )
        series = listener.src_series(concrete.name, self.tls_labels)
        series.opened()
        down.tcp = series
        listener.acquire(concrete)

        def closed(_: Any) -> None:
            series.closed()
            listener.release(concrete)

        down.on_close = closed
        transport.set_protocol(down)
        buffered, self.buffer = self.buffer, b""
        transport.resume_reading()
        return buffered

    def _to_http1(self, concrete: Concrete) -> None:
        transport = self.transport
        assert transport is not None
        down = Http1Downstream(self.listener.http, concrete, transport, self.peer)
        buffered = self._hand_over(down, concrete)
        if buffered:
            down.data_received(buffered)
        if self.client_eof and not down.eof_received():
            transport.close()

    def _to_http2(self, concrete: Concrete) -> None:
        """Prior-knowledge HTTP/2 (h2c, or h2 inside mesh TLS): each stream is a request."""
        from weft.proxy.http2 import Http2Context, Http2Downstream

        transport = self.transport
        assert transport is not None
        listener = self.listener
        if listener.http2 is None:
            listener.http2 = Http2Context(listener.config, listener.metrics, listener.direction)
            listener.http2.backend = listener.backend
        down = Http2Downstream(listener.http2, concrete, transport, self.peer)
        down.start(self._hand_over(down, concrete))
        if self.client_eof:
            transport.close()

    def _pool_probe(
        self,
        concrete: Concrete,
        state: EndpointState,
        dial: asyncio.Task[tuple[asyncio.Transport, asyncio.Protocol]],
    ) -> None:
        """Turn the early connection into a pooled HTTP/1 upstream (or hand it to a request)."""
        spare: asyncio.Future[PooledConn | None] = asyncio.get_running_loop().create_future()
        limit = self.listener.config.max_header_bytes
        offered = False  # whether requests could claim it as state.spare

        def done(task: asyncio.Task[tuple[asyncio.Transport, asyncio.Protocol]]) -> None:
            up: Http1Upstream | None = None
            if not task.cancelled() and task.exception() is None:
                t, probe = task.result()
                assert isinstance(probe, _Probe)
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

    async def _opaque(
        self,
        concrete: Concrete,
        early: tuple[asyncio.Transport, asyncio.Protocol] | None,
        early_state: EndpointState | None = None,
    ) -> None:
        transport = self.transport
        assert transport is not None
        listener = self.listener
        server_rest = b""
        state: EndpointState | None = None
        upstream: asyncio.Transport | None
        if early is not None:
            upstream, probe = early
            assert isinstance(probe, _Probe)
            server_rest = probe.buffer
            # the endpoint dialed (its proxy's port, for the mesh transport, is not its address)
            state = early_state or self._state_of(concrete, upstream)
        else:
            transport.pause_reading()
            upstream = None
            tried: set[Address] = set()
            for _ in range(3):
                state = concrete.pick()
                if state is None or state.addr in tried:
                    break
                tried.add(state.addr)
                try:
                    upstream, _ = await concrete.connect(state, lambda: _Probe(lambda: None))
                    break
                except (OSError, TimeoutError):
                    continue
            if upstream is None or state is None:
                log.info("opaque connection from %s to %s: no reachable endpoint",
                         self.peer, concrete.name)  # fmt: skip
                transport.abort()
                return
            if self.client_lost:
                upstream.close()
                return
        src = listener.src_series(concrete.name, self.tls_labels)
        src.opened()
        listener.acquire(concrete)
        dst = concrete.tcp_series(state) if state is not None else None
        relays = listener.relays

        def closed(relay: Relay) -> None:
            relays.discard(relay)
            src.closed()
            listener.release(concrete)

        buffered, self.buffer = self.buffer, b""
        assert upstream is not None
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
        if self.client_eof:
            relay.eof(0)
        if early is not None and isinstance(early[1], _Probe) and early[1].eof:
            relay.eof(1)

    @staticmethod
    def _state_of(concrete: Concrete, upstream: asyncio.Transport) -> EndpointState | None:
        peer = upstream.get_extra_info("peername")
        if not peer:
            return None
        return concrete.endpoints.get((peer[0], peer[1]))


def _mesh_hello(data: bytes, name: str) -> bool | None:
    """Whether the ClientHello at the start of ``data`` is mesh TLS for identity ``name`` (its
    SNI names it); None while it is incomplete. Other TLS passes through to the app untouched."""
    try:
        hello = parse_client_hello(data)
    except ValueError:
        return False
    return None if hello is None else hello.server_name == name


def _client_identity(transport: asyncio.BaseTransport, tls: TlsSource | None) -> str | None:
    """The mesh identity a terminated TLS client proved with its certificate, if any."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None or tls is None:
        return None
    from weft.identity.names import peer_identity

    identity: str | None = peer_identity(ssl_object.getpeercert(), tls.trust_domain)
    return identity


def _account_dial(
    concrete: Concrete,
    addr: Address,
    dial: asyncio.Task[tuple[asyncio.Transport, asyncio.Protocol]],
) -> None:
    """Tell the balancer about an early dial: one more pending on the endpoint until the dial
    is done, and no latency observed. The requests that follow are observed on their own; the
    time until the client speaks is its think time, not the endpoint's latency (peak EWMA would
    keep such a slow observation for tens of seconds), and an endpoint that was only dialed
    stays unobserved, so the balancer tries it before one it has measured. A dial that failed
    backed the endpoint off (as any failed connect does), with no latency penalty on top."""
    balancer = concrete.balancer
    started = balancer.start(addr)

    def done(_: asyncio.Task[tuple[asyncio.Transport, asyncio.Protocol]]) -> None:
        balancer.finish(addr, started, observe=False)

    dial.add_done_callback(done)


def _discard(dial: asyncio.Task[tuple[asyncio.Transport, asyncio.Protocol]]) -> None:
    """Give up an early connection: cancel the dial, or close what it connected."""

    def done(task: asyncio.Task[tuple[asyncio.Transport, asyncio.Protocol]]) -> None:
        if not task.cancelled() and task.exception() is None:
            task.result()[0].close()

    dial.cancel()
    dial.add_done_callback(done)


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
            server = await loop.create_server(
                lambda lst=listener: Accept(lst),  # type: ignore[misc]
                addr[0],
                addr[1],
                reuse_address=True,
                backlog=1024,
            )
            listener.server = server
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


def _identity(
    config: ProxyConfig, metrics: ProxyMetrics, streams: ControlStreams
) -> TlsSource | None:
    """This proxy's identity: certified by the control plane, from files, or none."""
    if config.identity_token_file and config.control:
        from weft.proxy.identity import ProxyIdentity

        labels = config.labels
        return ProxyIdentity(
            config.control,
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


def configure(proxy: ProxyServer) -> None:
    """Attach what the configuration asks for: identity (mutual TLS) and inbound policy."""
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
    if config.control and pod and namespace:
        from weft.proxy.inbound_policy import InboundPolicyWatch

        watch = InboundPolicyWatch(
            config.control,
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
    discovery_factory: Callable[[ControlStreams], Awaitable[Discovery | None]],
) -> int:
    """Run a proxy until SIGTERM/SIGINT or ``POST /shutdown``; returns the exit status.
    ``discovery_factory`` gets the registry its control-plane streams belong to."""
    streams = ControlStreams()
    discovery = await discovery_factory(streams)
    metrics = ProxyMetrics()
    proxy = ProxyServer(
        config,
        metrics=metrics,
        discovery=discovery,
        identity=_identity(config, metrics, streams),
        control_streams=streams,
    )
    configure(proxy)
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
    await proxy.wait()
    return 0


__all__ = ["Accept", "Listener", "ProxyServer", "configure", "original_dst", "run"]
