"""The local mesh's ReplicaSet controller: kube-controller-manager's, for the embedded API.

Each ReplicaSet keeps ``spec.replicas`` Pods of its template, as on a cluster:

- a missing pod is created as ``<replicaset>-<rand5>`` with the template's labels and
  annotations and a controller owner reference to the ReplicaSet;
- an excess pod is deleted (gracefully: its node drains it), not-ready pods first, then the
  newest, so a scale-down costs as little capacity as it can;
- a pod that failed (its node could not start it) is deleted and replaced, after a jittered
  exponential backoff per ReplicaSet (1 s doubling to 60 s, reset once one of its pods is
  ready), so a template that cannot run does not spin;
- ``status`` counts the pods that are not leaving (``replicas``, ``fullyLabeledReplicas``) and
  the ready ones (``readyReplicas``, ``availableReplicas``), with ``observedGeneration``;
- a deleted ReplicaSet's pods are deleted (the garbage collector's background propagation).

A change marks the ReplicaSets it can affect (the ReplicaSet itself; a Pod: its controller's),
worked off through ``schedule`` as :class:`weft.core.worklist.WorkList` does.

Not for: rollouts (:mod:`weft.runtime.local.deployments`), nor running pods (the node agent).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from weft.control.state import OWNER_INDEX, ClusterState, StateEvent
from weft.core.backoff import ExponentialBackoff
from weft.core.worklist import Schedule, WorkList
from weft.resources import pods
from weft.resources.errors import InvalidResources
from weft.resources.replicaset import controller_of, owner_ref

log = logging.getLogger("weft.replicasets")

# Kubernetes' alphabet for generated name parts: no vowels (no words), no look-alikes
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
MAX_NAME = 63  # a pod's name is its hostname
Later = Callable[[float, Callable[[], None]], object]
Key = tuple[str, str]


class Writer(Protocol):
    """Where pods and status are written (the local store)."""

    def apply(self, docs: Sequence[Any], *, source: str | None = None, mode: str = ...) -> Any: ...

    def delete(
        self, refs: Sequence[Any], *, grace: int | None = None, propagation: str = ...
    ) -> Any: ...

    def put_status(self, kind: str, namespace: str | None, name: str, status: Any) -> Any: ...


def generated_name(base: str, rng: random.Random) -> str:
    """``<base>-<rand5>``, ``base`` shortened to keep the name a valid hostname."""
    suffix = "".join(rng.choice(NAME_ALPHABET) for _ in range(5))
    return f"{base[: MAX_NAME - 6].rstrip('-.')}-{suffix}"


def _created(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


def scale_down_order(candidates: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pods to remove first: not ready before ready (no capacity lost), then the newest."""
    newest_first = sorted(candidates, key=_created, reverse=True)
    return sorted(newest_first, key=pods.is_ready)


