"""The inbound policy service: each pod's :class:`~weft.inbound.PodInboundPolicy`, kept current.

:class:`InboundPolicies` derives, from the store, who may call each port of a pod and how often
(the rules are documented in docs/policy.md; in short):

- the pod's **default policy** is its ``config.weft.io/default-inbound-policy`` annotation, else
  its Namespace's, else the mesh-wide default; an invalid value falls back to the mesh-wide
  default with a warning (logged once, and listed by ``GET /api/v1/inbound/<ns>/<pod>?once=1``).
  A default policy implies authorizations of kind ``default``: ``all-unauthenticated`` (anyone),
  ``all-authenticated`` (any mesh identity), ``cluster-unauthenticated`` (sources in the cluster
  networks), ``cluster-authenticated`` (both), ``deny`` and ``audit`` (none; ``audit`` records
  and allows);
- each port a **Server** selects on the pod gets the AuthorizationPolicies that target the
  Server or the pod's Namespace, then the authorizations its ``accessPolicy`` implies; its
  inbound HTTPRoutes (parent kind Server, oldest first), each with the policies targeting it;
  and the oldest HTTPLocalRateLimitPolicy targeting it. When two Servers select one port, the
  oldest (``creationTimestamp``, then name) wins, as in Linkerd;
- **audit**: a port is in audit mode (deny decisions are recorded, traffic allowed) when its
  Server's ``accessPolicy`` is ``audit`` or an audit-mode AuthorizationPolicy targets the
  Server, the Namespace or one of the Server's routes. Audit-mode policies' authorizations are
  added like the others, so what is recorded as denied is what the policies, all enforced,
  would deny;
- an AuthorizationPolicy whose MeshTLSAuthentication or NetworkAuthentication does not exist
  allows nobody until it does (fail closed);
- every other declared container port, and every port a probe uses, gets the pod's default
  policy; ``default`` covers any other port; ``probes`` lists each port's httpGet probe paths
  (readiness, liveness, startup), which the proxy always allows.

Subscribers of a pod share one computation; a store change recomputes only the pods it can
affect (a Pod: that pod; a Namespace or a policy kind: the pods of that namespace; a
MeshTLSAuthentication or NetworkAuthentication, which any namespace may reference: every
subscribed pod) and notifies only when the result changed. :meth:`InboundPolicies.handle`
serves ``GET /api/v1/inbound/<namespace>/<pod>`` (the ``inbound`` API group): an NDJSON stream
of ``{"policy": ...}`` (``null`` while the pod does not exist) with a heartbeat ``{}``, or the
current value once with ``?once=1``.

Not for: validating the resources (:mod:`weft.resources.policy`), nor enforcing the policy (the
inbound proxy).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from weft.control.api import HEARTBEAT, _line, _wait
from weft.control.httpserver import HttpError, Request, Response, Streaming, StreamWriter
from weft.control.state import ClusterState, StateEvent
from weft.inbound import (
    DEFAULT_POLICIES,
    DEFAULT_POLICY,
    Authorization,
    InboundPolicy,
    InboundRoute,
    Network,
    PodInboundPolicy,
    RateLimit,
    RateLimitOverride,
    default_authorizations,
)
from weft.resources import pods
from weft.resources.authn import MeshTLSAuthentication, NetworkAuthentication
from weft.resources.errors import InvalidResources
from weft.resources.httproute import HTTPRoute
from weft.resources.meta import ANNOTATION_DEFAULT_INBOUND_POLICY
from weft.resources.models import Namespace, Pod
from weft.resources.podspec import PodSpec
from weft.resources.policy import AuthorizationPolicy, Server, identity_name
from weft.resources.ratelimitpolicy import HTTPLocalRateLimitPolicy
from weft.resources.registry import KINDS, Resource
from weft.resources.validate import Checker

log = logging.getLogger("weft.control.inbound")

Listener = Callable[[PodInboundPolicy | None], None]
T = TypeVar("T")

PROBE_FIELDS = ("readinessProbe", "livenessProbe", "startupProbe")
MAX_CACHED = 4096
MAX_LOGGED = 4096
_NAMESPACE_KINDS = frozenset(
    {"Server", "AuthorizationPolicy", "HTTPRoute", "HTTPLocalRateLimitPolicy"}
)
_REFERENCED_KINDS = frozenset({"MeshTLSAuthentication", "NetworkAuthentication"})


def _covers(pattern: str, identity: str) -> bool:
    """Identity ``pattern`` (``*``, ``*.<suffix>``, or exact) matches ``identity``."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return identity.endswith(suffix) and len(identity) > len(suffix)
    return pattern == identity


