"""Fuzzing the HTTP/1.1 proxy over real sockets: random and mutated request bytes.

One proxy (and one backend behind it) runs per test on a private event loop in a thread, and
hypothesis throws bytes at it from the test thread over blocking loopback sockets. The invariant,
for every input:

* the proxy answers with well-formed HTTP/1.1 responses, or closes, within a bound (never hangs);
* its own errors name a known reason in ``weft-proxy-error`` (never an internal error);
* nothing is logged at ERROR and no exception reaches the event loop (never crashes);
* a valid request on a new connection is served afterwards;
* every request the app receives through the HTTP path has framing no parser can read two ways:
  HTTP/1.1 with no Transfer-Encoding and at most one Content-Length value (the body's length),
  or exactly one ``transfer-encoding: chunked`` and no Content-Length (input that detection
  calls opaque is relayed as bytes, unparsed, and is not the proxy's to frame);
* when the test ends, no client connection is left open and every upstream connection the backend
  still sees is idle in the proxy's pool (nothing leaked).

Not for: specific error semantics (tests/integration/test_proxy_errors.py asserts those).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import httptools
import uvloop
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from weft.core.detect import Protocol, detect
from weft.metrics import ProxyMetrics
from weft.proxy.config import ProxyConfig
from weft.proxy.protocol.http1 import Http1Upstream
from weft.proxy.server import DETECT_MAX, ProxyServer
from weft.testing.servers import Backend, Request, Response

T = TypeVar("T")

HANG_BOUND = 5.0  # seconds for a loopback exchange to end; only reached when the proxy hangs
EXAMPLES = 150
FRAGMENT_PAUSE = 0.002  # seconds between pieces of a fragmented input

# reasons the proxy may give for a request it refuses; anything else (internal-error, an
# upstream error against a healthy backend) breaks the invariant
CLIENT_FAULTS = {
    "malformed-request": 400,
    "smuggling": 400,
    "bad-content-length": 400,
    "bad-transfer-encoding": 400,
    "bad-host": 400,
    "headers-too-large": 431,
    "header-timeout": 408,
    "connect-not-supported": 501,
    "transfer-coding-not-implemented": 501,
}


def _handler(req: Request) -> Response:
    return Response(body=f"{req.method} {req.path}".encode())


class FuzzTarget:
    """A backend and a proxy in front of it, on their own event loop in a daemon thread."""

    def __init__(self, **overrides: Any) -> None:
        self.overrides = overrides
        self.loop: asyncio.AbstractEventLoop | None = None
        self.backend: Backend | None = None
        self.proxy: ProxyServer | None = None
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.problems: list[str] = []
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-proxy", daemon=True)
        self._handler = _ProblemHandler(self.problems)
        self._seen = 0  # the backend's requests already checked

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> FuzzTarget:
        logging.getLogger("weft").addHandler(self._handler)
        self._thread.start()
        if not self._ready.wait(10.0) or self.proxy is None:
            raise RuntimeError(f"the fuzz proxy did not start: {self.problems}")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.loop is not None and self._stop is not None:
                self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10.0)
        finally:
            logging.getLogger("weft").removeHandler(self._handler)

    def _run(self) -> None:
        loop = uvloop.new_event_loop()
        self.loop = loop
        loop.set_exception_handler(self._on_loop_exception)
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        fields: dict[str, Any] = {
            "outbound": ("127.0.0.1", 0),
            "inbound": None,
            "admin": None,
            "shutdown_grace": 1.0,
            "max_header_bytes": 1024,
            "header_timeout": 2.0,
        }
        async with Backend(_handler) as backend:
            fields["outbound_target"] = backend.address
            fields.update(self.overrides)
            proxy = ProxyServer(ProxyConfig(**fields), metrics=ProxyMetrics(process=False))
            await proxy.start()
            self.backend, self.proxy = backend, proxy
            self.address = proxy.addresses["outbound"]
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await proxy.shutdown(grace=0.5)

    def _on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.problems.append(f"event loop: {context.get('message')}: {context.get('exception')!r}")

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine on the proxy's loop and wait for its result."""
        assert self.loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(fn(), self.loop)
        return future.result(HANG_BOUND * 2)

    # -- one example ----------------------------------------------------------------------------

    def check(self, data: bytes, fragments: list[bytes] | None = None) -> Outcome:
        """Send ``data`` (in ``fragments`` if given) and assert the invariant (module docstring)."""
        before = len(self.problems)
        pieces = fragments if fragments is not None else [data]
        outcome = exchange(self.address, pieces)
        assert not outcome.hung, f"no answer and no close within {HANG_BOUND}s"
        check_responses(outcome.received, data, outcome.reset)
        if data in BASES:  # a valid request is served however it is cut
            replies, complete = parse_responses(outcome.received)
            assert complete and not outcome.reset, outcome
            assert {r.status for r in replies} <= {100, 200}, replies
            assert all("weft-proxy-error" not in r.headers for r in replies), replies
        status, body = simple_get(self.address)
        assert (status, body) == (200, b"GET /still-serving"), "the proxy stopped serving"
        assert self.problems[before:] == []
        assert self.backend is not None
        received = self.backend.requests[self._seen :]  # appended on the proxy's thread
        self._seen += len(received)
        for req in received if detect(data, max_bytes=DETECT_MAX) is Protocol.HTTP1 else ():
            problem = ambiguous_framing(req)
            assert problem is None, f"the app received {problem}: {req}"
        return outcome

    def assert_nothing_leaked(self) -> None:
        async def leftovers() -> str:
            proxy, backend = self.proxy, self.backend
            assert proxy is not None and backend is not None
            listener = proxy.outbound
            deadline = time.monotonic() + HANG_BOUND
            while True:
                pooled = {
                    conn.transport.get_extra_info("sockname")[1]
                    for concrete in listener.concretes.values()
                    for state in concrete.endpoints.values()
                    for conn, _ in state.idle
                    if isinstance(conn, Http1Upstream)
                }
                # every upstream connection the backend still has must be idle in the pool
                stray = [
                    conn
                    for conn in backend.live
                    if conn.transport is not None
                    and conn.transport.get_extra_info("peername")[1] not in pooled
                ]
                clients = sorted(map(repr, listener.http.connections))
                if not (clients or listener.relays or listener.accepting or stray):
                    return ""
                if time.monotonic() >= deadline:
                    return (
                        f"client connections {clients}, relays {len(listener.relays)}, "
                        f"accepting {len(listener.accepting)}; upstream connections neither "
                        f"pooled nor closed: {len(stray)}"
                    )
                await asyncio.sleep(0.05)

        left = self.call(leftovers)
        assert not left, f"connections left behind: {left}"


