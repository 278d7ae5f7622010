"""The inbound proxy's authorization and rate limits: this pod's policy, followed and enforced.

:class:`InboundPolicyWatch` follows ``GET /api/v1/inbound/<namespace>/<pod>`` on the control
plane (an NDJSON stream of ``{"policy": <PodInboundPolicy> | null}`` and heartbeat ``{}`` lines)
with :class:`weft.control.follow.Follower`: when the stream breaks (control plane restarted,
socket gone, silence beyond three heartbeats, anything else) the last policy stays in force and
the stream is reopened after a jittered backoff capped at a few seconds, forever. Until the
first policy arrives (``{"policy": null}`` is not one: the pod is not known yet) every port gets
the ``default_policy`` given, built here as the control plane builds default policies
(:func:`default_authorizations`). A policy that does not parse or compile is logged and ignored
(the previous one stays).

:meth:`InboundPolicyWatch.port` hands the accept path a :class:`PortPolicy` per local port
(cached); a new policy replaces its compiled state in place, which existing connections notice
on their next request (one identity comparison per request), so changes apply at once to new
connections and to requests on open ones. A port's rate limiter is kept across updates that leave
its ``RateLimit`` unchanged.

Per connection: :meth:`PortPolicy.tcp_connection` decides an opaque TCP or TLS connection
(:meth:`PortPolicy.tcp_allowed` asks the same without counting, before the early dial);
:meth:`PortPolicy.http_connection` prepares an :class:`HttpConn` whose :meth:`HttpConn.check`
answers each request with ``None`` (go on) or a :class:`Denial` (403 unauthorized, 404 no route,
429 rate limited). When the client is allowed, the port has no routes and no rate limit, a check
is an identity comparison and a counter increment. Probes are not rate limited.

Metrics (Prometheus text through ``ProxyMetrics.extra``; names and labels as Linkerd's):
``inbound_http_authz_allow_total`` and ``inbound_tcp_authz_allow_total`` (``target_port``,
``srv_kind`` (``server`` or ``default``), ``srv_name`` (the Server's name, or the default
policy's), ``route_name`` (HTTP; ``default`` without routes, ``probe`` for probes),
``authz_kind``, ``authz_name``, ``tls`` (``true`` or ``no_identity``), ``client_id`` when
known); ``inbound_http_authz_deny_total`` and ``inbound_tcp_authz_deny_total`` (the same without
the ``authz_*`` labels); ``inbound_http_authz_audit_total`` and ``inbound_tcp_authz_audit_total``
(denied by policy, allowed because it audits; counted there only);
``inbound_http_route_not_found_total`` (``target_port``, ``srv_kind``, ``srv_name``, ``tls``,
``client_id``: 404s, which are not authorization decisions);
``inbound_http_local_ratelimit_total`` (``srv_name``, ``ratelimit``:
the HTTPLocalRateLimitPolicy's name, ``limit``: ``total``, ``identity`` or ``override``). A
rate-limited request was authorized first, so it is also in ``inbound_http_authz_allow_total``.
Counters are objects held by the connections; text is only formatted at scrape time.

Not for: the decision logic (:mod:`weft.core.authz`, :mod:`weft.core.ratelimit`), answering the
client (the HTTP path writes the :class:`Denial`), nor deriving policies (the control plane).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from weft.control.client import ControlClient
from weft.control.follow import ControlStreams, Follower
from weft.core.authz import (
    NO_ROUTE_VERDICT,
    PROBE_VERDICT,
    HttpAuthz,
    InboundAuthz,
    IPAddress,
    Verdict,
)
from weft.core.backoff import ExponentialBackoff
from weft.core.ratelimit import LocalRateLimiter, check_config
from weft.core.routes import HeaderLookup
from weft.inbound import (
    DEFAULT_POLICY,
    Authorization,
    InboundPolicy,
    Network,
    PodInboundPolicy,
)
from weft.inbound import (
    default_authorizations as implied_authorizations,
)
from weft.metrics.proxy import LabelItems, ProxyMetrics, render_family

log = logging.getLogger("weft.inbound.policy")

# Linkerd's default clusterNetworks: what "cluster" means when none are configured
DEFAULT_CLUSTER_NETWORKS = (
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fd00::/8",
)


def default_authorizations(
    name: str, cluster_networks: Sequence[str] = ()
) -> tuple[Authorization, ...]:
    """:func:`weft.inbound.default_authorizations` with the cluster networks as CIDRs
    (Linkerd's defaults when none are given)."""
    networks = tuple(Network(cidr) for cidr in (cluster_networks or DEFAULT_CLUSTER_NETWORKS))
    return implied_authorizations(name, networks)


def default_pod_policy(name: str, cluster_networks: Sequence[str] = ()) -> PodInboundPolicy:
    """Every port under the default policy ``name`` (see :func:`default_authorizations`)."""
    policy = InboundPolicy(
        port=1,
        default_policy=name,
        authorizations=default_authorizations(name, cluster_networks),
        audit=name == "audit",
    )
    return PodInboundPolicy(ports=(), default=policy)


# -- answers and counters -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Denial:
    """What to answer a refused request: ``status`` (403, 404 or 429), ``reason`` (a short token
    for the proxy's error header), ``detail`` (a sentence for the body) and, for 429,
    ``retry_after`` seconds."""

    status: int
    reason: str
    detail: str
    retry_after: float = 0.0

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Header fields to add to the answer: ``retry-after`` (whole seconds, at least 1)."""
        if self.retry_after <= 0:
            return []
        return [(b"retry-after", b"%d" % max(1, math.ceil(self.retry_after)))]


class _Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


_FAMILIES = {
    "inbound_http_authz_allow_total": "HTTP requests authorized",
    "inbound_http_authz_deny_total": "HTTP requests denied by authorization policy",
    "inbound_http_authz_audit_total": "HTTP requests denied by policy but allowed by audit mode",
    "inbound_http_route_not_found_total": "HTTP requests matching no route of their server",
    "inbound_http_local_ratelimit_total": "HTTP requests refused by a local rate limit",
    "inbound_tcp_authz_allow_total": "TCP connections authorized",
    "inbound_tcp_authz_deny_total": "TCP connections denied by authorization policy",
    "inbound_tcp_authz_audit_total": "TCP connections denied by policy but allowed by audit mode",
}


class _Counters:
    """The inbound policy's counters, created on first use and rendered at scrape time."""

    def __init__(self) -> None:
        self._families: dict[str, dict[LabelItems, _Counter]] = {name: {} for name in _FAMILIES}

    def get(self, family: str, labels: LabelItems) -> _Counter:
        table = self._families[family]
        counter = table.get(labels)
        if counter is None:
            counter = table[labels] = _Counter()
        return counter

    def render(self) -> str:
        return "".join(
            render_family(
                name, "counter", _FAMILIES[name], [(k, c.value) for k, c in table.items()]
            )
            for name, table in list(self._families.items())
            if table
        )


def _short(name: str) -> str:
    """A resource's name without its namespace (always the pod's own), as Linkerd's labels."""
    return name.rpartition("/")[2]


# -- ports ------------------------------------------------------------------------------------


class _Snapshot:
    """One port's compiled policy and what its connections share."""

    __slots__ = ("authz", "limit_details", "limiter", "ratelimit_name", "srv_kind", "srv_name")

    def __init__(self, authz: InboundAuthz, limiter: LocalRateLimiter | None) -> None:
        policy = authz.policy
        self.authz = authz
        self.limiter = limiter
        self.srv_kind = "server" if policy.server else "default"
        self.srv_name = _short(policy.server) if policy.server else policy.default_policy
        rl = policy.ratelimit
        self.ratelimit_name = _short(rl.name) if rl is not None else ""
        self.limit_details: dict[str, str] = {}
        if rl is not None:
            for kind, rate in (("total", rl.total), ("identity", rl.identity)):
                if rate is not None:
                    self.limit_details[kind] = f"{kind} rate limit exceeded ({rate:g} rps)"
            self.limit_details["override"] = "override rate limit exceeded"


class PortPolicy:
    """The policy of one local port (see the module docstring); from
    :meth:`InboundPolicyWatch.port`."""

    __slots__ = ("_clock", "_counters", "_snap", "port")

    def __init__(
        self,
        port: int,
        authz: InboundAuthz,
        counters: _Counters,
        clock: Callable[[], float],
    ) -> None:
        self.port = port
        self._counters = counters
        self._clock = clock
        self._snap = self._snapshot(authz, None)

    def __repr__(self) -> str:
        s = self._snap
        return f"<PortPolicy {self.port} {s.srv_kind}={s.srv_name}>"

    @property
    def policy(self) -> InboundPolicy:
        return self._snap.authz.policy

    @property
    def protocol(self) -> str:
        """The Server's ``proxyProtocol`` (``unknown``: detect; ``opaque``: skip detection)."""
        return self._snap.authz.policy.protocol

    def _snapshot(self, authz: InboundAuthz, old: _Snapshot | None) -> _Snapshot:
        config = authz.policy.ratelimit
        limiter = None
        if config is not None:
            if old is not None and old.limiter is not None and old.limiter.config == config:
                limiter = old.limiter  # unchanged limits keep their buckets
            else:
                limiter = LocalRateLimiter(config, self._clock)
        return _Snapshot(authz, limiter)

    def update(self, authz: InboundAuthz) -> None:
        """Enforce ``authz`` from now on (a no-op when it is the one in force)."""
        if authz is not self._snap.authz:
            self._snap = self._snapshot(authz, self._snap)

    def tcp_allowed(self, client_ip: str | IPAddress | None, client_id: str | None) -> bool:
        """Whether :meth:`tcp_connection` would accept this client, counting nothing: the accept
        path can skip its early upstream dial for a client that may only be served HTTP requests
        (a server that speaks first must not greet a client the port does not authorize)."""
        return self._snap.authz.connection(client_ip, client_id).allowed

    def tcp_connection(
        self, client_ip: str | IPAddress | None, client_id: str | None, tls: bool
    ) -> bool:
        """Whether to accept an opaque TCP or TLS connection (counted in the TCP families)."""
        snap = self._snap
        verdict = snap.authz.connection(client_ip, client_id)
        if verdict.authorization is not None:
            family = "inbound_tcp_authz_allow_total"
        elif verdict.audit:
            family = "inbound_tcp_authz_audit_total"
        else:
            family = "inbound_tcp_authz_deny_total"
        labels = _base_labels(self.port, snap, None, verdict.authorization)
        self._counters.get(family, labels + _client_labels(client_id, tls)).value += 1
        return verdict.allowed

    def http_connection(
        self, client_ip: str | IPAddress | None, client_id: str | None, tls: bool
    ) -> HttpConn:
        """The request checker of one HTTP connection from this client."""
        return HttpConn(self, client_ip, client_id, tls)


def _base_labels(
    port: int, snap: _Snapshot, route: str | None, authz: Authorization | None
) -> LabelItems:
    labels: LabelItems = (
        ("target_port", str(port)),
        ("srv_kind", snap.srv_kind),
        ("srv_name", snap.srv_name),
    )
    if route is not None:
        labels += (("route_name", _short(route)),)
    if authz is not None:
        labels += (("authz_kind", authz.kind), ("authz_name", authz.name))
    return labels


def _client_labels(client_id: str | None, tls: bool) -> LabelItems:
    labels: LabelItems = (("tls", "true" if tls else "no_identity"),)
    if client_id:
        labels += (("client_id", client_id),)
    return labels


# dot-segments, empty segments, encoded dots, slashes and backslashes, raw backslashes
_ABNORMAL_PATH = re.compile(rb"(?:^|/)\.{1,2}(?:/|$)|//|%2[eEfF]|%5[cC]|\\")
ABNORMAL_PATH = Denial(
    400,
    "path-not-normalized",
    "the request path is not in normal form (dot-segments, empty segments or encoded '.', '/'"
    " or '\\'); this port's routes are matched on the exact path",
)


class _Outcome:
    """What a verdict means on one connection: the counter to bump and the answer."""

    __slots__ = ("counter", "denial")

    def __init__(self, counter: _Counter, denial: Denial | None) -> None:
        self.counter = counter
        self.denial = denial


class HttpConn:
    """Checks the requests of one HTTP connection; from :meth:`PortPolicy.http_connection`."""

    __slots__ = (
        "_authz", "_client_id", "_client_ip", "_client_labels", "_fast", "_limiter", "_outcomes",
        "_port", "_snap",
    )  # fmt: skip

    def __init__(
        self,
        port: PortPolicy,
        client_ip: str | IPAddress | None,
        client_id: str | None,
        tls: bool,
    ) -> None:
        self._port = port
        self._client_ip = client_ip
        self._client_id = client_id if isinstance(client_id, str) and client_id else None
        self._client_labels = _client_labels(self._client_id, tls)
        self._bind()

    def _bind(self) -> None:
        snap = self._snap = self._port._snap
        authz: HttpAuthz = snap.authz.http(self._client_ip, self._client_id)
        self._authz = authz
        self._limiter = snap.limiter
        self._outcomes: dict[Verdict, _Outcome] = {}
        self._fast: _Counter | None = None
        constant = authz.constant
        if constant is not None and constant.allowed and snap.limiter is None:
            self._fast = self._outcome(constant).counter

    def check(
        self, method: bytes, path: bytes, query: bytes, headers: HeaderLookup
    ) -> Denial | None:
        """``None``: forward the request; else the answer to send. ``path`` and ``query`` are
        the request target split at the first ``?``; ``headers(name)`` answers a header's value
        (lower-case name) or ``None``."""
        if self._snap is not self._port._snap:
            self._bind()
        fast = self._fast
        if fast is not None:
            fast.value += 1
            return None
        return self._check(method, path, query, headers)

    def _check(
        self, method: bytes, path: bytes, query: bytes, headers: HeaderLookup
    ) -> Denial | None:
        if self._authz.constant is None and _ABNORMAL_PATH.search(path):
            # routes decide by path: a path an app would normalize into another route's
            # (``/public/../admin``, ``//admin``, ``%2e%2e``) must not get this route's rights
            return ABNORMAL_PATH
        verdict = self._authz.check(method, path, query, headers)
        outcome = self._outcomes.get(verdict)
        if outcome is None:
            outcome = self._outcomes[verdict] = self._outcome(verdict)
        outcome.counter.value += 1
        if outcome.denial is not None:
            return outcome.denial
        limiter = self._limiter
        if limiter is None or verdict is PROBE_VERDICT:
            return None
        wait, limit = limiter.check(self._client_id)
        if wait <= 0.0:
            return None
        snap = self._snap
        labels = (("srv_name", snap.srv_name), ("ratelimit", snap.ratelimit_name), ("limit", limit))
        self._port._counters.get("inbound_http_local_ratelimit_total", labels).value += 1
        detail = snap.limit_details.get(limit, "rate limit exceeded")
        return Denial(429, "rate-limited", detail, wait)

    def _outcome(self, verdict: Verdict) -> _Outcome:
        snap = self._snap
        port = self._port
        denial = None
        if verdict is NO_ROUTE_VERDICT:
            family = "inbound_http_route_not_found_total"
            labels = _base_labels(port.port, snap, None, None)
            denial = Denial(404, "route-not-found", "no route found for the request")
        else:
            labels = _base_labels(port.port, snap, verdict.route, verdict.authorization)
            if verdict.authorization is not None:
                family = "inbound_http_authz_allow_total"
            elif verdict.audit:
                family = "inbound_http_authz_audit_total"
            else:
                family = "inbound_http_authz_deny_total"
                route = _short(verdict.route) if verdict.route else "default"
                detail = f"unauthorized request on route {route} of {snap.srv_name}"
                denial = Denial(verdict.status or 403, "unauthorized", detail)
        return _Outcome(port._counters.get(family, labels + self._client_labels), denial)


# -- the watch --------------------------------------------------------------------------------


def _compile(
    pod: PodInboundPolicy, previous: dict[InboundPolicy, InboundAuthz]
) -> tuple[dict[int, InboundAuthz], InboundAuthz]:
    """Every port's compiled policy (reusing unchanged ones); ValueError/TypeError if invalid."""
    if not isinstance(pod, PodInboundPolicy) or not isinstance(pod.ports, tuple):
        raise ValueError("expected a PodInboundPolicy")

    def one(policy: InboundPolicy) -> InboundAuthz:
        authz = previous.get(policy)
        if authz is None:
            authz = InboundAuthz(policy)
            if policy.ratelimit is not None:
                check_config(policy.ratelimit)
        return authz

    ports: dict[int, InboundAuthz] = {}
    for p in pod.ports:
        ports.setdefault(p.port, one(p))  # the first entry of a port, as PodInboundPolicy.for_port
    return ports, one(pod.default)


def _q(segment: str) -> str:
    return quote(segment, safe="")


class InboundPolicyWatch:
    """This pod's inbound policy, followed on the control plane (see the module docstring).

    ``control`` is the control plane's endpoint (``unix:PATH`` or ``http://host:port``);
    ``default_policy`` is enforced until the first policy arrives; ``cluster_networks`` are
    what its ``cluster-*`` forms allow (Linkerd's defaults when empty); ``clock`` drives the rate
    limiters. Call :meth:`start` (in the event loop) to open the stream, :meth:`close` to stop.
    """

    def __init__(
        self,
        control: str | ControlClient,
        *,
        namespace: str,
        pod: str,
        metrics: ProxyMetrics,
        default_policy: str = DEFAULT_POLICY,
        cluster_networks: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        backoff: ExponentialBackoff | None = None,
        streams: ControlStreams | None = None,
    ) -> None:
        if not namespace or not pod:
            raise ValueError("InboundPolicyWatch needs the pod's namespace and name")
        for cidr in cluster_networks:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"cluster network {cidr!r} is not a CIDR: {exc}") from None
        default = default_pod_policy(default_policy, cluster_networks)
        self.client = control if isinstance(control, ControlClient) else ControlClient(control)
        self.namespace = namespace
        self.pod = pod
        self.metrics = metrics
        self.clock = clock
        path = f"/api/v1/inbound/{_q(namespace)}/{_q(pod)}"
        self._follower = Follower(
            "inbound_policy",
            f"{namespace}/{pod}",
            lambda: self.client.stream(path),
            self._got,
            registry=streams,
            backoff=backoff,
        )
        self._counters = _Counters()
        self._ports_authz, self._default_authz = _compile(default, {})
        self._ports: dict[int, PortPolicy] = {}
        self._ready = asyncio.Event()
        self.current: PodInboundPolicy | None = None  # the last policy from the control plane
        metrics.extra.append(self._counters.render)

    def __repr__(self) -> str:
        state = "connected" if self._follower.connected else "disconnected"
        source = "control plane" if self.current is not None else "default"
        return f"<InboundPolicyWatch {self.namespace}/{self.pod} {state} policy={source}>"

    @property
    def ready(self) -> bool:
        """True once a policy arrived from the control plane."""
        return self._ready.is_set()

    def start(self) -> None:
        """Open the stream (once; needs a running event loop)."""
        self._follower.start()

    async def wait_ready(self, timeout: float) -> bool:
        """Start if needed and wait at most ``timeout`` s for the first policy; :attr:`ready`."""
        self.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._ready.wait()), timeout)
        return self.ready

    def port(self, port: int) -> PortPolicy:
        """The policy of local ``port`` (the same object for every call)."""
        pp = self._ports.get(port)
        if pp is None:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"port must be 1-65535, got {port!r}")
            authz = self._ports_authz.get(port, self._default_authz)
            pp = self._ports[port] = PortPolicy(port, authz, self._counters, self.clock)
        return pp

    def apply(self, pod: PodInboundPolicy) -> None:
        """Enforce ``pod`` from now on (the stream calls this); ValueError if it is invalid."""
        previous = {a.policy: a for a in (*self._ports_authz.values(), self._default_authz)}
        try:
            ports, default = _compile(pod, previous)
        except TypeError as exc:  # an unhashable field where a value was expected
            raise ValueError(f"invalid inbound policy: {exc}") from None
        self._ports_authz, self._default_authz = ports, default
        self.current = pod
        for number, pp in self._ports.items():
            pp.update(ports.get(number, default))

    def _got(self, item: Any) -> bool:
        """One value of the stream: True when it was a policy (applied or not)."""
        if not isinstance(item, dict) or "policy" not in item:
            return False  # heartbeat
        raw = item["policy"]
        if raw is None:
            log.debug("no inbound policy for %s/%s yet", self.namespace, self.pod)
            return True
        try:
            self.apply(PodInboundPolicy.from_json(raw))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning(
                "ignoring an invalid inbound policy for %s/%s (keeping the previous one): %s",
                self.namespace,
                self.pod,
                exc,
            )
            return False
        if not self._ready.is_set():
            log.info("inbound policy for %s/%s received", self.namespace, self.pod)
            self._ready.set()
        return True

    async def close(self) -> None:
        await self._follower.close()
        with contextlib.suppress(ValueError):
            self.metrics.extra.remove(self._counters.render)


__all__ = [
    "DEFAULT_CLUSTER_NETWORKS",
    "Denial",
    "HttpConn",
    "InboundPolicyWatch",
    "PortPolicy",
    "default_authorizations",
    "default_pod_policy",
]
