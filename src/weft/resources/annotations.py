"""Traffic-policy annotations on Services and HTTPRoutes: validation and their policy values.

Weft reads these annotations (in the style of Linkerd's ``retry.linkerd.io/*`` and
``timeout.linkerd.io/*``):

- ``retry.weft.io/http``: ``5xx``, ``gateway-error``, codes and ranges (``RetryPolicy.statuses``);
- ``retry.weft.io/grpc``: gRPC statuses to retry (``cancelled``, ``deadline-exceeded``,
  ``internal``, ``resource-exhausted``, ``unavailable``; ``RetryPolicy.grpc``);
- ``retry.weft.io/limit``: retries per request, ``0`` .. ``10`` (``RetryPolicy.limit``);
- ``retry.weft.io/timeout``: per-attempt timeout, a duration, ``0s`` for none;
- ``retry.weft.io/budget-ratio`` (``0.2``), ``retry.weft.io/budget-min-per-second`` (``10``),
  ``retry.weft.io/budget-ttl`` (``10s``, ``1s`` .. ``60s``): the :class:`RetryBudgetConfig`;
- ``timeout.weft.io/request``, ``/response``, ``/idle``: durations, ``0s`` for none
  (:class:`Timeouts`);
- ``failure-accrual.weft.io/consecutive``: ``max-failures=7,min-penalty=1s,max-penalty=60s,
  jitter=0.5`` (:class:`FailureAccrualConfig`).

Any ``retry.weft.io/*`` annotation turns retries on (unset fields take :class:`RetryPolicy`'s
defaults: ``5xx``, one retry, the default budget). Failure accrual is one annotation holding
comma-separated ``key=value`` pairs (``max-failures``, ``min-penalty``, ``max-penalty``,
``jitter``; an empty value means Linkerd's defaults); it belongs on a Service only, since it is
the state of the Service's endpoints, not of a route.

:func:`parse_policy_annotations` validates every such annotation of an object and records a
:class:`~weft.resources.errors.FieldError` naming the annotation for each bad value or unknown key
under these prefixes (a typo is an error, never silently ignored). It returns a
:class:`PolicyAnnotations`: the parsed values by key, which a route's values override key by key
(:meth:`PolicyAnnotations.overridden_by`) and which build the policy fields.

Not for: deciding which routes apply to which service (the control plane's translator), nor the
mechanisms that enforce them (``weft.core``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from weft.core.retry import (
    parse_duration,
    parse_grpc_conditions,
    parse_http_conditions,
    parse_timeout,
)
from weft.policy import (
    DEFAULT_BUDGET,
    FailureAccrualConfig,
    RetryBudgetConfig,
    RetryPolicy,
    Timeouts,
)
from weft.resources.validate import Checker, join, show

RETRY_HTTP = "retry.weft.io/http"
RETRY_GRPC = "retry.weft.io/grpc"
RETRY_LIMIT = "retry.weft.io/limit"
RETRY_TIMEOUT = "retry.weft.io/timeout"
RETRY_BUDGET_RATIO = "retry.weft.io/budget-ratio"
RETRY_BUDGET_MIN_PER_SECOND = "retry.weft.io/budget-min-per-second"
RETRY_BUDGET_TTL = "retry.weft.io/budget-ttl"
TIMEOUT_REQUEST = "timeout.weft.io/request"
TIMEOUT_RESPONSE = "timeout.weft.io/response"
TIMEOUT_IDLE = "timeout.weft.io/idle"
FAILURE_ACCRUAL = "failure-accrual.weft.io/consecutive"

RETRY_KEYS = (
    RETRY_HTTP,
    RETRY_GRPC,
    RETRY_LIMIT,
    RETRY_TIMEOUT,
    RETRY_BUDGET_RATIO,
    RETRY_BUDGET_MIN_PER_SECOND,
    RETRY_BUDGET_TTL,
)
TIMEOUT_KEYS = (TIMEOUT_REQUEST, TIMEOUT_RESPONSE, TIMEOUT_IDLE)
PREFIXES = ("retry.weft.io/", "timeout.weft.io/", "failure-accrual.weft.io/")

ACCRUAL_FIELDS = ("max-failures", "min-penalty", "max-penalty", "jitter")
MAX_ACCRUAL_FAILURES = 1000
MAX_BUDGET_MIN_PER_SECOND = 100_000.0

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _limit(text: str) -> int:
    raw = text.strip()
    if not raw.isdigit():
        raise ValueError(f"must be a whole number of retries 0..10, got {show(text)}")
    value = int(raw)
    if value > 10:
        raise ValueError(f"must be 0..10 retries, got {value}")
    return value


def _number(text: str, lo: float, hi: float) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"must be a number, got {show(text)}") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"must be {lo:g}..{hi:g}, got {show(text)}")
    return value


def _ratio(text: str) -> float:
    return _number(text, 0.0, 1000.0)


def _min_per_second(text: str) -> float:
    return _number(text, 0.0, MAX_BUDGET_MIN_PER_SECOND)


def _ttl(text: str) -> float:
    value = parse_duration(text)
    if not 1.0 <= value <= 60.0:
        raise ValueError(f"must be 1s..60s, got {show(text)}")
    return value


def parse_failure_accrual(text: str) -> FailureAccrualConfig:
    """``max-failures=7,min-penalty=1s,max-penalty=60s,jitter=0.5`` (each optional; an empty
    value is Linkerd's defaults). Raises ValueError naming the bad part."""
    values: dict[str, Any] = {}
    seen: set[str] = set()
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            if text.strip():
                raise ValueError(f"empty item in {show(text)}")
            continue
        key, eq, value = (s.strip() for s in part.partition("="))
        if not eq:
            raise ValueError(f"expected key=value, got {show(part)}")
        if key not in ACCRUAL_FIELDS:
            raise ValueError(f"unknown key {show(key)}; known keys: {', '.join(ACCRUAL_FIELDS)}")
        if key in seen:
            raise ValueError(f"duplicate key {show(key)}")
        seen.add(key)
        if key == "max-failures":
            if not value.isdigit() or not 1 <= int(value) <= MAX_ACCRUAL_FAILURES:
                raise ValueError(
                    f"max-failures must be a whole number 1..{MAX_ACCRUAL_FAILURES}, "
                    f"got {show(value)}"
                )
            values["max_failures"] = int(value)
        elif key == "jitter":
            try:
                values["jitter"] = _number(value, 0.0, 1.0)
            except ValueError as exc:
                raise ValueError(f"jitter {exc}") from None
        else:
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
            if seconds <= 0:
                raise ValueError(f"{key} must be positive, got {show(value)}")
            values[key.replace("-", "_")] = seconds
    try:
        return FailureAccrualConfig(**values)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


_PARSERS: dict[str, Callable[[str], Any]] = {
    RETRY_HTTP: parse_http_conditions,
    RETRY_GRPC: parse_grpc_conditions,
    RETRY_LIMIT: _limit,
    RETRY_TIMEOUT: parse_timeout,
    RETRY_BUDGET_RATIO: _ratio,
    RETRY_BUDGET_MIN_PER_SECOND: _min_per_second,
    RETRY_BUDGET_TTL: _ttl,
    TIMEOUT_REQUEST: parse_timeout,
    TIMEOUT_RESPONSE: parse_timeout,
    TIMEOUT_IDLE: parse_timeout,
    FAILURE_ACCRUAL: parse_failure_accrual,
}

# which annotations each kind may carry
KEYS_BY_KIND: dict[str, tuple[str, ...]] = {
    "Service": (*RETRY_KEYS, *TIMEOUT_KEYS, FAILURE_ACCRUAL),
    "HTTPRoute": (*RETRY_KEYS, *TIMEOUT_KEYS),
    "GRPCRoute": (*RETRY_KEYS, *TIMEOUT_KEYS),
}


@dataclass(frozen=True, slots=True)
class PolicyAnnotations:
    """The parsed policy annotations of one object: annotation key -> value.

    Values: ``retry.weft.io/http`` a tuple of status ranges; ``limit`` an int; durations in
    seconds, ``None`` for a timeout set to ``0s`` (explicitly none, which still overrides);
    ratios floats; ``failure-accrual.weft.io/consecutive`` a :class:`FailureAccrualConfig`.
    """

    values: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __bool__(self) -> bool:
        return bool(self.values)

    @property
    def configures_retry(self) -> bool:
        return any(k in self.values for k in RETRY_KEYS)

    def overridden_by(self, other: PolicyAnnotations) -> PolicyAnnotations:
        """These values with ``other``'s replacing them key by key (a route over its Service)."""
        if not other.values:
            return self
        return PolicyAnnotations(MappingProxyType({**self.values, **other.values}))

    def retry_policy(self, *, all_methods: bool = False) -> RetryPolicy | None:
        """The retry policy, or None when no ``retry.weft.io/*`` annotation is set."""
        if not self.configures_retry:
            return None
        v = self.values
        budget = DEFAULT_BUDGET
        if any(k in v for k in (RETRY_BUDGET_RATIO, RETRY_BUDGET_MIN_PER_SECOND, RETRY_BUDGET_TTL)):
            budget = RetryBudgetConfig(
                ratio=v.get(RETRY_BUDGET_RATIO, DEFAULT_BUDGET.ratio),
                min_per_second=v.get(RETRY_BUDGET_MIN_PER_SECOND, DEFAULT_BUDGET.min_per_second),
                ttl=v.get(RETRY_BUDGET_TTL, DEFAULT_BUDGET.ttl),
            )
        defaults = RetryPolicy()
        return RetryPolicy(
            statuses=v.get(RETRY_HTTP, defaults.statuses),
            grpc=v.get(RETRY_GRPC, defaults.grpc),
            limit=v.get(RETRY_LIMIT, defaults.limit),
            timeout=v.get(RETRY_TIMEOUT),
            all_methods=all_methods,
            budget=budget,
        )

    def timeouts(self) -> Timeouts:
        """``timeout.weft.io/request|response|idle`` (``backend_request`` comes from routes)."""
        v = self.values
        return Timeouts(
            request=v.get(TIMEOUT_REQUEST),
            response=v.get(TIMEOUT_RESPONSE),
            idle=v.get(TIMEOUT_IDLE),
        )

    def failure_accrual(self) -> FailureAccrualConfig | None:
        value = self.values.get(FAILURE_ACCRUAL)
        return value if isinstance(value, FailureAccrualConfig) else None


def parse_policy_annotations(
    annotations: Mapping[str, str],
    kind: str,
    checker: Checker | None = None,
    path: str = "metadata.annotations",
) -> PolicyAnnotations:
    """Validate and parse the policy annotations of an object of ``kind``.

    Problems are recorded in ``checker`` (one error per annotation, its path naming it, e.g.
    ``metadata.annotations["retry.weft.io/limit"]``); without a checker the first problem raises
    ValueError. Invalid annotations are left out of the result.
    """
    allowed = KEYS_BY_KIND.get(kind, ())
    values: dict[str, Any] = {}
    for key, text in annotations.items():
        if not key.startswith(PREFIXES):
            continue
        kpath = join(path, key)
        message: str | None = None
        if key not in _PARSERS:
            known = ", ".join(allowed)
            message = f"unknown annotation {key}; Weft reads: {known}"
        elif key not in allowed:
            message = (
                f"{key} is not supported on a {kind}; put failure accrual on the Service"
                if key == FAILURE_ACCRUAL
                else f"{key} is not supported on a {kind}"
            )
        else:
            try:
                values[key] = _PARSERS[key](text)
            except ValueError as exc:
                message = f"invalid {key} value {show(text)}: {exc}"
        if message is not None:
            if checker is None:
                raise ValueError(f"{kpath}: {message}")
            checker.error(kpath, message)
    return PolicyAnnotations(MappingProxyType(values))
