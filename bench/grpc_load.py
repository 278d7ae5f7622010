"""The gRPC load client of the benchmark (grpcio, asyncio), and how the run drives it.

``python -m bench.grpc_load --port P --concurrency N --channels C --duration S [--rate R]`` makes
unary calls to ``/bench.Bench/Unary`` on 127.0.0.1:P (plaintext HTTP/2, as an app talks to its
sidecar) from N concurrent callers spread over C channels (each channel its own TCP connection:
grpcio would otherwise share one subchannel between channels to the same target), with messages
as raw bytes (no protobuf code: the request is ``ping``, the expected reply ``ok``). Without
``--rate`` every caller calls back to back for S seconds (closed loop, saturation); with it, calls
leave on one fixed schedule of R per second for S seconds, at most N in flight. The event loop's
timers wake at millisecond granularity (epoll), so a call may leave up to about 1 ms after its slot
with nothing wrong; a call that leaves more than 2 ms after it counts as late, and so does every
slot of the S seconds that could not be served before they ended (all N calls busy). Every call
has a 5 s deadline; the whole run is bounded by S and the deadlines. Latency is timed
by the client around each call, from the moment it is started to the reply (successful calls
only); a call that fails is counted under its gRPC status (``unavailable``, ...), a reply other
than ``ok`` as ``bad_reply``. It prints one ``BENCH_RESULT {json}`` line in the shape of the
wrk report script, so :func:`bench.load.parse_result` reads both.

:class:`GrpcLoad` is the run's side: it starts that client pinned to the load CPU (as wrk is),
bounded in time, and parses its line. :func:`frame` and the constants are shared with the
backend (which answers the call with a static file holding the reply's frame) and the readiness
check of the gRPC cases.

Not for: streaming calls, protobuf, TLS, or judging gRPC correctness (only the count, the status
and the timings matter here). grpcio is the client's only dependency beyond the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.load import RESULT_MARKER, LoadFailed, parse_result
from bench.model import Latency, LoadRun
from bench.processes import LOOPBACK, pinned

# A unary method of a channel as grpcio hands it out: (request, timeout=...) -> awaitable reply.
_Method = Callable[..., Awaitable[bytes]]
METHOD = "/bench.Bench/Unary"
REQUEST = b"ping"
REPLY = b"ok"
CALL_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 10.0
LATE_S = 0.002
REPO = Path(__file__).resolve().parent.parent


def frame(message: bytes) -> bytes:
    """``message`` as a gRPC length-prefixed message: flag 0 (uncompressed), length, bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass(frozen=True, slots=True)
class GrpcLoad:
    """The gRPC client as a load generator for one case: N calls in flight over C channels."""

    port: int
    concurrency: int
    channels: int
    cpu: int | None = None

    def argv(self, duration_s: int, rate: int | None) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "bench.grpc_load",
            "--port",
            str(self.port),
            "--concurrency",
            str(self.concurrency),
            "--channels",
            str(self.channels),
            "--duration",
            str(duration_s),
        ]
        if rate is not None:
            argv += ["--rate", str(rate)]
        return pinned(argv, self.cpu)

    def run(self, duration_s: int, rate: int | None = None) -> LoadRun:
        """Run the client for ``duration_s`` (at ``rate`` calls per second, or saturating)."""
        argv = self.argv(duration_s, rate)
        # start-up (importing grpcio), the channels' readiness and the last deadlines on top
        limit = duration_s + READY_TIMEOUT_S + CALL_TIMEOUT_S + 30
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=limit, check=False, cwd=REPO
            )
        except subprocess.TimeoutExpired as e:
            raise LoadFailed(f"the gRPC client did not finish within {limit:g} s: {argv}") from e
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_MARKER)), None)
        if done.returncode != 0 or line is None:
            raise LoadFailed(
                f"the gRPC client exited {done.returncode} without a result: {argv}\n"
                f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
            )
        return parse_result(line[len(RESULT_MARKER) :])


