"""The policy translator: Services, their annotations, HTTPRoutes and GRPCRoutes -> a
:class:`ServicePolicy`.

The destination service (:mod:`weft.control.destinations`) calls :meth:`Policies.policy` for the
Service and port a target resolves to; the snapshot it sends carries the result, and since
snapshots are compared by value, any change of the Service's annotations or of a route attached
to it re-sends the snapshot to watchers.

What is built, for Service ``S`` and service port ``P``:

- the routes: every HTTPRoute and GRPCRoute in ``S``'s namespace with a Service ``parentRef``
  naming ``S`` (and ``P`` when the parentRef gives a port), oldest first (``creationTimestamp``,
  then ``ns/name``: the Gateway API's tie-break between routes), both kinds in one order. Parents
  of kind Server make inbound routes, which :mod:`weft.control.inbound` reads and this module
  ignores. A GRPCRoute's method matches become path matches (:func:`~weft.resources.grpcroute.
  compile_match`) and its timeouts come from the annotations only (it has no ``timeouts``);
- each rule's matches and filters as written (Gateway defaults filled in), its backends as
  targets ``<name>.<ns>.svc.<cluster domain>:<port>`` with the backendRef's port or else ``P``, and
  its *effective* retry policy and timeouts: ``timeouts.request``/``backendRequest`` from the
  rule, then the route's annotations, then the Service's (a route's annotation replaces the
  Service's of the same key). Retries configured on the route itself may repeat any method
  (``all_methods``); retries inherited from the Service only idempotent ones;
- the Service's own retry policy, timeouts and failure accrual (for requests no route handles).

``None`` when the Service has neither routes nor policy annotations. A backend whose Service does
not exist stays in the policy with its weight (the Gateway API says its share of requests fails
with 500); the route's status reports it (:mod:`weft.control.routestatus`).

Parsed routes and annotations are cached by resourceVersion (:class:`ParseCache`), since every
store change recomputes every subscribed target.

Not for: streaming snapshots or writing route status.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from weft.control.state import ClusterState
from weft.policy import Backend, Route, Rule, ServicePolicy, Timeouts
from weft.resources.annotations import PolicyAnnotations, parse_policy_annotations
from weft.resources.errors import InvalidResources
from weft.resources.grpcroute import GRPCRoute, GRPCRouteRule
from weft.resources.httproute import HTTPRoute
from weft.resources.validate import Checker

MAX_CACHED = 4096
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")
AnyRoute = HTTPRoute | GRPCRoute


def backend_target(name: str, namespace: str, port: int, cluster_domain: str) -> str:
    """``web-v2.shop.svc.cluster.local:8080``."""
    return f"{name}.{namespace}.svc.{cluster_domain}:{port}"


def route_applies(route: AnyRoute, service: str, port: int) -> bool:
    """The route has a Service parentRef naming ``service`` (in its namespace) and ``port`` or no
    port."""
    return any(
        p.service and p.name == service and p.port in (None, port) for p in route.spec.parent_refs
    )


def translate_route(
    route: AnyRoute,
    service_annotations: PolicyAnnotations,
    route_annotations: PolicyAnnotations,
    *,
    port: int,
    cluster_domain: str = "cluster.local",
) -> Route:
    """One HTTPRoute or GRPCRoute as the proxy receives it for service port ``port`` (see the
    module doc)."""
    effective = service_annotations.overridden_by(route_annotations)
    retry = effective.retry_policy(all_methods=route_annotations.configures_retry)
    inherited = effective.timeouts()
    rules: list[Rule] = []
    for rule in route.spec.rules:
        if isinstance(rule, GRPCRouteRule):
            matches, redirect, timeouts = rule.route_matches(), None, inherited
        else:
            own = rule.timeouts.seconds()
            matches, redirect = rule.matches, rule.redirect
            timeouts = Timeouts(
                request=own.request if rule.timeouts.request is not None else inherited.request,
                backend_request=own.backend_request,
                response=inherited.response,
                idle=inherited.idle,
            )
        backends = tuple(
            Backend(
                target=backend_target(
                    b.name, b.namespace, b.port if b.port is not None else port, cluster_domain
                ),
                weight=b.weight,
                name=b.name,
            )
            for b in rule.backend_refs
        )
        rules.append(
            Rule(
                matches=matches,
                backends=backends,
                request_headers=rule.request_headers,
                response_headers=rule.response_headers,
                redirect=redirect,
                timeouts=timeouts,
                retry=retry,
            )
        )
    return Route(name=route.key, rules=tuple(rules), hostnames=route.spec.hostnames)


def build_policy(
    service_annotations: PolicyAnnotations,
    routes: Iterable[tuple[AnyRoute, PolicyAnnotations]],
    *,
    port: int,
    cluster_domain: str = "cluster.local",
) -> ServicePolicy | None:
    """The policy of one service port from its annotations and its attached routes (in order,
    each with its own parsed annotations). None when nothing is configured."""
    translated = tuple(
        translate_route(r, service_annotations, ann, port=port, cluster_domain=cluster_domain)
        for r, ann in routes
    )
    if not translated and not service_annotations:
        return None
    return ServicePolicy(
        routes=translated,
        retry=service_annotations.retry_policy(),
        timeouts=service_annotations.timeouts(),
        failure_accrual=service_annotations.failure_accrual(),
    )


class ParseCache:
    """Parsed routes (HTTPRoutes, GRPCRoutes) and policy annotations of stored objects, by
    resourceVersion."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str, str], tuple[str, AnyRoute | None]] = {}
        self._annotations: dict[tuple[str, str, str], tuple[str, PolicyAnnotations]] = {}

    def __repr__(self) -> str:
        return f"<ParseCache routes={len(self._routes)} annotations={len(self._annotations)}>"

    def route(self, obj: Mapping[str, Any]) -> AnyRoute | None:
        """The stored route parsed (None if it no longer validates: it is then left out)."""
        meta = obj["metadata"]
        kind = str(obj.get("kind"))
        key = (kind, str(meta.get("namespace")), str(meta["name"]))
        rv = str(meta.get("resourceVersion"))
        hit = self._routes.get(key)
        if hit is not None and hit[0] == rv:
            return hit[1]
        parser = GRPCRoute if kind == "GRPCRoute" else HTTPRoute
        try:
            parsed: AnyRoute | None = parser.from_dict(obj)
        except InvalidResources:
            parsed = None
        if len(self._routes) >= MAX_CACHED:
            self._routes.clear()
        self._routes[key] = (rv, parsed)
        return parsed

    def annotations(self, obj: Mapping[str, Any]) -> PolicyAnnotations:
        """The valid policy annotations of a stored Service, HTTPRoute or GRPCRoute."""
        meta = obj["metadata"]
        kind = str(obj.get("kind"))
        key = (kind, str(meta.get("namespace")), str(meta["name"]))
        rv = str(meta.get("resourceVersion"))
        hit = self._annotations.get(key)
        if hit is not None and hit[0] == rv:
            return hit[1]
        raw = meta.get("annotations") or {}
        # stored objects were validated when applied: a checker keeps this lenient anyway
        parsed = parse_policy_annotations({str(k): str(v) for k, v in raw.items()}, kind, Checker())
        if len(self._annotations) >= MAX_CACHED:
            self._annotations.clear()
        self._annotations[key] = (rv, parsed)
        return parsed


