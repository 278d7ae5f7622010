"""The local mesh's Deployment controller: kube-controller-manager's, for the embedded API.

A Deployment owns one ReplicaSet per pod template, named ``<deployment>-<pod-template-hash>``
(:func:`template_hash`), whose selector and template carry the ``pod-template-hash`` label; the
ReplicaSet controller (:mod:`weft.runtime.local.replicasets`) keeps its pods. A rollout moves
replicas from the old ReplicaSets to the new one (:func:`plan_scale`), as Kubernetes does:

- ``RollingUpdate``: the new ReplicaSet grows while all replicas stay within
  ``replicas + maxSurge``; old ones shrink, their unavailable pods first, while the available
  pods stay at least ``replicas - maxUnavailable`` (``maxSurge`` rounds up, ``maxUnavailable``
  down; for up to three replicas the 25 % defaults are 1 and 0: add a pod, wait for it to be
  ready, remove an old one);
- ``Recreate``: old ReplicaSets go to zero, and the new one is scaled up once none of their
  pods is left, terminating ones included.

Reverting the template makes its earlier ReplicaSet the new one again. ``status`` sums the
ReplicaSets' (``replicas``, ``updatedReplicas``, ``readyReplicas``, ``availableReplicas``,
``unavailableReplicas``) with ``observedGeneration`` and the ``Available`` and ``Progressing``
conditions, which ``kubectl rollout status`` reads. Old ReplicaSets at zero beyond
``revisionHistoryLimit`` (10) are deleted; a deleted Deployment's ReplicaSets are deleted (and
with them their pods).

Not for: creating or deleting pods (the ReplicaSet controller), nor running them (the node agent).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from weft.control.state import OWNER_INDEX, ClusterState, StateEvent
from weft.core.worklist import Schedule, WorkList
from weft.resources.errors import InvalidResources
from weft.resources.meta import LABEL_POD_TEMPLATE_HASH
from weft.resources.models import Deployment, RollingUpdate
from weft.resources.replicaset import controller_of, owner_ref
from weft.runtime.local.replicasets import NAME_ALPHABET

log = logging.getLogger("weft.deployments")

REVISION = "deployment.kubernetes.io/revision"
HISTORY_LIMIT = 10  # Kubernetes' default revisionHistoryLimit
Key = tuple[str, str]


class Writer(Protocol):
    """Where ReplicaSets and status are written (the local store)."""

    def apply(self, docs: Sequence[Any], *, source: str | None = None, mode: str = ...) -> Any: ...

    def delete(
        self, refs: Sequence[Any], *, grace: int | None = None, propagation: str = ...
    ) -> Any: ...

    def put_status(self, kind: str, namespace: str | None, name: str, status: Any) -> Any: ...


def template_hash(template: Mapping[str, Any]) -> str:
    """Ten characters that change whenever the pod template changes (``pod-template-hash``)."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    n = int.from_bytes(hashlib.sha256(canonical).digest()[:16], "big")
    out = []
    for _ in range(10):
        n, r = divmod(n, len(NAME_ALPHABET))
        out.append(NAME_ALPHABET[r])
    return "".join(out)


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


@dataclass(frozen=True, slots=True)
class RSView:
    """What the rollout planner needs to know about one ReplicaSet."""

    name: str
    replicas: int  # spec.replicas
    available: int = 0  # status.availableReplicas
    pods: int = 0  # pods it still has, terminating ones included


