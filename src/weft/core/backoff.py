"""Exponential backoff with jitter, as a pure function of the attempt number.

``ExponentialBackoff(base, maximum, jitter).delay(attempt)`` is ``base * 2**attempt`` capped at
``maximum``, plus a random extra of up to ``jitter`` times that (Linkerd's connect backoff: 100 ms
.. 60 s, jitter 0.1). The RNG is injected so tests and simulations are reproducible.

Not for: sleeping or scheduling (callers do that), nor counting attempts (callers keep the count;
e.g. the balancer keeps one per endpoint).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

# 2.0 ** 1023 is the largest power of two a float holds; beyond it the delay is capped anyway.
_MAX_EXPONENT = 1023


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """``delay(attempt)`` lies in ``[d, d * (1 + jitter)]`` with ``d = min(maximum,
    base * 2**attempt)``; so every delay is within ``[base, maximum * (1 + jitter)]``.
    """

    base: float = 0.1
    maximum: float = 60.0
    jitter: float = 0.1
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base) and self.base >= 0):
            raise ValueError(f"backoff base must be a finite number >= 0, got {self.base!r}")
        if not (math.isfinite(self.maximum) and self.maximum >= self.base):
            raise ValueError(
                f"backoff maximum must be finite and >= base ({self.base!r}), got {self.maximum!r}"
            )
        if not (math.isfinite(self.jitter) and 0.0 <= self.jitter <= 1.0):
            raise ValueError(f"backoff jitter must be within [0, 1], got {self.jitter!r}")

    def undithered(self, attempt: int) -> float:
        """The delay for ``attempt`` before jitter: ``min(maximum, base * 2**attempt)``."""
        if attempt < 0:
            raise ValueError(f"backoff attempt must be >= 0, got {attempt!r}")
        return min(self.maximum, self.base * 2.0 ** min(attempt, _MAX_EXPONENT))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        d = self.undithered(attempt)
        if self.jitter:
            d += d * self.jitter * self.rng.random()
        return d