def _route_order(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("namespace")), meta["name"])


class Policies:
    """Builds :class:`ServicePolicy` values from the store (see the module docstring)."""

    def __init__(self, state: ClusterState, *, cluster_domain: str = "cluster.local") -> None:
        self._state = state
        self.cluster_domain = cluster_domain
        self.cache = ParseCache()

    def __repr__(self) -> str:
        return f"<Policies {self.cache!r}>"

    def attached_routes(
        self, namespace: str, service: str, port: int | None = None
    ) -> list[tuple[Mapping[str, Any], AnyRoute]]:
        """Stored routes (HTTPRoutes and GRPCRoutes) attached to the Service (to ``port``, or to
        any port when None), oldest first."""
        out: list[tuple[Mapping[str, Any], AnyRoute]] = []
        stored = [obj for kind in ROUTE_KINDS for obj in self._state.list(kind, namespace)]
        for obj in sorted(stored, key=_route_order):
            route = self.cache.route(obj)
            if route is None:
                continue
            if port is None:
                attached = any(p.service and p.name == service for p in route.spec.parent_refs)
            else:
                attached = route_applies(route, service, port)
            if attached:
                out.append((obj, route))
        return out

    def policy(self, service: Mapping[str, Any], port: int) -> ServicePolicy | None:
        """The policy for clients of the stored ``service`` at service port ``port``."""
        meta = service["metadata"]
        routes: Sequence[tuple[AnyRoute, PolicyAnnotations]] = [
            (route, self.cache.annotations(obj))
            for obj, route in self.attached_routes(str(meta["namespace"]), meta["name"], port)
        ]
        return build_policy(
            self.cache.annotations(service),
            routes,
            port=port,
            cluster_domain=self.cluster_domain,
        )
