"""What a real cluster's Pod asks this node to run, when the node agent is a cluster's kubelet.

On a cluster the injector has already meshed the pod (:mod:`weft.install.inject`): a ``weft-init``
init container that installs the proxy's iptables rules, and the ``weft-proxy`` container as a
native sidecar (an init container with ``restartPolicy: Always``) or, the fallback, as the first
app container. :func:`plan` reads such a Pod (as the API server stored it, every defaulted field
included) into what :class:`~weft.runtime.local.pod.PodRunner` runs, in the kubelet's order:
init containers before the sidecar run to completion, then the sidecar starts and must be ready,
then the init containers after it, then the app containers. A pod without a proxy is run as it
is, with nothing added.

Each container runs its ``command`` + ``args`` in the pod's network namespace, with the
environment the kubelet gives it: literal values (``$(VAR)`` expanded as Kubernetes expands them)
and the downward API's ``fieldRef`` (name, namespace, uid, labels and annotations, node name,
service account, host and pod IPs). Pods share the node's filesystem here (no image is unpacked),
so three things differ from a container runtime, each on purpose and named in the reasons:

- a container without ``command`` runs only when its image is one of Weft's (its entrypoint is
  ``weft``); any other image's entrypoint is unknown here, and the pod is refused saying so;
- a volume's ``mountPath`` is not mounted: the paths in a container's arguments and environment
  that lie under it are rewritten to the volume's directory on the node (the identity token's
  projected volume: the token the agent requests for the pod; ``emptyDir``: a directory of the
  pod's). Other volume kinds are not provided (listed in :attr:`KubePodPlan.unprovided`);
- ``envFrom`` and ``valueFrom`` other than ``fieldRef`` (Secrets, ConfigMaps, resources) are
  refused: the node agent reads no Secrets.

Not for: running anything (:mod:`weft.runtime.local.pod`), the local mesh's own pods, which the
agent meshes itself (:mod:`weft.runtime.local.podplan`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weft.control.tokenreview import AUDIENCE
from weft.runtime.base import PROXY_CONTAINER
from weft.runtime.local import users
from weft.runtime.local.podplan import (
    ContainerSpec,
    PodSpec,
    PodSpecError,
    Probe,
    _probe_from,
    expand,
    token_path,
)
from weft.runtime.local.users import RunAs

# images whose entrypoint is ``weft`` (weft.install's images: REGISTRY/proxy, /control, ...)
WEFT_IMAGE = re.compile(r"(^|/)(proxy|proxy-init|control)(:[^/]*)?(@.*)?$")
VOLUMES_DIR = "volumes"


@dataclass(frozen=True, slots=True)
class KubePodPlan:
    """A cluster's Pod as this node runs it (see the module docstring)."""

    spec: PodSpec  # the app containers; ``meshed`` when the pod has the proxy
    init: tuple[ContainerSpec, ...] = ()  # before the proxy, each run to completion
    init_after: tuple[ContainerSpec, ...] = ()  # after the proxy is ready
    proxy_argv: tuple[str, ...] | None = None
    proxy_env: tuple[tuple[str, str], ...] = ()
    identity_token: bool = False  # a projected token for identity.weft.io to write
    directories: tuple[Path, ...] = ()  # emptyDir volumes to create
    unprovided: tuple[str, ...] = ()  # volumes of kinds this node does not provide


def _field(obj: Mapping[str, Any], path: str, host_ip: str, ip: str) -> str:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
        "status.podIP": ip,
        "status.podIPs": ip,
    }
    if path in simple:
        return str(simple[path] or "")
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise PodSpecError(f"fieldRef {path!r} is not one the downward API offers")


def _mounts(
    raw: Mapping[str, Any], volumes: Mapping[str, Path], where: str
) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for i, m in enumerate(raw.get("volumeMounts") or []):
        if not isinstance(m, Mapping):
            raise PodSpecError(f"{where}.volumeMounts[{i}]: must be a mapping")
        host = volumes.get(str(m.get("name")))
        path = str(m.get("mountPath") or "").rstrip("/")
        if host is not None and path:
            sub = str(m.get("subPath") or "")
            out.append((path, host / sub if sub else host))
    # the longest mount path first: a nested mount wins
    return sorted(out, key=lambda pair: -len(pair[0]))


def _rewrite(text: str, mounts: Sequence[tuple[str, Path]]) -> str:
    for path, host in mounts:
        if text == path or text.startswith(path + "/"):
            return str(host) + text[len(path) :]
        # --flag=/path/to/file
        for sep in ("=", ":"):
            head, found, tail = text.partition(sep + path)
            if found and (tail == "" or tail.startswith("/")):
                return f"{head}{sep}{host}{tail}"
    return text


