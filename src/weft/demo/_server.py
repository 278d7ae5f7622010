"""A small threaded HTTP/1.1 server for the demo apps, with a graceful SIGTERM.

On SIGTERM (as a pod's container gets when it is removed) the server stops accepting, closes
idle keep-alive connections, lets requests in progress finish (their connections close after the
response), waits up to ``grace`` seconds, and exits 0. Requests are not in flight at that point in
a rolling update: the pod left discovery before it was signalled.

Not for: production serving; it is the demo's stand-in for "some app".
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Handler = Callable[["Request"], tuple[int, Any]]


class Request:
    """What a demo handler sees of a request."""

    __slots__ = ("headers", "path", "peer")

    def __init__(self, path: str, peer: str, headers: dict[str, str]) -> None:
        self.path = path
        self.peer = peer
        self.headers = headers


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: Handler) -> None:
        super().__init__(address, _RequestHandler)
        self.app = handler
        self.draining = False
        self.lock = threading.Lock()
        self.idle: set[socket.socket] = set()
        self.active = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.active += 1
            self.idle.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.idle.discard(request)
            self.active -= 1
        super().shutdown_request(request)

    def drain(self) -> None:
        with self.lock:
            self.draining = True
            idle = list(self.idle)
        for conn in idle:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def parse_request(self) -> bool:
        with self.server.lock:
            self.server.idle.discard(self.connection)
        return super().parse_request()

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)  # a body is read and ignored: every method answers alike
        request = Request(
            self.path, self.client_address[0], {k.lower(): v for k, v in self.headers.items()}
        )
        try:
            status, body = self.server.app(request)
        except Exception as exc:  # the demo answers 500 instead of dropping the connection
            status, body = 500, {"error": f"{type(exc).__name__}: {exc}"}
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.server.draining:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        with self.server.lock:
            if not self.close_connection:
                self.server.idle.add(self.connection)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        # one line per request on stdout: the container log
        sys.stdout.write(f"{self.address_string()} {format % args}\n")
        sys.stdout.flush()


def serve(handler: Handler, *, port: int | None = None, grace: float = 25.0) -> int:
    """Serve ``handler`` on ``0.0.0.0:$PORT`` (default 8080) until SIGTERM/SIGINT."""
    port = port if port is not None else int(os.environ.get("PORT", "8080"))
    server = _Server(("0.0.0.0", port), handler)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.start()
    print(f"listening on 0.0.0.0:{port}", flush=True)
    stop.wait()
    print("stopping: finishing requests in progress", flush=True)
    server.shutdown()
    thread.join()
    server.drain()
    deadline = time.monotonic() + grace
    while server.active and time.monotonic() < deadline:
        time.sleep(0.05)
        server.drain()
    server.server_close()
    print("stopped", flush=True)
    return 0