class _ProblemHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(f"{record.name}: {record.getMessage()}")


# -- the client side (blocking sockets, test thread) --------------------------------------------


@dataclass
class Outcome:
    received: bytes
    reset: bool
    hung: bool


def exchange(address: tuple[str, int], pieces: list[bytes]) -> Outcome:
    """Send ``pieces`` (a short pause between them, so that they arrive as separate reads), then
    half-close and read until the proxy closes (or the bound passes)."""
    received = bytearray()
    reset = False
    with socket.create_connection(address, timeout=HANG_BOUND) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for i, piece in enumerate(pieces):
                if i:
                    time.sleep(FRAGMENT_PAUSE)
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the proxy refused and closed while we were still sending
            reset = True
        deadline = time.monotonic() + HANG_BOUND
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Outcome(bytes(received), reset, hung=True)
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return Outcome(bytes(received), reset, hung=True)
            except ConnectionResetError:
                return Outcome(bytes(received), True, hung=False)
            if not chunk:
                return Outcome(bytes(received), reset, hung=False)
            received += chunk


def simple_get(address: tuple[str, int]) -> tuple[int, bytes]:
    outcome = exchange(
        address, [b"GET /still-serving HTTP/1.1\r\nhost: fuzz\r\nconnection: close\r\n\r\n"]
    )
    replies, complete = parse_responses(outcome.received)
    assert complete and len(replies) == 1, outcome
    return replies[0].status, replies[0].body


