"""The demo's gRPC service, ``ratings.Ratings``: book ratings over all four kinds of gRPC call.

``python -m weft.demo.ratings`` serves it with grpcio on h2c (an insecure port, as an unmeshed app
would; the mesh adds mutual TLS between the sidecars). Any stock gRPC client that knows the .proto
(:data:`PROTO`, below) can call it; :class:`RatingsStub` is the client here.

- ``GetRating`` (unary): the book's summary (ratings count, their stars' total, the pod that
  answered); ``NOT_FOUND`` for a book other than 1-4 (the books of :mod:`weft.demo.backend`).
- ``WatchRatings`` (server streaming): the summary ``count`` times, one every ``interval_ms``
  (the first at once); ``count`` 0 watches until the caller cancels or its deadline ends (then
  ``interval_ms`` >= 10).
- ``RecordRatings`` (client streaming): records each rating (``stars`` 1-5, else
  ``INVALID_ARGUMENT``); answers the batch's summary: ``book_id`` 0, ``count``, ``stars_total``,
  ``size_bytes`` (the ratings' encoded size).
- ``Chat`` (bidirectional): records each rating as it comes and answers it with that book's
  summary.

The messages are encoded by a few lines of proto3 wire format here (varints and length-delimited
strings; unknown fields skipped, as protobuf does), so the demo needs grpcio but not protobuf.

Environment, as :mod:`weft.demo.backend`: ``PORT`` (50051); ``FAILURE_RATE`` (0-1, default 0):
that fraction of calls fails with ``UNAVAILABLE``, spread evenly (after N calls exactly
``floor(N * rate)`` have failed); ``LATENCY_MS`` (0): time each call waits before it answers.
Each call ends with one log line on stdout (``key=value``: method, status, book, the deadline the
server saw, elapsed time, request id from ``x-request-id``, peer, messages in and out), so the
mesh's tests can see what reached the server, deadlines and cancellations included.

Not for: a ratings store (each replica keeps its own counts in memory), nor protobuf in general.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar, Self, TypeVar

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]

from weft.demo.backend import FailureSchedule, parse_rate

PROTO = """\
syntax = "proto3";
package ratings;

service Ratings {
  rpc GetRating(RatingRequest) returns (Summary);          // unary: a book's ratings so far
  rpc WatchRatings(WatchRequest) returns (stream Summary); // server streaming
  rpc RecordRatings(stream Rating) returns (Summary);      // client streaming
  rpc Chat(stream Rating) returns (stream Summary);        // bidirectional
}

message RatingRequest { int32 book_id = 1; }
message WatchRequest { int32 book_id = 1; int32 count = 2; int32 interval_ms = 3; }
message Rating { int32 book_id = 1; int32 stars = 2; string review = 3; }
message Summary {
  int32 book_id = 1;
  int32 count = 2;        // ratings
  int32 stars_total = 3;  // their stars, summed
  string pod = 4;         // the replica that answered
  int64 size_bytes = 5;   // RecordRatings: the ratings' encoded size
}
"""
PACKAGE_SERVICE = "ratings.Ratings"
DEFAULT_PORT = 50051
BOOKS = (1, 2, 3, 4)
# what every replica knows at start: a few ratings per book
SEED_RATINGS = {1: (5, 5, 4), 2: (4, 5), 3: (5, 4, 4, 5), 4: (3, 5)}
MAX_INTERVAL_MS = 60_000
MIN_UNBOUNDED_INTERVAL_MS = 10
REQUEST_ID = "x-request-id"
T = TypeVar("T")
M = TypeVar("M", bound="Message")


# -- proto3 wire format ------------------------------------------------------------------------


class ProtoError(ValueError):
    """Bytes that are not a valid proto3 encoding of the message."""


INT32 = "int32"
INT64 = "int64"
STRING = "string"
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_RANGES = {INT32: (-(2**31), 2**31 - 1), INT64: (-(2**63), 2**63 - 1)}


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a message: its number, attribute name and proto3 type."""

    number: int
    name: str
    kind: str  # INT32, INT64 or STRING


