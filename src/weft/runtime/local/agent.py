"""The ``weft node`` agent: the kubelet's and the Deployment controller's job on this machine.

It watches Deployments, Services and Pods through the control plane's API and:

- turns each Deployment into Pods (``<deploy>-<hash10>-<rand5>``, labelled with
  ``pod-template-hash``, annotated with ``weft.io/deployment`` and ``weft.io/proxy-admin``), and
  rolls them when the template or the replica count changes (:func:`plan_rollout`: the
  Deployment's ``maxSurge``/``maxUnavailable``, which for up to three replicas and the default
  25% are 1 and 0, so a rollout adds a pod, waits for it to be ready, then removes an old one);
- runs every Pod it owns (also Pods applied directly, e.g. jobs with ``restartPolicy: Never``):
  address, namespace, veth, iptables, hosts file (:mod:`~weft.runtime.local.net`), then its
  processes (:class:`~weft.runtime.local.pod.PodRunner`), and reports each status change with
  ``PUT .../status``;
- removes a pod in three steps so that no client sees a failed request: mark it
  ``terminating``/not ready (its endpoints leave discovery within milliseconds), wait
  :attr:`NodeConfig.drain_delay` for proxies to act on that, then SIGTERM with the grace period;
- keeps every pod's hosts file in step with the Services (their cluster IPs);
- gives every meshed pod its identity token (the local stand-in for a Kubernetes service-account
  token): claims ``(namespace, pod, metadata.uid, serviceAccountName)`` signed with the mesh's
  token key (``<state>/identity/token.key``, shared with the control plane, which checks the uid
  against the store), written for the proxy's uid only and removed when the pod ends. A proxy
  restarted after a crash reads the same token; a pod recreated under the same name has a new
  uid, so a new token, and the old one stops verifying.

It also keeps the control plane running, as the kubelet restarts control-plane pods
(:mod:`~weft.runtime.local.supervisor`, given by ``weft node``): restarted with backoff when it
exits, its restarts counted for ``weft check``.

The agent is the source of truth for the pods it runs: when the control plane restarts, pods keep
running, status reports wait and are retried, and watches reconnect with backoff. When the agent
starts, pod namespaces and Pod objects left by an earlier agent are removed (their processes died
with it: every pod process has ``PR_SET_PDEATHSIG``), and Deployments recreate their pods.

Not for: the network commands or process supervision themselves (:mod:`~weft.runtime.local.net`,
:mod:`~weft.runtime.local.pod`), nor bringing the mesh up (:mod:`~weft.runtime.local.mesh`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from weft.control.client import KUBE_SOCKET, ApiError, ControlClient, ControlUnavailable
from weft.control.follow import Follower
from weft.control.tokenreview import ROTATE_AFTER
from weft.core.backoff import ExponentialBackoff
from weft.identity.names import DEFAULT_TRUST_DOMAIN, check_trust_domain
from weft.identity.tokens import TokenClaims, TokenKey
from weft.resources.errors import InvalidResources
from weft.resources.models import (
    ANNOTATION_DEPLOYMENT,
    ANNOTATION_PROXY_ADMIN,
    LABEL_POD_TEMPLATE_HASH,
    Deployment,
    Pod,
    RollingUpdate,
    Service,
)
from weft.runtime.local import net
from weft.runtime.local.kubeport import DEFAULT_LISTEN, KubePort
from weft.runtime.local.pod import (
    NetnsLauncher,
    NetnsProbes,
    PodRunner,
    PodSpecError,
    base_env,
    pod_spec,
    proxy_argv,
    remove_token,
    token_path,
    write_token,
)
from weft.runtime.local.pod import PodSpec as RunSpec
from weft.runtime.local.state import StateDir

if TYPE_CHECKING:
    from weft.runtime.local.supervisor import ControlSupervisor

log = logging.getLogger("weft.node")

NODE_NAME = "local"
WATCH_KINDS = ("Deployment", "Service", "Pod")
# Kubernetes' alphabet for generated name parts: no vowels (no words), no look-alikes.
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_MAX_POD_NAME = 63


# -- naming ---------------------------------------------------------------------------------


def template_hash(template: Mapping[str, Any]) -> str:
    """Ten characters that change whenever the pod template changes (``pod-template-hash``)."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    n = int.from_bytes(hashlib.sha256(canonical).digest()[:16], "big")
    out = []
    for _ in range(10):
        n, r = divmod(n, len(_NAME_ALPHABET))
        out.append(_NAME_ALPHABET[r])
    return "".join(out)