@dataclass
class Parsed:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_responses(data: bytes) -> tuple[list[Parsed], bool]:
    """Responses in ``data`` and whether it ends on a message boundary; raises on bad syntax
    (including bytes after a response that said ``connection: close``)."""
    out: list[Parsed] = []
    current: dict[str, Any] = {}

    class Callbacks:
        def on_message_begin(self) -> None:
            current.clear()
            current.update(headers={}, body=b"", done=False)

        def on_header(self, name: bytes, value: bytes) -> None:
            current["headers"][name.decode("latin-1").lower()] = value.decode("latin-1")

        def on_body(self, chunk: bytes) -> None:
            current["body"] += chunk

        def on_message_complete(self) -> None:
            out.append(Parsed(parser.get_status_code(), current["headers"], current["body"]))
            current["done"] = True

    parser = httptools.HttpResponseParser(Callbacks())
    parser.feed_data(data)
    return out, not current or current["done"]


def check_responses(received: bytes, sent: bytes, reset: bool) -> None:
    if not received:
        return  # closed without a word: allowed
    assert received.startswith(b"HTTP/1.1 "), received[:80]
    if b"HEAD" in sent.upper():
        return  # a response to HEAD has no body: its framing cannot be checked without the method
    try:
        replies, complete = parse_responses(received)
    except httptools.HttpParserError as exc:
        raise AssertionError(f"malformed response stream ({exc}): {received[:300]!r}") from exc
    assert complete or reset, f"truncated response and a clean close: {received[-200:]!r}"
    for reply in replies:
        reason = reply.headers.get("weft-proxy-error")
        if reason is not None:
            assert CLIENT_FAULTS.get(reason) == reply.status, (reason, reply.status, reply.body)
            # the proxy's own refusals close the connection (the parser refuses anything after)
            assert reply.headers.get("connection") == "close", reply.headers


def ambiguous_framing(req: Request) -> str | None:
    """What in a request the app received lets two parsers disagree on where it ends, or None."""
    te = [v for k, v in req.headers if k.lower() == "transfer-encoding"]
    lengths = {v for k, v in req.headers if k.lower() == "content-length"}
    if req.version != "1.1":
        return f"an HTTP/{req.version} request"
    if te:
        return None if te == ["chunked"] and not lengths else f"Transfer-Encoding {te}, {lengths}"
    if len(lengths) > 1 or not all(v.strip(" ").isdigit() for v in lengths):
        return f"Content-Length {lengths}"
    if lengths and int(lengths.pop()) != len(req.body):
        return "a Content-Length other than its body's length"
    return None


class _RequestModel:
    """httptools callbacks that only track where in a message the input stops."""

    def __init__(self) -> None:
        self.in_body = False

    def on_headers_complete(self) -> None:
        self.in_body = True

    def on_message_complete(self) -> None:
        self.in_body = False


def ends_mid_body(data: bytes) -> bool:
    """True when ``data`` parses (as the proxy's parser sees it) and stops inside a body."""
    model = _RequestModel()
    try:
        httptools.HttpRequestParser(model).feed_data(data)
    except httptools.HttpParserUpgrade:
        return False
    except httptools.HttpParserError:
        return False
    return model.in_body


# -- inputs -------------------------------------------------------------------------------------

