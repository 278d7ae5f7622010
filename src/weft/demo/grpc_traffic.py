"""The demo's gRPC traffic generator: calls ``ratings.Ratings`` (:mod:`weft.demo.ratings`) at a
steady rate, taking the four kinds of call in turn.

``python -m weft.demo.grpc_traffic [--target HOST:PORT] [--rate CPS] [--count N] [--duration S]
[--concurrency C] [--timeout S] [--json]``; flags default from ``TARGET`` (``ratings:50051``),
``RATE`` (5 calls/s), ``COUNT`` (0: no limit), ``DURATION`` (0: no limit), ``CONCURRENCY`` (4).
Call ``i`` starts at ``start + i / rate``, all on one channel (one HTTP/2 connection: the mesh
balances each call on its own); it is, in turn, ``GetRating``, ``WatchRatings`` (3 summaries),
``RecordRatings`` (3 ratings) or ``Chat`` (3 ratings, 3 answers), with a deadline of
``--timeout`` seconds. At most ``C`` calls are in flight: a slow server lowers the rate instead of
piling calls up. A call whose answer is not what the service promises counts as
``WRONG_ANSWER``. With a count or a duration it stops and prints a summary (JSON with
``--json``): calls, ok, failed, per-status and per-kind counts, latency percentiles. In the demo
it runs unbounded and prints a summary line every 10 seconds.

Not for: load testing (the calls are paced, not as fast as possible).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from typing import Any

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]

from weft.demo.ratings import BOOKS, Rating, RatingRequest, RatingsStub, WatchRequest
from weft.demo.traffic import add_load_options, check_load, load_settings, percentiles_ms

KINDS = ("GetRating", "WatchRatings", "RecordRatings", "Chat")
MESSAGES = 3  # per streaming call
WRONG_ANSWER = "WRONG_ANSWER"


class Stats:
    """Outcomes of the calls made, by status and by kind."""

    def __init__(self) -> None:
        self.statuses: Counter[str] = Counter()
        self.kinds: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
        self.latencies: list[float] = []

    def record(self, kind: str, status: str, latency: float) -> None:
        self.statuses[status] += 1
        self.kinds[kind][status] += 1
        self.latencies.append(latency)

    def summary(self, target: str, elapsed: float) -> dict[str, Any]:
        total = sum(self.statuses.values())
        ok = self.statuses["OK"]
        return {
            "target": target,
            "calls": total,
            "ok": ok,
            "failed": total - ok,
            "statuses": dict(sorted(self.statuses.items())),
            "kinds": {k: dict(sorted(c.items())) for k, c in self.kinds.items() if c},
            "seconds": round(elapsed, 3),
            **percentiles_ms(self.latencies),
        }


async def call(stub: RatingsStub, i: int, timeout: float) -> bool:
    """Call number ``i`` (its kind is ``KINDS[i % 4]``); whether the answer is right. gRPC
    errors raise ``grpc.aio.AioRpcError``."""
    book = BOOKS[i % len(BOOKS)]
    kind = KINDS[i % len(KINDS)]
    ratings = [Rating(book_id=book, stars=(i + n) % 5 + 1) for n in range(MESSAGES)]
    if kind == "GetRating":
        summary = await stub.GetRating(RatingRequest(book_id=book), timeout=timeout)
        return bool(summary.book_id == book and summary.count > 0)
    if kind == "WatchRatings":
        watch = stub.WatchRatings(
            WatchRequest(book_id=book, count=MESSAGES, interval_ms=20), timeout=timeout
        )
        books = [s.book_id async for s in watch]
        return books == [book] * MESSAGES
    if kind == "RecordRatings":
        summary = await stub.RecordRatings(iter(ratings), timeout=timeout)
        stars = sum(r.stars for r in ratings)
        return bool(summary.count == MESSAGES and summary.stars_total == stars)
    chat = stub.Chat(timeout=timeout)
    answers = []
    for rating in ratings:
        await chat.write(rating)
        answers.append(await chat.read())
    await chat.done_writing()
    end = await chat.read()
    return end is grpc.aio.EOF and all(a is not grpc.aio.EOF and a.book_id == book for a in answers)


class Generator:
    """Paced calls on one channel; :meth:`run` returns the summary."""

    def __init__(
        self,
        target: str,
        *,
        rate: float,
        count: int,
        duration: float,
        concurrency: int,
        timeout: float,
    ) -> None:
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--target must be HOST:PORT, got {target!r}")
        check_load(rate, count, duration, concurrency, timeout)
        self.target = target
        self.rate = rate
        self.count = count
        self.duration = duration
        self.concurrency = concurrency
        self.timeout = timeout
        self.stats = Stats()
        self.stop = asyncio.Event()
        self.start = time.monotonic()

    def _slot(self, i: int) -> float | None:
        """When call ``i`` starts (None: no more calls)."""
        at = self.start + i / self.rate
        if (self.count and i >= self.count) or (self.duration and at - self.start >= self.duration):
            return None
        return at

    async def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds``; False when told to stop meanwhile."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self.stop.wait()
        return not self.stop.is_set()

    async def _one(self, stub: RatingsStub, i: int, slots: asyncio.Semaphore) -> None:
        began = time.monotonic()
        try:
            right = await call(stub, i, self.timeout)
            status = "OK" if right else WRONG_ANSWER
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
        finally:
            slots.release()
        self.stats.record(KINDS[i % len(KINDS)], status, time.monotonic() - began)

    async def run(self, report_every: float = 10.0) -> dict[str, Any]:
        self.start = time.monotonic()
        last = self.start
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = RatingsStub(channel)
            i = 0
            while (at := self._slot(i)) is not None and await self._wait(at - time.monotonic()):
                await slots.acquire()
                task = asyncio.create_task(self._one(stub, i, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
                if report_every and time.monotonic() - last >= report_every:
                    last = time.monotonic()
                    print(_line(self.stats.summary(self.target, last - self.start)), flush=True)
            if tasks:  # each call has a deadline: they all end
                await asyncio.gather(*tasks)
        return self.stats.summary(self.target, time.monotonic() - self.start)


def _line(s: dict[str, Any]) -> str:
    return (
        f"{s['calls']} calls, {s['ok']} ok, {s['failed']} failed {s['statuses']}, "
        f"p50 {s['p50_ms']}ms, p99 {s['p99_ms']}ms"
    )


async def _main(gen: Generator, report_every: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, gen.stop.set)
    return await gen.run(report_every)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m weft.demo.grpc_traffic", description=__doc__)
    p.add_argument("--target", default=os.environ.get("TARGET", "ratings:50051"))
    add_load_options(p, "grpc_traffic", "call", concurrency=4)
    args = p.parse_args(argv)
    try:
        gen = Generator(args.target, **load_settings(args))
    except ValueError as exc:
        print(f"grpc_traffic: {exc}", file=sys.stderr)
        return 2
    bounded = bool(args.count or args.duration)
    summary = asyncio.run(_main(gen, 0.0 if bounded and args.json else 10.0))
    print(json.dumps(summary) if args.json else "done: " + _line(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
