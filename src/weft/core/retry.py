"""Retry mechanisms: annotation parsing, which requests may be retried, backoff, retry budget.

Pure functions and one small state machine, shared by the control plane (which parses
``retry.weft.io/*`` and ``timeout.weft.io/*`` annotations into a :class:`~weft.policy.RetryPolicy`)
and the proxy (which decides per request whether a retry is allowed and when):

- :func:`parse_http_conditions` / :func:`parse_duration` / :func:`parse_timeout`: annotation
  values to policy fields, with ``ValueError`` naming the bad token or text.
- :func:`is_retryable_status`, :data:`IDEMPOTENT_METHODS`, :func:`may_retry`: whether a response
  status is retryable under a policy, and whether a request is safe to send again.
- :func:`backoff_delay`: the pause before a retry (exponential, full jitter).
- :class:`RetryBudget`: Finagle/Linkerd-style budget so that retries can never multiply the
  load on a failing backend (see the class for the exact formula).

Sans-I/O: no awaits; the clock and the RNG are injected. Not for: sending the retried request,
buffering its body or sleeping the backoff (the proxy's job), nor failure accrual
(``weft.core.accrual``).
"""

from __future__ import annotations

import math
import random
import re
from collections import deque
from collections.abc import Callable

from weft.policy import RetryBudgetConfig, RetryPolicy

# -- annotation parsing -----------------------------------------------------------------------

_NAMED_CONDITIONS: dict[str, tuple[int, int]] = {
    "gateway-error": (502, 504),
}
_CLASS_RE = re.compile(r"([1-5])xx")
_CODE_RE = re.compile(r"[0-9]{3}")
_RANGE_RE = re.compile(r"([0-9]{3})\s*-\s*([0-9]{3})")


def parse_http_conditions(text: str) -> tuple[tuple[int, int], ...]:
    """Parse a ``retry.weft.io/http`` value into inclusive status ranges.

    Tokens, separated by commas, case-insensitive, surrounding spaces ignored: ``5xx`` (any class
    ``1xx`` .. ``5xx``), ``gateway-error`` (502-504), a code (``500``) or a range (``500-504``).
    Codes must be within 100..599 and ranges ordered. The result is sorted with overlapping and
    adjacent ranges merged (``"500,501-503"`` is ``((500, 503),)``), ready for
    ``RetryPolicy.statuses``. Raises ``ValueError`` naming the first bad token; an empty value or
    an empty token (``"5xx,,500"``) is an error too.
    """
    if not text.strip():
        raise ValueError(f"retry http conditions: empty value {text!r}")
    ranges: list[tuple[int, int]] = []
    for raw in text.split(","):
        token = raw.strip().lower()
        ranges.append(_parse_condition(token, raw, text))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if merged and lo <= merged[-1][1] + 1:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return tuple(merged)


def _parse_condition(token: str, raw: str, text: str) -> tuple[int, int]:
    named = _NAMED_CONDITIONS.get(token)
    if named is not None:
        return named
    m = _CLASS_RE.fullmatch(token)
    if m is not None:
        first = int(m.group(1)) * 100
        return (first, first + 99)
    if _CODE_RE.fullmatch(token):
        code = int(token)
        _check_code(code, raw, text)
        return (code, code)
    m = _RANGE_RE.fullmatch(token)
    if m is not None:
        lo, hi = int(m.group(1)), int(m.group(2))
        _check_code(lo, raw, text)
        _check_code(hi, raw, text)
        if lo > hi:
            raise ValueError(
                f"retry http conditions: range {raw.strip()!r} in {text!r} is reversed"
            )
        return (lo, hi)
    raise ValueError(
        f"retry http conditions: bad token {raw.strip()!r} in {text!r} "
        "(expected 5xx, gateway-error, a status code or a range like 500-504)"
    )


#: The gRPC statuses ``retry.weft.io/grpc`` may name (Linkerd's and Envoy's retryable set).
GRPC_CONDITIONS = (
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
)


def parse_grpc_conditions(text: str) -> tuple[str, ...]:
    """Parse a ``retry.weft.io/grpc`` value: comma-separated names from :data:`GRPC_CONDITIONS`
    (case-insensitive, spaces ignored), sorted without duplicates, for ``RetryPolicy.grpc``.
    Raises ``ValueError`` naming the first bad token; an empty value or token is an error."""
    if not text.strip():
        raise ValueError(f"retry grpc conditions: empty value {text!r}")
    names: set[str] = set()
    for raw in text.split(","):
        token = raw.strip().lower()
        if token not in GRPC_CONDITIONS:
            raise ValueError(
                f"retry grpc conditions: bad token {raw.strip()!r} in {text!r} "
                f"(expected {', '.join(GRPC_CONDITIONS)})"
            )
        names.add(token)
    return tuple(sorted(names))


