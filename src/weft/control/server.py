"""The ``weft control`` process: store + persistence + API server + destinations + metrics.

:class:`ControlPlane` assembles the parts from a :class:`ControlConfig`: it restores the store
from ``<state dir>/store.db`` (SQLite, :mod:`weft.control.persist`; so Service cluster IPs and
resourceVersions survive restarts), writes what changed after every change, serves the API on
``<state dir>/control.sock`` (and optionally on a TCP address) and the Kubernetes API on
``<state dir>/kube.sock``, runs the controllers over the store's cluster state, and runs the
metrics scraper. :func:`serve` runs it until SIGTERM/SIGINT.

Not for: the logic of any part (see :mod:`weft.control.store`, :mod:`weft.control.api`,
:mod:`weft.control.destinations`, :mod:`weft.control.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from weft.addr import Address
from weft.control.api import Api
from weft.control.client import KUBE_SOCKET
from weft.control.config import ControlConfig
from weft.control.destinations import DestinationService
from weft.control.edges import EdgesApi
from weft.control.httpserver import HttpServer, Request, Response, Streaming
from weft.control.identity import IdentityService
from weft.control.inbound import InboundPolicies
from weft.control.kubeapi.authn import LocalAuthn
from weft.control.kubeapi.server import KubeApi
from weft.control.kubeapi.status import KubeError
from weft.control.localstate import StoreState
from weft.control.metrics import ScrapeConfig, Scraper, Stats
from weft.control.persist import StateDb, migrate_json
from weft.control.routestatus import RouteStatusController
from weft.control.state import KINDS
from weft.control.store import Store

if TYPE_CHECKING:
    from weft.control.incluster import ClusterControlPlane
from weft.runtime.local.deployments import DeploymentController
from weft.runtime.local.endpointslices import EndpointSliceController
from weft.runtime.local.namespaces import NamespaceController
from weft.runtime.local.replicasets import ReplicaSetController

# what the local mesh's own controllers (kube-controller-manager's part) read besides
LOCAL_KINDS = ("Deployment", "ReplicaSet")
log = logging.getLogger("weft.control")

OLD_STATE_FILE = "store.json"  # before the SQLite store: migrated once


class ControlPlane:
    """The running control plane (see the module docstring)."""

    def __init__(self, config: ControlConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._state_file = StateDb(config.state_file)
        self.store = Store(service_cidr=config.service_cidr, clock=clock)
        # the controllers read the cluster through this seam, never the store itself
        self.state = StoreState(self.store, (*KINDS, *LOCAL_KINDS))
        self.destinations = DestinationService(
            self.state, trust_domain=config.identity.trust_domain
        )

        # writes are made from the event loop, never inside another change's notification
        def schedule(fn: Callable[[], None]) -> object:
            return asyncio.get_running_loop().call_soon(fn)

        self.route_status = RouteStatusController(
            self.state,
            self.state,
            clock=clock,
            schedule=schedule,
            cache=self.destinations.policies.cache,
        )
        # kube-controller-manager's part, which the local mesh plays itself
        self.endpoint_slices = EndpointSliceController(self.state, self.store, schedule=schedule)

        def later(delay: float, fn: Callable[[], None]) -> object:
            return asyncio.get_running_loop().call_later(delay, fn)

        self.namespaces = NamespaceController(self.state, self.store, later=later)
        self.deployments = DeploymentController(self.state, self.store, schedule=schedule)
        self.replica_sets = ReplicaSetController(
            self.state, self.store, schedule=schedule, later=later, clock=time.monotonic
        )
        self.stats = Stats(self.store, clock=clock, retention=config.retention)
        self.scraper = Scraper(
            self.store,
            self.stats,
            ScrapeConfig(
                interval=config.scrape_interval,
                timeout=config.scrape_timeout,
                allowed_networks=(config.pod_cidr, "127.0.0.0/8"),
            ),
            clock=clock,
        )
        settings = config.identity
        self.identity = IdentityService(
            Path(config.state_dir) / "identity",
            self.state,
            trust_domain=settings.trust_domain,
            leaf_lifetime=settings.leaf_lifetime,
            clock=clock,
            heartbeat=config.heartbeat,
            allowed_networks=(config.pod_cidr, "127.0.0.0/8"),
        )
        self.inbound = InboundPolicies(
            self.state,
            trust_domain=settings.trust_domain,
            cluster_networks=config.cluster_networks or (config.pod_cidr,),
            default_policy=config.default_inbound_policy,
            heartbeat=config.heartbeat,
        )
        self.api = Api(
            self.store,
            self.destinations,
            self.stats,
            heartbeat=config.heartbeat,
            kube=KubeApi(
                self.store,
                logs=_log_path(config.state_dir),
                bookmark_s=config.watch_bookmark_s,
                # the local mesh's service-account tokens, as an API server issues and reviews
                authn=LocalAuthn(
                    self.store, lambda: self.identity.token_key, self.identity.reviewer
                ),
            ),
            handlers={
                "identity": self.identity.handle,
                "inbound": self.inbound.handle,
                "edges": EdgesApi(self.stats, trust_domain=settings.trust_domain).handle,
            },
        )
        self.http = HttpServer(self.api.handle)
        # the Kubernetes API for this machine's users (kubectl through the node agent's TLS
        # loopback port): its own socket, root's only
        self.kube_http = HttpServer(self._kube_gate)
        self.tcp_address: Address | None = None
        self._scrape_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<ControlPlane {self.config.socket_path} {self.store!r}>"

    @property
    def endpoint(self) -> str:
        return f"unix:{self.config.socket_path}"

    async def start(self) -> None:
        os.makedirs(self.config.state_dir, mode=0o755, exist_ok=True)
        snapshot = self._state_file.load()
        if snapshot is None:
            snapshot = migrate_json(Path(self.config.state_dir) / OLD_STATE_FILE, self._state_file)
        if snapshot is not None:
            for warning in self.store.restore(snapshot):
                log.warning("%s", warning)
            log.info(
                "restored %d objects at resourceVersion %d from %s",
                len(self.store),
                self.store.resource_version,
                self._state_file.path,
            )
            self.state.sync()
        # listen first: a second control plane on the same state dir fails here, before it
        # could write over the running one's state
        await self.http.listen_unix(self.config.socket_path)
        settings = self.config.identity
        if settings.trust_anchors and settings.issuer_cert and settings.issuer_key:
            self.identity.import_files(
                settings.trust_anchors, settings.issuer_cert, settings.issuer_key
            )
        self.identity.load_or_init()
        await self.kube_http.listen_unix(
            os.path.join(self.config.state_dir, KUBE_SOCKET), mode=0o600
        )
        self.store.on_commit = self._save
        self._save(self.store)
        self.route_status.resync()
        self.endpoint_slices.resync()
        self.namespaces.resync()
        self.deployments.resync()
        self.replica_sets.resync()
        if self.config.http_listen is not None:
            host, port = self.config.http_listen
            try:
                self.tcp_address = await self.http.listen_tcp(host, port)
            except OSError as exc:
                log.warning("not listening on %s:%d: %s", host, port, exc.strerror or exc)
        self._scrape_task = asyncio.get_running_loop().create_task(self.scraper.run())
        log.info("control plane listening on %s", self.config.socket_path)

    async def _kube_gate(self, request: Request) -> Response | Streaming:
        """Requests on the Kubernetes API socket (root only: the node agent's TLS port relays
        to it after checking the client's certificate): the Kubernetes API only."""
        parts = [p for p in request.path.split("/") if p]
        kube = self.api.kube
        if not request.privileged:
            return KubeError(403, "forbidden: the Kubernetes API socket is root's").response()
        if kube is None or not parts or not kube.owns(parts):
            return KubeError(
                404, f"the server could not find the requested resource ({request.path})"
            ).response()
        return await kube.handle(request)

    def _save(self, store: Store) -> None:
        changes = store.take_changes()
        try:
            self._state_file.write(changes, store.resource_version)
        except OSError as exc:
            store.return_changes(changes)  # written with the next commit
            log.error("cannot save the store to %s: %s", self._state_file.path, exc)

    async def stop(self, grace: float = 5.0) -> None:
        if self._scrape_task is not None:
            self._scrape_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scrape_task
            self._scrape_task = None
        await self.http.close(grace)
        await self.kube_http.close(grace)
        self._state_file.close()
        self.route_status.close()
        self.endpoint_slices.close()
        self.namespaces.close()
        self.deployments.close()
        self.replica_sets.close()
        self.inbound.close()
        self.destinations.close()
        self.state.close()


def _log_path(state_dir: str) -> Callable[[str, str, str], Path]:
    """Where the local node agent writes a pod container's log (it shares the state dir)."""
    from weft.runtime.local.state import StateDir

    state = StateDir(Path(state_dir))
    return state.container_log


async def serve(config: ControlConfig) -> None:
    """Run the control plane until SIGTERM or SIGINT."""
    plane: ControlPlane | ClusterControlPlane
    if config.kubeconfig:
        from weft.control.incluster import ClusterControlPlane

        plane = ClusterControlPlane(config)
    else:
        plane = ControlPlane(config)
    await plane.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("control plane stopping")
        await plane.stop()
