"""Failure accrual (circuit breaking) per endpoint: consecutive failures eject it for a while.

:class:`ConsecutiveFailures` is Linkerd's consecutive-failures breaker for one endpoint, as a
state machine:

- ``ACTIVE``: requests flow. ``max_failures`` failures in a row eject the endpoint.
- ``EJECTED``: no request until the penalty is over. The penalty is ``min_penalty * 2**n``
  (``n`` = ejections since the last success) capped at ``max_penalty``, plus a random extra of
  up to ``jitter`` times that, still capped at ``max_penalty`` (Linkerd: 1 s .. 60 s, 0.5).
- ``PROBING``: the penalty is over; exactly one real request (the probe) is let through. Its
  success makes the endpoint ``ACTIVE`` again (and resets the penalty); its failure ejects it
  again with a doubled penalty.

:class:`AccrualSet` keeps one breaker per endpoint key of a balancer and tells the proxy which
endpoints may take a request and whether all of them are ejected (fail fast with 503).

The caller classifies: a failure is an HTTP 5xx or a connection error (for gRPC, the statuses of
``weft.policy``'s docs); everything else is a success. Reports that arrive while an endpoint is
ejected (requests sent before the ejection) are ignored; while probing, the first report after
the probe was admitted decides, as in Linkerd. A probe whose report never comes (the caller
cancelled it without :meth:`~ConsecutiveFailures.on_cancel`) is given up after ``max_penalty``
and another probe is admitted.

Sans-I/O: no awaits; the clock and the RNG are injected; not thread-safe (one per event loop).
Not for: picking among endpoints (``weft.core.balancer``), retries (``weft.core.retry``),
connect backoff (the balancer's), nor classifying responses.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from weft.policy import FailureAccrualConfig

K = TypeVar("K", bound=Hashable)


class State(enum.StrEnum):
    """Breaker states; the values are the ``state`` label of the endpoint-state metric."""

    ACTIVE = "active"
    EJECTED = "ejected"
    PROBING = "probing"


class ConsecutiveFailures:
    """One endpoint's consecutive-failures breaker (see the module docstring)."""

    __slots__ = (
        "_clock",
        "_config",
        "_ejections",
        "_failures",
        "_probe_at",
        "_random",
        "_state",
        "_until",
    )

    def __init__(
        self,
        config: FailureAccrualConfig,
        *,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._random = (rng if rng is not None else random.Random()).random
        self._state = State.ACTIVE
        self._failures = 0  # consecutive failures while ACTIVE
        self._ejections = 0  # ejections since the last success: the penalty's exponent
        self._until = 0.0  # EJECTED until then
        self._probe_at: float | None = None  # PROBING: when the probe was admitted

    @property
    def config(self) -> FailureAccrualConfig:
        return self._config

    @property
    def state(self) -> State:
        """The current state (an ejection whose penalty is over reads as ``PROBING``)."""
        if self._state is State.EJECTED and self._clock() >= self._until:
            self._start_probing()
        return self._state

    @property
    def ejected_until(self) -> float | None:
        """When the current ejection ends (clock time), or ``None`` when not ejected."""
        return self._until if self.state is State.EJECTED else None

    @property
    def failures(self) -> int:
        """Consecutive failures counted while active."""
        return self._failures

    def penalty(self, ejections: int) -> float:
        """The penalty (seconds) of the ejection following ``ejections`` earlier ones since the
        last success: within ``[min_penalty, max_penalty]``."""
        c = self._config
        base = min(c.max_penalty, c.min_penalty * 2.0 ** min(ejections, 64))
        if c.jitter:
            base += min(c.max_penalty - base, base * c.jitter * self._random())
        return base

    def _eject(self, now: float) -> None:
        self._until = now + self.penalty(self._ejections)
        self._ejections += 1
        self._failures = 0
        self._probe_at = None
        self._state = State.EJECTED

    def _start_probing(self) -> None:
        self._state = State.PROBING
        self._probe_at = None

    def available(self) -> bool:
        """Whether a request may be sent to this endpoint now. ``True`` when active; when
        probing and no probe is out, this admits the probe (takes the slot), so call it only
        for a request that will be sent."""
        state = self._state
        if state is State.ACTIVE:
            return True
        now = self._clock()
        if state is State.EJECTED:
            if now < self._until:
                return False
            self._start_probing()
        probe_at = self._probe_at
        if probe_at is None or now - probe_at >= self._config.max_penalty:
            self._probe_at = now
            return True
        return False

    def would_admit(self) -> bool:
        """Whether :meth:`available` would return ``True`` now, without taking the probe slot."""
        state = self.state
        if state is State.ACTIVE:
            return True
        if state is State.EJECTED:
            return False
        probe_at = self._probe_at
        return probe_at is None or self._clock() - probe_at >= self._config.max_penalty

    def on_success(self) -> None:
        """A request to this endpoint succeeded."""
        state = self._state
        if state is State.ACTIVE:
            self._failures = 0
            self._ejections = 0
        elif state is State.PROBING and self._probe_at is not None:
            self._state = State.ACTIVE
            self._failures = 0
            self._ejections = 0
            self._probe_at = None
        # EJECTED, or PROBING before the probe went out: a stale report, ignored.

    def on_failure(self) -> None:
        """A request to this endpoint failed (5xx or connection error)."""
        state = self._state
        if state is State.ACTIVE:
            self._failures += 1
            if self._failures >= self._config.max_failures:
                self._eject(self._clock())
        elif state is State.PROBING and self._probe_at is not None:
            self._eject(self._clock())

    def on_cancel(self) -> None:
        """A request admitted by :meth:`available` ended without a result (cancelled by the
        client, or refused before it was sent): while probing, another probe may go."""
        if self._state is State.PROBING:
            self._probe_at = None

    def __repr__(self) -> str:
        state = self.state
        if state is State.EJECTED:
            extra = f" until={self._until:.3f}"
        elif state is State.PROBING:
            extra = f" probe_out={self._probe_at is not None}"
        else:
            extra = f" failures={self._failures}"
        return f"<ConsecutiveFailures {state.value}{extra} ejections={self._ejections}>"


class AccrualSet(Generic[K]):
    """One :class:`ConsecutiveFailures` per endpoint key, following the balancer's membership.

    A key the set does not know (not yet in :meth:`update`) is treated as active.
    """

    __slots__ = ("_breakers", "_clock", "_config", "_rng")

    def __init__(
        self,
        config: FailureAccrualConfig,
        *,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._breakers: dict[K, ConsecutiveFailures] = {}

    @property
    def config(self) -> FailureAccrualConfig:
        return self._config

    def update(self, keys: Iterable[K]) -> None:
        """Replace the membership; endpoints that stay keep their state, new ones are active."""
        old = self._breakers
        new: dict[K, ConsecutiveFailures] = {}
        for key in keys:
            if key in new:
                continue
            b = old.get(key)
            new[key] = (
                b
                if b is not None
                else ConsecutiveFailures(self._config, clock=self._clock, rng=self._rng)
            )
        self._breakers = new

    def available(self, key: K) -> bool:
        """Whether a request may go to ``key`` now (takes the probe slot when probing; see
        :meth:`ConsecutiveFailures.available`)."""
        b = self._breakers.get(key)
        return b is None or b.available()

    def record(self, key: K, success: bool) -> None:
        """Report the outcome of a request to ``key`` (ignored for an unknown key)."""
        b = self._breakers.get(key)
        if b is not None:
            if success:
                b.on_success()
            else:
                b.on_failure()

    def cancel(self, key: K) -> None:
        """A request admitted to ``key`` ended without a result."""
        b = self._breakers.get(key)
        if b is not None:
            b.on_cancel()

    def all_ejected(self) -> bool:
        """Whether no endpoint could take a request now (so the proxy fails fast with 503).
        ``False`` for an empty set: having no endpoints is not circuit breaking."""
        breakers = self._breakers
        if not breakers:
            return False
        return not any(b.would_admit() for b in breakers.values())

    def next_change(self) -> float | None:
        """The earliest time an ejected endpoint becomes probeable, or ``None``."""
        times = [t for b in self._breakers.values() if (t := b.ejected_until) is not None]
        return min(times) if times else None

    def states(self) -> dict[K, str]:
        """Every endpoint's state value (``active``, ``ejected``, ``probing``) for metrics."""
        return {key: b.state.value for key, b in self._breakers.items()}

    def __getitem__(self, key: K) -> ConsecutiveFailures:
        return self._breakers[key]

    def __contains__(self, key: object) -> bool:
        return key in self._breakers

    def __len__(self) -> int:
        return len(self._breakers)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for state in self.states().values():
            counts[state] = counts.get(state, 0) + 1
        shown = " ".join(f"{s}={n}" for s, n in sorted(counts.items()))
        return f"<AccrualSet {shown or 'empty'}>"