def _user(pod_sc: Mapping[str, Any], sc: Mapping[str, Any], ip: str) -> RunAs:
    if sc.get("privileged") is True:
        return users.ROOT
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    uid = users.pod_uid(ip) if not isinstance(uid, int) else uid
    return RunAs(uid, gid if isinstance(gid, int) else uid)


def _container(
    obj: Mapping[str, Any],
    raw: Any,
    where: str,
    *,
    ip: str,
    host_ip: str,
    volumes: Mapping[str, Path],
) -> tuple[ContainerSpec, dict[str, str]]:
    if not isinstance(raw, Mapping):
        raise PodSpecError(f"{where}: must be a mapping")
    name = str(raw.get("name") or "")
    if raw.get("envFrom"):
        raise PodSpecError(f"{where}.envFrom: not supported on this node (it reads no Secrets "
                           "or ConfigMaps)")  # fmt: skip
    mounts = _mounts(raw, volumes, where)
    env: dict[str, str] = {}
    for i, item in enumerate(raw.get("env") or []):
        epath = f"{where}.env[{i}]"
        if not isinstance(item, Mapping) or not item.get("name"):
            raise PodSpecError(f"{epath}: must be a mapping with a name")
        source = item.get("valueFrom")
        if source is None:
            value = expand(str(item.get("value") or ""), env)
        elif isinstance(source, Mapping) and isinstance(source.get("fieldRef"), Mapping):
            path = str(source["fieldRef"].get("fieldPath") or "")
            try:
                value = _field(obj, path, host_ip, ip)
            except PodSpecError as exc:
                raise PodSpecError(f"{epath}.valueFrom: {exc}") from None
        else:
            kinds = ", ".join(sorted(source)) if isinstance(source, Mapping) else repr(source)
            raise PodSpecError(f"{epath}.valueFrom: {kinds} is not supported on this node "
                               "(fieldRef is)")  # fmt: skip
        env[str(item["name"])] = _rewrite(value, mounts)
    command = [str(a) for a in raw.get("command") or []]
    if not command:
        image = str(raw.get("image") or "")
        if not WEFT_IMAGE.search(image):
            raise PodSpecError(
                f"{where}.command: required on this node, which runs commands, not images "
                f"(the entrypoint of {image!r} is unknown here)"
            )
        command = ["weft"]
    argv = tuple(
        _rewrite(expand(a, env), mounts) for a in [*command, *map(str, raw.get("args") or [])]
    )
    ports = {str(p["name"]): int(p["containerPort"]) for p in raw.get("ports") or []
             if isinstance(p, Mapping) and p.get("name") and p.get("containerPort")}  # fmt: skip
    readiness: Probe | None = None
    if raw.get("readinessProbe") is not None:
        readiness = _probe_from(raw["readinessProbe"], f"{where}.readinessProbe", ports)
    pod_sc = (obj.get("spec") or {}).get("securityContext") or {}
    spec = ContainerSpec(
        name=name,
        argv=argv,
        env=tuple(env.items()),
        working_dir=str(raw["workingDir"]) if raw.get("workingDir") else None,
        readiness=readiness,
        user=_user(pod_sc, raw.get("securityContext") or {}, ip),
    )
    return spec, env


