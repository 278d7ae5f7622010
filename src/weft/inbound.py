"""Inbound policy as the proxy receives it: who may call each port of a pod, and how often.

Plain frozen data with a JSON form, shared by the control plane (which derives it from the
``Server``, ``AuthorizationPolicy``, ``MeshTLSAuthentication``, ``NetworkAuthentication``,
``HTTPRoute`` (parentRef kind ``Server``) and ``HTTPLocalRateLimitPolicy`` resources and the
default-inbound-policy annotations) and the inbound proxy (which enforces it).

One :class:`InboundPolicy` describes one port of one pod:

- ``server`` names the ``Server`` resource that selects the port (``None``: no Server does, and
  ``default_policy`` applies); ``protocol`` is the Server's ``proxyProtocol`` in lower case
  (``unknown`` means detect);
- ``authorizations`` apply to all traffic on the port (AuthorizationPolicies targeting the Server
  or the pod's Namespace, or the authorizations the default policy implies). A connection or
  request is allowed when **any** applicable authorization allows it;
- ``routes`` are the HTTPRoutes attached to the Server, each with its own extra
  ``authorizations`` (AuthorizationPolicies targeting that HTTPRoute). When a Server has routes,
  an HTTP request that matches none of them is answered 404 (as Linkerd does); with no routes,
  every request is on one implicit route;
- ``probes`` are HTTP ``(path)`` the runtime's health checks use on this port: always allowed;
- ``audit``: deny decisions are recorded but the traffic is allowed (the ``audit`` default
  policy, or ``mode: audit`` on an AuthorizationPolicy);
- ``ratelimit``: the HTTPLocalRateLimitPolicy targeting the Server, if any.

An :class:`Authorization` allows a client when its source address is in ``networks`` (every
address when empty, minus each network's ``except``) **and**, when ``authenticated``, the client
presented a mesh TLS identity matching one of ``identities`` (any identity when empty). Identity
patterns are DNS-form identities (``web.booksapp.serviceaccount.identity.cluster.local``) where
``*`` matches one or more whole labels at the start (``*.booksapp.serviceaccount.identity...``),
or the single pattern ``*`` (any authenticated client).

Not for: evaluation (``weft.core.authz``), rate-limit arithmetic (``weft.core.ratelimit``),
deriving policy from resources (``weft.control.inbound``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from weft.policy import _NESTED, RouteMatch, _from_json, _to_json

DEFAULT_POLICIES = (
    "all-unauthenticated",
    "all-authenticated",
    "cluster-unauthenticated",
    "cluster-authenticated",
    "deny",
    "audit",
)
DEFAULT_POLICY = "all-unauthenticated"
PROTOCOLS = ("unknown", "http1", "http2", "grpc", "opaque", "tls")


@dataclass(frozen=True, slots=True)
class Network:
    """A CIDR and the CIDRs carved out of it."""

    cidr: str
    exceptions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Authorization:
    """One way to be allowed. ``kind``/``name`` become the ``authz_kind``/``authz_name`` labels:
    kind ``authorizationpolicy`` (name ``<name>``), ``default`` (name: the default policy) or
    ``probe``."""

    kind: str
    name: str
    networks: tuple[Network, ...] = ()
    authenticated: bool = False
    identities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InboundRoute:
    """An HTTPRoute attached to the Server (``name`` is ``<namespace>/<name>``)."""

    name: str
    matches: tuple[RouteMatch, ...] = ()  # empty: every request
    authorizations: tuple[Authorization, ...] = ()


@dataclass(frozen=True, slots=True)
class RateLimitOverride:
    """A limit for the named client identities (DNS-form, exact)."""

    requests_per_second: float
    identities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """An HTTPLocalRateLimitPolicy (``name`` is ``<namespace>/<name>``). ``total`` bounds all
    requests to the Server; ``identity`` bounds each client identity separately (all clients
    without an identity share one bucket); ``overrides`` replace ``identity`` for named clients."""

    name: str
    total: float | None = None
    identity: float | None = None
    overrides: tuple[RateLimitOverride, ...] = ()


@dataclass(frozen=True, slots=True)
class InboundPolicy:
    """Everything the inbound proxy enforces on one port (see the module docstring)."""

    port: int
    server: str | None = None  # "<namespace>/<name>" of the Server, None: the default policy
    protocol: str = "unknown"
    default_policy: str = DEFAULT_POLICY
    authorizations: tuple[Authorization, ...] = ()
    routes: tuple[InboundRoute, ...] = ()
    probes: tuple[str, ...] = ()
    audit: bool = False
    ratelimit: RateLimit | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = _to_json(self)
        out["port"] = self.port
        return out

    @classmethod
    def from_json(cls, data: Any) -> InboundPolicy:
        policy: InboundPolicy = _from_json(cls, data)
        if not isinstance(policy.port, int) or not 0 < policy.port < 65536:
            raise ValueError(f"InboundPolicy: port must be 1-65535, got {policy.port!r}")
        if policy.protocol not in PROTOCOLS:
            raise ValueError(f"InboundPolicy: unknown protocol {policy.protocol!r}")
        if policy.default_policy not in DEFAULT_POLICIES:
            raise ValueError(f"InboundPolicy: unknown default policy {policy.default_policy!r}")
        return policy


def default_authorizations(
    policy: str, cluster_networks: tuple[Network, ...]
) -> tuple[Authorization, ...]:
    """What a default policy allows, as authorizations of kind ``default`` named after it:
    ``all-*`` any address, ``cluster-*`` the cluster networks, ``*-authenticated`` any mesh
    identity; ``deny`` and ``audit`` nothing (audit allows by recording, not by authorizing)."""
    if policy not in DEFAULT_POLICIES:
        raise ValueError(f"unknown default policy {policy!r}; expected one of {DEFAULT_POLICIES}")
    if policy in ("deny", "audit"):
        return ()
    networks = cluster_networks if policy.startswith("cluster-") else ()
    authenticated = policy.endswith("-authenticated")
    return (Authorization("default", policy, networks=networks, authenticated=authenticated),)


@dataclass(frozen=True, slots=True)
class PodInboundPolicy:
    """All ports of one pod: ``ports`` holds the ports a Server or a container declares;
    ``default`` is the policy of any other port (its ``port`` field is unused, set to 1)."""

    ports: tuple[InboundPolicy, ...]
    default: InboundPolicy

    def for_port(self, port: int) -> InboundPolicy:
        for p in self.ports:
            if p.port == port:
                return p
        return self.default

    def to_json(self) -> dict[str, Any]:
        return {"ports": [p.to_json() for p in self.ports], "default": self.default.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> PodInboundPolicy:
        if not isinstance(data, dict) or not isinstance(data.get("ports", []), list):
            raise ValueError("PodInboundPolicy: expected {'ports': [...], 'default': {...}}")
        return cls(
            ports=tuple(InboundPolicy.from_json(p) for p in data.get("ports", [])),
            default=InboundPolicy.from_json(data.get("default")),
        )


_NESTED.update(
    {
        ("Authorization", "networks"): (Network,),
        ("InboundRoute", "matches"): (RouteMatch,),
        ("InboundRoute", "authorizations"): (Authorization,),
        ("RateLimit", "overrides"): (RateLimitOverride,),
        ("InboundPolicy", "authorizations"): (Authorization,),
        ("InboundPolicy", "routes"): (InboundRoute,),
        ("InboundPolicy", "ratelimit"): RateLimit,
    }
)

__all__ = [
    "DEFAULT_POLICIES",
    "DEFAULT_POLICY",
    "PROTOCOLS",
    "Authorization",
    "InboundPolicy",
    "InboundRoute",
    "Network",
    "PodInboundPolicy",
    "RateLimit",
    "RateLimitOverride",
    "default_authorizations",
]
