"""The destination service: what a proxy's target resolves to, kept current from the store.

A target is a Service's virtual IP and port (``10.96.0.5:8080``) or its name and port
(``web.shop.svc.cluster.local:8080``, ``web.shop.svc:8080``, ``web.shop:8080``, or ``web:8080`` in
the caller's namespace, ``default`` unless given). It resolves to a
:class:`weft.discovery.Destination`: the Service's ready pods that are not terminating, at the
service port's targetPort (a number, or a name looked up in the pod's container ports), with their
metadata as endpoint labels (``pod``, ``namespace``, ``deployment``, ``serviceaccount``), ``meshed``
when the pod has a sidecar (with the ``identity`` its proxy proves, which the client proxy checks
during mutual TLS, and the ``proxy_port`` a client proxy dials: its proxy's inbound port), and
``protocol="opaque"`` when the port's ``appProtocol`` is ``tcp``/``opaque``. A target that is a
running pod's own address resolves to that single endpoint (so direct calls between meshed pods
are mutual TLS too). Any other target resolves to ``None``:
the proxy forwards to the original address. The snapshot's ``policy`` (routes, retries, timeouts,
failure accrual) is built from the Service's annotations and the HTTPRoutes attached to it
(:mod:`weft.control.policies`).

:class:`DestinationService` recomputes a subscribed target on every store change that can affect
it (Pods, Services, Namespaces, HTTPRoutes) and calls its listeners, synchronously, only when
the snapshot changed. Subscribers of the same
target share one computation. Listeners must not block (the API's stream handler just records the
latest snapshot and wakes its writer).

Not for: streaming or HTTP (see :mod:`weft.control.api`), nor balancing (the proxy's job).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from weft.addr import is_ip, parse_hostport
from weft.control.policies import Policies
from weft.control.store import Event, Store
from weft.discovery import Destination, Endpoint
from weft.identity.names import DEFAULT_TRUST_DOMAIN, dns_identity
from weft.resources.models import (
    ANNOTATION_DEPLOYMENT,
    ANNOTATION_PROXY_ADMIN,
    DEFAULT_NAMESPACE,
    DEFAULT_SERVICE_ACCOUNT,
    selector_matches,
)

Listener = Callable[[Destination | None], None]
# Where a meshed pod's proxy takes connections from other proxies (mutual TLS and a transport
# header naming the app port): its inbound port, 4143 in the local runtime
# (weft.runtime.local.net.PROXY_INBOUND_PORT) as in Linkerd. Not imported from the runtime: the
# control plane does not depend on one runtime.
PROXY_INBOUND_PORT = 4143
_WATCHED_KINDS = frozenset({"Pod", "Service", "Namespace", "HTTPRoute", "GRPCRoute"})


def _lookup_service(
    store: Store, host: str, context_ns: str, cluster_domain: str
) -> Mapping[str, Any] | None:
    if is_ip(host):
        for svc in store.list("Service"):
            if svc["spec"].get("clusterIP") == host:
                return svc
        return None
    name = host.rstrip(".").lower()
    suffix = f".svc.{cluster_domain}"
    if name.endswith(suffix):
        name = name[: -len(suffix)]
    elif name.endswith(".svc"):
        name = name[:-4]
    parts = name.split(".")
    if len(parts) == 1:
        return store.get("Service", context_ns, parts[0])
    if len(parts) == 2:
        return store.get("Service", parts[1], parts[0])
    return None


def _pod_port(pod: Mapping[str, Any], target_port: int | str) -> int | None:
    if isinstance(target_port, int):
        return target_port
    for container in pod["spec"].get("containers", []):
        for p in container.get("ports", []):
            if p.get("name") == target_port:
                return int(p["containerPort"])
    return None


def _serving(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    return (
        bool(status.get("ready"))
        and not status.get("terminating")
        and bool(status.get("podIP"))
        and status.get("phase") == "Running"
    )


def _endpoint(
    pod: Mapping[str, Any], port: int, trust_domain: str, *, protocol: str | None = None
) -> Endpoint:
    """A pod's endpoint: metric labels, and the identity its proxy proves when meshed."""
    meta = pod["metadata"]
    ns = meta["namespace"]
    annotations = meta.get("annotations") or {}
    sa = pod["spec"].get("serviceAccountName", DEFAULT_SERVICE_ACCOUNT)
    labels = {"pod": meta["name"], "namespace": ns, "serviceaccount": sa}
    if annotations.get(ANNOTATION_DEPLOYMENT):
        labels["deployment"] = annotations[ANNOTATION_DEPLOYMENT]
    meshed = bool(annotations.get(ANNOTATION_PROXY_ADMIN))
    return Endpoint(
        address=(pod["status"]["podIP"], port),
        labels=MappingProxyType(labels),
        identity=dns_identity(ns, sa, trust_domain) if meshed else None,
        meshed=meshed,
        protocol=protocol,
        proxy_port=PROXY_INBOUND_PORT if meshed else None,
    )


