"""The local mesh's namespace controller: a deleted Namespace leaves as on a cluster.

Through the Kubernetes API, deleting a Namespace first marks it ``Terminating``
(``metadata.deletionTimestamp``; :meth:`weft.control.store.Store.terminate`): it refuses new
objects, and the objects in it can still be read, changed and deleted, so ``kubectl delete -f``
of a file that lists the Namespace first goes on to delete the rest by name, as against a
cluster. :data:`GRACE` seconds later (kube-controller-manager's namespace controller takes a
discovery pass before it deletes, usually longer) this controller deletes what is left and the
Namespace itself (:meth:`~weft.control.store.Store.delete`, whose cascade leaves Pods to the
node agent, which drains them).

A Namespace found terminating at start (the control plane restarted meanwhile) is finished the
same way.

Not for: ``weft delete``, which deletes a Namespace and its contents at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from weft.control.state import ClusterState, StateEvent
from weft.resources.errors import InvalidResources

log = logging.getLogger("weft.namespaces")

GRACE = 2.0
Later = Callable[[float, Callable[[], None]], object]


class Deleter(Protocol):
    def delete(self, refs: Sequence[Any]) -> Any: ...


class NamespaceController:
    """Finishes terminating Namespaces (see the module docstring)."""

    def __init__(
        self, state: ClusterState, store: Deleter, *, later: Later, grace: float = GRACE
    ) -> None:
        self._state = state
        self._store = store
        self._later = later
        self.grace = grace
        self._pending: set[str] = set()
        self.finished = 0
        self._unsubscribe = state.subscribe(self._on_event)

    def __repr__(self) -> str:
        return f"<NamespaceController pending={sorted(self._pending)} finished={self.finished}>"

    def close(self) -> None:
        self._unsubscribe()

    def resync(self) -> None:
        for ns in self._state.list("Namespace"):
            self._consider(ns)

    def _on_event(self, event: StateEvent) -> None:
        if event.kind == "Namespace" and event.new is not None:
            self._consider(event.new)

    def _consider(self, ns: Any) -> None:
        name = str(ns["metadata"]["name"])
        if ns["metadata"].get("deletionTimestamp") and name not in self._pending:
            self._pending.add(name)
            self._later(self.grace, lambda: self._finish(name))

    def _finish(self, name: str) -> None:
        self._pending.discard(name)
        if self._state.get("Namespace", None, name) is None:
            return
        try:
            self._store.delete([{"kind": "Namespace", "metadata": {"name": name}}])
        except InvalidResources as e:
            log.error("namespace %s: cannot finish deleting it: %s", name, e)
            return
        self.finished += 1
        log.info("namespace %s deleted", name)


__all__ = ["GRACE", "NamespaceController"]