class ReplicaSetController:
    """Keeps every ReplicaSet's pods (see the module docstring)."""

    def __init__(
        self,
        state: ClusterState,
        writer: Writer,
        *,
        schedule: Schedule | None = None,
        later: Later | None = None,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self._state = state
        self._writer = writer
        self._later = later
        self._clock = clock
        self._rng = rng or random.Random()
        self._work: WorkList[Key] = WorkList(self._sync_key, schedule)
        self._gone: dict[Key, str] = {}  # deleted ReplicaSets' uids, for their pods
        # per ReplicaSet: pod start failures in a row, and when it may create pods again
        self._failures: dict[Key, tuple[int, float]] = {}
        self._backoff = ExponentialBackoff(base=1.0, maximum=60.0, jitter=0.1, rng=self._rng)
        self._unsubscribe = state.subscribe(self._on_event)

    def __repr__(self) -> str:
        return f"<ReplicaSetController dirty={len(self._work)} writes={self._work.done}>"

    @property
    def writes(self) -> int:
        return self._work.done

    def close(self) -> None:
        self._unsubscribe()
        self._work.clear()

    def resync(self) -> None:
        keys: set[Key] = set()
        for rs in self._state.list("ReplicaSet"):
            keys.add((str(rs["metadata"]["namespace"]), str(rs["metadata"]["name"])))
        for pod in self._state.list("Pod"):
            owner = controller_of(pod)
            if owner is not None and owner[0] == "ReplicaSet":
                ns = str(pod["metadata"]["namespace"])
                if self._state.get("ReplicaSet", ns, owner[1]) is None:
                    self._gone[(ns, owner[1])] = owner[2]
                keys.add((ns, owner[1]))
        self._work.mark(keys)

    def reconcile(self) -> int:
        return self._work.run()

    def _on_event(self, event: StateEvent) -> None:
        ns = event.namespace
        if ns is None or (event.old is not None and event.old is event.new):
            return
        if event.kind == "ReplicaSet":
            if event.new is None and event.old is not None:
                self._gone[(ns, event.name)] = str(event.old["metadata"].get("uid") or "")
            self._work.mark([(ns, event.name)])
        elif event.kind == "Pod":
            keys = []
            for obj in (event.old, event.new):
                owner = controller_of(obj) if obj is not None else None
                if owner is not None and owner[0] == "ReplicaSet":
                    keys.append((ns, owner[1]))
            self._work.mark(keys)

    def _sync_key(self, key: Key) -> int:
        try:
            return self._sync(*key)
        except (InvalidResources, LookupError) as e:
            # a Namespace deleted meanwhile, a name taken: logged, tried again on the next change
            log.warning("replicaset %s/%s: %s", *key, e)
            return 0

    def _owned(self, ns: str, uid: str) -> list[Mapping[str, Any]]:
        return self._state.by_index("Pod", OWNER_INDEX, f"{ns}/{uid}")

    def _sync(self, ns: str, name: str) -> int:
        rs = self._state.get("ReplicaSet", ns, name)
        if rs is None:
            uid = self._gone.pop((ns, name), "")
            self._failures.pop((ns, name), None)
            doomed = [p for p in self._owned(ns, uid) if not pods.is_terminating(p)] if uid else []
            self._delete(ns, doomed, grace=None)
            return len(doomed)
        uid = str(rs["metadata"].get("uid") or "")
        owned = self._owned(ns, uid)
        if rs["metadata"].get("deletionTimestamp"):
            # deleted in the foreground: its pods first (gracefully), then itself
            doomed = [p for p in owned if not pods.is_terminating(p)]
            self._delete(ns, doomed, grace=None)
            if not owned:
                self._writer.delete([{"kind": "ReplicaSet",
                                      "metadata": {"namespace": ns, "name": name}}])  # fmt: skip
            return len(doomed) + (0 if owned else 1)
        failed = [p for p in owned if pods.phase(p) == "Failed" and not pods.is_terminating(p)]
        active = [p for p in owned if not pods.is_terminating(p) and not pods.is_finished(p)]
        written = 0
        if any(pods.is_ready(p) for p in active):
            self._failures.pop((ns, name), None)
        if failed:
            self._note_failures(ns, name, len(failed))
            self._delete(ns, failed, grace=0)
            written += len(failed)
        wanted = int((rs.get("spec") or {}).get("replicas", 1) or 0)
        diff = wanted - len(active)
        if diff > 0:
            written += self._create(rs, diff)
        elif diff < 0:
            doomed = scale_down_order(active)[:-diff]
            self._delete(ns, doomed, grace=None)
            written += len(doomed)
            active = [p for p in active if p not in doomed]
        ready = sum(1 for p in active if pods.is_ready(p))
        status = {
            "replicas": len(active),
            "fullyLabeledReplicas": len(active),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": rs["metadata"].get("generation", 1),
        }
        if dict(rs.get("status") or {}) != status:
            self._writer.put_status("ReplicaSet", ns, name, status)
            written += 1
        return written

    def _note_failures(self, ns: str, name: str, count: int) -> None:
        failures, _ = self._failures.get((ns, name), (0, 0.0))
        failures += count
        delay = self._backoff.delay(failures - 1)
        self._failures[(ns, name)] = (failures, self._clock() + delay)
        log.warning("replicaset %s/%s: %d pods failed to start; next in %.1fs", ns, name,
                    failures, delay)  # fmt: skip
        if self._later is not None:
            self._later(delay, lambda: self._work.mark([(ns, name)]))

    def _create(self, rs: Mapping[str, Any], count: int) -> int:
        meta = rs["metadata"]
        ns, name = str(meta["namespace"]), str(meta["name"])
        _, not_before = self._failures.get((ns, name), (0, 0.0))
        if self._clock() < not_before:
            return 0  # backing off: the timer marks it again
        template = (rs.get("spec") or {}).get("template") or {}
        tmeta = template.get("metadata") or {}
        docs = []
        for _ in range(count):
            pod_name = generated_name(name, self._rng)
            while self._state.get("Pod", ns, pod_name) is not None:
                pod_name = generated_name(name, self._rng)
            pmeta: dict[str, Any] = {
                "name": pod_name,
                "generateName": f"{name}-",
                "namespace": ns,
                "labels": dict(tmeta.get("labels") or {}),
                "ownerReferences": [owner_ref(rs)],
            }
            if tmeta.get("annotations"):
                pmeta["annotations"] = dict(tmeta["annotations"])
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": pmeta,
                    "spec": dict(template.get("spec") or {}),
                }
            )
        self._writer.apply(docs, source=f"pods of ReplicaSet {ns}/{name}", mode="create")
        return len(docs)

    def _delete(self, ns: str, doomed: Sequence[Mapping[str, Any]], *, grace: int | None) -> None:
        if doomed:
            refs = [{"kind": "Pod", "metadata": {"namespace": ns, "name": pods.name_of(p)[1]}}
                    for p in doomed]  # fmt: skip
            self._writer.delete(refs, grace=grace)


__all__ = ["NAME_ALPHABET", "ReplicaSetController", "generated_name", "scale_down_order"]
