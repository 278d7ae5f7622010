"""Large-body transfers through a case, with the measured processes' memory sampled throughout.

:func:`upload` POSTs ``n`` bytes (``Content-Length``, written in 256 KiB slices of one reused
buffer: the client holds no body in memory) to the backend's ``/upload``, which answers only once
it has read all of it. :func:`download` GETs the backend's ``/large`` and reads it into one reused
buffer, counting bytes. Both run in a worker thread while :func:`sampled` polls the summed
``VmRSS`` of the measured processes' trees (both proxies of a meshed pair) every 2 ms; the result
is the peak over the transfer against the value just before it.

The client is a plain blocking socket on 127.0.0.1 with a timeout on every operation; it handles
``Content-Length``, chunked and close-delimited response bodies.

Not for: HTTP correctness testing; only the status, the byte count and memory matter here.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence

from bench import procfs
from bench.model import Transfer
from bench.processes import LOOPBACK

SLICE = 256 * 1024
IO_TIMEOUT_S = 30.0


class _Response:
    """Reads one HTTP/1.1 response from a socket, discarding the body but counting it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray(SLICE)
        self.pending = b""  # bytes read past the part already consumed

    def _recv(self) -> bytes:
        n = self.sock.recv_into(self.buf)
        if n == 0:
            raise ConnectionError("connection closed before the response was complete")
        return bytes(self.buf[:n])

    def _line(self) -> bytes:
        while b"\r\n" not in self.pending:
            if len(self.pending) > 64 * 1024:
                raise ValueError("response line or header over 64 KiB")
            self.pending += self._recv()
        line, _, self.pending = self.pending.partition(b"\r\n")
        return line

    def read(self) -> tuple[int, int]:
        """Return (status, body bytes)."""
        status_line = self._line()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP/1 status line: {status_line[:80]!r}")
        status = int(parts[1])
        headers: dict[bytes, bytes] = {}
        while line := self._line():
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            return status, self._chunked()
        if b"content-length" in headers:
            return status, self._exactly(int(headers[b"content-length"]))
        return status, self._until_close()

    def _exactly(self, n: int) -> int:
        got = min(n, len(self.pending))
        self.pending = self.pending[got:]
        view = memoryview(self.buf)
        while got < n:
            k = self.sock.recv_into(view, min(SLICE, n - got))
            if k == 0:
                raise ConnectionError(f"connection closed after {got} of {n} body bytes")
            got += k
        return got

    def _chunked(self) -> int:
        total = 0
        while True:
            size = int(self._line().split(b";")[0], 16)
            if size == 0:
                while self._line():  # trailers
                    pass
                return total
            total += self._exactly(size)
            if self._line() != b"":
                raise ValueError("chunk not followed by CRLF")

    def _until_close(self) -> int:
        got = len(self.pending)
        self.pending = b""
        while k := self.sock.recv_into(self.buf):
            got += k
        return got


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=IO_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def upload(port: int, n: int) -> tuple[int, int]:
    """POST ``n`` zero bytes to ``/upload``; return (status, request body bytes sent)."""
    with _connect(port) as sock:
        head = (
            f"POST /upload HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
        )
        sock.sendall(head.encode())
        chunk = memoryview(bytes(SLICE))
        sent = 0
        while sent < n:
            part = chunk[: min(SLICE, n - sent)]
            sock.sendall(part)
            sent += len(part)
        status, _ = _Response(sock).read()
        return status, sent


def download(port: int, n: int) -> tuple[int, int]:
    """GET ``/large`` (``n`` bytes expected); return (status, response body bytes read)."""
    with _connect(port) as sock:
        sock.sendall(f"GET /large HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n\r\n".encode())
        return _Response(sock).read()


def sampled(
    direction: str, roots: Sequence[int], port: int, n: int, timeout_s: float = 300.0
) -> Transfer:
    """Run one transfer in a thread while sampling the RSS of the measured processes' trees."""
    transfers: dict[str, Callable[[int, int], tuple[int, int]]] = {
        "upload": upload,
        "download": download,
    }
    if direction not in transfers:
        raise ValueError(f"direction: expected 'upload' or 'download', got {direction!r}")
    fn = transfers[direction]
    pids = procfs.tree(roots)
    before = procfs.rss_kib(pids, roots)
    result: list[tuple[int, int]] = []
    errors: list[str] = []

    def work() -> None:
        try:
            result.append(fn(port, n))
        except (OSError, ValueError) as e:
            errors.append(f"{type(e).__name__}: {e}")

    worker = threading.Thread(target=work, name=f"bench-{direction}", daemon=True)
    start = time.monotonic()
    worker.start()
    peak, samples = before, 0
    deadline = start + timeout_s
    while worker.is_alive() and time.monotonic() < deadline:
        peak = max(peak, procfs.rss_kib(pids, roots))
        samples += 1
        worker.join(0.002)
    seconds = time.monotonic() - start
    peak = max(peak, procfs.rss_kib(pids, roots))
    if worker.is_alive():
        # Sockets carry IO_TIMEOUT_S, so the daemon thread ends on its own soon after.
        return Transfer(direction, n, 0, None, seconds, before, peak, samples, "timed out")
    if errors:
        return Transfer(direction, n, 0, None, seconds, before, peak, samples, errors[0])
    status, done = result[0]
    return Transfer(direction, n, done, status, seconds, before, peak, samples)
