"""HTTP/2 proxying, per stream: the client-facing server side and multiplexed upstream connections.

:class:`Http2Downstream` is the ``asyncio.Protocol`` of a client's HTTP/2 connection (prior
knowledge h2c, or h2 inside mesh TLS), driven by the proxy's own codec,
:class:`weft.core.h2conn.H2Conn` (the module says why not ``h2``).
Every stream is one request, a :class:`H2Stream`: it picks its own endpoint from the
:class:`~weft.proxy.outbound.concrete.Concrete` (so the calls of one long-lived gRPC connection
spread over every endpoint) and opens a stream on an :class:`Http2Upstream` to that endpoint: one
multiplexed connection per endpoint, dialed on demand, more when the server's
``MAX_CONCURRENT_STREAMS`` is reached (:class:`Http2Context` keeps these pools).

Callbacks only (no task per stream): the codec's callbacks (``h2_headers``, ``h2_data``...)
drive the streams; only dialing awaits, in the
Concrete's connect task. Frames produced while handling the reads of one turn of the event loop
and of its next poll are written with one ``write`` per connection
(:meth:`Http2Context.flush_soon`).

Flow control is the backpressure: DATA received on one side is acknowledged to its sender
(:meth:`~weft.core.h2conn.H2Conn.ack`, which reopens the stream's window) only once it was handed
to the other side, which happens only while that side's flow-control window is open and its
transport is not paused. So a stream whose reader is slow holds at most its stream window
(``STREAM_WINDOW``) in the proxy and stalls nobody else. The connection's window is reopened as
DATA arrives until the connection holds ``hold_limit`` (4 MiB) for its slow readers; then only
as they read: a connection holds at most that plus its window (8 MiB). An upstream connection
over its hold limit takes no new stream (:meth:`Http2Upstream.has_room`): new calls get another
connection instead of waiting behind stalled ones.

Fields a peer sent "never indexed" (RFC 7541 7.1.3) are sent on never indexed, in headers and
trailers both ways (``req_never``/``resp_never`` of a stream, from
:attr:`~weft.core.h2conn.H2Conn.never_indexed`). Trailers (``grpc-status``, ``grpc-message``)
pass through; RST_STREAM is carried both ways (a client's cancel resets the upstream stream, an
upstream reset resets the client's); long-lived streams are never cut (the idle timeout applies
only to a connection with no open stream); drain sends GOAWAY and closes each connection once
its streams finish.

Errors the proxy makes carry ``weft-proxy-error``: 503 no endpoint, 502 connect failure or
upstream lost before answering. For gRPC requests (``content-type: application/grpc...``) these
are HTTP 200 trailers-only answers with ``grpc-status: 14`` (UNAVAILABLE) and ``grpc-message``.
A malformed request is reset (RST_STREAM PROTOCOL_ERROR); malformed framing ends the client
connection with GOAWAY and the error's code.

Policy (the destination's :class:`~weft.policy.ServicePolicy`), per stream as HTTP/1 applies it:
the routes (HTTPRoutes and GRPCRoutes, whose method matches are path matches) pick a rule, whose
weighted backend is resolved through ``Http2Context.backend``; header filters and redirects
apply. Retries: a stream whose request was fully received with a body within ``REPLAY_LIMIT`` is
sent again, after a jittered backoff, on a fresh pick, while the retry limit and the destination's
retry budget (:mod:`weft.core.retry`) allow it, when its attempt fails before anything of the
response went to the client: a gRPC call that ends with a status the policy's ``grpc`` names
(trailers-only, or headers then trailers with no message: for such calls the proxy holds the
response headers until the first DATA or the trailers), a non-gRPC request with a retryable HTTP
status and an idempotent method, a connection error, or the per-attempt timeout. A stream the
server never processed (RST_STREAM REFUSED_STREAM, or above a GOAWAY's last stream id: RFC 9113
8.7) is sent again at once on another connection, whatever the method and the retry policy and
outside the retry budget, while its body fits ``REPLAY_LIMIT`` (kept for every stream until its
response starts), at most ``MAX_REFUSED_RETRIES`` times: then it is answered 502 (gRPC: 14
UNAVAILABLE) with ``weft-proxy-error: upstream-refused``. Timeouts: the
request timeout (``timeouts.request`` / ``response``, until the response headers go out), the
per-attempt timeout, and for gRPC the request's ``grpc-timeout``, which bounds the whole call (the
smaller wins; a retry forwards what is left of it). On expiry the proxy answers (trailers-only)
``grpc-status: 4`` DEADLINE_EXCEEDED with ``weft-proxy-error``, or, once the response has started,
ends it with those trailers; either way the upstream stream is reset. A malformed
``grpc-timeout`` is answered ``grpc-status: 13`` INTERNAL (as grpc-go does).

Metrics: per request through ``concrete.http_series`` as HTTP/1 does, recorded when the stream
ends (gRPC classification needs the trailers): failure when the status is 5xx, when the stream
was reset, or when ``grpc-status`` is non-zero; the latency is to the response headers. Per route
(``Service.route_series``): the effective series counts what the client saw, the actual series
every attempt.

Not for: choosing the destination (the caller hands a Concrete), TLS, HTTP/1.
"""

from weft.proxy.outbound.logical import ERROR_HEADER
from weft.proxy.protocol.http2.client import Http2Upstream
from weft.proxy.protocol.http2.context import Http2Context
from weft.proxy.protocol.http2.grpc import grpc_message
from weft.proxy.protocol.http2.server import Http2Downstream
from weft.proxy.protocol.http2.stream import H2Stream

__all__ = [
    "ERROR_HEADER",
    "H2Stream",
    "Http2Context",
    "Http2Downstream",
    "Http2Upstream",
    "grpc_message",
]
