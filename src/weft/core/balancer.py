"""Power-of-two-choices load balancing over peak-EWMA latency (Linkerd's balancer).

A :class:`Balancer` holds one :class:`PeakEwma` per endpoint key. :meth:`Balancer.pick` draws two
distinct endpoints at random and returns the one with the lower *cost*: its latency estimate
(decayed to now) times ``pending + 1``. The estimate is a *peak* EWMA: a slower observation
replaces it at once, a faster one pulls it down gradually (``w = exp(-elapsed / decay)``), so a
slow or overloaded endpoint is avoided quickly and regains traffic slowly. Defaults follow Linkerd:
RTT 30 ms for an endpoint with no observation yet, decay 10 s.

The caller reports what happens: :meth:`~Balancer.start` / :meth:`~Balancer.finish` around each
request (HTTP) or connection (opaque TCP), :meth:`~Balancer.failed` when connecting to the
endpoint fails (it then leaves the *ready* set for an exponential backoff) and
:meth:`~Balancer.succeeded_connect` when a connection is established (resets that backoff).

**Failures count against an endpoint.** A request that failed (``finish(..., success=False)``: a
5xx, a server-error gRPC status, an upstream that broke mid-request) is observed as ``max(rtt,
failure_penalty)``, 1 s by default. Latency alone rewards an endpoint that fails fast: an app that
died behind its pod's proxy is answered 502 in a fraction of a millisecond, looks like the fastest
endpoint and draws most of the traffic. With the penalty, one failure makes the endpoint's cost jump
(a peak is taken at once), so P2C passes it over while its estimate decays (``decay * ln(penalty /
the others' cost)``: about 35 s against 30 ms endpoints, a minute against 1 ms ones); then real
traffic probes it: a success pulls the estimate down to its latency, another failure sends it back
up. Why a fixed penalty: it never escalates (a penalty relative to the other endpoints' estimates
grows without bound when every endpoint fails, each failure raising the reference of the next), it
costs nothing per failure, and it only needs to exceed what a healthy endpoint of a mesh costs by a
wide margin; a service whose successes take about a second or more needs a larger one (a slow
failure is still observed at its own length). Finagle's and Linkerd's peak-EWMA observe every
response the same way and leave failures to failure accrual (which Weft also has, when a policy
enables it: ``weft.core.accrual``), so a fast-failing endpoint draws traffic until enough
consecutive failures eject it; gRPC's weighted round robin, like this, puts failures in the cost
itself (``error_utilization_penalty``). A connect that fails is not observed (the caller finishes it
with ``observe=False``): it backs the endpoint off instead (:meth:`failed`), so an app that restarts
serves again as soon as it accepts, rather than a minute later.

Sans-I/O: no awaits, the clock and the RNG are injected; a :class:`Balancer` is not thread-safe
(one per event loop). Not for: discovery (membership comes from :meth:`~Balancer.update`),
connection pooling, retries, classifying responses (the caller says ``success``) or failure
accrual (consecutive-failures ejection, ``weft.core.accrual``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from weft.core.backoff import ExponentialBackoff

K = TypeVar("K", bound=Hashable)

_INF = math.inf


class PeakEwma:
    """Per-endpoint state: latency estimate, outstanding requests and connect backoff."""

    __slots__ = ("created", "estimate", "failures", "pending", "ready_at", "updated")

    def __init__(self, default_rtt: float, now: float) -> None:
        self.estimate = default_rtt  # seconds, as of ``updated``
        self.updated = now
        self.pending = 0
        self.created = now
        self.failures = 0  # consecutive connect failures
        self.ready_at = -_INF  # in connect backoff until then

    def decayed(self, now: float, decay: float) -> float:
        """The estimate decayed towards zero since the last update (so idle endpoints get
        probed again)."""
        elapsed = now - self.updated
        if elapsed <= 0.0:
            return self.estimate
        return self.estimate * math.exp(-elapsed / decay)

    def cost(self, now: float, decay: float) -> float:
        return self.decayed(now, decay) * (self.pending + 1)

    def observe(self, rtt: float, now: float, decay: float) -> None:
        if rtt > self.estimate:
            self.estimate = rtt  # peak: the worst recent latency counts at once
        else:
            elapsed = now - self.updated
            w = math.exp(-elapsed / decay) if elapsed > 0.0 else 1.0
            self.estimate = self.estimate * w + rtt * (1.0 - w)
        if now > self.updated:
            self.updated = now

    def __repr__(self) -> str:
        return (
            f"<PeakEwma pending={self.pending} estimate={self.estimate * 1000:.1f}ms "
            f"failures={self.failures}>"
        )


class Balancer(Generic[K]):
    """P2C over peak-EWMA cost, skipping endpoints in connect backoff while any is ready."""

    __slots__ = (
        "_backoff",
        "_clock",
        "_decay",
        "_default_rtt",
        "_endpoints",
        "_keys",
        "_next_wake",
        "_penalty",
        "_random",
        "_ready",
    )

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        default_rtt: float = 0.030,
        decay: float = 10.0,
        backoff: ExponentialBackoff | None = None,
        failure_penalty: float = 1.0,
    ) -> None:
        if not (math.isfinite(default_rtt) and default_rtt > 0):
            raise ValueError(f"balancer default_rtt must be finite and > 0, got {default_rtt!r}")
        if not (math.isfinite(decay) and decay > 0):
            raise ValueError(f"balancer decay must be finite and > 0, got {decay!r}")
        if not (math.isfinite(failure_penalty) and failure_penalty > 0):
            raise ValueError(
                f"balancer failure_penalty must be finite and > 0, got {failure_penalty!r}"
            )
        self._clock = clock
        rng = rng if rng is not None else random.Random()
        self._random = rng.random
        self._default_rtt = float(default_rtt)
        self._decay = float(decay)
        self._penalty = float(failure_penalty)  # seconds: the least latency a failure observes
        self._backoff = backoff if backoff is not None else ExponentialBackoff(rng=rng)
        self._endpoints: dict[K, PeakEwma] = {}
        self._keys: list[K] = []
        # Cached ready keys; valid until ``_next_wake``, the earliest end of a backoff.
        self._ready: list[K] = []
        self._next_wake = _INF

    # -- membership ---------------------------------------------------------------------------

    def update(self, keys: Iterable[K]) -> None:
        """Replace the membership; endpoints that stay keep their statistics and backoff."""
        now = self._clock()
        old = self._endpoints
        new: dict[K, PeakEwma] = {}
        for key in keys:
            if key in new:
                continue
            ep = old.get(key)
            new[key] = ep if ep is not None else PeakEwma(self._default_rtt, now)
        self._endpoints = new
        self._keys = list(new)
        self._refresh(now)

    def _refresh(self, now: float) -> None:
        ready: list[K] = []
        wake = _INF
        for key, ep in self._endpoints.items():
            if ep.ready_at <= now:
                ready.append(key)
            elif ep.ready_at < wake:
                wake = ep.ready_at
        self._ready = ready
        self._next_wake = wake

    # -- picking ------------------------------------------------------------------------------

    def pick(self) -> K | None:
        """Choose an endpoint, or ``None`` when there is none.

        Two distinct candidates are drawn from the ready endpoints (all endpoints when none is
        ready, so a request can still try) and the cheaper one wins.
        """
        now = self._clock()
        if now >= self._next_wake:
            self._refresh(now)
        cands = self._ready or self._keys
        n = len(cands)
        if n <= 1:
            return cands[0] if n else None
        rnd = self._random
        i = int(rnd() * n)
        j = int(rnd() * (n - 1))
        if j >= i:
            j += 1
        a = cands[i]
        b = cands[j]
        eps = self._endpoints
        decay = self._decay
        if eps[b].cost(now, decay) < eps[a].cost(now, decay):
            return b
        return a

    # -- reporting ----------------------------------------------------------------------------

    def start(self, key: K) -> float:
        """A request (or connection) to ``key`` begins; returns its start time for
        :meth:`finish`."""
        now = self._clock()
        ep = self._endpoints.get(key)
        if ep is not None:
            ep.pending += 1
        return now

    def finish(self, key: K, started: float, *, success: bool = True, observe: bool = True) -> None:
        """The request started at ``started`` is done: one fewer pending, and its latency is
        observed. ``success=False`` (the request failed because of the endpoint) observes at
        least the failure penalty, so a fast failure does not make the endpoint look fast (see
        the module's docstring). With ``observe=False`` only the pending count drops: for work
        whose outcome says nothing about the endpoint (a connection dialed before the client
        spoke, a pooled connection found closed). Ignored when ``key`` was removed since, or
        re-added after the request started (the request belonged to the old entry).
        """
        ep = self._endpoints.get(key)
        if ep is None or started < ep.created:
            return
        if ep.pending > 0:
            ep.pending -= 1
        if not observe:
            return
        now = self._clock()
        rtt = now - started
        if not success:
            if rtt < self._penalty:
                rtt = self._penalty
        elif rtt < 0.0:
            rtt = 0.0
        ep.observe(rtt, now, self._decay)

    def penalize(self, key: K, started: float) -> None:
        """The request started at ``started``, whose latency :meth:`finish` observed already
        (at its response headers), failed after all (a failing gRPC status in its trailers):
        observe the failure penalty now. ``pending`` is unchanged. Ignored as :meth:`finish`
        is for a key removed or re-added since."""
        ep = self._endpoints.get(key)
        if ep is None or started < ep.created:
            return
        ep.observe(self._penalty, self._clock(), self._decay)

    def failed(self, key: K) -> None:
        """Connecting to ``key`` failed: it leaves the ready set for a backoff delay that doubles
        with each consecutive failure. ``pending`` is unchanged (the caller still calls
        :meth:`finish` for the request it started).
        """
        ep = self._endpoints.get(key)
        if ep is None:
            return
        now = self._clock()
        if ep.ready_at > now:
            # Already backing off: this failure comes from an attempt made before the backoff
            # began (concurrent requests) or from the all-unready fallback; counting it would
            # escalate the backoff for one outage many times over.
            return
        delay = self._backoff.delay(ep.failures)
        ep.failures += 1
        ep.ready_at = now + delay
        self._refresh(now)

    def succeeded_connect(self, key: K) -> None:
        """A connection to ``key`` was established: reset its failure backoff."""
        ep = self._endpoints.get(key)
        if ep is None:
            return
        ep.failures = 0
        if ep.ready_at != -_INF:
            ep.ready_at = -_INF
            self._refresh(self._clock())

    # -- introspection ------------------------------------------------------------------------

    def ready(self, key: K) -> bool:
        """Whether ``key`` is a member and not in connect backoff."""
        ep = self._endpoints.get(key)
        return ep is not None and ep.ready_at <= self._clock()

    def stats(self) -> list[tuple[K, int, float, bool]]:
        """``(key, pending, estimate_s, ready)`` per endpoint; the estimate is decayed to now."""
        now = self._clock()
        decay = self._decay
        return [
            (key, ep.pending, ep.decayed(now, decay), ep.ready_at <= now)
            for key, ep in self._endpoints.items()
        ]

    def __len__(self) -> int:
        return len(self._endpoints)

    def __contains__(self, key: object) -> bool:
        return key in self._endpoints

    def __repr__(self) -> str:
        rows = self.stats()
        n_ready = sum(1 for row in rows if row[3])
        parts = ", ".join(
            f"{key!r}: pending={pending} est={est * 1000:.1f}ms {'ready' if ok else 'backoff'}"
            for key, pending, est, ok in rows
        )
        return f"<Balancer endpoints={len(rows)} ready={n_ready} [{parts}]>"
