"""The cluster state the controllers read: one typed seam between object caches and controllers.

A controller (destinations, inbound and outbound policy, route status, identity) sees the cluster
only through :class:`ClusterState`: ``get``, ``list`` (per namespace), ``by_index`` and
``subscribe``, over Kubernetes objects as decoded JSON (dicts, read-only), and writes statuses only
through :class:`StatusWriter`. It never imports a runtime, the local store or a client library, so
the same controller serves a real cluster (:mod:`weft.control.kube.state`: informers) and the local
mesh (:mod:`weft.control.localstate`: the embedded store).

:class:`CachedState` is the one implementation of the reading half: a
:class:`weft.core.informer.Cache` per kind with the indexes in :data:`INDEXERS`, fed a change at a
time (:meth:`CachedState.apply`) or a list at a time (:meth:`CachedState.replace`), calling its
subscribers synchronously with a :class:`StateEvent` per change (old and new object, so a
controller can tell which Service a pod's label change left). Subscribers must not block: they
mark what changed and return; an exception from one is logged, and the others still run.

Not for: talking to an API (the feeders), or what a change means (the controllers).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from weft.core.informer import BadObject, Cache, Change, Indexer
from weft.resources import pods
from weft.resources.endpointslice import pods_of, service_of
from weft.resources.replicaset import controller_of

log = logging.getLogger("weft.control")

Obj = Mapping[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]

# the kinds the controllers read, and the indexes they look objects up by
KINDS = (
    "Namespace",
    "Service",
    "EndpointSlice",
    "Pod",
    "HTTPRoute",
    "GRPCRoute",
    "Server",
    "AuthorizationPolicy",
    "HTTPLocalRateLimitPolicy",
    "MeshTLSAuthentication",
    "NetworkAuthentication",
)


OWNER_INDEX = "owner"


def _namespace(obj: Any) -> Iterable[str]:
    ns = obj["metadata"].get("namespace")
    return (ns,) if isinstance(ns, str) and ns else ()


def _cluster_ips(svc: Any) -> Iterable[str]:
    spec = svc["spec"]
    found = [spec.get("clusterIP"), *(spec.get("clusterIPs") or ())]
    return {ip for ip in found if isinstance(ip, str) and ip and ip != "None"}


def _slice_service(slice_: Any) -> Iterable[str]:
    key = service_of(slice_)
    return (key,) if key else ()


def _pod_labels(pod: Any) -> Iterable[str]:
    ns = pod["metadata"].get("namespace")
    return [f"{ns}/{k}={v}" for k, v in pods.labels(pod).items()]


def _owner(obj: Any) -> Iterable[str]:
    ref = controller_of(obj)
    return (f"{obj['metadata'].get('namespace')}/{ref[2]}",) if ref is not None and ref[2] else ()


INDEXERS: dict[str, dict[str, Indexer[Any]]] = {
    # "owner": "<namespace>/<uid of the controller owner>" (a ReplicaSet's pods, a
    # Deployment's ReplicaSets)
    # "label": "<namespace>/<key>=<value>", for each of a pod's labels (a Service's selector
    # finds its pods through its first pair rather than by scanning the namespace)
    "Pod": {"ip": pods.ips, "label": _pod_labels, OWNER_INDEX: _owner},
    "ReplicaSet": {OWNER_INDEX: _owner},
    "Service": {"clusterIP": _cluster_ips},
    "EndpointSlice": {"service": _slice_service, "pod": pods_of},
}
NAMESPACE_INDEX = "namespace"


@dataclass(frozen=True, slots=True)
class StateEvent:
    """One change of one object: ``old`` is None when it was added, ``new`` None when deleted;
    a resync repeats an object with ``old is new``."""

    type: EventType
    kind: str
    old: Obj | None
    new: Obj | None

    @property
    def object(self) -> Obj:
        """The object as it is now, or as it was last seen for a delete."""
        obj = self.new if self.new is not None else self.old
        assert obj is not None
        return obj

    @property
    def namespace(self) -> str | None:
        ns = self.object["metadata"].get("namespace")
        return ns if isinstance(ns, str) else None

    @property
    def name(self) -> str:
        return str(self.object["metadata"].get("name", ""))


Listener = Callable[[StateEvent], None]


class ClusterState(Protocol):
    """What a controller reads (see the module docstring)."""

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        """One object (``namespace`` None or "" for a cluster-scoped kind)."""
        ...

    def list(self, kind: str, namespace: str | None = None) -> list[Obj]:
        """Objects of ``kind`` in ``namespace`` (every namespace when None), by namespace and
        name."""
        ...

    def by_index(self, kind: str, index: str, value: str) -> builtins.list[Obj]:
        """Objects of ``kind`` whose ``index`` (:data:`INDEXERS`) has ``value``."""
        ...

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every later change; returns the unsubscribe function."""
        ...


