"""Route status (HTTPRoutes and GRPCRoutes): Gateway API conditions per parentRef, kept current as
Services come and go.

For every parent of a route the control plane writes, in ``status.parents[]``, the parentRef,
``controllerName: weft.io/control-plane`` and two conditions (``metav1.Condition`` shaped:
``type``, ``status``, ``reason``, ``message``, ``lastTransitionTime``, ``observedGeneration``):

- ``Accepted``: ``True``/``Accepted`` when the parent Service exists (and has the parentRef's port,
  when one is given), or, for an inbound route, the parent Server exists; else
  ``False``/``NoMatchingParent`` saying which;
- ``ResolvedRefs``: ``True``/``ResolvedRefs`` when every backendRef names an existing Service with
  the port used (the backendRef's, else the parentRef's); else ``False``/``BackendNotFound``
  listing each unresolved backendRef by field path.

``lastTransitionTime`` changes only when a condition's status does. :func:`route_status` computes
a status (pure); :class:`RouteStatusController` recomputes the routes a store change can affect
(the route itself; every route of either kind on a Service change; the HTTPRoutes of its namespace
on a Server change) and writes only statuses that differ. Writing
is deferred through ``schedule`` (the control plane passes the event loop's ``call_soon``) so that
it never happens inside another change's notification; without one it runs at once, guarded
against re-entry.

Not for: building the proxy's policy (:mod:`weft.control.policies`) or validating routes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from weft.control.policies import ROUTE_KINDS, AnyRoute, ParseCache
from weft.control.state import ClusterState, StateEvent, StatusWriter
from weft.core.worklist import Schedule, WorkList
from weft.resources.httproute import CONTROLLER_NAME

# ``lookup(kind, namespace, name)``: a stored Service or Server
Lookup = Callable[[str, str, str], "Mapping[str, Any] | None"]


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _has_port(service: Mapping[str, Any], port: int) -> bool:
    return any(p.get("port") == port for p in (service.get("spec") or {}).get("ports", []))


def _condition(
    type_: str, ok: bool, reason: str, message: str, generation: int, now: str
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
        "observedGeneration": generation,
    }


def route_status(
    route: AnyRoute,
    lookup: Lookup,
    *,
    generation: int,
    now: str,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The status of ``route``; ``lookup(kind, namespace, name)`` finds a stored Service or
    Server. Conditions whose status is unchanged from ``previous`` keep their
    ``lastTransitionTime``."""
    old_times = _transition_times(previous or {})
    parents: list[dict[str, Any]] = []
    for ref in route.spec.parent_refs:
        where = f"{ref.kind} {ref.namespace}/{ref.name}"
        parent = lookup(ref.kind, ref.namespace, ref.name)
        if parent is None:
            accepted = (False, "NoMatchingParent", f"{where} not found")
        elif ref.port is not None and not _has_port(parent, ref.port):
            accepted = (False, "NoMatchingParent", f"{where} has no port {ref.port}")
        else:
            accepted = (True, "Accepted", f"attached to {where}")
        problems: list[str] = []
        backend_refs = [rule.backend_refs for rule in route.spec.rules]
        for i, refs in enumerate(backend_refs):
            for j, b in enumerate(refs):
                path = f"spec.rules[{i}].backendRefs[{j}]"
                backend = lookup("Service", b.namespace, b.name)
                port = b.port if b.port is not None else ref.port
                if backend is None:
                    problems.append(f"{path}: Service {b.namespace}/{b.name} not found")
                elif port is not None and not _has_port(backend, port):
                    problems.append(f"{path}: Service {b.namespace}/{b.name} has no port {port}")
        if problems:
            resolved = (False, "BackendNotFound", "; ".join(problems))
        else:
            resolved = (True, "ResolvedRefs", "all backend references resolved")
        parent_ref = ref.to_dict()
        conditions = []
        for type_, (ok, reason, message) in (("Accepted", accepted), ("ResolvedRefs", resolved)):
            cond = _condition(type_, ok, reason, message, generation, now)
            old = old_times.get((_ref_key(parent_ref), type_))
            if old is not None and old[0] == cond["status"]:
                cond["lastTransitionTime"] = old[1]
            conditions.append(cond)
        parents.append(
            {"parentRef": parent_ref, "controllerName": CONTROLLER_NAME, "conditions": conditions}
        )
    return {"parents": parents}