def pod_name(deployment: str, hash10: str, rng: random.Random) -> str:
    """``<deployment>-<hash10>-<rand5>``, the deployment part shortened to keep the name a valid
    hostname (at most 63 characters)."""
    suffix = "".join(rng.choice(_NAME_ALPHABET) for _ in range(5))
    room = _MAX_POD_NAME - len(hash10) - len(suffix) - 2
    base = deployment[:room].rstrip("-.")
    return f"{base}-{hash10}-{suffix}"


# -- rollout planning -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodView:
    """What the rollout planner needs to know about one pod of a Deployment."""

    name: str
    template_hash: str
    ready: bool
    seq: int
    terminating: bool = False
    finished: bool = False

    @property
    def live(self) -> bool:
        return not self.terminating and not self.finished


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    create: int = 0
    terminate: tuple[str, ...] = ()

    @property
    def idle(self) -> bool:
        return self.create == 0 and not self.terminate


def rollout_limits(
    strategy: RollingUpdate, replicas: int, kind: str = "RollingUpdate"
) -> tuple[int, int]:
    """``(max_surge, max_unavailable)`` as numbers: percentages of ``replicas`` round up for
    surge and down for unavailability (as Kubernetes does); never both zero."""
    if kind == "Recreate":
        return (0, replicas)
    surge = RollingUpdate.scaled(strategy.max_surge, replicas, round_up=True)
    unavailable = RollingUpdate.scaled(strategy.max_unavailable, replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        surge = 1
    return (surge, unavailable)


def _scale_down_order(p: PodView) -> tuple[bool, int]:
    # not-ready pods go first (removing them costs no capacity), then the newest
    return (p.ready, -p.seq)


def plan_rollout(
    *,
    replicas: int,
    template_hash: str,
    pods: Sequence[PodView],
    max_surge: int,
    max_unavailable: int,
    recreate: bool = False,
) -> RolloutPlan:
    """One step of the Deployment controller: how many pods to create and which to remove.

    Invariants (with ``R = replicas``): live pods never exceed ``R + max_surge``; a ready pod is
    removed only while at least ``R - max_unavailable`` other pods stay ready; pods of the
    current template are never removed to make room for old ones. ``recreate`` removes every old
    pod and creates new ones only once none is left (not even terminating).
    """
    if replicas < 0 or max_surge < 0 or max_unavailable < 0:
        raise ValueError("replicas, max_surge and max_unavailable must be >= 0")
    live = [p for p in pods if p.live]
    new = [p for p in live if p.template_hash == template_hash]
    old = [p for p in live if p.template_hash != template_hash]
    terminate: list[str] = []

    excess_new = len(new) - replicas
    if excess_new > 0:
        terminate += [p.name for p in sorted(new, key=_scale_down_order)[:excess_new]]

    if recreate:
        if old:
            return RolloutPlan(0, tuple(terminate + [p.name for p in old]))
        if any(p.terminating and p.template_hash != template_hash for p in pods):
            return RolloutPlan(0, tuple(terminate))
        return RolloutPlan(max(0, replicas - len(new)), tuple(terminate))

    if not old:
        return RolloutPlan(max(0, replicas - len(new)), tuple(terminate))

    create = max(0, min(replicas - len(new), replicas + max_surge - len(live)))
    min_available = max(0, replicas - max_unavailable)
    ready = sum(1 for p in live if p.ready and p.name not in terminate)
    for p in sorted(old, key=_scale_down_order):
        if not p.ready:
            terminate.append(p.name)
        elif ready - 1 >= min_available:
            terminate.append(p.name)
            ready -= 1
    return RolloutPlan(create, tuple(terminate))


# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything ``weft node`` needs, validated."""

    state_dir: Path
    network: net.MeshNetwork
    iptables: str
    control_endpoint: str
    python: str = sys.executable
    drain_delay: float = 1.5
    shutdown_timeout: float = 10.0
    resync_interval: float = 1.0
    proxy_log_level: str = "info"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    # where this machine's kubectl reaches the local mesh's Kubernetes API (None: nowhere)
    kube_listen: tuple[str, int] | None = DEFAULT_LISTEN

    def __post_init__(self) -> None:
        if not self.state_dir.is_absolute():
            raise ValueError(f"state_dir must be absolute, got {self.state_dir}")
        check_trust_domain(self.trust_domain)
        for name in ("drain_delay", "shutdown_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (math.isfinite(self.resync_interval) and self.resync_interval > 0):
            raise ValueError(f"resync_interval must be positive, got {self.resync_interval!r}")
        if not self.iptables.startswith("iptables"):
            raise ValueError(f"iptables must name an iptables binary, got {self.iptables!r}")
        if not self.control_endpoint:
            raise ValueError("control_endpoint must not be empty")


# -- the agent ------------------------------------------------------------------------------


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


Key = tuple[str, str]  # (namespace, name)


@dataclass(slots=True)
class _Pod:
    """A pod this agent runs."""

    namespace: str
    name: str
    seq: int
    doc: dict[str, Any]
    ip: ipaddress.IPv4Address
    netns: str
    deployment: str | None
    template_hash: str | None
    uid: str | None = None  # the store's metadata.uid, once the object is applied
    runner: PodRunner | None = None
    task: asyncio.Task[None] | None = None
    terminating: bool = False
    finished: bool = False
    seen_in_store: bool = False
    became_ready: bool = False
    status: dict[str, Any] | None = None

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def ready(self) -> bool:
        return self.runner is not None and self.runner.ready and not self.terminating

    def view(self) -> PodView:
        return PodView(
            name=self.name,
            template_hash=self.template_hash or "",
            ready=self.ready,
            seq=self.seq,
            terminating=self.terminating,
            finished=self.finished,
        )


class _Reporter:
    """Pushes the latest status of each object to the API, retrying while the control plane is
    away; :meth:`flush` waits until one object's latest status has been accepted."""

    def __init__(self, client: ControlClient, on_missing: Callable[[str, Key], None]) -> None:
        self._client = client
        self._on_missing = on_missing
        self._pending: dict[tuple[str, Key], dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self._flushed: dict[tuple[str, Key], asyncio.Event] = {}
        self._backoff = ExponentialBackoff(base=0.1, maximum=2.0, jitter=0.2)

    def push(self, kind: str, key: Key, status: dict[str, Any]) -> None:
        self._pending[(kind, key)] = status
        self._flushed.setdefault((kind, key), asyncio.Event()).clear()
        self._wake.set()

    def forget(self, kind: str, key: Key) -> None:
        self._pending.pop((kind, key), None)
        event = self._flushed.pop((kind, key), None)
        if event is not None:
            event.set()

    async def flush(self, kind: str, key: Key, time_limit: float) -> bool:
        event = self._flushed.get((kind, key))
        if event is None:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), time_limit)
        return event.is_set()

    async def run(self) -> None:
        attempt = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                (kind, key), status = next(iter(self._pending.items()))
                try:
                    await self._client.put_status(kind, key[0], key[1], status)
                except ControlUnavailable as exc:
                    log.debug("status of %s %s/%s waits: %s", kind, *key, exc)
                    await asyncio.sleep(self._backoff.delay(attempt))
                    attempt += 1
                    continue
                except ApiError as exc:
                    if exc.status == 404:
                        self._on_missing(kind, key)
                    else:
                        log.warning("status of %s %s/%s rejected: %s", kind, *key, exc)
                attempt = 0
                if self._pending.get((kind, key)) is status:
                    del self._pending[(kind, key)]
                    event = self._flushed.get((kind, key))
                    if event is not None:
                        event.set()


class NodeAgent:
    """See the module docstring. ``run(stop)`` runs until ``stop`` is set, then drains pods."""

    def __init__(
        self,
        config: NodeConfig,
        client: ControlClient,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        control_supervisor: ControlSupervisor | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.control_supervisor = control_supervisor
        self.state = StateDir(config.state_dir)
        self._rng = rng or random.Random()
        self._clock = clock
        self._ipam = net.Ipam(config.network.pod_cidr)
        self._pods: dict[Key, _Pod] = {}
        self._deleting: set[Key] = set()
        self._seq = 0
        self._cache: dict[str, dict[Key, dict[str, Any]]] = {k: {} for k in WATCH_KINDS}
        self._synced = False
        self._kick = asyncio.Event()
        self._reporter = _Reporter(client, self._status_target_missing)
        self._services: frozenset[net.ServiceName] = frozenset()
        self._deploy_status: dict[Key, dict[str, Any]] = {}
        self._deploy_errors: dict[Key, str] = {}
        self._deploy_backoff: dict[Key, tuple[int, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._env = base_env(state_dir=str(config.state_dir), python=config.python)
        self._token_key: TokenKey | None = None
        # when each pod's token was issued, and for what (uid, service account)
        self._tokens: dict[Key, tuple[float, str, str]] = {}

    def __repr__(self) -> str:
        return (
            f"<NodeAgent pods={len(self._pods)} synced={self._synced} {self._ipam!r} "
            f"services={len(self._services)}>"
        )

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
        kube_port = None
        if self.config.kube_listen is not None:
            kube_port = KubePort(
                self.config.kube_listen, self.state.root / KUBE_SOCKET, self.state.root / "kube"
            )
            await kube_port.start()
        background = [
            asyncio.create_task(self._watch_loop(), name="watch"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
            asyncio.create_task(self._reporter.run(), name="reporter"),
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
            background[1].cancel()
            await self._shutdown_pods()
            background[2].cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def remove_stale_namespaces(self) -> list[str]:
        """Pod namespaces left by an earlier agent (their processes died with it): remove them."""
        removed = []
        for name in net.list_netns():
            if not net.is_weft_pod_netns(name):
                continue
            if any(p.netns == name for p in self._pods.values()):
                continue
            await self._teardown_netns(name)
            removed.append(name)
        if removed:
            log.info("removed %d stale pod namespaces", len(removed))
        return removed

    def remove_stale_tokens(self) -> list[Path]:
        """Tokens of pods this agent does not run (an earlier agent's): remove them."""
        running = {token_path(self.state.pod_dir(*key)) for key in self._pods}
        tokens = (token_path(d) for d in self.state.pods_dir.glob("*/*"))
        stale = [t for t in tokens if t not in running and t.parent.is_dir()]
        for token in stale:
            remove_token(token)
        if stale:
            log.info("removed %d stale pod tokens", len(stale))
        return stale

    async def _watch_loop(self) -> None:
        """Follow the watch for as long as the agent runs (weft.control.follow: reconnecting
        forever, a bad event skipped, a dead task restarted); each new stream starts from a
        fresh snapshot that replaces the cache once its BOOKMARK says it is complete."""
        snapshot: dict[str, dict[Key, dict[str, Any]]] = {k: {} for k in WATCH_KINDS}
        synced = False

        def on_item(event: Any) -> bool:
            nonlocal snapshot, synced
            if not isinstance(event, dict):
                return False
            etype = event.get("type")
            obj = event.get("object")
            if etype == "BOOKMARK":
                if not synced:
                    synced = True
                    self._cache = snapshot
                    self._synced = True
                    log.info("watching the control plane (%s)", self.client.endpoint)
                    self._kick.set()
                return False
            if not isinstance(obj, dict):
                return False
            kind = obj.get("kind")
            meta = obj.get("metadata") or {}
            if kind not in snapshot or not isinstance(meta, dict):
                return False
            key = (str(meta.get("namespace") or "default"), str(meta.get("name")))
            target = snapshot if not synced else self._cache
            if etype == "DELETED":
                target[kind].pop(key, None)
            else:
                target[kind][key] = obj
            if synced:
                self._kick.set()
            return True

        def on_lost(reason: str, connected: bool) -> None:
            nonlocal snapshot, synced
            if self._synced:
                log.warning("lost the control plane: %s; pods keep running", reason)
            self._synced = False
            snapshot = {k: {} for k in WATCH_KINDS}
            synced = False

        kinds = ",".join(WATCH_KINDS)
        follower = Follower(
            "node_watch",
            kinds,
            lambda: self.client.stream("/api/v1/watch?" + urlencode({"kinds": kinds})),
            on_item,
            on_lost=on_lost,
        )
        follower.start()
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            await follower.close()

    async def _reconcile_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.config.resync_interval)
            self._kick.clear()
            if self._synced and not self._stopping:
                try:
                    self.reconcile()
                except Exception:  # one bad object must not stop the agent
                    log.exception("reconcile failed")

    def kick(self) -> None:
        self._kick.set()

    # -- reconcile ---------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Compare the store with the pods this agent runs and start what closes the gap."""
        self._sync_services()
        self.rotate_tokens()
        pods_in_store = self._cache["Pod"]
        for key, pod in list(self._pods.items()):
            if key in pods_in_store:
                pod.seen_in_store = True
            elif pod.seen_in_store and not pod.terminating:
                if pod.finished:
                    self._pods.pop(key, None)  # a finished pod's object was deleted
                    self._remove_logs(pod)
                    continue
                log.info("pod %s/%s was deleted: stopping it", *key)
                self._terminate(pod, drain=True)
        deployments = self._cache["Deployment"]
        for key, doc in deployments.items():
            self._reconcile_deployment(key, doc)
        for pod in list(self._pods.values()):
            if pod.deployment is None or pod.terminating:
                continue
            if (pod.namespace, pod.deployment) not in deployments:
                self._terminate(pod, drain=True)
        for key in list(self._deploy_status):
            if key not in deployments:
                del self._deploy_status[key]
                self._reporter.forget("Deployment", key)
        for key, doc in pods_in_store.items():
            if key in self._pods:
                continue
            meta = doc.get("metadata") or {}
            annotations = meta.get("annotations") or {}
            if annotations.get(ANNOTATION_DEPLOYMENT):
                # a pod of an earlier agent (or of a deployment pod that already ended here)
                if key not in self._deleting:
                    self._spawn(self._delete_pod_object(key))
                continue
            phase = (doc.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                continue
            self._start_bare_pod(key, doc)

    def _reconcile_deployment(self, key: Key, doc: dict[str, Any]) -> None:
        try:
            dep = Deployment.from_dict(doc)
        except InvalidResources as exc:
            self._deployment_error(key, f"invalid deployment: {exc}")
            return
        template = doc.get("spec", {}).get("template") or {}
        h = template_hash(template)
        mine = [p for p in self._pods.values() if p.deployment == key[1] and p.namespace == key[0]]
        surge, unavailable = rollout_limits(
            dep.spec.rolling_update, dep.spec.replicas, dep.spec.strategy
        )
        plan = plan_rollout(
            replicas=dep.spec.replicas,
            template_hash=h,
            pods=[p.view() for p in mine],
            max_surge=surge,
            max_unavailable=unavailable,
            recreate=dep.spec.strategy == "Recreate",
        )
        for name in plan.terminate:
            self._terminate(self._pods[(key[0], name)], drain=True)
        if plan.create:
            _, not_before = self._deploy_backoff.get(key, (0, 0.0))
            if self._clock() >= not_before:
                for _ in range(plan.create):
                    if not self._create_deployment_pod(key, dep, template, h):
                        break
        # a deployment's pod that ended (it failed to start) is removed; the plan replaces it
        for p in mine:
            if p.finished and not p.terminating and p.task is not None and p.task.done():
                self._forget_pod(p)
        self._report_deployment(key, dep, h, mine)

    def _deployment_error(self, key: Key, message: str) -> None:
        if self._deploy_errors.get(key) != message:
            self._deploy_errors[key] = message
            log.error("deployment %s/%s: %s", *key, message)
            status = {
                "conditions": [
                    {"type": "Progressing", "status": "False", "message": message[:1000]}
                ]
            }
            self._reporter.push("Deployment", key, status)

    def _report_deployment(self, key: Key, dep: Deployment, h: str, mine: list[_Pod]) -> None:
        live = [p for p in self._pods.values() if p.deployment == key[1] and p.namespace == key[0]]
        live = [p for p in live if not p.terminating and not p.finished]
        ready = sum(1 for p in live if p.ready)
        status: dict[str, Any] = {
            "replicas": len(live),
            "updatedReplicas": sum(1 for p in live if p.template_hash == h),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, dep.spec.replicas - ready),
        }
        if dep.metadata.generation is not None:
            status["observedGeneration"] = dep.metadata.generation
        if key in self._deploy_errors:
            status["conditions"] = [
                {"type": "Progressing", "status": "False", "message": self._deploy_errors[key]}
            ]
        if self._deploy_status.get(key) != status:
            self._deploy_status[key] = status
            self._reporter.push("Deployment", key, status)

    def _sync_services(self) -> None:
        names = set()
        for doc in self._cache["Service"].values():
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

    def _create_deployment_pod(
        self, key: Key, dep: Deployment, template: Mapping[str, Any], h: str
    ) -> bool:
        namespace, deploy_name = key
        name = pod_name(deploy_name, h, self._rng)
        while (namespace, name) in self._pods or (namespace, name) in self._cache["Pod"]:
            name = pod_name(deploy_name, h, self._rng)
        tmeta = template.get("metadata") or {}
        labels = {**(tmeta.get("labels") or {}), LABEL_POD_TEMPLATE_HASH: h}
        annotations = {**(tmeta.get("annotations") or {}), ANNOTATION_DEPLOYMENT: deploy_name}
        spec = {**(template.get("spec") or {}), "nodeName": NODE_NAME}
        doc = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "annotations": annotations,
            },
            "spec": spec,
        }
        return self._start_pod(doc, deployment=deploy_name, template_hash=h) is not None

    def _start_bare_pod(self, key: Key, doc: dict[str, Any]) -> None:
        fresh = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                k: v
                for k, v in (doc.get("metadata") or {}).items()
                if k in ("name", "namespace", "labels", "annotations")
            },
            "spec": {**(doc.get("spec") or {}), "nodeName": NODE_NAME},
        }
        pod = self._start_pod(fresh, deployment=None, template_hash=None)
        if pod is not None:
            pod.seen_in_store = True

    def _start_pod(
        self, doc: dict[str, Any], *, deployment: str | None, template_hash: str | None
    ) -> _Pod | None:
        meta = doc["metadata"]
        namespace, name = meta.get("namespace") or "default", meta["name"]
        key = (namespace, name)
        try:
            ip = self._ipam.allocate(f"{namespace}/{name}")
        except net.IpamExhausted as exc:
            log.error("pod %s/%s: %s", namespace, name, exc)
            return None
        annotations = dict(meta.get("annotations") or {})
        try:
            model = Pod.from_dict(doc)
            spec = pod_spec(model, str(ip))
        except (InvalidResources, PodSpecError) as exc:
            self._ipam.release(ip)
            if deployment is not None:
                self._deployment_error((namespace, deployment), f"cannot run its pods: {exc}")
            else:
                self._spawn(self._fail_bare_pod(key, str(exc)))
            return None
        if spec.meshed:
            annotations[ANNOTATION_PROXY_ADMIN] = f"{ip}:{net.PROXY_ADMIN_PORT}"
        else:
            annotations.pop(ANNOTATION_PROXY_ADMIN, None)
        meta["annotations"] = annotations
        self._seq += 1
        pod = _Pod(
            namespace=namespace,
            name=name,
            seq=self._seq,
            doc=doc,
            ip=ip,
            netns=spec.netns,
            deployment=deployment,
            template_hash=template_hash,
        )
        self._pods[key] = pod
        pod.task = asyncio.create_task(self._pod_lifecycle(pod, spec), name=f"pod {name}")
        log.info("pod %s/%s: starting at %s", namespace, name, ip)
        return pod

    async def _fail_bare_pod(self, key: Key, message: str) -> None:
        log.error("pod %s/%s cannot run: %s", *key, message)
        status = {"phase": "Failed", "ready": False, "reason": "Invalid", "message": message[:1000]}
        with contextlib.suppress(ControlUnavailable, ApiError):
            await self.client.put_status("Pod", key[0], key[1], status)

    async def _pod_lifecycle(self, pod: _Pod, spec: RunSpec) -> None:
        started = False
        try:
            if not await self._apply_pod_object(pod):
                pod.finished = True
                return
            self._push_status(pod, {"phase": "Pending", "podIP": str(pod.ip), "ready": False})
            if pod.terminating:
                return
            if spec.meshed:
                try:
                    self.issue_token(pod.namespace, pod.name, pod.uid, spec.service_account)
                except (OSError, ValueError) as exc:
                    self._start_failed(pod, "IdentitySetupFailed", f"no identity token: {exc}")
                    return
            try:
                await self._setup_network(pod, spec)
            except (net.NetError, OSError) as exc:
                self._start_failed(pod, "NetworkSetupFailed", f"network setup failed: {exc}")
                return
            if pod.terminating:
                return
            runner = PodRunner(
                spec,
                launcher=NetnsLauncher(pod.netns),
                probes=NetnsProbes(pod.netns, str(pod.ip), net.NODE_NETNS),
                log_dir=self.state.pod_dir(pod.namespace, pod.name),
                on_status=lambda status: self._on_runner_status(pod, status),
                proxy_argv=proxy_argv(
                    spec,
                    python=self.config.python,
                    control_endpoint=self.config.control_endpoint,
                    token_file=self._token_path(pod.key),
                    trust_domain=self.config.trust_domain,
                    log_level=self.config.proxy_log_level,
                )
                if spec.meshed
                else None,
                base_env=self._env,
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
            await self._teardown_netns(pod.netns)
            remove_token(self._token_path(pod.key))
            self._ipam.release(pod.ip)
            if pod.terminating:
                await self._delete_pod_object(pod.key)
                self._pods.pop(pod.key, None)
                self._remove_logs(pod)
            self.kick()

    def _start_failed(self, pod: _Pod, reason: str, message: str) -> None:
        log.error("pod %s/%s: %s", *pod.key, message)
        self._push_status(
            pod,
            {
                "phase": "Failed",
                "podIP": str(pod.ip),
                "ready": False,
                "reason": reason,
                "message": message[:1000],
            },
        )
        pod.finished = True
        self._note_start_failure(pod)

    def _token_path(self, key: Key) -> Path:
        return token_path(self.state.pod_dir(*key))

    def issue_token(self, namespace: str, name: str, uid: str | None, service_account: str) -> Path:
        """Issue pod ``namespace/name``'s identity token for the Pod object with ``uid`` and
        write it where its proxy reads it (readable by the proxy's uid only); returns the path.
        Raises OSError or ValueError (no uid, an unusable token key) when it cannot."""
        if not uid:
            raise ValueError(f"pod {namespace}/{name} has no metadata.uid in the store")
        if self._token_key is None:
            self._token_key = TokenKey.load_or_create(self.state.root / "identity" / "token.key")
        claims = TokenClaims(
            namespace=namespace,
            pod=name,
            uid=uid,
            service_account=service_account,
            issued_at=time.time(),
        )
        path = self._token_path((namespace, name))
        write_token(path, self._token_key.issue(claims), owner=net.PROXY_UID)
        self._tokens[(namespace, name)] = (claims.issued_at, uid, service_account)
        return path

    def rotate_tokens(self, now: float | None = None) -> list[Key]:
        """Issue a new token to every running pod whose token is older than
        :data:`~weft.control.tokenreview.ROTATE_AFTER` (tokens are valid for twice that); the
        pods rotated. The proxy reads its token file each time it renews its certificate."""
        now = time.time() if now is None else now
        rotated: list[Key] = []
        for key, (issued_at, uid, account) in list(self._tokens.items()):
            pod = self._pods.get(key)
            if pod is None or pod.terminating or pod.finished or pod.uid != uid:
                self._tokens.pop(key, None)  # gone, or a new object (issued afresh at start)
                continue
            if now - issued_at < ROTATE_AFTER:
                continue
            try:
                self.issue_token(key[0], key[1], uid, account)
                rotated.append(key)
            except (OSError, ValueError) as exc:
                log.error("pod %s/%s: cannot rotate its identity token: %s", *key, exc)
        return rotated

    def _note_start_failure(self, pod: _Pod) -> None:
        if pod.deployment is None:
            return
        key = (pod.namespace, pod.deployment)
        failures, _ = self._deploy_backoff.get(key, (0, 0.0))
        delay = ExponentialBackoff(base=1.0, maximum=60.0, jitter=0.1, rng=self._rng).delay(
            failures
        )
        self._deploy_backoff[key] = (failures + 1, self._clock() + delay)

    def _on_runner_status(self, pod: _Pod, status: dict[str, Any]) -> None:
        if status.get("ready") and not pod.became_ready:
            pod.became_ready = True
            if pod.deployment is not None:
                self._deploy_backoff.pop((pod.namespace, pod.deployment), None)
        self._push_status(pod, status)
        self.kick()

    def _push_status(self, pod: _Pod, status: dict[str, Any]) -> None:
        pod.status = status
        self._reporter.push("Pod", pod.key, status)

    def _status_target_missing(self, kind: str, key: Key) -> None:
        """A status update found no object: the store lost it (e.g. a control plane restarted
        without its state) or it was deleted. Pods this agent still runs are re-created."""
        if kind != "Pod":
            return
        pod = self._pods.get(key)
        if pod is None or pod.terminating or pod.finished:
            self._reporter.forget(kind, key)
            return
        self._spawn(self._reapply(pod))

    async def _reapply(self, pod: _Pod) -> None:
        uid = pod.uid
        if not await self._apply_pod_object(pod):
            return
        runner = pod.runner
        ended = pod.finished or pod.terminating
        if pod.uid != uid and runner is not None and runner.spec.meshed and not ended:
            # a new object, so a new uid: the proxy's old token no longer verifies
            try:
                self.issue_token(pod.namespace, pod.name, pod.uid, runner.spec.service_account)
            except (OSError, ValueError) as exc:
                log.error("pod %s/%s: cannot renew its identity token: %s", *pod.key, exc)
        if pod.status is not None:
            self._reporter.push("Pod", pod.key, pod.status)

    async def _apply_pod_object(self, pod: _Pod) -> bool:
        backoff = ExponentialBackoff(base=0.1, maximum=2.0, jitter=0.2, rng=self._rng)
        attempt = 0
        while not self._stopping:
            try:
                stored = await self.client.apply([pod.doc], source="weft node")
                uid = stored[0].get("metadata", {}).get("uid") if stored else None
                pod.uid = str(uid) if uid else None
                return True
            except ControlUnavailable:
                await asyncio.sleep(backoff.delay(attempt))
                attempt += 1
            except ApiError as exc:
                log.error("pod %s/%s rejected by the control plane: %s", *pod.key, exc)
                if pod.deployment is not None:
                    self._deployment_error(
                        (pod.namespace, pod.deployment), f"pods rejected by the store: {exc}"
                    )
                return False
        return False

    async def _delete_pod_object(self, key: Key) -> None:
        self._reporter.forget("Pod", key)
        self._deleting.add(key)
        backoff = ExponentialBackoff(base=0.1, maximum=2.0, jitter=0.2, rng=self._rng)
        attempt = 0
        try:
            while not self._stopping:
                try:
                    await self.client.delete(
                        [{"kind": "Pod", "metadata": {"name": key[1], "namespace": key[0]}}]
                    )
                    return
                except ControlUnavailable:
                    await asyncio.sleep(backoff.delay(attempt))
                    attempt += 1
                except ApiError as exc:
                    if exc.status != 404:
                        log.warning("cannot delete pod object %s/%s: %s", *key, exc)
                    return
        finally:
            self._deleting.discard(key)

    def _forget_pod(self, pod: _Pod) -> None:
        """Drop a pod that has ended (its network is gone) and delete its object."""
        pod.terminating = True
        self._pods.pop(pod.key, None)
        self._remove_logs(pod)
        self._spawn(self._delete_pod_object(pod.key))

    def _remove_logs(self, pod: _Pod) -> None:
        # a deleted pod's logs go with it (as in Kubernetes); finished pods keep theirs
        with contextlib.suppress(OSError, ValueError):
            shutil.rmtree(self.state.pod_dir(pod.namespace, pod.name))

    def _terminate(self, pod: _Pod, *, drain: bool) -> None:
        if pod.terminating:
            return
        pod.terminating = True
        self._spawn(self._terminate_pod(pod, drain=drain))

    async def _terminate_pod(self, pod: _Pod, *, drain: bool) -> None:
        runner = pod.runner
        if runner is None:
            return  # still starting: its lifecycle notices ``terminating`` and cleans up
        runner.mark_terminating()
        if drain and pod.became_ready:
            # endpoints leave discovery when the store has the status; then proxies need a
            # moment to act on it before the pod stops accepting
            await self._reporter.flush("Pod", pod.key, time_limit=2.0)
            await asyncio.sleep(self.config.drain_delay)
        log.info("pod %s/%s: stopping (grace %gs)", *pod.key, runner.spec.grace)
        await runner.terminate()

    async def _setup_network(self, pod: _Pod, spec: RunSpec) -> None:
        if net.netns_exists(pod.netns):
            await self._teardown_netns(pod.netns)
        podnet = net.PodNet(
            netns=pod.netns,
            ip=pod.ip,
            veth=net.veth_name(self.config.network.pod_cidr, pod.ip),
            meshed=spec.meshed,
            skip_inbound=spec.skip_inbound,
            skip_outbound=spec.skip_outbound,
        )
        try:
            await net.run_plan_async(
                net.pod_up_plan(podnet, self.config.network, iptables=self.config.iptables)
            )
            self._write_hosts(pod)
        except BaseException:
            await self._teardown_netns(pod.netns)
            raise

    async def _teardown_netns(self, netns: str) -> None:
        if net.netns_exists(netns):
            try:
                out = await net.run_cmd_async(net.Cmd(("ip", "netns", "pids", netns)))
            except net.NetError:
                out = ""
            for tok in out.split():
                if tok.isdigit():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(tok), signal.SIGKILL)
            try:
                await net.run_plan_async(net.netns_delete_plan(netns))
            except net.NetError as exc:
                log.warning("cannot delete namespace %s: %s", netns, exc)
        with contextlib.suppress(ValueError):
            net.remove_pod_etc(netns)

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
