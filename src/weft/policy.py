"""Traffic policy as the proxy receives it: routes, backends, retries, timeouts, failure accrual.

Plain frozen data with a JSON form, shared by the control plane (which derives it from HTTPRoute
resources and ``retry.weft.io/*``, ``timeout.weft.io/*``, ``failure-accrual.weft.io/*``
annotations) and the proxy (which enforces it). A :class:`~weft.discovery.Destination` carries a
:class:`ServicePolicy`; ``None`` everywhere means "not configured", never a default in disguise:
defaults live in one place each (:data:`DEFAULT_BUDGET`, the accrual defaults below).

Not for: mechanisms (retry budget, accrual state machine, route matching live in ``weft.core``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# -- matches ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathMatch:
    """Gateway API path match: ``Exact``, ``PathPrefix`` or ``RegularExpression``."""

    type: str = "PathPrefix"
    value: str = "/"

    def __post_init__(self) -> None:
        if self.type not in ("Exact", "PathPrefix", "RegularExpression"):
            raise ValueError(f"path.type: unsupported {self.type!r}")


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """A header or query parameter match: ``Exact`` or ``RegularExpression`` on ``name``."""

    name: str
    value: str
    type: str = "Exact"

    def __post_init__(self) -> None:
        if self.type not in ("Exact", "RegularExpression"):
            raise ValueError(f"match type: unsupported {self.type!r}")


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """All conditions must hold (Gateway API ``HTTPRouteMatch``)."""

    path: PathMatch | None = None
    headers: tuple[ValueMatch, ...] = ()
    query_params: tuple[ValueMatch, ...] = ()
    method: str | None = None


# -- filters ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    """``RequestHeaderModifier`` / ``ResponseHeaderModifier``: set, add, remove."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Redirect:
    """``RequestRedirect``: any field left ``None`` keeps the request's own."""

    scheme: str | None = None
    hostname: str | None = None
    path: str | None = None  # ReplaceFullPath
    port: int | None = None
    status_code: int = 302


# -- policies ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryBudgetConfig:
    """Retries may add at most ``ratio`` of requests plus ``min_per_second``, over ``ttl`` s."""

    ratio: float = 0.2
    min_per_second: float = 10.0
    ttl: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.ratio <= 1000:
            raise ValueError(f"retry budget ratio: {self.ratio!r} out of range")
        if self.min_per_second < 0:
            raise ValueError(f"retry budget min_per_second: {self.min_per_second!r} < 0")
        if not 1 <= self.ttl <= 60:
            raise ValueError(f"retry budget ttl: {self.ttl!r} must be 1..60 s")


DEFAULT_BUDGET = RetryBudgetConfig()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to retry a request.

    ``statuses`` are inclusive ranges of HTTP status codes that are retryable (``5xx`` is
    ``((500, 599),)``, ``gateway-error`` is ``((502, 504),)``); ``grpc`` names retryable gRPC
    statuses (for the HTTP/2 issue). ``limit`` is the number of retries per request (not counting
    the first attempt). ``timeout`` is the per-attempt timeout in seconds. Connection errors are
    always retryable when a policy exists. Non-idempotent methods are retried only when
    ``all_methods`` (the route was configured to retry them).
    """

    statuses: tuple[tuple[int, int], ...] = ((500, 599),)
    grpc: tuple[str, ...] = ()
    limit: int = 1
    timeout: float | None = None
    all_methods: bool = False
    budget: RetryBudgetConfig = DEFAULT_BUDGET
    backoff_min: float = 0.025
    backoff_max: float = 0.250

    def __post_init__(self) -> None:
        if not 0 <= self.limit <= 10:
            raise ValueError(f"retry limit: {self.limit!r} must be 0..10")
        for lo, hi in self.statuses:
            if not 100 <= lo <= hi <= 599:
                raise ValueError(f"retry status range {lo}-{hi} invalid")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"retry timeout: {self.timeout!r} must be positive")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """``request``: whole request incl. retries (Gateway ``timeouts.request``);
    ``backend_request``: each attempt (``timeouts.backendRequest``); ``response``: until response
    headers; ``idle``: no bytes either way. Seconds; ``None`` = no timeout."""

    request: float | None = None
    backend_request: float | None = None
    response: float | None = None
    idle: float | None = None

    def over(self, base: Timeouts) -> Timeouts:
        """These timeouts where set, ``base``'s elsewhere (a rule's over its service's)."""
        return Timeouts(
            request=self.request if self.request is not None else base.request,
            backend_request=(
                self.backend_request if self.backend_request is not None else base.backend_request
            ),
            response=self.response if self.response is not None else base.response,
            idle=self.idle if self.idle is not None else base.idle,
        )


