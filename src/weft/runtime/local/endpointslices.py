"""The local mesh's EndpointSlice controller: kube-controller-manager's, for the embedded API.

On a cluster, kube-controller-manager keeps every Service's ``discovery.k8s.io/v1``
EndpointSlices in step with its Pods, and the destination service reads them. The local mesh
has no kube-controller-manager, so this controller does the same job over the same state, with
the same rules, and the destination service cannot tell the two apart:

- a Service with a selector gets slices (a Service without one is left to whoever writes its
  slices by hand, as on a cluster); each Pod of its namespace that the selector matches, that
  has an address and has not finished, is an endpoint with ``conditions`` ``ready`` (Ready and
  not terminating), ``serving`` (Ready) and ``terminating``, a ``targetRef`` to the Pod and its
  ``nodeName``;
- slices hold one address family and one port mapping each (a named target port resolved per
  pod: pods that name it differently land in different slices; a pod that lacks the name is
  left out of that port), at most :data:`MAX_PER_SLICE` endpoints;
- a selecting Service with no endpoints keeps one empty slice (no endpoints, no ports), as
  kube-controller-manager keeps a placeholder;
- slices carry ``kubernetes.io/service-name``, ``endpointslice.kubernetes.io/managed-by:``
  :data:`MANAGED_BY` and an owner reference to the Service; slices managed by anyone else are
  never touched.

A change marks the Services it can affect (a Service itself; a Pod: the Services of its
namespace whose selector matched it before or after), and :meth:`reconcile` writes only slices
that differ and deletes the ones no longer wanted. Writes are deferred through ``schedule`` (the
control plane passes the event loop's ``call_soon``), never made inside another change's
notification; without one they are made at once, guarded against re-entry.

Not for: reading slices (:mod:`weft.resources.endpointslice`, the destination service), nor
running pods (the node agent).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from weft.control.state import ClusterState, StateEvent
from weft.core.worklist import Schedule, WorkList
from weft.resources import pods
from weft.resources.endpointslice import MANAGED_BY_LABEL, SERVICE_NAME_LABEL
from weft.resources.errors import InvalidResources
from weft.resources.models import selector_matches

log = logging.getLogger("weft.endpointslices")

MANAGED_BY = "endpointslice-controller.weft.io"
MAX_PER_SLICE = 100  # kube-controller-manager's default --max-endpoints-per-slice
PortMapping = tuple[tuple[str, int, str, str], ...]  # (name, number, protocol, appProtocol)


class Writer(Protocol):
    """Where slices are written (the local store)."""

    def apply(self, docs: Sequence[Any], *, source: str | None = None) -> Any: ...

    def delete(self, refs: Sequence[Any]) -> Any: ...


def _ports(service: Mapping[str, Any], pod: Mapping[str, Any]) -> PortMapping:
    out = []
    for sp in (service.get("spec") or {}).get("ports") or ():
        target = sp.get("targetPort", sp.get("port"))
        number = pods.container_port(pod, target) if isinstance(target, str) else target
        if not isinstance(number, int):
            continue  # the pod has no port of that name: not an endpoint of this port
        out.append(
            (
                str(sp.get("name") or ""),
                number,
                str(sp.get("protocol") or "TCP"),
                str(sp.get("appProtocol") or ""),
            )
        )
    return tuple(out)


def desired_slices(
    service: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]] | None:
    """The slices ``service`` should have given the pods of its namespace, or None when the
    Service has no selector (its slices are not this controller's)."""
    spec = service.get("spec") or {}
    selector = spec.get("selector")
    if not selector:
        return None
    meta = service["metadata"]
    ns, name = str(meta["namespace"]), str(meta["name"])
    groups: dict[tuple[str, PortMapping], list[dict[str, Any]]] = {}
    for pod in sorted(candidates, key=lambda p: pods.name_of(p)[1]):
        if not selector_matches(selector, pods.labels(pod)) or pods.is_finished(pod):
            continue
        ports = _ports(service, pod)
        if not ports and spec.get("ports"):
            continue
        ready, terminating = pods.is_ready(pod), pods.is_terminating(pod)
        pod_meta = pod["metadata"]
        ref = {"kind": "Pod", "namespace": ns, "name": str(pod_meta["name"])}
        if pod_meta.get("uid"):
            ref["uid"] = str(pod_meta["uid"])
        node = (pod.get("spec") or {}).get("nodeName")
        for ip in pods.ips(pod):
            endpoint: dict[str, Any] = {
                "addresses": [ip],
                "conditions": {
                    "ready": ready and not terminating,
                    "serving": ready,
                    "terminating": terminating,
                },
                "targetRef": ref,
            }
            if isinstance(node, str) and node:
                endpoint["nodeName"] = node
            family = "IPv6" if ":" in ip else "IPv4"
            groups.setdefault((family, ports), []).append(endpoint)
    owner = {
        "apiVersion": "v1",
        "kind": "Service",
        "name": name,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    if meta.get("uid"):
        owner["uid"] = str(meta["uid"])
    out = []
    if not groups:  # no endpoints: one empty slice stands for the Service, as kcm keeps one
        groups[("IPv4", ())] = []
    for (family, ports), endpoints in sorted(groups.items()):
        digest = hashlib.sha256(repr((family, ports)).encode()).hexdigest()[:5]
        for i in range(0, max(len(endpoints), 1), MAX_PER_SLICE):
            chunk = i // MAX_PER_SLICE
            slice_name = f"{name[:240]}-{digest}" + (f"-{chunk}" if chunk else "")
            out.append(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": slice_name,
                        "namespace": ns,
                        "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
                        "ownerReferences": [owner],
                    },
                    "addressType": family,
                    "endpoints": endpoints[i : i + MAX_PER_SLICE],
                    "ports": [
                        {"name": n, "port": p, "protocol": proto}
                        | ({"appProtocol": app} if app else {})
                        for n, p, proto, app in ports
                    ],
                }
            )
    return out


