"""A deterministic clock for sans-I/O tests and simulations.

:class:`FakeClock` is a callable returning "now" in seconds (the same shape as
``time.monotonic``), so it can be injected wherever a core takes ``clock: Callable[[], float]``.
Time moves only when the test calls :meth:`FakeClock.advance` (or :meth:`FakeClock.set`).

Not for: driving an asyncio event loop (this clock schedules nothing; it only answers "now").
"""

from __future__ import annotations

import math


class FakeClock:
    """A monotonic clock that moves only when told to."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        if not math.isfinite(start):
            raise ValueError(f"FakeClock start must be finite, got {start!r}")
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (>= 0) and return the new now."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"FakeClock.advance seconds must be finite and >= 0, got {seconds!r}")
        self._now += seconds
        return self._now

    def set(self, now: float) -> None:
        """Jump to ``now``, which must not be in the past (the clock is monotonic)."""
        if not math.isfinite(now) or now < self._now:
            raise ValueError(
                f"FakeClock.set now must be finite and >= current {self._now!r}, got {now!r}"
            )
        self._now = float(now)

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now:.6f}>"
