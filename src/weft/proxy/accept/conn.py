"""The accept path: accepting connections, and each one until its protocol is known.

Every accepted connection goes through :class:`Accept`:

1. its target is the original destination (``SO_ORIGINAL_DST`` after an iptables REDIRECT), or the
   configured ``--*-target`` when the connection was not redirected;
2. the target resolves to a :class:`~weft.proxy.outbound.concrete.Concrete` (discovery for
   outbound, the local app for inbound);
3. opaque ports (and destinations discovery marks opaque) are relayed as TCP at once;
4. otherwise, while the destination might greet first (no client has spoken HTTP to it yet), the
   proxy dials the upstream *as soon as it accepts* and detects the protocol on the first bytes
   of whichever side speaks first (:class:`weft.core.accept.Detection` decides). A server that
   greets first (MySQL, SMTP, NATS) is opaque TCP immediately, with no detection timeout; a
   client's HTTP/1 request line hands the connection to :mod:`weft.proxy.protocol.http1` (and the
   early connection joins the endpoint's pool); anything else (TLS, unknown bytes) is relayed as
   opaque TCP; a connection that never spoke (no byte from the client, no early connection) is
   closed at the detection timeout, with no dial.

Detection is callbacks, as the HTTP/1 path is: no task per connection (a coroutine task and its
event cost kilobytes per idle connection, and microseconds per accept) unless something must be
awaited (discovery of a new target, an opaque dial, the mesh paths). One timer per listener
(:class:`Deadlines`) times detection out, in accept order. Dials the accept path makes go through
the listener's :class:`~weft.core.accept.DialGate`: a burst of connections cannot become a burst
of dials.

Connections are accepted by :class:`AcceptLoop` in batches: uvloop's server accepts one
connection per event-loop iteration, and with 1,000 busy connections an iteration takes tens of
milliseconds, so new connections waited seconds in the listen backlog (issue 12, item 9).

A connection to the inbound port itself (not redirected) of a proxy that intercepts (no
``--inbound-target``) comes from a mesh proxy (an endpoint's ``proxy_port``): no early dial; it
must be mutual TLS for this proxy's identity, then a transport header
(:mod:`weft.core.transport_header`) names the app port, and the decrypted side goes on as a
connection redirected to that port would. Knowing this before any byte is what keeps a greeting
app from racing the client proxy's ClientHello.

Not for: listeners' lifecycle and shutdown (:mod:`weft.proxy.server`); HTTP or TCP relaying once
decided (:mod:`weft.proxy.protocol`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from weft.addr import Address
from weft.core.accept import DETECT_MAX, Detection, DialGate, Verdict
from weft.metrics.proxy import LabelItems
from weft.proxy.accept.handover import (
    Dial,
    Probe,
    account_dial,
    discard,
    opaque,
    pool_probe,
    relay,
    released,
    to_http1,
    to_http2,
)
from weft.proxy.accept.listen import OriginalDst, attach, original_dst
from weft.proxy.accept.mesh import addr_key, client_identity, mesh_connection, transport_target
from weft.proxy.inbound.tls import PeerTls, terminate
from weft.proxy.outbound.concrete import Concrete
from weft.proxy.outbound.endpoint import EndpointState

if TYPE_CHECKING:
    from weft.proxy.inbound.policy import PortPolicy
    from weft.proxy.server import Listener

log = logging.getLogger("weft.proxy")

# dials the accept path of one listener has under way at once (early dials, opaque connects)
MAX_DIALS = 256

_Dial = Dial


# (concrete, endpoint, dial, probe): an early connection passed from the outer to the inner side
_Handoff = tuple[Concrete, EndpointState, _Dial, Probe]


class Accept(asyncio.Protocol):
    """An accepted connection until its protocol is known."""

    __slots__ = (
        "buffer", "client_eof", "client_first", "client_lost", "concrete", "det", "dial",
        "event", "failed", "grace", "handoff", "listener", "orig", "orig_known", "peer",
        "peer_ip", "peer_tls", "port_policy", "probe", "state", "task", "terminated",
        "ticket", "tls_labels", "transport", "transported",
    )  # fmt: skip

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
        # the client's address, read from the transport when first needed (an idle connection
        # that never needs it does not keep it: ~140 bytes)
        self.peer = ""
        # the original destination, when the accept loop read it from the socket already
        self.orig: Address | None = None
        self.orig_known = False
        # the outer side's early connection to the app, for the inner side of mesh TLS
        self.handoff: _Handoff | None = None
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.client_eof = False
        self.client_lost = False
        # only the paths that await (mesh, transport header) wait on an event
        self.event: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None
        # detection (None until it starts, and again once decided)
        self.concrete: Concrete | None = None
        self.det: Detection | None = None
        self.probe: Probe | None = None
        self.dial: _Dial | None = None
        self.state: EndpointState | None = None
        self.failed: set[Address] | None = None
        self.ticket: list[Callable[[], None] | None] | None = None  # an early dial in line
        self.grace: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        listener = self.listener
        orig = self.orig
        if not self.orig_known:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                orig = original_dst(sock)
        if self.terminated:
            self.peer_tls = PeerTls(client_identity(transport, listener.tls))
        if listener.tls is not None:  # no identity: no TLS labels (and no call to ask)
            self.tls_labels = listener.peer_labels(self.peer_tls)
        listener.accepting.add(self)
        try:
            if self.transported or (orig is None and self._mesh_only()):
                self.task = asyncio.get_running_loop().create_task(self._run_mesh())
                return
            if orig is not None:
                target: Address | None = orig
                key = addr_key(orig)
            else:
                target, key = listener.default_target, listener.default_key
            if target is None:
                log.warning("connection from %s has no target (not redirected, no --%s-target)",
                            self.peer_name(), listener.direction)  # fmt: skip
                self._close()
                return
            concrete = listener.concretes.get(key)
            if concrete is None:
                self.task = asyncio.get_running_loop().create_task(self._resolve(target))
                return
            self._start(target, concrete)
        except Exception:
            log.exception("error handling connection from %s", self.peer_name())
            self._close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > 65536 and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.client_eof = True
        self._wake()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_lost = True
        self._wake()
        self.listener.accepting.discard(self)
        self.listener.counts.closed_one()

    def peer_name(self) -> str:
        """The client's address as ``host:port`` (for logs and the HTTP protocols)."""
        if not self.peer:
            self._read_peer()
        return self.peer

    def client_ip(self) -> str | None:
        if not self.peer:
            self._read_peer()
        return self.peer_ip

    def _read_peer(self) -> None:
        self.peer = "-"
        transport = self.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if peer:
            self.peer = addr_key(peer)
            self.peer_ip = peer[0]

    def _wake(self) -> None:
        if self.det is not None:
            self.check()
        elif self.event is not None:
            self.event.set()

    def _close(self) -> None:
        """Abort the connection, undecided."""
        if self.transport is not None:
            self.transport.abort()
        self._done()

    def _done(self) -> None:
        listener = self.listener
        listener.accepting.discard(self)
        listener.deadlines.discard(self)
        self.det = None
        if self.grace is not None:
            self.grace.cancel()
            self.grace = None

    # -- the paths that await -------------------------------------------------------------------

    async def _resolve(self, target: Address) -> None:
        """A target with no concrete yet (discovery resolves it)."""
        try:
            concrete = await self.listener.concrete_for(target)
            if self.client_lost:
                self._done()
                return
            self._start(target, concrete)
        except Exception:
            log.exception("error handling connection from %s", self.peer_name())
            self._close()

    async def _run_mesh(self) -> None:
        """A mesh proxy's connection to the inbound port, or its decrypted side."""
        self.event = asyncio.Event()
        try:
            if not self.transported:
                await mesh_connection(self)
                self._done()
                return
            target = await transport_target(self)
            if target is None:
                self._done()
                return
            self.event = None
        except Exception:
            log.exception("error handling connection from %s", self.peer_name())
            self._close()
            return
        await self._resolve(target)

    # -- detection ------------------------------------------------------------------------------

    def _start(self, target: Address, concrete: Concrete) -> None:
        listener = self.listener
        policy = listener.policy
        pp = self.port_policy = policy.port(target[1]) if policy is not None else None
        opaque = (
            target[1] in listener.config.opaque_ports
            or concrete.opaque
            or (pp is not None and pp.protocol in ("opaque", "tls"))
        )
        if opaque and not self._may_terminate():
            if self._tcp_authorized():
                self._spawn(self._opaque_handoff(concrete))
            else:
                self._done()
            return
        # an opaque port still carries mesh TLS from meshed clients: only that is detected
        self._detect(concrete, opaque)

    def _detect(self, concrete: Concrete, opaque: bool) -> None:
        """Decide the protocol (``opaque``: only mesh TLS, or opaque TCP at once)."""
        listener = self.listener
        tls = listener.tls
        loop = listener.loop
        assert loop is not None
        deadline = loop.time() + listener.detect_timeout
        det = Detection(
            deadline,
            opaque=opaque,
            mesh_name=tls.name if tls is not None and self._may_terminate() else None,
        )
        det.dials = 1
        self.concrete = concrete
        handoff = self.handoff if self.handoff is not None and self.handoff[0] is concrete else None
        self.handoff = None
        if handoff is not None:  # the connection the outer side dialed before it saw mesh TLS
            # the outer side accounted for this dial with the balancer
            _, state, dial, probe = handoff
            self.state, self.dial, self.probe = state, dial, probe
            self.failed = {state.addr}
            probe.rebind(self._wake)
            dial.add_done_callback(self._dial_done)
        else:
            # Dial early only while the destination might greet first: once a client has spoken
            # HTTP to it, later connections just wait for the client (a silent one is closed at
            # the detection timeout).
            pp = self.port_policy
            refused = pp is not None and not pp.tcp_allowed(self.client_ip(), self._client_id())
            if not (concrete.http_seen or refused or self.client_first):
                picked = concrete.pick()
                if picked is not None:
                    self.failed = {picked.addr}
                    self._early_dial(picked)
        self.det = det
        listener.deadlines.add(self, deadline)
        self.check()

    def _early_dial(self, state: EndpointState) -> None:
        """Dial ``state`` ahead of the client's first bytes, when the listener's gate lets it."""
        self.state = state
        probe = self.probe = Probe(self._wake)
        concrete = self.concrete
        assert concrete is not None
        gate = self.listener.dials

        def start() -> None:
            self.ticket = None
            dial = self.dial = concrete.connect(state, lambda: probe)
            account_dial(concrete, state.addr, dial)
            dial.add_done_callback(released(gate))
            dial.add_done_callback(self._dial_done)

        ticket = gate.acquire(start)
        if ticket[0] is not None:  # in line: ``start`` runs when a dial slot frees up
            self.ticket = ticket

    def _dial_done(self, _: object) -> None:
        self._wake()

    def _drop_dial(self) -> None:
        """Give up the early connection (dialed or in line)."""
        if self.ticket is not None:
            DialGate.cancel(self.ticket)
            self.ticket = None
        if self.dial is not None:
            discard(self.dial)
            self.dial = None

    def check(self, now: float | None = None) -> None:
        """Ask the detection what to do now (after any event, and at the deadline)."""
        det = self.det
        if det is None:
            return
        try:
            self._check(det, now)
        except Exception:
            log.exception("error handling connection from %s", self.peer_name())
            self._drop_dial()
            self._close()

    def _check(self, det: Detection, now: float | None) -> None:
        loop = self.listener.loop
        assert loop is not None
        for _ in range(4):  # a failed early dial is retried (at most 3 dials)
            dial = self.dial
            server: bytes | None = None
            server_eof = False
            failed = False
            if dial is not None:
                if dial.done() and (dial.cancelled() or dial.exception() is not None):
                    failed = True
                else:
                    probe = self.probe
                    assert probe is not None
                    server, server_eof = probe.buffer, probe.eof
            t = loop.time() if now is None else max(now, loop.time())
            verdict = det.step(
                t,
                self.buffer,
                client_eof=self.client_eof,
                client_lost=self.client_lost,
                server=server,
                server_eof=server_eof,
                dial_failed=failed,
            )
            if verdict is Verdict.WAIT:
                return
            if verdict is not Verdict.REDIAL:
                self._decided(verdict)
                return
            # the early dial failed: try another endpoint, else give a client that speaks
            # first (HTTP) a moment to do so, for a specific error, then close
            self.dial = self.probe = None
            concrete = self.concrete
            assert concrete is not None and self.failed is not None
            state = concrete.pick() if det.may_redial() else None
            if state is not None and state.addr not in self.failed:
                self.failed.add(state.addr)
                det.redialed()
                self._early_dial(state)
                return
            self.state = None
            det.give_up(t)
            if self.grace is None:
                self.grace = loop.call_at(det.deadline, self.check, det.deadline)

    def _decided(self, verdict: Verdict) -> None:
        concrete = self.concrete
        assert concrete is not None
        listener = self.listener
        self.det = None
        listener.deadlines.discard(self)
        if self.grace is not None:
            self.grace.cancel()
            self.grace = None
        dial, state, probe = self.dial, self.state, self.probe
        self.dial = self.probe = None
        if self.ticket is not None:  # an early dial still in line: not wanted any more
            DialGate.cancel(self.ticket)
            self.ticket = None
            dial = None
        if self.client_lost or verdict is Verdict.GONE:
            if dial is not None:
                discard(dial)
            self._done()
            return
        if verdict is Verdict.SILENT:
            log.debug("connection from %s to %s: nothing said within %.0f s, closed",
                      self.peer_name(), concrete.name, listener.config.detect_timeout)  # fmt: skip
            listener.silent_closed += 1
            self._close()
            return
        if verdict is Verdict.EMPTY:
            self._close()
            return
        if verdict is Verdict.UNREACHABLE:
            log.info("connection from %s to %s: no reachable endpoint",
                     self.peer_name(), concrete.name)  # fmt: skip
            self._close()
            return
        if verdict is Verdict.MESH_TLS:
            handed = None
            if dial is not None and state is not None and probe is not None:
                handed = (concrete, state, dial, probe)
            self._done()
            self._terminate(handed)
            return
        if verdict is Verdict.HTTP2:
            concrete.http_seen = True
            if dial is not None:
                discard(dial)
            self._done()
            to_http2(self, concrete)
            return
        if verdict is Verdict.HTTP1:
            concrete.http_seen = True
            if dial is not None and state is not None:
                pool_probe(self, concrete, state, dial)
            self._done()
            to_http1(self, concrete)
            return
        # opaque TCP: the client's bytes are no HTTP, or the server spoke first
        if not self._tcp_authorized():
            if dial is not None:
                discard(dial)
            self._done()
            return
        if dial is not None and dial.done() and not dial.cancelled() and dial.exception() is None:
            relay(self, concrete, dial.result()[0], state, probe)
            self._done()
            return
        self._spawn(self._opaque_after(concrete, dial, state))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Go on in a task (an opaque connection's dial); the connection counts as accepting
        until it is done."""

        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("error handling connection from %s", self.peer_name())
                if self.transport is not None:
                    self.transport.abort()
            finally:
                self._done()

        self.task = asyncio.get_running_loop().create_task(run())

    async def _opaque_after(
        self, concrete: Concrete, dial: _Dial | None, state: EndpointState | None
    ) -> None:
        early = None
        if dial is not None:
            try:
                early = await dial
            except (OSError, TimeoutError):
                early = None
        await opaque(self, concrete, early, state)

    async def _opaque_handoff(self, concrete: Concrete) -> None:
        await opaque(self, concrete, await self._take_handoff(concrete))

    def _client_id(self) -> str | None:
        return self.peer_tls.client_id if self.peer_tls is not None else None

    def _tcp_authorized(self) -> bool:
        """Inbound policy for an opaque connection (counted); closes it when denied."""
        pp = self.port_policy
        if pp is None or pp.tcp_connection(self.client_ip(), self._client_id(), self.terminated):
            return True
        log.info("connection from %s denied by policy", self.peer_name())
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

    def _terminate(self, handoff: _Handoff | None, *, transported: bool = False) -> None:
        """Mesh TLS addressed to this proxy: decrypt, then detect again on the inner stream,
        which takes over the connection dialed early to the app (one connection per client)."""
        transport = self.transport
        tls = self.listener.tls
        assert transport is not None and tls is not None
        context = tls.server_context
        if context is None:
            if handoff is not None:
                discard(handoff[2])
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
                    discard(inner.handoff[2])
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
            discard(dial)
            return None
        try:
            return await dial
        except (OSError, TimeoutError):
            return None


class Acceptor:
    """Each connection a listener's :class:`~weft.proxy.accept.listen.AcceptLoop` accepts: its
    original destination read, then an :class:`Accept` on a transport (compiled, where a
    closure in the listener was interpreted). ``port``: the listener's, once bound."""

    __slots__ = ("dst", "family", "listener", "loop", "port")

    def __init__(self, listener: Listener, family: int) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.family = family
        self.port = 0
        self.dst = OriginalDst()

    def adopt(self, fd: int, _: Any) -> None:
        """Take accepted descriptor ``fd`` (closed here if this fails)."""
        try:
            acc = Accept(self.listener)
            acc.orig = self.dst.read(fd, self.family, self.port)
            acc.orig_known = True
        except BaseException:
            os.close(fd)
            raise
        attach(self.loop, acc, fd, self.family)  # closes ``fd`` itself if it fails


__all__ = ["DETECT_MAX", "MAX_DIALS", "Accept", "Acceptor"]