class StatusWriter(Protocol):
    """Where a controller writes an object's ``status`` (the status subresource)."""

    def write_status(
        self, kind: str, namespace: str | None, name: str, status: Mapping[str, Any]
    ) -> None:
        """Write, or start writing, ``status``; a failure is logged by the writer (the object
        was deleted meanwhile, the API is unreachable): the controller writes again on the
        object's next change or resync."""
        ...


_TYPES: dict[str, EventType] = {"added": "ADDED", "updated": "MODIFIED", "deleted": "DELETED"}


class CachedState:
    """:class:`ClusterState` over one :class:`Cache` per kind (see the module docstring)."""

    def __init__(self, kinds: Iterable[str] = KINDS) -> None:
        self._caches: dict[str, Cache[Any]] = {}
        for kind in kinds:
            indexers = {NAMESPACE_INDEX: _namespace, **INDEXERS.get(kind, {})}
            self._caches[kind] = Cache(indexers)
        self._listeners: list[Listener] = []

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(c)}" for k, c in self._caches.items() if len(c))
        return f"<CachedState {sizes}>"

    @property
    def kinds(self) -> builtins.list[str]:
        return list(self._caches)

    def cache(self, kind: str) -> Cache[Any]:
        return self._caches[kind]

    # -- reading ------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        cache = self._caches.get(kind)
        if cache is None:
            return None
        found = cache.get(f"{namespace}/{name}" if namespace else name)
        return found

    def list(self, kind: str, namespace: str | None = None) -> list[Obj]:
        cache = self._caches.get(kind)
        if cache is None:
            return []
        if namespace is not None:
            return cache.by_index(NAMESPACE_INDEX, namespace)
        return [cache._objects[k] for k in sorted(cache.keys())]

    def by_index(self, kind: str, index: str, value: str) -> builtins.list[Obj]:
        cache = self._caches.get(kind)
        return [] if cache is None else cache.by_index(index, value)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    # -- feeding ------------------------------------------------------------------------------

    def apply(self, kind: str, type_: str, obj: Obj) -> None:
        """One watch event (``ADDED``/``MODIFIED``/``DELETED``) of ``kind``; other kinds are
        ignored, a malformed object is logged and skipped."""
        cache = self._caches.get(kind)
        if cache is None:
            return
        try:
            change = cache.apply(type_, obj)
        except BadObject as e:
            log.warning("skipped a %s: %s", kind, e)
            return
        if change is not None:
            self.dispatch(kind, [change])

    def replace(self, kind: str, items: Iterable[Obj], resource_version: str = "") -> None:
        """A whole list of ``kind``: what differs from the cache is dispatched."""
        cache = self._caches.get(kind)
        if cache is not None:
            self.dispatch(kind, cache.replace(items, resource_version))

    def dispatch(self, kind: str, changes: Iterable[Change[Any]]) -> None:
        """Tell the subscribers about changes already made to ``kind``'s cache (an informer
        that owns the cache calls this)."""
        for change in changes:
            event = StateEvent(_TYPES[change.kind], kind, change.old, change.new)
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:
                    log.exception("a %s handler failed on %s %s", kind, event.type, change.key)


__all__ = [
    "INDEXERS",
    "KINDS",
    "OWNER_INDEX",
    "CachedState",
    "ClusterState",
    "Listener",
    "StateEvent",
    "StatusWriter",
]
