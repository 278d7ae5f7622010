"""A real cluster's state for the controllers: informers feeding a shared cache per kind.

:class:`KubeState` runs one :class:`~weft.control.kube.informer.Informer` per kind the controllers
read (each into the state's own cache for that kind, so there is one copy of every object), and
hands each change to the subscribers as it arrives. A kind the cluster does not serve yet (a CRD
not installed) keeps being retried with backoff and reads as empty; :meth:`KubeState.wait_synced`
waits for the kinds given as required. Status writes (:meth:`KubeState.write_status`) are merge
patches of the status subresource, sent in the background; a failure is logged, and the
controller writes again on the object's next change.

Not for: deciding anything (the controllers), nor the local mesh (:mod:`weft.control.localstate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lightkube import AsyncClient
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Namespace, Pod, Service
from lightkube.resources.discovery_v1 import EndpointSlice

from weft.control.kube.client import merge_patch
from weft.control.kube.informer import Informer, Obj
from weft.control.state import KINDS, CachedState
from weft.core.informer import Change

log = logging.getLogger("weft.kube")


def _crd(group: str, version: str, kind: str, plural: str) -> Any:
    return create_namespaced_resource(group, version, kind, plural)


# the API resource each kind is read from (Weft's own policy kinds from policy.weft.io)
RESOURCES: dict[str, Any] = {
    "Namespace": Namespace,
    "Service": Service,
    "Pod": Pod,
    "EndpointSlice": EndpointSlice,
    "Deployment": Deployment,  # for metrics' deployment rows (weft stat deploy)
    "HTTPRoute": _crd("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
    "GRPCRoute": _crd("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes"),
    **{
        kind: _crd("policy.weft.io", "v1beta1", kind, plural)
        for kind, plural in (
            ("Server", "servers"),
            ("AuthorizationPolicy", "authorizationpolicies"),
            ("HTTPLocalRateLimitPolicy", "httplocalratelimitpolicies"),
            ("MeshTLSAuthentication", "meshtlsauthentications"),
            ("NetworkAuthentication", "networkauthentications"),
        )
    },
}
CORE_KINDS = ("Namespace", "Service", "Pod", "EndpointSlice")


class KubeState(CachedState):
    """The cluster behind ``client``, kind by kind (see the module docstring)."""

    def __init__(
        self,
        client: AsyncClient,
        kinds: Iterable[str] = KINDS,
        *,
        namespace: str | None = None,
        resync_s: float | None = None,
        fields: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """``fields``: a field selector per kind (a kubelet lists only its node's pods)."""
        super().__init__(kinds)
        self.client = client
        self.informers: dict[str, Informer] = {}
        for kind in self.kinds:
            self.informers[kind] = Informer(
                client,
                RESOURCES[kind],
                namespace=None if kind == "Namespace" else namespace,
                fields=(fields or {}).get(kind),
                cache=self.cache(kind),
                on_change=self._dispatcher(kind),
                resync_s=resync_s,
            )
        self._tasks: list[asyncio.Task[None]] = []
        self._writes: set[asyncio.Task[None]] = set()
        self.status_failures = 0

    def _dispatcher(self, kind: str) -> Callable[[Change[Obj]], None]:
        def on_change(change: Change[Obj]) -> None:
            self.dispatch(kind, [change])

        return on_change

    def start(self) -> None:
        """Start every informer on the running loop."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(i.run(), name=f"informer {k}") for k, i in self.informers.items()
        ]

    async def wait_synced(self, kinds: Iterable[str] = CORE_KINDS) -> None:
        """Until the first list of each of ``kinds`` is in (wrap in a timeout)."""
        await asyncio.gather(
            *(self.informers[k].synced.wait() for k in kinds if k in self.informers)
        )

    async def stop(self) -> None:
        for task in [*self._tasks, *self._writes]:
            task.cancel()
        for task in [*self._tasks, *self._writes]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def write_status(
        self, kind: str, namespace: str | None, name: str, status: Mapping[str, Any]
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._patch_status(kind, namespace, name, dict(status))
        )
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _patch_status(
        self, kind: str, namespace: str | None, name: str, status: dict[str, Any]
    ) -> None:
        resource = RESOURCES[kind]
        try:
            await merge_patch(self.client, resource.Status, name, namespace, {"status": status})
        except Exception as e:  # an API error or a connection failure: logged, written again later
            self.status_failures += 1
            log.warning("status of %s %s/%s not written: %s", kind, namespace, name, e)


__all__ = ["CORE_KINDS", "RESOURCES", "KubeState"]
