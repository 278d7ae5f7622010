"""One HTTP/2 request over prior-knowledge h2c, blocking: the readiness check of the HTTP/2 and
gRPC cases (an h2 request through the case must reach the backend and come back whole).

:func:`request` opens a connection to 127.0.0.1, sends one request (optionally with a body) on
stream 1 and reads the response -- status, headers, body and trailers -- until the stream ends.
Every socket operation has a timeout and the body it keeps is bounded; a reset stream, a GOAWAY
or a protocol error raises :class:`ConnectionError` (an ``OSError``, which readiness polling
treats as "not yet").

Not for: load (h2load does that) or anything beyond one small request.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from bench.processes import LOOPBACK

MAX_BODY = 64 * 1024

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP/2 response: header names are lower-case as HTTP/2 sends them."""

    status: int
    headers: Headers
    body: bytes
    trailers: Headers

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def trailer(self, name: str) -> str | None:
        return next((v for k, v in self.trailers if k == name), None)


def _decoded(headers: Sequence[tuple[bytes | str, bytes | str]]) -> Headers:
    return tuple(
        (k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
        for k, v in headers
    )


def request(
    port: int,
    path: str = "/",
    *,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: float = 2.0,
) -> Response:
    """One request to ``http://127.0.0.1:<port><path>`` over h2c; the whole response."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    deadline = time.monotonic() + timeout
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        head = [
            (":method", method),
            (":scheme", "http"),
            (":authority", f"{LOOPBACK}:{port}"),
            (":path", path),
            *headers,
        ]
        conn.send_headers(stream, head, end_stream=not body)
        if body:
            conn.send_data(stream, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        status: int | None = None
        got: Headers = ()
        trailers: Headers = ()
        data = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete response within {timeout:g} s")
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the response ended")
            try:
                events = conn.receive_data(chunk)
            except h2.exceptions.ProtocolError as e:
                raise ConnectionError(f"HTTP/2 protocol error: {e}") from e
            for event in events:
                if isinstance(event, h2.events.ResponseReceived):
                    got = _decoded(event.headers)
                    status_text = dict(got).get(":status", "")
                    if not status_text.isdigit():
                        raise ConnectionError(f"bad :status {status_text!r}")
                    status = int(status_text)
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    if len(data) > MAX_BODY:
                        raise ConnectionError(f"response body over {MAX_BODY} bytes")
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = _decoded(event.headers)
                elif isinstance(event, h2.events.StreamReset):
                    raise ConnectionError(f"stream reset (error code {event.error_code})")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise ConnectionError(f"GOAWAY (error code {event.error_code})")
                elif isinstance(event, h2.events.StreamEnded):
                    if status is None:
                        raise ConnectionError("stream ended without a response")
                    return Response(status, got, bytes(data), trailers)
            sock.sendall(conn.data_to_send())