def _port_number(spec: PodSpec, value: Any) -> int | None:
    """A port as written in a Server or a probe (number, digit string or container port name)
    -> the pod's port number; None when the pod has no such port."""
    if isinstance(value, str) and not value.isdigit():
        return spec.container_port(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    number = int(value)
    return number if 0 < number < 65536 else None


def _probes(spec: PodSpec) -> dict[int, tuple[str, ...]]:
    """The httpGet probe paths (without their query: the proxy ignores it) of every container,
    by port."""
    paths: dict[int, set[str]] = {}
    for container in spec.containers:
        for key in PROBE_FIELDS:
            probe = container.extra.get(key)
            get = probe.get("httpGet") if isinstance(probe, Mapping) else None
            if not isinstance(get, Mapping):
                continue
            port = _port_number(spec, get.get("port"))
            if port is None:
                continue
            raw = get.get("path")
            path = (raw if isinstance(raw, str) else "").partition("?")[0] or "/"
            paths.setdefault(port, set()).add(path if path.startswith("/") else "/" + path)
    return {port: tuple(sorted(p)) for port, p in paths.items()}


def _age(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return (str(meta.get("creationTimestamp") or ""), str(meta["name"]))


@dataclass(frozen=True, slots=True)
class Computed:
    """A pod's policy (None: no such pod) and the problems met computing it."""

    policy: PodInboundPolicy | None
    warnings: tuple[str, ...] = ()


class _Cache:
    """Stored objects parsed into their models, by resourceVersion (None: no longer valid)."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str, str], tuple[str, Resource | None]] = {}

    def parse(self, obj: Mapping[str, Any]) -> Resource | None:
        meta = obj["metadata"]
        kind = str(obj.get("kind"))
        key = (kind, str(meta.get("namespace") or ""), str(meta["name"]))
        rv = str(meta.get("resourceVersion"))
        hit = self._items.get(key)
        if hit is not None and hit[0] == rv:
            return hit[1]
        parsed: Resource | None
        try:
            # a Pod as a cluster stores it holds much the local model refuses: its policy part
            parsed = KINDS[kind].parse(pods.policy_view(obj) if kind == "Pod" else obj)
        except (InvalidResources, KeyError):
            parsed = None
        if len(self._items) >= MAX_CACHED:
            self._items.clear()
        self._items[key] = (rv, parsed)
        return parsed


@dataclass(slots=True)
class _View:
    """One namespace's policy objects, read once for every pod a change recomputes."""

    namespace: str
    annotations: Mapping[str, str]
    servers: list[Server]  # oldest first
    policies: list[AuthorizationPolicy]  # by name
    routes: list[HTTPRoute]  # inbound routes, oldest first
    ratelimits: list[HTTPLocalRateLimitPolicy]  # oldest first
    # AuthorizationPolicy name -> its authorization (None: allows nobody) and why not
    resolved: dict[str, tuple[Authorization | None, str | None]] = field(default_factory=dict)


class _Subscription:
    __slots__ = ("current", "listeners")

    def __init__(self, current: PodInboundPolicy | None) -> None:
        self.current = current
        self.listeners: list[Listener] = []


class InboundPolicies:
    """Live inbound policies of pods (see the module docstring)."""

    def __init__(
        self,
        state: ClusterState,
        *,
        trust_domain: str = "cluster.local",
        cluster_networks: Sequence[str],
        default_policy: str = DEFAULT_POLICY,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        if default_policy not in DEFAULT_POLICIES:
            raise ValueError(
                f"default inbound policy must be one of {', '.join(DEFAULT_POLICIES)}, "
                f"got {default_policy!r}"
            )
        checker = Checker()
        if checker.dns_subdomain(trust_domain, "trust domain") is None:
            raise ValueError(str(checker.errors[0]))
        if isinstance(cluster_networks, str) or not cluster_networks:
            raise ValueError("cluster networks: give at least one CIDR, e.g. 10.244.0.0/16")
        networks: list[Network] = []
        for text in cluster_networks:
            try:
                networks.append(Network(str(ipaddress.ip_network(text, strict=True))))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"cluster network {text!r} is not a CIDR: {exc}") from None
        if not heartbeat > 0:
            raise ValueError(f"heartbeat must be positive, got {heartbeat!r}")
        self._state = state
        self.trust_domain = trust_domain
        self.cluster_networks = tuple(networks)
        self.default_policy = default_policy
        self.heartbeat = heartbeat
        self._cache = _Cache()
        self._subscriptions: dict[tuple[str, str], _Subscription] = {}
        self._logged: set[str] = set()
        self._unsubscribe = state.subscribe(self._on_event)

    def __repr__(self) -> str:
        n = sum(len(s.listeners) for s in self._subscriptions.values())
        return f"<InboundPolicies pods={len(self._subscriptions)} subscribers={n}>"

    # -- computing ---------------------------------------------------------------------------

    def compute(self, namespace: str, pod: str) -> Computed:
        """The current policy of ``namespace/pod`` and the warnings met on the way."""
        return self._compute(self._view(namespace), pod)

    def policy(self, namespace: str, pod: str) -> PodInboundPolicy | None:
        return self.compute(namespace, pod).policy

    def _objects(self, kind: str, namespace: str, cls: type[T]) -> list[T]:
        out: list[T] = []
        for obj in sorted(self._state.list(kind, namespace), key=_age):
            parsed = self._cache.parse(obj)
            if isinstance(parsed, cls):
                out.append(parsed)
        return out

    def _find(self, kind: str, namespace: str, name: str) -> Resource | None:
        obj = self._state.get(kind, namespace, name)
        return None if obj is None else self._cache.parse(obj)

    def _view(self, namespace: str) -> _View:
        ns = self._find("Namespace", "", namespace)
        policies = self._objects("AuthorizationPolicy", namespace, AuthorizationPolicy)
        return _View(
            namespace=namespace,
            annotations=ns.metadata.annotations if isinstance(ns, Namespace) else {},
            servers=self._objects("Server", namespace, Server),
            policies=sorted(policies, key=lambda p: p.metadata.name),
            routes=[r for r in self._objects("HTTPRoute", namespace, HTTPRoute) if r.inbound],
            ratelimits=self._objects(
                "HTTPLocalRateLimitPolicy", namespace, HTTPLocalRateLimitPolicy
            ),
        )

    def _compute(self, view: _View, name: str) -> Computed:
        pod = self._find("Pod", view.namespace, name)
        if not isinstance(pod, Pod):
            return Computed(None)
        warnings: list[str] = []
        fallback = self._pod_default(pod, view, warnings)
        probes = _probes(pod.spec)
        servers = self._servers_by_port(pod, view, warnings)
        ports: dict[int, InboundPolicy] = {}
        for port, server in servers.items():
            ports[port] = self._server_port(view, port, server, probes, warnings)
        implied = default_authorizations(fallback, self.cluster_networks)
        declared = {
            p.container_port for c in pod.spec.containers for p in c.ports if p.protocol == "TCP"
        }
        for port in sorted((declared | set(probes)) - set(ports)):
            ports[port] = InboundPolicy(
                port=port,
                default_policy=fallback,
                authorizations=implied,
                probes=probes.get(port, ()),
                audit=fallback == "audit",
            )
        default = InboundPolicy(
            port=1, default_policy=fallback, authorizations=implied, audit=fallback == "audit"
        )
        policy = PodInboundPolicy(ports=tuple(ports[p] for p in sorted(ports)), default=default)
        return Computed(policy, tuple(dict.fromkeys(warnings)))

    def _pod_default(self, pod: Pod, view: _View, warnings: list[str]) -> str:
        sources = (
            (f"Pod {view.namespace}/{pod.metadata.name}", pod.metadata.annotations),
            (f"Namespace {view.namespace}", view.annotations),
        )
        for where, notes in sources:
            value = notes.get(ANNOTATION_DEFAULT_INBOUND_POLICY)
            if value is None:
                continue
            if value in DEFAULT_POLICIES:
                return value
            warnings.append(
                f"{where}: invalid {ANNOTATION_DEFAULT_INBOUND_POLICY} {value!r} (expected one "
                f"of {', '.join(DEFAULT_POLICIES)}); using the mesh default {self.default_policy}"
            )
            return self.default_policy
        return self.default_policy

    def _servers_by_port(self, pod: Pod, view: _View, warnings: list[str]) -> dict[int, Server]:
        out: dict[int, Server] = {}
        for server in view.servers:  # oldest first: the first Server of a port wins
            if not server.spec.pod_selector.matches(pod.metadata.labels):
                continue
            port = _port_number(pod.spec, server.spec.port)
            if port is None:
                continue  # a named port this pod does not have
            first = out.get(port)
            if first is not None:
                warnings.append(
                    f"Servers {first.key} and {server.key} both select port {port} of pod "
                    f"{view.namespace}/{pod.metadata.name}; the older, {first.key}, applies"
                )
                continue
            out[port] = server
        return out

    def _server_port(
        self,
        view: _View,
        port: int,
        server: Server,
        probes: Mapping[int, tuple[str, ...]],
        warnings: list[str],
    ) -> InboundPolicy:
        name = server.metadata.name
        targeting = [
            p
            for p in view.policies
            if _targets(p, "Server", name) or _targets(p, "Namespace", view.namespace)
        ]
        audit = server.spec.access_policy == "audit" or _any_audit(targeting)
        routes: list[InboundRoute] = []
        for route in view.routes:
            if not any(p.kind == "Server" and p.name == name for p in route.spec.parent_refs):
                continue
            on_route = [p for p in view.policies if _targets(p, "HTTPRoute", route.metadata.name)]
            audit = audit or _any_audit(on_route)
            routes.append(
                InboundRoute(
                    name=route.key,
                    matches=tuple(m for rule in route.spec.rules for m in rule.matches),
                    authorizations=self._authorizations(view, on_route, warnings),
                )
            )
        return InboundPolicy(
            port=port,
            server=server.key,
            protocol=server.spec.protocol,
            default_policy=server.spec.access_policy,
            authorizations=self._authorizations(view, targeting, warnings)
            + default_authorizations(server.spec.access_policy, self.cluster_networks),
            routes=tuple(routes),
            probes=probes.get(port, ()),
            audit=audit,
            ratelimit=self._ratelimit(view, server, warnings),
        )

    def _authorizations(
        self, view: _View, policies: Iterable[AuthorizationPolicy], warnings: list[str]
    ) -> tuple[Authorization, ...]:
        out: list[Authorization] = []
        for policy in policies:
            name = policy.metadata.name
            if name not in view.resolved:
                view.resolved[name] = self._resolve(view.namespace, policy)
            authorization, problem = view.resolved[name]
            if problem is not None:
                warnings.append(problem)
            if authorization is not None:
                out.append(authorization)
        return tuple(out)

    def _resolve(
        self, namespace: str, policy: AuthorizationPolicy
    ) -> tuple[Authorization | None, str | None]:
        """The authorization an AuthorizationPolicy grants: every required ref must hold."""
        what = f"AuthorizationPolicy {namespace}/{policy.metadata.name}"
        networks: tuple[Network, ...] = ()
        patterns: tuple[str, ...] | None = None
        account: str | None = None
        for ref in policy.spec.required_authentication_refs:
            ref_ns = ref.namespace or namespace
            if ref.kind == "ServiceAccount":
                account = identity_name(str(ref.name), ref_ns, self.trust_domain)
                continue
            found = self._find(ref.kind, ref_ns, str(ref.name))
            if isinstance(found, NetworkAuthentication):
                networks = found.spec.networks
            elif isinstance(found, MeshTLSAuthentication):
                patterns = found.spec.patterns(ref_ns, self.trust_domain)
            else:
                return None, (
                    f"{what}: {ref.kind} {ref_ns}/{ref.name} does not exist; the policy allows "
                    "nobody until it does"
                )
        identities = patterns or ()
        if account is not None:
            if patterns is not None and not any(_covers(p, account) for p in patterns):
                return None, (
                    f"{what}: the identity of ServiceAccount {account} is not among those of "
                    "its MeshTLSAuthentication, so no client can satisfy both; it allows nobody"
                )
            identities = (account,)
        authorization = Authorization(
            kind="authorizationpolicy",
            name=policy.metadata.name,
            networks=networks,
            authenticated=patterns is not None or account is not None,
            identities=identities,
        )
        return authorization, None

    def _ratelimit(self, view: _View, server: Server, warnings: list[str]) -> RateLimit | None:
        name = server.metadata.name
        limits = [r for r in view.ratelimits if r.spec.target_ref.name == name]
        if not limits:
            return None
        first = limits[0]
        for other in limits[1:]:
            warnings.append(
                f"HTTPLocalRateLimitPolicies {view.namespace}/{first.metadata.name} and "
                f"{view.namespace}/{other.metadata.name} both target Server {server.key}; the "
                f"older, {first.metadata.name}, applies"
            )
        spec = first.spec
        overrides = tuple(
            RateLimitOverride(
                requests_per_second=float(o.requests_per_second),
                identities=tuple(
                    identity_name(str(r.name), r.namespace or view.namespace, self.trust_domain)
                    for r in o.client_refs
                ),
            )
            for o in spec.overrides
        )
        return RateLimit(
            name=f"{view.namespace}/{first.metadata.name}",
            total=None if spec.total is None else float(spec.total),
            identity=None if spec.identity is None else float(spec.identity),
            overrides=overrides,
        )

    # -- subscribing -------------------------------------------------------------------------

    def subscribe(
        self, namespace: str, pod: str, listener: Listener
    ) -> tuple[PodInboundPolicy | None, Callable[[], None]]:
        """The current policy of ``namespace/pod`` and an unsubscribe function; ``listener`` is
        called (synchronously, so it must not block) with each later change."""
        key = (namespace, pod)
        sub = self._subscriptions.get(key)
        if sub is None:
            computed = self.compute(namespace, pod)
            self._log(computed.warnings)
            sub = _Subscription(computed.policy)
            self._subscriptions[key] = sub
        sub.listeners.append(listener)

        def unsubscribe() -> None:
            if listener in sub.listeners:
                sub.listeners.remove(listener)
            if not sub.listeners and self._subscriptions.get(key) is sub:
                del self._subscriptions[key]

        return sub.current, unsubscribe

    def close(self) -> None:
        self._unsubscribe()
        self._subscriptions.clear()

    def _on_event(self, event: StateEvent) -> None:
        kind = event.kind
        meta = event.object["metadata"]
        if kind == "Pod":
            affected = [(str(meta.get("namespace")), str(meta["name"]))]
        elif kind == "Namespace":
            affected = [k for k in self._subscriptions if k[0] == meta["name"]]
        elif kind in _NAMESPACE_KINDS:
            affected = [k for k in self._subscriptions if k[0] == meta.get("namespace")]
        elif kind in _REFERENCED_KINDS:
            affected = list(self._subscriptions)
        else:
            return
        views: dict[str, _View] = {}
        for key in affected:
            sub = self._subscriptions.get(key)
            if sub is None:
                continue
            namespace, pod = key
            view = views.get(namespace)
            if view is None:
                view = views[namespace] = self._view(namespace)
            computed = self._compute(view, pod)
            self._log(computed.warnings)
            if computed.policy == sub.current:
                continue
            sub.current = computed.policy
            for listener in list(sub.listeners):
                listener(computed.policy)

    def _log(self, warnings: Iterable[str]) -> None:
        """Log each warning once (not again on every recomputation)."""
        for warning in warnings:
            if warning in self._logged:
                continue
            if len(self._logged) >= MAX_LOGGED:
                self._logged.clear()
            self._logged.add(warning)
            log.warning("%s", warning)

    # -- the API group -----------------------------------------------------------------------

    async def handle(self, request: Request, rest: list[str]) -> Response | Streaming:
        """``GET /api/v1/inbound/<namespace>/<pod>[?once=1]`` (a ``SubHandler``)."""
        if len(rest) != 2:
            raise HttpError(
                404, f"no such endpoint: {request.path} (use /api/v1/inbound/<namespace>/<pod>)"
            )
        if request.method != "GET":
            raise HttpError(405, f"method {request.method} not allowed here; use GET")
        namespace, pod = rest
        checker = Checker()
        checker.dns_label(namespace, "namespace")
        checker.dns_subdomain(pod, "pod")
        if checker.errors:
            raise HttpError(400, "; ".join(str(e) for e in checker.errors))
        if request.query.get("once") in ("1", "true"):
            computed = self.compute(namespace, pod)
            self._log(computed.warnings)
            return Response.json(
                200, {"policy": _policy_json(computed.policy), "warnings": list(computed.warnings)}
            )
        return Streaming(lambda writer: self._pump(namespace, pod, writer))

    async def _pump(self, namespace: str, pod: str, writer: StreamWriter) -> None:
        wake = asyncio.Event()
        latest: list[PodInboundPolicy | None] = []

        def on_change(policy: PodInboundPolicy | None) -> None:
            latest[:] = [policy]
            wake.set()

        current, unsubscribe = self.subscribe(namespace, pod, on_change)
        try:
            await writer.send(_line({"policy": _policy_json(current)}))
            while True:
                if not await _wait(wake, self.heartbeat):
                    await writer.send(b"{}\n")
                    continue
                wake.clear()
                if latest:
                    await writer.send(_line({"policy": _policy_json(latest.pop())}))
        finally:
            unsubscribe()


def _targets(policy: AuthorizationPolicy, kind: str, name: str) -> bool:
    ref = policy.spec.target_ref
    return ref.kind == kind and ref.name == name


def _any_audit(policies: Iterable[AuthorizationPolicy]) -> bool:
    return any(p.spec.mode == "audit" for p in policies)


def _policy_json(policy: PodInboundPolicy | None) -> dict[str, Any] | None:
    return None if policy is None else policy.to_json()


__all__ = ["Computed", "InboundPolicies"]