def plan_scale(
    *,
    replicas: int,
    new: RSView,
    old: Sequence[RSView],
    max_surge: int,
    max_unavailable: int,
    recreate: bool = False,
) -> dict[str, int]:
    """One step of a rollout: the new ``spec.replicas`` of each ReplicaSet that changes.

    ``old`` is oldest first. Invariants (``R = replicas``): the ReplicaSets' replicas never grow
    beyond ``R + max_surge``; an available pod is removed only while at least
    ``R - max_unavailable`` others stay available; the new ReplicaSet never shrinks for old ones.
    """
    if replicas < 0 or max_surge < 0 or max_unavailable < 0:
        raise ValueError("replicas, max_surge and max_unavailable must be >= 0")
    out: dict[str, int] = {}
    if recreate:
        for rs in old:
            if rs.replicas:
                out[rs.name] = 0
        if not any(rs.replicas or rs.pods for rs in old) and new.replicas != replicas:
            out[new.name] = replicas
        return out
    if not any(rs.replicas for rs in old):
        if new.replicas != replicas:
            out[new.name] = replicas
        return out
    total = new.replicas + sum(rs.replicas for rs in old)
    if new.replicas < replicas:
        room = replicas + max_surge - total
        if room > 0:
            out[new.name] = min(replicas, new.replicas + room)
    elif new.replicas > replicas:
        out[new.name] = replicas
    min_available = max(0, replicas - max_unavailable)
    # first the old pods that are not available (removing them costs nothing)...
    budget = total - min_available - max(0, new.replicas - new.available)
    target = {rs.name: rs.replicas for rs in old}
    for rs in old:
        unhealthy = max(0, rs.replicas - rs.available)
        step = min(unhealthy, max(0, budget))
        target[rs.name] -= step
        budget -= step
    # ...then available ones, while enough stay available
    budget = new.available + sum(rs.available for rs in old) - min_available
    for rs in old:
        step = min(target[rs.name], max(0, budget))
        target[rs.name] -= step
        budget -= step
    for rs in old:
        if target[rs.name] != rs.replicas:
            out[rs.name] = target[rs.name]
    return out


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class DeploymentController:
    """Rolls every Deployment through its ReplicaSets (see the module docstring)."""

    def __init__(
        self, state: ClusterState, writer: Writer, *, schedule: Schedule | None = None
    ) -> None:
        self._state = state
        self._writer = writer
        self._work: WorkList[Key] = WorkList(self._sync_key, schedule)
        self._gone: dict[Key, str] = {}  # deleted Deployments' uids, for their ReplicaSets
        self._errors: dict[Key, str] = {}
        self._unsubscribe = state.subscribe(self._on_event)

    def __repr__(self) -> str:
        return f"<DeploymentController dirty={len(self._work)} writes={self._work.done}>"

    def close(self) -> None:
        self._unsubscribe()
        self._work.clear()

    def resync(self) -> None:
        keys = {
            (str(d["metadata"]["namespace"]), str(d["metadata"]["name"]))
            for d in self._state.list("Deployment")
        }
        for rs in self._state.list("ReplicaSet"):
            owner = controller_of(rs)
            if owner is not None and owner[0] == "Deployment":
                ns = str(rs["metadata"]["namespace"])
                if self._state.get("Deployment", ns, owner[1]) is None:
                    self._gone[(ns, owner[1])] = owner[2]
                keys.add((ns, owner[1]))
        self._work.mark(keys)

    def reconcile(self) -> int:
        return self._work.run()

    def _on_event(self, event: StateEvent) -> None:
        ns = event.namespace
        if ns is None or (event.old is not None and event.old is event.new):
            return
        if event.kind == "Deployment":
            if event.new is None and event.old is not None:
                self._gone[(ns, event.name)] = str(event.old["metadata"].get("uid") or "")
            self._work.mark([(ns, event.name)])
        elif event.kind == "ReplicaSet":
            self._work.mark(self._owners(ns, (event.old, event.new)))
        elif event.kind == "Pod" and event.new is None:
            # a pod gone for good: a Recreate rollout may wait for exactly that
            for obj in (event.old,):
                owner = controller_of(obj) if obj is not None else None
                if owner is not None and owner[0] == "ReplicaSet":
                    rs = self._state.get("ReplicaSet", ns, owner[1])
                    self._work.mark(self._owners(ns, (rs,)))

    @staticmethod
    def _owners(ns: str, objs: Sequence[Mapping[str, Any] | None]) -> list[Key]:
        keys = []
        for obj in objs:
            owner = controller_of(obj) if obj is not None else None
            if owner is not None and owner[0] == "Deployment":
                keys.append((ns, owner[1]))
        return keys

    def _sync_key(self, key: Key) -> int:
        try:
            return self._sync(*key)
        except (InvalidResources, LookupError) as e:
            log.warning("deployment %s/%s: %s", *key, e)
            return 0

    def _sync(self, ns: str, name: str) -> int:
        doc = self._state.get("Deployment", ns, name)
        if doc is None:
            uid = self._gone.pop((ns, name), "")
            self._errors.pop((ns, name), None)
            owned = self._state.by_index("ReplicaSet", OWNER_INDEX, f"{ns}/{uid}") if uid else []
            self._delete(ns, [str(rs["metadata"]["name"]) for rs in owned])
            return len(owned)
        uid = str(doc["metadata"].get("uid") or "")
        if doc["metadata"].get("deletionTimestamp"):
            # deleted in the foreground: its ReplicaSets (and their pods) first, then itself
            owned = self._state.by_index("ReplicaSet", OWNER_INDEX, f"{ns}/{uid}")
            self._delete(ns, [str(rs["metadata"]["name"]) for rs in owned
                              if not rs["metadata"].get("deletionTimestamp")],
                         propagation="Foreground")  # fmt: skip
            if not owned:
                self._writer.delete([{"kind": "Deployment",
                                      "metadata": {"namespace": ns, "name": name}}])  # fmt: skip
            return 1
        try:
            dep = Deployment.from_dict(doc)
        except InvalidResources as e:
            return self._report_error(ns, name, doc, f"invalid deployment: {e}")
        owned = sorted(  # oldest first
            self._state.by_index("ReplicaSet", OWNER_INDEX, f"{ns}/{uid}"),
            key=lambda rs: (_revision(rs), str(rs["metadata"].get("creationTimestamp"))),
        )
        template = (doc.get("spec") or {}).get("template") or {}
        h = template_hash(template)
        new = next((rs for rs in owned if _hash_of(rs) == h), None)
        old = [rs for rs in owned if rs is not new]
        written = 0
        surge, unavailable = rollout_limits(
            dep.spec.rolling_update, dep.spec.replicas, dep.spec.strategy
        )
        if new is None:
            new = self._create_rs(doc, template, h, owned)
            written += 1
        views = {str(rs["metadata"]["name"]): self._view(ns, rs) for rs in [new, *old]}
        plan = plan_scale(
            replicas=dep.spec.replicas,
            new=views[str(new["metadata"]["name"])],
            old=[views[str(rs["metadata"]["name"])] for rs in old],
            max_surge=surge,
            max_unavailable=unavailable,
            recreate=dep.spec.strategy == "Recreate",
        )
        by_name = {str(rs["metadata"]["name"]): rs for rs in [new, *old]}
        if plan:
            scaled = []
            for rs_name, count in sorted(plan.items()):
                rs = by_name[rs_name]
                scaled.append({**rs, "spec": {**rs["spec"], "replicas": count}})
            self._writer.apply(scaled, source=f"rollout of Deployment {ns}/{name}")
            written += len(scaled)
        written += self._prune(ns, old, plan, _history_limit(doc))
        self._errors.pop((ns, name), None)
        min_available = dep.spec.replicas - unavailable
        return written + self._report(ns, name, doc, dep.spec.replicas, min_available, new, old)

    def _view(self, ns: str, rs: Mapping[str, Any]) -> RSView:
        status = rs.get("status") or {}
        uid = str(rs["metadata"].get("uid") or "")
        replicas = _int((rs.get("spec") or {}).get("replicas"))
        return RSView(
            name=str(rs["metadata"]["name"]),
            replicas=replicas,
            # a ReplicaSet just scaled down may still count the pods it is about to delete
            available=min(_int(status.get("availableReplicas")), replicas),
            pods=len(self._state.by_index("Pod", OWNER_INDEX, f"{ns}/{uid}")) if uid else 0,
        )

    def _create_rs(
        self,
        doc: Mapping[str, Any],
        template: Mapping[str, Any],
        h: str,
        owned: Sequence[Mapping[str, Any]],
    ) -> Mapping[str, Any]:
        meta = doc["metadata"]
        ns, name = str(meta["namespace"]), str(meta["name"])
        tmeta = template.get("metadata") or {}
        labels = {**(tmeta.get("labels") or {}), LABEL_POD_TEMPLATE_HASH: h}
        selector = dict(((doc.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
        revision = 1 + max((_revision(rs) for rs in owned), default=0)
        rs = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{name[: 62 - len(h)].rstrip('-.')}-{h}",
                "namespace": ns,
                "labels": labels,
                "annotations": {REVISION: str(revision)},
                "ownerReferences": [owner_ref(doc)],
            },
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {**selector, LABEL_POD_TEMPLATE_HASH: h}},
                "template": {
                    **template,
                    "metadata": {**tmeta, "labels": labels},
                },
            },
        }
        (applied,) = self._writer.apply([rs], source=f"rollout of Deployment {ns}/{name}")
        return dict(applied.object)

    def _prune(
        self, ns: str, old: Sequence[Mapping[str, Any]], plan: Mapping[str, int], limit: int
    ) -> int:
        idle = [
            rs
            for rs in old
            if plan.get(str(rs["metadata"]["name"]), _int(rs["spec"].get("replicas"))) == 0
            and not _int((rs.get("status") or {}).get("replicas"))
        ]
        doomed = [str(rs["metadata"]["name"]) for rs in idle[: max(0, len(idle) - limit)]]
        self._delete(ns, doomed)
        return len(doomed)

    def _delete(self, ns: str, names: Sequence[str], propagation: str = "Background") -> None:
        if names:
            refs = [{"kind": "ReplicaSet", "metadata": {"namespace": ns, "name": n}} for n in names]
            self._writer.delete(refs, propagation=propagation)

    def _report(
        self,
        ns: str,
        name: str,
        doc: Mapping[str, Any],
        replicas: int,
        min_available: int,
        new: Mapping[str, Any],
        old: Sequence[Mapping[str, Any]],
    ) -> int:
        def total(field: str, sets: Sequence[Mapping[str, Any]]) -> int:
            return sum(_int((rs.get("status") or {}).get(field)) for rs in sets)

        every = [new, *old]
        available = total("availableReplicas", every)
        updated = total("replicas", [new])
        done = updated == replicas and total("replicas", old) == 0 and available >= replicas
        status: dict[str, Any] = {
            "replicas": total("replicas", every),
            "updatedReplicas": updated,
            "readyReplicas": total("readyReplicas", every),
            "availableReplicas": available,
            "unavailableReplicas": max(0, replicas - available),
            "conditions": [
                _condition(
                    "Available",
                    available >= min_available,
                    "MinimumReplicasAvailable",
                ),
                _condition(
                    "Progressing",
                    True,
                    "NewReplicaSetAvailable" if done else "ReplicaSetUpdated",
                    f'ReplicaSet "{new["metadata"]["name"]}" '
                    + ("has successfully progressed." if done else "is progressing."),
                ),
            ],
        }
        generation = doc["metadata"].get("generation")
        if isinstance(generation, int):
            status["observedGeneration"] = generation
        return self._put_status(ns, name, doc, status)

    def _report_error(self, ns: str, name: str, doc: Mapping[str, Any], message: str) -> int:
        if self._errors.get((ns, name)) != message:
            self._errors[(ns, name)] = message
            log.error("deployment %s/%s: %s", ns, name, message)
        status = {
            **(doc.get("status") or {}),
            "conditions": [_condition("Progressing", False, "InvalidSpec", message[:1000])],
        }
        return self._put_status(ns, name, doc, status)

    def _put_status(self, ns: str, name: str, doc: Mapping[str, Any], status: Any) -> int:
        if dict(doc.get("status") or {}) == status:
            return 0
        self._writer.put_status("Deployment", ns, name, status)
        return 1


def _condition(type_: str, ok: bool, reason: str, message: str = "") -> dict[str, Any]:
    out = {"type": type_, "status": "True" if ok else "False", "reason": reason}
    if message:
        out["message"] = message
    return out


def _hash_of(rs: Mapping[str, Any]) -> str:
    return str((rs["metadata"].get("labels") or {}).get(LABEL_POD_TEMPLATE_HASH) or "")


def _revision(rs: Mapping[str, Any]) -> int:
    text = (rs["metadata"].get("annotations") or {}).get(REVISION)
    return int(text) if isinstance(text, str) and text.isdigit() else 0


def _history_limit(doc: Mapping[str, Any]) -> int:
    limit = (doc.get("spec") or {}).get("revisionHistoryLimit")
    return limit if isinstance(limit, int) and limit >= 0 else HISTORY_LIMIT


__all__ = [
    "REVISION",
    "DeploymentController",
    "RSView",
    "plan_scale",
    "rollout_limits",
    "template_hash",
]