def _check_code(code: int, raw: str, text: str) -> None:
    if not 100 <= code <= 599:
        raise ValueError(
            f"retry http conditions: status {code} in token {raw.strip()!r} of {text!r} "
            "is outside 100..599"
        )


# Go / Gateway API durations: one or more <number><unit>, e.g. "1m30s", "1.5s", "250ms".
_DURATION_UNITS: dict[str, float] = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign, as Go accepts
    "\u03bcs": 1e-6,  # Greek mu, as Go accepts
    "ns": 1e-9,
}
_DURATION_PART_RE = re.compile("([0-9]+(?:\\.[0-9]*)?|\\.[0-9]+)(h|ms|m|s|us|\u00b5s|\u03bcs|ns)")
# The longest duration accepted: a day is far beyond any sensible request timeout and keeps the
# values finite and comparable.
MAX_DURATION = 86400.0


def parse_duration(text: str) -> float:
    """Parse a duration annotation value into seconds.

    Go / Gateway API syntax: a sequence of ``<number><unit>`` with units ``h``, ``m``, ``s``,
    ``ms``, ``us`` (or ``\u00b5s``), ``ns``: ``"100ms"``, ``"1s"``, ``"1m"``, ``"1.5s"``,
    ``"1m30s"``. Surrounding spaces are ignored; units are case-sensitive (``"1M"`` is an error,
    as in Go). A bare ``"0"`` is zero; any other number needs a unit. Negative values and values
    over :data:`MAX_DURATION` (one day) are errors. ``"0s"`` is ``0.0``: whether zero means
    "disabled" is the caller's choice (see :func:`parse_timeout`). Raises ``ValueError`` naming
    the text.
    """
    s = text.strip()
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"duration: empty value {text!r}")
    total = 0.0
    pos = 0
    n = len(s)
    while pos < n:
        m = _DURATION_PART_RE.match(s, pos)
        if m is None:
            raise ValueError(
                f"duration: invalid {text!r} (expected e.g. 100ms, 1s, 1.5s, 1m30s; "
                "units h, m, s, ms, us, ns)"
            )
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not (math.isfinite(total) and total <= MAX_DURATION):
        raise ValueError(f"duration: {text!r} is longer than {MAX_DURATION:.0f} s")
    return total


def parse_timeout(text: str) -> float | None:
    """Parse a timeout annotation (``timeout.weft.io/*``, ``retry.weft.io/timeout``) or a
    Gateway API ``timeouts.*`` value: a duration as :func:`parse_duration`, where zero means
    "no timeout" and gives ``None`` (Gateway API: ``0s`` disables the timeout)."""
    seconds = parse_duration(text)
    return seconds if seconds > 0.0 else None


# -- which requests may be retried ------------------------------------------------------------

