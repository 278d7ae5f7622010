"""h2load (nghttp2) as the HTTP/2 load generator: prior-knowledge h2c, at saturation and at a
fixed rate, with latency percentiles from its per-request log.

Saturation: ``h2load -t1 -c C -m M -D S`` -- C connections, each keeping M streams in flight, for
S seconds (closed loop, timing-based: only requests of those S seconds are counted).

Fixed rate R: ``h2load -t1 -c C -m M -n R*S --rps R/C -r 1 --rate-period 1ms``. ``--rps`` gives
each connection its own schedule, which h2load keeps exactly on average (it counts the requests
due since the connection started) but serves from a timer that fires at most every 10 ms, so
each connection sends its due requests in small bursts. Started together (``-D``), the C timers
fire in the same loop iteration: C bursts at once every 10 ms (measured here: 16-32 requests in
one millisecond, then nine empty ones, at 2,000 rps over 16 connections). ``-r 1 --rate-period
1ms`` opens one connection per millisecond instead, so the timers are spread over the 10 ms and
the requests over the milliseconds (measured: at most 9 in any millisecond, a sixth of them
empty). R must be a multiple of C. h2load sends every request of the schedule: a case that cannot
keep up makes the run longer (the achieved rate shows it) and its requests late.

Latency: ``--log-file`` has one row per request (start time, status, microseconds until the end
of the response); the percentiles are taken over the rows of completed requests. Late sends, at
the fixed rate: a request that started more than one timer period (10 ms) plus the connection
stagger (C ms) behind the schedule of R per second from the first request, i.e. sent late by
more than h2load's own timer granularity.

Not for: HTTP/1.1 (wrk), gRPC calls (:mod:`bench.grpc_load`), TLS to the measured server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.load import LoadFailed
from bench.model import Latency, LoadRun
from bench.processes import LOOPBACK, pinned

TIMER_US = 10_000  # h2load's --rps timer fires at most every 10 ms
STAGGER_US = 1_000  # one connection opened per millisecond at the fixed rate
INACTIVITY_TIMEOUT_S = 5  # as wrk's --timeout: a connection with no activity this long fails

_FINISHED = re.compile(r"^finished in ([0-9.]+)(us|ms|s),", re.MULTILINE)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout",
    re.MULTILINE,
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.MULTILINE)
_TRAFFIC = re.compile(r"^traffic: \S+ \((\d+)\) total", re.MULTILINE)
_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


@dataclass(frozen=True, slots=True)
class Summary:
    """The totals h2load prints at the end of a run."""

    seconds: float
    done: int
    succeeded: int
    errored: int
    timeout: int
    status_4xx: int
    status_5xx: int
    bytes: int


def parse_output(text: str) -> Summary:
    """Read h2load's closing summary; ``ValueError`` naming what is missing."""
    found = {}
    for name, pattern in (
        ("finished", _FINISHED),
        ("requests", _REQUESTS),
        ("status codes", _STATUS),
        ("traffic", _TRAFFIC),
    ):
        m = pattern.search(text)
        if m is None:
            raise ValueError(f"h2load output: no {name!r} line")
        found[name] = m
    finished, requests = found["finished"], found["requests"]
    _total, _started, done, succeeded, _failed, errored, timeout = map(int, requests.groups())
    _s2xx, _s3xx, s4xx, s5xx = map(int, found["status codes"].groups())
    return Summary(
        seconds=float(finished.group(1)) * _UNITS_S[finished.group(2)],
        done=done,
        succeeded=succeeded,
        errored=errored,
        timeout=timeout,
        status_4xx=s4xx,
        status_5xx=s5xx,
        bytes=int(found["traffic"].group(1)),
    )


@dataclass(frozen=True, slots=True)
class LogRow:
    """One request of h2load's ``--log-file``: start (us since the epoch), status (-1: the stream
    failed), microseconds from the request to the end of the response."""

    start_us: int
    status: int
    duration_us: int


