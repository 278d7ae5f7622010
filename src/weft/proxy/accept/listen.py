"""Accepting: the listening socket, accepted in batches, and the detection timer.

uvloop's server accepts one connection per event-loop iteration; with 1,000 busy connections an
iteration takes tens of milliseconds, so new connections waited seconds in the listen backlog
(issue 12, item 9: a p99 of 7 s at 1,000 keep-alive connections). :class:`AcceptLoop` accepts up
to :data:`ACCEPT_BATCH` per wakeup instead. :class:`Deadlines` times out detection for a whole
listener with one timer (a timer per connection costs memory and a heap operation per accept).

Not for: what a connection is (:mod:`weft.proxy.accept.conn`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from weft.addr import Address

if TYPE_CHECKING:
    from weft.metrics.proxy import TcpSeries
    from weft.proxy.accept.conn import Accept

log = logging.getLogger("weft.proxy")

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
# connections accepted per wakeup of a listening socket (then other work gets its turn)
ACCEPT_BATCH = 512
SOCK_STREAM = int(socket.SOCK_STREAM)  # a plain int: uvloop compares it, no enum needed
# after EMFILE/ENFILE: how long to stop accepting (the backlog holds the others meanwhile)
ACCEPT_PAUSE = 0.1
# after this many connections closed, give freed memory back to the OS (glibc keeps it otherwise:
# RSS stayed 65 MB up after 10,000 idle connections closed)
TRIM_AFTER_CLOSES = 1000


def original_dst(
    sock: socket.socket, listen_port: int | None = None, family: int | None = None
) -> Address | None:
    """The pre-REDIRECT destination of an accepted socket, or None when it was not redirected
    (``listen_port``, when known, saves a ``getsockname`` for a redirected connection; ``family``
    the ``sock.family`` lookup, an enum conversion per call)."""
    if family is None:
        family = sock.family
    try:
        if family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack_from("!H", raw, 2)[0]
            addr: Address = (socket.inet_ntoa(raw[4:8]), port)
        elif family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            addr = (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port)
        else:
            return None
    except OSError:
        return None
    if listen_port is not None and addr[1] != listen_port:
        return addr
    local = sock.getsockname()
    if (addr[0], addr[1]) == (local[0], local[1]):
        return None
    return addr


def _sockaddr(raw: bytes, family: int) -> Address:
    """A ``sockaddr_in``/``sockaddr_in6`` as the kernel fills it: ``(host, port)``."""
    port = (raw[2] << 8) | raw[3]
    if family == socket.AF_INET:
        return socket.inet_ntoa(raw[4:8]), port
    return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port


class OriginalDst:
    """:func:`original_dst` of an accepted descriptor, with no socket object: ``getsockopt``
    and ``getsockname`` straight from libc.

    A :class:`socket.socket` made for it costs a ``getsockname`` (CPython checks the
    descriptor), and a connection that was not redirected raises an ``OSError`` (``ENOENT``)
    from ``getsockopt``; together about 2.9 us per accepted connection against 1.0 here
    (a microbenchmark on this machine).
    One per listener, used on the event loop's thread only (it reuses its buffers)."""

    __slots__ = ("_buf", "_getsockname", "_getsockopt", "_len", "_plen")

    def __init__(self) -> None:
        # keeps the GIL (both calls return at once); no ``argtypes``: ctypes passes Python ints
        # as C ints and the buffers as pointers by default, a third cheaper than declared types
        libc = ctypes.PyDLL(None)
        self._getsockopt: Any = libc.getsockopt
        self._getsockname: Any = libc.getsockname
        self._buf: Any = ctypes.create_string_buffer(28)  # a sockaddr_in6
        self._len: Any = ctypes.c_uint32()
        self._plen: Any = ctypes.byref(self._len)

    def read(self, fd: int, family: int, listen_port: int) -> Address | None:
        """The pre-REDIRECT destination of accepted descriptor ``fd`` (a socket of
        ``family``, accepted on ``listen_port``), or None when it was not redirected."""
        if family == socket.AF_INET:
            level, size = socket.SOL_IP, 16
        elif family == socket.AF_INET6:
            level, size = socket.IPPROTO_IPV6, 28
        else:
            return None
        self._len.value = size
        if self._getsockopt(fd, level, SO_ORIGINAL_DST, self._buf, self._plen) != 0:
            return None  # not redirected (no NAT entry), or not a socket of ours
        addr = _sockaddr(self._buf.raw, family)
        if addr[1] != listen_port:
            return addr
        # the redirect may have kept the port: the listener's own address means "not redirected"
        self._len.value = 28
        if self._getsockname(fd, self._buf, self._plen) != 0:
            return None
        return None if _sockaddr(self._buf.raw, family) == addr else addr


