"""The destination service: what a proxy's target resolves to, kept current from the cluster state.

A target is a Service's virtual IP and port (``10.96.0.5:8080``) or its name and port
(``web.shop.svc.cluster.local:8080``, ``web.shop.svc:8080``, ``web.shop:8080``, or ``web:8080`` in
the caller's namespace, ``default`` unless given). It resolves to a
:class:`weft.discovery.Destination`: the ready endpoints of the Service's EndpointSlices
(``discovery.k8s.io/v1``, several per Service; the port number is the slice's port of the same
name as the Service port, so a named target port can differ between slices), each joined with
its Pod (the slice endpoint's ``targetRef``) for its metadata as endpoint labels (``pod``,
``namespace``, ``deployment``, ``serviceaccount``), ``meshed`` when the pod has a proxy (with the
``identity`` its proxy proves, which the client proxy checks during mutual TLS, and the
``proxy_port`` a client proxy dials: its proxy's inbound port), and ``protocol="opaque"`` when
the port's ``appProtocol`` is ``tcp``/``opaque``. An endpoint without a known Pod (a slice
written by hand for an outside address) is plain: labelled with its namespace, not meshed. A
target that is a running pod's own address resolves to that single endpoint (so direct calls
between meshed pods are mutual TLS too). Any other target resolves to ``None``: the proxy forwards
to the original address. The snapshot's ``policy`` (routes, retries, timeouts, failure accrual) is
built from the Service's annotations and the HTTPRoutes attached to it
(:mod:`weft.control.policies`).

:class:`DestinationService` keeps each subscribed target's snapshot and recomputes only the
targets a change can affect, found through an index of what each target depends on: its Service
(by name, and by cluster IP for an address target), its namespace (routes, the Namespace), and
the addresses of direct pod targets. A Pod change reaches the Services whose slices name it (the
slices' ``pod`` index), an EndpointSlice change its own Service: the cost of a change grows with
the subscribers of what changed, never with the cluster or all subscriptions. Subscribers of the
same target share one computation, and listeners are called, synchronously, only when the
snapshot changed. Listeners must not block (the API's stream handler just records the latest
snapshot and wakes its writer).

Not for: streaming or HTTP (see :mod:`weft.control.api`), nor balancing (the proxy's job).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from weft.addr import is_ip, parse_hostport
from weft.control.policies import Policies
from weft.control.state import ClusterState, StateEvent
from weft.discovery import Destination, Endpoint
from weft.identity.names import DEFAULT_TRUST_DOMAIN, dns_identity
from weft.resources import endpointslice as slices
from weft.resources import pods
from weft.resources.meta import DEFAULT_NAMESPACE

Listener = Callable[[Destination | None], None]
# Where a meshed pod's proxy takes connections from other proxies (mutual TLS and a transport
# header naming the app port): its inbound port, 4143 in the local runtime
# (weft.runtime.local.net.PROXY_INBOUND_PORT) as in Linkerd. Not imported from the runtime: the
# control plane does not depend on one runtime.
PROXY_INBOUND_PORT = 4143
_OPAQUE = ("tcp", "opaque", "linkerd.io/opaque")


def _service_key(host: str, context_ns: str, cluster_domain: str) -> str | None:
    """``namespace/name`` a Service name target names (None: it names none)."""
    name = host.rstrip(".").lower()
    suffix = f".svc.{cluster_domain}"
    if name.endswith(suffix):
        name = name[: -len(suffix)]
    elif name.endswith(".svc"):
        name = name[:-4]
    parts = name.split(".")
    if len(parts) == 1:
        return f"{context_ns}/{parts[0]}"
    if len(parts) == 2:
        return f"{parts[1]}/{parts[0]}"
    return None


def _lookup_service(
    state: ClusterState, host: str, context_ns: str, cluster_domain: str
) -> Mapping[str, Any] | None:
    if is_ip(host):
        found = state.by_index("Service", "clusterIP", host)
        return found[0] if found else None
    key = _service_key(host, context_ns, cluster_domain)
    if key is None:
        return None
    ns, _, name = key.partition("/")
    return state.get("Service", ns, name)


def _serving(pod: Mapping[str, Any]) -> bool:
    return (
        pods.is_ready(pod)
        and not pods.is_terminating(pod)
        and bool(pods.ips(pod))
        and pods.phase(pod) == "Running"
    )


def _endpoint(
    address: str,
    port: int,
    pod: Mapping[str, Any] | None,
    namespace: str,
    trust_domain: str,
    *,
    protocol: str | None = None,
) -> Endpoint:
    """An endpoint: metric labels from its pod, and the identity its proxy proves when meshed."""
    if pod is None:
        return Endpoint(
            address=(address, port),
            labels=MappingProxyType({"namespace": namespace}),
            protocol=protocol,
        )
    ns, name = pods.name_of(pod)
    sa = pods.service_account(pod)
    labels = {"pod": name, "namespace": ns, "serviceaccount": sa}
    deployment = pods.deployment(pod)
    if deployment:
        labels["deployment"] = deployment
    meshed = pods.is_meshed(pod)
    return Endpoint(
        address=(address, port),
        labels=MappingProxyType(labels),
        identity=dns_identity(ns, sa, trust_domain) if meshed else None,
        meshed=meshed,
        protocol=protocol,
        proxy_port=PROXY_INBOUND_PORT if meshed else None,
    )


def _pod_target(state: ClusterState, ip: str, port: int, trust_domain: str) -> Destination | None:
    """A target that is a running pod's address (a direct call, as to a headless service's
    pods): that one endpoint, so that meshed pods talk mutual TLS here too. No policy."""
    for pod in state.by_index("Pod", "ip", ip):
        if _serving(pod):
            ns, _ = pods.name_of(pod)
            return Destination(
                target=f"{ip}:{port}",
                endpoints=(_endpoint(ip, port, pod, ns, trust_domain),),
                labels=MappingProxyType({"namespace": ns}),
            )
    return None


def resolve(
    state: ClusterState,
    target: str,
    namespace: str | None = None,
    *,
    cluster_domain: str = "cluster.local",
    policies: Policies | None = None,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
) -> Destination | None:
    """The current snapshot of ``target``, or None when no Service port matches it.

    ``policies`` builds the snapshot's policy (and caches parsing); a fresh one when None.
    """
    try:
        host, port = parse_hostport(target)
    except ValueError:
        return None
    svc = _lookup_service(state, host, namespace or DEFAULT_NAMESPACE, cluster_domain)
    if svc is None:
        return _pod_target(state, host, port, trust_domain) if is_ip(host) else None
    spec = svc.get("spec")
    ports = spec.get("ports") if isinstance(spec, Mapping) else None
    # a Service the API should never serve (no spec, ports not a list) resolves to nothing
    sport = (
        next(
            (p for p in ports if isinstance(p, Mapping) and p.get("port") == port),
            None,
        )
        if isinstance(ports, list)
        else None
    )
    if sport is None:
        return None
    ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
    opaque = str(sport.get("appProtocol") or "").lower() in _OPAQUE
    protocol = "opaque" if opaque else None
    endpoints: dict[str, Endpoint] = {}
    for slice_ in state.by_index("EndpointSlice", "service", f"{ns}/{name}"):
        number = slices.port_number(slice_, sport.get("name"))
        if number is None:
            continue
        for ep in slices.endpoints(slice_):
            # the same address may be in two slices for a moment while they are rebalanced
            if not ep.ready or ep.address in endpoints:
                continue
            pod = state.get("Pod", ep.pod_namespace or ns, ep.pod) if ep.pod else None
            endpoints[ep.address] = _endpoint(
                ep.address, number, pod, ns, trust_domain, protocol=protocol
            )
    ordered = sorted(endpoints.values(), key=lambda e: (e.labels.get("pod", ""), e.address))
    if policies is None:
        policies = Policies(state, cluster_domain=cluster_domain)
    return Destination(
        target=target,
        endpoints=tuple(ordered),
        labels=MappingProxyType({"service": name, "namespace": ns}),
        opaque=opaque,
        policy=None if opaque else policies.policy(svc, port),
    )


class _Translator:
    """One target's current snapshot, its listeners, and the keys it depends on."""

    __slots__ = ("current", "keys", "listeners", "namespace", "target")

    def __init__(self, target: str, namespace: str | None) -> None:
        self.target = target
        self.namespace = namespace
        self.current: Destination | None = None
        self.keys: frozenset[str] = frozenset()
        self.listeners: list[Listener] = []