#: Methods whose repetition has the same intended effect as one request (RFC 9110, 9.2.2).
IDEMPOTENT_METHODS: frozenset[bytes] = frozenset(
    (b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE")
)

#: Bodies larger than this are never retried: the proxy would have to buffer them for replay.
MAX_RETRY_BODY = 64 * 1024


def is_retryable_status(policy: RetryPolicy, status: int) -> bool:
    """Whether a response with ``status`` may be retried under ``policy`` (its status ranges)."""
    for lo, hi in policy.statuses:  # noqa: SIM110 (hot path: a loop beats any() + generator)
        if lo <= status <= hi:
            return True
    return False


def may_retry(
    policy: RetryPolicy, method: bytes, body_len: int | None, body_complete: bool
) -> bool:
    """Whether a request is safe to send again under ``policy``.

    The method must be idempotent (:data:`IDEMPOTENT_METHODS`, case-sensitive as HTTP methods
    are) unless ``policy.all_methods``. ``body_len`` is the declared body length
    (``Content-Length``; 0 for a request without a body), or ``None`` for a body of unknown
    length (chunked). ``body_complete`` means the whole body has been received into the proxy's
    replay buffer, which holds at most :data:`MAX_RETRY_BODY` bytes (so an unknown-length body
    that outgrew it is never complete). Then:

    - a declared length over :data:`MAX_RETRY_BODY` is never retried;
    - a declared length up to it is retryable (the proxy buffers that much while streaming);
    - an unknown length is retryable only once ``body_complete``.
    """
    if not policy.all_methods and method not in IDEMPOTENT_METHODS:
        return False
    if body_len is None:
        return body_complete
    return 0 <= body_len <= MAX_RETRY_BODY


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    Exponential with full jitter: uniform in ``[backoff_min, ceiling]`` where ``ceiling =
    min(backoff_max, backoff_min * 2 ** (attempt + 1))``; so the first retry waits 25..50 ms
    with the defaults, and no retry waits longer than ``backoff_max`` (250 ms).
    """
    if attempt < 0:
        raise ValueError(f"retry backoff attempt must be >= 0, got {attempt!r}")
    lo = policy.backoff_min
    ceiling = min(policy.backoff_max, lo * 2.0 ** min(attempt + 1, 64))
    if ceiling <= lo:
        return lo
    return lo + (ceiling - lo) * rng.random()


# -- retry budget -----------------------------------------------------------------------------

# Budget arithmetic is in integer micro-tokens, so it is exact (no float drift over millions of
# requests): a request deposits ``round(ratio * _SCALE)``, a retry costs ``_SCALE``.
_SCALE = 1_000_000
# The ttl window is a ring of this many buckets (each ttl / _BUCKETS wide, 1 s with the default
# ttl of 10 s): tokens expire bucket by bucket.
_BUCKETS = 10


class RetryBudget:
    """Limits retries to a fraction of requests plus a small reserve, over a sliding window.

    Every original request deposits (:meth:`record_request`); every retry must withdraw
    (:meth:`try_withdraw`) and is not sent when that fails. Time is split into buckets of
    ``w = ttl / 10`` seconds, and a *window* is any 10 consecutive buckets. With ``D`` the
    requests and ``W`` the successful withdrawals in a window, the budget guarantees, for
    *every* window::

        W <= ratio * D + min_per_second * ttl

    (``ratio`` resolved to 1e-6.) A withdrawal at time ``t`` succeeds only if it keeps this true
    for every window containing ``t``, counting only what happened so far; that is, for each
    ``k`` in 1..10, the last ``k`` buckets (up to ``t``) must hold ``ratio * D_k +
    min_per_second * ttl - W_k >= 1``. Requests that arrive later only help.

    So deposits expire after ``ttl`` (between ``ttl - w`` and ``ttl``), the reserve
    ``min_per_second * ttl`` lets a low-traffic service retry at all, and under a steady load
    of ``rps`` requests that all fail, retries add at most ``ratio + min_per_second / rps`` of
    extra load on average. This is Finagle's and Linkerd's budget (ratio 0.2, 10 per second,
    10 s) with the check applied to every window rather than only the latest, so a burst of
    requests cannot fund retries after it has aged out. (So a retry in a bucket with no
    requests yet draws on the reserve: with ``min_per_second = 0`` it is refused.)

    Cost: :meth:`record_request` and :meth:`try_withdraw` are O(1); crossing into a new bucket
    costs O(10), once per bucket. Not thread-safe (one per event loop).
    """

    __slots__ = (
        "_clock",
        "_config",
        "_cur",
        "_deposit",
        "_epoch",
        "_inv_width",
        "_older",
        "_older_min",
        "_reserve",
    )

    def __init__(self, config: RetryBudgetConfig, *, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        self._deposit = round(config.ratio * _SCALE)
        self._reserve = round(config.min_per_second * config.ttl * _SCALE)
        self._inv_width = _BUCKETS / config.ttl
        self._epoch = math.floor(clock() * self._inv_width)
        self._cur = 0  # net micro-tokens of the current bucket (deposits - withdrawals)
        # Net micro-tokens of the 9 previous buckets, oldest first.
        self._older: deque[int] = deque((0,) * (_BUCKETS - 1), maxlen=_BUCKETS - 1)
        # min(0, every suffix sum of ``_older``): the tightest window, bar the current bucket.
        self._older_min = 0

    @property
    def config(self) -> RetryBudgetConfig:
        return self._config

    def _advance(self, epoch: int) -> None:
        steps = epoch - self._epoch
        if steps <= 0:  # same bucket (or a clock that stepped back: stay in this bucket)
            return
        older = self._older
        older.append(self._cur)
        for _ in range(min(steps - 1, _BUCKETS - 1)):
            older.append(0)
        self._cur = 0
        self._epoch = epoch
        total = 0
        lowest = 0
        for net in reversed(older):
            total += net
            if total < lowest:
                lowest = total
        self._older_min = lowest

    def record_request(self) -> None:
        """An original request (not a retry) was sent: deposit ``ratio`` of a retry."""
        epoch = math.floor(self._clock() * self._inv_width)
        if epoch != self._epoch:
            self._advance(epoch)
        self._cur += self._deposit

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; ``False`` (and nothing taken) when it is spent."""
        epoch = math.floor(self._clock() * self._inv_width)
        if epoch != self._epoch:
            self._advance(epoch)
        if self._reserve + self._cur + self._older_min >= _SCALE:
            self._cur -= _SCALE
            return True
        return False

    def balance(self) -> float:
        """Retries that :meth:`try_withdraw` would grant now, with no new request (a float:
        fractions of a retry accumulate from deposits)."""
        epoch = math.floor(self._clock() * self._inv_width)
        if epoch != self._epoch:
            self._advance(epoch)
        return max(0, self._reserve + self._cur + self._older_min) / _SCALE

    def __repr__(self) -> str:
        c = self._config
        return (
            f"<RetryBudget ratio={c.ratio} min_per_second={c.min_per_second} ttl={c.ttl} "
            f"balance={self.balance():.2f}>"
        )
