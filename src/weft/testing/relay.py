"""A fault-injecting TCP relay on loopback, for tests that need a network that misbehaves.

:class:`Relay` listens on ``127.0.0.1`` and forwards each connection to a target address; a test
puts it between two parties (an app and a proxy, two proxies, a proxy and its backend) and
switches faults at run time: latency added to every chunk, new connections refused (the port
kept, connects answered ``ECONNREFUSED``), closed or reset at once, or accepted into a blackhole
that never forwards nor answers; open connections reset (RST, ``SO_LINGER`` 0) or closed once
they have forwarded N bytes; forwarding paused and resumed. It counts connections and bytes each
way, and with ``record=True`` keeps what went through (what a packet capture would see).

Not for: production traffic or throughput measurements (plain ``sock_recv``/``sock_sendall``
loops, up to four tasks per connection); faults below TCP (dropped or reordered segments, a
SYN that is never answered: those need a network namespace and ``tc``/iptables, see
:mod:`weft.testing.capture` for the namespace side); anything but loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Literal

from weft.addr import Address
from weft.testing.relay_conn import LINGER_RST, Direction, RelayConnection

NewConnections = Literal["forward", "refuse", "close", "reset", "blackhole"]


class Relay:
    """A TCP relay from ``127.0.0.1:<port>`` to ``target``, with faults switchable at run time.

    Use as ``async with Relay(target) as relay:`` and dial ``relay.address``. Faults on new
    connections are exclusive (:meth:`forward`, :meth:`refuse`, :meth:`close_new`,
    :meth:`reset_new`, :meth:`blackhole`); latency, :meth:`close_after` and :meth:`pause`
    combine with them; :meth:`heal` undoes everything. Counters: ``accepted`` connections,
    ``forwarded`` (the target was dialed), ``dial_failures`` (the target refused or timed out:
    the client is reset), ``bytes_up``/``bytes_down`` forwarded, :attr:`active` connections.
    """

    def __init__(
        self,
        target: Address,
        *,
        record: bool = False,
        host: str = "127.0.0.1",
        backlog: int = 1024,
        connect_timeout: float = 10.0,
    ) -> None:
        self.target = target  # may be changed at run time: new connections go there
        self.record = record
        self.host = host
        self.backlog = backlog
        self.connect_timeout = connect_timeout
        self.new_connections: NewConnections = "forward"
        self.latency_up = 0.0
        self.latency_down = 0.0
        self.close_after: int | None = None
        self.close_after_direction: Direction = "both"
        self.close_reset = False
        self.accepted = 0
        self.forwarded = 0
        self.dial_failures = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections: list[RelayConnection] = []  # every accepted one, in order
        self._live: set[RelayConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._listener: socket.socket | None = None
        self._reading = False
        self._address: Address | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> Relay:
        self._listener = _bind_keeping_port(self.host)
        self._address = self._listener.getsockname()[:2]
        self._listen()
        return self

    async def close(self) -> None:
        """Stop listening and close every connection (both sides)."""
        if self._listener is not None:
            if self._reading:
                asyncio.get_running_loop().remove_reader(self._listener.fileno())
                self._reading = False
            self._listener.close()
            self._listener = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Relay:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def address(self) -> Address:
        if self._address is None:
            raise RuntimeError("the relay is not started")
        return self._address

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def active(self) -> int:
        """Connections open now (forwarding or blackholed)."""
        return len(self._live)

    def recorded_up(self) -> bytes:
        """Every recorded client -> target byte, connection after connection."""
        return b"".join(c.up for c in self.connections)

    def recorded_down(self) -> bytes:
        return b"".join(c.down for c in self.connections)

    # -- faults ---------------------------------------------------------------------------------

    def forward(self) -> None:
        """New connections are forwarded to the target (the default)."""
        self._set_new("forward")

    def refuse(self) -> None:
        """Stop listening, keeping the port: connects are refused (``ECONNREFUSED``), as to a
        process that is gone. Connections still waiting in the accept queue are reset."""
        self._set_new("refuse")

    def close_new(self) -> None:
        """Accept new connections and close them at once (FIN), before any byte."""
        self._set_new("close")

    def reset_new(self) -> None:
        """Accept new connections and reset them at once (RST)."""
        self._set_new("reset")

    def blackhole(self) -> None:
        """Accept new connections, read and discard what they send, never dial the target and
        never answer (not even a FIN) until they are reset, closed or the relay closes."""
        self._set_new("blackhole")

    def delay(self, seconds: float, direction: Direction = "both") -> None:
        """Add ``seconds`` of latency to every chunk forwarded in ``direction`` (chunks are
        pipelined, as on a long link: throughput is kept, each byte arrives later)."""
        if seconds < 0:
            raise ValueError(f"latency must be >= 0, got {seconds!r}")
        if direction in ("up", "both"):
            self.latency_up = seconds
        if direction in ("down", "both"):
            self.latency_down = seconds

    def close_after_bytes(
        self, nbytes: int | None, direction: Direction = "both", *, reset: bool = False
    ) -> None:
        """Each connection (open ones count what they already forwarded) is ended once it has
        forwarded ``nbytes`` in ``direction`` (exactly: the chunk that crosses the limit is cut
        there), with a FIN both ways, or a RST with ``reset``. ``None``: no limit."""
        if nbytes is not None and nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
        self.close_after = nbytes
        self.close_after_direction = direction
        self.close_reset = reset

    def pause(self) -> None:
        """Stop forwarding on every connection (bytes wait; reading stops, so the senders feel
        backpressure once the buffers are full)."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def reset_open(self) -> int:
        """Reset (RST) both sides of every open connection; the number reset."""
        return await self._end_open("reset")

    async def close_open(self) -> int:
        """Close (FIN) both sides of every open connection; the number closed."""
        return await self._end_open("close")

    def heal(self) -> None:
        """Undo every fault: forward new connections, no latency, no byte limit, flowing."""
        self.forward()
        self.delay(0.0)
        self.close_after_bytes(None)
        self.resume()

    # -- internals ------------------------------------------------------------------------------

    async def _end_open(self, how: Literal["close", "reset"]) -> int:
        live = list(self._live)
        for conn in live:
            conn.end(how)
        async with asyncio.timeout(10.0):
            await asyncio.gather(*(c.wait_closed() for c in live))
        return len(live)

    def _set_new(self, mode: NewConnections) -> None:
        was = self.new_connections
        self.new_connections = mode
        if self._listener is None:
            return
        if mode == "refuse" and was != "refuse":
            self._stop_listening()
        elif mode != "refuse" and was == "refuse":
            self._listen()

    def _listen(self) -> None:
        assert self._listener is not None
        self._listener.listen(self.backlog)
        # a reader callback rather than a task around sock_accept: removing it is immediate,
        # so refuse() stops listening before the caller's next connect
        asyncio.get_running_loop().add_reader(self._listener.fileno(), self._on_readable)
        self._reading = True

    def _stop_listening(self) -> None:
        assert self._listener is not None
        if self._reading:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._reading = False
        # Linux: shutting down the read side of a listening socket stops it listening (new
        # connects are refused) while it stays bound, so listen() can take the same port again
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RD)

    def _on_readable(self) -> None:
        listener = self._listener
        assert listener is not None
        for _ in range(self.backlog):  # bounded: what is queued now, not what keeps coming
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # a connection reset while queued
                continue
            self._admit(sock, peer)

    def _admit(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        sock.setblocking(False)
        self.accepted += 1
        mode = self.new_connections
        if mode in ("close", "reset"):
            if mode == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            sock.close()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = RelayConnection(self, sock, (peer[0], peer[1]))
        self.connections.append(conn)
        self._live.add(conn)
        task = asyncio.get_running_loop().create_task(conn.serve())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _bind_keeping_port(host: str) -> socket.socket:
    """A listening-ready socket on an ephemeral port, bound to that port by number.

    A socket bound to port 0 gives its port back when it stops listening; one bound to an
    explicit port keeps it. So: find a free port with a first socket and bind the real one to
    it while the first still holds it (both with ``SO_REUSEPORT``), then drop the first and
    clear the option, so no other socket can share the port later. ``SO_REUSEADDR`` lets
    listen() take the port again while accepted connections still use it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family)
    sock = socket.socket(family)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind((host, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, probe.getsockname()[1]))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    finally:
        probe.close()
    return sock
