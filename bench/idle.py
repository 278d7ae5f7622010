"""Many idle client connections to one listener on loopback, opened from this process.

:class:`IdleClients` opens ``n`` TCP connections to ``127.0.0.1:<port>`` with at most
``in_flight`` connects (or requests) under way at once, so neither the listener's accept queue
nor the case's upstream side sees more than that at a time; then they sit idle until
:meth:`IdleClients.close`. ``request=False``: they never send a byte. ``request=True``: each
sends one ``GET /`` and reads the whole answer (it must be ``200``), then stays open as an idle
keep-alive connection. :meth:`IdleClients.wait` sleeps while noticing connections the server
closes.

The connections leave from several source addresses of 127.0.0.0/8 (:data:`SOURCES`) with
``IP_BIND_ADDRESS_NO_PORT``, so the kernel picks each local port for the whole 4-tuple at
connect time: tens of thousands of connections fit in the ephemeral port range even with the
TIME_WAIT entries an earlier churn phase left behind. The caller must have raised
``RLIMIT_NOFILE`` above ``n`` (:func:`bench.conn.raise_limits`).

:func:`response_end` (pure) tells whether a buffer holds a whole HTTP/1.1 response and its status.

Not for: load (the connections send at most one request), or anything off loopback.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from dataclasses import dataclass, field

from bench.processes import LOOPBACK

SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
# Linux's IP_BIND_ADDRESS_NO_PORT (include/uapi/linux/in.h); Python names it only from 3.12
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
MAX_HEAD = 16384


def response_end(buf: bytes) -> tuple[int, int] | None:
    """``(status, length)`` once ``buf`` starts with a whole HTTP/1.1 response (head and a body
    framed by ``Content-Length`` or chunked), ``None`` while more is needed. Raises
    ``ValueError`` on something that is not such a response."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buf) > MAX_HEAD:
            raise ValueError("response head over 16 KiB")
        return None
    lines = buf[:head_end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    body_start = head_end + 4
    if "chunked" in headers.get("transfer-encoding", "").lower():
        # the last chunk, "0" at the start of a line (the head and every chunk end in CRLF);
        # good enough for the benchmark's two-byte bodies, not a general chunk parser
        end = buf.find(b"\r\n0\r\n\r\n", body_start - 2)
        return None if end < 0 else (status, end + 7)
    if "content-length" in headers:
        length = int(headers["content-length"])
        return None if len(buf) < body_start + length else (status, body_start + length)
    if status in (204, 304) or 100 <= status < 200:
        return status, body_start
    raise ValueError("response without a length (would end at close)")


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    state: str = "connecting"  # connecting, answering (request sent), idle
    buf: bytes = b""


@dataclass(slots=True)
class IdleClients:
    """``n`` connections to ``port``; see the module's docstring."""

    port: int
    n: int
    request: bool
    in_flight: int = 256
    sources: tuple[str, ...] = SOURCES
    opened: int = 0
    failed: int = 0
    closed_by_server: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    _sel: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    _conns: list[_Conn] = field(default_factory=list)
    _busy: int = 0

    def open(self, timeout_s: float) -> float:
        """Open all the connections (each answered, with ``request``); return the seconds it
        took. Those not open when ``timeout_s`` has passed count as failed. ``opened`` counts
        the connections that got open (answered), ``failed`` the rest."""
        start = time.monotonic()
        deadline = start + timeout_s
        started = 0
        while (started < self.n or self._busy) and time.monotonic() < deadline:
            while started < self.n and self._busy < self.in_flight:
                self._connect(self.sources[started % len(self.sources)])
                started += 1
            self._poll(0.2)
        for c in self._conns:
            if c.state != "idle":
                self._fail(c, "timeout")
        self.failed += self.n - started
        return time.monotonic() - start

    @property
    def open_now(self) -> int:
        """Connections that were opened and the server has not closed."""
        return self.opened - self.closed_by_server

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` while counting the idle connections the server closes."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._poll(min(left, 0.5))

    def close(self) -> None:
        for c in self._conns:
            self._drop(c)
        self._conns.clear()
        self._sel.close()

    def _connect(self, source: str) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((source, 0))
            s.setblocking(False)
            err = s.connect_ex((LOOPBACK, self.port))
        except OSError as e:
            s.close()
            self._count(errno.errorcode.get(e.errno or 0, "oserror"))
            self.failed += 1
            return
        if err not in (0, errno.EINPROGRESS):
            s.close()
            self._count(errno.errorcode.get(err, str(err)))
            self.failed += 1
            return
        c = _Conn(s)
        self._conns.append(c)
        self._busy += 1
        self._sel.register(s, selectors.EVENT_WRITE, c)

    def _poll(self, timeout: float) -> None:
        for key, _ in self._sel.select(timeout):
            c: _Conn = key.data
            try:
                self._step(c)
            except (OSError, ValueError) as e:
                self._fail(c, type(e).__name__)

    def _step(self, c: _Conn) -> None:
        if c.state == "connecting":
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(c, errno.errorcode.get(err, str(err)))
                return
            if self.request:
                c.sock.send(REQUEST)  # 32 bytes into an empty socket buffer: all of it
                c.state = "answering"
            else:
                self._idle(c)
            self._sel.modify(c.sock, selectors.EVENT_READ, c)
            return
        data = c.sock.recv(65536)
        if c.state == "answering":
            if not data:
                self._fail(c, "closed before the answer")
                return
            c.buf += data
            end = response_end(c.buf)
            if end is None:
                return
            if end[0] != 200 or end[1] != len(c.buf):
                self._fail(c, f"status {end[0]}" if end[0] != 200 else "extra bytes")
                return
            c.buf = b""
            self._idle(c)
            return
        # idle: readable means the server closed (or sent what nobody asked for)
        self.closed_by_server += 1
        self._count("closed by server" if not data else "unexpected bytes")
        self._drop(c)

    def _idle(self, c: _Conn) -> None:
        c.state = "idle"
        self.opened += 1
        self._busy -= 1

    def _fail(self, c: _Conn, why: str) -> None:
        if c.state == "closed":
            return
        if c.state == "idle":  # e.g. reset by the server while idle
            self.closed_by_server += 1
            self._count(f"{why} while idle")
            self._drop(c)
            return
        self._count(why)
        self.failed += 1
        self._busy -= 1
        self._drop(c)

    def _drop(self, c: _Conn) -> None:
        if c.state == "closed":
            return
        c.state = "closed"
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(c.sock)
        c.sock.close()

    def _count(self, why: str) -> None:
        self.errors[why] = self.errors.get(why, 0) + 1