def _same(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    cmeta, wmeta = current.get("metadata") or {}, wanted["metadata"]
    return bool(
        current.get("addressType") == wanted["addressType"]
        and current.get("endpoints") == wanted["endpoints"]
        and current.get("ports") == wanted["ports"]
        and cmeta.get("labels") == wmeta["labels"]
        and cmeta.get("ownerReferences") == wmeta["ownerReferences"]
    )


class EndpointSliceController:
    """Keeps the slices of every selecting Service (see the module docstring)."""

    def __init__(
        self, state: ClusterState, writer: Writer, *, schedule: Schedule | None = None
    ) -> None:
        self._state = state
        self._writer = writer
        # (namespace, name) of the Services whose slices to bring up to date
        self._work: WorkList[tuple[str, str]] = WorkList(self._sync_key, schedule)
        self._unsubscribe = state.subscribe(self._on_event)

    def __repr__(self) -> str:
        return f"<EndpointSliceController dirty={len(self._work)} writes={self.writes}>"

    @property
    def writes(self) -> int:
        return self._work.done

    def close(self) -> None:
        self._unsubscribe()
        self._work.clear()

    def resync(self) -> None:
        """Reconcile every Service (at start, and after the store was restored)."""
        keys = {
            (str(svc["metadata"]["namespace"]), str(svc["metadata"]["name"]))
            for svc in self._state.list("Service")
        }
        for slice_ in self._state.list("EndpointSlice"):
            meta = slice_["metadata"]
            service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
            if isinstance(service, str):
                keys.add((str(meta["namespace"]), service))
        self._work.mark(keys)

    def _on_event(self, event: StateEvent) -> None:
        ns = event.namespace
        if ns is None:
            return
        if event.kind == "Service":
            self._work.mark([(ns, event.name)])
        elif event.kind == "Pod":
            if event.old is not None and event.old is event.new:
                return  # a resync: nothing about the pod changed
            before = pods.labels(event.old) if event.old is not None else {}
            after = pods.labels(event.new) if event.new is not None else {}
            self._work.mark(
                (ns, str(svc["metadata"]["name"]))
                for svc in self._state.list("Service", ns)
                if selector_matches((svc.get("spec") or {}).get("selector"), before)
                or selector_matches((svc.get("spec") or {}).get("selector"), after)
            )
        elif event.kind == "EndpointSlice":
            # someone changed or deleted a slice of ours: put it back as it should be
            keys = []
            for obj in (event.old, event.new):
                labels = (obj or {}).get("metadata", {}).get("labels") or {}
                if labels.get(MANAGED_BY_LABEL) == MANAGED_BY:
                    keys.append((ns, str(labels.get(SERVICE_NAME_LABEL, ""))))
            self._work.mark(keys)

    def reconcile(self) -> int:
        """Bring the slices of the marked Services up to date; how many slices were written or
        deleted."""
        return self._work.run()

    def _sync_key(self, key: tuple[str, str]) -> int:
        return self._sync(*key)

    def _candidates(self, ns: str, service: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """The pods that may match the Service's selector: those with its first label pair
        (the cache's label index), not every pod of the namespace."""
        selector = (service.get("spec") or {}).get("selector") or {}
        if not selector:
            return []
        key, value = min(selector.items())
        return self._state.by_index("Pod", "label", f"{ns}/{key}={value}")

    def _sync(self, ns: str, name: str) -> int:
        existing = {
            str(s["metadata"]["name"]): s
            for s in self._state.by_index("EndpointSlice", "service", f"{ns}/{name}")
            if ((s["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY)
        }
        service = self._state.get("Service", ns, name)
        wanted = None if service is None else desired_slices(service, self._candidates(ns, service))
        wanted = wanted or []
        changed = [
            doc for doc in wanted if not _same(existing.get(doc["metadata"]["name"], {}), doc)
        ]
        gone = sorted(set(existing) - {doc["metadata"]["name"] for doc in wanted})
        try:
            if changed:
                self._writer.apply(changed, source=f"endpointslices of Service {ns}/{name}")
            if gone:
                refs = [
                    {"kind": "EndpointSlice", "metadata": {"namespace": ns, "name": n}}
                    for n in gone
                ]
                self._writer.delete(refs)
        except (InvalidResources, LookupError) as e:
            # a Namespace deleted meanwhile, or a slice this controller cannot write: logged,
            # and tried again on the Service's next change
            log.warning("endpointslices of Service %s/%s: %s", ns, name, e)
            return 0
        return len(changed) + len(gone)


__all__ = ["MANAGED_BY", "MAX_PER_SLICE", "EndpointSliceController", "desired_slices"]
