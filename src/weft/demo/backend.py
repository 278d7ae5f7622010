"""A demo backend: ``GET /`` answers its items as JSON; a known fraction of answers are 500s.

Environment: ``DEMO_NAME`` (``books`` or ``authors``: which items; default ``books``), ``PORT``
(8080), ``FAILURE_RATE`` (0.0-1.0, default 0): request number ``n`` fails when ``floor(n * rate)``
grows, so after N requests exactly ``floor(N * rate)`` have failed, spread evenly (rate 0.2 fails
every 5th request); ``LATENCY_MS`` (default 0): time each answer takes, so that requests are in
flight when the pod is told to stop. The answer names the pod and the peer address it saw
(behind an inbound proxy the peer is the pod's own address, which the tests use to show the proxy
was on the path).
"""

from __future__ import annotations

import os
import threading
import time
from fractions import Fraction
from typing import Any

from weft.demo._server import Request, serve

ITEMS = {
    "books": [
        {"id": 1, "title": "A Wizard of Earthsea", "author": 1},
        {"id": 2, "title": "The Left Hand of Darkness", "author": 1},
        {"id": 3, "title": "Kindred", "author": 2},
        {"id": 4, "title": "Parable of the Sower", "author": 2},
    ],
    "authors": [
        {"id": 1, "name": "Ursula K. Le Guin"},
        {"id": 2, "name": "Octavia E. Butler"},
    ],
}


class FailureSchedule:
    """Which request numbers fail, for an exact failure fraction (thread-safe counter)."""

    def __init__(self, rate: Fraction) -> None:
        if not 0 <= rate <= 1:
            raise ValueError(f"FAILURE_RATE must be within [0, 1], got {float(rate)}")
        self.rate = rate
        self.count = 0
        self._lock = threading.Lock()

    def next(self) -> tuple[int, bool]:
        """The next request's number (1-based) and whether it fails."""
        with self._lock:
            self.count += 1
            n = self.count
        return n, int(n * self.rate) > int((n - 1) * self.rate)


def parse_rate(text: str) -> Fraction:
    try:
        rate = Fraction(text.strip() or "0")
    except ValueError:
        raise ValueError(f"FAILURE_RATE must be a number like 0.1, got {text!r}") from None
    if not 0 <= rate <= 1:
        raise ValueError(f"FAILURE_RATE must be within [0, 1], got {text!r}")
    return rate


def main() -> int:
    name = os.environ.get("DEMO_NAME", "books")
    if name not in ITEMS:
        raise SystemExit(f"DEMO_NAME must be one of {', '.join(ITEMS)}, got {name!r}")
    schedule = FailureSchedule(parse_rate(os.environ.get("FAILURE_RATE", "0")))
    pod = os.environ.get("WEFT_POD_NAME") or os.environ.get("HOSTNAME", "")
    pod_ip = os.environ.get("WEFT_POD_IP", "")
    latency = float(os.environ.get("LATENCY_MS", "0")) / 1000.0
    if latency < 0:
        raise SystemExit(f"LATENCY_MS must be >= 0, got {latency * 1000:g}")

    def handle(req: Request) -> tuple[int, Any]:
        if req.path == "/healthz":
            return 200, {"ok": True}
        n, fail = schedule.next()
        if latency:
            time.sleep(latency)
        base = {"service": name, "pod": pod, "pod_ip": pod_ip, "peer": req.peer, "request": n}
        if fail:
            return 500, {**base, "error": "injected failure (FAILURE_RATE)"}
        return 200, {**base, name: ITEMS[name]}

    return serve(handle)


if __name__ == "__main__":
    raise SystemExit(main())
