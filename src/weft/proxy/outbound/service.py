"""The logical side of a destination: what its requests are routed and timed by, and counted in.

A :class:`Service` holds a destination's route table (compiled from its
:class:`~weft.policy.ServicePolicy`), its timeouts, its retry budgets (shared by its requests,
one per budget configuration) and its route and unrouted metric series. The logical layer
(:mod:`.logical`) reads it per request; discovery updates it through the destination's
:class:`~.concrete.Concrete`, which owns it.

Not for: endpoints, balancing or failure accrual (the concrete layer, :mod:`.concrete`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from weft.metrics.proxy import HttpSeries, LabelItems, ProxyMetrics
from weft.policy import DEFAULT_BUDGET, RetryBudgetConfig, ServicePolicy, Timeouts

if TYPE_CHECKING:
    # Imported when a policy needs them (set_policy, budget): a sidecar whose destinations have
    # no routes or retries does not carry their code.
    from weft.core.retry import RetryBudget
    from weft.core.routes import RouteTable

NO_TIMEOUTS = Timeouts()

log = logging.getLogger("weft.proxy")


class Service:
    """A destination's routes, timeouts, retry budgets and request series (see the module)."""

    def __init__(
        self,
        name: str,
        *,
        direction: str,
        metrics: ProxyMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.direction = direction
        self.metrics = metrics
        self.clock = clock
        self.known = True  # discovery knows it (else: forwarded to its address as is)
        self.policy: ServicePolicy | None = None
        self.routes: RouteTable | None = None
        self.timeouts = NO_TIMEOUTS
        self._labels: LabelItems = ()
        self._budgets: dict[RetryBudgetConfig, RetryBudget] = {}
        self._route_series: dict[str, tuple[HttpSeries, HttpSeries]] = {}
        self._unrouted: dict[tuple[bytes, LabelItems], HttpSeries] = {}

    def set_labels(self, labels: LabelItems) -> None:
        """The destination's metric labels (``direction``, ``target_addr``, ``dst_service``...)."""
        if labels != self._labels:
            self._labels = labels
            self._route_series.clear()

    def set_policy(self, policy: ServicePolicy | None) -> None:
        """Apply a policy snapshot: routes recompiled (weights take effect at once); budgets kept
        while their configuration is unchanged."""
        if policy == self.policy:
            return
        self.policy = policy
        self.routes = None
        if policy is not None and policy.routes:
            from weft.core.routes import RouteTable

            try:
                self.routes = RouteTable(policy)
            except ValueError as exc:  # the control plane validates; never crash on a snapshot
                log.error("ignoring the routes of %s: %s", self.name, exc)
        self.timeouts = policy.timeouts if policy is not None else NO_TIMEOUTS

    def budget(self, config: RetryBudgetConfig = DEFAULT_BUDGET) -> RetryBudget:
        """The retry budget shared by this destination's requests with this configuration."""
        budget = self._budgets.get(config)
        if budget is None:
            from weft.core.retry import RetryBudget

            budget = self._budgets[config] = RetryBudget(config, clock=self.clock)
        return budget

    def route_series(self, route: str) -> tuple[HttpSeries, HttpSeries]:
        """(effective, actual) series of ``route`` (``"default"`` when no route matched)."""
        pair = self._route_series.get(route)
        if pair is None or pair[0].expired or pair[1].expired:
            labels = dict(self._labels)
            labels["route"] = route
            items = tuple(sorted(labels.items()))
            pair = (self.metrics.route(items), self.metrics.route_actual(items))
            self._route_series[route] = pair
        return pair

    def unrouted_series(self, authority: bytes, tls: LabelItems = ()) -> HttpSeries:
        """The series of requests for ``authority`` that no endpoint took (the proxy answered:
        no endpoint, a redirect, a denial, a malformed request)."""
        key = (authority, tls)
        series = self._unrouted.get(key)
        if series is None or series.expired:
            labels = {"direction": self.direction, "target_addr": self.name}
            labels["authority"] = authority.decode("latin-1")
            labels.update(tls or (("tls", "disabled"),))
            series = self.metrics.http(tuple(sorted(labels.items())))
            self._unrouted[key] = series
        return series


__all__ = ["NO_TIMEOUTS", "Service"]
