"""Reading a Pod as a real cluster has it: addresses, readiness, termination, workload, proxy.

Every controller that asks "is this pod ready?", "which Deployment is it?" or "is it meshed, and
where is its proxy's admin port?" asks here, of decoded JSON as either API serves it, so the
answer is the same on a cluster and in the local mesh. The readers never raise on a malformed
pod: what they cannot read counts as absent.

- addresses: ``status.podIPs[].ip``, else ``status.podIP``;
- ready: the ``Ready`` condition is ``True``;
- terminating: ``metadata.deletionTimestamp`` is set (the local runtime also marks a pod it is
  draining with ``status.terminating`` until it deletes it);
- workload: the controller owner reference (a ReplicaSet named ``<deployment>-<pod-template-hash>``
  reads as its Deployment, as ``kubectl`` and Linkerd show it; StatefulSet, DaemonSet, Job
  as themselves), else the local runtime's ``weft.io/deployment`` annotation;
- proxy: the sidecar container :data:`PROXY_CONTAINER` (a native sidecar in ``initContainers`` or
  a classic one in ``containers``) and its port named ``admin``, else the local runtime's
  ``weft.io/proxy-admin`` annotation.

Not for: validating pods (:mod:`weft.resources.models`) or running them (the runtimes).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from weft.resources.meta import (
    ANNOTATION_DEPLOYMENT,
    ANNOTATION_PROXY_ADMIN,
    DEFAULT_SERVICE_ACCOUNT,
    LABEL_POD_TEMPLATE_HASH,
)

PROXY_CONTAINER = "weft-proxy"
ADMIN_PORT_NAME = "admin"


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seq(value: Any) -> list[Any]:
    return value if isinstance(value, list | tuple) else []  # type: ignore[return-value]


def name_of(pod: Mapping[str, Any]) -> tuple[str, str]:
    meta = _map(pod.get("metadata"))
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def ips(pod: Mapping[str, Any]) -> list[str]:
    """The pod's addresses, primary first (empty before it has one)."""
    status = _map(pod.get("status"))
    out = [
        str(p["ip"]) for p in _seq(status.get("podIPs")) if isinstance(p, Mapping) and p.get("ip")
    ]
    primary = status.get("podIP")
    if isinstance(primary, str) and primary and primary not in out:
        out.insert(0, primary)
    return out


def is_ready(pod: Mapping[str, Any]) -> bool:
    for cond in _seq(_map(pod.get("status")).get("conditions")):
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def is_terminating(pod: Mapping[str, Any]) -> bool:
    if _map(pod.get("metadata")).get("deletionTimestamp"):
        return True
    return _map(pod.get("status")).get("terminating") is True


def phase(pod: Mapping[str, Any]) -> str:
    return str(_map(pod.get("status")).get("phase") or "Pending")


def is_finished(pod: Mapping[str, Any]) -> bool:
    """Succeeded or Failed: it will not run again (no endpoint, no proxy)."""
    return phase(pod) in ("Succeeded", "Failed")


def service_account(pod: Mapping[str, Any]) -> str:
    sa = _map(pod.get("spec")).get("serviceAccountName")
    return sa if isinstance(sa, str) and sa else DEFAULT_SERVICE_ACCOUNT


def labels(pod: Mapping[str, Any]) -> Mapping[str, str]:
    value = _map(pod.get("metadata")).get("labels")
    return value if isinstance(value, Mapping) else {}


def workload(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(kind, name)`` of what runs the pod (``("Deployment", "web")``), None for a bare pod."""
    meta = _map(pod.get("metadata"))
    for ref in _seq(meta.get("ownerReferences")):
        if not isinstance(ref, Mapping) or ref.get("controller") is not True:
            continue
        kind, name = ref.get("kind"), ref.get("name")
        if not isinstance(kind, str) or not isinstance(name, str):
            continue
        if kind == "ReplicaSet":
            suffix = "-" + str(labels(pod).get(LABEL_POD_TEMPLATE_HASH) or "")
            if suffix != "-" and name.endswith(suffix):
                return "Deployment", name[: -len(suffix)]
        return kind, name
    deployment = _map(meta.get("annotations")).get(ANNOTATION_DEPLOYMENT)
    if isinstance(deployment, str) and deployment:
        return "Deployment", deployment
    return None


def deployment(pod: Mapping[str, Any]) -> str | None:
    found = workload(pod)
    return found[1] if found is not None and found[0] == "Deployment" else None


def _containers(pod: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    spec = _map(pod.get("spec"))
    for key in ("initContainers", "containers"):
        for c in _seq(spec.get(key)):
            if isinstance(c, Mapping):
                yield c


def container_port(pod: Mapping[str, Any], name: str) -> int | None:
    """The number of the container port called ``name`` (a named target port)."""
    for c in _seq(_map(pod.get("spec")).get("containers")):
        for p in _seq(_map(c).get("ports")):
            if isinstance(p, Mapping) and p.get("name") == name:
                number = p.get("containerPort")
                if isinstance(number, int) and not isinstance(number, bool):
                    return number
    return None


def proxy_admin(pod: Mapping[str, Any]) -> str | None:
    """``ip:port`` of the pod's proxy admin endpoint; None when the pod is not meshed (or has
    no address yet)."""
    addresses = ips(pod)
    for c in _containers(pod):
        if c.get("name") != PROXY_CONTAINER:
            continue
        for p in _seq(c.get("ports")):
            if isinstance(p, Mapping) and p.get("name") == ADMIN_PORT_NAME and addresses:
                return f"{addresses[0]}:{p.get('containerPort')}"
        return None
    admin = _map(_map(pod.get("metadata")).get("annotations")).get(ANNOTATION_PROXY_ADMIN)
    return admin if isinstance(admin, str) and admin else None


def is_meshed(pod: Mapping[str, Any]) -> bool:
    return proxy_admin(pod) is not None


_META_KEPT = ("name", "namespace", "labels", "annotations", "uid", "resourceVersion",
              "creationTimestamp")  # fmt: skip
_PROBES = ("readinessProbe", "livenessProbe", "startupProbe")


def policy_view(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a Pod that inbound policy reads (names, labels, annotations, the app
    containers' ports and probes), shaped so :class:`weft.resources.models.Pod` reads it: a
    cluster's Pod has many fields that model, made for the local mesh's manifests, refuses (and
    its containers may have no ``command``, which the policy never reads)."""
    meta = _map(pod.get("metadata"))
    spec = _map(pod.get("spec"))
    containers = []
    for c in _seq(spec.get("containers")):
        if not isinstance(c, Mapping):
            continue
        ports = [{k: p[k] for k in ("name", "containerPort", "protocol") if k in p}
                 for p in _seq(c.get("ports")) if isinstance(p, Mapping)]  # fmt: skip
        view: dict[str, Any] = {"name": c.get("name"), "command": ["-"], "ports": ports}
        view.update((k, c[k]) for k in _PROBES if k in c)
        containers.append(view)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {k: meta[k] for k in _META_KEPT if k in meta},
        "spec": {"containers": containers},
    }


__all__ = [
    "ADMIN_PORT_NAME",
    "PROXY_CONTAINER",
    "container_port",
    "deployment",
    "ips",
    "is_finished",
    "is_meshed",
    "is_ready",
    "is_terminating",
    "labels",
    "name_of",
    "phase",
    "policy_view",
    "proxy_admin",
    "service_account",
    "workload",
]