class AcceptLoop:
    """A listening socket whose connections are accepted in batches of up to
    :data:`ACCEPT_BATCH` per wakeup and handed to ``adopt``."""

    def __init__(
        self,
        host: str,
        port: int,
        adopt: Callable[[int, Any], None],
        *,
        backlog: int = 1024,
    ) -> None:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.sockets = [sock]
        self._adopt = adopt
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._loop.add_reader(sock.fileno(), self._ready)

    def _ready(self) -> None:
        accept = self.sock._accept  # type: ignore[attr-defined]
        for _ in range(ACCEPT_BATCH):
            try:
                fd, addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("accept: %s; pausing %.1f s", exc, ACCEPT_PAUSE)
                    self._loop.remove_reader(self.sock.fileno())
                    self._loop.call_later(ACCEPT_PAUSE, self._resume)
                # ECONNABORTED and the like: that connection is gone; the others wait
                return
            try:
                self._adopt(fd, addr)  # owns ``fd`` from here, closing it if it fails
            except Exception:
                log.exception("error accepting a connection from %s", addr)

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self.sock.fileno(), self._ready)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


class AcceptedFd:
    """An accepted socket as uvloop's ``connect_accepted_socket`` reads it: its descriptor,
    family and type as plain integers.

    A :class:`socket.socket` there costs a ``getsockname`` to create, and its ``family`` and
    ``type`` are Python properties that convert to enums, read three times per connection.
    uvloop owns the descriptor once the transport is open and, for a file object that is not a
    socket, only calls its ``close`` when the transport closes (a no-op here: libuv closed the
    descriptor already)."""

    __slots__ = ("family", "fd", "type")

    def __init__(self, fd: int, family: int) -> None:
        self.fd = fd
        self.family = family
        self.type = SOCK_STREAM

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        pass


class _Finish:
    """Steps an accepted socket's ``connect_accepted_socket`` to its end once its waiter is done
    (a bound method of this class costs less than a closure and a ``contextlib.suppress``)."""

    __slots__ = ("coro",)

    def __init__(self, coro: Any) -> None:
        self.coro = coro

    def done(self, _: object) -> None:
        coro, self.coro = self.coro, None
        try:
            coro.send(None)
        except Exception:  # StopIteration, its normal end; an error went to the protocol
            return


def attach(
    loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol, fd: int, family: int
) -> None:
    """Give an accepted socket (``fd``, a detached one's descriptor, of address ``family``) a
    transport and ``protocol``, with no task: the loop's ``connect_accepted_socket`` sets both
    up before its only await (for the protocol's ``connection_made``), so it is stepped by hand
    and finished by a callback."""
    sock: Any = AcceptedFd(fd, family)  # what uvloop reads of a socket (see AcceptedFd)
    coro = loop.connect_accepted_socket(_protocol_factory(protocol), sock)
    try:
        waiter = coro.send(None)
    except StopIteration:
        return
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    waiter.add_done_callback(_Finish(coro).done)


def _protocol_factory(protocol: asyncio.Protocol) -> Callable[[], asyncio.Protocol]:
    return lambda: protocol


class ConnCounts:
    """What a listener counts of its client connections, compiled (it runs at every open and
    close): those open per concrete (``users``) and when each concrete was last used (an unused
    one is evicted after a while), and the closes since memory was last given back: at
    :data:`TRIM_AFTER_CLOSES`, ``on_burst`` is called once (the listener schedules a trim, then
    calls :meth:`trimmed`)."""

    __slots__ = ("closes", "last_used", "on_burst", "trim_pending", "users")

    def __init__(self, on_burst: Callable[[], None]) -> None:
        self.users: dict[str, int] = {}
        self.last_used: dict[str, float] = {}
        self.closes = 0
        self.trim_pending = False
        self.on_burst = on_burst

    def acquire(self, name: str) -> None:
        self.users[name] = self.users.get(name, 0) + 1

    def connection_closed(self, name: str, series: TcpSeries | None) -> None:
        """An HTTP client connection to ``name`` ended: its ``peer="src"`` series closes and
        it stops counting (the same end for HTTP/1 and HTTP/2)."""
        if series is not None:
            series.closed()
        self.release(name)

    def release(self, name: str) -> None:
        self.users[name] = self.users.get(name, 1) - 1
        self.last_used[name] = time.monotonic()
        self.closed_one()

    def closed_one(self) -> None:
        """A client connection closed."""
        self.closes += 1
        if self.closes >= TRIM_AFTER_CLOSES and not self.trim_pending:
            self.trim_pending = True
            self.on_burst()

    def trimmed(self) -> None:
        self.closes = 0
        self.trim_pending = False


class Deadlines:
    """The detection deadlines of one listener's undecided connections, in accept order (every
    connection gets the same timeout), behind one timer instead of one per connection."""

    __slots__ = ("entries", "timer")

    def __init__(self) -> None:
        self.entries: dict[Accept, None] = {}
        self.timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, acc: Accept, deadline: float) -> None:
        self.entries[acc] = None
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_at(deadline, self._fire)

    def discard(self, acc: Accept) -> None:
        self.entries.pop(acc, None)

    def _fire(self) -> None:
        self.timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        entries = self.entries
        expired: list[tuple[Accept, float]] = []
        later: float | None = None
        for acc in entries:
            det = acc.det
            deadline = det.deadline if det is not None else now
            # timers may fire a hair early (the loop's clock resolution)
            if deadline > now + 0.001:
                later = deadline
                break
            expired.append((acc, deadline))
        for acc, deadline in expired:
            entries.pop(acc, None)
            acc.check(max(now, deadline))
        if later is not None:
            self.timer = loop.call_at(later, self._fire)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
