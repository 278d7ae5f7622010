"""One connection through :class:`weft.testing.relay.Relay`: its tasks, counters and recording.

Each direction is a reader and a writer task with a small queue between them, so latency is
added per chunk without serializing the chunks (a long link, not a slow one). Faults are read
from the relay at each chunk, so switching one applies to open connections at once.

Not for: use on its own (a relay creates these; tests read their counters and bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import TYPE_CHECKING, Any, Literal

from weft.addr import Address

if TYPE_CHECKING:
    from weft.testing.relay import Relay

Direction = Literal["up", "down", "both"]
"""``up``: client to target; ``down``: target to client."""

CHUNK = 65536
_QUEUE = 16  # chunks read ahead of the writer (a latency of X keeps at most this many in flight)
LINGER_RST = struct.pack("ii", 1, 0)


class RelayConnection:
    """One accepted connection: its counters and, when the relay records, its bytes."""

    def __init__(self, relay: Relay, client: socket.socket, peer: Address) -> None:
        self.relay = relay
        self.peer = peer
        self.blackholed = relay.new_connections == "blackhole"
        self.open = True
        self.bytes_up = 0
        self.bytes_down = 0
        self.up = bytearray()  # recorded client -> target bytes (record=True)
        self.down = bytearray()  # recorded target -> client bytes
        self._client = client
        self._upstream: socket.socket | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._ending: Literal["close", "reset"] = "close"
        self._ended = False  # end() was called: also before the tasks exist (while dialing)
        self._dialing: asyncio.Task[Any] | None = None
        self._done = asyncio.Event()

    def __repr__(self) -> str:
        state = "open" if self.open else "closed"
        return f"<RelayConnection {self.peer} {state} up={self.bytes_up} down={self.bytes_down}>"

    async def wait_closed(self) -> None:
        await self._done.wait()

    def end(self, how: Literal["close", "reset"]) -> None:
        """End the connection on both sides: ``close`` (FIN) or ``reset`` (RST)."""
        self._ending = how
        self._ended = True
        me = asyncio.current_task()
        for task in [*self._tasks, self._dialing]:
            if task is not None and task is not me:
                task.cancel()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self._ended:  # ended before this task first ran
                return
            if self.blackholed:
                self._tasks = [loop.create_task(self._swallow())]
            else:
                self._upstream = await self._dial()
                if self._upstream is None:
                    self._ending = "reset"
                    return
                if self._ended:
                    return
                self._forward_ready(self._upstream)
                up: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE)
                down: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE)
                self._tasks = [
                    loop.create_task(self._read(self._client, up, "up")),
                    loop.create_task(self._write(self._upstream, up, "up")),
                    loop.create_task(self._read(self._upstream, down, "down")),
                    loop.create_task(self._write(self._client, down, "down")),
                ]
            # gather waits until every task has finished, so no socket operation is pending
            # when the sockets are closed below
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            if self._tasks and not all(t.done() for t in self._tasks):  # we were cancelled
                for t in self._tasks:
                    t.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
            for sock in (self._client, self._upstream):
                if sock is not None:
                    _finish(sock, reset=self._ending == "reset")
            self.open = False
            self.relay._live.discard(self)
            self._done.set()

    async def _dial(self) -> socket.socket | None:
        """The target, connected; None when it failed or end() came first."""
        loop = asyncio.get_running_loop()
        target = self.relay.target
        sock = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET)
        sock.setblocking(False)
        me = self._dialing = asyncio.current_task()
        try:
            async with asyncio.timeout(self.relay.connect_timeout):
                await loop.sock_connect(sock, target)
        except (OSError, TimeoutError):
            sock.close()
            self.relay.dial_failures += 1
            return None
        except asyncio.CancelledError:
            sock.close()
            if not self._ended or me is None:
                raise  # the relay is closing
            me.uncancel()  # end() cancelled the dial, not the task
            return None
        except BaseException:
            sock.close()
            raise
        finally:
            self._dialing = None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.relay.forwarded += 1
        return sock

    def _forward_ready(self, upstream: socket.socket) -> None:
        """Send at once what the client sent while the target was dialed, as a wire would have
        it in flight: a target that speaks first must not win a race the client won (the
        relay's tasks take event-loop turns to start). Only when no fault shapes the bytes."""
        relay = self.relay
        if relay.latency_up or relay.close_after is not None or not relay._flowing.is_set():
            return
        with contextlib.suppress(OSError):  # nothing yet, or an error the tasks will meet
            data = self._client.recv(CHUNK, socket.MSG_PEEK)
            if data:
                sent = upstream.send(data)
                self._count(self._client.recv(sent), "up")

    async def _swallow(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while await loop.sock_recv(self._client, CHUNK):
                pass
        await asyncio.Event().wait()  # never answer, not even with a FIN: until ended

    async def _read(
        self, src: socket.socket, queue: asyncio.Queue[tuple[float, bytes]], way: Direction
    ) -> None:
        loop = asyncio.get_running_loop()
        relay = self.relay
        try:
            while True:
                await relay._flowing.wait()
                data = await loop.sock_recv(src, CHUNK)
                delay = relay.latency_up if way == "up" else relay.latency_down
                await queue.put((loop.time() + delay, data))
                if not data:
                    return
        except OSError:
            self.end("reset")  # a reset on one side is passed on to the other

    async def _write(
        self, dst: socket.socket, queue: asyncio.Queue[tuple[float, bytes]], way: Direction
    ) -> None:
        loop = asyncio.get_running_loop()
        relay = self.relay
        try:
            while True:
                due, data = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                await relay._flowing.wait()
                if not data:
                    dst.shutdown(socket.SHUT_WR)  # pass the half-close on; the other way flows
                    return
                data, last = self._limit(data, way)
                if data:
                    await loop.sock_sendall(dst, data)
                    self._count(data, way)
                if last:
                    self.end("reset" if relay.close_reset else "close")
                    return
        except OSError:
            self.end("reset")

    def _limit(self, data: bytes, way: Direction) -> tuple[bytes, bool]:
        """Truncate ``data`` to what ``close_after`` still allows; True when that is the end."""
        relay = self.relay
        if relay.close_after is None or relay.close_after_direction not in (way, "both"):
            return data, False
        if relay.close_after_direction == "both":
            sent = self.bytes_up + self.bytes_down
        else:
            sent = self.bytes_up if way == "up" else self.bytes_down
        room = max(relay.close_after - sent, 0)
        if len(data) < room:
            return data, False
        return data[:room], True

    def _count(self, data: bytes, way: Direction) -> None:
        relay = self.relay
        if way == "up":
            self.bytes_up += len(data)
            relay.bytes_up += len(data)
            if relay.record:
                self.up += data
        else:
            self.bytes_down += len(data)
            relay.bytes_down += len(data)
            if relay.record:
                self.down += data


def _finish(sock: socket.socket, *, reset: bool) -> None:
    """Close ``sock`` with a RST (``reset``) or a FIN. Linux answers the close of a socket with
    unread bytes with a RST, so a FIN first reads what is already buffered (bounded)."""
    with contextlib.suppress(OSError):
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        else:
            for _ in range(64):
                if not sock.recv(CHUNK):
                    break
    sock.close()
