"""The control plane on a Kubernetes cluster: the same controllers, reading the Kubernetes API.

:class:`ClusterControlPlane` is what ``weft control --kubeconfig FILE`` (or ``in-cluster``: the
pod's service account) runs: :class:`~weft.control.kube.state.KubeState` (one informer per kind)
as the controllers' cluster state, route statuses written through the status subresource, proxy
identity through TokenReview (:class:`~weft.control.tokenreview.KubeTokenReviewer`), and the
same API for the proxies (destinations, inbound policy, identity) on the same socket, and on TCP
(with ``--http-tls``: HTTPS as its own mesh identity, :mod:`weft.control.servingcert`). It keeps
no store of its own: resources are managed with kubectl (Weft's resource endpoints answer 404
saying so). Golden metrics are aggregated as in the local mesh (:mod:`weft.control.metrics`:
every meshed pod's proxy scraped at the admin port its spec declares), for ``weft stat``,
``weft routes`` and ``weft edges``. While the API server is out of
reach the informers keep their caches and retry, so the proxies keep getting the last state.

Not for: the local mesh (:class:`weft.control.server.ControlPlane`, which also serves its store
as the Kubernetes API), nor installing anything on the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weft.control.api import Api
from weft.control.config import ControlConfig
from weft.control.destinations import DestinationService
from weft.control.edges import EdgesApi
from weft.control.httpserver import HttpServer
from weft.control.identity import IdentityService
from weft.control.inbound import InboundPolicies
from weft.control.kube.client import connect
from weft.control.kube.leader import LeaderElector
from weft.control.kube.state import CORE_KINDS, KubeState
from weft.control.metrics import ScrapeConfig, Scraper, Stats
from weft.control.routestatus import RouteStatusController
from weft.control.servingcert import ServingCert
from weft.control.state import KINDS, StatusWriter
from weft.control.tokenreview import KubeTokenReviewer

log = logging.getLogger("weft.control")

IN_CLUSTER = "in-cluster"
LEASE = "weft-control"
LEASE_NAMESPACE = "weft-system"
SYNC_WAIT_S = 30.0


class ClusterControlPlane:
    """The control plane over a cluster's API (see the module docstring)."""

    def __init__(self, config: ControlConfig) -> None:
        if not config.kubeconfig:
            raise ValueError("a kubeconfig (or in-cluster) is required")
        self.config = config
        path = None if config.kubeconfig == IN_CLUSTER else config.kubeconfig
        self.client = connect(path, context=config.kube_context)
        self.state = KubeState(self.client, (*KINDS, "Deployment"))
        settings = config.identity
        self.destinations = DestinationService(self.state, trust_domain=settings.trust_domain)
        self.leader: LeaderElector | None = None
        writer: StatusWriter = self.state
        if config.leader_elect:
            self.leader = LeaderElector(
                self.client,
                namespace=os.environ.get("WEFT_POD_NAMESPACE") or LEASE_NAMESPACE,
                name=LEASE,
                identity=os.environ.get("WEFT_POD_NAME") or socket.gethostname(),
                on_change=self._leading,
            )
            writer = LeaderWriter(self.state, self.leader)
        self.route_status = RouteStatusController(
            self.state,
            writer,
            schedule=lambda fn: asyncio.get_running_loop().call_soon(fn),
            cache=self.destinations.policies.cache,
        )
        self.identity = IdentityService(
            Path(config.state_dir) / "identity",
            self.state,
            trust_domain=settings.trust_domain,
            leaf_lifetime=settings.leaf_lifetime,
            heartbeat=config.heartbeat,
            # who may ask for a certificate: the cluster's networks (reviewed tokens prove who)
            allowed_networks=(*(config.cluster_networks or (config.pod_cidr,)), "127.0.0.0/8"),
            reviewer=KubeTokenReviewer(self.client),
        )
        self.inbound = InboundPolicies(
            self.state,
            trust_domain=settings.trust_domain,
            cluster_networks=config.cluster_networks or (config.pod_cidr,),
            default_policy=config.default_inbound_policy,
            heartbeat=config.heartbeat,
        )
        # golden metrics: every meshed pod's proxy scraped (its admin port from its spec)
        self.stats = Stats(self.state, retention=config.retention)
        self.scraper = Scraper(
            self.state,
            self.stats,
            ScrapeConfig(
                interval=config.scrape_interval,
                timeout=config.scrape_timeout,
                allowed_networks=(*(config.cluster_networks or (config.pod_cidr,)), "127.0.0.0/8"),
            ),
        )
        self._scrape_task: asyncio.Task[None] | None = None
        self.api = Api(
            None,
            self.destinations,
            self.stats,
            heartbeat=config.heartbeat,
            handlers={
                "identity": self.identity.handle,
                "inbound": self.inbound.handle,
                "edges": EdgesApi(self.stats, trust_domain=settings.trust_domain).handle,
            },
            ready=self._not_ready,
        )
        self.http = HttpServer(self.api.handle)
        self.tcp_address: tuple[str, int] | None = None
        self.serving_cert = (
            ServingCert(self.identity, config.tls_namespace, config.tls_service_account)
            if config.http_tls
            else None
        )

    def __repr__(self) -> str:
        return f"<ClusterControlPlane {self.config.socket_path} {self.state!r}>"

    @property
    def endpoint(self) -> str:
        return f"unix:{self.config.socket_path}"

    async def start(self) -> None:
        os.makedirs(self.config.state_dir, mode=0o755, exist_ok=True)
        self.state.start()
        try:
            await asyncio.wait_for(self.state.wait_synced(), SYNC_WAIT_S)
        except TimeoutError:
            # serve anyway: the informers keep trying, and the proxies get what arrives
            failing = {
                k: i.last_error for k, i in self.state.informers.items() if not i.synced.is_set()
            }
            log.warning("the cluster's state is not all listed after %gs: %s", SYNC_WAIT_S, failing)
        settings = self.config.identity
        if settings.trust_anchors and settings.issuer_cert and settings.issuer_key:
            self.identity.import_files(
                settings.trust_anchors, settings.issuer_cert, settings.issuer_key
            )
        self.identity.load_or_init()
        await self.http.listen_unix(self.config.socket_path)
        if self.config.http_listen is not None:
            host, port = self.config.http_listen
            tls = None
            if self.serving_cert is not None:
                self.serving_cert.refresh()  # the CA is loaded: an error here stops the start
                self.serving_cert.start()
                tls = self.serving_cert.context
            try:
                self.tcp_address = await self.http.listen_tcp(host, port, tls=tls)
            except OSError as exc:
                log.warning("not listening on %s:%d: %s", host, port, exc.strerror or exc)
        self.route_status.resync()
        self._scrape_task = asyncio.get_running_loop().create_task(self.scraper.run())
        if self.leader is not None:
            self.leader.start()
        log.info("control plane on the cluster's API, listening on %s", self.config.socket_path)

    def _not_ready(self) -> str | None:
        """Ready once the core kinds were listed (it then keeps serving its last state through
        an API server outage, as the proxies do) and the CA is loaded."""
        waiting = [
            k for k in CORE_KINDS
            if k in self.state.informers and not self.state.informers[k].synced.is_set()
        ]  # fmt: skip
        if waiting:
            return f"the cluster's {', '.join(waiting)} are not listed yet"
        if not self.identity.loaded:
            return "the identity service has not loaded its CA yet"
        return None

    def _leading(self, leading: bool) -> None:
        if leading:
            self.route_status.resync()  # statuses the last leader did not write

    async def stop(self, grace: float = 5.0) -> None:
        if self.leader is not None:
            await self.leader.stop()
        await self.http.close(grace)
        if self._scrape_task is not None:
            self._scrape_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scrape_task
        if self.serving_cert is not None:
            await self.serving_cert.stop()
        self.route_status.close()
        self.inbound.close()
        self.destinations.close()
        await self.state.stop()
        with contextlib.suppress(Exception):
            await self.client.close()


class LeaderWriter:
    """Status writes, made only while this replica holds the Lease (the others drop theirs:
    the leader computes the same statuses)."""

    def __init__(self, writer: StatusWriter, leader: LeaderElector) -> None:
        self.writer = writer
        self.leader = leader
        self.dropped = 0

    def write_status(
        self, kind: str, namespace: str | None, name: str, status: Mapping[str, Any]
    ) -> None:
        if self.leader.leading:
            self.writer.write_status(kind, namespace, name, status)
        else:
            self.dropped += 1


__all__ = ["IN_CLUSTER", "ClusterControlPlane", "LeaderWriter"]