BASES: list[bytes] = [
    b"GET /a?q=1 HTTP/1.1\r\nhost: svc.ns\r\naccept: */*\r\nuser-agent: fuzz/1\r\n\r\n",
    b"POST /p HTTP/1.1\r\nhost: svc\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nhost: svc\r\n\r\n"
    b"GET /2 HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n",
    b"GET /old HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
    b"PUT /e HTTP/1.1\r\nhost: svc\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\nabc",
    b"GET /ws HTTP/1.1\r\nhost: svc\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    b"GET /big HTTP/1.1\r\nhost: svc\r\ncookie: " + b"c=" + b"v" * 300 + b"\r\n\r\n",
]

_FIELDS: dict[str, re.Pattern[bytes]] = {
    "request line": re.compile(rb"(?:^|\r\n\r\n)([A-Z]+) ([^ ]+) (HTTP/\d\.\d)\r\n"),
    "header name": re.compile(rb"\r\n([^:\r\n]+):"),
    "header value": re.compile(rb"\r\n[^:\r\n]+: ?([^\r\n]*)"),
    "chunk size": re.compile(rb"(?:\r\n\r\n|\r\n(?=[0-9a-f]+(?:;[^\r\n]*)?\r\n))([0-9a-f]+)"),
}


def _fields(data: bytes) -> dict[str, list[tuple[int, int]]]:
    """Byte spans of each kind of field in ``data`` (kinds with no span are left out)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for kind, pattern in _FIELDS.items():
        if kind == "chunk size" and b"transfer-encoding: chunked" not in data:
            continue
        spans = [m.span(g) for m in pattern.finditer(data) for g in range(1, pattern.groups + 1)]
        if spans:
            out[kind] = spans
    return out


FIELDS = [_fields(base) for base in BASES]

NASTY = [
    b"", b"0", b"1", b"9", b"10", b"ff", b"1000", b"-1", b"+5", b" 5", b"5 ", b"0x5", b"5, 5",
    b"99999999999999999999", b"ffffffffffffffffff", b"chunked", b"Chunked", b"chunked, chunked",
    b"gzip", b"identity", b"content-length", b"transfer-encoding", b"host", b"HTTP/1.1",
    b"HTTP/2.0", b"HTTP/1.", b"CONNECT", b"\x00", b"\t", b"\r", b"\n", b"\r\n", b"\r\n\r\n", b" ",
    b":", b";", b"\xff", b"HTTP/1.0", b"identity, chunked", b"gzip, chunked", b", chunked",
    b"chunked\t", b"chunked;x=1", b"identity\r\ntransfer-encoding: chunked",
    b"chunked\r\ntransfer-encoding: identity",
]  # fmt: skip


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """A valid request with a targeted field replaced and/or a few bytes flipped or spliced."""
    index = draw(st.integers(0, len(BASES) - 1))
    data = bytearray(BASES[index])
    if draw(st.booleans()):
        fields = FIELDS[index]
        kind = draw(st.sampled_from(sorted(fields)))
        start, end = draw(st.sampled_from(fields[kind]))
        data[start:end] = draw(st.one_of(st.sampled_from(NASTY), st.binary(max_size=8)))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "insert", "delete", "duplicate"]))
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        else:
            end = min(len(data), pos + draw(st.integers(1, 40)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


PREFIXES = [
    b"",
    b"GET / HTTP/1.1\r\n",
    b"GET / HTTP/1.1\r\nhost: svc\r\n",
    b"POST /x HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n",
    b"POST /x HTTP/1.1\r\nhost: svc\r\ncontent-length: 16\r\n\r\n",  # often cut short
]

random_inputs = st.one_of(
    st.binary(max_size=2048),
    st.builds(
        lambda prefix, rest: prefix + rest, st.sampled_from(PREFIXES), st.binary(max_size=512)
    ),
)


@st.composite
def fragmented_requests(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A valid or mutated request cut at up to four random points."""
    data = draw(st.one_of(st.sampled_from(BASES), mutated_requests()))
    if len(data) < 2:
        return data, [data]
    cuts = draw(st.lists(st.integers(1, len(data) - 1), max_size=4, unique=True))
    bounds = [0, *sorted(cuts), len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(bounds)]


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- tests --------------------------------------------------------------------------------------