@dataclass(frozen=True, slots=True)
class FailureAccrualConfig:
    """Consecutive-failures circuit breaking (Linkerd's defaults)."""

    max_failures: int = 7
    min_penalty: float = 1.0
    max_penalty: float = 60.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ValueError(f"max_failures: {self.max_failures!r} must be >= 1")
        if not 0 < self.min_penalty <= self.max_penalty:
            raise ValueError("penalties: need 0 < min_penalty <= max_penalty")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter: {self.jitter!r} must be 0..1")


@dataclass(frozen=True, slots=True)
class Backend:
    """A weighted backend of a route: a service target ``name.ns.svc.cluster.local:port``
    (resolved by the proxy through discovery like any target)."""

    target: str
    weight: int = 1
    name: str = ""  # the backendRef's service name, for metrics

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"backend weight: {self.weight!r} must be >= 0")


@dataclass(frozen=True, slots=True)
class Rule:
    """One HTTPRoute rule: the request matches any of ``matches`` (none = all)."""

    matches: tuple[RouteMatch, ...] = ()
    backends: tuple[Backend, ...] = ()  # empty: the parent service itself
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: Redirect | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """An HTTPRoute attached to the destination service; ``name`` is ``ns/name``."""

    name: str
    rules: tuple[Rule, ...] = ()
    hostnames: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """Everything configured for one destination service (its routes and service annotations)."""

    routes: tuple[Route, ...] = ()
    retry: RetryPolicy | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    failure_accrual: FailureAccrualConfig | None = None

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)  # type: ignore[no-any-return]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServicePolicy:
        return _from_json(cls, data)  # type: ignore[no-any-return]


# -- JSON -------------------------------------------------------------------------------------

_TYPES: dict[str, Any] = {}


def _to_json(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        out = {}
        for name in value.__dataclass_fields__:
            v = getattr(value, name)
            if v is None or v == () or v == "":
                continue
            out[name] = _to_json(v)
        return out
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


_NESTED: dict[tuple[str, str], Any] = {}


def _from_json(cls: Any, data: Any) -> Any:
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in cls.__dataclass_fields__:
            raise ValueError(f"{cls.__name__}: unknown field {name!r}")
        kind = _NESTED.get((cls.__name__, name))
        if kind is None:
            kwargs[name] = tuple(value) if isinstance(value, list) else value
        elif isinstance(kind, tuple):  # a tuple of dataclasses, or of tuples
            inner = kind[0]
            if inner == "pair":
                kwargs[name] = tuple((str(a), str(b)) for a, b in value)
            elif inner == "range":
                kwargs[name] = tuple((int(a), int(b)) for a, b in value)
            else:
                kwargs[name] = tuple(_from_json(inner, v) for v in value)
        else:
            kwargs[name] = _from_json(kind, value)
    return cls(**kwargs)


_NESTED.update(
    {
        ("RouteMatch", "path"): PathMatch,
        ("RouteMatch", "headers"): (ValueMatch,),
        ("RouteMatch", "query_params"): (ValueMatch,),
        ("HeaderModifier", "set"): ("pair",),
        ("HeaderModifier", "add"): ("pair",),
        ("RetryPolicy", "statuses"): ("range",),
        ("RetryPolicy", "budget"): RetryBudgetConfig,
        ("Rule", "matches"): (RouteMatch,),
        ("Rule", "backends"): (Backend,),
        ("Rule", "request_headers"): HeaderModifier,
        ("Rule", "response_headers"): HeaderModifier,
        ("Rule", "redirect"): Redirect,
        ("Rule", "timeouts"): Timeouts,
        ("Rule", "retry"): RetryPolicy,
        ("Route", "rules"): (Rule,),
        ("ServicePolicy", "routes"): (Route,),
        ("ServicePolicy", "retry"): RetryPolicy,
        ("ServicePolicy", "timeouts"): Timeouts,
        ("ServicePolicy", "failure_accrual"): FailureAccrualConfig,
    }
)