def _pod_target(store: Store, ip: str, port: int, trust_domain: str) -> Destination | None:
    """A target that is a running pod's address (a direct call, as to a headless service's
    pods): that one endpoint, so that meshed pods talk mutual TLS here too. No policy."""
    for pod in store.list("Pod"):
        if (pod.get("status") or {}).get("podIP") == ip and _serving(pod):
            ns = pod["metadata"]["namespace"]
            return Destination(
                target=f"{ip}:{port}",
                endpoints=(_endpoint(pod, port, trust_domain),),
                labels=MappingProxyType({"namespace": ns}),
            )
    return None


def resolve(
    store: Store,
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
    svc = _lookup_service(store, host, namespace or DEFAULT_NAMESPACE, cluster_domain)
    if svc is None:
        return _pod_target(store, host, port, trust_domain) if is_ip(host) else None
    spec = svc["spec"]
    sport = next((p for p in spec.get("ports", []) if p.get("port") == port), None)
    if sport is None:
        return None
    ns = svc["metadata"]["namespace"]
    app_protocol = str(sport.get("appProtocol") or "").lower()
    opaque = app_protocol in ("tcp", "opaque", "linkerd.io/opaque")
    selector = spec.get("selector")
    endpoints: list[Endpoint] = []
    if selector:
        for pod in store.list("Pod", ns):
            meta = pod["metadata"]
            if not _serving(pod) or not selector_matches(selector, meta.get("labels") or {}):
                continue
            pod_port = _pod_port(pod, sport.get("targetPort", port))
            if pod_port is None:
                continue
            endpoints.append(
                _endpoint(pod, pod_port, trust_domain, protocol="opaque" if opaque else None)
            )
    endpoints.sort(key=lambda e: (e.labels.get("pod", ""), e.address))
    if policies is None:
        policies = Policies(store, cluster_domain=cluster_domain)
    return Destination(
        target=target,
        endpoints=tuple(endpoints),
        labels=MappingProxyType({"service": svc["metadata"]["name"], "namespace": ns}),
        opaque=opaque,
        policy=None if opaque else policies.policy(svc, port),
    )


class _Translator:
    """One target's current snapshot and its listeners."""

    __slots__ = ("by_ip", "current", "listeners", "namespace", "target")

    def __init__(self, target: str, namespace: str | None, current: Destination | None) -> None:
        self.target = target
        self.by_ip = is_ip(target.rpartition(":")[0].strip("[]"))
        self.namespace = namespace
        self.current = current
        self.listeners: list[Listener] = []


class DestinationService:
    """Live destinations for subscribed targets (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        cluster_domain: str = "cluster.local",
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
    ) -> None:
        self._store = store
        self.cluster_domain = cluster_domain
        self.trust_domain = trust_domain
        self.policies = Policies(store, cluster_domain=cluster_domain)
        self._translators: dict[tuple[str, str | None], _Translator] = {}
        self._unsubscribe = store.subscribe(self._on_event)

    def __repr__(self) -> str:
        n = sum(len(t.listeners) for t in self._translators.values())
        return f"<DestinationService targets={len(self._translators)} subscribers={n}>"

    def resolve(self, target: str, namespace: str | None = None) -> Destination | None:
        return resolve(
            self._store,
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
            tr = _Translator(target, namespace, self.resolve(target, namespace))
            self._translators[key] = tr
        tr.listeners.append(listener)

        def unsubscribe() -> None:
            if listener in tr.listeners:
                tr.listeners.remove(listener)
            if not tr.listeners and self._translators.get(key) is tr:
                del self._translators[key]

        return tr.current, unsubscribe

    def close(self) -> None:
        self._unsubscribe()
        self._translators.clear()

    def _on_event(self, event: Event) -> None:
        if event.kind not in _WATCHED_KINDS:
            return
        ns = event.object["metadata"].get("namespace")
        for tr in list(self._translators.values()):
            current = tr.current
            # a route only affects Services of its own namespace, and a pod too, except that a
            # pod can make an unknown IP target resolve (a direct call to its address)
            if event.kind in ("HTTPRoute", "GRPCRoute") and (
                current is None or current.labels.get("namespace") != ns
            ):
                continue
            if event.kind == "Pod" and (
                current.labels.get("namespace") != ns if current is not None else not tr.by_ip
            ):
                continue
            new = self.resolve(tr.target, tr.namespace)
            if new == current:
                continue
            tr.current = new
            for listener in list(tr.listeners):
                listener(new)
