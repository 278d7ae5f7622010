"""Inbound authorization: one port's :class:`~weft.inbound.InboundPolicy`, compiled to answer fast.

:class:`InboundAuthz` compiles a policy once (networks parsed into ``ipaddress`` objects, identity
patterns split into exact names and suffixes, the routes into a
:class:`~weft.core.routes.RouteTable`) and answers:

- per connection, for opaque TCP and TLS servers: :meth:`InboundAuthz.connection` ``(client_ip,
  client_id) -> Verdict``, from the port's ``authorizations``;
- per HTTP connection: :meth:`InboundAuthz.http` decides the port-level authorization once for
  the client (its address and identity do not change on a connection), so that
  :meth:`HttpAuthz.check` per request only matches a route. Each route's verdict is computed on
  its first request and kept for the connection.

The model's semantics (:mod:`weft.inbound`): an authorization allows a client when the client's
address is in one of its ``networks`` and not in that network's exceptions (any address when it
has none), and, when ``authenticated``, the client has a mesh identity matching one of its
``identities`` (any identity when it has none). A request is allowed when any authorization of
the port **or** of its route allows it; the first that does (the port's first, in order, then the
route's) is the one reported, for metrics labels. Identity patterns: an exact DNS-form identity,
``*`` (any identity), or ``*.<suffix>`` (one or more non-empty labels, then ``.<suffix>``);
identities compare case-sensitively, as the identity service issues them. A client address that
does not parse (nor an IPv4-mapped IPv6 address, which counts as its IPv4 address) is in no
network.

HTTP specifics: ``probes`` paths are always allowed for ``GET`` and ``HEAD`` (exact path, query
ignored; route ``probe``, authorization kind ``probe``); when the port has routes, a request
matching none is denied with 404 (also under audit: it is a routing answer, not an authorization
one); without routes every request is on the implicit route ``default``. A request or connection
no authorization allows is denied with 403, unless the policy is in ``audit`` mode: then it is
allowed with ``audit=True`` and no authorization.

Sans-I/O. Not for: rate limits (:mod:`weft.core.ratelimit`), metrics or answering the client
(:mod:`weft.proxy.inbound.policy`), nor deriving policies from resources (the control plane).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from weft.core.routes import HeaderLookup, RouteTable
from weft.inbound import Authorization, InboundPolicy, InboundRoute, Network
from weft.policy import PathMatch, Route, RouteMatch, Rule, ServicePolicy, ValueMatch

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

DEFAULT_ROUTE = "default"
PROBE_ROUTE = "probe"
PROBE_AUTHORIZATION = Authorization(kind="probe", name="probe")
FORBIDDEN = 403
NOT_FOUND = 404


@dataclass(frozen=True, slots=True, eq=False)
class Verdict:
    """The decision on a connection or request.

    ``allowed``; ``authorization``: the one that allowed (``None`` when denied or allowed only by
    audit); ``audit``: denied by policy but allowed because the policy audits; ``route``: the
    route's name for HTTP (``default`` without routes, ``probe`` for probes, ``None`` for a
    connection or a request matching no route); ``status``: what to answer when denied (403, or
    404 when no route matches), ``None`` when allowed. Compared by identity: decisions are
    shared, so callers may key caches on them.
    """

    allowed: bool
    authorization: Authorization | None
    audit: bool
    route: str | None
    status: int | None


PROBE_VERDICT = Verdict(True, PROBE_AUTHORIZATION, False, PROBE_ROUTE, None)
NO_ROUTE_VERDICT = Verdict(False, None, False, None, NOT_FOUND)


def parse_ip(client_ip: str | IPAddress | None) -> IPAddress | None:
    """The client's address as an ``ipaddress`` object (IPv4-mapped IPv6 as IPv4); ``None`` when
    it does not parse (such a client is in no network)."""
    if isinstance(client_ip, IPv4Address | IPv6Address):
        ip: IPAddress = client_ip
    elif isinstance(client_ip, str):
        try:
            ip = ipaddress.ip_address(client_ip)
        except ValueError:
            return None
    else:
        return None
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class _Identities:
    """Compiled identity patterns: exact names, ``.suffix`` wildcards, or any identity."""

    __slots__ = ("any", "exact", "suffixes")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.any = "*" in patterns
        self.exact = frozenset(p for p in patterns if not p.startswith("*."))
        self.suffixes = tuple(p[1:] for p in patterns if p.startswith("*."))  # ".suffix"

    def match(self, identity: str) -> bool:
        if self.any or identity in self.exact:
            return True
        for suffix in self.suffixes:
            if identity.endswith(suffix) and len(identity) > len(suffix):
                head = identity[: -len(suffix)]
                if not (head.startswith(".") or head.endswith(".") or ".." in head):
                    return True
        return False


class _Networks:
    """Compiled networks, each with its exceptions."""

    __slots__ = ("nets",)

    def __init__(self, nets: tuple[tuple[IPNetwork, tuple[IPNetwork, ...]], ...]) -> None:
        self.nets = nets

    def match(self, ip: IPAddress | None) -> bool:
        if ip is None:
            return False
        for net, exceptions in self.nets:
            if ip in net and not any(ip in e for e in exceptions):
                return True
        return False


class _Rule:
    """One compiled :class:`~weft.inbound.Authorization`."""

    __slots__ = ("authenticated", "authorization", "identities", "networks")

    def __init__(self, authorization: Authorization, where: str) -> None:
        a = authorization
        if not isinstance(a, Authorization):
            raise ValueError(f"{where}: expected an authorization, got {a!r}")
        if not isinstance(a.kind, str) or not isinstance(a.name, str):
            raise ValueError(f"{where}: kind and name must be strings")
        where = f"{where} ({a.kind} {a.name!r})"
        if not isinstance(a.authenticated, bool):
            raise ValueError(f"{where}: authenticated must be true or false")
        if not isinstance(a.identities, tuple) or not all(isinstance(i, str) for i in a.identities):
            raise ValueError(f"{where}: identities must be a list of strings")
        if not isinstance(a.networks, tuple):
            raise ValueError(f"{where}: networks must be a list")
        self.authorization = a
        self.authenticated = a.authenticated
        self.identities = _Identities(a.identities) if a.identities else None
        nets = tuple(_network(n, f"{where} networks[{i}]") for i, n in enumerate(a.networks))
        self.networks = _Networks(nets) if nets else None

    def allows(self, ip: IPAddress | None, client_id: str | None) -> bool:
        networks = self.networks
        if networks is not None and not networks.match(ip):
            return False
        if not self.authenticated:
            return True
        identities = self.identities
        return client_id is not None and (identities is None or identities.match(client_id))


def _parse_cidr(text: object, where: str) -> IPNetwork:
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected a CIDR string, got {text!r}")
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"{where}: invalid CIDR {text!r}: {exc}") from None


def _network(n: Network, where: str) -> tuple[IPNetwork, tuple[IPNetwork, ...]]:
    if not isinstance(n, Network):
        raise ValueError(f"{where}: expected a network, got {n!r}")
    if not isinstance(n.exceptions, tuple):
        raise ValueError(f"{where}: exceptions must be a list of CIDRs")
    net = _parse_cidr(n.cidr, f"{where} cidr")
    exceptions = tuple(
        _parse_cidr(e, f"{where} exceptions[{i}]") for i, e in enumerate(n.exceptions)
    )
    return net, exceptions


def _first(
    rules: tuple[_Rule, ...], ip: IPAddress | None, client_id: str | None
) -> Authorization | None:
    for rule in rules:
        if rule.allows(ip, client_id):
            return rule.authorization
    return None


def _check_value_matches(values: object, where: str) -> None:
    if not isinstance(values, tuple):
        raise ValueError(f"{where}: expected a list")
    for i, v in enumerate(values):
        if not (isinstance(v, ValueMatch) and isinstance(v.name, str) and isinstance(v.value, str)):
            raise ValueError(f"{where}[{i}]: expected a name and a value, got {v!r}")


def _check_match(m: object, where: str) -> None:
    if not isinstance(m, RouteMatch):
        raise ValueError(f"{where}: expected a route match, got {m!r}")
    if m.path is not None and not (isinstance(m.path, PathMatch) and isinstance(m.path.value, str)):
        raise ValueError(f"{where}: path must be a path match, got {m.path!r}")
    if m.method is not None and not isinstance(m.method, str):
        raise ValueError(f"{where}: method must be a string, got {m.method!r}")
    _check_value_matches(m.headers, f"{where} headers")
    _check_value_matches(m.query_params, f"{where} query_params")


def _check_policy(policy: InboundPolicy) -> None:
    if not isinstance(policy, InboundPolicy):
        raise ValueError(f"expected an InboundPolicy, got {type(policy).__name__}")
    if policy.server is not None and not isinstance(policy.server, str):
        raise ValueError(f"port {policy.port}: server must be a string, got {policy.server!r}")
    if not isinstance(policy.audit, bool):
        raise ValueError(f"port {policy.port}: audit must be true or false")
    for name in ("authorizations", "routes", "probes"):
        if not isinstance(getattr(policy, name), tuple):
            raise ValueError(f"port {policy.port}: {name} must be a list")
    if not all(isinstance(p, str) for p in policy.probes):
        raise ValueError(f"port {policy.port}: probes must be a list of paths")


class InboundAuthz:
    """One port's policy, compiled (see the module docstring). Raises ``ValueError`` naming the
    field for a policy that cannot be enforced (a bad CIDR, regular expression or type)."""

    __slots__ = ("_probes", "_route_index", "_route_rules", "_routes", "_rules", "_table", "policy")

    def __init__(self, policy: InboundPolicy) -> None:
        _check_policy(policy)
        where = f"port {policy.port}"
        self.policy = policy
        self._rules = tuple(
            _Rule(a, f"{where} authorizations[{i}]") for i, a in enumerate(policy.authorizations)
        )
        routes: list[Route] = []
        route_rules: list[tuple[_Rule, ...]] = []
        for i, r in enumerate(policy.routes):
            routes.append(self._route(r, f"{where} routes[{i}]"))
            route_rules.append(
                tuple(
                    _Rule(a, f"{where} routes[{i}] authorizations[{j}]")
                    for j, a in enumerate(r.authorizations)
                )
            )
        self._routes = tuple(policy.routes)
        self._route_rules = tuple(route_rules)
        # RouteTable hands back the Route objects built here: their identity names the route
        self._route_index = {id(route): i for i, route in enumerate(routes)}
        self._table = RouteTable(ServicePolicy(routes=tuple(routes))) if routes else None
        try:
            self._probes = frozenset(p.encode() for p in policy.probes)
        except UnicodeEncodeError as exc:
            raise ValueError(f"{where} probes: {exc}") from None

    @staticmethod
    def _route(r: InboundRoute, where: str) -> Route:
        if not isinstance(r, InboundRoute) or not isinstance(r.name, str):
            raise ValueError(f"{where}: expected a route with a name, got {r!r}")
        if not isinstance(r.matches, tuple) or not isinstance(r.authorizations, tuple):
            raise ValueError(f"{where} ({r.name}): matches and authorizations must be lists")
        for i, m in enumerate(r.matches):
            _check_match(m, f"{where} ({r.name}) matches[{i}]")
        return Route(name=r.name, rules=(Rule(matches=r.matches),))

    def __repr__(self) -> str:
        p = self.policy
        return (
            f"<InboundAuthz port={p.port} server={p.server or p.default_policy} "
            f"authorizations={len(self._rules)} routes={len(self._routes)}>"
        )

    @property
    def has_routes(self) -> bool:
        return self._table is not None

    def _verdict(self, authorization: Authorization | None, route: str | None) -> Verdict:
        if authorization is not None:
            return Verdict(True, authorization, False, route, None)
        if self.policy.audit:
            return Verdict(True, None, True, route, None)
        return Verdict(False, None, False, route, FORBIDDEN)

    def connection(self, client_ip: str | IPAddress | None, client_id: str | None) -> Verdict:
        """The decision for an opaque TCP or TLS connection (the port's authorizations)."""
        client_id = client_id if isinstance(client_id, str) and client_id else None
        return self._verdict(_first(self._rules, parse_ip(client_ip), client_id), None)

    def http(self, client_ip: str | IPAddress | None, client_id: str | None) -> HttpAuthz:
        """The per-connection evaluator of HTTP requests from this client."""
        client_id = client_id if isinstance(client_id, str) and client_id else None
        return HttpAuthz(self, parse_ip(client_ip), client_id)


class HttpAuthz:
    """Requests on one HTTP connection (see :meth:`InboundAuthz.http`).

    ``constant`` is the verdict of every request that is not a probe when the port has no
    routes (callers may skip :meth:`check` when it allows: a probe would be allowed too).
    """

    __slots__ = ("_authz", "_client_id", "_ip", "_server", "_verdicts", "constant")

    def __init__(self, authz: InboundAuthz, ip: IPAddress | None, client_id: str | None) -> None:
        self._authz = authz
        self._ip = ip
        self._client_id = client_id
        self._server = _first(authz._rules, ip, client_id)
        self._verdicts: list[Verdict | None] = [None] * len(authz._routes)
        self.constant = None if authz.has_routes else authz._verdict(self._server, DEFAULT_ROUTE)

    def check(self, method: bytes, path: bytes, query: bytes, headers: HeaderLookup) -> Verdict:
        """The verdict of one request: ``path`` and ``query`` are the target split at the first
        ``?``; ``headers(name)`` answers a header's value (lower-case name) or ``None``."""
        authz = self._authz
        if path in authz._probes and (method == b"GET" or method == b"HEAD"):
            return PROBE_VERDICT
        constant = self.constant
        if constant is not None:
            return constant
        table = authz._table
        matched = table.match(method, path, query, headers) if table is not None else None
        if matched is None:
            return NO_ROUTE_VERDICT
        i = authz._route_index[id(matched.route)]
        verdict = self._verdicts[i]
        if verdict is None:
            allowing = self._server or _first(authz._route_rules[i], self._ip, self._client_id)
            verdict = self._verdicts[i] = authz._verdict(allowing, authz._routes[i].name)
        return verdict


__all__ = [
    "DEFAULT_ROUTE",
    "FORBIDDEN",
    "NOT_FOUND",
    "NO_ROUTE_VERDICT",
    "PROBE_AUTHORIZATION",
    "PROBE_ROUTE",
    "PROBE_VERDICT",
    "HttpAuthz",
    "InboundAuthz",
    "Verdict",
    "parse_ip",
]