def encode_varint(value: int) -> bytes:
    """``value`` (0 .. 2**64-1) as a base-128 varint."""
    if not 0 <= value < 2**64:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``data[pos:]`` (at most 10 bytes, kept to 64 bits) and the position after."""
    value = 0
    for i in range(10):
        if pos + i >= len(data):
            raise ProtoError(f"truncated varint at byte {pos}")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value & (2**64 - 1), pos + i + 1
    raise ProtoError(f"varint longer than 10 bytes at byte {pos}")


def _signed(value: int, kind: str) -> int:
    """A decoded varint as protobuf reads it into an int32 or int64 (two's complement)."""
    bits = 32 if kind == INT32 else 64
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


class Message:
    """A proto3 message: a frozen dataclass whose ``FIELDS`` name its fields' numbers and types.
    Default values (0, "") are not encoded, as proto3 does."""

    FIELDS: ClassVar[tuple[Field, ...]] = ()

    def encode(self) -> bytes:
        out = bytearray()
        for f in self.FIELDS:
            value = getattr(self, f.name)
            if f.kind == STRING:
                if not isinstance(value, str):
                    raise ValueError(f"{type(self).__name__}.{f.name} must be a string")
                if value:
                    raw = value.encode()
                    out += encode_varint(f.number << 3 | _LEN) + encode_varint(len(raw)) + raw
                continue
            low, high = _RANGES[f.kind]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{type(self).__name__}.{f.name} must be an {f.kind}: {value!r}")
            if value:
                out += encode_varint(f.number << 3 | _VARINT) + encode_varint(value % 2**64)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        by_number = {f.number: f for f in cls.FIELDS}
        values: dict[str, int | str] = {}
        pos = 0
        while pos < len(data):
            tag, pos = decode_varint(data, pos)
            number, wire = tag >> 3, tag & 7
            if number == 0:
                raise ProtoError(f"{cls.__name__}: field number 0 at byte {pos}")
            f = by_number.get(number)
            if wire == _VARINT:
                value, pos = decode_varint(data, pos)
                if f is not None:
                    if f.kind == STRING:
                        raise ProtoError(f"{cls.__name__}.{f.name}: a varint for a string")
                    values[f.name] = _signed(value, f.kind)
            elif wire == _LEN:
                length, pos = decode_varint(data, pos)
                if length > len(data) - pos:
                    raise ProtoError(f"{cls.__name__}: field {number} runs past the end")
                raw, pos = data[pos : pos + length], pos + length
                if f is not None:
                    if f.kind != STRING:
                        raise ProtoError(f"{cls.__name__}.{f.name}: bytes for an {f.kind}")
                    try:
                        values[f.name] = raw.decode()
                    except UnicodeDecodeError:
                        raise ProtoError(f"{cls.__name__}.{f.name}: invalid UTF-8") from None
            elif wire in (_I64, _I32) and f is None:
                pos += 8 if wire == _I64 else 4
                if pos > len(data):
                    raise ProtoError(f"{cls.__name__}: field {number} runs past the end")
            else:
                raise ProtoError(f"{cls.__name__}: field {number} has wire type {wire}")
        return cls(**values)


@dataclass(frozen=True, slots=True)
class RatingRequest(Message):
    FIELDS = (Field(1, "book_id", INT32),)
    book_id: int = 0


@dataclass(frozen=True, slots=True)
class WatchRequest(Message):
    FIELDS = (Field(1, "book_id", INT32), Field(2, "count", INT32), Field(3, "interval_ms", INT32))
    book_id: int = 0
    count: int = 0
    interval_ms: int = 0


@dataclass(frozen=True, slots=True)
class Rating(Message):
    FIELDS = (Field(1, "book_id", INT32), Field(2, "stars", INT32), Field(3, "review", STRING))
    book_id: int = 0
    stars: int = 0
    review: str = ""


@dataclass(frozen=True, slots=True)
class Summary(Message):
    FIELDS = (
        Field(1, "book_id", INT32),
        Field(2, "count", INT32),
        Field(3, "stars_total", INT32),
        Field(4, "pod", STRING),
        Field(5, "size_bytes", INT64),
    )
    book_id: int = 0
    count: int = 0
    stars_total: int = 0
    pod: str = ""
    size_bytes: int = 0


MESSAGES: tuple[type[Message], ...] = (RatingRequest, WatchRequest, Rating, Summary)


def _encode(message: Message) -> bytes:
    return message.encode()


# -- the client side -----------------------------------------------------------------------------


class RatingsStub:
    """Client methods on a grpcio channel (sync or ``grpc.aio``), as generated code would make."""

    def __init__(self, channel: Any) -> None:
        def path(method: str) -> str:
            return f"/{PACKAGE_SERVICE}/{method}"

        self.GetRating = channel.unary_unary(
            path("GetRating"), request_serializer=_encode, response_deserializer=Summary.decode
        )
        self.WatchRatings = channel.unary_stream(
            path("WatchRatings"), request_serializer=_encode, response_deserializer=Summary.decode
        )
        self.RecordRatings = channel.stream_unary(
            path("RecordRatings"), request_serializer=_encode, response_deserializer=Summary.decode
        )
        self.Chat = channel.stream_stream(
            path("Chat"), request_serializer=_encode, response_deserializer=Summary.decode
        )


def iter_ratings(count: int, review_size: int) -> Iterator[Rating]:
    """``count`` ratings with ``review_size``-character reviews (a client's upload), books and
    stars cycling through the known ones."""
    review = "r" * review_size
    for i in range(count):
        yield Rating(book_id=BOOKS[i % len(BOOKS)], stars=i % 5 + 1, review=review)


# -- the server side -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """The server's environment, validated."""

    port: int = DEFAULT_PORT
    failure_rate: Fraction = Fraction(0)
    latency: float = 0.0  # seconds
    pod: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        try:
            port = int(env.get("PORT", str(DEFAULT_PORT)))
        except ValueError:
            raise ValueError(f"PORT must be a port number, got {env['PORT']!r}") from None
        if not 0 < port < 65536:
            raise ValueError(f"PORT must be 1-65535, got {port}")
        try:
            latency_ms = float(env.get("LATENCY_MS", "0"))
        except ValueError:
            raise ValueError(f"LATENCY_MS must be a number, got {env['LATENCY_MS']!r}") from None
        if not 0 <= latency_ms <= MAX_INTERVAL_MS:
            raise ValueError(
                f"LATENCY_MS must be within [0, {MAX_INTERVAL_MS}], got {latency_ms:g}"
            )
        return cls(
            port=port,
            failure_rate=parse_rate(env.get("FAILURE_RATE", "0")),
            latency=latency_ms / 1000.0,
            pod=env.get("WEFT_POD_NAME") or env.get("HOSTNAME", ""),
        )


class _Aborted(Exception):
    """The call ends with ``code`` and ``details`` (grpcio's abort, once the call is logged)."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Call:
    """One call as the server handles it: its deadline, messages, and the log line at its end."""

    def __init__(self, method: str, context: Any) -> None:
        self.method = method
        self.context = context
        self.book: int | None = None  # once the request is decoded
        self.started = time.monotonic()
        self.deadline: float | None = context.time_remaining()
        metadata = dict(context.invocation_metadata() or ())
        self.request_id = str(metadata.get(REQUEST_ID) or "-").replace(" ", "_")
        self.received = 0
        self.sent = 0

    def line(self, status: str) -> str:
        deadline = "-" if self.deadline is None else f"{self.deadline * 1000:.0f}"
        elapsed = (time.monotonic() - self.started) * 1000
        book = "-" if self.book is None else str(self.book)
        return (
            f"grpc method={self.method} status={status} book={book} deadline_ms={deadline} "
            f"elapsed_ms={elapsed:.1f} request_id={self.request_id} peer={self.context.peer()} "
            f"in={self.received} out={self.sent}"
        )


class RatingsService:
    """The ``ratings.Ratings`` handlers (grpcio asyncio server), one replica's ratings."""

    def __init__(
        self,
        *,
        pod: str = "",
        failure_rate: Fraction = Fraction(0),
        latency: float = 0.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.pod = pod
        self.schedule = FailureSchedule(failure_rate)
        self.latency = latency
        self.log = log if log is not None else _print
        # book -> [ratings count, stars total]
        self.ratings = {book: [len(stars), sum(stars)] for book, stars in SEED_RATINGS.items()}

    def handler(self) -> Any:
        """The generic handler to add to a ``grpc.aio`` server. Requests reach the handlers as
        bytes: one that does not decode is answered ``INVALID_ARGUMENT`` (and logged) like any
        other bad request, where a failing grpcio deserializer would be ``UNKNOWN``."""
        methods = {
            "GetRating": grpc.unary_unary_rpc_method_handler(
                self.get_rating, response_serializer=_encode
            ),
            "WatchRatings": grpc.unary_stream_rpc_method_handler(
                self.watch_ratings, response_serializer=_encode
            ),
            "RecordRatings": grpc.stream_unary_rpc_method_handler(
                self.record_ratings, response_serializer=_encode
            ),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat, response_serializer=_encode),
        }
        return grpc.method_handlers_generic_handler(PACKAGE_SERVICE, methods)

    # -- the calls -----------------------------------------------------------------------------

    async def get_rating(self, raw: bytes, context: Any) -> Summary:
        async def body(call: _Call) -> Summary:
            request = _decode(RatingRequest, raw)
            call.book, call.received = request.book_id, 1
            summary = self._summary(request.book_id)
            call.sent = 1
            return summary

        return await self._run(_Call("GetRating", context), body)

    async def watch_ratings(self, raw: bytes, context: Any) -> None:
        async def body(call: _Call) -> None:
            request = _decode(WatchRequest, raw)
            call.book, call.received = request.book_id, 1
            if request.count < 0:
                raise _Aborted(grpc.StatusCode.INVALID_ARGUMENT, "count must be >= 0")
            low = MIN_UNBOUNDED_INTERVAL_MS if request.count == 0 else 0
            if not low <= request.interval_ms <= MAX_INTERVAL_MS:
                unbounded = " for an unbounded watch (count 0)" if low else ""
                raise _Aborted(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"interval_ms must be within [{low}, {MAX_INTERVAL_MS}]{unbounded}",
                )
            while request.count == 0 or call.sent < request.count:
                if call.sent:
                    await asyncio.sleep(request.interval_ms / 1000.0)
                await context.write(self._summary(request.book_id))
                call.sent += 1

        await self._run(_Call("WatchRatings", context), body)

    async def record_ratings(self, requests: AsyncIterator[bytes], context: Any) -> Summary:
        async def body(call: _Call) -> Summary:
            count = stars = size = 0
            async for raw in requests:
                call.received += 1
                rating = _decode(Rating, raw)
                self._record(rating)
                count, stars, size = count + 1, stars + rating.stars, size + len(raw)
            call.sent = 1
            return Summary(count=count, stars_total=stars, pod=self.pod, size_bytes=size)

        return await self._run(_Call("RecordRatings", context), body)

    async def chat(self, requests: AsyncIterator[bytes], context: Any) -> None:
        async def body(call: _Call) -> None:
            async for raw in requests:
                call.received += 1
                rating = _decode(Rating, raw)
                self._record(rating)
                await context.write(self._summary(rating.book_id))
                call.sent += 1

        await self._run(_Call("Chat", context), body)

    # -- helpers -------------------------------------------------------------------------------

    def _summary(self, book: int) -> Summary:
        counts = self.ratings.get(book)
        if counts is None:
            raise _Aborted(grpc.StatusCode.NOT_FOUND, f"no book {book}")
        return Summary(book_id=book, count=counts[0], stars_total=counts[1], pod=self.pod)

    def _record(self, rating: Rating) -> None:
        counts = self.ratings.get(rating.book_id)
        if counts is None:
            raise _Aborted(grpc.StatusCode.NOT_FOUND, f"no book {rating.book_id}")
        if not 1 <= rating.stars <= 5:
            raise _Aborted(grpc.StatusCode.INVALID_ARGUMENT, f"stars must be 1-5: {rating.stars}")
        counts[0] += 1
        counts[1] += rating.stars

    async def _run(self, call: _Call, body: Callable[[_Call], Awaitable[T]]) -> T:
        """Runs one call: the failure schedule and latency first, then ``body``; logs how the
        call ended and turns :class:`_Aborted` into its status."""
        status = "OK"
        try:
            _, fail = self.schedule.next()
            if self.latency:
                await asyncio.sleep(self.latency)
            if fail:
                raise _Aborted(grpc.StatusCode.UNAVAILABLE, "injected failure (FAILURE_RATE)")
            return await body(call)
        except _Aborted as exc:
            status = exc.code.name
            await call.context.abort(exc.code, exc.details)  # raises: the call ends here
            raise
        except asyncio.CancelledError:
            remaining = call.context.time_remaining()
            status = (
                "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            )
            raise
        except Exception as exc:
            status = f"UNKNOWN:{type(exc).__name__}"
            raise
        finally:
            self.log(call.line(status))


def _decode(cls: type[M], raw: bytes) -> M:
    try:
        return cls.decode(raw)
    except ProtoError as exc:
        raise _Aborted(grpc.StatusCode.INVALID_ARGUMENT, f"undecodable request: {exc}") from None


def _print(line: str) -> None:
    print(line, flush=True)


async def start(service: RatingsService, address: str) -> tuple[Any, int]:
    """A started ``grpc.aio`` server for ``service`` on ``address`` (h2c); and its port."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((service.handler(),))
    try:
        port: int = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio's "Failed to bind to address ..."
        raise OSError(f"cannot listen on {address}: {exc}") from None
    await server.start()
    return server, port


async def serve(settings: Settings, *, grace: float = 10.0) -> None:
    """Serve on ``0.0.0.0:PORT`` until SIGTERM/SIGINT, then let calls finish for ``grace`` s."""
    service = RatingsService(
        pod=settings.pod, failure_rate=settings.failure_rate, latency=settings.latency
    )
    server, port = await start(service, f"0.0.0.0:{settings.port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"ratings: serving {PACKAGE_SERVICE} on 0.0.0.0:{port} (h2c)", flush=True)
    await stop.wait()
    print("ratings: stopping: finishing calls in progress", flush=True)
    await server.stop(grace)
    print("ratings: stopped", flush=True)


def main(env: Mapping[str, str] | None = None) -> int:
    try:
        settings = Settings.from_env(os.environ if env is None else env)
    except ValueError as exc:
        print(f"ratings: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(settings))
    except OSError as exc:
        print(f"ratings: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
