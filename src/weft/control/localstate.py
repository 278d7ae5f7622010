"""The local mesh's cluster state: :class:`~weft.control.state.ClusterState` fed by the embedded
store, and status writes into it.

:class:`StoreState` keeps a :class:`~weft.control.state.CachedState` in step with a
:class:`~weft.control.store.Store`: a full :meth:`StoreState.sync` when made (and after the store
was restored from disk), then each store change as it commits, synchronously (a controller sees
a change before ``Store.apply`` returns, as the tests rely on). Reads are the caches' (indexed,
per namespace), never a scan of the store.

Not for: a real cluster (:mod:`weft.control.kube.state`), nor serving the store's API.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from weft.control.events import Event
from weft.control.state import KINDS, CachedState
from weft.control.store import NotFound, Store
from weft.resources.errors import InvalidResources

log = logging.getLogger("weft.control")


class StoreState(CachedState):
    """Cluster state and status writer over ``store`` (see the module docstring)."""

    def __init__(self, store: Store, kinds: Iterable[str] = KINDS) -> None:
        super().__init__(kinds)
        self.store = store
        self.sync()
        self._unsubscribe = store.subscribe(self._on_event)

    def sync(self) -> None:
        """Take every object from the store again (what differs is dispatched)."""
        rv = str(self.store.resource_version)
        for kind in self.kinds:
            self.replace(kind, self.store.list(kind), rv)

    def close(self) -> None:
        self._unsubscribe()

    def _on_event(self, event: Event) -> None:
        if event.type != "BOOKMARK":
            self.apply(event.kind, event.type, event.object)

    def write_status(
        self, kind: str, namespace: str | None, name: str, status: Mapping[str, Any]
    ) -> None:
        try:
            self.store.put_status(kind, namespace, name, dict(status))
        except (NotFound, InvalidResources) as e:
            log.info("status of %s %s/%s not written: %s", kind, namespace, name, e)


__all__ = ["StoreState"]
