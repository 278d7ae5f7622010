"""The decisions of supervising a container, as pure functions and small classes: what to do
after an exit (the pod's ``restartPolicy``), the restart backoff (reset after a minute of good
running), crash loops, and readiness from probe results with Kubernetes' thresholds.

Tested without processes; :class:`weft.runtime.local.pod.PodRunner` and the control plane's
supervisor (:mod:`weft.runtime.local.supervisor`) act on them.

Not for: processes, probes or timers themselves.
"""

from __future__ import annotations

import enum
import random
from datetime import UTC, datetime

from weft.core.backoff import ExponentialBackoff

# A container that ran this long without exiting is healthy again: its backoff starts over.
BACKOFF_RESET_AFTER = 60.0


class AfterExit(enum.Enum):
    RESTART = "restart"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def after_exit(policy: str, exit_code: int) -> AfterExit:
    """What a container's exit means under the pod's ``restartPolicy`` (Kubernetes semantics)."""
    if policy == "Always":
        return AfterExit.RESTART
    if policy == "OnFailure":
        return AfterExit.SUCCEEDED if exit_code == 0 else AfterExit.RESTART
    if policy == "Never":
        return AfterExit.SUCCEEDED if exit_code == 0 else AfterExit.FAILED
    raise ValueError(f"unknown restartPolicy {policy!r}")


def exit_code_of(returncode: int) -> int:
    """Shell convention: killed by signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class Readiness:
    """Probe results -> ready, with Kubernetes' thresholds (one success makes ready by default,
    three failures in a row make unready)."""

    __slots__ = ("_failures", "_successes", "failure_threshold", "ready", "success_threshold")

    def __init__(self, success_threshold: int = 1, failure_threshold: int = 3) -> None:
        if success_threshold < 1 or failure_threshold < 1:
            raise ValueError("thresholds must be >= 1")
        self.success_threshold = success_threshold
        self.failure_threshold = failure_threshold
        self.ready = False
        self._successes = 0
        self._failures = 0

    def observe(self, ok: bool) -> bool:
        """Record one probe result; returns whether readiness changed."""
        before = self.ready
        if ok:
            self._failures = 0
            self._successes += 1
            if self._successes >= self.success_threshold:
                self.ready = True
        else:
            self._successes = 0
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self.ready = False
        return self.ready != before

    def reset(self) -> None:
        self.ready = False
        self._successes = 0
        self._failures = 0

    def __repr__(self) -> str:
        return f"<Readiness ready={self.ready} ok={self._successes} fail={self._failures}>"


def restart_backoff(rng: random.Random | None = None) -> ExponentialBackoff:
    """The restart backoff of everything the local runtime supervises (containers, sidecars,
    the control plane): 1 s, 2 s, 4 s ... up to 60 s, jitter 10%."""
    return ExponentialBackoff(base=1.0, maximum=60.0, jitter=0.1, rng=rng or random.Random())


class CrashLoop:
    """Restart delays of one supervised process (a container, the control plane): exponential
    backoff, forgotten after a good run."""

    __slots__ = ("_attempt", "backoff", "reset_after")

    def __init__(
        self, backoff: ExponentialBackoff, reset_after: float = BACKOFF_RESET_AFTER
    ) -> None:
        self.backoff = backoff
        self.reset_after = reset_after
        self._attempt = 0

    def next_delay(self, ran_for: float) -> float:
        """Delay before the next start, given how long the last run lasted."""
        if ran_for >= self.reset_after:
            self._attempt = 0
        delay = self.backoff.delay(self._attempt)
        self._attempt += 1
        return delay

    @property
    def failures(self) -> int:
        """Exits since the last good run (the last one included): 2 or more is a crash loop."""
        return self._attempt

    def __repr__(self) -> str:
        return f"<CrashLoop attempt={self._attempt}>"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
