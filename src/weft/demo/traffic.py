"""The demo's traffic generator, also the tests' load client: GETs a URL at a steady rate.

``python -m weft.demo.traffic [--url URL] [--rate RPS] [--count N] [--duration S]
[--concurrency C] [--json]``; flags default from ``TARGET_URL`` (``http://web:8080/``), ``RATE``
(5), ``COUNT`` (0: no limit), ``DURATION`` (0: no limit), ``CONCURRENCY`` (2). Request ``i`` is
sent at ``start + i / rate`` by one of ``C`` workers, each with its own keep-alive connection
(re-opened after an error). With a count or a duration it stops and prints a summary (JSON with
``--json``): requests, ok (2xx), failed, per-status and per-error counts, latency percentiles. In
the demo it runs unbounded and prints a summary line every 10 seconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit


class Stats:
    """Outcomes of the requests sent (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []

    def record(self, status: int | None, error: str | None, latency: float) -> None:
        with self.lock:
            if status is not None:
                self.statuses[str(status)] += 1
            if error is not None:
                self.errors[error] += 1
            self.latencies.append(latency)

    def summary(self, url: str, elapsed: float) -> dict[str, Any]:
        with self.lock:
            ok = sum(n for s, n in self.statuses.items() if s.startswith("2"))
            total = sum(self.statuses.values()) + sum(self.errors.values())
            lat = percentiles_ms(self.latencies)
        return {
            "url": url,
            "requests": total,
            "ok": ok,
            "failed": total - ok,
            "statuses": dict(sorted(self.statuses.items())),
            "errors": dict(sorted(self.errors.items())),
            "seconds": round(elapsed, 3),
            **lat,
        }


def percentiles_ms(latencies: list[float]) -> dict[str, float]:
    """``p50_ms`` and ``p99_ms`` of latencies in seconds (nearest rank; 0 without any)."""
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else 0.0

    return {"p50_ms": pct(0.50), "p99_ms": pct(0.99)}


def check_load(rate: float, count: int, duration: float, concurrency: int, timeout: float) -> None:
    """``ValueError`` naming the option when a demo generator's settings make no sense."""
    if not rate > 0:
        raise ValueError(f"--rate must be positive, got {rate!r}")
    if count < 0 or duration < 0 or concurrency < 1 or not timeout > 0:
        raise ValueError("--count/--duration must be >= 0, --concurrency >= 1, --timeout > 0")


class Generator:
    def __init__(
        self,
        url: str,
        *,
        rate: float,
        count: int,
        duration: float,
        concurrency: int,
        timeout: float,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--url must be an http:// URL, got {url!r}")
        check_load(rate, count, duration, concurrency, timeout)
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.rate = rate
        self.count = count
        self.duration = duration
        self.concurrency = concurrency
        self.timeout = timeout
        self.stats = Stats()
        self.stop = threading.Event()
        self._next = 0
        self._lock = threading.Lock()
        self.start = time.monotonic()

    def _slot(self) -> float | None:
        """When this worker sends its next request (None: no more requests)."""
        with self._lock:
            i = self._next
            if self.count and i >= self.count:
                return None
            self._next += 1
        at = self.start + i / self.rate
        if self.duration and at - self.start >= self.duration:
            return None
        return at

    def worker(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            at = self._slot()
            if at is None:
                break
            delay = at - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                break
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            current = conn
            began = time.monotonic()
            try:
                current.request("GET", self.path, headers={"User-Agent": "weft-demo-traffic"})
                resp = current.getresponse()
                resp.read()
                self.stats.record(resp.status, None, time.monotonic() - began)
                if resp.will_close:
                    current.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self.stats.record(None, type(exc).__name__, time.monotonic() - began)
                current.close()
                conn = None
        if conn is not None:
            conn.close()

    def run(self, report_every: float = 10.0) -> dict[str, Any]:
        threads = [
            threading.Thread(target=self.worker, daemon=True) for _ in range(self.concurrency)
        ]
        for t in threads:
            t.start()
        last = time.monotonic()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.2)
            if report_every and time.monotonic() - last >= report_every:
                last = time.monotonic()
                s = self.stats.summary(self.url, last - self.start)
                print(
                    f"{s['requests']} requests, {s['ok']} ok, {s['failed']} failed, "
                    f"p50 {s['p50_ms']}ms, p99 {s['p99_ms']}ms",
                    flush=True,
                )
        return self.stats.summary(self.url, time.monotonic() - self.start)


def env_float(name: str, default: float, prog: str = "traffic") -> float:
    """The environment variable ``name`` as a number (``default`` when unset); exits with a
    message naming it when it is not one."""
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise SystemExit(f"{prog}: {name} must be a number") from None


def add_load_options(p: argparse.ArgumentParser, prog: str, unit: str, concurrency: int) -> None:
    """The options of both demo load generators (this one and ``grpc_traffic``), with defaults
    from ``RATE``, ``COUNT``, ``DURATION`` and ``CONCURRENCY``; ``unit``: what one is."""
    p.add_argument("--rate", type=float, default=env_float("RATE", 5.0, prog), help=f"{unit}s/s")
    p.add_argument(
        "--count", type=int, default=int(env_float("COUNT", 0, prog)), help="0: no limit"
    )
    p.add_argument("--duration", type=float, default=env_float("DURATION", 0.0, prog))
    p.add_argument(
        "--concurrency", type=int, default=int(env_float("CONCURRENCY", concurrency, prog))
    )
    p.add_argument("--timeout", type=float, default=5.0, help=f"deadline of each {unit}, seconds")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def load_settings(args: argparse.Namespace) -> dict[str, Any]:
    """A demo ``Generator``'s keyword arguments from the options of :func:`add_load_options`."""
    keys = ("rate", "count", "duration", "concurrency", "timeout")
    return {k: getattr(args, k) for k in keys}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m weft.demo.traffic", description=__doc__)
    p.add_argument("--url", default=os.environ.get("TARGET_URL", "http://web:8080/"))
    add_load_options(p, "traffic", "request", concurrency=2)
    args = p.parse_args(argv)
    try:
        gen = Generator(args.url, **load_settings(args))
    except ValueError as exc:
        print(f"traffic: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: gen.stop.set())
    signal.signal(signal.SIGINT, lambda *_: gen.stop.set())
    bounded = bool(args.count or args.duration)
    summary = gen.run(report_every=0.0 if bounded and args.json else 10.0)
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        print(
            f"done: {summary['requests']} requests, {summary['ok']} ok, "
            f"{summary['failed']} failed {summary['statuses']} {summary['errors']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