def plan(obj: Mapping[str, Any], ip: str, *, pod_dir: Path, host_ip: str) -> KubePodPlan:
    """What to run for the cluster's Pod ``obj`` at address ``ip``, its files in ``pod_dir``.
    Raises PodSpecError naming the field it cannot run."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    volumes: dict[str, Path] = {}
    directories: list[Path] = []
    unprovided: list[str] = []
    identity = False
    for v in spec.get("volumes") or []:
        if not isinstance(v, Mapping) or not v.get("name"):
            continue
        name = str(v["name"])
        sources = (v.get("projected") or {}).get("sources") or []
        tokens = [s.get("serviceAccountToken") for s in sources if isinstance(s, Mapping)]
        if "emptyDir" in v:
            volumes[name] = pod_dir / VOLUMES_DIR / name
            directories.append(volumes[name])
        elif (len(sources) == 1 and isinstance(tokens[0], Mapping)
              and tokens[0].get("audience") == AUDIENCE):  # fmt: skip
            token = token_path(pod_dir)
            if str(tokens[0].get("path") or "token") != token.name:
                raise PodSpecError(f"volume {name!r}: the identity token must be at path "
                                   f"{token.name!r}")  # fmt: skip
            volumes[name] = token.parent
            identity = True
        else:
            unprovided.append(name)
    common = {"ip": ip, "host_ip": host_ip, "volumes": volumes}
    init: list[ContainerSpec] = []
    after: list[ContainerSpec] = []
    proxy: tuple[ContainerSpec, dict[str, str]] | None = None
    for i, raw in enumerate(spec.get("initContainers") or []):
        where = f"spec.initContainers[{i}]"
        c, env = _container(obj, raw, where, **common)  # type: ignore[arg-type]
        if raw.get("restartPolicy") == "Always":
            if c.name != PROXY_CONTAINER:
                raise PodSpecError(f"{where}: native sidecars other than {PROXY_CONTAINER} are "
                                   "not run on this node")  # fmt: skip
            proxy = (c, env)
        elif proxy is None:
            init.append(c)
        else:
            after.append(c)
    apps: list[ContainerSpec] = []
    for i, raw in enumerate(spec.get("containers") or []):
        c, env = _container(obj, raw, f"spec.containers[{i}]", **common)  # type: ignore[arg-type]
        if c.name == PROXY_CONTAINER and proxy is None:
            proxy = (c, env)  # the classic sidecar: started first all the same
        else:
            apps.append(c)
    if identity and proxy is None:
        identity = False  # nothing reads it
    grace = spec.get("terminationGracePeriodSeconds")
    try:
        run = PodSpec(
            namespace=str(meta.get("namespace") or "default"),
            name=str(meta.get("name") or ""),
            ip=ip,
            containers=tuple(apps),
            restart_policy=str(spec.get("restartPolicy") or "Always"),
            grace=float(grace) if isinstance(grace, int | float) else 30.0,
            meshed=proxy is not None,
            service_account=str(spec.get("serviceAccountName") or "default"),
        )
    except ValueError as exc:
        raise PodSpecError(f"spec: {exc}") from None
    return KubePodPlan(
        spec=run,
        init=tuple(init),
        init_after=tuple(after),
        proxy_argv=proxy[0].argv if proxy else None,
        proxy_env=tuple(proxy[1].items()) if proxy else (),
        identity_token=identity,
        directories=tuple(directories),
        unprovided=tuple(unprovided),
    )


def cluster_status(obj: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
    """The runner's ``status`` as a kubelet reports it for the Pod ``obj``: each container's
    status where its spec is (a native sidecar's among ``initContainerStatuses``), with its
    ``image`` and ``started``, and the four conditions (``PodScheduled``, ``Initialized``,
    ``ContainersReady``, ``Ready``): a merge patch replaces the whole list, so the scheduler's
    ``PodScheduled`` is written again here."""
    spec = obj.get("spec") or {}
    images = {str(c.get("name")): str(c.get("image") or "")
              for key in ("initContainers", "containers") for c in spec.get(key) or []
              if isinstance(c, Mapping)}  # fmt: skip
    statuses = {str(s.get("name")): dict(s) for key in ("initContainerStatuses",
                "containerStatuses") for s in status.get(key) or []}  # fmt: skip

    def ordered(key: str) -> list[dict[str, Any]]:
        out = []
        for c in spec.get(key) or []:
            s = statuses.get(str(c.get("name")))
            if s is None:
                s = {"name": c.get("name"), "ready": False, "restartCount": 0,
                     "state": {"waiting": {"reason": "PodInitializing"}}}  # fmt: skip
            s["image"] = images.get(str(s["name"]), "")
            s["imageID"] = ""
            s["started"] = "running" in (s.get("state") or {})
            out.append(s)
        return out

    inits, apps = ordered("initContainers"), ordered("containers")

    def done(s: Mapping[str, Any]) -> bool:
        state = s.get("state") or {}
        if s["name"] == PROXY_CONTAINER:  # a native sidecar: initialized once it runs
            return "running" in state
        return "terminated" in state and state["terminated"].get("exitCode") == 0

    initialized = all(done(s) for s in inits)
    ready = bool(status.get("ready"))

    def condition(kind: str, value: bool) -> dict[str, Any]:
        return {"type": kind, "status": "True" if value else "False"}

    out = {k: v for k, v in status.items() if k not in ("containerStatuses", "ready")}
    out["containerStatuses"] = apps
    out["initContainerStatuses"] = inits
    out["conditions"] = [
        condition("PodScheduled", True),
        condition("Initialized", initialized),
        condition("ContainersReady", ready),
        condition("Ready", ready),
    ]
    return out


__all__ = ["WEFT_IMAGE", "KubePodPlan", "cluster_status", "plan"]