def _ref_key(ref: Mapping[str, Any]) -> tuple[Any, ...]:
    return (ref.get("kind"), ref.get("name"), ref.get("namespace"), ref.get("port"))


def _transition_times(status: Mapping[str, Any]) -> dict[tuple[Any, ...], tuple[str, str]]:
    out: dict[tuple[Any, ...], tuple[str, str]] = {}
    for parent in status.get("parents") or []:
        if not isinstance(parent, Mapping) or parent.get("controllerName") != CONTROLLER_NAME:
            continue
        ref = parent.get("parentRef")
        if not isinstance(ref, Mapping):
            continue
        for cond in parent.get("conditions") or []:
            if not isinstance(cond, Mapping):
                continue
            since = cond.get("lastTransitionTime")
            if isinstance(since, str):
                out[(_ref_key(ref), cond.get("type"))] = (str(cond.get("status")), since)
    return out


def summarize(status: Mapping[str, Any] | None) -> tuple[str, str]:
    """``(accepted, reason)`` over every parent, for tables: accepted is ``True`` when every
    parent is Accepted, ``False`` when one is not, ``Unknown`` with no status yet; reason is the
    first failing condition's reason (``-`` when none fails)."""
    parents = (status or {}).get("parents") or []
    if not parents:
        return "Unknown", "-"
    accepted = "True"
    reason = "-"
    for parent in parents:
        for cond in parent.get("conditions") or []:
            if cond.get("type") == "Accepted" and cond.get("status") != "True":
                accepted = "False" if cond.get("status") == "False" else "Unknown"
            if cond.get("status") != "True" and reason == "-":
                reason = str(cond.get("reason") or "-")
    return accepted, reason


class RouteStatusController:
    """Writes every route's status when it or a Service changes (see the module docstring)."""

    def __init__(
        self,
        state: ClusterState,
        writer: StatusWriter,
        *,
        clock: Callable[[], float] = time.time,
        schedule: Schedule | None = None,
        cache: ParseCache | None = None,
    ) -> None:
        self._state = state
        self._writer = writer
        self._clock = clock
        self._cache = cache or ParseCache()
        # (kind, namespace, name) of the routes to recompute
        self._work: WorkList[tuple[str, str, str]] = WorkList(self._update_key, schedule)
        self._unsubscribe = state.subscribe(self._on_event)

    def __repr__(self) -> str:
        return f"<RouteStatusController dirty={len(self._work)} writes={self.writes}>"

    @property
    def writes(self) -> int:
        return self._work.done

    def close(self) -> None:
        self._unsubscribe()
        self._work.clear()

    def resync(self) -> None:
        """Recompute every route (at start, after the store was restored)."""
        self._work.mark(key for kind in ROUTE_KINDS for key in self._routes(kind, None))

    def _routes(self, kind: str, namespace: str | None) -> list[tuple[str, str, str]]:
        return [
            (kind, str(obj["metadata"]["namespace"]), str(obj["metadata"]["name"]))
            for obj in self._state.list(kind, namespace)
        ]

    def _on_event(self, event: StateEvent) -> None:
        if event.kind in ROUTE_KINDS and event.type != "DELETED":
            meta = event.object["metadata"]
            self._work.mark([(event.kind, str(meta["namespace"]), str(meta["name"]))])
        elif event.kind == "Service":
            # Service parents and backends may be in any route of any namespace
            self._work.mark(key for kind in ROUTE_KINDS for key in self._routes(kind, None))
        elif event.kind == "Server":
            # Server parents (HTTPRoutes only) are in routes of the Server's namespace
            self._work.mark(self._routes("HTTPRoute", event.object["metadata"].get("namespace")))

    def reconcile(self) -> int:
        """Recompute the routes marked dirty and write the statuses that changed; how many."""
        return self._work.run()

    def _update_key(self, key: tuple[str, str, str]) -> int:
        return 1 if self._update(*key) else 0

    def _lookup(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self._state.get(kind, namespace, name)

    def _update(self, kind: str, namespace: str, name: str) -> bool:
        obj = self._state.get(kind, namespace, name)
        if obj is None:
            return False
        route = self._cache.route(obj)
        if route is None:
            return False
        current = obj.get("status") or {}
        status = route_status(
            route,
            self._lookup,
            generation=int(obj["metadata"].get("generation") or 1),
            now=_rfc3339(self._clock()),
            previous=current,
        )
        if status == current:
            return False
        self._writer.write_status(kind, namespace, name, status)
        return True
