"""The local mesh's cluster state for tests: a store, its controllers' view, and its slices.

:class:`LocalCluster` is what the control plane assembles around its store
(:class:`weft.control.localstate.StoreState` plus the local EndpointSlice controller), with
slices written synchronously so that a test sees a Pod's endpoint as soon as ``Store.apply``
returns. :func:`cluster_of` gives one per store.

Not for: production (the control plane wires these itself, with writes deferred to its loop).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

from weft.control.localstate import StoreState
from weft.control.state import KINDS
from weft.control.store import Store
from weft.runtime.local.endpointslices import EndpointSliceController


class LocalCluster(StoreState):
    """A store's cluster state with its EndpointSlices kept (see the module docstring)."""

    def __init__(self, store: Store, kinds: Iterable[str] = KINDS) -> None:
        super().__init__(store, kinds)
        self.endpoint_slices = EndpointSliceController(self, store)
        self.endpoint_slices.resync()

    def close(self) -> None:
        self.endpoint_slices.close()
        super().close()


_clusters: weakref.WeakKeyDictionary[Store, LocalCluster] = weakref.WeakKeyDictionary()


def cluster_of(store: Store) -> LocalCluster:
    """The one :class:`LocalCluster` of ``store`` (made on first use)."""
    found = _clusters.get(store)
    if found is None:
        found = _clusters[store] = LocalCluster(store)
    return found


__all__ = ["LocalCluster", "cluster_of"]