def parse_log(text: str) -> list[LogRow]:
    """The rows of an h2load ``--log-file``; ``ValueError`` naming the first bad line."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        fields = line.split("\t")
        try:
            start, status, duration = (int(f) for f in fields[:3])
        except ValueError:
            raise ValueError(
                f"h2load log line {number}: not three integers: {line[:80]!r}"
            ) from None
        rows.append(LogRow(start, status, duration))
    return rows


def late_sends(starts_us: list[int], rate: int, tolerance_us: int) -> int:
    """How many requests started more than ``tolerance_us`` behind a schedule of ``rate`` per
    second that begins with the first request (the i-th earliest is due at ``i / rate`` s)."""
    if rate <= 0:
        raise ValueError(f"rate: must be > 0, got {rate!r}")
    ordered = sorted(starts_us)
    if not ordered:
        return 0
    t0 = ordered[0]
    return sum(1 for i, s in enumerate(ordered) if s - t0 > i * 1e6 / rate + tolerance_us)


def to_load_run(summary: Summary, rows: list[LogRow], rate: int | None, clients: int) -> LoadRun:
    """One :class:`LoadRun` from h2load's summary and log (``rate``: the fixed rate, or None)."""
    completed = [r for r in rows if r.status != -1]
    late = 0
    if rate is not None:
        late = late_sends([r.start_us for r in rows], rate, TIMER_US + clients * STAGGER_US)
    return LoadRun(
        requests=summary.succeeded,
        duration_s=summary.seconds,
        bytes=summary.bytes,
        latency=Latency.of([r.duration_us for r in completed]),
        errors={
            "status": summary.status_4xx + summary.status_5xx,
            "errored": summary.errored - summary.timeout,
            "timeout": summary.timeout,
        },
        late=late,
    )


def available() -> str | None:
    """``None`` when h2load is installed, else why the HTTP/2 cases are skipped."""
    if shutil.which("h2load") is None:
        return "h2load not found (Debian: apt-get install nghttp2-client; `make sysdeps` does it)"
    return None


@dataclass(frozen=True, slots=True)
class H2load:
    """h2load against ``http://127.0.0.1:<port><path>`` (h2c): ``clients`` connections with
    ``streams`` streams in flight each, one thread, pinned to ``cpu``; its log in ``workdir``."""

    port: int
    workdir: Path
    clients: int
    streams: int
    path: str = "/"
    cpu: int | None = None

    def argv(self, duration_s: int, rate: int | None, log: Path) -> list[str]:
        if duration_s < 1:
            raise ValueError(f"duration_s: whole seconds, got {duration_s!r}")
        argv = [
            "h2load",
            "-t1",
            f"-c{self.clients}",
            f"-m{self.streams}",
            "-N",
            f"{INACTIVITY_TIMEOUT_S}s",
            f"--log-file={log}",
        ]
        if rate is None:
            argv += ["-D", f"{duration_s}s"]
        else:
            if rate % self.clients:
                raise ValueError(
                    f"rate: {rate!r} rps is not a multiple of the {self.clients} h2load clients"
                )
            argv += [
                f"-n{rate * duration_s}",
                f"--rps={rate // self.clients}",
                "-r1",
                "--rate-period=1ms",
            ]
        return [*argv, f"http://{LOOPBACK}:{self.port}{self.path}"]

    def run(self, duration_s: int, rate: int | None = None) -> LoadRun:
        log = self.workdir / "h2load.log"
        argv = pinned(self.argv(duration_s, rate, log), self.cpu)
        # At the fixed rate h2load sends the whole schedule, however long a slow case takes.
        limit = duration_s * (1 if rate is None else 3) + 30
        try:
            try:
                done = subprocess.run(
                    argv, capture_output=True, text=True, timeout=limit, check=False
                )
            except subprocess.TimeoutExpired as e:
                raise LoadFailed(f"h2load did not finish within {limit} s: {argv}") from e
            try:
                if done.returncode != 0:
                    raise ValueError(f"exit status {done.returncode}")
                summary = parse_output(done.stdout)
                if summary.done == 0:  # h2load counts no error for connections it never made
                    raise ValueError("no request completed (no connection?)")
                rows = parse_log(log.read_text())
            except (OSError, ValueError) as e:
                raise LoadFailed(
                    f"h2load gave no result ({e}): {argv}\n"
                    f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
                ) from e
        finally:
            log.unlink(missing_ok=True)
        return to_load_run(summary, rows, rate, self.clients)
