"""The node agent as a real cluster's kubelet: what it does besides running pods.

``weft node --kubeconfig FILE`` makes this machine one node of a cluster whose API server the
kubeconfig names (the upstream kube-apiserver of the test rig, say): :class:`ClusterNode` brings
up the node network (the same node namespace and bridge as the local mesh's, with the pod range
this node was given), registers the Node and keeps its heartbeat
(:mod:`~weft.runtime.local.kubenode`), makes the API server reachable from the node namespace
at its own address when it listens on loopback, and keeps the Services' cluster IPs working for
connections the proxies do not carry (:mod:`~weft.runtime.local.kubeservices`). The agent then
runs the pods the cluster's scheduler binds to this node, as their specs say
(:mod:`~weft.runtime.local.kubepod`): the injected ``weft-init`` and ``weft-proxy`` containers
are what mesh them, not the agent.

Not for: the pods themselves (:mod:`weft.runtime.local.agent`), nor the local mesh, where the
agent runs its own node and meshes pods itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from urllib.parse import urlsplit

from lightkube import AsyncClient

from weft.control.state import CachedState
from weft.runtime.local import net, netrun
from weft.runtime.local.kubenode import NodeHeartbeat
from weft.runtime.local.kubeservices import ApiRelay, ServiceRules

log = logging.getLogger("weft.node")


def loopback_server(url: str) -> tuple[str, int] | None:
    """The API server's loopback address and port, when that is where ``url`` says it listens."""
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    try:
        loopback = ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        loopback = parts.hostname == "localhost"
    if not loopback:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


class ClusterNode:
    """This machine's node of a cluster (see the module docstring)."""

    def __init__(
        self,
        client: AsyncClient,
        name: str,
        network: net.MeshNetwork,
        iptables: str,
        *,
        api_server: str = "",
    ) -> None:
        self.client = client
        self.api_server = api_server
        self.name = name
        self.network = network
        self.heartbeat = NodeHeartbeat(
            client, name, address=str(network.gateway), pod_cidr=str(network.pod_cidr)
        )
        self.services = ServiceRules(iptables)
        self.relay: ApiRelay | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._made_network = False

    def __repr__(self) -> str:
        return f"<ClusterNode {self.name} {self.network.pod_cidr}>"

    async def start(self) -> None:
        """Node network, API relay, then registration (pods come once the Node exists)."""
        if not netrun.netns_exists(net.NODE_NETNS):
            conflicts = netrun.host_route_conflicts(self.network)
            if conflicts:
                raise net.NetError(
                    "the node's address ranges overlap routes of this host: " + "; ".join(conflicts)
                )
            await netrun.run_plan_async(net.node_up_plan(self.network))
            await netrun.run_plan_async(net.host_routes_plan(self.network))
            self._made_network = True
        server = loopback_server(self.api_server)
        if server is not None:
            self.relay = ApiRelay(*server)
            await self.relay.start()
        self._heartbeat = asyncio.create_task(self.heartbeat.run(), name="node heartbeat")

    async def sync(self, state: CachedState) -> None:
        """Service rules as the cluster's Services and EndpointSlices are now."""
        try:
            await self.services.apply(state.list("Service"), state.list("EndpointSlice"))
        except net.NetError as exc:
            log.error("cannot install the service rules: %s", exc)

    async def stop(self) -> None:
        """The pods are stopped: say the node is not ready, remove what start made."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._heartbeat
        if self.heartbeat.registered.is_set():
            await self.heartbeat.stopped()
        if self.relay is not None:
            await self.relay.close()
        if self._made_network:
            net.remove_etc_netns_if_empty()  # the pods' hosts files went with them
            with contextlib.suppress(net.NetError):
                await netrun.run_plan_async(net.netns_delete_plan(net.NODE_NETNS))
            with contextlib.suppress(net.NetError):
                cidrs = [str(c) for c in self.network.ranges]
                await netrun.run_plan_async(net.host_routes_delete_plan(cidrs))


__all__ = ["ClusterNode", "loopback_server"]
