"""Server-side printing: the ``meta.k8s.io/v1`` Table that ``kubectl get`` asks for.

``kubectl get`` prints whatever columns the server's Table has, so these are Kubernetes' own:
Pods (``NAME READY STATUS RESTARTS AGE``, wide: ``IP NODE``), Deployments (``NAME READY
UP-TO-DATE AVAILABLE AGE``, wide: ``CONTAINERS IMAGES SELECTOR``), Services (``NAME TYPE
CLUSTER-IP EXTERNAL-IP PORT(S) AGE``, wide: ``SELECTOR``), Namespaces (``NAME STATUS AGE``),
EndpointSlices (``NAME ADDRESSTYPE PORTS ENDPOINTS AGE``), and ``NAME AGE`` for the rest. Each row
carries the object's metadata (``PartialObjectMetadata``), or the whole object when asked
(``includeObject=Object``).

Not for: anything but presentation.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from weft.core.durations import human_duration
from weft.resources import pods

Obj = Mapping[str, Any]
Column = tuple[str, str, int, Callable[[Obj, float], Any]]  # name, type, priority, cell


def _age(obj: Obj, now: float) -> str:
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    if not isinstance(ts, str):
        return "<unknown>"
    try:
        created = calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return "<unknown>"
    return human_duration(now - created)


def _name(obj: Obj, now: float) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _get(obj: Obj, *path: str) -> Any:
    value: Any = obj
    for p in path:
        value = value.get(p) if isinstance(value, Mapping) else None
    return value


def _pod_ready(obj: Obj, now: float) -> str:
    statuses = _get(obj, "status", "containerStatuses") or []
    # the local mesh's sidecar has a status but no container in the spec
    total = max(len(_get(obj, "spec", "containers") or []), len(statuses))
    ready = sum(1 for cs in statuses if isinstance(cs, Mapping) and cs.get("ready"))
    return f"{ready}/{total}"


def _pod_status(obj: Obj, now: float) -> str:
    if pods.is_terminating(obj):
        return "Terminating"
    reason = _get(obj, "status", "reason")
    if isinstance(reason, str) and reason:
        return reason
    for cs in _get(obj, "status", "containerStatuses") or []:
        waiting = _get(cs, "state", "waiting", "reason")
        if isinstance(waiting, str) and waiting:
            return waiting
    return pods.phase(obj)


def _restarts(obj: Obj, now: float) -> int:
    return sum(
        int(cs.get("restartCount") or 0)
        for cs in _get(obj, "status", "containerStatuses") or []
        if isinstance(cs, Mapping)
    )


def _ports(obj: Obj, now: float) -> str:
    out = []
    for p in _get(obj, "spec", "ports") or []:
        text = f"{p.get('port')}/{p.get('protocol') or 'TCP'}"
        if p.get("nodePort"):
            text = f"{p.get('port')}:{p.get('nodePort')}/{p.get('protocol') or 'TCP'}"
        out.append(text)
    return ",".join(out) or "<none>"


def _selector(obj: Obj, now: float) -> str:
    sel = _get(obj, "spec", "selector") or {}
    sel = sel.get("matchLabels", sel) if isinstance(sel, Mapping) else {}
    return ",".join(f"{k}={v}" for k, v in sorted(sel.items())) or "<none>"


def _containers(key: str) -> Callable[[Obj, float], str]:
    def cell(obj: Obj, now: float) -> str:
        cs = _get(obj, "spec", "template", "spec", "containers") or []
        return ",".join(str(c.get(key) or "") for c in cs if isinstance(c, Mapping))

    return cell


def _slice_ports(obj: Obj, now: float) -> str:
    ports = [str(p.get("port")) for p in obj.get("ports") or [] if isinstance(p, Mapping)]
    return ",".join(ports) or "<unset>"


def _slice_endpoints(obj: Obj, now: float) -> str:
    addresses = [
        str(a)
        for e in obj.get("endpoints") or []
        if isinstance(e, Mapping)
        for a in (e.get("addresses") or [])[:1]
    ]
    if not addresses:
        return "<unset>"
    shown = ",".join(addresses[:3])
    return shown + (f" + {len(addresses) - 3} more..." if len(addresses) > 3 else "")


def _int(*path: str) -> Callable[[Obj, float], int]:
    return lambda obj, now: int(_get(obj, *path) or 0)


NAME: Column = ("Name", "string", 0, _name)
AGE: Column = ("Age", "string", 0, _age)
COLUMNS: dict[str, list[Column]] = {
    "Pod": [
        NAME,
        ("Ready", "string", 0, _pod_ready),
        ("Status", "string", 0, _pod_status),
        ("Restarts", "integer", 0, _restarts),
        AGE,
        ("IP", "string", 1, lambda o, n: (pods.ips(o) or ["<none>"])[0]),
        ("Node", "string", 1, lambda o, n: _get(o, "spec", "nodeName") or "<none>"),
    ],
    "Deployment": [
        NAME,
        (
            "Ready",
            "string",
            0,
            lambda o, n: (
                f"{_get(o, 'status', 'readyReplicas') or 0}/{_get(o, 'spec', 'replicas') or 0}"
            ),
        ),
        ("Up-to-date", "integer", 0, _int("status", "updatedReplicas")),
        ("Available", "integer", 0, _int("status", "availableReplicas")),
        AGE,
        ("Containers", "string", 1, _containers("name")),
        ("Images", "string", 1, _containers("image")),
        ("Selector", "string", 1, _selector),
    ],
    "ReplicaSet": [
        NAME,
        ("Desired", "integer", 0, _int("spec", "replicas")),
        ("Current", "integer", 0, _int("status", "replicas")),
        ("Ready", "integer", 0, _int("status", "readyReplicas")),
        AGE,
        ("Containers", "string", 1, _containers("name")),
        ("Images", "string", 1, _containers("image")),
        ("Selector", "string", 1, _selector),
    ],
    "Service": [
        NAME,
        ("Type", "string", 0, lambda o, n: _get(o, "spec", "type") or "ClusterIP"),
        ("Cluster-IP", "string", 0, lambda o, n: _get(o, "spec", "clusterIP") or "<none>"),
        ("External-IP", "string", 0, lambda o, n: "<none>"),
        ("Port(s)", "string", 0, _ports),
        AGE,
        ("Selector", "string", 1, _selector),
    ],
    "Namespace": [
        NAME,
        ("Status", "string", 0, lambda o, n: _get(o, "status", "phase") or "Active"),
        AGE,
    ],
    "EndpointSlice": [
        NAME,
        ("AddressType", "string", 0, lambda o, n: o.get("addressType") or ""),
        ("Ports", "string", 0, _slice_ports),
        ("Endpoints", "string", 0, _slice_endpoints),
        AGE,
    ],
}


def partial(obj: Obj) -> dict[str, Any]:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": dict(obj.get("metadata") or {}),
    }


def wants_table(accept: str) -> bool:
    """Whether the ``Accept`` header asks for a Table first."""
    first = accept.split(",")[0]
    return "as=Table" in first


def table(
    kind: str,
    objects: Iterable[Obj],
    resource_version: str,
    *,
    include: str = "Metadata",
    now: float | None = None,
) -> dict[str, Any]:
    """A Table of ``objects`` of ``kind``; ``include`` ``Object``, ``Metadata`` or ``None``."""
    now = time.time() if now is None else now
    columns = COLUMNS.get(kind, [NAME, AGE])
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [cell(obj, now) for _, _, _, cell in columns]}
        if include == "Object":
            row["object"] = dict(obj)
        elif include != "None":
            row["object"] = partial(obj)
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [
            {
                "name": name,
                "type": type_,
                "format": "name" if name == "Name" else "",
                "description": "",
                "priority": priority,
            }
            for name, type_, priority, _ in columns
        ],
        "rows": rows,
    }


__all__ = ["COLUMNS", "human_duration", "partial", "table", "wants_table"]
