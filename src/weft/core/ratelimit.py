"""Rate-limit arithmetic: GCRA buckets and the local rate limiter of one inbound Server.

:class:`Gcra` is the generic cell rate algorithm (virtual scheduling form): a bucket keeps one
number, the theoretical arrival time (TAT) of the next request. A request at ``now`` is allowed
when, once counted, the TAT would be at most ``tolerance`` seconds ahead of ``now``; so a client
may send a burst of ``rate * tolerance`` requests at once (at least one), then ``rate`` per
second. The tolerance is 1 s by default, as Linkerd's (``governor``'s quota per second: a burst
of one second's worth). Over any window of ``W`` seconds a bucket allows at most
``rate * W + max(1, rate * tolerance)`` requests. A denied request is not counted, and the
answer says how long until a request would be allowed (the ``Retry-After``).

:class:`LocalRateLimiter` applies a :class:`weft.inbound.RateLimit` (an
``HTTPLocalRateLimitPolicy``) as Linkerd's proxy does: a request must pass ``total`` (one bucket
for every request to the Server) **and** its client's limit: the bucket of the override naming
its identity (one bucket per override entry, shared by the identities it lists, as Linkerd's),
else its own ``identity`` bucket (clients without an identity share one). Unlike Linkerd, a
request denied by one limit consumes nothing from the other: both are checked before either
counts. Per-identity buckets are bounded: a bucket that has fully refilled is indistinguishable
from a new one, so such buckets are forgotten (swept at most every ``idle`` seconds, when a new
identity arrives); past ``max_identities`` the oldest bucket is forgotten too (its client gets a
fresh allowance: at worst one burst more than its limit).

Sans-I/O: time comes from the caller (:class:`Gcra`) or an injected clock
(:class:`LocalRateLimiter`). Not for: answering 429s or metrics (the proxy,
:mod:`weft.proxy.inbound.policy`), nor parsing the resource (the control plane).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from weft.inbound import RateLimit, RateLimitOverride

TOTAL = "total"
IDENTITY = "identity"
OVERRIDE = "override"

# float slack when comparing times: a client sending exactly at the limit accumulates rounding
_EPSILON = 1e-9

IDLE = 60.0
MAX_IDENTITIES = 10_000


def _check_rate(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}: requests per second must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what}: requests per second must be finite and > 0, got {value!r}")
    return float(value)


class Gcra:
    """One GCRA bucket (see the module docstring). ``rate`` in requests per second,
    ``tolerance`` in seconds (at least one request's interval is always tolerated)."""

    __slots__ = ("_tat", "interval", "rate", "tolerance")

    def __init__(self, rate: float, tolerance: float = 1.0) -> None:
        self.rate = _check_rate(rate, "rate limit")
        if isinstance(tolerance, bool) or not (
            isinstance(tolerance, int | float) and math.isfinite(tolerance) and tolerance >= 0
        ):
            raise ValueError(f"rate limit tolerance must be finite and >= 0, got {tolerance!r}")
        self.interval = 1.0 / self.rate
        self.tolerance = max(float(tolerance), self.interval)
        self._tat = -math.inf

    @property
    def burst(self) -> float:
        """The most requests allowed at once from a full bucket (``rate * tolerance``, >= 1)."""
        return self.rate * self.tolerance

    def wait(self, now: float) -> float:
        """Seconds until a request at ``now`` would be allowed (0.0: at once); counts nothing."""
        tat = self._tat if self._tat > now else now
        excess = tat + self.interval - now - self.tolerance
        return excess if excess > _EPSILON else 0.0

    def take(self, now: float) -> None:
        """Count a request at ``now`` (whether or not :meth:`wait` allowed it)."""
        tat = self._tat if self._tat > now else now
        self._tat = tat + self.interval

    def check(self, now: float) -> float:
        """0.0: the request at ``now`` is allowed and counted; > 0: denied (not counted), the
        seconds until a request would be allowed."""
        tat = self._tat if self._tat > now else now
        excess = tat + self.interval - now - self.tolerance
        # float rounding grows with the clock's magnitude (monotonic clocks read ~1e5-1e6 s)
        if excess > _EPSILON + abs(now) * 1e-12:
            return excess
        self._tat = tat + self.interval
        return 0.0

    def full(self, now: float) -> bool:
        """True when the bucket has refilled completely by ``now``: a new bucket would answer
        exactly the same from then on, so this one can be forgotten."""
        return self._tat <= now

    def __repr__(self) -> str:
        return f"<Gcra rate={self.rate:g}/s burst={self.burst:g}>"


def check_config(config: RateLimit) -> None:
    """Raise ``ValueError`` naming the field when ``config`` is not a usable rate limit."""
    if not isinstance(config, RateLimit):
        raise ValueError(f"rate limit: expected a RateLimit, got {type(config).__name__}")
    where = f"rate limit {config.name!r}"
    if not isinstance(config.name, str):
        raise ValueError(f"rate limit: name must be a string, got {config.name!r}")
    if config.total is not None:
        _check_rate(config.total, f"{where} total")
    if config.identity is not None:
        _check_rate(config.identity, f"{where} identity")
    if not isinstance(config.overrides, tuple):
        raise ValueError(f"{where}: overrides must be a list")
    for i, o in enumerate(config.overrides):
        if not isinstance(o, RateLimitOverride):
            raise ValueError(f"{where} overrides[{i}]: expected an override, got {o!r}")
        _check_rate(o.requests_per_second, f"{where} overrides[{i}]")
        if not isinstance(o.identities, tuple) or not all(isinstance(x, str) for x in o.identities):
            raise ValueError(f"{where} overrides[{i}]: identities must be a list of strings")


_ALLOWED = (0.0, "")


class LocalRateLimiter:
    """The buckets of one :class:`~weft.inbound.RateLimit` (see the module docstring).

    ``check(client_id)`` answers ``(retry_after, limit)``: ``(0.0, "")`` when the request is
    allowed (and counted against every limit that applies), else the seconds until a request
    would pass every limit and which limit refused it: ``"total"``, ``"identity"`` or
    ``"override"`` (``"total"`` when both refused). Raises ``ValueError`` for a bad config.
    """

    __slots__ = (
        "_buckets", "_clock", "_identity", "_last_sweep", "_overrides", "_total", "config",
        "idle", "max_identities",
    )  # fmt: skip

    def __init__(
        self,
        config: RateLimit,
        clock: Callable[[], float],
        *,
        idle: float = IDLE,
        max_identities: int = MAX_IDENTITIES,
    ) -> None:
        check_config(config)
        if not (math.isfinite(idle) and idle > 0):
            raise ValueError(f"idle must be finite and > 0, got {idle!r}")
        if max_identities < 1:
            raise ValueError(f"max_identities must be >= 1, got {max_identities!r}")
        self.config = config
        self.idle = idle
        self.max_identities = max_identities
        self._clock = clock
        self._total = Gcra(config.total) if config.total is not None else None
        self._identity = float(config.identity) if config.identity is not None else None
        self._overrides: dict[str, Gcra] = {}
        for o in config.overrides:
            bucket = Gcra(o.requests_per_second)
            for identity in o.identities:
                self._overrides.setdefault(identity, bucket)  # the first override naming it
        self._buckets: dict[str | None, Gcra] = {}
        self._last_sweep = clock()

    def __repr__(self) -> str:
        return f"<LocalRateLimiter {self.config.name} identities={len(self._buckets)}>"

    def __len__(self) -> int:
        """The number of per-identity buckets held."""
        return len(self._buckets)

    def check(self, client_id: str | None) -> tuple[float, str]:
        now = self._clock()
        limit: Gcra | None = None
        kind = ""
        if client_id is not None:
            limit = self._overrides.get(client_id)
            kind = OVERRIDE
        rate = self._identity
        if limit is None and rate is not None:
            limit = self._buckets.get(client_id)
            if limit is None:
                limit = self._new_bucket(client_id, now, rate)
            kind = IDENTITY
        total = self._total
        wait_total = total.wait(now) if total is not None else 0.0
        wait_limit = limit.wait(now) if limit is not None else 0.0
        if wait_total > 0.0:
            return (max(wait_total, wait_limit), TOTAL)
        if wait_limit > 0.0:
            return (wait_limit, kind)
        if total is not None:
            total.take(now)
        if limit is not None:
            limit.take(now)
        return _ALLOWED

    def _new_bucket(self, client_id: str | None, now: float, rate: float) -> Gcra:
        buckets = self._buckets
        if now - self._last_sweep >= self.idle or len(buckets) >= self.max_identities:
            self.sweep(now)
        while len(buckets) >= self.max_identities:
            del buckets[next(iter(buckets))]
        bucket = buckets[client_id] = Gcra(rate)
        return bucket

    def sweep(self, now: float) -> int:
        """Forget the per-identity buckets that have refilled by ``now``; how many."""
        self._last_sweep = now
        full = [key for key, bucket in self._buckets.items() if bucket.full(now)]
        for key in full:
            del self._buckets[key]
        return len(full)


__all__ = [
    "IDENTITY",
    "OVERRIDE",
    "TOTAL",
    "Gcra",
    "LocalRateLimiter",
    "check_config",
]
