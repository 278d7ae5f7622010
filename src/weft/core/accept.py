"""The accept path's decisions, sans-I/O: what an accepted connection is, and who may dial.

:class:`Detection` decides, from what the client and the early upstream connection have sent
so far (and the clock), whether a connection is HTTP/1, HTTP/2, mesh TLS for this proxy, opaque
TCP, a server that greets first, or one to close: a client gone, every endpoint unreachable, or
a connection that never spoke (no byte from the client and no early connection to the server)
when the detection timeout passes. Such a connection is closed, not relayed: relaying it would
dial the upstream for a client that said nothing, and 10,000 of them reaching the timeout
together were 10,000 dials at once (issue 12).

:class:`DialGate` bounds the dials the accept path has under way at once (early dials and opaque
connects); the rest wait their turn in order.

Not for: reading sockets, dialing, timers (the shell in :mod:`weft.proxy.accept.conn` does those and
asks here what to do after each event); protocol sniffing itself (:mod:`weft.core.detect`).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable

from weft.core.detect import Protocol, detect, h2_server_greeting, parse_client_hello

DETECT_MAX = 1024
# how long a client gets to speak first once every endpoint refused the early connection
UNREACHABLE_GRACE = 1.0
# early dials per connection (a failed one is retried on another endpoint)
MAX_EARLY_DIALS = 3


class Verdict(enum.Enum):
    """What to do with a connection after an event."""

    WAIT = "wait"  # nothing known yet: wait for bytes, the dial or the deadline
    HTTP1 = "http1"
    HTTP2 = "http2"
    MESH_TLS = "mesh-tls"  # a ClientHello for this proxy's identity: terminate
    OPAQUE = "opaque"  # relay as TCP (with the early connection, if any)
    SERVER_FIRST = "server-first"  # the server spoke (or closed) first: relay as TCP
    GONE = "gone"  # the client left
    REDIAL = "redial"  # the early dial failed and the client has not spoken: try another
    UNREACHABLE = "unreachable"  # no endpoint answered and the client did not speak: close
    SILENT = "silent"  # the detection timeout passed and nobody spoke: close, no dial
    EMPTY = "empty"  # the client closed without a byte, no early connection: close, no dial


def mesh_hello(data: bytes, name: str) -> bool | None:
    """Whether the ClientHello at the start of ``data`` is mesh TLS for identity ``name`` (its
    SNI names it); None while it is incomplete. Other TLS passes through to the app untouched."""
    try:
        hello = parse_client_hello(data)
    except ValueError:
        return False
    return None if hello is None else hello.server_name == name


class Detection:
    """The protocol decision of one accepted connection.

    ``deadline``: when detection gives up (the clock is the caller's); ``opaque``: only mesh TLS
    is detected, anything else is opaque at once; ``mesh_name``: this proxy's identity when it
    may terminate mesh TLS (inbound with an identity), else None. The caller reports dials with
    :meth:`redialed` and :meth:`give_up`, and calls :meth:`step` after every event.
    """

    __slots__ = ("deadline", "dials", "mesh_name", "opaque", "unreachable")

    def __init__(
        self, deadline: float, *, opaque: bool = False, mesh_name: str | None = None
    ) -> None:
        self.deadline = deadline
        self.opaque = opaque
        self.mesh_name = mesh_name
        self.unreachable = False
        self.dials = 0

    def step(
        self,
        now: float,
        client: bytes,
        *,
        client_eof: bool = False,
        client_lost: bool = False,
        server: bytes | None = None,
        server_eof: bool = False,
        dial_failed: bool = False,
    ) -> Verdict:
        """The verdict given the client's bytes so far, the early connection's (``server``:
        None when there is none, or it has not connected) and whether its dial failed."""
        hello_pending = False
        if client:
            name = self.mesh_name
            if name is not None and client[0] == 0x16:
                ours = mesh_hello(client, name)
                if ours is None:
                    hello_pending = True  # a ClientHello, not complete yet
                else:
                    return Verdict.MESH_TLS if ours else Verdict.OPAQUE
            elif self.opaque:
                return Verdict.OPAQUE
            else:
                found = detect(client[:DETECT_MAX], max_bytes=DETECT_MAX)
                if found is Protocol.HTTP1:
                    return Verdict.HTTP1
                if found is Protocol.HTTP2:
                    return Verdict.HTTP2
                if found is not None:
                    return Verdict.OPAQUE
        # a server that greets while a mesh ClientHello is still arriving must wait: the client
        # is a proxy, and the greeting goes to it inside TLS; an HTTP/2 server's SETTINGS
        # (grpcio sends them at accept) is not a greeting: wait for the client
        if (
            not hello_pending
            and server is not None
            and (server_eof or (server and h2_server_greeting(server) is False))
        ):
            return Verdict.SERVER_FIRST
        if client_lost:
            return Verdict.GONE
        if client_eof:
            # nothing to relay either way: dialing only to pass on a FIN is a dial per
            # connection when idle clients go away together
            return Verdict.OPAQUE if client or server is not None else Verdict.EMPTY
        if dial_failed and not client:
            return Verdict.REDIAL
        if now >= self.deadline:
            if not client:
                if self.unreachable:
                    return Verdict.UNREACHABLE
                if server is None:
                    return Verdict.SILENT
            return Verdict.OPAQUE
        return Verdict.WAIT

    def may_redial(self) -> bool:
        """Whether another early dial may be tried after a failed one."""
        return self.dials < MAX_EARLY_DIALS

    def redialed(self) -> None:
        """An early dial was started."""
        self.dials += 1

    def give_up(self, now: float) -> None:
        """No endpoint left to dial early: give a client that speaks first (HTTP) a moment to do
        so, for a specific error; a silent one is then closed as unreachable."""
        self.unreachable = True
        self.deadline = min(self.deadline, now + UNREACHABLE_GRACE)


class DialGate:
    """At most ``limit`` dials under way at once; the others wait in order.

    :meth:`acquire` runs ``start`` now when a slot is free, else when one is; each started dial
    must :meth:`release` its slot once it is done. ``acquire`` returns a ticket to
    :meth:`cancel` a wait that is no longer wanted (a no-op once started).
    """

    __slots__ = ("active", "limit", "peak", "waiting")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.active = 0
        self.peak = 0  # the most dials under way at once (for tests and diagnostics)
        self.waiting: deque[list[Callable[[], None] | None]] = deque()

    def acquire(self, start: Callable[[], None]) -> list[Callable[[], None] | None]:
        ticket: list[Callable[[], None] | None] = [start]
        if self.active < self.limit and not self.waiting:
            ticket[0] = None
            self._take()
            start()
        else:
            self.waiting.append(ticket)
        return ticket

    @staticmethod
    def cancel(ticket: list[Callable[[], None] | None]) -> None:
        ticket[0] = None  # skipped when its turn comes

    def release(self) -> None:
        self.active -= 1
        waiting = self.waiting
        while waiting and self.active < self.limit:
            ticket = waiting.popleft()
            start = ticket[0]
            if start is not None:
                ticket[0] = None
                self._take()
                start()

    def _take(self) -> None:
        self.active += 1
        if self.active > self.peak:
            self.peak = self.active


__all__ = [
    "DETECT_MAX",
    "MAX_EARLY_DIALS",
    "UNREACHABLE_GRACE",
    "Detection",
    "DialGate",
    "Verdict",
    "mesh_hello",
]