class DestinationService:
    """Live destinations for subscribed targets (see the module docstring)."""

    def __init__(
        self,
        state: ClusterState,
        *,
        cluster_domain: str = "cluster.local",
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
    ) -> None:
        self._state = state
        self.cluster_domain = cluster_domain
        self.trust_domain = trust_domain
        self.policies = Policies(state, cluster_domain=cluster_domain)
        self._translators: dict[tuple[str, str | None], _Translator] = {}
        # dependency key ("svc:ns/name", "ip:addr", "ns:name") -> the translators that use it
        self._by_key: dict[str, set[_Translator]] = {}
        self.recomputes = 0  # how many snapshots were computed after changes (for tests, bench)
        self._unsubscribe = state.subscribe(self._on_event)

    def __repr__(self) -> str:
        n = sum(len(t.listeners) for t in self._translators.values())
        return f"<DestinationService targets={len(self._translators)} subscribers={n}>"

    @property
    def state(self) -> ClusterState:
        return self._state

    def resolve(self, target: str, namespace: str | None = None) -> Destination | None:
        return resolve(
            self._state,
            target,
            namespace,
            cluster_domain=self.cluster_domain,
            policies=self.policies,
            trust_domain=self.trust_domain,
        )

    def subscribe(
        self, target: str, listener: Listener, namespace: str | None = None
    ) -> tuple[Destination | None, Callable[[], None]]:
        """Returns the current snapshot and an unsubscribe function; ``listener`` is called with
        each later change."""
        key = (target, namespace)
        tr = self._translators.get(key)
        if tr is None:
            tr = _Translator(target, namespace)
            tr.current = self.resolve(target, namespace)
            self._translators[key] = tr
            self._register(tr)
        tr.listeners.append(listener)

        def unsubscribe() -> None:
            if listener in tr.listeners:
                tr.listeners.remove(listener)
            if not tr.listeners and self._translators.get(key) is tr:
                del self._translators[key]
                self._register(tr, drop=True)

        return tr.current, unsubscribe

    def close(self) -> None:
        self._unsubscribe()
        self._translators.clear()
        self._by_key.clear()

    # -- dependencies ---------------------------------------------------------------------------

    def _keys_of(self, tr: _Translator) -> frozenset[str]:
        keys: set[str] = set()
        host = tr.target.rpartition(":")[0].strip("[]")
        if is_ip(host):
            keys.add(f"ip:{host}")
        else:
            named = _service_key(host, tr.namespace or DEFAULT_NAMESPACE, self.cluster_domain)
            if named is not None:
                keys.add(f"svc:{named}")
        current = tr.current
        if current is not None:
            ns = current.labels.get("namespace")
            service = current.labels.get("service")
            if ns:
                keys.add(f"ns:{ns}")
                if service:
                    keys.add(f"svc:{ns}/{service}")
        return frozenset(keys)

    def _register(self, tr: _Translator, *, drop: bool = False) -> None:
        keys = frozenset() if drop else self._keys_of(tr)
        for key in tr.keys - keys:
            users = self._by_key.get(key)
            if users is not None:
                users.discard(tr)
                if not users:
                    del self._by_key[key]
        for key in keys - tr.keys:
            self._by_key.setdefault(key, set()).add(tr)
        tr.keys = keys

    def _event_keys(self, event: StateEvent) -> set[str]:
        kind, ns = event.kind, event.namespace
        objs = [o for o in (event.old, event.new) if o is not None]
        keys: set[str] = set()
        if kind == "Service":
            keys.add(f"svc:{ns}/{event.name}")
            for obj in objs:
                spec = obj.get("spec") or {}
                for ip in (spec.get("clusterIP"), *(spec.get("clusterIPs") or ())):
                    if isinstance(ip, str) and ip and ip != "None":
                        keys.add(f"ip:{ip}")
        elif kind == "EndpointSlice":
            for obj in objs:
                service = slices.service_of(obj)
                if service:
                    keys.add(f"svc:{service}")
        elif kind == "Pod":
            for slice_ in self._state.by_index("EndpointSlice", "pod", f"{ns}/{event.name}"):
                service = slices.service_of(slice_)
                if service:
                    keys.add(f"svc:{service}")
            for obj in objs:
                keys.update(f"ip:{ip}" for ip in pods.ips(obj))
        elif kind in ("HTTPRoute", "GRPCRoute"):
            keys.add(f"ns:{ns}")
        elif kind == "Namespace":
            keys.add(f"ns:{event.name}")
        return keys

    def _on_event(self, event: StateEvent) -> None:
        affected: set[_Translator] = set()
        for key in self._event_keys(event):
            affected.update(self._by_key.get(key, ()))
        for tr in affected:
            if self._translators.get((tr.target, tr.namespace)) is not tr:
                continue  # unsubscribed by a listener meanwhile
            new = self.resolve(tr.target, tr.namespace)
            self.recomputes += 1
            if new == tr.current:
                continue
            tr.current = new
            self._register(tr)
            for listener in list(tr.listeners):
                listener(new)