def test_random_bytes_get_an_answer_or_a_close() -> None:
    with FuzzTarget() as target:

        @FUZZ_SETTINGS
        @given(data=random_inputs)
        def check(data: bytes) -> None:
            target.check(data)

        check()
        target.assert_nothing_leaked()


def test_mutated_requests_get_an_answer_or_a_close() -> None:
    with FuzzTarget() as target:

        @FUZZ_SETTINGS
        @given(data=mutated_requests())
        def check(data: bytes) -> None:
            target.check(data)

        check()
        target.assert_nothing_leaked()


def test_fragmented_requests_get_an_answer_or_a_close() -> None:
    with FuzzTarget() as target:

        @FUZZ_SETTINGS
        @given(case=fragmented_requests())
        def check(case: tuple[bytes, list[bytes]]) -> None:
            data, pieces = case
            target.check(data, pieces)

        check()
        target.assert_nothing_leaked()


def test_unmutated_bases_are_served() -> None:
    """The mutation bases are valid: without mutation every one is answered by the backend."""
    with FuzzTarget() as target:
        for base in BASES:
            assert not ends_mid_body(base)
            outcome = exchange(target.address, [base])
            assert not outcome.hung and not outcome.reset
            replies, complete = parse_responses(outcome.received)
            assert complete and replies, (base, outcome)
            assert [r.status for r in replies if r.status != 100] == [200] * (
                1 + base.count(b"GET /2")
            )
            assert all("weft-proxy-error" not in r.headers for r in replies)
        target.assert_nothing_leaked()


# Transfer-Encoding lines, one to three, each one of these values, in HTTP/1.0 or 1.1
TE_VALUES = [
    b"chunked", b"Chunked", b"chunked  ", b"identity", b"gzip", b"", b", chunked",
    b"gzip, chunked", b"identity, chunked", b"chunked, chunked", b"chunked\t", b"chunked;x=1",
]  # fmt: skip


def te_request(values: list[bytes], version: bytes) -> bytes:
    lines = b"".join(b"Transfer-Encoding: %s\r\n" % v for v in values)
    return b"POST /te HTTP/%s\r\nhost: svc\r\n%s\r\n5\r\nhello\r\n0\r\n\r\n" % (version, lines)


def test_transfer_codings_reach_the_app_only_as_one_chunked() -> None:
    """Only a single ``chunked`` in HTTP/1.1 is relayed (as ``chunked``, the body intact); any
    other combination is refused with 400 or 501 and never reaches the app."""
    with FuzzTarget() as target:
        backend = target.backend
        assert backend is not None

        @settings(FUZZ_SETTINGS, max_examples=60)
        @example(values=[b"identity", b"chunked"], version=b"1.1")  # the reported case
        @example(values=[b"chunked"], version=b"1.0")
        @example(values=[b"chunked"], version=b"1.1")
        @given(
            values=st.lists(st.sampled_from(TE_VALUES), min_size=1, max_size=3),
            version=st.sampled_from([b"1.0", b"1.1"]),
        )
        def check(values: list[bytes], version: bytes) -> None:
            before = [r for r in backend.requests if r.path == "/te"]
            outcome = target.check(te_request(values, version))
            got = [r for r in backend.requests if r.path == "/te"][len(before) :]
            replies, _ = parse_responses(outcome.received)
            one_chunked = values[0].rstrip(b" ").lower() == b"chunked"
            if version == b"1.1" and len(values) == 1 and one_chunked:
                assert [r.body for r in got] == [b"hello"], got
                assert [r.status for r in replies] == [200], replies
            else:
                assert got == [], "a request with an ambiguous Transfer-Encoding reached the app"
                assert replies and replies[0].status in (400, 501), replies
                assert "weft-proxy-error" in replies[0].headers, replies[0]

        check()
        target.assert_nothing_leaked()
