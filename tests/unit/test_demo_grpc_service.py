"""The demo gRPC service and its traffic generator over real sockets on 127.0.0.1: grpcio
clients against :class:`weft.demo.ratings.RatingsService`, statuses, deadlines, cancellation,
bad input, and ``python -m weft.demo.ratings`` stopping on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from fractions import Fraction
from typing import Any

import grpc
import grpc.aio
import pytest

from weft.demo.grpc_traffic import Generator
from weft.demo.ratings import (
    PACKAGE_SERVICE,
    SEED_RATINGS,
    Rating,
    RatingRequest,
    RatingsService,
    RatingsStub,
    WatchRequest,
    start,
)
from weft.demo.ratings import main as ratings_main

pytestmark = pytest.mark.timeout(60)


class Served:
    """A running service on a loopback port, its log lines, and a client stub."""

    def __init__(self, service: RatingsService, lines: list[str], port: int, stub: Any) -> None:
        self.service = service
        self.lines = lines
        self.target = f"127.0.0.1:{port}"
        self.stub: Any = stub
        self.channel: Any = None

    def logged(self) -> list[dict[str, str]]:
        return [dict(tok.split("=", 1) for tok in line.split()[1:]) for line in self.lines]


@asynccontextmanager
async def served(**kwargs: Any) -> AsyncIterator[Served]:
    lines: list[str] = []
    service = RatingsService(pod="pod-a", log=lines.append, **kwargs)
    server, port = await start(service, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            s = Served(service, lines, port, RatingsStub(channel))
            s.channel = channel
            yield s
    finally:
        await server.stop(None)


async def wait_logged(s: Served, n: int) -> list[dict[str, str]]:
    """The log lines once there are ``n`` (a call's line comes as the server finishes it)."""
    for _ in range(200):
        if len(s.lines) >= n:
            break
        await asyncio.sleep(0.01)
    return s.logged()


async def test_all_four_kinds() -> None:
    async with served() as s:
        one = await s.stub.GetRating(RatingRequest(book_id=1))
        assert (one.book_id, one.count, one.stars_total, one.pod) == (1, 3, 14, "pod-a")
        watch = s.stub.WatchRatings(WatchRequest(book_id=2, count=3, interval_ms=0))
        assert [m.book_id async for m in watch] == [2, 2, 2]
        upload = [Rating(book_id=3, stars=n, review="fine") for n in (1, 2, 3, 4, 5)]
        summary = await s.stub.RecordRatings(iter(upload))
        assert (summary.book_id, summary.count, summary.stars_total) == (0, 5, 15)
        assert summary.size_bytes == sum(len(r.encode()) for r in upload)
        chat = s.stub.Chat()
        answers = []
        for stars in (5, 1):
            await chat.write(Rating(book_id=4, stars=stars))
            answers.append(await chat.read())
        await chat.done_writing()
        assert await chat.read() is grpc.aio.EOF
        seeded = SEED_RATINGS[4]
        assert [(a.count, a.stars_total) for a in answers] == [
            (len(seeded) + 1, sum(seeded) + 5),
            (len(seeded) + 2, sum(seeded) + 6),
        ]
        # the upload was recorded too: book 3 has 5 more ratings
        assert (await s.stub.GetRating(RatingRequest(book_id=3))).count == len(SEED_RATINGS[3]) + 5
        logged = await wait_logged(s, 5)
    methods = [(e["method"], e["status"], e["in"], e["out"]) for e in logged]
    assert methods == [
        ("GetRating", "OK", "1", "1"),
        ("WatchRatings", "OK", "1", "3"),
        ("RecordRatings", "OK", "5", "1"),
        ("Chat", "OK", "2", "2"),
        ("GetRating", "OK", "1", "1"),
    ]
    assert all(e["deadline_ms"] == "-" and e["request_id"] == "-" for e in logged)


async def test_failure_rate_fails_an_exact_share_with_unavailable() -> None:
    async with served(failure_rate=Fraction(1, 4)) as s:
        codes = []
        for _ in range(20):
            try:
                await s.stub.GetRating(RatingRequest(book_id=1))
                codes.append("OK")
            except grpc.aio.AioRpcError as exc:
                assert exc.details() == "injected failure (FAILURE_RATE)"
                codes.append(exc.code().name)
        logged = await wait_logged(s, 20)
    assert codes == (["OK"] * 3 + ["UNAVAILABLE"]) * 5
    assert [e["status"] for e in logged] == codes


@pytest.mark.parametrize(
    ("method", "request_", "code", "details"),
    [
        ("GetRating", RatingRequest(book_id=99), "NOT_FOUND", "no book 99"),
        ("WatchRatings", WatchRequest(book_id=9, count=1), "NOT_FOUND", "no book 9"),
        ("WatchRatings", WatchRequest(book_id=1, count=-1), "INVALID_ARGUMENT", "count"),
        ("WatchRatings", WatchRequest(book_id=1, count=0, interval_ms=5), "INVALID_ARGUMENT", "10"),
        (
            "WatchRatings",
            WatchRequest(book_id=1, count=1, interval_ms=60_001),
            "INVALID_ARGUMENT",
            "interval_ms",
        ),
        ("RecordRatings", [Rating(book_id=1, stars=6)], "INVALID_ARGUMENT", "stars must be 1-5"),
        ("RecordRatings", [Rating(book_id=7, stars=3)], "NOT_FOUND", "no book 7"),
        ("Chat", [Rating(book_id=1, stars=0)], "INVALID_ARGUMENT", "stars must be 1-5"),
    ],
)
async def test_bad_requests_get_a_status_and_the_server_keeps_serving(
    method: str, request_: Any, code: str, details: str
) -> None:
    async with served() as s:
        call = getattr(s.stub, method)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            if method == "GetRating":
                await call(request_)
            elif method == "RecordRatings":
                await call(iter(request_))
            else:
                stream = call(request_) if method == "WatchRatings" else call(iter(request_))
                async for _ in stream:
                    pass
        assert info.value.code().name == code
        assert details in (info.value.details() or "")
        assert (await s.stub.GetRating(RatingRequest(book_id=2))).book_id == 2
        logged = await wait_logged(s, 2)
    assert [e["status"] for e in logged] == [code, "OK"]


async def test_undecodable_request_is_invalid_argument_and_the_server_keeps_serving() -> None:
    async with served() as s:
        raw = s.channel.unary_unary(f"/{PACKAGE_SERVICE}/GetRating")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(b"\x0b")  # a group: not proto3
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "undecodable request: RatingRequest" in (info.value.details() or "")
        upload = s.channel.stream_unary(f"/{PACKAGE_SERVICE}/RecordRatings")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await upload(iter([Rating(book_id=1, stars=2).encode(), b"\x1a\x09short"]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "runs past the end" in (info.value.details() or "")
        unknown = s.channel.unary_unary(f"/{PACKAGE_SERVICE}/Nope")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unknown(b"")
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert (await s.stub.GetRating(RatingRequest(book_id=1))).pod == "pod-a"
        logged = await wait_logged(s, 3)
    assert [(e["method"], e["status"], e["in"]) for e in logged] == [
        ("GetRating", "INVALID_ARGUMENT", "0"),
        ("RecordRatings", "INVALID_ARGUMENT", "2"),
        ("GetRating", "OK", "1"),
    ]


async def test_deadline_is_seen_and_ends_an_unbounded_watch() -> None:
    async with served() as s:
        watch = s.stub.WatchRatings(
            WatchRequest(book_id=1, count=0, interval_ms=20),
            timeout=0.5,
            metadata=(("x-request-id", "w 1"),),
        )
        got = 0
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in watch:
                got += 1
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        (entry,) = await wait_logged(s, 1)
    assert entry["status"] == "DEADLINE_EXCEEDED"
    assert entry["request_id"] == "w_1"
    # the 0.5 s deadline as the server saw it: gRPC rounds the grpc-timeout header up to its
    # unit, so it may read a millisecond or so more than was set
    assert 0 < int(entry["deadline_ms"]) <= 550
    assert got >= 2 and int(entry["out"]) >= got


async def test_cancellation_reaches_the_handler() -> None:
    async with served() as s:
        watch = s.stub.WatchRatings(WatchRequest(book_id=1, count=0, interval_ms=20))
        got = 0
        async for _ in watch:
            got += 1
            if got == 2:
                break
        watch.cancel()
        (entry,) = await wait_logged(s, 1)
    assert entry["status"] == "CANCELLED" and entry["method"] == "WatchRatings"
    assert entry["deadline_ms"] == "-"


async def test_latency_delays_each_answer() -> None:
    async with served(latency=0.05) as s:
        await s.stub.GetRating(RatingRequest(book_id=1))
        (entry,) = await wait_logged(s, 1)
    # the event loop's timers have a resolution of a millisecond: a 50 ms sleep may end a
    # little early by another clock
    assert float(entry["elapsed_ms"]) >= 48


async def test_traffic_generator_makes_the_four_kinds_in_turn() -> None:
    async with served(failure_rate=Fraction(1, 2)) as s:
        gen = Generator(s.target, rate=500, count=24, duration=0, concurrency=1, timeout=5)
        summary = await gen.run(report_every=0)
    assert summary["calls"] == 24 and summary["ok"] == 12 and summary["failed"] == 12
    assert summary["statuses"] == {"OK": 12, "UNAVAILABLE": 12}
    assert set(summary["kinds"]) == {"GetRating", "WatchRatings", "RecordRatings", "Chat"}
    assert all(sum(k.values()) == 6 for k in summary["kinds"].values())


async def test_traffic_generator_stops_when_told_and_bounds_each_call() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    gen = Generator(closed, rate=50, count=0, duration=0, concurrency=2, timeout=0.5)
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, gen.stop.set)
    summary = await asyncio.wait_for(gen.run(report_every=0), 10)
    assert 0 < summary["calls"] <= 20
    assert summary["ok"] == 0 and set(summary["statuses"]) == {"UNAVAILABLE"}


def test_the_server_process_serves_and_stops_on_sigterm() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PORT": str(port), "WEFT_POD_NAME": "proc"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "weft.demo.ratings"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "serving ratings.Ratings" in proc.stdout.readline()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            summary = RatingsStub(channel).GetRating(RatingRequest(book_id=2), timeout=10)
        assert summary.pod == "proc"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        rest = proc.stdout.read()
        assert "method=GetRating status=OK" in rest and "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_port_in_use_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert ratings_main({"PORT": str(port)}) == 1
    assert f"ratings: cannot listen on 0.0.0.0:{port}" in capsys.readouterr().err