class _Tally:
    """What the calls of one run came to. ``rpc_error``: grpcio's exception for a failed call."""

    def __init__(self, rpc_error: type[Exception]) -> None:
        self.rpc_error = rpc_error
        self.latencies_us: list[int] = []
        self.errors: Counter[str] = Counter()
        self.bytes = 0
        self.late = 0

    async def call(self, method: _Method) -> None:
        start = time.perf_counter_ns()
        try:
            reply = await method(REQUEST, timeout=CALL_TIMEOUT_S)
        except self.rpc_error as e:
            self.errors[e.code().name.lower()] += 1  # type: ignore[attr-defined]
            return
        if reply != REPLY:
            self.errors["bad_reply"] += 1
            return
        self.latencies_us.append((time.perf_counter_ns() - start) // 1000)
        self.bytes += len(reply)

    def result(self, seconds: float) -> dict[str, object]:
        """The ``BENCH_RESULT`` object (the shape ``templates/report.lua`` prints)."""
        return {
            "requests": len(self.latencies_us),
            "duration_us": round(seconds * 1e6),
            "bytes": self.bytes,
            "errors": dict(self.errors),
            "latency_us": asdict(Latency.of(self.latencies_us)),
            "late": self.late,
        }


async def _closed_loop(
    methods: Sequence[_Method],
    concurrency: int,
    duration_s: int,
    tally: _Tally,
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s

    async def caller(method: _Method) -> None:
        while loop.time() < deadline:
            await tally.call(method)

    await asyncio.gather(*(caller(methods[i % len(methods)]) for i in range(concurrency)))


async def _paced(
    methods: Sequence[_Method],
    concurrency: int,
    duration_s: int,
    rate: int,
    tally: _Tally,
) -> None:
    """One call on each slot of a schedule of ``rate`` per second for ``duration_s``, at most
    ``concurrency`` in flight (a call that finds them all busy waits, and leaves late); the slots
    still unserved when the time is up count as late, unsent."""
    loop = asyncio.get_running_loop()
    free = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()

    async def one(method: _Method) -> None:
        try:
            await tally.call(method)
        finally:
            free.release()

    slots = rate * duration_s
    start = loop.time()
    end = start + duration_s
    for k in range(slots):
        slot = start + k / rate
        wait = slot - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            if free.locked():  # all busy: wait for one, but not past the end
                await asyncio.wait_for(free.acquire(), max(0.0, end - loop.time()))
            else:
                await free.acquire()
        except TimeoutError:
            tally.late += slots - k
            break
        if loop.time() - slot > LATE_S:
            tally.late += 1
        task = asyncio.create_task(one(methods[k % len(methods)]))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)


async def _run(args: argparse.Namespace) -> dict[str, object]:
    import grpc.aio  # type: ignore[import-untyped]  # grpcio ships no type information

    target = f"{LOOPBACK}:{args.port}"
    # A local subchannel pool per channel: one TCP connection per channel.
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(args.channels)
    ]
    try:
        try:
            ready = asyncio.gather(*(ch.channel_ready() for ch in channels))
            await asyncio.wait_for(ready, READY_TIMEOUT_S)
        except TimeoutError:
            raise SystemExit(
                f"grpc_load: no connection to {target} within {READY_TIMEOUT_S:g} s"
            ) from None
        methods = [ch.unary_unary(METHOD) for ch in channels]  # bytes in, bytes out
        tally = _Tally(grpc.aio.AioRpcError)
        loop = asyncio.get_running_loop()
        start = loop.time()
        if args.rate is None:
            await _closed_loop(methods, args.concurrency, args.duration, tally)
        else:
            await _paced(methods, args.concurrency, args.duration, args.rate, tally)
        return tally.result(loop.time() - start)
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.grpc_load",
        description=f"Unary gRPC calls to {METHOD} on 127.0.0.1 (load for the benchmark).",
    )
    p.add_argument("--port", type=_positive_int, required=True)
    p.add_argument("--concurrency", type=_positive_int, required=True, help="calls in flight")
    p.add_argument("--channels", type=_positive_int, default=1, help="channels (connections)")
    p.add_argument("--duration", type=_positive_int, required=True, help="seconds")
    p.add_argument("--rate", type=_positive_int, help="calls per second (default: saturate)")
    args = p.parse_args(argv)
    if args.channels > args.concurrency:
        p.error(f"--channels {args.channels} is more than --concurrency {args.concurrency}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(_run(args))
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
