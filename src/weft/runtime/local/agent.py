"""The ``weft node`` agent: the kubelet's job on this machine.

It reads Pods and Services from the local mesh's Kubernetes API through the same client and
informers as the mesh's controllers (:mod:`weft.control.kube`), and:

- runs every Pod of this node that has not finished: address, namespace, veth, iptables, hosts
  file (:mod:`~weft.runtime.local.net`), then its processes
  (:class:`~weft.runtime.local.pod.PodRunner`); it records ``status.hostIP`` (the pod is on a
  node from then on, so its deletion is graceful) and every status change through the status
  subresource, and the proxy's admin address in the ``weft.io/proxy-admin`` annotation;
- stops a pod whose object has a ``deletionTimestamp`` as the kubelet does, so that no client
  sees a failed request: its endpoints already left discovery (the EndpointSlice controller
  marks them terminating), so it waits :attr:`NodeConfig.drain_delay` for proxies to act on
  that, sends SIGTERM with the grace period (``deletionGracePeriodSeconds`` at most), then
  deletes the object for good (``gracePeriodSeconds=0``); a pod whose object is gone is stopped
  at once;
- keeps every pod's hosts file in step with the Services (their cluster IPs);
- gives every meshed pod its identity token as the kubelet gives a projected service-account
  token: a TokenRequest to the API, bound to the Pod object (the control plane signs it),
  written for the proxy's uid only, rotated after 12 h, removed when the pod ends.

Deployments and ReplicaSets are the control plane's (:mod:`~weft.runtime.local.deployments`,
:mod:`~weft.runtime.local.replicasets`), as on a cluster. The agent also keeps the control plane
running, as the kubelet restarts control-plane pods (:mod:`~weft.runtime.local.supervisor`):
restarted with backoff when it exits, its restarts counted for ``weft check``.

With ``--kubeconfig`` the agent is a real cluster's kubelet instead
(:mod:`~weft.runtime.local.clusternode`): it runs only the pods the cluster's scheduler binds to
its Node, as their injected specs say (:mod:`~weft.runtime.local.kubepod`), and meshes nothing
itself.

While the API is away, pods keep running on the informers' last state, status reports wait and
are retried, and the informers reconnect with backoff. When the agent starts, pod namespaces
left by an earlier agent are removed (their processes died with it: every pod process has
``PR_SET_PDEATHSIG``), and the pods the API still has are started again in place.

Not for: the network commands or process supervision themselves (:mod:`~weft.runtime.local.net`,
:mod:`~weft.runtime.local.pod`), nor bringing the mesh up (:mod:`~weft.runtime.local.mesh`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightkube import AsyncClient

from weft.control.client import KUBE_SOCKET
from weft.control.kube.client import connect, connect_endpoint
from weft.control.kube.state import KubeState
from weft.control.state import StateEvent
from weft.resources import pods
from weft.resources.errors import InvalidResources
from weft.resources.models import Pod, Service
from weft.runtime.local import kubepod, net, netrun
from weft.runtime.local.clusternode import ClusterNode
from weft.runtime.local.kubeport import KubePort
from weft.runtime.local.launch import NetnsLauncher, NetnsProbes, base_env
from weft.runtime.local.nodeconfig import NODE_NAME, NodeConfig
from weft.runtime.local.pod import PodRunner
from weft.runtime.local.podapi import PodApi
from weft.runtime.local.podexec import ExecServer
from weft.runtime.local.podplan import PodSpec as RunSpec
from weft.runtime.local.podplan import PodSpecError, pod_spec, proxy_argv
from weft.runtime.local.podtokens import PodTokens
from weft.runtime.local.state import StateDir

if TYPE_CHECKING:
    from weft.runtime.local.supervisor import ControlSupervisor

log = logging.getLogger("weft.node")

WATCH_KINDS = ("Pod", "Service")
TOKEN_TIMEOUT = 30.0  # for a starting pod's token (the API away longer: the pod fails, retried)
Key = tuple[str, str]  # (namespace, name)


# -- configuration --------------------------------------------------------------------------


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait for it; an error it died of earlier is logged, not raised."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception("%s failed", task.get_name())


# -- the agent ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pod:
    """A pod this agent runs: the API object it runs (by uid) and its processes."""

    namespace: str
    name: str
    uid: str
    doc: Mapping[str, Any]
    ip: ipaddress.IPv4Address
    netns: str
    runner: PodRunner | None = None
    task: asyncio.Task[None] | None = None
    terminating: bool = False
    finished: bool = False
    became_ready: bool = False
    plan: kubepod.KubePodPlan | None = None  # a cluster's pod: what its spec asks for

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)


def _deleting(obj: Mapping[str, Any]) -> bool:
    """The object is being deleted (not: the pod is draining, which its status also says)."""
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


class NodeAgent:
    """See the module docstring. ``run(stop)`` runs until ``stop`` is set, then stops pods."""

    def __init__(
        self,
        config: NodeConfig,
        client: AsyncClient | None = None,
        *,
        control_supervisor: ControlSupervisor | None = None,
    ) -> None:
        self.config = config
        if client is None:
            client = (
                connect(config.kubeconfig, context=config.kube_context)
                if config.kubeconfig
                else connect_endpoint(config.control_endpoint)
            )
        self.client = client
        self.control_supervisor = control_supervisor
        self.state = StateDir(config.state_dir)
        # a real cluster's node: registered, heartbeat, service rules, the way to its API
        self.node: ClusterNode | None = None
        kinds: tuple[str, ...] = WATCH_KINDS
        fields: dict[str, dict[str, str]] = {}
        if config.kubeconfig:
            self.node = ClusterNode(self.client, config.node_name, config.network,
                                    config.iptables, api_server=config.api_server)  # fmt: skip
            kinds = (*WATCH_KINDS, "EndpointSlice")
            fields["Pod"] = {"spec.nodeName": config.node_name}  # this node's pods only
        self.cluster = KubeState(self.client, kinds, resync_s=60.0, fields=fields)
        self._ipam = net.Ipam(config.network.pod_cidr)
        self._pods: dict[Key, _Pod] = {}
        self._kick = asyncio.Event()
        self.api = PodApi(self.client, str(config.network.gateway))
        self._services: frozenset[net.ServiceName] = frozenset()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._env = base_env(state_dir=str(config.state_dir), python=config.python)
        self.tokens = PodTokens(self.api, self.state, self._spawn)
        self._unsubscribe = self.cluster.subscribe(self._on_event)

    def __repr__(self) -> str:
        return f"<NodeAgent pods={len(self._pods)} synced={self.synced} {self._ipam!r}>"

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.cluster.informers.values())

    # -- main loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        # first: the control plane is kept running whatever the pods' state
        supervising = (
            asyncio.create_task(self.control_supervisor.run(), name="control supervisor")
            if self.control_supervisor is not None
            else None
        )
        try:
            await self.remove_stale_namespaces()
            self.remove_stale_tokens()
        except BaseException:
            await _cancel(supervising)
            raise
        if self.node is not None:
            try:
                await self.node.start()
            except BaseException:
                await self.node.stop()
                raise
        kube_port = None
        if self.config.kube_listen is not None and self.node is None:
            execs = ExecServer(
                lambda ns, name: self.cluster.get("Pod", ns, name),
                state_dir=str(self.config.state_dir),
                python=self.config.python,
            )
            kube_port = KubePort(
                self.config.kube_listen,
                self.state.root / KUBE_SOCKET,
                self.state.root / "kube",
                exec_server=execs,
            )
            await kube_port.start()
        self.cluster.start()
        background = [
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
            asyncio.create_task(self.api.run(), name="status reporter"),
        ]
        try:
            await stop.wait()
        finally:
            self._stopping = True
            if kube_port is not None:
                await kube_port.close()
            # before anything else: `weft down` stops the control plane once we are gone, and
            # nothing may start it again
            await _cancel(supervising)
            background[0].cancel()
            await self.cluster.stop()
            await self._shutdown_pods()
            background[1].cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._unsubscribe()
            self.api.closing = True
            if self.node is not None:
                await self.node.stop()
            with contextlib.suppress(Exception):
                await self.client.close()

    def _on_event(self, event: StateEvent) -> None:
        self._kick.set()

    async def _reconcile_loop(self) -> None:
        was_synced = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.config.resync_interval)
            self._kick.clear()
            synced = self.synced
            if synced and not was_synced:
                log.info(
                    "watching the Kubernetes API (%s)",
                    self.config.api_server or self.config.control_endpoint,
                )
            was_synced = synced
            if synced and not self._stopping:
                try:
                    self.reconcile()
                except Exception:  # one bad object must not stop the agent
                    log.exception("reconcile failed")
                if self.node is not None:
                    await self.node.sync(self.cluster)

    def kick(self) -> None:
        self._kick.set()

    # -- reconcile ---------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Compare the API's pods with the pods this agent runs and start what closes the gap."""
        self._sync_services()
        self.rotate_tokens()
        for key, pod in list(self._pods.items()):
            obj = self.cluster.get("Pod", *key)
            if obj is None or str(obj["metadata"].get("uid") or "") != pod.uid:
                if pod.finished:
                    self._pods.pop(key, None)  # a finished pod's object was deleted
                    self._remove_logs(pod)
                elif not pod.terminating:
                    log.info("pod %s/%s was deleted: stopping it", *key)
                    self._terminate(pod, drain=False, grace=None, delete=False)
            elif _deleting(obj) and not pod.terminating:
                grace = (obj.get("metadata") or {}).get("deletionGracePeriodSeconds")
                self._terminate(pod, drain=True, grace=grace, delete=True)
        # a cluster's scheduler binds pods to this node; the local mesh's agent takes them all
        mine = (self.config.node_name,) if self.node is not None else (None, "", NODE_NAME)
        for obj in self.cluster.list("Pod"):
            key = pods.name_of(obj)
            if key in self._pods or (obj.get("spec") or {}).get("nodeName") not in mine:
                continue
            if _deleting(obj):
                # a pod an earlier agent ran (its processes are gone) or never started
                self._spawn(self._delete_key(key, str(obj["metadata"].get("uid") or "")))
            elif not pods.is_finished(obj):
                self._start_pod(obj)

    def _sync_services(self) -> None:
        names = set()
        for doc in self.cluster.list("Service"):
            try:
                svc = Service.from_dict(doc)
            except InvalidResources:
                continue
            if svc.spec.cluster_ip:
                names.add(
                    net.ServiceName(
                        svc.metadata.namespace or "default", svc.metadata.name, svc.spec.cluster_ip
                    )
                )
        frozen = frozenset(names)
        if frozen == self._services:
            return
        self._services = frozen
        for pod in self._pods.values():
            if pod.runner is not None and not pod.finished:
                self._write_hosts(pod)

    def _write_hosts(self, pod: _Pod) -> None:
        text = net.hosts_file(
            pod=pod.name, pod_ip=str(pod.ip), namespace=pod.namespace, services=self._services
        )
        try:
            net.write_pod_etc(pod.netns, text)
        except OSError as exc:
            log.warning("pod %s/%s: cannot write its hosts file: %s", *pod.key, exc)

    # -- pods --------------------------------------------------------------------------------

    def _address_for(self, obj: Mapping[str, Any], owner: str) -> ipaddress.IPv4Address:
        """The pod's address: the one it had (a pod started again after the agent restarted
        keeps it, as a pod keeps its IP across container restarts), else the next free one."""
        for text in pods.ips(obj)[:1]:
            with contextlib.suppress(ValueError):
                ip = ipaddress.IPv4Address(text)
                if self._ipam.owner(ip) is None:
                    self._ipam.reserve(ip, owner)
                    return ip
        return self._ipam.allocate(owner)

    def _start_pod(self, obj: Mapping[str, Any]) -> None:
        namespace, name = pods.name_of(obj)
        uid = str(obj["metadata"].get("uid") or "")
        try:
            ip = self._address_for(obj, f"{namespace}/{name}")
        except net.IpamExhausted as exc:
            log.error("pod %s/%s: %s", namespace, name, exc)
            return
        pod = _Pod(namespace, name, uid, obj, ip, net.pod_netns_name(namespace, name))
        self._pods[pod.key] = pod
        try:
            if self.node is not None:
                pod.plan = kubepod.plan(obj, str(ip), pod_dir=self.state.pod_dir(namespace, name),
                                        host_ip=str(self.config.network.gateway))  # fmt: skip
                spec = pod.plan.spec
            else:
                spec = pod_spec(Pod.from_dict(obj), str(ip))
        except (InvalidResources, PodSpecError) as exc:
            self._start_failed(pod, "Invalid", f"cannot run: {exc}")
            self._ipam.release(ip)
            return
        pod.netns = spec.netns
        pod.task = asyncio.create_task(self._pod_lifecycle(pod, spec), name=f"pod {name}")
        log.info("pod %s/%s: starting at %s", namespace, name, ip)

    async def _pod_lifecycle(self, pod: _Pod, spec: RunSpec) -> None:
        started = False
        try:
            self._push_status(pod, {"phase": "Pending", "podIP": str(pod.ip), "ready": False})
            admin = f"{pod.ip}:{net.PROXY_ADMIN_PORT}" if spec.meshed else None
            bound = (pod.doc.get("spec") or {}).get("nodeName") == NODE_NAME
            if self.node is None and (not bound or admin is not None):
                self._spawn(self.api.bind(pod.key, NODE_NAME, admin))
            plan = pod.plan
            if plan is not None:
                for directory in plan.directories:
                    directory.mkdir(parents=True, exist_ok=True)
                    directory.chmod(0o777)  # an emptyDir: any of the pod's users may write
                for volume in plan.unprovided:
                    log.info("pod %s/%s: volume %s is not provided on this node", *pod.key, volume)
            if (spec.meshed and plan is None) or (plan is not None and plan.identity_token):
                try:
                    async with asyncio.timeout(TOKEN_TIMEOUT):
                        await self.tokens.issue(
                            pod.namespace, pod.name, pod.uid, spec.service_account
                        )
                except Exception as exc:
                    self._start_failed(pod, "IdentitySetupFailed", f"no identity token: {exc}")
                    return
            try:
                await self._setup_network(pod, spec)
            except (net.NetError, OSError) as exc:
                self._start_failed(pod, "NetworkSetupFailed", f"network setup failed: {exc}")
                return
            if pod.terminating:
                return
            if plan is not None:  # its injected containers mesh it
                sidecar = list(plan.proxy_argv) if plan.proxy_argv is not None else None
            elif spec.meshed:  # the local mesh meshes every pod itself
                sidecar = proxy_argv(
                    spec,
                    python=self.config.python,
                    control_endpoint=self.config.control_endpoint,
                    token_file=self.tokens.path(pod.key),
                    trust_domain=self.config.trust_domain,
                    log_level=self.config.proxy_log_level,
                )
            else:
                sidecar = None
            runner = PodRunner(
                spec,
                launcher=NetnsLauncher(pod.netns),
                probes=NetnsProbes(pod.netns, str(pod.ip), net.NODE_NETNS),
                log_dir=self.state.pod_dir(pod.namespace, pod.name),
                on_status=lambda status: self._on_runner_status(pod, status),
                proxy_argv=sidecar,
                base_env=self._env,
                proxy_env=dict(plan.proxy_env) if plan is not None else None,
                init=plan.init if plan is not None else (),
                init_after=plan.init_after if plan is not None else (),
            )
            pod.runner = runner
            started = True
            phase = await runner.run()
            if not pod.terminating:
                log.info("pod %s/%s: finished (%s)", *pod.key, phase)
                pod.finished = True
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s/%s: unexpected error", *pod.key)
            pod.finished = True
        finally:
            if pod.runner is not None and not pod.runner.terminating and started:
                # the pod ended by itself: make sure nothing of it keeps running
                await pod.runner.terminate(grace=1.0)
            await netrun.teardown_netns(pod.netns)
            self.tokens.remove(pod.key)
            self._ipam.release(pod.ip)
            self.kick()

    def _start_failed(self, pod: _Pod, reason: str, message: str) -> None:
        log.error("pod %s/%s: %s", *pod.key, message)
        status = {"phase": "Failed", "podIP": str(pod.ip), "ready": False}
        self._push_status(pod, {**status, "reason": reason, "message": message[:1000]})
        pod.finished = True

    def _on_runner_status(self, pod: _Pod, status: dict[str, Any]) -> None:
        if status.get("ready"):
            pod.became_ready = True
        if pod.terminating and status.get("phase") not in ("Succeeded", "Failed"):
            return  # the object is leaving: nothing to tell but its end
        self._push_status(pod, status)
        self.kick()

    def _push_status(self, pod: _Pod, status: dict[str, Any]) -> None:
        if self.node is not None:
            status = kubepod.cluster_status(pod.doc, status)
        self.api.push_status(pod.key, status)

    async def _delete_object(self, pod: _Pod) -> None:
        self.api.forget(pod.key)
        await self._delete_key(pod.key, pod.uid)
        if self._pods.get(pod.key) is pod:
            del self._pods[pod.key]
        self._remove_logs(pod)
        self.kick()

    async def _delete_key(self, key: Key, uid: str) -> None:
        """Delete the object for good, if it is still the one with ``uid``."""
        current = self.cluster.get("Pod", *key)
        if current is None or str(current["metadata"].get("uid") or "") != uid:
            return
        await self.api.delete(key)

    def _remove_logs(self, pod: _Pod) -> None:
        # a deleted pod's logs go with it (as in Kubernetes); finished pods keep theirs
        with contextlib.suppress(OSError, ValueError):
            shutil.rmtree(self.state.pod_dir(pod.namespace, pod.name))

    def _terminate(self, pod: _Pod, *, drain: bool, grace: Any, delete: bool) -> None:
        if pod.terminating:
            return
        pod.terminating = True
        self._spawn(self._terminate_pod(pod, drain=drain, grace=grace, delete=delete))

    async def _terminate_pod(self, pod: _Pod, *, drain: bool, grace: Any, delete: bool) -> None:
        runner = pod.runner
        if runner is not None:
            runner.mark_terminating()
            if drain and pod.became_ready:
                # the endpoints left discovery with the deletionTimestamp; proxies need a
                # moment to act on it before the pod stops accepting
                await asyncio.sleep(self.config.drain_delay)
            period = runner.spec.grace
            if isinstance(grace, int) and not isinstance(grace, bool):
                period = min(period, float(grace))
            log.info("pod %s/%s: stopping (grace %gs)", *pod.key, period)
            await runner.terminate(grace=period)
        if pod.task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(pod.task)
        if delete:
            await self._delete_object(pod)
        else:
            if self._pods.get(pod.key) is pod:
                del self._pods[pod.key]
            self._remove_logs(pod)

    def rotate_tokens(self, now: float | None = None) -> list[Key]:
        """Start renewing the tokens of running pods that are due (:class:`PodTokens`)."""

        def runs(key: Key, uid: str) -> bool:
            pod = self._pods.get(key)
            return pod is not None and not (pod.terminating or pod.finished) and pod.uid == uid

        return self.tokens.rotate(runs, now)

    async def _setup_network(self, pod: _Pod, spec: RunSpec) -> None:
        if netrun.netns_exists(pod.netns):
            await netrun.teardown_netns(pod.netns)
        podnet = net.PodNet(
            netns=pod.netns,
            ip=pod.ip,
            veth=net.veth_name(self.config.network.pod_cidr, pod.ip),
            # a cluster's pod: its weft-init container installs the rules
            meshed=spec.meshed and pod.plan is None,
            skip_inbound=spec.skip_inbound,
            skip_outbound=spec.skip_outbound,
        )
        try:
            await netrun.run_plan_async(
                net.pod_up_plan(podnet, self.config.network, iptables=self.config.iptables)
            )
            self._write_hosts(pod)
        except BaseException:
            await netrun.teardown_netns(pod.netns)
            raise

    async def remove_stale_namespaces(self) -> list[str]:
        """Pod namespaces left by an earlier agent (their processes died with it): remove them."""
        removed = []
        for name in netrun.list_netns():
            if not net.is_weft_pod_netns(name):
                continue
            if any(p.netns == name for p in self._pods.values()):
                continue
            await netrun.teardown_netns(name)
            removed.append(name)
        if removed:
            log.info("removed %d stale pod namespaces", len(removed))
        return removed

    def remove_stale_tokens(self) -> list[Path]:
        """Tokens of pods this agent does not run (an earlier agent's): remove them."""
        return self.tokens.remove_stale(self._pods)

    async def _shutdown_pods(self) -> None:
        """The agent is stopping: stop every pod (no drain delay: the mesh is going away)."""
        pods = [p for p in self._pods.values() if not p.finished]
        for pod in pods:
            pod.terminating = True
        budget = self.config.shutdown_timeout

        async def stop(pod: _Pod) -> None:
            if pod.runner is not None:
                await pod.runner.terminate(grace=min(pod.runner.spec.grace, budget))

        if pods:
            log.info("stopping %d pods", len(pods))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(stop(p) for p in pods), return_exceptions=True),
                    budget + 5.0,
                )
        tasks = [p.task for p in self._pods.values() if p.task is not None and not p.task.done()]
        if tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=10.0)
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
